"""The Replica glue without sockets: MemoryReactorClock, a real SQLite store."""

from __future__ import annotations

import sqlite3

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from replicad import peerwire, wire
from replicad.config import default_config
from replicad.node import Candidacy, Role
from replicad.peer import PeerAnswer, PeerUnavailable, StreamRefused
from replicad.peerwire import PeerStatus, PeerWireError
from replicad.replica import EXIT_DISK_FAILED, Replica
from replicad.store import Record
from replicad.vclock import VectorClock
from replicad.wire import Reply, Request, SessionContext


@pytest.fixture
def replica(tmp_path):
    """Replica 2 of the built-in 3-replica cluster, started on a MemoryReactorClock."""
    reactor = MemoryReactorClock()
    # --new-cluster: a fresh replica may stand at once (tests of joining set it apart)
    replica = Replica(default_config(), 2, str(tmp_path / "data"), reactor, new_cluster=True)
    replica.startService()
    yield replica
    replica.stopService()


def own_epoch(round_: int, replica_id: int, stride: int = 4) -> int:
    """Replica ``replica_id``'s epoch of round ``round_``: ``round * stride + id``, stride
    = highest member id + 1 (4 for the built-in cluster 1, 2, 3): an epoch names its
    coordinator (node.py, I1b)."""
    return round_ * stride + replica_id


def follow(replica: Replica, coordinator: int = 3, epoch: int | None = None) -> None:
    """Follow ``coordinator`` in ``epoch`` (default: its first own epoch)."""
    if epoch is None:
        epoch = own_epoch(0, coordinator)
    assert replica.node.coordinator_received(coordinator, epoch)


def test_start_up_dials_every_peer_and_holds_an_election(replica):
    assert sorted(c[1] for c in replica.reactor.tcpClients) == [7101, 7103]
    assert replica.node.role is Role.ELECTING     # asked replica 3, waiting for OK
    assert replica.status_fields()["role"] == "electing"
    assert replica.status_fields()["ready"] == "no"


def test_a_follower_serves_through_its_coordinator(replica):
    follow(replica)
    fields = replica.status_fields()
    assert (fields["role"], fields["coordinator"], fields["epoch"]) == ("follower", "3", "3")
    assert fields["ready"] == "yes"
    assert replica.store.epoch == 3                   # the epoch is persisted


def test_ping_answer_carries_role_coordinator_epoch_and_clock(replica):
    follow(replica)
    replica.store.write(3, "k", "v")
    answer = replica.peer_request(1, "PING", "0")
    status = PeerStatus.parse(2, answer.payload)
    assert (answer.kind, status.role, status.coordinator, status.epoch) == (
        "OK", "follower", 3, 3
    )
    assert status.clock == VectorClock({3: 1})
    assert replica.peer_up[1] is True


def test_election_from_a_lower_replica_is_answered_ok(replica):
    answer = replica.peer_request(1, "ELECTION", "4")
    assert (answer.kind, answer.payload) == ("OK", "4")   # learned epoch 4 on the way


def test_a_stale_coordinator_announcement_is_rejected_with_our_epoch(replica):
    follow(replica, 3, own_epoch(1, 3))                    # 7
    answer = replica.peer_request(3, "COORDINATOR", "3")   # 3's own, but older
    assert (answer.kind, answer.payload) == ("NO", "7")


def test_an_announcement_of_a_foreign_epoch_is_rejected(replica):
    """I1b: epoch 6 is replica 2's (6 % 4 == 2), so 3 cannot have won it; 1 cannot
    announce 3's epoch 7 either.  Refused (NO with our epoch), and nothing followed."""
    follow(replica, 3, 3)
    answer = replica.peer_request(3, "COORDINATOR", "6")
    assert (answer.kind, answer.payload) == ("NO", str(replica.node.epoch))
    assert (replica.node.coordinator, replica.node.coordinator_epoch) == (3, 3)
    assert replica.peer_request(1, "COORDINATOR", "7").kind == "NO"
    assert replica.node.coordinator == 3


def push(replica: Replica, sender: int, epoch: int, record: Record) -> PeerAnswer:
    """A PUSH and its answer.  An applied push is answered once its group commit is
    durable, on the next reactor turn (groupcommit.py): let that turn run."""
    answer = replica.peer_request(sender, *peerwire.encode_message(peerwire.Push(epoch, (record,))))
    if isinstance(answer, defer.Deferred):
        results: list = []
        answer.addBoth(results.append)
        replica.reactor.advance(0)
        (answer,) = results
    return answer


def test_a_flapping_link_does_not_flood_the_admin_timeline(replica):
    """The elections stay on the page: a link's changes within 10 s are a few entries."""
    from replicad.linklog import LINK_LOG_BURST

    def links():
        return [e["text"] for e in replica.metrics.timeline if e["kind"] == "link"]

    before = links()
    for n in range(60):
        replica._mark(1, n % 2 == 1)
    assert len(links()) <= len(before) + LINK_LOG_BURST
    replica.reactor.advance(10)
    assert links()[-1].endswith("in the last 10 s; it is up now")
    assert replica.peer_up[1] is True                  # the state itself is current


def test_pushes_apply_in_order_and_a_gap_is_reported(replica):
    follow(replica)                                       # epoch 3
    first = Record("a", "1", 3, 1, VectorClock({3: 1}), 3)
    third = Record("b", "3", 3, 3, VectorClock({3: 3}), 3)
    assert push(replica, 3, 3, first).payload == "applied"
    assert push(replica, 3, 3, first).payload == "duplicate"
    assert push(replica, 3, 3, third).payload == "gap"
    assert replica.store.clock == VectorClock({3: 1})     # not past the gap
    assert replica.store.get("b").value == "3"           # but the record is kept


def test_delta_streams_only_what_the_asker_lacks(replica):
    for n in range(5):
        replica.store.write(2, f"k{n}", str(n))
    answer = replica.peer_request(1, "DELTA", "0 2:3")
    assert isinstance(answer, PeerAnswer)
    records = [peerwire.decode_record(text) for _, text in answer.body]
    assert [r.key for r in records] == ["k3", "k4"]
    assert answer.payload == "2:5 -"          # the clock, then the cluster id (unbound)


def test_garbage_in_a_peer_request_is_a_peer_wire_error(replica):
    with pytest.raises(PeerWireError):
        replica.peer_request(1, "PUSH", "0 not a record")
    with pytest.raises(PeerWireError):
        replica.peer_request(1, "ELECTION", "soon")


def test_a_forwarded_request_to_a_non_coordinator_is_refused(replica):
    follow(replica)                                        # epoch 3
    answer = replica.peer_request(1, "CLIENT", "3 GET k")
    assert answer.kind == "NO" and answer.payload == "3"


def test_a_request_without_a_coordinator_is_unavailable_at_the_deadline(replica):
    d = replica.handle(Request("GET", "k"))
    assert not d.called
    replica.reactor.advance(replica.timers.election_wait + 0.01)
    assert d.result.error_code == "UNAVAILABLE"


def test_waiters_leave_the_list_however_their_wait_ends(replica):
    """Every forwarded request waits for news; none may stay behind (a leak)."""
    node = replica.node
    cancelled = node.wait_for_change(10)
    # Shorter than every election timer, so no role change can end it early.
    timed_out = node.wait_for_change(0.1)
    assert len(node._waiters) == 2
    cancelled.cancel()
    cancelled.addErrback(lambda f: f.trap(defer.CancelledError))
    replica.reactor.advance(0.15)
    assert timed_out.result is False
    assert node._waiters == []


def test_an_election_is_no_evidence_that_the_coordinator_died(replica):
    """A lower replica's election makes a follower ask its coordinator (and hold an
    election of its own if that fails: node.py I8b); a forward in flight to the
    coordinator must keep waiting for its answer meanwhile."""
    follow(replica)
    forward = defer.ensureDeferred(replica._forward(3, wire.parse_request("PUT k v")))
    answer = replica.peer_request(1, "ELECTION", "3")
    assert not answer.called and replica.node.role is Role.FOLLOWER   # pinging 3
    assert not forward.called
    replica._suspect(3)                     # what a failed ping to it does
    failure = forward.result
    forward.addErrback(lambda f: None)
    assert failure.check(PeerUnavailable) and failure.value.sent   # a write in doubt
    assert replica._forwards == {}          # nothing left behind
    replica.reactor.advance(replica.timers.forward_timeout)   # the cancelled call's timer


def test_a_fast_forward_stops_waiting_when_its_coordinator_is_declared_dead(replica):
    """The forward sent on the live connection (PeerLink.send) races the coordinator
    being declared dead: a failed ping fails it at once, as a write in doubt, and its
    call is forgotten (a late answer is dropped, not delivered to a settled forward)."""
    link = fake_coordinator(replica, [defer.Deferred()])      # never answered
    follow(replica)
    assert replica.detector.check().result is True
    d = replica.handle(Request("PUT", "k", "v"))
    assert link.verbs() == ["PING", "CLIENT"] and not d.called
    answer = replica.peer_request(1, "ELECTION", "3")    # no evidence: 3 answers,
    assert answer.result.kind == "NO"                    # and 2 objects in its name
    assert not d.called
    replica._suspect(3)                                   # what a failed ping does
    replica.reactor.advance(0)
    assert d.result.error_code == "INDOUBT"
    assert link.forgotten == [2] and replica._forwards == {}     # nothing left behind


def test_a_forward_stops_waiting_when_the_link_to_the_coordinator_drops(replica):
    follow(replica)
    forward = defer.ensureDeferred(replica._forward(3, wire.parse_request("GET k")))
    replica._link_lost(1)                   # another peer: no evidence about 3
    assert not forward.called
    replica._link_lost(3)
    assert forward.result.check(PeerUnavailable)
    forward.addErrback(lambda f: None)


# The edge: one epoch check for every peer message -------------------------------------


def test_an_older_epoch_on_a_fenced_message_is_refused_with_ours(replica):
    follow(replica, 3, own_epoch(1, 3))                    # 7
    record = Record("a", "1", 3, 1, VectorClock({3: 1}), 3)
    answer = push(replica, 3, 3, record)                   # 3's previous epoch
    assert (answer.kind, answer.payload) == ("STALE", "7")
    assert replica.store.get("a") is None                  # nothing applied
    assert replica.peer_request(1, "FULL", "6").kind == "STALE"
    assert replica.peer_request(1, "CLIENT", "6 GET k").kind == "STALE"
    # PING and ELECTION are answered: they exist to spread the newer epoch
    assert PeerStatus.parse(2, replica.peer_request(1, "PING", "1").payload).epoch == 7


def test_a_newer_epoch_makes_a_coordinator_step_down_before_anything_else(replica):
    replica.reactor.advance(replica.timers.answer_timeout)   # replica 3 never answered,
    replica.reactor.advance(replica.timers.answer_timeout)   # nor 1 the pre-vote
    replica.reactor.advance(0)
    node = replica.node
    assert node.role in (Role.TAKING_OVER, Role.SERVING)
    answer = replica.peer_request(1, "PING", str(node.epoch + 3))
    assert not node.role.is_coordinator                    # stepped down at the edge
    assert PeerStatus.parse(2, answer.payload).role == "electing"
    assert replica.store.epoch == node.epoch               # the newer epoch is persisted


def test_a_push_from_a_replica_this_one_does_not_follow_is_refused(replica):
    follow(replica, 3, 3)
    record = Record("a", "1", 1, 1, VectorClock({1: 1}), 3)
    answer = push(replica, 1, 3, record)                   # 1 is not the coordinator
    assert (answer.kind, answer.payload) == ("NO", "3")
    assert replica.store.get("a") is None


def test_a_huge_epoch_is_a_refused_message_not_a_wedge(replica):
    follow(replica, 3, 3)
    with pytest.raises(PeerWireError):
        replica.peer_request(3, "COORDINATOR", "9" * 18)
    assert replica.node.epoch == 3
    assert replica.peer_request(3, "COORDINATOR", "7").kind == "OK"   # later ones work


