"""Quorum mode: no read shows a write still waiting for its quorum (replicad/quorumindex.py).

The index alone; then a coordinator (a Replica on a MemoryReactorClock, its pushes held
by the test) and a confirming follower.  Across real processes, with the window forced
by the fault proxy: tests/integration/test_quorum_reads.py.
"""

from __future__ import annotations

import dataclasses

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from replicad import wire
from replicad.config import default_config
from replicad.peer import PeerResponse
from replicad.quorumindex import QuorumIndex
from replicad.replica import Replica
from replicad.vclock import VectorClock
from tests.test_confirmed_reads import confirming_follower, ok, read_index_answers, take
from tests.test_replica import serving

# The index -------------------------------------------------------------------------------


def test_a_waiting_write_and_every_later_one_are_not_shown_until_it_is_decided():
    index = QuorumIndex()
    assert index.quiet and index.shows(7)
    index.waiting(3)
    index.waiting(4)
    assert not index.quiet
    assert index.shows(2) and not index.shows(3) and not index.shows(4)
    index.decided(4)                     # out of order: 3 still waits
    assert not index.shows(3) and not index.shows(4)
    index.decided(3)
    assert index.quiet and index.shows(4)


def test_a_write_decided_on_top_passes_the_decided_ones_behind_it_and_no_more():
    index = QuorumIndex()
    for seq in (1, 2, 3, 4):
        index.waiting(seq)
    index.decided(3)                     # out of order: kept until 2 is decided
    index.decided(1)                     # on top: popped at once
    assert index.shows(1) and not index.shows(2)
    index.decided(1)                     # again, and a write never registered: nothing
    index.decided(9)
    assert index.shows(1) and not index.shows(2)
    index.decided(2)                     # passes 3 (decided before) but not 4
    assert index.shows(3) and not index.shows(4)
    index.decided(4)
    assert index.quiet


def test_the_clock_a_reply_carries_stops_before_the_first_waiting_write():
    index = QuorumIndex()
    clock = VectorClock({1: 5, 2: 9})
    assert index.cap(clock, 2) is clock
    index.waiting(8)
    index.waiting(9)
    assert index.cap(clock, 2) == VectorClock({1: 5, 2: 7})
    index.decided(8)
    assert index.cap(clock, 2) == VectorClock({1: 5, 2: 8})
    index.waiting(1)                     # (a seq below everything: the entry goes)
    assert index.cap(VectorClock({2: 3}), 2) == VectorClock()


def test_a_watcher_wakes_when_the_first_waiting_write_is_decided_or_released():
    index = QuorumIndex()
    index.waiting(1)
    index.waiting(2)
    woken = []
    index.advanced().addCallback(woken.append)
    index.decided(2)                     # not the first: nothing advanced
    assert woken == []
    index.decided(1)
    assert woken == [None]
    index.advanced().addCallback(woken.append)
    index.release()                      # the replica stops serving
    assert woken == [None, None]


def test_a_key_shows_its_newest_version_before_the_first_waiting_write():
    from replicad.store import Record

    def rec(seq, value):
        return Record("k", value, 2, seq, VectorClock({2: seq}))

    index = QuorumIndex()
    before, a, b = rec(1, "old"), rec(5, "a"), rec(7, "b")
    index.waiting(5, "k", before, a)
    index.waiting(7, "k", a, b)
    assert index.shown("k", b, 2) is before
    assert index.shown("k", b, 2, holds=5) is a          # the session holds 2:5 already
    assert index.shown("other", before, 2) is before     # a key nothing of waits
    index.decided(7)                                     # out of order: 2:5 still waits
    assert index.shown("k", b, 2) is before
    index.decided(5)
    assert index.shown("k", b, 2) is b and index.keys_written() == []


def test_capped_lowers_one_entry_and_nothing_else():
    clock = VectorClock({1: 4, 3: 2})
    assert clock.capped(1, 2) == VectorClock({1: 2, 3: 2})
    assert clock.capped(1, 9) is clock
    assert clock.capped(3, 0) == VectorClock({1: 4})
    assert clock.capped(5, 0) is clock


