"""Confirmed reads (replicad/confirmedreads.py): a follower answers a read from its own
store once its coordinator has confirmed, after the read arrived, the writes it had
made durable; anything the confirmation does not cover is forwarded.

The batching on a task.Clock; the follower's side on a Replica whose coordinator is a
FakeCoordinatorLink (tests/test_replica.py) that answers READINDEX as the test says;
the coordinator's side through peer_request.  The window across real processes (a
confirmed write whose push the fault proxy holds) is in
tests/integration/test_confirmed_reads.py.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock

from replicad import peerwire, wire
from replicad.config import default_config
from replicad.confirmedreads import AwaitingWrites, ReadConfirmations
from replicad.peer import PeerResponse
from replicad.replica import Replica
from replicad.store import Record
from replicad.vclock import VectorClock
from replicad.wire import Reply, Request
from tests.test_replica import follow, push, serving, started_follower

# The batching ---------------------------------------------------------------------------


class Asks:
    """The ``ask`` of ReadConfirmations: each call a Deferred the test fires."""

    def __init__(self):
        self.calls: list[defer.Deferred] = []
        self.answered: list[tuple[object, list]] = []

    def ask(self):
        self.calls.append(defer.Deferred())
        return self.calls[-1]

    def answer(self, confirmation, reads):
        self.answered.append((confirmation, list(reads)))


def confirmations():
    clock = task.Clock()
    asks = Asks()
    return ReadConfirmations(clock, asks.ask, asks.answer), clock, asks


def test_the_reads_of_a_turn_share_one_confirmation_sent_at_its_end():
    reads, clock, asks = confirmations()
    reads.confirm("a")
    reads.confirm("b")
    assert asks.calls == []                  # not before the turn's other reads came
    clock.advance(0)
    assert len(asks.calls) == 1 and reads.asked == 1
    asks.calls[0].callback("clock 1")
    assert asks.answered == [("clock 1", ["a", "b"])]


def test_a_read_that_arrives_while_a_confirmation_is_in_flight_waits_for_the_next():
    """The one in flight was asked for before it arrived: it cannot cover it (a write
    acknowledged in between would be missed).  The next is asked for at once when the
    one in flight is answered, and covers every read that came meanwhile."""
    reads, clock, asks = confirmations()
    reads.confirm("a")
    clock.advance(0)
    reads.confirm("b")
    reads.confirm("c")
    clock.advance(0)
    assert len(asks.calls) == 1              # one in flight at most
    asks.calls[0].callback("clock 1")
    assert asks.answered == [("clock 1", ["a"])]
    assert len(asks.calls) == 2              # asked again at once, for b and c
    asks.calls[1].callback("clock 2")
    assert asks.answered[1] == ("clock 2", ["b", "c"])
    clock.advance(0)
    assert len(asks.calls) == 2              # nothing left to ask for


def test_a_failed_confirmation_confirms_nothing():
    reads, clock, asks = confirmations()
    reads.confirm("a")
    clock.advance(0)
    asks.calls[0].errback(RuntimeError("the link dropped"))
    assert asks.answered == [(None, ["a"])]
    reads.confirm("b")                       # and the next is asked for as usual
    clock.advance(0)
    assert len(asks.calls) == 2


def test_an_ask_that_raises_confirms_nothing_and_is_logged():
    from twisted.logger import capturedLogs

    clock = task.Clock()
    answered = []

    def ask():
        raise RuntimeError("bug")

    reads = ReadConfirmations(clock, ask, lambda c, batch: answered.append((c, batch)))
    reads.confirm("a")
    with capturedLogs() as events:
        clock.advance(0)
    assert answered == [(None, ["a"])]
    assert any(e.get("log_failure") is not None for e in events)


def test_stopping_answers_the_waiting_reads_unconfirmed():
    reads, clock, asks = confirmations()
    reads.confirm("a")
    reads.cancel()
    assert asks.answered == [(None, ["a"])]
    clock.advance(0)
    assert asks.calls == []


# Reads waiting for a push --------------------------------------------------------------


class Waits:
    def __init__(self):
        self.clock = task.Clock()
        self.held: set = set()          # what the "store" holds
        self.answered: list = []
        self.given_up: list = []
        self.awaiting = AwaitingWrites(self.clock, 0.2, lambda need: need in self.held,
                                       lambda read, need: self.answered.append(read),
                                       self.given_up.append)


def test_a_read_waiting_for_a_write_is_answered_by_the_commit_that_brings_it():
    w = Waits()
    w.awaiting.add("3:2", "a")
    w.awaiting.add("3:3", "b")
    w.awaiting.recheck()
    assert w.answered == [] and len(w.awaiting) == 2
    w.held.add("3:2")
    w.awaiting.recheck()
    assert w.answered == ["a"] and len(w.awaiting) == 1
    w.clock.advance(0.2)                 # 3:3 never came: forwarded
    assert w.given_up == ["b"] and len(w.awaiting) == 0


def test_each_waiting_read_is_given_up_at_its_own_deadline():
    w = Waits()
    w.awaiting.add("x", "a")
    w.clock.advance(0.1)
    w.awaiting.add("x", "b")
    w.clock.advance(0.1)
    assert w.given_up == ["a"]
    w.clock.advance(0.1)
    assert w.given_up == ["a", "b"]
    assert w.clock.getDelayedCalls() == []


def test_a_read_added_while_others_are_answered_keeps_waiting():
    """Answering a read lets its connection's next line in, which may wait too: it is
    kept, not lost with the list being rewritten."""
    w = Waits()
    w.awaiting.add("x", "a")
    w.awaiting._answer = lambda read, need: (w.answered.append(read),
                                             w.awaiting.add("y", "next"))
    w.held.add("x")
    w.awaiting.recheck()
    assert w.answered == ["a"] and len(w.awaiting) == 1
    w.clock.advance(0.2)
    assert w.given_up == ["next"]


def test_a_read_added_while_others_are_given_up_is_given_up_at_its_own_deadline():
    """One timer at a time, at the earliest deadline (add() during a give-up must not
    leave a second one behind, nor push b's deadline back to c's)."""
    w = Waits()
    w.awaiting.add("x", "a")
    w.clock.advance(0.1)
    w.awaiting.add("x", "b")                        # deadline 0.3
    w.awaiting._give_up = lambda read: (w.given_up.append(read),
                                        read == "a" and w.awaiting.add("x", "c"))
    w.clock.advance(0.1)                            # a given up; c added (deadline 0.4)
    assert w.given_up == ["a"]
    assert len(w.clock.getDelayedCalls()) == 1      # one timer, at b's deadline
    w.clock.advance(0.1)
    assert w.given_up == ["a", "b"]                 # b on time, not with c
    w.clock.advance(0.1)
    assert w.given_up == ["a", "b", "c"]
    assert len(w.clock.getDelayedCalls()) == 0


def test_stopping_gives_every_waiting_read_up():
    w = Waits()
    w.awaiting.add("x", "a")
    w.awaiting.cancel()
    assert w.given_up == ["a"] and w.clock.getDelayedCalls() == []


# The follower ---------------------------------------------------------------------------


class Deliveries(list):
    def __call__(self, reply):
        self.append(reply)


def confirming_follower(tmp_path, **overrides) -> Replica:
    """Replica 2 (confirmed reads as by default, follower reads off) following replica
    3, holding k = v (3:1), its coordinator's last PING answered just now."""
    return started_follower(tmp_path, follower_reads=False, **overrides)