def test_status_names_the_mode_and_the_cluster_id(replica):
    fields = replica.status_fields()
    assert (fields["mode"], fields["cluster_id"]) == ("available", "-")
    assert fields["follower_reads"] == "no"


def test_status_says_when_followers_answer_reads(reading_follower):
    assert reading_follower.status_fields()["follower_reads"] == "yes"


def test_status_says_whether_this_replica_answers_reads_itself_now(reading_follower):
    replica = reading_follower
    assert replica.status_fields()["reads_here"] == "yes"
    replica.links[3]._answer = lambda verb, payload: defer.Deferred()   # silent now
    replica.reactor.advance(replica.timers.ping_interval * 1.5)
    assert replica.status_fields()["reads_here"] == "no"
    assert read_now(replica, "GET k") is None              # as STATUS says: forwarded


def test_status_of_a_follower_without_follower_reads_says_it_does_not_read(replica):
    follow(replica)
    assert replica.status_fields()["reads_here"] == "no"


def test_status_of_the_serving_coordinator_says_it_reads(replica):
    serving(replica)
    assert replica.status_fields()["reads_here"] == "yes"


def test_an_unbound_replica_of_a_cluster_with_history_refuses_pushes(tmp_path):
    reactor = MemoryReactorClock()
    replica = Replica(default_config(), 2, str(tmp_path / "data"), reactor)
    replica.startService()
    try:
        assert replica.node.candidacy is Candidacy.PENDING     # not seen its peers yet
        bound = PeerStatus(3, "coordinator", 3, 3, VectorClock({3: 4}), "ab" * 16)
        replica._compare(bound)
        assert replica.node.candidacy is Candidacy.NO          # must copy first
        follow(replica, 3, 3)
        answer = push(replica, 3, 3, Record("a", "1", 3, 5, VectorClock({3: 5}), 3))
        assert answer.kind == "NO"
        assert replica.peer_request(1, "ELECTION", "3").kind == "NO"   # not a candidate
    finally:
        replica.stopService()


# Request ids (issue #8): a write sent again is answered, never applied twice ------------


def serve(replica: Replica, line: str):
    from replicad import wire
    d = replica.handle(wire.parse_request(line, replica.config.limits))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    return d.result


def test_a_write_sent_twice_with_one_request_id_is_applied_once(replica):
    replica.reactor.advance(replica.timers.answer_timeout)   # replica 3 never answered
    for _ in range(3):
        replica.reactor.advance(replica.timers.answer_timeout)
    assert replica.node.serving_as == 2
    first = serve(replica, "@r=;w=;id=0123abcd.1 PUT k v1")
    again = serve(replica, "@r=;w=;id=0123abcd.1 PUT k v1")
    assert first.status == again.status == "OK"
    assert again.meta.vc == first.meta.vc                    # the same write's version
    assert replica.store.clock == VectorClock({2: 1})        # applied once
    other = serve(replica, "@r=;w=;id=0123abcd.2 PUT k v2")  # a new id is a new write
    assert other.status == "OK" and replica.store.clock == VectorClock({2: 2})
    assert serve(replica, "@r=;w=;id=0123abcd.1 PUT k v1").error_code == "SUPERSEDED"
    assert replica.store.get("k").value == "v2"              # the old id changed nothing
    row = replica.store.request("0123abcd.1")
    assert (row.origin, row.seq) == (2, 1)


def test_a_stale_answer_from_the_same_coordinator_is_retried_at_once(replica):
    """The coordinator re-elected itself higher (as after every bully-back): its STALE
    answer teaches the new epoch, and the forward is sent again at once, not after
    election_wait (a 3 s stall the failover benchmark found)."""
    from replicad.peer import PeerResponse

    follow(replica, 3, own_epoch(0, 3))                    # 3
    link = fake_coordinator(replica, [
        stale(own_epoch(1, 3)), defer.succeed(PeerResponse("END", "", [("LINE", "OK")]))])
    replica.detector.reset()                 # no ping lately: the full path (_handle)
    d = replica.handle(Request("PUT", "k", "v"))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert d.called, "the forward waited instead of being sent again"
    assert d.result.status == "OK"
    assert [m.epoch for m in link.sent if m.verb == "CLIENT"] == [3, 7]   # in the new one


def test_a_write_sent_again_before_its_commit_is_answered_only_after_it(replica):
    """A retry with the same request id that arrives while the first copy waits for
    its COMMIT is not answered, nor its record pushed, on the strength of a write that
    may still fail.  Here the COMMIT fails: the first copy hears so, and the retry is
    applied afresh in the next group (before the fix it was answered OK at once, for
    a write that was rolled back, and the rolled-back record was pushed)."""
    from tests.test_groupcommit import FailingCommits

    serving(replica)
    pushed = []

    def call(peer_id, message, timeout_s, on_line=None):
        pushed.extend((r.key, r.value, r.seq) for r in message.records)
        return defer.Deferred()

    replica.sync.call = call
    replica.store._db = spy = FailingCommits(replica.store._db)
    spy.fail = True
    line = "@r=;w=;id=0123abcd.1 PUT k v1"
    first = replica.handle(wire.parse_request(line))
    again = replica.handle(wire.parse_request(line))
    assert not again.called
    replica.commits.flush()                               # the COMMIT fails
    spy.fail = False
    assert first.result.error_code == "INDOUBT"
    assert not again.called and pushed == []              # nothing of the failed group
    replica.reactor.advance(0)                            # the retry's own group
    replica.reactor.advance(0)
    assert again.result.status == "OK"
    assert replica.store.get("k").value == "v1"           # OK means it is there
    assert ("k", "v1", 1) in pushed


def test_a_del_finds_a_key_missing_only_once_the_del_before_it_is_durable(replica):
    """NOTFOUND reads the store: a DEL that finds its key deleted by a DEL still
    waiting for its COMMIT waits for it; if that COMMIT fails, the key is there."""
    from tests.test_groupcommit import FailingCommits

    serving(replica)
    assert serve(replica, "PUT k v").status == "OK"
    replica.store._db = spy = FailingCommits(replica.store._db)
    spy.fail = True
    first = replica.handle(wire.parse_request("DEL k"))
    second = replica.handle(wire.parse_request("DEL k"))
    assert not second.called                              # not NOTFOUND yet
    replica.commits.flush()                               # the first DEL's COMMIT fails
    spy.fail = False
    assert first.result.error_code == "INDOUBT"
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert second.result.status == "OK"                   # it found k, and deleted it
    assert replica.store.get("k").deleted


def test_the_read_fast_path_answers_only_what_needs_no_waiting(replica):
    from replicad import wire

    def now(line):
        return replica.answer_now(wire.parse_request(line, replica.config.limits))

    for _ in range(4):                                   # replica 3 never answers:
        replica.reactor.advance(replica.timers.answer_timeout)   # 2 takes over
    assert replica.node.serving_as == 2
    assert now("GET k").status == "NOTFOUND"
    serve(replica, "PUT k v")
    assert now("GET k").text == "v" and now("KEYS").lines == ("k",)
    assert now("@r=9:1;w= GET k") is None                # the session needs more: full path
    replica.commits.run(lambda: replica.store.write(2, "j", "w"))
    assert now("GET k") is None                          # a write awaits its COMMIT
    replica.reactor.advance(0)
    assert now("GET j").text == "w"
    assert now("PUT k v2") is None                       # writes never
    follow(replica, 3, own_epoch(5, 3))
    assert now("GET k") is None                          # a follower forwards


def test_a_forwarded_reply_keeps_the_coordinators_meta_cluster_included(replica):
    from replicad.peer import PeerResponse
    from replicad.wire import ReplyMeta

    follow(replica, 3, own_epoch(0, 3))
    cluster = "ab" * 16
    answer = Reply("OK", meta=ReplyMeta(VectorClock({3: 1}), by=3, coord=3, epoch=3,
                                        here=3, cluster=cluster))

    fake_coordinator(replica, [defer.succeed(
        PeerResponse("END", "", [("LINE", t) for t in answer.encode_lines()]))])
    d = replica.handle(Request("PUT", "k", "v", context=SessionContext()))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    meta = d.result.meta
    assert (meta.here, meta.by, meta.cluster) == (2, 3, cluster)


def forwarded(replica: Replica, line: str):
    """What the coordinator answers a follower that forwarded ``line``: a PeerAnswer
    now, or a Deferred of one."""
    return replica.peer_request(1, "CLIENT", f"{replica.node.epoch} {line}")


def reply_of(answer: PeerAnswer) -> Reply:
    """The reply a forwarded request's PeerAnswer carries: one REPLY frame for a reply
    of one line, LINE frames and an END for a longer one."""
    if answer.kind == "REPLY":
        assert answer.lines == ()
        return wire.parse_reply_lines([answer.payload])
    assert answer.kind == "END"
    return wire.parse_reply_lines([text for _, text in answer.lines])


def test_a_forwarded_read_is_answered_at_once_unless_it_must_wait(replica):
    serving(replica)
    serve(replica, "PUT k v")
    answer = forwarded(replica, "GET k")
    assert isinstance(answer, PeerAnswer)                 # no coroutine, no Deferred
    assert reply_of(answer).text == "v"
    assert reply_of(forwarded(replica, "KEYS")).lines == ("k",)
    epoch = replica.node.coordinator_epoch
    replica.commits.run(lambda: replica.store.write(2, "k", "uncommitted", epoch))
    waiting = forwarded(replica, "GET k")
    assert isinstance(waiting, defer.Deferred) and not waiting.called   # never before
    replica.reactor.advance(0)                                          # its COMMIT
    assert reply_of(waiting.result).text == "uncommitted"
    behind = forwarded(replica, "@r=9:1;w= GET k")        # the session needs more
    assert isinstance(behind, defer.Deferred)
    behind.cancel()
    behind.addErrback(lambda f: None)
    assert reply_of(forwarded(replica, "GET")).error_code == "BADARGS"   # a bad line


def test_a_forwarded_write_is_taken_at_once_unless_it_must_wait(replica):
    """As a client's write: into the open group with no coroutine, answered once
    durable; one that must wait (a repeated request id) takes the full path."""
    serving(replica)
    full_path = replica._serve_forwarded
    replica._serve_forwarded = None                      # the fast path only
    answer = forwarded(replica, "PUT k v")
    assert isinstance(answer, defer.Deferred) and not answer.called
    assert replica.store.group_open                      # in the group already
    replica.reactor.advance(0)                           # its COMMIT
    replica.reactor.advance(0)
    assert reply_of(answer.result).status == "OK" and replica.store.get("k").value == "v"
    replica._serve_forwarded = full_path
    serve(replica, "@r=;w=;id=0123abcd.1 PUT j v")
    again = forwarded(replica, "@r=;w=;id=0123abcd.1 PUT j v")   # a replay: full path
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert reply_of(again.result).status == "OK"
    assert replica.store.get("j").seq == 2                # applied once


def test_a_forwarded_reply_names_the_follower_that_forwarded_it(replica):
    """So the follower passes the coordinator's lines on unchanged (wire.relay)."""
    serving(replica)
    serve(replica, "PUT k v")
    now = reply_of(forwarded(replica, "@r=;w= GET k"))       # peer 1 forwarded it
    assert (now.text, now.meta.by, now.meta.here) == ("v", 2, 1)
    later = forwarded(replica, "@r=;w= PUT k v2")           # the full path, a Deferred
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert (reply_of(later.result).status, reply_of(later.result).meta.here) == ("OK", 1)
    assert reply_of(forwarded(replica, "GET k")).meta is None   # no session, no meta


