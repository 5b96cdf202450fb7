"""A follower that wakes far behind catches up from its coordinator without an election.

Found with a scratch script (docs/operations.md, "A follower's catch-up holds no
election"): replica 1 SIGSTOPped while 20,000 writes went to coordinator 3, then
SIGCONT.  Its heartbeat's PING timed out ("coordinator 3 did not answer a ping", 2 runs
of 2; with 100,000 writes it won the election in 2 runs of 3, replica 3 bullying it
back each time): the answer came after the FULL copy's frames on the same connection, and on
waking the reactor ran the calls' due timers before it read the answers that had come.

How the window is forced: the follower is stopped for the whole load of 50,000 writes,
so the coordinator's pushes back up and fail, and it wakes far behind and pulls the gap
as one stream over the link its heartbeats use.  (With 20,000 the pushes did not always
back up and no pull came.)  The test fails on the code before the fix, 3 runs of 3, and
with the stream rule alone switched off; the late-timer rule is forced in
tests/test_peer.py.
"""

from __future__ import annotations

import os
import signal

from .lines import pipelined

WRITES = 50_000
BATCH = 2_000


def test_a_follower_woken_far_behind_catches_up_without_an_election(start_cluster):
    cluster = start_cluster(3)
    coordinator = cluster.wait_until(cluster.coordinator, timeout_s=15, what="a coordinator")
    follower = min(i for i in cluster.ids if i != coordinator)
    logged = os.path.getsize(cluster.log_path(follower))
    os.kill(cluster.pid(follower), signal.SIGSTOP)
    try:
        value = "x" * 100
        for first in range(0, WRITES, BATCH):
            replies = pipelined(cluster.address(coordinator),
                                [f"PUT k{i:05d} {value}" for i in range(first, first + BATCH)])
            assert replies == ["OK"] * BATCH, replies[:5]
    finally:
        os.kill(cluster.pid(follower), signal.SIGCONT)
    cluster.wait_until(lambda: (cluster.status(follower) or {}).get("keys") == WRITES,
                       timeout_s=60, what=f"replica {follower} holds every key")
    with open(cluster.log_path(follower), errors="replace") as log:
        log.seek(logged)
        text = log.read()
    assert "pulled " in text                    # it did catch up by a pull
    assert "did not answer a ping" not in text, text[-3000:]
    assert "starts an election" not in text, text[-3000:]
    assert cluster.coordinator() == coordinator
