"""Quorum mode: a read shows no write still waiting for its quorum (quorumindex.py).

The window is forced with the fault proxy: replica 3's pushes are held, so a write
waits on 3 for its quorum while a session reads there.  Had the read's reply carried
that write (in its value or only in its clock), the session would require it of every
replica, and once 3 is cut off the majority side, which never got it, could serve the
session nothing (``ERR STALE``) until 3 came back: a client stranded by a partition
that the rest of the cluster rode out (chaos seed 21, docs/reliability.md).
"""

from __future__ import annotations

import threading

from replicad.client import BlockingClient
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