def test_a_follower_relays_the_coordinators_reply_as_it_is(replica):
    from replicad.peer import PeerResponse
    from replicad.wire import ReplyMeta

    follow(replica, 3, own_epoch(0, 3))
    answer = Reply("VALUE", "v", meta=ReplyMeta(VectorClock({3: 1}), by=3, coord=3,
                                                epoch=3, here=2, cluster="ab" * 16))
    fake_coordinator(replica, [defer.succeed(
        PeerResponse("END", "", [("LINE", t) for t in answer.encode_lines()]))])
    d = replica.handle(Request("GET", "k", context=SessionContext()))
    replica.reactor.advance(0)
    assert isinstance(d.result, wire.RelayedReply)          # not parsed, not re-encoded
    assert d.result.encode() == answer.encode() and d.result.meta == answer.meta


class FakeCoordinatorLink:
    """Replica 3's link as a coordinator's would answer: PINGs as the coordinator,
    CLIENT calls from ``client_answers`` (each a Deferred of the PeerResponse), other
    calls never; through send() (a forward's path: ``done`` is
    told on a later turn, as a real connection's is) or call()."""

    def __init__(self, replica: Replica, client_answers):
        self.replica = replica
        self.clock = VectorClock()      # what its PING answers say it holds
        self.answers = iter(client_answers)
        self.sent: list[peerwire.Message] = []
        self.forgotten: list[int] = []
        self.stale: dict[str, int] = {}     # verb -> the newer epoch it is refused in

    def _answer(self, verb: str, payload: str) -> defer.Deferred:
        from replicad.peer import PeerResponse

        message = peerwire.decode_message(verb, payload)
        self.sent.append(message)
        if verb in self.stale:
            return stale(self.stale[verb])
        if verb == "PING":
            status = PeerStatus(3, "coordinator", 3, self.replica.node.epoch, self.clock)
            return defer.succeed(PeerResponse("OK", status.encode()))
        if verb != "CLIENT":
            return defer.Deferred()         # an ELECTION, a pull...: no answer yet
        return next(self.answers)

    def call(self, verb, payload="", timeout_s=1.0, on_line=None) -> defer.Deferred:
        return self._answer(verb, payload)

    def send(self, verb, payload, timeout_s, done):
        answer = self._answer(verb, payload)
        self.replica.reactor.callLater(0, answer.addCallbacks, done,
                                       lambda failure: done(None, failure.value), (None,))
        return self, len(self.sent)

    def forget(self, rid: int) -> None:
        self.forgotten.append(rid)

    def verbs(self) -> list[str]:
        return [message.verb for message in self.sent]

    def abort(self) -> None:      # what Replica.stopService does to every link
        pass

    down = False

    def alive_hint(self) -> None:
        pass


def fake_coordinator(replica: Replica, client_answers) -> FakeCoordinatorLink:
    """Replica 3 as coordinator, behind a FakeCoordinatorLink."""
    link = replica.links[3] = FakeCoordinatorLink(replica, client_answers)
    return link


def stale(epoch: int) -> defer.Deferred:
    """The coordinator's refusal of a call in an older epoch than ``epoch``."""
    from replicad.peer import PeerResponse

    return defer.succeed(PeerResponse("STALE", str(epoch)))


def test_a_follower_forwards_at_once_when_its_coordinator_answered_lately(replica):
    from replicad.peer import PeerResponse

    follow(replica)
    link = fake_coordinator(replica, [
        defer.succeed(PeerResponse("END", "", [("LINE", "VALUE v")]))])
    assert replica.detector.check().result is True        # a ping just succeeded
    replica._handle = None                                # the full path is not taken
    d = replica.handle(Request("GET", "k"))
    assert link.verbs() == ["PING", "CLIENT"]             # sent before handle returned
    replica.reactor.advance(0)                            # the answer's turn
    assert d.result.text == "v"


def test_a_follower_relays_a_one_frame_reply_and_a_multi_line_one(replica):
    """The coordinator answers a one-line reply in one REPLY frame (LINE + END before);
    the follower relays either."""
    from replicad.peer import PeerResponse

    follow(replica)
    fake_coordinator(replica, [
        defer.succeed(PeerResponse("REPLY", "VALUE two words ")),
        defer.succeed(PeerResponse("END", "", [("LINE", "KEYS 1"), ("LINE", "k"),
                                               ("LINE", "END")]))])
    assert replica.detector.check().result is True
    got = replica.handle(Request("GET", "k"))
    keys = replica.handle(Request("KEYS", None))
    replica.reactor.advance(0)
    assert (got.result.status, got.result.text) == ("VALUE", "two words ")
    assert keys.result.status == "KEYS" and list(keys.result.lines) == ["k"]


def test_a_fast_forward_of_a_write_that_may_have_been_applied_is_in_doubt(replica):
    """The forward was sent and its answer lost: the write is never sent again (it
    may have been applied), however the forward was started."""
    follow(replica)
    link = fake_coordinator(replica, [
        defer.fail(PeerUnavailable("connection lost", sent=True))])
    assert replica.detector.check().result is True
    d = replica.handle(Request("PUT", "k", "v"))
    replica.reactor.advance(0)
    assert d.result.error_code == "INDOUBT"
    assert link.verbs().count("CLIENT") == 1              # sent once, never again


def test_a_fast_forward_refused_as_stale_is_sent_again_in_the_new_epoch(replica):
    from replicad.peer import PeerResponse

    follow(replica, 3, own_epoch(0, 3))
    link = fake_coordinator(replica, [
        stale(own_epoch(1, 3)), defer.succeed(PeerResponse("END", "", [("LINE", "OK")]))])
    assert replica.detector.check().result is True
    d = replica.handle(Request("PUT", "k", "v"))
    replica.reactor.advance(0)                            # STALE: sent again at once
    replica.reactor.advance(0)
    assert d.result.status == "OK"
    assert [m.epoch for m in link.sent if m.verb == "CLIENT"] == [3, 7]
    assert replica.node.epoch == 7                        # the STALE answer taught it


def test_a_read_forwarded_to_a_coordinator_this_replica_no_longer_follows_is_asked_again(
        replica):
    """Chaos seed 24: a follower forwarded a GET to its coordinator just before that
    coordinator was cut off; a lower replica's election then made this one coordinator,
    and the GET still waited for the old one's answer (the whole forward_timeout: its
    client gave up after 5 s).  A read is asked again once this replica follows (or is)
    another coordinator; a write waits for the old coordinator's answer unless it does
    not answer a ping either (then it is in doubt: it may have been applied there)."""
    follow(replica)
    silent = replica.links[3]                             # a link that never connects
    link = fake_coordinator(replica, [defer.Deferred(), defer.Deferred()])  # never answered
    replica.store.write(2, "k", "v")
    assert replica.detector.check().result is True
    got = replica.handle(Request("GET", "k"))
    put = replica.handle(Request("PUT", "j", "w"))
    assert link.verbs() == ["PING", "CLIENT", "CLIENT"]
    replica.links[3] = silent                             # 3 is cut off from now on
    election = replica.peer_request(1, "ELECTION", "3")   # no evidence of death: 2 pings
    assert not election.called and not got.called and not put.called           # 3 first
    serving(replica)                                      # 3 never answers: 2 takes over
    replica.reactor.advance(0)
    assert (got.result.status, got.result.text) == ("VALUE", "v")   # served here
    assert put.result.error_code == "INDOUBT"             # 3 did not answer the probe
    assert len(link.forgotten) == 2                       # both calls dropped


def test_a_write_forwarded_to_a_coordinator_that_still_answers_keeps_waiting(replica):
    """A higher replica taking over is no evidence that the old coordinator died: if it
    answers the probe, a write forwarded to it waits for its answer (it may be OK)."""
    follow(replica)
    link = fake_coordinator(replica, [defer.Deferred()])   # the write: not answered yet
    assert replica.detector.check().result is True
    put = replica.handle(Request("PUT", "j", "w"))
    replica.role_changed(Role.TAKING_OVER, 2, own_epoch(1, 2))   # the node's hook
    replica.reactor.advance(replica.timers.ping_timeout)
    assert link.verbs()[:2] == ["PING", "CLIENT"] and "PING" in link.verbs()[2:]  # probed
    assert not put.called and link.forgotten == []


def serving(replica: Replica) -> None:
    for _ in range(4):                                   # replica 3 never answers:
        replica.reactor.advance(replica.timers.answer_timeout)   # 2 takes over
    assert replica.node.serving_as == 2


def test_a_coordinator_whose_catch_up_met_a_newer_epoch_forwards_the_request(replica):
    """The session's last server (3) answers the catch-up's delta STALE: it is in a
    newer epoch, and this coordinator stepped down on hearing it.  Answering ERR STALE
    sent the client on for nothing (tests/integration/test_session_catch_up.py met it:
    3 had re-elected itself while cut off); the request goes to the coordinator that
    replaced this one, here 3, which holds the session's writes."""
    from replicad.peer import PeerResponse

    serving(replica)
    newer = own_epoch(5, 3)
    link = fake_coordinator(replica, [defer.succeed(PeerResponse("REPLY", "VALUE v"))])
    link.stale["DELTA"] = newer
    need = SessionContext(write=VectorClock({3: 4}), via=3)
    d = replica.handle(Request("GET", "k", context=need))
    replica.reactor.advance(0)
    assert link.verbs()[0] == "DELTA"                     # asked at once, no PING first
    assert replica.node.epoch == newer                    # the STALE answer taught it
    for _ in range(3):
        replica.reactor.advance(0)
    assert link.verbs()[-1] == "CLIENT"                   # at once, not after a timeout
    assert d.result.encode() == b"VALUE v\r\n"            # 3 answered it


def test_the_coordinator_takes_a_plain_write_at_once_and_acknowledges_it_durable(replica):
    """The write fast path (no coroutine): into the open group before handle returns,
    acknowledged only after the group's COMMIT, pushed after that."""
    serving(replica)
    replica._handle = None                                # the full path is not taken
    placed = []
    d = replica.handle(Request("PUT", "k", "v"), lambda: placed.append(True))
    assert placed == [True] and replica.store.group_open  # in the group, not durable
    assert not d.called                                   # so not acknowledged yet
    replica.reactor.advance(0)                            # the COMMIT
    replica.reactor.advance(0)
    assert d.result.status == "OK" and replica.store.get("k").value == "v"
    assert replica.store.clock == VectorClock({2: 1})
    d = replica.handle(Request("DEL", "k"))               # a DEL that finds its key
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert d.result.status == "OK" and replica.store.get("k").deleted


def test_a_group_is_pushed_in_the_turn_it_became_durable(replica):
    """The COMMIT's own turn sends the pushes (the group commit's after_flush), not the
    next one, where they would wait behind the requests that turn reads."""
    serving(replica)
    pushed = []

    def call(peer_id, message, timeout_s, on_line=None):
        pushed.append((peer_id, message.verb, [r.key for r in message.records]))
        return defer.Deferred()

    replica.sync.call = call
    replica.handle(Request("PUT", "k", "v"))
    replica.handle(Request("PUT", "j", "w"))
    assert pushed == []                                   # nothing durable, nothing sent
    replica.commits.flush()                               # the COMMIT, clock not advanced
    assert pushed == [(1, "PUSH", ["k", "j"]), (3, "PUSH", ["k", "j"])]


def test_a_failure_while_answering_one_write_leaves_the_others_of_its_push(replica):
    """The write path tells each writer from the push's settling loop: one writer's
    failure fails that write alone (the client hears ERR INTERNAL), not the batch."""
    serving(replica)
    quorum_wait = replica.metrics.quorum_wait
    calls = []

    def first_fails(seconds, reached):
        calls.append(reached)
        if len(calls) == 1:
            raise RuntimeError("a metrics bug")
        quorum_wait(seconds, reached)

    replica.metrics.quorum_wait = first_fails
    first = replica.handle(Request("PUT", "a", "1"))
    second = replica.handle(Request("PUT", "b", "2"))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    assert first.result.check(RuntimeError)
    first.addErrback(lambda f: None)
    assert second.result.status == "OK"


