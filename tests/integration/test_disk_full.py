"""A replica whose disk fills up: real twistd replicas, one data directory on a 1 MiB
tmpfs (needs root and mount(8); skipped with the reason elsewhere), filled by real
writes until SQLite answers SQLITE_FULL, then grown with ``mount -o remount``.

What must hold: a full coordinator refuses writes with ``ERR NOSPACE`` (one readable
line from the CLI, a non-zero exit), says so once in its log rather than with a
traceback per write, shows ``disk full`` in STATUS, and takes writes again as soon as
space is freed; a full follower costs the clients nothing (``write_quorum = 1``), costs
the coordinator's log one line, and catches up once freed.  No acknowledged write is
lost either way.  Without the change that named the condition, the coordinator's log
held one traceback per failed write (60 in 60) and the follower's about 2,600 in a
few seconds (docs/reliability.md, "Fourteenth session").

Marked slow (about 5 s; it mounts): run by ``.ci/run``'s slow stage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest

from replicad.cluster import LocalCluster, find_free_base_port

from .lines import ask

pytestmark = pytest.mark.slow

VALUE = "v" * 200
DEADLINE_S = 20.0


def mount_small_tmpfs(path: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to put a data directory on a small tmpfs")
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def grow(path: str) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", path], check=True)


@pytest.fixture
def cluster_with_small_disk(tmp_path):
    """cluster_with_small_disk(replica) -> a ready 3-replica cluster whose replica's
    data directory is a 1 MiB tmpfs (unmounted after the test)."""
    started: list[tuple[LocalCluster, str]] = []

    def start(replica: int) -> LocalCluster:
        cluster = LocalCluster(3, find_free_base_port(3, admin=True),
                               str(tmp_path / "cluster"), admin=True)
        path = cluster.replica_dir(replica)
        mount_small_tmpfs(path)
        started.append((cluster, path))
        cluster.start()
        cluster.wait_ready(timeout_s=20)
        return cluster

    yield start
    for cluster, path in started:
        cluster.stop()
        subprocess.run(["umount", "-l", path], capture_output=True)


def eventually(condition, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"not within {DEADLINE_S:g} s: {what}")


def status(cluster: LocalCluster, replica: int) -> dict:
    fields = cluster.status(replica, timeout_s=5.0)
    assert fields is not None, f"replica {replica} did not answer STATUS"
    return fields


def write_until_refused(cluster: LocalCluster, at: int, limit: int,
                        prefix: str = "k") -> tuple[list[str], str]:
    """PUT new keys at ``at`` until one is refused (or ``limit``): the acknowledged
    keys and the refusal."""
    acked: list[str] = []
    for n in range(limit):
        key = f"{prefix}{n:05d}"
        reply = ask(cluster.address(at), f"PUT {key} {VALUE}")
        if reply != "OK":
            return acked, reply
        acked.append(key)
    return acked, ""


def all_hold(cluster: LocalCluster, keys: list[str]) -> None:
    coordinator = cluster.coordinator()
    clock = status(cluster, coordinator)["clock"]
    eventually(lambda: all(status(cluster, i)["clock"] == clock for i in cluster.ids),
               "every replica at the coordinator's clock")
    for i in cluster.ids:
        missing = [k for k in keys if ask(cluster.address(i), f"GET {k}") != f"VALUE {VALUE}"]
        assert missing == [], f"replica {i} lacks acknowledged writes {missing[:5]}"


def the_page_shows_it(tmp_path, cluster: LocalCluster) -> None:
    """The live cluster page, in a real browser where there is one: the event is on
    the coordinator's timeline, marked (``kind-disk full``: drawn in the page's
    "down" colour)."""
    from .test_admin_browser import CHROMIUM, page_of

    with urllib.request.urlopen(cluster.admin_url(3, "/cluster.json"), timeout=5) as answer:
        view = json.loads(answer.read())
    assert [bool(m.get("disk_full")) for m in view["members"]] == [False, False, True]
    events = [e for e in view["timeline"] if e["kind"] == "disk"]
    assert [(e["full"], e["text"]) for e in events] == [
        (True, "the disk is full: writes are refused until space is freed")]
    if CHROMIUM is None:
        return              # test_admin_browser.py says why it is skipped
    page = page_of(tmp_path, cluster, 3)
    assert "disk" in page.timeline
    text = "".join(page.text)
    assert "the disk is full: writes are refused until space is freed" in text
    assert "full \u2014 writes refused until space is freed" in text     # its card


def test_a_coordinator_whose_disk_fills_up_refuses_writes_clearly_and_loses_none(
        cluster_with_small_disk, cli, tmp_path):
    cluster = cluster_with_small_disk(3)
    assert cluster.coordinator() == 3
    acked, refusal = write_until_refused(cluster, 3, 5000)
    assert refusal.startswith("ERR NOSPACE replica 3, the coordinator, could not write to "
                              "its disk: it is full; nothing was done"), refusal
    assert len(acked) >= 10                     # it did fill up, and with real writes
    failed = cli([cluster.address(3)], "put", "more", "x")
    assert failed.returncode != 0
    assert failed.stderr.count("\n") == 1 and "ERR NOSPACE" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert status(cluster, 3)["disk"] == "full"
    assert status(cluster, 3)["role"] == "coordinator"
    log = open(cluster.log_path(3)).read()
    assert log.count("the disk is full") == 1 and "Traceback" not in log
    the_page_shows_it(tmp_path, cluster)

    grow(cluster.replica_dir(3))
    eventually(lambda: ask(cluster.address(3), f"PUT freed {VALUE}") == "OK",
               "a write accepted once space is freed")
    assert status(cluster, 3)["disk"] == "ok"
    assert "the disk takes writes again" in open(cluster.log_path(3)).read()
    all_hold(cluster, acked + ["freed"])


def test_a_follower_whose_disk_fills_up_costs_the_clients_nothing_and_catches_up(
        cluster_with_small_disk):
    cluster = cluster_with_small_disk(1)
    assert cluster.coordinator() == 3
    acked: list[str] = []
    for batch in range(100):                    # 1 MiB: about 70 writes of 200 bytes
        written, refusal = write_until_refused(cluster, 3, 20, prefix=f"b{batch}-")
        assert refusal == ""                    # the clients see nothing of it
        acked += written
        if status(cluster, 1)["disk"] == "full":
            break
    else:
        pytest.fail("the follower's 1 MiB never filled up")
    written, refusal = write_until_refused(cluster, 3, 100, prefix="after-")
    assert refusal == ""
    acked += written
    assert status(cluster, 1)["role"] == "follower"
    # Said once per episode: at the edge a small COMMIT may still fit (an episode
    # ends, "takes writes again", and the next one starts), but not once per push.
    coordinator_log = open(cluster.log_path(3)).read()
    follower_log = open(cluster.log_path(1)).read()
    episodes = follower_log.count("the disk takes writes again") + 1
    assert 1 <= coordinator_log.count("replica 1 cannot store pushed writes") <= episodes
    assert "Traceback" not in coordinator_log
    assert follower_log.count("writes are refused, nothing half-applied") == episodes <= 5
    assert follower_log.count("failed: the disk is full") <= episodes       # its pulls
    assert "Traceback" not in follower_log

    grow(cluster.replica_dir(1))
    all_hold(cluster, acked)
    assert status(cluster, 1)["disk"] == "ok"
