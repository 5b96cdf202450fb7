"""Issue #8 end to end: clients that always find service, with real twistd replicas.

A hung coordinator (SIGSTOP: the kernel still accepts, nobody reads) holds no client for
long; a write whose outcome was unknown is sent again with its request id and applied
once; a session from a wiped cluster is reset with one line; the CLI takes options
anywhere, values from stdin, and fails fast when nothing listens; a half-closed
connection still gets its reply.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from replicad.client import BlockingClient, build_request
from replicad.cluster import find_free_base_port
from replicad.retry import WriteInDoubt
from replicad.session import ClientSession
from replicad.testing.cluster import ProxiedCluster

from .lines import ask

CLI = os.path.join(os.path.dirname(sys.executable), "replicad-cli")
# Generous on purpose: the goal is a median under 1 s (bench/failover.py measures it);
# a test on a loaded machine asserts only that no client is held for long.
HUNG_BOUND_S = 5.0


def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout_s: float = 60) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REPLICAD_")}
    environment.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout_s,
                          input=stdin if stdin is not None else "", env=environment)


def session_of(path) -> dict:
    shown = run_cli("--session", str(path), "session", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def learn_the_coordinator(client: BlockingClient, coordinator: int) -> None:
    """Write until the session knows the coordinator's address, as a client using the
    cluster for a while does."""
    for n in range(6):
        client.put(f"warm{n}", "x")
        if client.session.addresses.get(client.session.coordinator):
            break
    assert client.session.coordinator == coordinator
    assert client.session.order(client.servers)[0] == client.servers[coordinator - 1]


# A hung coordinator --------------------------------------------------------------------


def test_a_hung_coordinator_holds_no_client(start_cluster, tmp_path):
    cluster = start_cluster()
    coordinator = cluster.coordinator()
    servers = cluster.addresses()
    with_session = BlockingClient(servers, timeout_s=10, session=ClientSession())
    learn_the_coordinator(with_session, coordinator)
    session_file = tmp_path / "cli-session.json"
    for n in range(4):
        assert run_cli("--servers", ",".join(servers), "--session", str(session_file),
                       "put", f"cli{n}", "x").returncode == 0
    assert session_of(session_file)["coordinator"] == coordinator

    cluster.kill(coordinator, signal.SIGSTOP)
    try:
        started = time.monotonic()
        _, address = with_session.exchange(build_request("PUT", "after", "the hang"))
        assert time.monotonic() - started < HUNG_BOUND_S
        assert address != cluster.address(coordinator)
        assert list(with_session.session.demoted) == [cluster.address(coordinator)]

        # A fresh client whose list starts with the hung replica.
        fresh = BlockingClient([cluster.address(coordinator)]
                               + [a for a in servers if a != cluster.address(coordinator)],
                               timeout_s=10)
        started = time.monotonic()
        fresh.put("fresh", "client")
        assert time.monotonic() - started < HUNG_BOUND_S

        # The CLI with a session that names the hung coordinator; the next run knows.
        for key in ("cli-after", "cli-again"):
            started = time.monotonic()
            result = run_cli("--servers", ",".join(servers), "--session", str(session_file),
                             "put", key, "x")
            assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")
            assert time.monotonic() - started < HUNG_BOUND_S
        shown = session_of(session_file)
        assert list(shown["demoted"]) == [cluster.address(coordinator)]
        assert shown["coordinator"] != coordinator
    finally:
        cluster.kill(coordinator, signal.SIGCONT)
    assert with_session.get("after") == "the hang"


# A write in doubt, sent again with its id ---------------------------------------------


@pytest.fixture
def proxied_cluster(tmp_path):
    started: list[ProxiedCluster] = []

    def start(**settings: object) -> ProxiedCluster:
        cluster = ProxiedCluster(
            size=3, base_port=find_free_base_port(3),
            data_dir=str(tmp_path / f"proxied-{len(started)}"),
            overrides={name: str(value) for name, value in settings.items()},
        )
        started.append(cluster)
        cluster.start()
        cluster.wait_ready(timeout_s=30)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


def test_a_write_whose_answer_is_lost_is_resent_with_its_id_and_applied_once(
        proxied_cluster):
    """The coordinator applies a forwarded write, but its answer to the follower is
    held (a one-way cut): the follower answers ERR INDOUBT, the CLI sends the write
    again with the same request id through the other follower, and the coordinator
    answers it without applying it a second time.

    Why it is deterministic: with a 30 s heartbeat a follower pings the coordinator
    only when a client request finds no successful ping within the last 30 s.  The
    warm-up read makes that ping (before the cut), so the follower forwards the write
    without a ping, and the only way its answer can end is the forward timeout
    (derived: election_wait + fetch_timeout + quorum_timeout + 1 s = 3 s)."""
    cluster = proxied_cluster(ping_interval=30, ping_timeout=0.5, election_wait=1,
                              fetch_timeout=0.5, quorum_timeout=0.5)
    coordinator = cluster.coordinator()
    forwarder, other = (i for i in cluster.ids if i != coordinator)
    BlockingClient([cluster.address(forwarder)], timeout_s=10).get("warm-up")
    before = cluster.status(coordinator)["clock"].get(str(coordinator), 0)

    cluster.cut_one_way(coordinator, forwarder)
    result = run_cli("--servers", f"{cluster.address(forwarder)},{cluster.address(other)}",
                     "--no-session", "--timeout", "20", "put", "once", "only", timeout_s=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")

    after = cluster.status(coordinator)["clock"].get(str(coordinator), 0)
    assert after == before + 1                     # one write, not two
    with open(cluster.log_path(coordinator), encoding="utf-8") as log:
        replays = [line for line in log if "was already applied" in line]
    assert len(replays) == 1, replays              # the second copy was a replay
    cluster.heal()
    assert BlockingClient(cluster.addresses(), timeout_s=10).get("once") == "only"


def test_a_write_resent_after_it_was_overwritten_is_settled_in_doubt_at_once(
        start_cluster):
    """A write sent again with its request id after another write replaced it: every
    replica answers ERR SUPERSEDED (its outcome is unknown for good: overwritten, or
    discarded by a merge), the coordinator directly and a follower by relaying; the
    client reports it in doubt after that one answer instead of sending it to every
    server until its deadline, and nothing is applied again."""
    cluster = start_cluster()
    coordinator = cluster.coordinator()
    follower = next(i for i in cluster.ids if i != coordinator)
    first, later = "@r=;w=;id=5eed0001.1 PUT k mine", "@r=;w=;id=5eed0002.1 PUT k theirs"
    assert ask(cluster.address(coordinator), first).endswith(" OK")
    assert ask(cluster.address(coordinator), later).endswith(" OK")
    clock = cluster.status(coordinator)["clock"]
    for address in (cluster.address(coordinator), cluster.address(follower)):
        again = ask(address, first)
        assert "ERR SUPERSEDED this write was applied as " in again, again

    session = ClientSession(client_id="5eed0001")   # its next request id is .1 again
    client = BlockingClient(cluster.addresses(), session=session, timeout_s=20)
    with pytest.raises(WriteInDoubt) as raised:
        client.put("k", "mine")
    assert raised.value.code == "SUPERSEDED"
    assert client.get("k") == "theirs"
    assert cluster.status(coordinator)["clock"] == clock        # nothing applied again
    with open(cluster.log_path(coordinator), encoding="utf-8") as log:
        replays = [line for line in log if "was already applied" in line]
    assert len(replays) == 3, replays     # the two raw ones and the client's one send


# Sessions belong to one cluster ----------------------------------------------------------


def test_a_session_from_a_wiped_cluster_is_reset_with_one_line(start_cluster, tmp_path):
    cluster = start_cluster()
    servers = ",".join(cluster.addresses())
    session_file = tmp_path / "session.json"
    for n in range(4):
        assert run_cli("--servers", servers, "--session", str(session_file),
                       "put", f"k{n}", "before").returncode == 0
    old_cluster = cluster.status(1)["cluster_id"]
    assert session_of(session_file)["cluster"] == old_cluster

    cluster.stop()
    for i in cluster.ids:
        shutil.rmtree(cluster.replica_dir(i))
    cluster.start()
    cluster.wait_ready(timeout_s=30)
    new_cluster = cluster.status(1)["cluster_id"]
    assert new_cluster != old_cluster

    result = run_cli("--servers", servers, "--session", str(session_file), "put", "k", "after")
    assert (result.returncode, result.stdout) == (0, "OK\n"), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(session_file) in lines[0], result.stderr
    assert old_cluster in lines[0] and new_cluster in lines[0]
    again = run_cli("--servers", servers, "--session", str(session_file), "get", "k")
    assert (again.returncode, again.stdout, again.stderr) == (0, "after\n", "")
    assert session_of(session_file)["cluster"] == new_cluster


# The command line ----------------------------------------------------------------------


def test_options_after_the_command_and_values_from_stdin(start_cluster, tmp_path):
    cluster = start_cluster()
    servers = ",".join(cluster.addresses())
    session = str(tmp_path / "s.json")
    put = run_cli("put", "k", "hello", "--servers", servers, "--session", session)
    assert (put.returncode, put.stdout, put.stderr) == (0, "OK\n", "")
    assert run_cli("get", "k", "--servers", servers, "--session", session).stdout == "hello\n"

    dashed = run_cli("--servers", servers, "--session", session, "put", "d", "--", "-v", "x")
    assert dashed.returncode == 0
    assert run_cli("get", "d", "--servers", servers, "--session", session).stdout == "-v x\n"

    piped = run_cli("put", "p", "--servers", servers, "--session", session,
                    stdin="from a pipe\n")
    assert (piped.returncode, piped.stdout) == (0, "OK\n"), piped.stderr
    by_env = run_cli("get", "p", "--session", session, env={"REPLICAD_SERVERS": servers})
    assert (by_env.returncode, by_env.stdout) == (0, "from a pipe\n")

    client_ini = tmp_path / "client.ini"
    client_ini.write_text(f"[client]\nservers = {servers}\n")
    assert run_cli("--config", str(client_ini), "--session", session,
                   "get", "k").stdout == "hello\n"
    assert run_cli("--version").stdout.startswith("replicad-cli ")


def test_no_cluster_running_fails_fast_with_one_line(tmp_path):
    base = find_free_base_port(3)
    servers = ",".join(f"127.0.0.1:{base + i}" for i in (1, 2, 3))
    started = time.monotonic()
    result = run_cli("--servers", servers, "--session", str(tmp_path / "s.json"),
                     "put", "k", "v", timeout_s=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith("is the cluster running?"), result.stderr
    assert elapsed < 2.0 + 1.0   # one pass and a back-off, plus starting Python


# Half-close ----------------------------------------------------------------------------


def test_a_half_closed_connection_still_gets_its_reply(start_cluster):
    cluster = start_cluster()
    for i in cluster.ids:
        host, port = cluster.address(i).rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"PUT half{i} closed\n".encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data == b"OK\r\n"
        assert BlockingClient(cluster.addresses(), timeout_s=10).get(f"half{i}") == "closed"