def test_a_write_the_fast_path_cannot_take_goes_the_full_way(replica):
    serving(replica)
    assert replica.writes.take(Request("DEL", "missing")) is None        # NOTFOUND
    assert replica.writes.take(wire.parse_request("@r=9:1;w= PUT k v")) is None   # behind
    serve(replica, "@r=;w=;id=0123abcd.1 PUT k v1")
    assert replica.writes.take(wire.parse_request("@r=;w=;id=0123abcd.1 PUT k v1")) is None
    assert replica.writes.take(Request("GET", "k")) is None
    follow(replica, 3, own_epoch(5, 3))
    assert replica.writes.take(Request("PUT", "k", "v")) is None         # a follower


def test_a_deposed_coordinators_fast_write_steps_down_and_applies_nothing(replica):
    serving(replica)
    epoch = replica.node.coordinator_epoch
    newer = Record("k", "theirs", 3, 1, VectorClock({3: 1}), epoch + 1)
    replica.store.apply([newer], VectorClock({3: 1}))     # a newer epoch wrote k
    d = replica.handle(Request("PUT", "k", "mine"))       # no exception escapes
    assert replica.node.serving_as != 2                   # it stepped down
    assert replica.store.get("k").value == "theirs"      # nothing applied
    replica.reactor.advance(replica.timers.election_wait + 1)
    assert d.called
    d.addErrback(lambda f: None)


def test_a_write_whose_commit_the_disk_fails_is_in_doubt_and_the_replica_stops(replica):
    """An fsync that fails (SQLITE_IOERR_FSYNC, here "disk I/O error") may leave the
    write in the WAL, where a restart recovers it (store.py): never "nothing was done".
    The writer hears ERR INDOUBT and the replica stops with EX_IOERR (74) once the
    turn's answers are sent.  Before, it answered ERR INTERNAL "nothing was done" and
    went on serving."""
    from tests.test_groupcommit import FailingCommits

    serving(replica)
    replica.store._db = spy = FailingCommits(replica.store._db)
    spy.fail = True
    d = replica.handle(Request("PUT", "k", "v"))
    replica.reactor.advance(0)
    spy.fail = False
    assert d.result.error_code == "INDOUBT"
    assert "may or may not have been applied" in d.result.text
    assert "nothing was done" not in d.result.text
    assert replica.store.get("k") is None          # this connection rolled it back
    assert replica.halted == EXIT_DISK_FAILED == 74
    assert isinstance(replica.store.disk_failure, sqlite3.OperationalError)


class UnreadablePages:
    """The store's connection, except that a SELECT of kv meets a page the disk returns
    wrong, as SQLite reports it (a read's EIO too: SQLITE_IOERR_CORRUPTFS)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def execute(self, sql: str, *args):
        if sql.startswith("SELECT") and " FROM kv " in sql:
            raise self.malformed()
        return self._db.execute(sql, *args)

    @staticmethod
    def malformed() -> sqlite3.DatabaseError:
        error = sqlite3.DatabaseError("database disk image is malformed")
        error.sqlite_errorname = "SQLITE_CORRUPT"
        return error

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_a_coordinator_whose_disk_fails_a_read_stops_and_sends_its_clients_on(replica):
    """A read the disk fails stops the replica (74) as a failed COMMIT does; a read
    that failed then is UNAVAILABLE (the client asks the next server, where a new
    coordinator serves), a write in doubt.  Before, every such read was ERR INTERNAL,
    after which a client does not try another server, and the replica stayed the
    coordinator: tests/integration/test_disk_read_failure.py, with real processes."""
    serving(replica)
    replica.store._db = UnreadablePages(replica.store._db)
    get = Request("GET", "cold")
    assert replica.stopping_reply(get) is None
    with pytest.raises(sqlite3.DatabaseError):
        replica.answer_now(get)
    assert replica.halted == EXIT_DISK_FAILED
    reply = replica.stopping_reply(get)
    assert reply.error_code == "UNAVAILABLE" and "nothing was done" in reply.text
    assert "replica 2 stops: its disk failed (database disk image is malformed)" in reply.text
    assert replica.stopping_reply(Request("PUT", "k", "v")).error_code == "INDOUBT"


class UnreadableRequestRows(UnreadablePages):
    """The request-id table's pages fail to read too (a forwarded write's first read,
    the INSERT that keeps a pushed write's request id)."""

    def execute(self, sql: str, *args):
        if " requests " in sql:
            raise self.malformed()
        return super().execute(sql, *args)


def test_a_forwarded_request_that_meets_a_failed_disk_is_answered_as_a_direct_one(
        replica):
    """A request a follower forwarded that meets the coordinator's failed disk is
    answered as on the client port (stopping_reply): UNAVAILABLE for a read, in doubt
    for a write, in a final frame the follower relays.  Before, the exception left
    _on_client: the peer port logged a traceback, answered ERR INTERNAL, and the client
    got ERR INTERNAL from the follower, after which it asks no other server (chaos seed
    100: a coordinator whose disk failed reads, a forwarded PUT with a request id)."""
    serving(replica)
    replica.store._db = UnreadableRequestRows(replica.store._db)
    write = reply_of(forwarded(replica, "@r=;w=;id=0123abcd.1 PUT k v"))
    assert replica.halted == EXIT_DISK_FAILED
    assert write.error_code == "INDOUBT"
    assert "replica 2 stops: its disk failed" in write.text
    read = reply_of(forwarded(replica, "GET cold"))
    assert read.error_code == "UNAVAILABLE" and "nothing was done" in read.text


def test_a_forwarded_read_that_waited_and_meets_a_failed_disk_is_unavailable(replica):
    """The same on the path that waits (a read behind a write's COMMIT)."""
    serving(replica)
    replica.handle(Request("PUT", "x", "v"))             # its group is not committed yet
    replica.store._db = UnreadablePages(replica.store._db)
    d = forwarded(replica, "GET cold")
    assert isinstance(d, defer.Deferred) and not d.called
    replica.reactor.advance(0)                             # the COMMIT, then the read
    assert replica.halted == EXIT_DISK_FAILED
    assert reply_of(d.result).error_code == "UNAVAILABLE"


def test_a_follower_whose_disk_fails_a_pushs_read_answers_unavailable_and_stops(replica):
    """A push whose records the disk cannot read (chaos seed 100: a follower's EIO on
    reads) is answered ERR UNAVAILABLE, not an exception out of peer_request (the peer
    port logged its traceback and answered ERR INTERNAL, which the coordinator logged
    with a traceback too), and the replica stops."""
    follow(replica)                                       # epoch 3
    replica.store._db = UnreadableRequestRows(replica.store._db)
    answer = push(replica, 3, 3, Record("a", "1", 3, 1, VectorClock({3: 1}), 3,
                                        rid="0123abcd.1"))
    assert (answer.kind, answer.payload.split(" ")[0]) == ("ERR", "UNAVAILABLE")
    assert "replica 2 stops: its disk failed" in answer.payload
    assert replica.halted == EXIT_DISK_FAILED


def test_a_stream_that_meets_a_failed_disk_ends_unavailable(replica):
    """A copy or delta whose read meets a failed disk (the store stops the replica, then
    raises) ends with ERR UNAVAILABLE, which the puller counts as this replica down, and
    one log line; another error in a stream is still the peer port's traceback."""
    def rows():
        yield Record("a", "1", 2, 1, VectorClock({2: 1}))
        error = UnreadablePages.malformed()
        replica._disk_failed(error, committing=False)
        raise error

    body = replica._stream(VectorClock({2: 1}), rows()).body
    assert next(body)[0] == "REC"
    with pytest.raises(StreamRefused) as refused:
        next(body)
    assert refused.value.payload.startswith("UNAVAILABLE replica 2 stops: its disk failed")

    def bug():
        raise RuntimeError("a bug")
        yield

    replica.halted = None
    with pytest.raises(RuntimeError):
        next(replica._stream(VectorClock(), bug()).body)


