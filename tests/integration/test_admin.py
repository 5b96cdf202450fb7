"""The admin port of real twistd replicas: /metrics, /healthz, /readyz, /cluster.json
through failures (SIGKILL, SIGSTOP), and the log options of a real twistd process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicad.client import BlockingClient
from replicad.cluster import (
    ADMIN_PORT_OFFSET,
    PEER_PORT_OFFSET,
    LocalCluster,
    find_free_base_port,
    twistd_command,
)

DEADLINE_S = 20.0


@pytest.fixture
def admin_cluster(tmp_path):
    """admin_cluster(size=3, start=True, **settings) -> a LocalCluster with admin ports
    (ready when started), stopped after the test."""
    made: list[LocalCluster] = []

    def make(size: int = 3, start: bool = True, **settings: object) -> LocalCluster:
        cluster = LocalCluster(
            size=size, base_port=find_free_base_port(size, admin=True),
            data_dir=str(tmp_path / f"cluster-{len(made)}"), admin=True,
            overrides={name: str(value) for name, value in settings.items()},
        )
        made.append(cluster)
        if start:
            cluster.start()
            cluster.wait_ready(timeout_s=DEADLINE_S)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def get(url: str, timeout_s: float = 2.0) -> tuple[int | None, str]:
    """(status, body) of a GET; (None, why) when nothing answered in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)


def cluster_json(cluster: LocalCluster, i: int) -> dict | None:
    status, body = get(cluster.admin_url(i, "/cluster.json"))
    return json.loads(body) if status == 200 else None


def wait_for(predicate, what: str, timeout_s: float = DEADLINE_S):
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


def metric_samples(cluster: LocalCluster, i: int) -> dict[tuple, float]:
    status, body = get(cluster.admin_url(i, "/metrics"))
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body) for s in family.samples
    }


def test_metrics_probes_and_cluster_json_of_a_running_cluster(admin_cluster):
    cluster = admin_cluster()
    coordinator = cluster.wait_ready()
    follower = min(i for i in cluster.ids if i != coordinator)
    client = BlockingClient([cluster.address(follower)], timeout_s=5)
    for n in range(5):
        client.put(f"k{n}", f"v{n}")
    assert client.get("k1") == "v1"
    assert client.get("missing") is None

    for i in cluster.ids:
        assert get(cluster.admin_url(i, "/healthz")) == (200, "ok: alive\n")
        status, body = get(cluster.admin_url(i, "/readyz"))
        assert status == 200, body
    assert "following coordinator" in get(cluster.admin_url(follower, "/readyz"))[1]

    mine = metric_samples(cluster, follower)      # the follower received the requests
    assert mine[("replicad_requests_total", (("command", "PUT"), ("outcome", "ok")))] == 5
    assert mine[("replicad_requests_total", (("command", "GET"), ("outcome", "notfound")))] == 1
    assert mine[("replicad_role", (("role", "follower"),))] == 1
    assert mine[("replicad_coordinator_id", ())] == coordinator
    assert mine[("replicad_client_connections", ())] >= 0
    theirs = metric_samples(cluster, coordinator)
    assert theirs[("replicad_role", (("role", "serving"),))] == 1
    assert theirs[("replicad_quorum_wait_seconds_count", (("outcome", "reached"),))] == 5
    assert theirs[("replicad_clock_writes", (("origin", str(coordinator)),))] == 5
    assert theirs[("replicad_peer_connections", ())] >= 1

    roles = ["coordinator" if i == coordinator else "follower" for i in cluster.ids]

    def settled():
        view = cluster_json(cluster, follower)
        members = view["members"] if view else []
        keys = [m["keys"] for m in members]
        return view if keys == [5, 5, 5] and [m["role"] for m in members] == roles else None

    view = wait_for(settled, "every replica's key count and role on the page")
    assert (view["replica"], view["coordinator"], view["ready"]) == (follower, coordinator, True)
    assert [m["id"] for m in view["members"]] == cluster.ids
    for member in view["members"]:
        assert member["admin"] == str(cluster.admin_address(member["id"]))
        assert member["client"] == cluster.address(member["id"])
        if not member["here"]:
            assert member["link"] == "up"
            assert member["coordinator"] == coordinator
            assert member["age_s"] < 5

    # the lag gauge converges to zero once every replica has every write
    def in_step():
        samples = metric_samples(cluster, follower)
        lags = [v for (name, _), v in samples.items()
                if name == "replicad_replication_lag_writes"]
        return len(lags) == 2 and not any(lags)

    wait_for(in_step, "replication lag 0 on every peer")


def test_cluster_json_and_metrics_show_the_new_coordinator_after_a_sigkill(admin_cluster):
    cluster = admin_cluster()
    old = cluster.wait_ready()
    watcher = min(cluster.ids)
    assert cluster_json(cluster, watcher)["coordinator"] == old
    cluster.kill(old)
    new = cluster.wait_ready()
    assert new != old

    def shows_new_coordinator():
        view = cluster_json(cluster, watcher)
        if view is None or view["coordinator"] != new:
            return None
        members = {m["id"]: m for m in view["members"]}
        return view if members[old]["link"] == "down" else None

    view = wait_for(shows_new_coordinator, f"replica {watcher}'s page to show {new}")
    assert len(view["members"]) == 3
    failovers = [e for e in view["timeline"] if e["kind"] == "failover"]
    assert failovers and (failovers[0]["previous"], failovers[0]["coordinator"]) == (old, new)
    assert any(e["kind"] == "link" and e["peer"] == old and not e["up"]
               for e in view["timeline"])
    samples = metric_samples(cluster, watcher)
    assert samples[("replicad_failovers_total", ())] >= 1
    assert samples[("replicad_elections_total", ())] >= 1
    assert samples[("replicad_peer_up", (("peer", str(old)),))] == 0
    assert get(cluster.admin_url(old, "/healthz"))[0] is None     # nobody there


