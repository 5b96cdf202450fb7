"""Confirmed reads on real replicas (replicad/confirmedreads.py): by default a follower
answers a read itself once its coordinator has confirmed the writes it made durable,
and a read that confirmation does not cover is forwarded, never answered stale."""

from __future__ import annotations

import signal
import time

from replicad.client import BlockingClient

from .lines import ask
from .test_clients import HUNG_BOUND_S
from .test_follower_reads import (
    executed_by,
    k_old_read_by_replica_1,
    wait_until_it_reads_itself,
)


def test_a_follower_answers_a_confirmed_read_itself(start_cluster):
    cluster = start_cluster(3)
    assert cluster.coordinator() == 3
    assert ask(cluster.address(3), "@r=;w= PUT k v1").endswith(" OK")
    wait_until_it_reads_itself(cluster, 1)
    assert ask(cluster.address(1), "GET k") == "VALUE v1"
    assert cluster.status(1)["confirmed_reads"] == "yes"


def test_a_write_confirmed_before_its_push_arrived_is_not_read_stale(proxied):
    """The window: the route replica 3 dials to replica 1 is held (3's pushes to 1;
    1's own calls to 3, READINDEX among them, pass), so 3 acknowledges k = new
    (write_quorum 1) that 1 does not hold, and confirms it to 1.  A read sent to 1 must
    answer new (forwarded: 1 lacks it), not old from 1's own store.  Heartbeats every 5
    s and no anti-entropy keep 1 from pulling the write meanwhile (two looks of a
    heartbeat would).  With the coverage check off, 1 answers old."""
    cluster = k_old_read_by_replica_1(proxied, anti_entropy_interval=60, ping_interval=5)
    cluster.no_dial(3, 1)
    try:
        assert BlockingClient([cluster.address(3)], timeout_s=20).put("k", "new") is None
        reply = ask(cluster.address(1), "@r=;w= GET k")
    finally:
        cluster.heal()
    assert reply.endswith(" VALUE new"), reply
    assert executed_by(reply) == 3                 # forwarded: 1 did not hold it


def test_a_read_sent_to_a_follower_of_a_hung_coordinator_is_answered_after_failover(
        start_cluster):
    """Replica 3 is SIGSTOPped (its sockets accept, nobody reads): the follower's
    READINDEX gets no answer, the read is forwarded, the forward is given up once 3 is
    found dead, and replica 2, which takes over, answers it with the last acknowledged
    value.  The client is held for a failover, not for good."""
    cluster = start_cluster(3)
    assert cluster.coordinator() == 3
    assert ask(cluster.address(3), "@r=;w= PUT k last").endswith(" OK")
    wait_until_it_reads_itself(cluster, 1)
    cluster.kill(3, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = ask(cluster.address(1), "@r=;w= GET k", timeout_s=HUNG_BOUND_S * 2)
        took = time.monotonic() - started
    finally:
        cluster.kill(3, signal.SIGCONT)
    assert reply.endswith(" VALUE last"), reply
    assert executed_by(reply) in (1, 2) and took < HUNG_BOUND_S, (reply, took)