class StoppingPeerLink:
    """A peer that stops on a failed disk: every call answered ERR UNAVAILABLE."""

    down = False

    def call(self, verb, payload="", timeout_s=1.0, on_line=None) -> defer.Deferred:
        from replicad.peer import PeerResponse

        return defer.succeed(PeerResponse(
            "ERR", "UNAVAILABLE replica 1 stops: its disk failed (malformed)"))

    def alive_hint(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_a_peer_that_answers_it_stops_counts_as_down_without_a_traceback(replica):
    """ERR UNAVAILABLE from a peer (it stops: _stopping_answer) is PeerUnavailable: a
    push to it marks it down, as a closed connection does, and logs no failure."""
    serving(replica)
    replica.links[1] = StoppingPeerLink()
    replica.peer_up[1] = True
    with capturedLogs() as events:
        d = replica.handle(Request("PUT", "k", "v"))
        replica.reactor.advance(0)
        replica.reactor.advance(0)
    assert d.result.status == "OK"                        # write_quorum = 1
    assert replica.peer_up[1] is False
    assert not [e for e in events if e.get("log_failure") is not None]
    with pytest.raises(PeerUnavailable):
        replica._answer_from(StoppingPeerLink().call("PING").result, 1)


def test_a_replica_whose_database_file_is_removed_stops_within_a_check(replica):
    """Its data directory deleted under it, a replica would acknowledge writes into a
    file no one can open again (SQLite says nothing): it stops (74) at the next check,
    and what fails meanwhile is sent on.  Nothing stops it while the file is there."""
    import shutil

    from replicad.replica import DATA_FILE_CHECK_S

    serving(replica)
    replica.reactor.advance(5 * DATA_FILE_CHECK_S)
    assert replica.halted is None
    shutil.rmtree(replica.data_dir)
    replica.reactor.advance(DATA_FILE_CHECK_S)
    assert replica.halted == EXIT_DISK_FAILED
    reply = replica.stopping_reply(Request("GET", "k"))
    assert reply.error_code == "UNAVAILABLE"
    assert "replica 2 stops: its database file is gone:" in reply.text
    assert "was removed" in reply.text


def test_a_write_whose_commit_fails_with_no_disk_error_is_internal_and_nothing_done(
        replica):
    """What is not SQLite's error (a bug) wrote nothing to the disk: ERR INTERNAL,
    "nothing was done", and the replica goes on."""
    from tests.test_groupcommit import FailingCommits

    class NotTheDisk(FailingCommits):
        def execute(self, sql, *args):
            if sql == "COMMIT" and self.fail:
                raise RuntimeError("a bug")
            return super().execute(sql, *args)

    serving(replica)
    replica.store._db = spy = NotTheDisk(replica.store._db)
    spy.fail = True
    d = replica.handle(Request("PUT", "k", "v"))
    replica.reactor.advance(0)
    spy.fail = False
    assert d.result.error_code == "INTERNAL"
    assert "nothing was done" in d.result.text
    assert replica.halted is None and replica.store.disk_failure is None


def test_a_retried_write_that_lost_a_merge_is_in_doubt_not_ok(replica):
    """Found by the chaos suite: the write was applied, then discarded by a concurrent
    write of a newer epoch; answering OK would acknowledge a write not in the data."""
    serving(replica)
    first = serve(replica, "@r=;w=;id=0123abcd.1 PUT k mine")
    assert first.status == "OK"
    newer = Record("k", "theirs", 3, 1, VectorClock({3: 1}), replica.node.epoch + 1)
    replica.store.apply([newer], VectorClock({3: 1}))     # the other side's, concurrent
    again = serve(replica, "@r=;w=;id=0123abcd.1 PUT k mine")
    assert (again.status, again.error_code) == ("ERR", "SUPERSEDED")
    assert replica.store.get("k").value == "theirs"      # and nothing applied again


def test_a_retried_write_whose_other_copy_won_the_merge_is_ok(replica):
    """CI (a loaded machine stalled the new coordinator 1.6 s, a false partition): the
    client's write was applied here as 2:1, its retry (same request id) applied by the
    other side as 3:1 in a newer epoch, and the merge kept 3:1.  The request *is* in
    the data, as the other copy: its next retry is answered OK with that copy's
    version, not SUPERSEDED ("not in the data"), and nothing is applied again."""
    serving(replica)
    first = serve(replica, "@r=;w=;id=0123abcd.1 PUT k mine")
    assert first.status == "OK"
    copy = Record("k", "mine", 3, 1, VectorClock({3: 1}), replica.node.epoch + 1,
                  "0123abcd.1")                           # the same request, elsewhere
    replica.store.apply([copy], VectorClock({3: 1}))
    assert (replica.store.get("k").origin, replica.store.get("k").seq) == (3, 1)
    again = serve(replica, "@r=;w=;id=0123abcd.1 PUT k mine")
    assert again.status == "OK", again
    assert again.meta.vc == VectorClock({3: 1})           # the copy that is in the data
    assert replica.store.clock == VectorClock({2: 1, 3: 1})   # nothing applied again


def test_a_retried_write_no_longer_current_is_in_doubt_and_not_applied_again(replica):
    """Overwritten by a write that saw it, or discarded with a branch: versions cannot
    tell these apart (a chaos run got OK for a write whose later same-side overwrite
    lost a merge), so the answer is 'unknown', never OK, never a second application."""
    serving(replica)
    assert serve(replica, "@r=;w=;id=0123abcd.1 PUT k v1").status == "OK"
    assert serve(replica, "@r=;w=;id=0123abcd.2 PUT k v2").status == "OK"
    again = serve(replica, "@r=;w=;id=0123abcd.1 PUT k v1")
    assert (again.status, again.error_code) == ("ERR", "SUPERSEDED")
    assert replica.store.get("k").value == "v2"
    assert replica.store.clock == VectorClock({2: 2})


def test_a_write_overwritten_by_its_own_side_then_discarded_stays_in_doubt(replica):
    """The chaos run's case: A, then B over A on the same (losing) side, then a merge
    discards B; a later write covers A's version; A's retry must not be OK."""
    serving(replica)
    epoch = replica.node.coordinator_epoch
    assert serve(replica, "@r=;w=;id=0123abcd.1 PUT k a").status == "OK"
    assert serve(replica, "@r=;w=;id=0123abcd.2 PUT k b").status == "OK"
    theirs = Record("k", "theirs", 3, 9, VectorClock({3: 9}), epoch)    # wins over B
    replica.store.apply([theirs], VectorClock({3: 9}))
    assert serve(replica, "@r=;w=;id=0123abcd.3 PUT k later").status == "OK"
    again = serve(replica, "@r=;w=;id=0123abcd.1 PUT k a")
    assert (again.status, again.error_code) == ("ERR", "SUPERSEDED")


def test_a_retried_del_that_found_nothing_finds_nothing_again(replica):
    serving(replica)
    assert serve(replica, "@r=;w=;id=0123abcd.1 DEL k").status == "NOTFOUND"
    assert serve(replica, "@r=;w=;id=0123abcd.2 PUT k v").status == "OK"
    assert serve(replica, "@r=;w=;id=0123abcd.1 DEL k").status == "NOTFOUND"
    assert replica.store.get("k").value == "v"           # the retry deleted nothing


def pushes_answered(replica: Replica, answers: list[str]) -> list:
    """Replace the push calls: each PUSH is answered with the next of ``answers`` (a
    PeerResponse kind: "OK" acknowledges it, "NO" refuses it); the pushed records."""
    from replicad.peer import PeerResponse

    pushed = []

    def call(peer_id, message, timeout_s, on_line=None):
        pushed.extend(message.records)
        kind = answers.pop(0) if answers else "NO"
        return defer.succeed(PeerResponse(kind, ",".join(["applied"] * len(message.records))))

    replica.sync.call = call
    return pushed


def test_a_del_that_found_nothing_is_answered_with_a_pushed_no_op_marker(replica):
    """Its answer must hold where a copy of the request turns up later: the request id
    travels as a write id with no data (docs/reliability.md, chaos seed 4)."""
    serving(replica)
    pushed = pushes_answered(replica, ["OK", "OK"])
    reply = serve(replica, "@r=;w=;id=0123abcd.1 DEL k")
    assert reply.status == "NOTFOUND" and reply.meta.vc == VectorClock({2: 1})
    assert [(r.key, r.noop, r.rid, r.origin, r.seq) for r in pushed] == [
        ("k", True, "0123abcd.1", 2, 1)] * 2                 # to replicas 1 and 3
    assert replica.store.get("k") is None and replica.store.request("0123abcd.1").noop
    assert serve(replica, "DEL k").status == "NOTFOUND"       # no request id: no marker
    assert replica.store.clock == VectorClock({2: 1})


def test_with_a_write_quorum_a_del_that_found_nothing_waits_for_its_marker(replica):
    """NOTFOUND only once write_quorum replicas hold the marker (any majority a later
    coordinator pulls from then knows the request); a retry pushes it again.  (The
    quorum is set on the pushes after the take-over: in quorum mode a replica alone
    could not take over.)"""
    import dataclasses

    serving(replica)
    replica.sync.config = dataclasses.replace(replica.config, write_quorum=2)
    pushes_answered(replica, ["NO", "NO"])                   # neither peer takes it
    first = serve(replica, "@r=;w=;id=0123abcd.1 DEL k")
    assert (first.status, first.error_code) == ("ERR", "QUORUM")
    assert "found nothing to delete" in first.text
    pushed = pushes_answered(replica, ["OK", "NO"])
    again = serve(replica, "@r=;w=;id=0123abcd.1 DEL k")    # a replay: pushed again
    assert again.status == "NOTFOUND" and [r.noop for r in pushed] == [True, True]
    assert replica.store.clock == VectorClock({2: 1})        # one marker, not two


def test_a_marker_made_elsewhere_answers_a_copy_of_its_request_though_the_key_exists(
        replica):
    """The seed-4 window at the replica: a marker of replica 1 (a retry answered there)
    reached this one, which holds ``k`` from a write 1 never got; the request's queued
    copy is answered NOTFOUND (the marker pushed again), and ``k`` is kept."""
    replica.store.apply([Record("k", "held", 3, 1, VectorClock({3: 1})),
                         Record("k", None, 1, 1, VectorClock({1: 1}), 0, "0123abcd.5",
                                noop=True)], VectorClock({1: 1, 3: 1}))
    serving(replica)
    pushed = pushes_answered(replica, ["OK", "OK"])
    assert serve(replica, "@r=;w=;id=0123abcd.5 DEL k").status == "NOTFOUND"
    assert replica.store.get("k").value == "held"
    assert [(r.noop, r.origin, r.seq) for r in pushed] == [(True, 1, 1)] * 2


def test_a_paused_coordinator_stands_again_before_serving_what_was_queued(replica):
    """SIGSTOP: the heartbeat loop did not run; requests queued meanwhile must not be
    served before the replica is sure it is still coordinator."""
    serving(replica)
    replica._lease_heartbeat.stop()                      # what a frozen process does
    replica.reactor.advance(10 * replica.timers.ping_interval)
    replica.reactor.advance(0)
    assert replica.node.serving_as is None
    assert replica.node.role is not Role.SERVING


def test_a_discarded_write_stays_in_doubt_after_the_key_is_written_again(replica):
    """Found by the chaos suite after the first fix: a later write to the key covers the
    discarded write's id in its version (versions are clocks), so 'superseded by a
    write that saw it' no longer told them apart; the merge now marks the loser."""
    serving(replica)
    epoch = replica.node.coordinator_epoch
    assert serve(replica, "@r=;w=;id=0123abcd.1 PUT k mine").status == "OK"
    theirs = Record("k", "theirs", 3, 5, VectorClock({3: 5}), epoch)   # concurrent, wins
    replica.store.apply([theirs], VectorClock({3: 5}))
    assert replica.store.discarded("0123abcd.1")
    assert serve(replica, "@r=;w=;id=0123abcd.2 PUT k later").status == "OK"
    assert replica.store.get("k").version >= VectorClock({2: 1})        # covers it now
    again = serve(replica, "@r=;w=;id=0123abcd.1 PUT k mine")
    assert (again.status, again.error_code) == ("ERR", "SUPERSEDED")
    assert replica.store.get("k").value == "later"


def test_the_coordinator_places_a_write_or_a_read_before_handle_returns(replica):
    """client_protocol pipelines a request only if handle() called placed() before it
    returned: a write in the open commit group, a read answered."""
    serving(replica)
    placed: list[bool] = []
    d = replica.handle(wire.parse_request("PUT k v"), lambda: placed.append(True))
    assert placed == [True] and not d.called             # placed, not yet durable
    replica.reactor.advance(0)                             # the group commits
    assert d.result.status == "OK"
    for line, status in (("GET k", "VALUE"), ("DEL gone", "NOTFOUND")):
        calls: list[bool] = []
        d = replica.handle(wire.parse_request(line), lambda calls=calls: calls.append(True))
        assert calls == [True] and d.result.status == status


def test_a_request_that_must_wait_is_not_placed(replica):
    """Forwarded by a follower, or a read behind an uncommitted write: not placed, so
    the connection stops reading until it is answered."""
    follow(replica)
    placed: list[bool] = []
    d = replica.handle(wire.parse_request("PUT k v"), lambda: placed.append(True))
    assert placed == [] and not d.called
    d.cancel()
    d.addErrback(lambda f: None)


def test_a_failed_call_to_the_higher_replica_ends_the_election_wait(replica):
    """_mark(peer, False) (a call to it timed out, its link dropped) tells the node, which
    stops waiting answer_timeout for that replica's OK (a hung coordinator, issue #8)."""
    assert replica.node.role is Role.ELECTING             # waiting for replica 3's OK
    replica._mark(1, False)                               # lower: not waited on
    assert replica.node.role is Role.ELECTING
    replica._mark(3, False)
    assert replica.node.role is Role.ELECTING             # the pre-vote asks 1 (node I8)
    replica._mark(1, False)                               # which fails: no objection
    assert replica.node.role.is_coordinator               # won at once, no timer ran


# Pre-vote (node.py I8) ------------------------------------------------------------------


def test_a_prevote_is_refused_while_the_coordinator_above_answers_a_ping(replica):
    link = fake_coordinator(replica, [])
    follow(replica)
    answer = replica.peer_request(1, "PREVOTE", "3")
    assert link.verbs() == ["PING"]                        # asked 3 first, just now
    assert (answer.result.kind, answer.result.payload) == ("NO", "3 3")


def test_a_prevote_is_granted_when_the_coordinator_does_not_answer(replica):
    follow(replica)                    # the memory reactor's link to 3 never answers
    answer = replica.peer_request(1, "PREVOTE", "3")
    assert not answer.called
    replica.reactor.advance(0)                             # the call starts next turn
    replica.reactor.advance(replica.timers.ping_timeout)
    assert answer.result.kind == "OK"
    assert replica.node.role is Role.ELECTING             # 3 failed a ping: elect


def test_a_prevote_needs_no_ping_when_nothing_is_above_the_asker(replica):
    assert replica.peer_request(1, "PREVOTE", "0").kind == "OK"     # follows no one
    link = fake_coordinator(replica, [])
    follow(replica)
    assert replica.peer_request(3, "PREVOTE", "3").kind == "OK"     # 3 is the asker
    assert link.verbs() == []


def test_an_election_from_below_is_objected_to_while_the_coordinator_answers(replica):
    """node.py I8b: replica 1 cannot hear 3, but 2 can: 2 objects in 3's name and keeps
    following it (no election of its own, so it keeps taking 3's pushes)."""
    link = fake_coordinator(replica, [])
    follow(replica)
    answer = replica.peer_request(1, "ELECTION", "3")
    assert link.verbs() == ["PING"]                        # asked 3 first, just now
    assert (answer.result.kind, answer.result.payload) == ("NO", "3 3")
    assert (replica.node.role, replica.node.coordinator) == (Role.FOLLOWER, 3)


def test_an_election_from_below_is_bully_when_the_coordinator_does_not_answer(replica):
    follow(replica)                    # the memory reactor's link to 3 never answers
    answer = replica.peer_request(1, "ELECTION", "3")
    assert not answer.called
    replica.reactor.advance(0)
    replica.reactor.advance(replica.timers.ping_timeout)
    assert (answer.result.kind, answer.result.payload) == ("OK", "3")
    assert replica.node.role is Role.ELECTING             # 3 failed a ping: elect


def test_an_objection_to_an_election_reaches_the_node(replica):
    from replicad.peer import PeerResponse

    heard = []
    replica.node.election_objected = lambda *a: heard.append(a)
    replica.links[3] = CatchUpLink(defer.succeed(PeerResponse("NO", "7 3")))
    replica.send_election(3, 6)
    assert heard == [(3, 3)] and replica.node.epoch == 7


class _PreVoteAnswers:
    """Replica 1's link: answers PREVOTE with ``answer``, everything else never."""

    def __init__(self, answer: tuple[str, str]):
        self.answer = answer

    def call(self, verb, payload="", timeout_s=1.0, on_line=None) -> defer.Deferred:
        from replicad.peer import PeerResponse

        return (defer.succeed(PeerResponse(*self.answer)) if verb == "PREVOTE"
                else defer.Deferred())

    def abort(self) -> None:
        pass

    down = False

    def alive_hint(self) -> None:
        pass


def test_an_objection_to_a_prevote_stops_the_election(replica):
    replica.links[1] = _PreVoteAnswers(("NO", "3 3"))
    replica._mark(3, False)            # its ELECTION to 3 cannot be answered
    node = replica.node
    assert (node.role, node.vetoed, node.epoch) == (Role.FOLLOWER, (1, 3), 3)   # 1's
    reply = replica.handle(Request("GET", "k"))
    assert reply.result.error_code == "UNAVAILABLE"        # at once: try another replica
    assert b"coordinator 3 is alive (replica 1 reaches it)" in reply.result.encode()


def test_no_objection_to_a_prevote_lets_it_win(replica):
    replica.links[1] = _PreVoteAnswers(("OK", "0"))
    replica._mark(3, False)
    assert replica.node.role.is_coordinator and replica.node.vetoed is None


# A link back after being down: compared with, and pulled from, at once -----------------


def test_a_peer_whose_link_comes_back_is_pulled_from_at_once(replica):
    """A coordinator that took over while its links were reconnecting (a heal) pulled
    from no one; when a link comes back, the peer's PING answer shows writes this
    replica lacks, and they are pulled now, not two anti-entropy ticks later (chaos
    seed 4 converged 2.44 s after its heal).  Without the link-back check this test
    fails: no PING, no pull."""
    replica.store.bind_cluster("5" * 32)
    link = fake_coordinator(replica, [])
    link.clock = VectorClock({3: 5})          # 3 holds five writes this replica lacks
    replica._mark(3, True)
    replica.reactor.advance(0)                # what start-up scheduled (discovery) runs
    pulls = []
    replica.sync.sync_from = lambda peer_id, **options: pulls.append(peer_id)
    replica._mark(3, False)                   # a call to it failed: down
    before = len(link.sent)
    replica._mark(3, True)                    # an answer again: up
    replica.reactor.advance(0)
    assert (link.verbs()[before:], pulls) == (["PING"], [3])   # compared, pulled at once


def test_a_link_that_was_never_down_is_not_pinged_again(replica):
    replica.store.bind_cluster("5" * 32)
    link = fake_coordinator(replica, [])
    replica._mark(3, True)
    replica.reactor.advance(0)
    before = len(link.sent)
    replica._mark(3, True)
    replica.reactor.advance(0)
    assert link.verbs()[before:] == []


# A coordinator seen in a PING answer ---------------------------------------------------


def coordinator_status(peer_id: int, epoch: int, cluster_id: str | None = None):
    return PeerStatus(peer_id, "coordinator", peer_id, epoch, VectorClock(), cluster_id)


def test_a_higher_coordinator_seen_in_a_ping_answer_is_followed(replica):
    """One-way reachability (its announcements cannot reach this replica, this replica's
    PINGs reach it): following it ends what an election could only repeat."""
    assert replica.node.role is Role.ELECTING
    replica._compare_with_peer(coordinator_status(3, own_epoch(1, 3)))
    node = replica.node
    assert (node.role, node.coordinator, node.coordinator_epoch) == (
        Role.FOLLOWER, 3, own_epoch(1, 3))
    assert replica.status_fields()["ready"] == "yes"


def test_a_coordinator_in_an_older_epoch_is_not_followed(replica):
    follow(replica, 3, own_epoch(2, 3))
    replica._compare_with_peer(coordinator_status(3, own_epoch(1, 3)))   # a stale answer
    assert (replica.node.coordinator, replica.node.coordinator_epoch) == (3, own_epoch(2, 3))
    replica._compare_with_peer(coordinator_status(1, own_epoch(3, 1)))   # lower: Bully
    assert replica.node.role is Role.ELECTING


def test_a_lower_coordinators_older_claim_is_told_our_term_not_elected_over(replica):
    """A PING answer of replica 1 still claiming its older term, seen by replica 2 once
    it coordinates a newer one (the answer left before the announcement reached 1: a
    replica that followed 1 while it looked at its peers at start-up, then won).  It
    held a second election, one term later to the same end (2 restarts in 4 of the
    highest replica, measured): now only the node's answer to a stale announcement is
    given, our term sent again."""
    replica.reactor.advance(replica.timers.answer_timeout)   # replica 3 never answered,
    replica.reactor.advance(replica.timers.answer_timeout)   # nor 1 the pre-vote
    replica.reactor.advance(0)
    node = replica.node
    assert node.role.is_coordinator
    mine = node.coordinator_epoch
    sent = []
    replica.send_coordinator = lambda peer_id, epoch: sent.append((peer_id, epoch))
    replica._compare_with_peer(coordinator_status(1, mine - 1))
    assert node.role.is_coordinator and node.coordinator_epoch == mine
    assert sent == [(1, mine)]
    replica._compare_with_peer(coordinator_status(3, mine - 1))   # higher: Bully
    assert not node.role.is_coordinator and sent == [(1, mine)]


def test_another_clusters_coordinator_is_not_followed(replica):
    replica._bind("a" * 32, "test")
    replica._compare_with_peer(coordinator_status(3, own_epoch(1, 3), "b" * 32))
    assert (replica.node.role, replica.node.coordinator) == (Role.ELECTING, None)
    replica._compare_with_peer(coordinator_status(3, own_epoch(1, 3), "a" * 32))
    assert (replica.node.role, replica.node.coordinator) == (Role.FOLLOWER, 3)


def test_a_follower_sends_what_is_ready_before_it_commits_a_push(replica):
    """A forwarding follower relays the coordinator's replies, and forwards new
    requests, ahead of the fsync of the push it applies in the same turn: they need
    nothing of it, and every forwarded write would wait for that disk otherwise."""
    from tests.test_groupcommit import FailingCommits

    follow(replica)
    replica.store._db = spy = FailingCommits(replica.store._db)
    order = []
    send_now = replica.turn_sender.send_now
    replica.turn_sender.send_now = lambda: (order.append(("send", spy.commits)), send_now())
    record = Record("k", "v", 3, 1, VectorClock({3: 1}), own_epoch(0, 3))
    push(replica, 3, own_epoch(0, 3), record)
    replica.reactor.advance(0)
    assert spy.commits == 1 and order[0] == ("send", 0)     # before the COMMIT


def test_a_read_waiting_for_a_group_whose_commit_fails_reads_what_is_durable(replica):
    """A read that waits for the open group answers from the store once the group is
    settled: if its COMMIT failed, its writes were undone and the read gets the value
    that is on disk, not ERR INTERNAL."""
    from tests.test_groupcommit import FailingCommits

    serving(replica)
    replica.sync.call = lambda peer_id, message, timeout_s, on_line=None: defer.Deferred()
    assert serve(replica, "PUT k v1").status == "OK"
    replica.store._db = spy = FailingCommits(replica.store._db)
    write = replica.handle(Request("PUT", "k", "v2"))
    read = replica.handle(Request("GET", "k"))
    assert not read.called                                # it waits for the group
    spy.fail = True
    replica.commits.flush()                               # the COMMIT fails
    spy.fail = False
    assert write.result.error_code == "INDOUBT"
    replica.reactor.advance(0)
    assert (read.result.status, read.result.text) == ("VALUE", "v1")


def test_a_read_never_answers_from_a_group_opened_while_it_waited(replica):
    """The group a read waited for failed, and a writer told before the read (a retry
    that waited for the same COMMIT) wrote again at once, into a new group: the read
    waits for that group too, rather than answer with a write not yet on disk."""
    from tests.test_groupcommit import FailingCommits

    serving(replica)
    replica.sync.call = lambda peer_id, message, timeout_s, on_line=None: defer.Deferred()
    assert serve(replica, "PUT k v1").status == "OK"
    replica.store._db = spy = FailingCommits(replica.store._db)
    line = "@r=;w=;id=0123abcd.1 PUT k v2"
    first = replica.handle(wire.parse_request(line))
    again = replica.handle(wire.parse_request(line))      # waits for first's COMMIT
    read = replica.handle(Request("GET", "k"))             # waits for it too
    spy.fail = True
    replica.commits.flush()                               # fails; the retry writes again
    spy.fail = False
    assert first.result.error_code == "INDOUBT"
    assert replica.store.group_open                       # the retry's write, not durable
    assert not read.called                                # so the read does not answer
    replica.reactor.advance(0)                            # the retry's COMMIT
    replica.reactor.advance(0)
    assert again.result.status == "OK"
    assert (read.result.status, read.result.text) == ("VALUE", "v2")


# follower_reads ---------------------------------------------------------------------------


def started_follower(tmp_path, joined: bool = True, **overrides) -> Replica:
    """Replica 2 with follower_reads on (or as ``overrides`` say), following replica 3 (a
    FakeCoordinatorLink whose PING answers say it holds 3:1), holding k = v (write 3:1,
    pushed), with a PING answered just now; ``joined``: bound to the cluster (it copied
    its history)."""
    from replicad.config import with_overrides

    config = with_overrides(default_config(), **({"follower_reads": True} | overrides))
    replica = Replica(config, 2, str(tmp_path / "data"), MemoryReactorClock(),
                      new_cluster=True)
    replica.startService()
    if joined:
        replica.store.bind_cluster("5" * 32)
    follow(replica)
    epoch = replica.node.coordinator_epoch
    assert push(replica, 3, epoch, Record("k", "v", 3, 1, VectorClock({3: 1}), epoch)).kind == "OK"
    fake_coordinator(replica, []).clock = VectorClock({3: 1})
    assert replica.detector.check().result is True
    return replica


@pytest.fixture
def reading_follower(tmp_path):
    replica = started_follower(tmp_path)
    yield replica
    replica.stopService()


def read_now(replica: Replica, line: str):
    return replica.answer_now(wire.parse_request(line, replica.config.limits))


def test_a_follower_with_follower_reads_answers_a_read_itself(reading_follower):
    reply = read_now(reading_follower, "@r=;w= GET k")
    assert reply.text == "v"
    assert reply.meta.by == 2 and reply.meta.coord == 3     # executed here, not forwarded
    assert read_now(reading_follower, "GET nothing").status == "NOTFOUND"
    assert read_now(reading_follower, "KEYS").lines == ("k",)
    assert read_now(reading_follower, "PUT k w") is None     # writes are forwarded


def test_without_follower_reads_a_follower_forwards_every_read(replica):
    replica.store.bind_cluster("5" * 32)
    follow(replica)
    epoch = replica.node.coordinator_epoch
    push(replica, 3, epoch, Record("k", "v", 3, 1, VectorClock({3: 1}), epoch))
    fake_coordinator(replica, []).clock = VectorClock({3: 1})
    assert replica.detector.check().result is True
    assert read_now(replica, "GET k") is None


def test_a_follower_behind_its_coordinators_last_answer_forwards(reading_follower):
    """The coordinator's PING said it held 3:2, this follower holds 3:1: a read without
    a session would miss a write older than the heartbeat, so it is forwarded."""
    replica = reading_follower
    replica.links[3].clock = VectorClock({3: 2})
    replica.reactor.advance(replica.timers.ping_interval)   # the next heartbeat
    assert replica.detector.recently_ok()
    assert read_now(replica, "GET k") is None


def test_a_follower_whose_coordinator_has_not_answered_lately_forwards(reading_follower):
    replica = reading_follower
    replica.links[3]._answer = lambda verb, payload: defer.Deferred()   # silent now
    replica.reactor.advance(replica.timers.ping_interval * 1.5)
    assert not replica.detector.recently_ok()
    assert read_now(replica, "GET k") is None


def test_a_session_ahead_of_the_follower_is_forwarded(reading_follower):
    assert read_now(reading_follower, "@r=3:2;w= GET k") is None
    assert read_now(reading_follower, "@r=;w=3:2 GET k") is None
    assert read_now(reading_follower, "@r=3:1;w=3:1 GET k").text == "v"


def test_a_follower_with_a_push_not_yet_durable_forwards(reading_follower):
    replica = reading_follower
    epoch = replica.node.coordinator_epoch
    record = Record("k", "v2", 3, 2, VectorClock({3: 2}), epoch)
    replica.commits.run(lambda: replica.store.apply_pushed_batch((record,)))
    assert read_now(replica, "GET k") is None              # 3:2 awaits its COMMIT
    replica.reactor.advance(0)
    assert read_now(replica, "GET k").text == "v2"


def test_a_follower_that_has_not_joined_the_cluster_forwards(tmp_path):
    """An unbound replica (a wiped disk, still copying) takes pushes as a fresh one but
    has no history to answer from."""
    replica = started_follower(tmp_path, joined=False)
    try:
        assert read_now(replica, "GET k") is None
        replica.store.bind_cluster("5" * 32)
        assert read_now(replica, "GET k").text == "v"
    finally:
        replica.stopService()


# A take-over in quorum mode waits until a majority holds its writes ---------------------


def test_a_follower_catches_up_with_the_coordinator_it_accepted_and_says_its_clock(replica):
    follow(replica)                                   # replica 3, epoch 3
    asked = []

    def pulled(peer_id, in_turn=False):               # the pull's effect, without a peer
        asked.append((peer_id, in_turn))
        replica.store.write(3, "k", "v", epoch=3)
        return defer.succeed(True)

    replica.sync.sync_from = pulled
    answer = replica.peer_request(3, *peerwire.encode_message(peerwire.CatchUp(3)))
    assert asked == [(3, True)]      # after the pulls streaming (sync.py, sync_from)
    assert (answer.result.kind, answer.result.payload) == ("OK", "3:1")


def test_a_catch_up_is_refused_by_a_replica_that_does_not_follow_the_asker(replica):
    follow(replica)                                   # replica 3, epoch 3
    replica.sync.sync_from = lambda peer_id, **options: pytest.fail("pulled for a stranger")
    stranger = replica.peer_request(1, *peerwire.encode_message(peerwire.CatchUp(3)))
    assert (stranger.kind, stranger.payload) == ("NO", "3")
    newer = replica.peer_request(3, *peerwire.encode_message(peerwire.CatchUp(7)))
    assert newer.kind == "NO"                         # not the epoch it accepted


def test_a_failed_catch_up_pull_is_answered_no(replica):
    follow(replica)
    replica.sync.sync_from = lambda peer_id, **options: defer.succeed(False)
    answer = replica.peer_request(3, *peerwire.encode_message(peerwire.CatchUp(3)))
    assert (answer.result.kind, answer.result.payload) == ("NO", "3")


class CatchUpLink:
    """A peer's link that answers CATCHUP with ``answer`` (a Deferred)."""

    down = False

    def __init__(self, answer):
        self.answer, self.sent = answer, []

    def call(self, verb, payload="", timeout_s=1.0, on_line=None):
        self.sent.append(verb)
        return self.answer

    def abort(self):
        pass


def test_a_take_over_counts_as_holders_the_peers_whose_clock_covers_its_own(replica):
    from replicad.peer import PeerResponse

    replica.store.write(2, "k", "v")                  # this replica holds 2:1
    replica.sync.peer_clocks.update({1: VectorClock({2: 1, 3: 4}), 3: VectorClock()})
    assert replica.holders({1, 3}) == {1}
    told = []
    replica.node.caught_up = lambda *args: told.append(args)
    replica.links[3] = CatchUpLink(defer.succeed(PeerResponse("OK", "2:1")))
    replica.catch_up(3, 6)
    assert replica.links[3].sent == ["CATCHUP"] and told == [(3, 6, True)]
    assert replica.holders({1, 3}) == {1, 3}          # its answer's clock is kept
    replica.links[3] = CatchUpLink(defer.succeed(PeerResponse("OK", "")))
    replica.catch_up(3, 6)                            # it says it holds less: not caught up
    replica.links[1] = CatchUpLink(defer.fail(PeerUnavailable("gone")))
    replica.catch_up(1, 6)
    assert told[1:] == [(3, 6, False), (1, 6, False)]


def test_a_take_over_waits_for_a_peer_suspected_on_one_lost_ping_not_for_a_long_silent_one(
        replica):
    """The announcement's answer is waited for unless the peer has been silent for as
    long as that answer would be (answer_timeout) or its link dropped.  One lost 0.2 s
    ping (a loaded machine) is not enough: a take-over with a quorum of 1 then served
    without that live peer's writes (a replica back from a wipe, suspecting the
    coordinator it followed, stands once it has caught up)."""
    told = []
    ours = (6, 10, 14)     # the epochs announced here (the node's own election goes on)
    replica.node.coordinator_send_failed = lambda *args: args[1] in ours and told.append(args)
    replica.links[1] = CatchUpLink(defer.Deferred())           # it will answer, later
    replica._suspect(1, replica.timers.ping_timeout)            # one ping lost just now
    replica.send_coordinator(1, 6)
    replica.reactor.advance(0)
    assert told == []                                           # its answer is awaited
    replica.reactor.advance(replica.timers.answer_timeout)      # still silent since
    replica.send_coordinator(1, 10)
    replica.reactor.advance(0)
    assert told == [(1, 10)]                                    # not waited for again
    replica._mark(1, True)                                      # it answered something
    replica.links[1].down = True                                # then its link dropped
    replica.send_coordinator(1, 14)
    replica.reactor.advance(0)
    assert told == [(1, 10), (1, 14)]


@pytest.mark.parametrize("send, answer, told", [
    ("send_election", ("OK", "x"), ("election_send_failed", (3,))),
    ("send_election", ("NO", "5 x"), ("election_send_failed", (3,))),
    ("send_prevote", ("NO", "5 x"), ("prevote_failed", (3,))),
    ("send_coordinator", ("NO", "x"), ("coordinator_send_failed", (3, 6))),
    ("catch_up", ("OK", "2:x"), ("caught_up", (3, 6, False))),
])
def test_an_answer_that_does_not_parse_is_a_failed_call(replica, send, answer, told):
    """The node hears of it as of a call that failed (else it waits on that peer: for a
    take-over's catch-up until the next election), nothing learnt from the answer is
    kept, and the error is logged."""
    from replicad.peer import PeerResponse

    method, args = told
    heard = []
    setattr(replica.node, method, lambda *a: heard.append(a))
    replica.sync.peer_clocks[3] = VectorClock({2: 1})
    replica.links[3] = CatchUpLink(defer.succeed(PeerResponse(*answer)))
    with capturedLogs() as events:
        getattr(replica, send)(3, 6)
    assert heard == [args]
    assert replica.sync.peer_clocks[3] == VectorClock({2: 1})
    verb = replica.links[3].sent[0]
    assert any(f"{verb} to replica 3 failed" in formatEvent(e) for e in events)


def test_a_coordinator_whose_disk_is_full_answers_nospace_and_writes_again_once_freed(replica):
    """ERR NOSPACE, not INTERNAL: the client learns that nothing was done and why;
    STATUS says ``disk full`` until a COMMIT works again, and then the write goes
    through.  (A real full disk: tests/integration/test_disk_full.py.)"""
    from tests.test_groupcommit import FailingCommits

    serving(replica)
    replica.store._db = spy = FailingCommits(replica.store._db)
    spy.full = True
    reply = serve(replica, "PUT k v")
    assert reply.error_code == "NOSPACE"
    assert reply.error_message.startswith("replica 2, the coordinator, could not write")
    assert replica.store.get("k") is None
    assert replica.status_fields()["disk"] == "full"
    assert b"replicad_disk_full 1.0" in replica.metrics.exposition()
    spy.full = False
    assert serve(replica, "PUT k v").status == "OK"
    assert replica.store.get("k").value == "v"
    assert replica.status_fields()["disk"] == "ok"
    disk = [(e["text"], e["full"]) for e in replica.metrics.timeline if e["kind"] == "disk"]
    assert disk == [("the disk is full: writes are refused until space is freed", True),
                    ("the disk takes writes again", False)]      # the admin page's
    assert b"replicad_disk_full 0.0" in replica.metrics.exposition()


def test_a_pull_that_finds_the_disk_full_is_the_replicas_disk_full_episode(replica):
    """A follower whose disk fills while it only pulls (say a full copy after a wipe)
    shows ``disk full`` in STATUS and the metrics, as a full COMMIT of pushes does, and
    ``ok`` once a pull is committed again."""
    from tests.test_groupcommit import disk_full_error

    replica.sync.disk_full_seen(disk_full_error())
    assert replica.status_fields()["disk"] == "full"
    assert b"replicad_disk_full 1.0" in replica.metrics.exposition()
    replica.sync.after_import()
    assert replica.status_fields()["disk"] == "ok"


def test_a_write_whose_own_statement_finds_the_disk_full_answers_nospace(replica):
    """SQLite may run out of room at the statement itself, before the COMMIT: the same
    answer, at once, and nothing written."""
    from tests.test_groupcommit import disk_full_error

    serving(replica)

    def full(*args, **kwargs):
        raise disk_full_error()

    replica.store.write = full
    reply = serve(replica, "PUT k v")
    assert reply.error_code == "NOSPACE"
    assert replica.status_fields()["disk"] == "full"      # the same episode
    del replica.store.write
    assert serve(replica, "PUT k v").status == "OK"
    assert replica.status_fields()["disk"] == "ok"


def test_a_follower_whose_disk_is_full_answers_a_push_err_nospace(replica):
    """Not a failure with a traceback per push on both sides: an ERR the coordinator
    logs once (sync.py).  Nothing of the batch was applied; once space is freed the
    same push applies."""
    from tests.test_groupcommit import FailingCommits

    follow(replica)                                       # epoch 3
    replica.store._db = spy = FailingCommits(replica.store._db)
    spy.full = True
    first = Record("a", "1", 3, 1, VectorClock({3: 1}), 3)
    answer = push(replica, 3, 3, first)
    assert (answer.kind, answer.payload.split(" ")[0]) == ("ERR", "NOSPACE")
    assert replica.store.get("a") is None and replica.store.clock == VectorClock()
    spy.full = False
    assert push(replica, 3, 3, first).payload == "applied"


def test_a_follower_whose_disk_fails_a_pushs_commit_answers_err_and_stops(replica):
    """No acknowledgement for a push whose COMMIT the disk failed (it may or may not be
    there), one ERR UNAVAILABLE (the coordinator counts this replica down) instead of a
    failure with a traceback, and the replica stops as a coordinator does (writes.py,
    Replica._disk_failed)."""
    from tests.test_groupcommit import FailingCommits

    follow(replica)                                       # epoch 3
    replica.store._db = spy = FailingCommits(replica.store._db)
    spy.fail = True
    answer = push(replica, 3, 3, Record("a", "1", 3, 1, VectorClock({3: 1}), 3))
    assert (answer.kind, answer.payload.split(" ")[0]) == ("ERR", "UNAVAILABLE")
    assert "replica 2 stops: its disk failed" in answer.payload
    replica.reactor.advance(0)
    assert replica.halted == EXIT_DISK_FAILED


def test_a_take_over_pull_gives_the_peers_ping_answer_timeout(replica):
    """As long as the announcement's answer may take, not ping_timeout's 0.2 s: a PING
    lost to a loaded machine failed the pull, and with a quorum of 1 the take-over
    served without that live peer's writes (sync.py, sync_from)."""
    asked = []

    def sync_from(peer_id, full=False, ping_timeout_s=None, fresh=False, in_turn=False):
        asked.append((peer_id, ping_timeout_s, fresh, in_turn))
        return defer.succeed(True)

    replica.sync.sync_from = sync_from
    replica.pull_for_take_over(1, own_epoch(1, 2))
    timers = replica.timers
    assert timers.answer_timeout > timers.ping_timeout
    # fresh and in its turn after the other take-over pulls (sync.py, sync_from)
    assert asked == [(1, timers.answer_timeout, True, True)]


def test_the_glue_tells_the_node_how_long_a_peer_was_silent(replica):
    """The glue's evidence for Node.peer_down: a ping's timeout is reported as that
    short a silence, a dropped link as an endless one (node.py, peer_down)."""
    reported = []
    replica.node.peer_down = lambda peer_id, silent_s=0.0: reported.append((peer_id, silent_s))
    replica.ping(1, 0.2).addErrback(lambda f: None)     # never connected: times out
    for _ in range(3):
        replica.reactor.advance(0.2)
    replica._link_lost(3)
    assert reported[0] == (1, 0.2) and reported[-1][0] == 3
    assert reported[-1][1] == float("inf")


# A replica that joins by copying numbers its writes under a new origin ---------------


def test_a_replica_that_joins_by_copying_numbers_its_writes_under_a_new_origin(tmp_path):
    """Its copy may lack writes it issued before its disk was wiped, held by a peer it
    cannot reach (the copy says 2:4, that peer 2:6): numbered on from the copy, its next
    write would be 2:5 again (tests/integration/test_wiped_write_ids.py shows the
    divergence).  Without the new origin this test fails: the write is 2:5."""
    from replicad.identity import FIRST_NEW_ORIGIN

    replica = Replica(default_config(), 2, str(tmp_path / "data"), MemoryReactorClock())
    replica.startService()
    try:
        assert replica.store.origin == 2
        copied = [Record("old", "v", 2, 4, VectorClock({2: 4, 3: 5}), own_epoch(0, 2))]

        def sync_from(peer_id, full=False):
            replica.store.apply(copied, VectorClock({2: 4, 3: 5}))
            return defer.succeed(True)

        replica.sync.sync_from = sync_from
        with capturedLogs() as events:
            replica._compare(PeerStatus(3, "coordinator", 3, own_epoch(1, 3),
                                        VectorClock({2: 4, 3: 5}), "5" * 32))
        origin = replica.store.origin
        assert origin >= FIRST_NEW_ORIGIN and replica.store.cluster_id == "5" * 32
        assert any(f"numbered under origin {origin}" in formatEvent(e) for e in events)
        serving(replica)
        d = replica.handle(Request("PUT", "k", "new"))
        replica.reactor.advance(0)
        replica.reactor.advance(0)
        assert d.result.status == "OK"
        record = replica.store.get("k")
        assert (record.origin, record.seq) == (origin, 1)
        assert replica.store.clock == VectorClock({2: 4, 3: 5, origin: 1})
        assert replica.status_fields()["origin"] == str(origin)
    finally:
        replica.stopService()


# A fresh cluster's history is begun once ----------------------------------------------


def test_a_fresh_cluster_is_not_begun_twice_when_its_first_coordinator_stalls(tmp_path):
    """Every member new; replica 3 wins the first election, makes the cluster id and
    stalls before anyone sees it.  Replica 2, which saw 3 unbound, wins next: it must
    not make a second id while 3 has not answered since (3 may have made one), or the
    two coordinators follow each other's announcements for ever (docs/operations.md).
    It waits; when 3 is back, its id arrives in a PING answer and 2 follows it.  Without
    the wait (``history_ready``) this test fails: 2 serves cluster B."""
    replica = Replica(default_config(), 2, str(tmp_path / "data"), MemoryReactorClock())
    replica.startService()
    try:
        for peer in (1, 3):                               # every member is new
            replica._compare(PeerStatus(peer, "follower", None, 0, VectorClock(), None))
        assert replica.joining.fresh
        follow(replica, 3)                                # 3 won, then stalled
        node = replica.node
        with capturedLogs() as events:
            node.coordinator_failed()                     # 2's ping to 3 failed
            for _ in range(4):                            # 3 never answers: 2 wins
                replica.reactor.advance(replica.timers.answer_timeout)
        assert (node.role, replica.store.cluster_id) == (Role.TAKING_OVER, None)
        assert replica.status_fields()["ready"] == "no"
        said = [formatEvent(e) for e in events if "before it begins the history" in
                formatEvent(e)]
        assert said == ["replica 2 waits for every member before it begins the history of a "
                        "new cluster: 1, 3 not heard from yet"]

        history = "a" * 32                                # 3's, made before it stalled
        replica._compare_with_peer(PeerStatus(3, "coordinator", 3, own_epoch(2, 3),
                                              VectorClock(), history))
        assert (node.role, node.coordinator) == (Role.FOLLOWER, 3)
        assert replica.store.cluster_id == history
    finally:
        replica.stopService()


def test_the_first_coordinator_of_a_fresh_cluster_begins_its_history_once_all_answered(
        tmp_path):
    replica = Replica(default_config(), 2, str(tmp_path / "data"), MemoryReactorClock())
    replica.startService()
    try:
        assert replica.history_ready({1}) is False
        assert replica.store.cluster_id is None
        assert replica.history_ready({1, 3}) is True      # every other member pulled
        made = replica.store.cluster_id
        assert made is not None and replica.history_ready(set()) is True   # bound: yes
        assert replica.store.cluster_id == made
    finally:
        replica.stopService()
    told = Replica(default_config(), 2, str(tmp_path / "told"), MemoryReactorClock(),
                   new_cluster=True)                      # --new-cluster: at once
    told.startService()
    try:
        assert told.history_ready(set()) is True and told.store.cluster_id is not None
    finally:
        told.stopService()


# A KEYS listing bigger than one reply --------------------------------------------------


def test_a_keys_listing_bigger_than_a_reply_is_toomany_and_is_read_in_pages(tmp_path):
    """One turn reads and encodes a listing: bounded by max_keys, so that no KEYS keeps
    the replica from answering its peers' PINGs (wire.py DEFAULT_MAX_KEYS)."""
    import dataclasses

    config = default_config()
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, max_keys=3))
    replica = Replica(config, 2, str(tmp_path / "data"), MemoryReactorClock(),
                      new_cluster=True)
    replica.startService()
    try:
        serving(replica)
        for key in ("a1", "a2", "a3", "a4", "a5", "b1", "b2"):
            assert serve(replica, f"PUT {key} v").status == "OK"
        too_many = read_now(replica, "KEYS")
        assert (too_many.error_code, too_many.error_message) == (
            "TOOMANY", "3 keys at most in one reply, and more are live: ask for them in "
                       "pages, KEYS LIMIT 3, then KEYS AFTER <its last key> LIMIT 3 until "
                       "a page is short")
        assert too_many.meta is None and read_now(replica, "KEYS a").error_message.startswith(
            "3 keys at most in one reply, and more start with 'a': ask for them in pages, "
            "KEYS a LIMIT 3, then KEYS a AFTER <its last key> LIMIT 3")
        assert read_now(replica, "KEYS a LIMIT 3").lines == ("a1", "a2", "a3")
        assert read_now(replica, "KEYS a AFTER a3 LIMIT 3").lines == ("a4", "a5")
        assert read_now(replica, "KEYS b").lines == ("b1", "b2")          # fits: as before
        assert read_now(replica, "KEYS AFTER a4").lines == ("a5", "b1", "b2")
        assert read_now(replica, "KEYS a AFTER 0").error_code == "TOOMANY"   # below a
        assert read_now(replica, "KEYS b AFTER z LIMIT 3").lines == ()
        reply = read_now(replica, "@r=;w= KEYS a AFTER a4 LIMIT 3")
        assert reply.lines == ("a5",) and reply.meta.vc == replica.store.clock
    finally:
        replica.stopService()