@pytest.fixture
def follower(tmp_path):
    replica = confirming_follower(tmp_path)
    yield replica
    replica.stopService()


def read_index_answers(replica: Replica, *answers: defer.Deferred) -> list[defer.Deferred]:
    """Make the fake coordinator answer READINDEX calls with ``answers``, in turn."""
    link = replica.links[3]
    queue = list(answers)
    inner = link._answer

    def answer(verb, payload):
        if verb == "READINDEX":
            link.sent.append(peerwire.decode_message(verb, payload))
            return queue.pop(0)
        return inner(verb, payload)

    link._answer = answer
    return queue


def ok(clock: str) -> defer.Deferred:
    return defer.succeed(PeerResponse("OK", clock))


def take(replica: Replica, line: str) -> Deliveries:
    delivered = Deliveries()
    request = wire.parse_request(line, replica.config.limits)
    assert replica.answer_confirmed(request, delivered) is True
    return delivered


def test_a_follower_answers_a_confirmed_read_from_its_own_store(follower):
    read_index_answers(follower, ok("3:1"))
    delivered = take(follower, "@r=;w= GET k")
    assert delivered == []                               # not before the confirmation
    follower.reactor.advance(0)                          # READINDEX, answered 3:1
    (reply,) = delivered
    assert reply.text == "v" and reply.meta.by == 2     # executed here
    assert follower.links[3].verbs() == ["PING", "READINDEX"]   # nothing forwarded


def test_reads_of_one_turn_share_one_read_index(follower):
    read_index_answers(follower, ok("3:1"))
    first, second = take(follower, "GET k"), take(follower, "GET nothing")
    follower.reactor.advance(0)
    assert first == [Reply("VALUE", "v")] and second == [Reply("NOTFOUND")]
    assert follower.links[3].verbs().count("READINDEX") == 1