# A coordinator in quorum mode ------------------------------------------------------------


@pytest.fixture
def coordinator(tmp_path):
    """Replica 2 serving, its writes then pushed in quorum mode (write_quorum 2: set
    after the take-over, as tests/test_replica.py does, since in quorum mode a replica
    alone could not take over); each PUSH call waits for the test (``ack_all``)."""
    replica = Replica(default_config(), 2, str(tmp_path / "data"), MemoryReactorClock(),
                      new_cluster=True)
    replica.startService()
    serving(replica)
    quorum_of_two = dataclasses.replace(replica.config, write_quorum=2)
    replica.config = replica.sync.config = replica.writes.config = quorum_of_two
    assert replica.config.quorum_mode
    replica.acks = []

    def call(peer_id, message, timeout_s, on_line=None):
        d = defer.Deferred()
        replica.acks.append((d, len(message.records)))
        return d

    replica.sync.call = call
    yield replica
    replica.stopService()


def ack_all(replica: Replica) -> None:
    acks, replica.acks = replica.acks, []
    for d, n in acks:
        d.callback(PeerResponse("OK", ",".join(["applied"] * n)))


def write_waiting(replica: Replica, key: str, value: str) -> defer.Deferred:
    """A PUT that is durable here and waits for its quorum (its pushes held)."""
    d = replica.handle(wire.parse_request(f"PUT {key} {value}", replica.config.limits))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert replica.acks and not d.called
    return d


def now(replica: Replica, line: str):
    return replica.answer_now(wire.parse_request(line, replica.config.limits))


def test_a_key_whose_write_waits_is_read_as_it_was_before_that_write(coordinator):
    serve_acked(coordinator, "k", "v")
    write_waiting(coordinator, "k", "new")
    assert now(coordinator, "GET k").text == "v"         # at once: no wait, not "new"
    read = coordinator.handle(wire.parse_request("GET k", coordinator.config.limits))
    coordinator.reactor.advance(0)
    assert read.result.text == "v"
    ack_all(coordinator)
    assert now(coordinator, "GET k").text == "new"


def test_a_key_written_without_pause_is_read_at_once_as_of_its_last_decided_write(
        coordinator):
    """A read never waits for a quorum: it could starve on a hot key."""
    write_waiting(coordinator, "k", "1")                 # 2:1
    write_waiting(coordinator, "k", "2")                 # 2:2
    assert now(coordinator, "GET k").status == "NOTFOUND"    # neither decided
    first = coordinator.acks[:2]
    coordinator.acks = coordinator.acks[2:]
    for d, _n in first:
        d.callback(PeerResponse("OK", "applied"))        # 2:1 decided, 2:2 waits
    write_waiting(coordinator, "k", "3")                 # 2:3
    assert now(coordinator, "GET k").text == "1"
    ack_all(coordinator)
    assert now(coordinator, "GET k").text == "3"
    assert coordinator.quorum_index.keys_written() == []     # nothing kept after


def test_a_read_of_another_key_is_answered_at_once_without_the_waiting_write(
        coordinator):
    serve_acked(coordinator, "k", "v")                   # 2:1
    write_waiting(coordinator, "w", "x")                 # 2:2, waiting
    reply = now(coordinator, "@r=;w= GET k")
    assert reply.text == "v" and reply.meta.vc == VectorClock({2: 1})
    answer = coordinator.peer_request(1, "READINDEX", str(coordinator.node.epoch))
    assert (answer.kind, answer.payload) == ("OK", "2:1")   # what a read may show
    ack_all(coordinator)
    assert now(coordinator, "@r=;w= GET k").meta.vc == VectorClock({2: 2})


