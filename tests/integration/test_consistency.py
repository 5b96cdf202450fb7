"""Issue #4 end to end: session guarantees, full copy, delta and write quorum."""

from __future__ import annotations

import os
import shutil

from replicad.client import BlockingClient, NoServerAvailable, ServerError
from replicad.session import ClientSession
from tests.integration.lines import pipelined


def wipe(cluster, replica_id: int) -> None:
    shutil.rmtree(os.path.join(cluster.data_dir, f"replica-{replica_id}"))


def same_clock_everywhere(cluster, live):
    statuses = [cluster.status(i) for i in live]
    if any(status is None for status in statuses):    # still starting up
        return False
    clocks = [status["clock"] for status in statuses]
    return all(clock == clocks[0] for clock in clocks)


def test_a_session_never_reads_older_than_its_write_after_the_coordinator_dies(start_cluster):
    cluster = start_cluster(3)
    session = ClientSession()
    client = BlockingClient(cluster.addresses(), timeout_s=10, session=session)
    client.put("k", "old")
    cluster.wait_until(lambda: same_clock_everywhere(cluster, [1, 2, 3]), timeout_s=5,
                       what="'old' replicated everywhere")
    client.put("k", "new")
    cluster.kill(3)          # before anything else happens: the push may not have left
    client = BlockingClient(cluster.addresses(), timeout_s=4, session=session)
    try:
        value = client.get("k")
    except ServerError as e:
        assert e.code == "STALE"
    except NoServerAvailable as e:       # STALE is retried until the client's deadline
        assert e.last_reply is not None and e.last_reply.error_code == "STALE", e
    else:
        assert value == "new"


def test_original_scenario_the_returning_empty_replica_fetches_before_answering(
    start_cluster, cli
):
    cluster = start_cluster(3)
    servers = cluster.addresses()
    cluster.kill(3)
    cluster.wait_until(lambda: cluster.coordinator() == 2, timeout_s=10,
                       what="replica 2 takes over")
    assert cli(servers, "put", "k", "written while 3 was down").returncode == 0
    wipe(cluster, 3)                  # replica 3 comes back empty-handed ...
    cluster.start_replica(3)
    cluster.wait_until(lambda: cluster.coordinator() == 3, timeout_s=10,
                       what="replica 3 wins the election")
    got = cli([cluster.address(3)], "get", "k")   # ... and serves the session's read
    assert (got.returncode, got.stdout) == (0, "written while 3 was down\n")


def test_an_empty_replica_gets_every_key_by_full_copy(start_cluster):
    cluster = start_cluster(3)
    client = BlockingClient(cluster.addresses(), timeout_s=10)
    for n in range(300):
        client.put(f"key{n:04d}", f"value {n}")
    client.delete("key0000")
    cluster.kill(1)
    wipe(cluster, 1)
    cluster.start_replica(1)
    cluster.wait_until(
        lambda: cluster.status(1) is not None
        and cluster.status(1)["clock"] == cluster.status(3)["clock"],
        timeout_s=15, what="replica 1 catches up",
    )
    assert cluster.status(1)["keys"] == 299
    assert "pulled full from replica" in cluster.log_tail(1, lines=200)


def test_a_full_copy_larger_than_one_merge_step_is_merged_in_steps(start_cluster):
    """A wiped replica's copy of 5,000 keys is merged in three steps (MERGE_ROWS keys
    each, a reactor turn between them: bench/full_copy_join.py measures why), and ends
    with every key, the deleted one still deleted, and the copied clock."""
    from replicad.store import MERGE_ROWS

    keys = 5000
    assert 2 * MERGE_ROWS < keys <= 3 * MERGE_ROWS
    cluster = start_cluster(3)
    replies = pipelined(cluster.address(3), [f"PUT key{n:05d} value{n}" for n in range(keys)])
    assert replies == ["OK"] * keys, replies[:5]
    client = BlockingClient([cluster.address(3)], timeout_s=10)
    client.delete("key00000")
    cluster.wait_until(lambda: same_clock_everywhere(cluster, [1, 2, 3]), timeout_s=15,
                       what="every key everywhere")
    cluster.kill(1)
    wipe(cluster, 1)
    cluster.start_replica(1)
    cluster.wait_until(lambda: same_clock_everywhere(cluster, [1, 2, 3]), timeout_s=30,
                       what="replica 1 copies every key")
    assert cluster.status(1)["keys"] == keys - 1
    assert "merged in 3 step(s)" in cluster.log_tail(1, lines=200)
    one = BlockingClient([cluster.address(1)], timeout_s=10)
    assert one.get("key04999") == "value4999" and one.get("key00000") is None


def test_a_replica_that_missed_writes_catches_up_by_delta(start_cluster):
    cluster = start_cluster(3)
    client = BlockingClient(cluster.addresses(), timeout_s=10)
    for n in range(40):
        client.put(f"before{n}", str(n))
    cluster.wait_until(lambda: same_clock_everywhere(cluster, [1, 2, 3]), timeout_s=5,
                       what="the first writes everywhere")
    cluster.kill(1)
    for n in range(20):    # a third of all writes: less than full_copy_ratio, so a delta
        client.put(f"missed{n}", str(n))
    cluster.start_replica(1)
    cluster.wait_until(lambda: same_clock_everywhere(cluster, [1, 2, 3]), timeout_s=15,
                       what="replica 1 catches up")
    assert cluster.status(1)["keys"] == 60
    assert "pulled delta from replica" in cluster.log_tail(1, lines=200)


def test_write_quorum_two_loses_nothing_when_the_coordinator_dies(start_cluster):
    cluster = start_cluster(3, write_quorum=2)
    client = BlockingClient(cluster.addresses(), timeout_s=10)
    for n in range(20):
        client.put(f"q{n}", str(n))
    cluster.kill(3)          # right after the last acknowledged write
    fresh = BlockingClient([cluster.address(1), cluster.address(2)], timeout_s=10)
    assert [fresh.get(f"q{n}") for n in range(20)] == [str(n) for n in range(20)]


def test_write_quorum_not_reached_is_reported(start_cluster):
    cluster = start_cluster(3, write_quorum=3, quorum_timeout=0.5)
    cluster.kill(1)
    # The client sends a write answered ERR QUORUM again until its deadline (it may
    # yet be confirmed): a short deadline, a few attempts, the same last answer.
    client = BlockingClient([cluster.address(3)], timeout_s=1.5)
    try:
        client.put("k", "v")
    except ServerError as e:
        assert e.code == "QUORUM"
    else:
        raise AssertionError("a write acknowledged without its quorum")