def test_readyz_before_the_cluster_is_formed_and_after(admin_cluster):
    cluster = admin_cluster(start=False)
    cluster.write_config()
    cluster.start_replica(1)       # a fresh replica alone: it waits for its peers
    wait_for(lambda: get(cluster.admin_url(1, "/healthz"))[0] == 200, "replica 1's admin port")
    status, body = get(cluster.admin_url(1, "/readyz"))
    assert status == 503
    assert body.startswith("not ready: ") and "joined its cluster" in body
    assert get(cluster.admin_url(1, "/healthz")) == (200, "ok: alive\n")   # alive all the same
    samples = metric_samples(cluster, 1)
    assert samples[("replicad_ready", ())] == 0
    for i in (2, 3):
        cluster.start_replica(i)
    cluster.wait_ready(timeout_s=DEADLINE_S)
    wait_for(lambda: get(cluster.admin_url(1, "/readyz"))[0] == 200, "replica 1 ready")


def test_readyz_with_sigstopped_peers_in_quorum_mode(admin_cluster):
    """A replica whose side has no majority is not ready (503 with the reason); a frozen
    replica's own probes get no answer at all (what a probe's timeout is for)."""
    cluster = admin_cluster(write_quorum="majority")
    coordinator = cluster.wait_ready()
    survivor = min(cluster.ids)
    frozen = [i for i in cluster.ids if i != survivor]
    assert coordinator in frozen
    try:
        for i in frozen:
            cluster.kill(i, signal.SIGSTOP)

        def not_ready():
            status, body = get(cluster.admin_url(survivor, "/readyz"))
            return (status, body) if status == 503 else None

        status, body = wait_for(not_ready, f"replica {survivor} to stop being ready")
        assert body.startswith("not ready: ")
        assert get(cluster.admin_url(survivor, "/healthz"))[0] == 200
        assert get(cluster.admin_url(coordinator, "/healthz"), timeout_s=1.0)[0] is None
    finally:
        for i in frozen:
            cluster.kill(i, signal.SIGCONT)
    cluster.wait_ready(timeout_s=DEADLINE_S)
    wait_for(lambda: get(cluster.admin_url(survivor, "/readyz"))[0] == 200,
             f"replica {survivor} ready again")


def test_unknown_paths_and_other_methods_over_real_http(admin_cluster):
    cluster = admin_cluster(size=1)
    base = cluster.admin_url(1, "")
    assert get(base + "/nope")[0] == 404
    request = urllib.request.Request(base + "/metrics", data=b"x=1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=2)
    assert info.value.code == 405 and info.value.headers["Allow"] == "GET, HEAD"


# Logs of a real twistd process -------------------------------------------------------------------


def free_ports() -> tuple[int, int, int]:
    """A client, a peer and an admin port, free and distinct (binds to port 0 in a row
    may get one port back twice)."""
    base = find_free_base_port(1, admin=True)
    return base + 1, base + PEER_PORT_OFFSET + 1, base + ADMIN_PORT_OFFSET + 1


def run_twistd(tmp_path, name: str, *options: str) -> list[str]:
    """Run a one-replica cluster under ``twistd -n --logfile`` with the given replicad
    options, ask its admin port twice, stop it with SIGTERM; the lines of its log."""
    client, peer, admin = free_ports()
    config = tmp_path / f"{name}.ini"
    config.write_text(f"[cluster]\nsecret = s\n[replica:1]\nclient = 127.0.0.1:{client}\n"
                      f"peer = 127.0.0.1:{peer}\nadmin = 127.0.0.1:{admin}\n")
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        [*twistd_command(), "-n", "--logfile", str(log),
         "replicad", "--id", "1", "--config", str(config), "--new-cluster",
         "--data-dir", str(tmp_path / name), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{admin}/readyz")[0] == 200,
                 "the replica to be ready")
        get(f"http://127.0.0.1:{admin}/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    # twistd stops cleanly on SIGTERM, then ends by the same signal (app._exitSignal)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output.decode("utf-8", "replace")
    return log.read_text().splitlines()


def test_log_format_json_gives_one_object_per_line_and_log_level_debug_shows_debug(tmp_path):
    lines = run_twistd(tmp_path, "json", "--log-format", "json", "--log-level", "debug")
    events = [json.loads(line) for line in lines]          # every line is one object
    assert {"level", "text", "log_namespace", "log_time"} <= set(events[0])
    starting = [e for e in events if "starting: data" in e["text"]]
    assert starting and starting[0]["id"] == 1 and starting[0]["level"] == "info"
    admin_requests = [e for e in events if e["text"].startswith("admin GET /healthz")]
    assert admin_requests and admin_requests[0]["level"] == "debug"
    assert admin_requests[0]["code"] == 200


def test_default_logs_are_text_without_debug_lines(tmp_path):
    lines = run_twistd(tmp_path, "text")
    assert any("replica 1 starting: data" in line for line in lines)
    assert not any(line.lstrip().startswith("{") for line in lines)
    assert not any("#debug]" in line for line in lines)
    assert not any("admin GET" in line for line in lines)


def test_log_level_error_keeps_only_errors(tmp_path):
    lines = run_twistd(tmp_path, "quiet", "--log-level", "error")
    assert not any("#info]" in line or "#warn]" in line for line in lines)


def test_a_bad_log_option_is_refused_by_twistd(tmp_path):
    result = subprocess.run(
        [*twistd_command(), "-n", "replicad", "--id", "1", "--log-format", "xml"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode != 0
    assert "--log-format must be one of text, json" in result.stdout + result.stderr
