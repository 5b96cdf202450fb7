"""A bound replica that comes back far behind catches up before it stands for election.

As coordinator it pulls what it lacks before it serves, with every client waiting: the
highest replica, back after missing 100,000 writes, held the cluster's writes for 6.1 s
(bench/rejoin_gap.py; the time grows with the store).  Now it copies as a follower first, the
cluster serving meanwhile, and takes over with only the tail to pull.
"""

from __future__ import annotations

import os

from replicad.replica import REJOIN_BEHIND_WRITES
from tests.integration.lines import ask, pipelined


def test_a_replica_far_behind_catches_up_before_it_stands(start_cluster):
    cluster = start_cluster(3)
    cluster.kill(3)
    cluster.wait_until(lambda: cluster.coordinator() == 2, timeout_s=15,
                       what="replica 2 coordinates")
    writes = 2 * REJOIN_BEHIND_WRITES
    replies = pipelined(cluster.address(2), [f"PUT k{i:05d} v" for i in range(writes)])
    assert replies == ["OK"] * writes, replies[:5]
    logged = os.path.getsize(cluster.log_path(3))
    cluster.start_replica(3)
    cluster.wait_until(lambda: cluster.coordinator() == 3, timeout_s=30,
                       what="replica 3 takes over again")
    cluster.wait_until(lambda: (cluster.status(3) or {}).get("keys") == writes, timeout_s=30,
                       what="replica 3 holds every key")
    with open(cluster.log_path(3), errors="replace") as log:
        log.seek(logged)
        lines = log.read().splitlines()

    def first(*words: str) -> int:
        return next((i for i, line in enumerate(lines) if all(w in line for w in words)),
                    len(lines))

    behind = first("writes behind replica", "catches up before it stands")
    pulled, election = first("pulled "), first("starts an election")
    assert behind < pulled < election < len(lines), "\n".join(lines[-40:])
    # Caught up by its own pull, or by one under way that it waited for (a link back,
    # a push's gap: not two whole copies side by side).
    assert "caught up" in lines[election], lines[election]


def test_a_replica_a_little_behind_stands_at_once(start_cluster):
    cluster = start_cluster(3)
    cluster.kill(3)
    cluster.wait_until(lambda: cluster.coordinator() == 2, timeout_s=15,
                       what="replica 2 coordinates")
    assert ask(cluster.address(2), "PUT k v") == "OK"
    logged = os.path.getsize(cluster.log_path(3))
    cluster.start_replica(3)
    cluster.wait_until(lambda: cluster.coordinator() == 3, timeout_s=30,
                       what="replica 3 takes over again")
    with open(cluster.log_path(3), errors="replace") as log:
        log.seek(logged)
        text = log.read()
    assert "catches up before it stands" not in text
    assert "starts an election in epoch" in text and ": start-up" in text