def test_a_catch_up_waits_for_a_pull_under_way_then_asks_the_clocks_again(replica):
    """A replica back with its data asks its peers' clocks and, far behind one, copies
    from it before it stands.  A pull that began meanwhile (a link back: anti-entropy)
    likely brings the same: the two whole copies ran side by side (bench/rejoin_gap.py:
    101,424 records applied from replica 1, then the same 101,426 from replica 2, none
    applied).  The catch-up now waits for that pull, then asks the clocks again."""
    from replicad.replica import REJOIN_BEHIND_WRITES

    held: defer.Deferred = defer.Deferred()
    replica.sync.ping = lambda peer_id, timeout_s: held
    replica.sync.sync_from(1)                      # anti-entropy's pull: under way
    pulls, stood = [], []
    sync_from = replica.sync.sync_from
    replica.sync.sync_from = lambda peer_id, **kw: (pulls.append(peer_id),
                                                    sync_from(peer_id, **kw))[1]
    set_candidacy = replica.node.set_candidacy
    replica.node.set_candidacy = lambda c, why: (stood.append((c, why)), set_candidacy(c, why))
    far = PeerStatus(3, "follower", 1, own_epoch(1, 1), VectorClock({1: REJOIN_BEHIND_WRITES}))
    replica._rejoin_with([far])
    assert pulls == [] and stood == []             # no second copy beside the first

    # The pull from 1 lands with all of it: asked again, 3 is no longer ahead.
    caught_up = PeerStatus(3, "follower", 1, own_epoch(1, 1), VectorClock())
    asked = []
    replica.ping = lambda peer_id, timeout_s: (asked.append(peer_id),
                                               defer.succeed(caught_up))[1]
    held.callback(PeerStatus(1, "follower", 1, own_epoch(1, 1), VectorClock()))
    assert sorted(asked) == [1, 3] and pulls == []
    assert stood == [(Candidacy.YES, "caught up by the pulls under way")]


def test_a_stopping_replica_stops_its_synchroniser_before_its_links(tmp_path):
    """Aborting the links ends the pulls' streams, which would hand the turn to a pull
    waiting for it; that pull would then begin an import on the store being closed
    (sync.py, Synchroniser.stop).  The synchroniser is stopped first."""
    replica = Replica(default_config(), 2, str(tmp_path / "data"), MemoryReactorClock(),
                      new_cluster=True)
    replica.startService()
    order = []
    replica.sync.stop = lambda: order.append("sync")
    for peer_id, link in replica.links.items():
        link.abort = lambda peer_id=peer_id: order.append(peer_id)
    replica.stopService()
    assert order and order[0] == "sync" and sorted(order[1:]) == sorted(replica.links)