def test_a_read_waits_for_the_push_of_a_confirmed_write_and_is_answered_here(follower):
    """The coordinator made 3:2 durable; its push arrives after the confirmation: the
    read waits for it (answering without it would miss an acknowledged write) and is
    answered by this follower once it is committed."""
    read_index_answers(follower, ok("3:2"))
    delivered = take(follower, "GET k")
    follower.reactor.advance(0)                          # READINDEX: 3:2, not covered
    assert delivered == []
    epoch = follower.node.coordinator_epoch
    record = Record("k", "new", 3, 2, VectorClock({3: 2}), epoch)
    assert push(follower, 3, epoch, record).kind == "OK"
    assert delivered == [Reply("VALUE", "new")]
    assert "CLIENT" not in follower.links[3].verbs()


def test_a_confirmed_write_that_does_not_come_sends_the_read_to_the_coordinator(follower):
    """The coordinator made 3:2 durable and its push does not come within ping_timeout:
    answering from this store would miss an acknowledged write, so it is forwarded."""
    link = follower.links[3]
    link.answers = iter([defer.succeed(PeerResponse("REPLY", "VALUE new"))])
    read_index_answers(follower, ok("3:2"))
    delivered = take(follower, "GET k")
    follower.reactor.advance(0)                          # READINDEX: 3:2, not covered
    follower.reactor.advance(follower.timers.ping_timeout * 0.9)
    assert delivered == [] and "CLIENT" not in link.verbs()
    follower.reactor.advance(follower.timers.ping_timeout * 0.1)   # given up: forwarded
    follower.reactor.advance(0)                          # the forward's answer
    assert [reply.encode() for reply in delivered] == [b"VALUE new\r\n"]   # relayed
    assert [v for v in link.verbs() if v != "PING"] == ["READINDEX", "CLIENT"]


@pytest.mark.parametrize("answer", [
    PeerResponse("NO", "3"),                             # it no longer serves
    PeerResponse("ERR", "BADVERB unknown verb READINDEX"),   # a replica before it
])
def test_a_read_the_coordinator_does_not_confirm_is_forwarded(follower, answer):
    link = follower.links[3]
    link.answers = iter([defer.succeed(PeerResponse("REPLY", "VALUE v"))])
    read_index_answers(follower, defer.succeed(answer))
    delivered = take(follower, "GET k")
    follower.reactor.advance(0)
    follower.reactor.advance(0)
    assert [reply.encode() for reply in delivered] == [b"VALUE v\r\n"]
    assert link.verbs()[-1] == "CLIENT"


def test_a_session_that_has_seen_more_than_this_follower_holds_is_forwarded(follower):
    link = follower.links[3]
    link.answers = iter([defer.succeed(PeerResponse("REPLY", "VALUE newer"))])
    read_index_answers(follower, ok("3:1"))
    delivered = take(follower, "@r=3:5;w= GET k")
    follower.reactor.advance(0)
    assert delivered == []                               # waits for 3:5 a moment
    follower.reactor.advance(follower.timers.ping_timeout)
    follower.reactor.advance(0)
    assert [v for v in link.verbs() if v != "PING"] == ["READINDEX", "CLIENT"]
    assert [reply.encode() for reply in delivered] == [b"VALUE newer\r\n"]


def test_a_confirmation_from_another_coordinator_than_the_followed_is_not_used(follower):
    """Asked of one coordinator, answered once this follower follows another (a newer
    epoch): the read goes the forwarding way, not from that confirmation."""
    forwarded = []
    follower._forward_now = lambda request: forwarded.append(request) or defer.Deferred()
    delivered = Deliveries()
    follower._answer_confirmed((1, VectorClock({3: 1})),
                               [(Request("GET", "k"), delivered, 3, 0.0)])
    assert [r.key for r in forwarded] == ["k"] and delivered == []
    follower._answer_confirmed((3, VectorClock({3: 1})),
                               [(Request("GET", "k"), delivered, 3, 0.0)])
    assert delivered == [Reply("VALUE", "v")]             # the followed one's: used


def test_reads_are_not_taken_for_confirmation_where_they_cannot_be(tmp_path, follower):
    request = Request("GET", "k")
    assert follower.answer_confirmed(Request("PUT", "k", "w"), Deliveries()) is False
    off = confirming_follower(tmp_path / "off", confirmed_reads=False)
    try:
        assert off.answer_confirmed(request, Deliveries()) is False
    finally:
        off.stopService()
    follower.links[3]._answer = lambda verb, payload: defer.Deferred()   # silent now
    follower.reactor.advance(follower.timers.ping_interval * 1.5)
    assert not follower.detector.recently_ok()
    assert follower.answer_confirmed(request, Deliveries()) is False


