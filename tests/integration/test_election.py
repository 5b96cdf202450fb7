"""Issue #3 end to end: Bully elections among real twistd processes killed with SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from replicad.client import BlockingClient, ClientError

from .test_foundation import talk


def agreed_coordinator(cluster, live: list[int]) -> int | None:
    """The coordinator every live replica names, or None if they disagree."""
    named = set()
    for i in live:
        status = cluster.status(i)
        if status is None or status["role"] == "electing":
            return None
        named.add(status["coordinator"])
    return named.pop() if len(named) == 1 else None


def wait_for_coordinator(cluster, live: list[int], expected: int) -> None:
    cluster.wait_until(
        lambda: agreed_coordinator(cluster, live) == expected,
        timeout_s=10, what=f"replicas {live} agree on coordinator {expected}",
    )


def test_kill_the_coordinator_then_bring_it_back(start_cluster, cli):
    cluster = start_cluster(3)
    wait_for_coordinator(cluster, [1, 2, 3], 3)
    epoch_before = int(cluster.status(3)["epoch"])
    cluster.kill(3)
    # A write right after the kill succeeds, or, if it was forwarded to replica 3 just
    # as it died, is reported in doubt (exit 3): never a false OK, never a hang.
    first = cli(cluster.addresses(), "put", "k", "while 3 is down")
    assert first.returncode == 0 or (first.returncode == 3 and "INDOUBT" in first.stderr)
    wait_for_coordinator(cluster, [1, 2], 2)
    assert cli(cluster.addresses(), "put", "k", "while 3 is down").returncode == 0
    assert int(cluster.status(2)["epoch"]) > epoch_before

    cluster.start_replica(3)
    wait_for_coordinator(cluster, [1, 2, 3], 3)   # it comes back and bullies
    status = cluster.status(3)
    assert int(status["epoch"]) > epoch_before + 1
    assert cli(cluster.addresses(), "get", "k").stdout == "while 3 is down\n"


def test_five_replicas_kill_two_the_highest_survivor_wins(start_cluster):
    cluster = start_cluster(5)
    wait_for_coordinator(cluster, [1, 2, 3, 4, 5], 5)
    cluster.kill(5)
    cluster.kill(4)
    wait_for_coordinator(cluster, [1, 2, 3], 3)
    client = BlockingClient(cluster.addresses(), timeout_s=10)
    client.put("survivor", "3")
    assert client.get("survivor") == "3"


@pytest.mark.parametrize("victim", [1, 2])
def test_killing_a_follower_changes_nothing(start_cluster, victim):
    cluster = start_cluster(3)
    cluster.kill(victim)
    live = [i for i in (1, 2, 3) if i != victim]
    wait_for_coordinator(cluster, live, 3)
    cluster.wait_until(
        lambda: cluster.status(3)["peers"][str(victim)] == "down",
        timeout_s=10, what=f"replica 3 reports replica {victim} down",
    )


def test_requests_during_an_election_wait_then_succeed(start_cluster):
    # Freeze the coordinator (SIGSTOP) and send a write to replica 1 at once: the
    # request itself makes replica 1 ping its coordinator (client-triggered detection),
    # the failed ping starts the election, and the request waits for it, then is served.
    cluster = start_cluster(3)
    assert cluster.coordinator() == 3
    cluster.kill(3, signal.SIGSTOP)
    try:
        client = BlockingClient([cluster.address(1)], timeout_s=15)
        client.put("during", "election")      # waits for the election, then is served
        assert client.get("during") == "election"
        assert agreed_coordinator(cluster, [1, 2]) == 2
        log = cluster.log_tail(1, lines=400)
        assert "coordinator 3 did not answer a ping" in log
        assert "starts an election" in log.split("coordinator 3 did not answer a ping")[1]
    finally:
        cluster.kill(3, signal.SIGCONT)


def test_a_request_gets_unavailable_at_the_deadline_never_a_hang(start_cluster):
    # Freeze (SIGSTOP) the two higher replicas: replica 1's election then waits for
    # their answers (answer_timeout 3 s), longer than a request may wait (0.5 s).
    cluster = start_cluster(3, answer_timeout=3, coordinator_timeout=6, election_wait=0.5)
    cluster.kill(3, signal.SIGSTOP)
    cluster.kill(2, signal.SIGSTOP)
    try:
        cluster.wait_until(lambda: cluster.status(1)["role"] == "electing", timeout_s=5,
                           what="replica 1 notices the coordinator is frozen")
        # One raw request, no client retries: the replica itself must answer in time.
        started = time.monotonic()
        reply = talk(cluster.address(1), b"PUT k v\r\nQUIT\r\n").decode()
        assert time.monotonic() - started < 3
        assert reply.startswith("ERR UNAVAILABLE "), reply
    finally:
        cluster.kill(3, signal.SIGCONT)
        cluster.kill(2, signal.SIGCONT)


def test_a_replica_with_the_wrong_secret_can_neither_vote_nor_sync(start_cluster, tmp_path):
    cluster = start_cluster(3)
    BlockingClient(cluster.addresses(), timeout_s=10).put("k", "v")
    cluster.kill(3)
    wait_for_coordinator(cluster, [1, 2], 2)
    BlockingClient(cluster.addresses(), timeout_s=10).put("later", "written by 2")
    # Replica 3 comes back with the right addresses but another secret.
    rogue_config = tmp_path / "rogue.ini"
    text = open(cluster.config_path).read()
    secret_line = next(line for line in text.splitlines() if line.startswith("secret"))
    rogue_config.write_text(text.replace(secret_line, "secret = not-the-cluster-secret"))
    command = cluster.command(3)
    command[command.index("--config") + 1] = str(rogue_config)
    rogue = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def rogue_status():
        try:
            return BlockingClient([cluster.address(3)], timeout_s=1).status()
        except ClientError:
            return None

    try:
        cluster.wait_until(
            lambda: (status := rogue_status()) is not None and status["role"] == "coordinator",
            timeout_s=10, what="the rogue replica answers STATUS",
        )
        rogue_status = rogue_status()
        assert rogue_status["peers"] == {"1": "down", "2": "down"}   # nobody let it in
        assert "2" not in rogue_status["clock"]         # it never got replica 2's write
        assert agreed_coordinator(cluster, [1, 2]) == 2             # its claim is ignored
        assert BlockingClient([cluster.address(1)], timeout_s=5).get("k") == "v"
        log = cluster.log_tail(2, lines=400)
        assert "bad proof: is the cluster secret the same on every replica?" in log
    finally:
        rogue.kill()
        rogue.wait()
