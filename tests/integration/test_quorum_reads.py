"""Quorum mode: a read shows no write still waiting for its quorum (quorumindex.py), nor
a write in doubt that a take-over pulled before a majority holds it (node.py,
``_held_by_a_majority``).

The window is forced with the fault proxy: replica 3's pushes are held, so a write
waits on 3 for its quorum while a session reads there.  Had the read's reply carried
that write (in its value or only in its clock), the session would require it of every
replica, and once 3 is cut off the majority side, which never got it, could serve the
session nothing (``ERR STALE``) until 3 came back: a client stranded by a partition
that the rest of the cluster rode out (chaos seed 21, docs/reliability.md).
"""

from __future__ import annotations

import threading

import pytest

from replicad.client import BlockingClient, ClientError
from replicad.session import ClientSession

from .test_partitions import try_put


def own_writes(cluster, i: int) -> int:
    """How many writes replica i made itself, by its STATUS clock."""
    return int(cluster.status(i)["clock"].get(str(i), 0))


def test_a_session_that_read_while_a_write_waited_is_served_by_the_majority(proxied):
    cluster = proxied(3, write_quorum="majority", quorum_timeout=30)
    assert cluster.coordinator() == 3
    session = ClientSession()
    BlockingClient([cluster.address(3)], session=session, timeout_s=10).put("k", "v")
    made = own_writes(cluster, 3)
    cluster.no_dial(3, 1)
    cluster.no_dial(3, 2)       # 3's pushes are held; 1 and 2 still reach 3 (its lease)
    writer = threading.Thread(target=try_put, args=([cluster.address(3)], "w", "x", 40.0),
                              daemon=True)
    writer.start()              # another client's write: durable on 3, waiting
    try:
        cluster.wait_until(lambda: own_writes(cluster, 3) > made, timeout_s=10,
                           what="the write to wait for its quorum on 3")
        assert BlockingClient([cluster.address(3)], session=session,
                              timeout_s=10).get("k") == "v"
        assert session.read.get(3, 0) == made      # the waiting write is not in it
        cluster.isolate(3)
        majority = BlockingClient([cluster.address(1), cluster.address(2)],
                                  session=session, timeout_s=15)
        assert majority.get("k") == "v"            # served, not ERR STALE
    finally:
        cluster.heal()
    writer.join(60)


def held(cluster, i: int, origin: int) -> int:
    """How many of ``origin``'s writes replica i holds, by its STATUS clock."""
    status = cluster.status(i)
    return int(status["clock"].get(str(origin), 0)) if status else 0


@pytest.mark.slow
def test_a_take_over_shows_a_write_in_doubt_only_once_a_majority_holds_it(proxied):
    """5 replicas.  The coordinator's pushes reach 4 alone, so a write waits there in
    doubt, on 5 and 4; 5 is killed and 4 takes over, holding that write while 1, 2 and
    3 lack it.  A session reads it on 4 as soon as 4 serves, and 4 is cut off at once:
    the majority side must still serve that session.  Had 4 served before a majority
    held the write, 1, 2 and 3 would not have it (their anti-entropy looks twice, a
    ping interval apart, before it pulls), and would answer the session ERR STALE
    until 4 or 5 came back."""
    cluster = proxied(5, write_quorum="majority", quorum_timeout=30)
    assert cluster.coordinator() == 5
    # A first write everywhere: an empty replica pulls what a peer holds at its first
    # look, a replica that holds something only at its second, a ping interval later.
    BlockingClient([cluster.address(5)], timeout_s=10).put("k", "v")
    made = held(cluster, 5, 5)
    cluster.wait_until(lambda: all(held(cluster, i, 5) == made for i in cluster.ids),
                       timeout_s=10, what="the first write on every replica")
    for follower in (1, 2, 3):
        cluster.no_dial(5, follower)            # 5's pushes reach 4 alone
    writer = threading.Thread(target=try_put, args=([cluster.address(5)], "w", "x", 40.0),
                              daemon=True)
    writer.start()
    cluster.wait_until(lambda: held(cluster, 4, 5) > made, timeout_s=10,
                       what="the write in doubt to reach 4")
    assert [held(cluster, i, 5) for i in (1, 2, 3)] == [made] * 3
    cluster.kill(5)
    cluster.heal()
    session = ClientSession()

    def read_on_4():
        try:
            return BlockingClient([cluster.address(4)], session=session,
                                  timeout_s=2).get("w")
        except ClientError:
            return None

    try:
        assert cluster.wait_until(read_on_4, timeout_s=20,
                                  what="4 to take over and serve the write") == "x"
        cluster.isolate(4)
        majority = BlockingClient([cluster.address(i) for i in (1, 2, 3)],
                                  session=session, timeout_s=15)
        assert majority.get("w") == "x"         # served, not ERR STALE
    finally:
        cluster.heal()
    writer.join(60)
