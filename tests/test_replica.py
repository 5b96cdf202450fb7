"""The Replica glue without sockets: MemoryReactorClock, a real SQLite store."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from replicad import peerwire
from replicad.config import default_config
from replicad.election import Role
from replicad.peer import PeerAnswer
from replicad.peerwire import PeerStatus, PeerWireError
from replicad.replica import Replica
from replicad.store import Record
from replicad.vclock import VectorClock
from replicad.wire import Request


@pytest.fixture
def replica(tmp_path):
    """Replica 2 of the built-in 3-replica cluster, started on a MemoryReactorClock."""
    reactor = MemoryReactorClock()
    replica = Replica(default_config(), 2, str(tmp_path / "data"), reactor)
    replica.startService()
    yield replica
    replica.stopService()


def follow(replica: Replica, coordinator: int = 3, epoch: int = 1) -> None:
    assert replica.election.coordinator_received(coordinator, epoch)


def test_start_up_dials_every_peer_and_holds_an_election(replica):
    assert sorted(c[1] for c in replica.reactor.tcpClients) == [7101, 7103]
    assert replica.election.role is Role.ELECTING     # asked replica 3, waiting for OK
    assert replica.status_fields()["role"] == "electing"
    assert replica.status_fields()["ready"] == "no"


def test_a_follower_serves_through_its_coordinator(replica):
    follow(replica)
    fields = replica.status_fields()
    assert (fields["role"], fields["coordinator"], fields["epoch"]) == ("follower", "3", "1")
    assert fields["ready"] == "yes"
    assert replica.store.epoch == 1                   # the epoch is persisted


def test_ping_answer_carries_role_coordinator_epoch_and_clock(replica):
    follow(replica)
    replica.store.write(3, "k", "v")
    answer = replica.peer_request(1, "PING", "")
    status = PeerStatus.parse(2, answer.payload)
    assert (answer.kind, status.role, status.coordinator, status.epoch) == (
        "OK", "follower", 3, 1
    )
    assert status.clock == VectorClock({3: 1})
    assert replica.peer_up[1] is True


def test_election_from_a_lower_replica_is_answered_ok(replica):
    answer = replica.peer_request(1, "ELECTION", "4")
    assert (answer.kind, answer.payload) == ("OK", "4")   # learned epoch 4 on the way


def test_a_stale_coordinator_announcement_is_rejected_with_our_epoch(replica):
    follow(replica, 3, 5)
    answer = replica.peer_request(3, "COORDINATOR", "2")
    assert (answer.kind, answer.payload) == ("NO", "5")


def test_pushes_apply_in_order_and_a_gap_is_reported(replica):
    first = Record("a", "1", 3, 1, VectorClock({3: 1}))
    third = Record("b", "3", 3, 3, VectorClock({3: 3}))
    assert replica.peer_request(3, "PUSH", peerwire.encode_record(first)).payload == "applied"
    assert replica.peer_request(3, "PUSH", peerwire.encode_record(first)).payload == "duplicate"
    assert replica.peer_request(3, "PUSH", peerwire.encode_record(third)).payload == "gap"
    assert replica.store.clock == VectorClock({3: 1})     # not past the gap
    assert replica.store.get("b").value == "3"           # but the record is kept


def test_delta_streams_only_what_the_asker_lacks(replica):
    for n in range(5):
        replica.store.write(2, f"k{n}", str(n))
    answer = replica.peer_request(1, "DELTA", "2:3")
    assert isinstance(answer, PeerAnswer)
    records = [peerwire.decode_record(text) for _, text in answer.body]
    assert [r.key for r in records] == ["k3", "k4"]
    assert answer.payload == "2:5"


def test_garbage_in_a_peer_request_is_a_peer_wire_error(replica):
    with pytest.raises(PeerWireError):
        replica.peer_request(1, "PUSH", "not a record")
    with pytest.raises(PeerWireError):
        replica.peer_request(1, "ELECTION", "soon")


def test_a_forwarded_request_to_a_non_coordinator_is_refused(replica):
    follow(replica)
    answer = replica.peer_request(1, "CLIENT", "GET k")
    assert answer.result.kind == "NO" and answer.result.payload == "3"


def test_a_request_without_a_coordinator_is_unavailable_at_the_deadline(replica):
    d = replica.handle(Request("GET", "k"))
    assert not d.called
    replica.reactor.advance(replica.timers.election_wait + 0.01)
    assert d.result.error_code == "UNAVAILABLE"


def test_waiters_leave_the_list_however_their_wait_ends(replica):
    """Every forwarded request waits for news; none may stay behind (a leak)."""
    deadline = replica.reactor.seconds() + 10
    cancelled = defer.ensureDeferred(replica._news(deadline))
    # Shorter than every election timer, so no role change can end it early.
    timed_out = defer.ensureDeferred(replica._news(replica.reactor.seconds() + 0.1))
    assert len(replica._waiters) == 2
    cancelled.cancel()
    cancelled.addErrback(lambda f: f.trap(defer.CancelledError))
    replica.reactor.advance(0.15)
    assert timed_out.result is False
    assert replica._waiters == []


def test_an_election_is_no_evidence_that_the_coordinator_died(replica):
    """Bully makes a follower hold an election whenever a lower replica does; a forward
    in flight to the (alive) coordinator must keep waiting for its answer."""
    follow(replica)
    dead = defer.ensureDeferred(replica._coordinator_dead(3, replica.reactor.seconds() + 5))
    assert replica.peer_request(1, "ELECTION", "1").kind == "OK"
    assert replica.election.role is Role.ELECTING
    assert not dead.called
    replica._suspect(3)                     # what a failed ping to it does
    assert dead.called