def test_a_keys_lists_the_keys_as_of_the_decided_writes(coordinator):
    serve_acked(coordinator, "gone", "x")
    write_waiting(coordinator, "a", "1")
    deleting = coordinator.handle(wire.parse_request("DEL gone", coordinator.config.limits))
    coordinator.reactor.advance(0)
    coordinator.reactor.advance(0)                       # durable, waiting
    assert now(coordinator, "KEYS").lines == ("gone",)
    ack_all(coordinator)
    assert deleting.result.status == "OK"
    assert now(coordinator, "KEYS").lines == ("a",)


def test_a_del_that_finds_a_waiting_delete_is_answered_once_it_is_decided(coordinator):
    serve_acked(coordinator, "k", "v")
    deleting = coordinator.handle(wire.parse_request("DEL k", coordinator.config.limits))
    coordinator.reactor.advance(0)
    coordinator.reactor.advance(0)                       # durable, waiting
    again = coordinator.handle(wire.parse_request("DEL k", coordinator.config.limits))
    coordinator.reactor.advance(0)
    assert not deleting.called and not again.called      # no NOTFOUND from a waiting DEL
    ack_all(coordinator)
    assert deleting.result.status == "OK" and again.result.status == "NOTFOUND"


def test_a_missed_quorum_counts_as_decided(coordinator):
    write_waiting(coordinator, "k", "new")
    step = coordinator.timers.quorum_timeout / 10
    for _ in range(10):                                  # missed: in doubt
        coordinator.reactor.advance(step)
    assert coordinator.quorum_index.quiet and coordinator.node.serving_as == 2
    assert now(coordinator, "GET k").text == "new"


def serve_acked(replica: Replica, key: str, value: str) -> None:
    d = replica.handle(wire.parse_request(f"PUT {key} {value}", replica.config.limits))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    ack_all(replica)
    assert d.result.status == "OK"


# A follower answering confirmed reads in quorum mode -------------------------------------


@pytest.fixture
def follower(tmp_path):
    """Replica 2 following 3 in quorum mode, holding k = v (3:1)."""
    replica = confirming_follower(tmp_path, write_quorum="majority")
    yield replica
    replica.stopService()


def test_a_follower_does_not_show_a_write_its_coordinator_has_not_confirmed(follower):
    """It holds k = v (3:1), pushed to it; its coordinator confirms only what it may
    show (nothing of 3:1 yet: its quorum is not decided there): the read is forwarded."""
    link = follower.links[3]
    link.answers = iter([defer.succeed(PeerResponse("REPLY", "NOTFOUND"))])
    read_index_answers(follower, ok("-"))
    delivered = take(follower, "GET k")
    follower.reactor.advance(0)
    follower.reactor.advance(0)
    assert [reply.status for reply in delivered] == ["NOTFOUND"]     # the coordinator's
    assert "CLIENT" in link.verbs()


def test_a_follower_answers_a_confirmed_read_with_the_confirmed_clock(follower):
    read_index_answers(follower, ok("3:1"))
    delivered = take(follower, "@r=;w= GET k")
    follower.reactor.advance(0)
    (reply,) = delivered
    assert reply.text == "v" and reply.meta.by == 2
    assert reply.meta.vc == VectorClock({3: 1})


def test_follower_reads_do_not_answer_in_quorum_mode(tmp_path):
    """A follower may hold a write its coordinator has no quorum for yet: in quorum
    mode it answers only reads its coordinator confirmed (above), never by itself."""
    from tests.test_replica import started_follower

    replica = started_follower(tmp_path, write_quorum="majority")    # follower_reads on
    try:
        assert replica.answer_now(wire.parse_request("GET k", replica.config.limits)) is None
        assert replica.status_fields()["reads_here"] == "no"
    finally:
        replica.stopService()


def test_a_del_of_a_missing_key_does_not_wait_for_other_keys_writes(coordinator):
    write_waiting(coordinator, "w", "x")
    assert serve_now(coordinator, "DEL nothing").status == "NOTFOUND"


def serve_now(replica: Replica, line: str):
    d = replica.handle(wire.parse_request(line, replica.config.limits))
    replica.reactor.advance(0)
    assert d.called, "waited"
    return d.result