def test_a_coordinator_takes_no_read_for_confirmation(replica):
    serving(replica)
    assert replica.answer_confirmed(Request("GET", "k"), Deliveries()) is False


# The coordinator ------------------------------------------------------------------------


def read_index(replica: Replica, sender: int = 1):
    return replica.peer_request(sender, "READINDEX", str(replica.node.epoch))


def test_a_serving_coordinator_confirms_what_it_made_durable(replica):
    """Its open group's write is not durable yet: not in the clock it confirms."""
    serving(replica)
    replica.handle(Request("PUT", "a", "1"))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert replica.store.clock == VectorClock({2: 1})
    replica.handle(Request("PUT", "b", "2"))              # in the open group
    assert replica.store.group_open
    answer = read_index(replica)
    assert (answer.kind, answer.payload) == ("OK", "2:1")
    replica.reactor.advance(0)                            # its COMMIT
    assert read_index(replica).payload == "2:2"


def test_a_replica_that_does_not_serve_does_not_confirm(replica):
    follow(replica)
    answer = read_index(replica)
    assert answer.kind == "NO"


def test_a_read_index_of_an_older_epoch_is_refused_stale(replica):
    serving(replica)
    answer = replica.peer_request(1, "READINDEX", "0")
    assert answer.kind == "STALE"


@pytest.fixture
def replica(tmp_path):
    replica = Replica(default_config(), 2, str(tmp_path / "data"), MemoryReactorClock(),
                      new_cluster=True)
    replica.startService()
    yield replica
    replica.stopService()


def test_what_becomes_of_confirmed_reads_is_in_the_metrics(follower):
    """answered at once, answered after waiting for a push, forwarded after all; and
    the READINDEX calls made."""
    from tests.test_metrics import value

    link = follower.links[3]
    link.answers = iter([defer.succeed(PeerResponse("REPLY", "VALUE v"))])
    read_index_answers(follower, ok("3:1"), ok("3:2"), defer.succeed(PeerResponse("NO", "3")))
    take(follower, "GET k")
    follower.reactor.advance(0)                          # answered at once
    take(follower, "GET k")
    follower.reactor.advance(0)                          # waits for 3:2
    epoch = follower.node.coordinator_epoch
    push(follower, 3, epoch, Record("k", "w", 3, 2, VectorClock({3: 2}), epoch))
    take(follower, "GET k")
    follower.reactor.advance(0)                          # NO: forwarded
    follower.reactor.advance(0)
    metrics = follower.metrics
    assert value(metrics, "replicad_read_index_calls_total") == 3
    assert [value(metrics, "replicad_confirmed_reads_total", outcome=o)
            for o in ("answered", "waited", "forwarded")] == [1, 1, 1]


def test_a_read_waiting_for_a_lost_push_is_answered_when_a_pull_brings_the_write(follower):
    """The push of 3:2 was lost; a pull brings it (sync.after_import): the waiting read
    is answered here then, not forwarded at its deadline."""
    read_index_answers(follower, ok("3:2"))
    delivered = take(follower, "GET k")
    follower.reactor.advance(0)
    assert delivered == []
    importer = follower.store.begin_import()
    importer.add(Record("k", "pulled", 3, 2, VectorClock({3: 2}), follower.node.epoch))
    importer.finish(VectorClock({3: 2}))
    follower.sync.after_import()
    assert delivered == [Reply("VALUE", "pulled")]


def test_a_confirmed_read_forwarded_after_all_is_timed_from_its_arrival(follower):
    """It waited ping_timeout for a push that did not come, then was forwarded: the
    request's latency in the metrics includes the wait, and it is counted once."""
    from tests.test_metrics import value

    link = follower.links[3]
    link.answers = iter([defer.succeed(PeerResponse("REPLY", "VALUE new"))])
    read_index_answers(follower, ok("3:2"))
    take(follower, "GET k")
    follower.reactor.advance(0)
    follower.reactor.advance(follower.timers.ping_timeout)     # given up: forwarded
    follower.reactor.advance(0)
    metrics = follower.metrics
    assert value(metrics, "replicad_requests_total", command="GET", outcome="ok") == 1
    waited = value(metrics, "replicad_request_duration_seconds_sum", command="GET")
    assert waited >= follower.timers.ping_timeout