def test_a_reply_never_says_less_than_the_session_it_answers_holds(coordinator):
    """The session's own write has its quorum while an earlier write of another client
    still waits (its pushes answered out of order): the read's reply clock stops before
    the waiting write, but still covers the session's write (chaos seed 21, on the
    first version: read-your-writes counted against replies that left it out)."""
    write_waiting(coordinator, "a", "1")                 # 2:1 waits
    mine = coordinator.handle(wire.parse_request("@r=;w= PUT b 2", coordinator.config.limits))
    coordinator.reactor.advance(0)
    coordinator.reactor.advance(0)
    second = coordinator.acks[2][0]                      # 2:2's push to a peer
    second.callback(PeerResponse("OK", "applied"))       # 2:2 has its quorum, 2:1 not
    assert mine.result.status == "OK" and mine.result.meta.vc == VectorClock({2: 2})
    reply = now(coordinator, "@r=;w=2:2 GET c")
    assert reply.status == "NOTFOUND" and reply.meta.vc == VectorClock({2: 2})
    assert now(coordinator, "@r=;w= GET c").meta.vc == VectorClock()   # no session: cut


def test_a_read_resumed_by_a_commit_does_not_show_a_write_of_that_group(coordinator):
    """The read waits for the open group (a write of another key in it); a write of its
    key joins the group after it.  The COMMIT tells them in order, so the read resumes
    before that write's own callback: the write must wait for its quorum from the
    moment it is in the store, not from its callback (chaos seed 21, on the second
    version: 77 reads showed a write that was then lost)."""
    serve_acked(coordinator, "k", "v")
    limits = coordinator.config.limits
    coordinator.handle(wire.parse_request("PUT a 1", limits))
    read = coordinator.handle(wire.parse_request("GET k", limits))
    coordinator.handle(wire.parse_request("PUT k new", limits))
    assert not read.called
    coordinator.reactor.advance(0)                       # the COMMIT
    assert read.result.text == "v"


def test_a_write_whose_commit_failed_is_forgotten():
    from replicad.store import Record

    index = QuorumIndex()
    before, a = Record("k", "old", 2, 1, VectorClock({2: 1})), Record(
        "k", "a", 2, 5, VectorClock({2: 5}))
    index.waiting(5, "k", before, a)
    index.withdraw(5)
    assert index.quiet and index.keys_written() == []
    index.waiting(5, "k", before, a)                     # its number, taken again
    assert not index.shows(5)


def test_a_withdrawn_write_lets_the_decided_ones_after_it_pass():
    index = QuorumIndex()
    index.waiting(5)
    index.waiting(6)
    index.decided(6)
    index.withdraw(5)
    assert index.quiet
    index.decided(9)                     # never waited: nothing happens
    assert index.quiet


def test_a_keys_page_lists_the_decided_writes_and_is_short_only_at_the_end(coordinator):
    """Pages as of the decided writes: a page that the waiting writes thin out is still
    full while keys are left (the read takes one more key per key the index holds), so
    a short page means the end.  Without those extra keys this test fails (checked):
    KEYS answers (a, c), as if that were every key."""
    limits = dataclasses.replace(coordinator.config.limits, max_keys=3)
    coordinator.config = dataclasses.replace(coordinator.config, limits=limits)
    for key in ("a", "c", "d", "e"):
        serve_acked(coordinator, key, "1")
    write_waiting(coordinator, "bb", "new")              # waiting: not shown yet
    write_waiting(coordinator, "bc", "new")
    assert now(coordinator, "KEYS").error_code == "TOOMANY"
    assert now(coordinator, "KEYS LIMIT 3").lines == ("a", "c", "d")
    assert now(coordinator, "KEYS AFTER d LIMIT 3").lines == ("e",)
    ack_all(coordinator)
    assert now(coordinator, "KEYS LIMIT 3").lines == ("a", "bb", "bc")
    assert now(coordinator, "KEYS AFTER bc LIMIT 3").lines == ("c", "d", "e")
    assert now(coordinator, "KEYS AFTER e LIMIT 3").lines == ()
