"""Synchroniser.compare: anti-entropy pulls only what stays missing.  No sockets."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from replicad import peerwire
from replicad.config import default_config
from replicad.peer import PeerResponse, PeerUnavailable
from replicad.peerwire import PeerStatus
from replicad.store import Record, Store
from replicad.sync import Synchroniser
from replicad.vclock import VectorClock


def make(tmp_path):
    store = Store(str(tmp_path / "replica.sqlite"))
    sync = Synchroniser(store, [], default_config(), Clock(), ping=None, call=None, mark=None,
                        epoch=lambda: 0)
    pulls: list[int] = []
    sync.sync_from = lambda peer_id, **options: pulls.append(peer_id)   # no dialling
    return store, sync, pulls


def seen(clock: dict[int, int]) -> PeerStatus:
    return PeerStatus(3, "coordinator", 3, 1, VectorClock(clock))


def push(store: Store, seq: int) -> None:
    record = Record(f"k{seq}", "v", 3, seq, VectorClock({3: seq}))
    assert store.apply_pushed(record) == "applied"


def test_writes_still_in_flight_are_not_pulled_lost_ones_are(tmp_path):
    store, sync, pulls = make(tmp_path)
    push(store, 1)
    sync.compare(seen({3: 2}))         # 3:2 may still be on its way
    assert pulls == []
    push(store, 2)
    sync.compare(seen({3: 3}))         # 3:2 arrived; 3:3 may be on its way
    assert pulls == []
    sync.compare(seen({3: 4}))         # 3:3 was missing last time and still is
    assert pulls == [3]


def test_an_empty_replica_pulls_at_once(tmp_path):
    store, sync, pulls = make(tmp_path)
    sync.compare(seen({3: 5}))
    assert pulls == [3]


def test_a_peer_whose_link_just_came_back_is_pulled_from_at_once(tmp_path):
    """Nothing of a peer whose link was down can be in flight: what it has and this
    replica lacks is pulled at the first look (replica.py, a link back)."""
    store, sync, pulls = make(tmp_path)
    push(store, 1)
    sync.compare(seen({3: 4}), at_once=True)
    assert pulls == [3]
    sync.compare(seen({3: 1}), at_once=True)   # nothing missing: nothing pulled
    assert pulls == [3]


def test_nothing_missing_nothing_pulled(tmp_path):
    store, sync, pulls = make(tmp_path)
    push(store, 1)
    sync.compare(seen({3: 1}))
    sync.compare(seen({3: 1}))
    assert pulls == []


# Batched replication (issue #10) --------------------------------------------------------


class Links:
    """call() for a Synchroniser: records each PUSH and lets the test answer it."""

    def __init__(self):
        self.sent: list[tuple[int, object, defer.Deferred]] = []
        self.payloads: list[str] = []

    def __call__(self, peer_id, message, timeout_s, on_line=None):
        d = defer.Deferred()
        self.sent.append((peer_id, message, d))
        self.payloads.append(peerwire.encode_message(message)[1])   # as Replica.call
        return d


def replicator(tmp_path, write_quorum: int = 2, **limits):
    from replicad.config import with_overrides
    from replicad.wire import Limits

    config = with_overrides(default_config(), write_quorum=write_quorum)
    if limits:
        config = with_overrides(config, limits=Limits(**limits))
    clock, links, refused = Clock(), Links(), []
    store = Store(str(tmp_path / "replica.sqlite"))
    sync = Synchroniser(store, [1, 2], config, clock, ping=None, call=links,
                        mark=lambda peer, up: None,
                        epoch=lambda: 3)
    return sync, store, clock, links, refused


def test_the_writes_of_one_turn_go_out_as_one_push_per_link(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path)
    records = [store.write(3, f"k{n}", "v", epoch=3) for n in range(10)]
    results = [sync.replicate(r, 3, refused.append) for r in records]
    clock.advance(0)
    assert [(peer, len(m.records)) for peer, m, _ in links.sent] == [(1, 10), (2, 10)]
    assert not any(r.called for r in results)
    links.sent[0][2].callback(PeerResponse("OK", ",".join(["applied"] * 10)))
    assert [r.result for r in results] == [True] * 10     # one answer acks all ten


def test_a_refusal_is_no_ack_and_is_reported(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path)
    result = sync.replicate(store.write(3, "k", "v", epoch=3), 3, refused.append)
    clock.advance(0)
    links.sent[0][2].callback(PeerResponse("NO", "9"))
    assert not result.called and refused == [1]
    links.sent[1][2].errback(PeerUnavailable("gone"))
    assert result.result is False


def test_batches_are_cut_to_fit_a_peer_line(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path, max_value_bytes=1000)
    records = [store.write(3, f"k{n}", "x" * 900, epoch=3) for n in range(12)]
    for record in records:
        sync.replicate(record, 3, refused.append)
    clock.advance(0)
    sizes = [len(m.records) for peer, m, _ in links.sent if peer == 1]
    assert sum(sizes) == 12 and len(sizes) > 1
    limit = sync.config.limits.max_line_bytes
    assert all(len(peerwire.encode_message(m)[1].encode()) <= limit for _, m, _ in links.sent)


def test_quorum_one_is_acknowledged_once_the_pushes_left(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path, write_quorum=1)
    result = sync.replicate(store.write(3, "k", "v", epoch=3), 3, refused.append)
    assert not result.called
    pushed_before = []
    result.addCallback(lambda ok: pushed_before.append(len(links.sent)) or ok)
    sync.send_batches()          # the group commit's call: in the COMMIT's turn
    assert pushed_before == [2] and result.result is True   # no answer needed


def test_a_lost_outcome_is_no_acknowledgement(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path)
    records = [store.write(3, f"k{n}", "v", epoch=3) for n in range(2)]
    results = [sync.replicate(r, 3, refused.append) for r in records]
    clock.advance(0)
    links.sent[0][2].callback(PeerResponse("OK", "lost,applied"))
    assert not results[0].called and results[1].result is True
    links.sent[1][2].callback(PeerResponse("OK", "lost,applied"))
    assert results[0].result is False                     # no replica but this one


def test_a_write_without_its_quorum_in_time_is_reported_missed(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path)
    results = [sync.replicate(store.write(3, f"k{n}", "v", epoch=3), 3, refused.append)
               for n in range(3)]
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 1            # one timer for the batch
    clock.advance(sync.timers.quorum_timeout - 0.001)
    assert not any(r.called for r in results)            # the links never answered
    clock.advance(0.001)
    assert [r.result for r in results] == [False] * 3


def test_the_batch_timer_goes_once_every_write_is_settled(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path)
    results = [sync.replicate(store.write(3, f"k{n}", "v", epoch=3), 3, refused.append)
               for n in range(2)]
    clock.advance(0)
    links.sent[0][2].callback(PeerResponse("OK", "lost,applied"))
    assert results[1].result is True and not results[0].called
    assert len(clock.getDelayedCalls()) == 1       # results[0] still waits for replica 2
    links.sent[1][2].callback(PeerResponse("OK", "applied,applied"))
    assert results[0].result is True
    assert clock.getDelayedCalls() == []           # nothing left in the reactor's heap


def test_send_batches_pushes_at_once_what_was_replicated(tmp_path):
    sync, store, clock, links, refused = replicator(tmp_path)
    sync.replicate(store.write(3, "k", "v", epoch=3), 3, refused.append)
    sync.send_batches()                  # the group commit's call, in the same turn
    assert [peer for peer, _, _ in links.sent] == [1, 2]
    clock.advance(0)                     # the scheduled call finds nothing left to send
    assert len(links.sent) == 2


def test_a_batch_is_encoded_once_whatever_the_number_of_peers(tmp_path, monkeypatch):
    sync, store, clock, links, refused = replicator(tmp_path)
    records = [store.write(3, f"k{n}", "v", epoch=3) for n in range(10)]
    for record in records:
        sync.replicate(record, 3, refused.append)
    encoded = []
    real = peerwire.encode_record
    monkeypatch.setattr(peerwire, "encode_record",
                        lambda record: encoded.append(record.key) or real(record))
    sync.send_batches()                  # the links encode what they send
    assert len(encoded) == 10 and len(links.payloads) == 2   # not 10 more per peer
    assert set(links.payloads) == {f"3 {peerwire.encode_batch(records)}"}


def test_done_is_told_the_outcome_without_a_deferred(tmp_path):
    """The coordinator's write path: replicate(..., done) returns nothing and tells
    done once, when the quorum is reached or missed, as the Deferred would fire."""
    sync, store, clock, links, refused = replicator(tmp_path)
    told: list[tuple[str, bool]] = []

    def replicate(key: str) -> None:
        assert sync.replicate(store.write(3, key, "v", epoch=3), 3, refused.append,
                              lambda ok: told.append((key, ok))) is None

    replicate("reached")
    replicate("lost")
    clock.advance(0)
    links.sent[0][2].callback(PeerResponse("OK", "applied,lost"))
    assert told == [("reached", True)]
    links.sent[1][2].callback(PeerResponse("OK", "applied,lost"))   # told once only
    assert told == [("reached", True), ("lost", False)]
    replicate("silent")                                  # its links never answer
    clock.advance(0)
    clock.advance(sync.timers.quorum_timeout)
    assert told[2:] == [("silent", False)] and clock.getDelayedCalls() == []


def one_record_peer(tmp_path) -> tuple[Synchroniser, Store]:
    """A Synchroniser whose peer 3 holds one write this store lacks (k = v, 3:1)."""
    store = Store(str(tmp_path / "replica.sqlite"))
    record = Record("k", "v", 3, 1, VectorClock({3: 1}))

    def call(peer_id, message, timeout_s, on_line=None):
        on_line("REC", peerwire.encode_record(record))
        return defer.succeed(PeerResponse("END", "3:1 -"))

    sync = Synchroniser(store, [3], default_config(), Clock(),
                        ping=lambda peer_id, timeout_s: defer.succeed(seen({3: 1})),
                        call=call, mark=lambda peer_id, up: None, epoch=lambda: 0)
    return sync, store


def test_a_large_pull_is_merged_over_several_reactor_turns(tmp_path, monkeypatch):
    """The import's finish yields to the reactor between its steps (a million keys in
    one call: 4 s answering no PING, bench/full_copy_join.py), and the clock rises with
    the last step only.  Stopped between steps, the staging is dropped and the clock
    keeps what the merged records were promised by before."""
    import os

    from twisted.logger import capturedLogs, formatEvent

    import replicad.store

    monkeypatch.setattr(replicad.store, "MERGE_ROWS", 2)
    records = [Record(f"k{i}", "v", 3, i, VectorClock({3: i})) for i in range(1, 6)]

    def call(peer_id, message, timeout_s, on_line=None):
        for record in records:
            on_line("REC", peerwire.encode_record(record))
        return defer.succeed(PeerResponse("END", f"3:{records[-1].seq} -"))

    store = Store(str(tmp_path / "replica.sqlite"))
    reactor = Clock()
    sync = Synchroniser(store, [3], default_config(), reactor,
                        ping=lambda peer_id, timeout_s: defer.succeed(
                            seen({3: records[-1].seq})),
                        call=call, mark=lambda peer_id, up: None, epoch=lambda: 0)
    results = []
    sync.sync_from(3).addBoth(results.append)
    assert results == [] and store.clock == VectorClock()     # the reactor's turn
    assert store.get("k2").value == "v" and store.get("k3") is None
    assert len(reactor.getDelayedCalls()) == 1
    with capturedLogs() as events:
        reactor.advance(0)      # Clock runs the calls each step schedules at once
    assert results == [True] and store.clock == VectorClock({3: 5})
    assert any("5 records, 5 applied" in formatEvent(e) and "merged in 3 step(s)"
               in formatEvent(e) for e in events)
    assert [store.get(f"k{i}").value for i in range(1, 6)] == ["v"] * 5

    records = [Record(f"j{i}", "v", 3, i + 5, VectorClock({3: i + 5})) for i in range(1, 6)]
    sync.sync_from(3).addBoth(results.append)
    assert len(results) == 1 and store.get("j2").value == "v"     # the first step
    store.close()                  # the replica stops between two steps
    with capturedLogs() as events:
        reactor.advance(0)
    assert results == [True, False] and not any(e.get("log_failure") for e in events)
    assert not any(".import-" in n for n in os.listdir(tmp_path))
    with Store(str(tmp_path / "replica.sqlite")) as store:
        assert store.clock == VectorClock({3: 5}) and store.get("j2").value == "v"
        assert store.get("j3") is None


def test_pulls_from_more_peers_than_sqlite_can_attach_at_once_all_land(tmp_path):
    """A take-over pulled from every peer at once (its pulls take turns now, but run
    side by side beside one that stalls, as catch-ups do), and each import ATTACHes a
    staging database; SQLite attaches at most 10 to a connection, so in a cluster of
    more than 11 replicas the eleventh pull failed with "too many attached databases"
    (a traceback, the peer's writes not taken over).  Imports beyond MAX_IMPORTS wait
    for a slot."""
    from twisted.logger import capturedLogs

    from replicad.store import MAX_IMPORTS

    peers = list(range(1, 2 * MAX_IMPORTS + 2))
    store = Store(str(tmp_path / "replica.sqlite"))
    streams: list[tuple[int, defer.Deferred]] = []

    def call(peer_id, message, timeout_s, on_line=None):
        on_line("REC", peerwire.encode_record(
            Record(f"k{peer_id}", "v", peer_id, 1, VectorClock({peer_id: 1}))))
        streams.append((peer_id, d := defer.Deferred()))
        return d

    sync = Synchroniser(store, peers, default_config(), Clock(),
                        ping=lambda peer_id, timeout_s: defer.succeed(
                            PeerStatus(peer_id, "follower", 0, 0,
                                       VectorClock({peer_id: 1}))),
                        call=call, mark=lambda peer_id, up: None, epoch=lambda: 0)
    results = []
    with capturedLogs() as events:
        for peer in peers:
            sync.sync_from(peer).addBoth(results.append)
        assert len(streams) == MAX_IMPORTS       # the others wait for a slot
        while streams:
            peer, stream = streams.pop(0)
            stream.callback(PeerResponse("END", f"{peer}:1 -"))
    assert results == [True] * len(peers), [e for e in events if e.get("log_failure")]
    assert all(store.get(f"k{peer}").value == "v" for peer in peers)
    store.close()


def test_the_replica_is_told_once_a_pull_is_imported(tmp_path):
    """after_import: a confirmed read waiting for a write that a lost push should have
    brought is answered when a pull brings it (replica.py, _recheck_awaiting)."""
    sync, store = one_record_peer(tmp_path)
    told = []
    sync.after_import = lambda: told.append(store.clock)
    results = []
    sync.sync_from(3).addBoth(results.append)
    assert results == [True]
    assert told == [VectorClock({3: 1})]
    store.close()


def test_a_pull_whose_import_finds_the_disk_full_tells_the_replica_and_applies_nothing(
        tmp_path):
    """The import's COMMIT fails with SQLITE_FULL: nothing of the pull is kept, no
    traceback, and the replica's disk-full episode hears of it (STATUS and metrics
    said ``disk ok`` while every pull failed, only a log line told)."""
    from twisted.logger import capturedLogs

    from tests.test_groupcommit import FailingCommits

    sync, store = one_record_peer(tmp_path)
    full: list[Exception] = []
    sync.disk_full_seen = full.append
    store._db = spy = FailingCommits(store._db)
    spy.full = True
    results = []
    with capturedLogs() as events:
        sync.sync_from(3).addBoth(results.append)
    assert results == [False] and len(full) == 1 and "disk is full" in str(full[0])
    assert store.get("k") is None and store.clock == VectorClock()
    assert not any(e.get("log_failure") for e in events)
    spy.full = False
    sync.sync_from(3).addBoth(results.append)
    assert results == [False, True] and store.get("k").value == "v" and len(full) == 1
    store.close()


def test_a_follower_with_a_full_disk_is_logged_once_until_it_acks_again(tmp_path):
    """A follower that answers every push ERR NOSPACE is one warning on the coordinator
    (no traceback per push), and one line more when it stores pushes again."""
    from twisted.logger import capturedLogs

    from replicad.peerwire import ErrorAnswer

    sync, store, clock, links, refused = replicator(tmp_path, write_quorum=1)
    with capturedLogs() as events:
        for n in range(3):
            sync.replicate(store.write(3, f"k{n}", "v", epoch=3), 3, refused.append)
            sync.send_batches()
            for peer, _, d in links.sent[-2:]:
                if peer == 1:
                    d.errback(ErrorAnswer(1, "NOSPACE replica 1's disk is full"))
                else:
                    d.callback(PeerResponse("OK", "applied"))
        sync.replicate(store.write(3, "k9", "v", epoch=3), 3, refused.append)
        sync.send_batches()
        for _, _, d in links.sent[-2:]:
            d.callback(PeerResponse("OK", "applied"))
    texts = [e["log_format"].format(**e) for e in events]
    assert [t for t in texts if "replica 1" in t] == [
        "replica 1 cannot store pushed writes: replica 1 answered ERR NOSPACE replica 1's "
        "disk is full; it pulls them once space is freed",
        "replica 1 stores pushed writes again"]
    assert not any(e.get("log_failure") for e in events)


# A take-over's pull waits for a slow peer's PING (Replica.pull_for_take_over) ---------------


def slow_peer(tmp_path, answers_after_s: float = 0.5):
    """A Synchroniser whose peer 3 answers a PING after ``answers_after_s`` (a loaded
    machine); a PING with a shorter timeout fails at its timeout, as a link's does."""
    store = Store(str(tmp_path / "replica.sqlite"))
    clock = Clock()
    record = Record("k", "v", 3, 1, VectorClock({3: 1}))
    pings: list[float] = []

    def ping(peer_id, timeout_s):
        pings.append(timeout_s)
        d: defer.Deferred = defer.Deferred()
        if timeout_s > answers_after_s:
            clock.callLater(answers_after_s, d.callback, seen({3: 1}))
        else:
            clock.callLater(timeout_s, d.errback, PeerUnavailable("timed out"))
        return d

    def call(peer_id, message, timeout_s, on_line=None):
        on_line("REC", peerwire.encode_record(record))
        return defer.succeed(PeerResponse("END", "3:1 -"))

    sync = Synchroniser(store, [3], default_config(), clock, ping=ping, call=call,
                        mark=lambda peer_id, up: None, epoch=lambda: 0)
    return sync, store, clock, pings


def test_a_take_overs_pull_waits_for_a_slow_peers_ping(tmp_path):
    """Anti-entropy's pull gives up on a PING after ping_timeout (0.2 s); a take-over's
    (fresh, with answer_timeout's patience, begun while that one runs) gets the answer
    that comes 0.5 s later on a loaded machine, and the peer's writes with it."""
    sync, store, clock, pings = slow_peer(tmp_path)
    hasty, patient = [], []
    sync.sync_from(3).addBoth(hasty.append)
    sync.sync_from(3, ping_timeout_s=1.5, fresh=True).addBoth(patient.append)
    clock.advance(0.2)
    assert hasty == [False] and patient == []
    clock.advance(0.3)
    assert patient == [True] and store.clock == VectorClock({3: 1})
    assert pings == [0.2, 1.5]
    store.close()


def test_a_fresh_pull_begins_now_beside_the_one_running(tmp_path):
    """A take-over needs every write the peer took until it accepted the epoch; a pull
    that began before (anti-entropy's) may lack the last of them, and may be stuck on a
    peer that froze in its stream (5 s: chaos seed 43).  The take-over's pull begins at
    once beside it and does not wait for it."""
    store = Store(str(tmp_path / "replica.sqlite"))
    peer = [Record("a", "v", 3, 1, VectorClock({3: 1}))]
    deltas: list[tuple[list[Record], object, defer.Deferred]] = []

    def ping(peer_id, timeout_s):
        return defer.succeed(seen({3: len(peer)}))

    def call(peer_id, message, timeout_s, on_line=None):
        d: defer.Deferred = defer.Deferred()
        deltas.append((list(peer), on_line, d))     # what the peer holds as it answers
        return d

    def answer(n: int) -> None:
        records, on_line, d = deltas[n]
        for record in records:
            on_line("REC", peerwire.encode_record(record))
        d.callback(PeerResponse("END", f"3:{len(records)} -"))

    sync = Synchroniser(store, [3], default_config(), Clock(), ping=ping, call=call,
                        mark=lambda peer_id, up: None, epoch=lambda: 0)
    background, take_over, later = [], [], []
    sync.sync_from(3).addBoth(background.append)          # begins: the peer holds 3:1
    peer.append(Record("b", "v", 3, 2, VectorClock({3: 2})))   # then it takes 3:2,
    sync.sync_from(3, fresh=True).addBoth(take_over.append)    # then accepts the epoch
    sync.sync_from(3).addBoth(later.append)               # shares the fresh one
    assert len(deltas) == 2
    answer(1)                                             # the first is still stuck
    assert take_over == later == [True] and background == []
    assert store.clock == VectorClock({3: 2})
    answer(0)
    assert background == [True] and store.clock == VectorClock({3: 2})
    peer.append(Record("c", "v", 3, 3, VectorClock({3: 3})))
    sync.sync_from(3)
    assert len(deltas) == 3                               # none was left running
    store.close()


def test_anti_entropy_waits_for_a_pull_under_way_then_pulls_only_what_is_left(tmp_path):
    """A replica far behind whose links come back one after another copied the whole
    store once per peer, at the same time (bench/rejoin_gap.py: a full copy of 101,352
    records from replica 2 and a second one from replica 1, 0 applied).  Anti-entropy
    (and a push's gap) now put a peer aside while a pull from another peer runs; once
    no pull runs, the pull's PING finds only what is still missing."""
    store = Store(str(tmp_path / "replica.sqlite"))
    shared = [Record(f"k{i}", "v", 2, i, VectorClock({2: i})) for i in range(1, 4)]
    holds = {1: list(shared), 2: list(shared)}
    calls: list[tuple[int, object, defer.Deferred]] = []

    def status(peer_id: int) -> PeerStatus:
        clock = VectorClock()
        for record in holds[peer_id]:
            clock = clock.merge(record.version)
        return PeerStatus(peer_id, "follower", 3, 1, clock)

    def call(peer_id, message, timeout_s, on_line=None):
        d: defer.Deferred = defer.Deferred()
        calls.append((peer_id, on_line, d))
        return d

    def answer(n: int) -> None:
        peer_id, on_line, d = calls[n]
        clock = status(peer_id).clock
        for record in holds[peer_id]:       # a delta: what this replica's clock lacks
            if store.clock[record.origin] < record.seq:
                on_line("REC", peerwire.encode_record(record))
        d.callback(PeerResponse("END", f"{clock.encode()} -"))

    sync = Synchroniser(store, [1, 2], default_config(), Clock(),
                        ping=lambda peer_id, timeout_s: defer.succeed(status(peer_id)),
                        call=call, mark=lambda peer_id, up: None, epoch=lambda: 0)
    results: list[bool] = []
    sync.sync_from(2).addBoth(results.append)      # the catch-up: under way
    sync.compare(status(1), at_once=True)          # replica 1's link comes back
    assert [peer for peer, _, _ in calls] == [2]   # no second copy beside it
    answer(0)
    assert results == [True] and store.clock == VectorClock({2: 3})
    assert [peer for peer, _, _ in calls] == [2]   # 1 holds nothing more: not pulled

    # Replica 1 holds a write of its own besides, and a push from it shows a gap (the
    # replica's push handler takes the same way): once the pull from 2 lands, 1 is
    # pulled from, for that.
    extra = Record("x", "v", 1, 1, VectorClock({1: 1}))
    holds[1].append(extra)
    holds[2].append(Record("k4", "v", 2, 4, VectorClock({2: 4})))
    sync.sync_from(2)
    sync.pull_when_free(1)
    assert [peer for peer, _, _ in calls] == [2, 2]
    answer(1)
    assert [peer for peer, _, _ in calls] == [2, 2, 1]
    answer(2)
    assert store.clock == VectorClock({1: 1, 2: 4}) and store.get("x").value == "v"
    store.close()


def test_a_pull_put_aside_does_not_wait_for_one_that_stalls(tmp_path):
    """A pull put aside waits for the one under way only while that one makes progress
    (records arriving, steps merging).  A peer frozen mid-stream holds its pull for up
    to STREAM_IDLE_TIMEOUT_S (5 s), and in quorum mode a follower whose coordinator's
    push showed a gap acknowledges nothing until it has pulled: after ping_timeout
    without progress, the peer put aside is pulled from beside it."""
    store = Store(str(tmp_path / "replica.sqlite"))
    clock = Clock()
    ahead = VectorClock({2: 5})
    calls: list[tuple[int, object, defer.Deferred]] = []

    def call(peer_id, message, timeout_s, on_line=None):
        d: defer.Deferred = defer.Deferred()
        calls.append((peer_id, on_line, d))
        return d

    sync = Synchroniser(store, [1, 2], default_config(), clock,
                        ping=lambda peer_id, timeout_s: defer.succeed(
                            PeerStatus(peer_id, "follower", 3, 1, ahead)),
                        call=call, mark=lambda peer_id, up: None, epoch=lambda: 0)
    patience = sync.timers.ping_timeout
    sync.sync_from(2)                        # under way: the peer streams, then freezes
    sync.pull_when_free(1)                   # the coordinator's push showed a gap
    assert [peer for peer, _, _ in calls] == [2]
    clock.advance(patience * 0.75)
    calls[0][1]("REC", peerwire.encode_record(Record("a", "v", 2, 1, VectorClock({2: 1}))))
    clock.advance(patience * 0.5)            # a look: progress a moment ago, it waits
    assert [peer for peer, _, _ in calls] == [2]
    clock.advance(patience)                  # no progress since: pulled from beside it
    assert [peer for peer, _, _ in calls] == [2, 1]
    assert clock.getDelayedCalls() == []     # nothing left put aside: no more looks
    store.close()


class TwoPeers:
    """Peers 1 and 2 that hold ``holds[peer]`` and answer a DELTA when the test says
    (``answer(n)``: the n-th call streams what this replica's clock lacks and ends), or
    stream part of it and freeze (``stream``), or fail (``fail``)."""

    def __init__(self, tmp_path, holds: dict[int, list[Record]]):
        self.store = Store(str(tmp_path / "replica.sqlite"))
        self.clock = Clock()
        self.holds = holds
        self.calls: list[tuple[int, object, object, defer.Deferred]] = []
        self.slow_pings: dict[int, defer.Deferred] = {}   # answered by answer_ping
        self.sync = Synchroniser(
            self.store, sorted(holds), default_config(), self.clock, ping=self.ping,
            call=self.call, mark=lambda peer_id, up: None, epoch=lambda: 0)

    def ping(self, peer_id: int, timeout_s: float) -> defer.Deferred:
        if peer_id in self.slow_pings:
            return self.slow_pings[peer_id]
        return defer.succeed(self.status(peer_id))

    def answer_ping(self, peer_id: int) -> None:
        self.slow_pings.pop(peer_id).callback(self.status(peer_id))

    def status(self, peer_id: int) -> PeerStatus:
        clock = VectorClock()
        for record in self.holds[peer_id]:
            clock = clock.merge(record.version)
        return PeerStatus(peer_id, "follower", 3, 1, clock)

    def call(self, peer_id, message, timeout_s, on_line=None):
        d: defer.Deferred = defer.Deferred()
        self.calls.append((peer_id, message, on_line, d))
        return d

    def asked(self) -> list[int]:
        return [peer for peer, _, _, _ in self.calls]

    def stream(self, n: int, count: int | None = None) -> int:
        peer_id, message, on_line, _ = self.calls[n]
        since = getattr(message, "since", VectorClock())   # a FULL: everything
        sent = [r for r in self.holds[peer_id] if since[r.origin] < r.seq][:count]
        for record in sent:
            on_line("REC", peerwire.encode_record(record))
        return len(sent)

    def answer(self, n: int) -> int:
        sent = self.stream(n)
        peer_id, _, _, d = self.calls[n]
        d.callback(PeerResponse("END", f"{self.status(peer_id).clock.encode()} -"))
        return sent

    def fail(self, n: int) -> None:
        self.calls[n][3].errback(PeerUnavailable("the connection was lost"))

    def take_over(self, peer_id: int, results: list) -> None:
        self.sync.sync_from(peer_id, fresh=True, in_turn=True).addBoth(results.append)


def history(origin: int, count: int) -> list[Record]:
    return [Record(f"k{origin}-{i}", "v", origin, i, VectorClock({origin: i}))
            for i in range(1, count + 1)]


def test_take_over_pulls_take_turns_and_the_second_asks_only_for_what_is_left(tmp_path):
    """A take-over pulls from every peer that accepts its epoch, and they mostly hold the
    same writes.  Side by side each sent all of them (a bully-back: "pulled delta from
    replica 1: 288 records, 0 applied").  Now the second waits while the first
    streams, then asks for what is still missing: here nothing (no DELTA at all), and
    once peer 1 holds a write of its own, that write alone."""
    shared = history(2, 5)
    peers = TwoPeers(tmp_path, {1: shared[:4], 2: list(shared)})
    results: list[bool] = []
    peers.take_over(2, results)
    peers.take_over(1, results)
    assert peers.asked() == [2]                  # 1 waits: 2 streams
    assert peers.answer(0) == 5
    assert results == [True, True] and peers.asked() == [2]   # 1 lacks nothing more
    assert peers.store.clock == VectorClock({2: 5})

    own = Record("mine", "v", 1, 1, VectorClock({1: 1}))
    peers.holds[1].append(own)
    peers.holds[2] += history(2, 8)[5:]
    peers.take_over(2, results)
    peers.take_over(1, results)
    assert peers.asked() == [2, 2]
    assert peers.answer(1) == 3
    assert peers.asked() == [2, 2, 1]
    assert peers.calls[2][1].since == VectorClock({2: 8})   # asked after the first landed
    assert peers.answer(2) == 1                  # its own write, not the shared ones
    assert results == [True] * 4
    assert peers.store.clock == VectorClock({1: 1, 2: 8})
    peers.store.close()


def test_a_take_over_pull_does_not_wait_for_one_that_fails_or_stalls(tmp_path):
    """The turn passes at once when the pull under way fails (its peer died), and after
    ping_timeout without progress when it stalls (a peer frozen mid-stream holds its
    pull up to STREAM_IDLE_TIMEOUT_S, 5 s: chaos seed 43)."""
    shared = history(2, 4)
    peers = TwoPeers(tmp_path, {1: list(shared), 2: list(shared)})
    results: list[bool] = []
    peers.take_over(2, results)
    peers.take_over(1, results)
    peers.fail(0)
    assert results == [False] and peers.asked() == [2, 1]
    assert peers.answer(1) == 4 and results == [False, True]

    later = history(2, 8)[4:]
    peers.holds[1] += later
    peers.holds[2] += later
    peers.take_over(2, results)
    peers.take_over(1, results)
    patience = peers.sync.timers.ping_timeout
    assert peers.asked() == [2, 1, 2]
    peers.clock.advance(patience * 0.75)
    assert peers.stream(2, count=1) == 1         # progress, then 2 freezes
    peers.clock.advance(patience * 0.5)          # a look: progress a moment ago, 1 waits
    assert peers.asked() == [2, 1, 2]
    peers.clock.advance(patience)                # no progress since: 1 streams beside it
    assert peers.asked() == [2, 1, 2, 1]
    assert peers.answer(3) == 4 and results[-1] is True
    assert peers.store.clock == VectorClock({2: 8})
    assert peers.clock.getDelayedCalls() == []   # nobody waits: no more looks
    peers.store.close()


def test_a_take_over_pull_waits_for_any_pull_streaming_but_a_catch_up_never_waits(
        tmp_path):
    """Any pull that streams holds a take-over's pull back (it brings the same writes);
    a session's catch-up (a client waits) and a joining copy never wait for one: they
    are not in_turn."""
    shared = history(2, 3)
    peers = TwoPeers(tmp_path, {1: list(shared), 2: list(shared)})
    results: list[bool] = []
    peers.sync.sync_from(2).addBoth(results.append)     # a catch-up, streaming
    peers.take_over(1, results)
    assert peers.asked() == [2]
    peers.answer(0)
    assert results == [True, True] and peers.asked() == [2]

    peers.holds[1] += history(2, 5)[3:]
    peers.holds[2] += history(2, 5)[3:]
    peers.take_over(1, results)
    peers.sync.sync_from(2).addBoth(results.append)     # not held back by the take-over's
    assert peers.asked() == [2, 1, 2]
    peers.answer(1)
    peers.answer(2)
    assert results == [True] * 4 and peers.store.clock == VectorClock({2: 5})
    peers.store.close()


def test_anti_entropy_whose_ping_comes_back_after_a_take_over_began_waits_its_turn(
        tmp_path):
    """A returning replica's links come up as it stands: anti-entropy PINGs a peer, the
    take-over's pull from the other begins streaming meanwhile, and the PING's answer
    then showed the same writes.  Both streamed them (a bully-back: "pulled delta from
    replica 1: 331 records, 331 applied" beside "from replica 2: 332 records, 1
    applied").  Anti-entropy's pull now waits its turn too."""
    shared = history(2, 6)
    peers = TwoPeers(tmp_path, {1: list(shared), 2: list(shared)})
    peers.slow_pings[1] = defer.Deferred()
    peers.sync.compare(peers.status(1), at_once=True)      # replica 1's link is up
    results: list[bool] = []
    peers.take_over(2, results)                            # streams at once
    peers.answer_ping(1)
    assert peers.asked() == [2]
    assert peers.answer(0) == 6
    assert results == [True] and peers.asked() == [2]      # nothing left for 1
    assert peers.store.clock == VectorClock({2: 6})
    assert peers.clock.getDelayedCalls() == []
    peers.store.close()


def test_a_session_catch_up_that_shares_a_pull_waiting_its_turn_makes_it_stream_now(
        tmp_path):
    """A session's catch-up (a client waits, for fetch_timeout at most) shares the pull
    already begun from its peer.  If that pull is anti-entropy's, waiting its turn
    behind another stream, the catch-up would wait with it: it streams at once
    instead, as the catch-up's own pull would have."""
    peers = TwoPeers(tmp_path, {1: history(1, 2), 2: history(2, 500)})
    peers.slow_pings[1] = defer.Deferred()
    peers.sync.compare(peers.status(1), at_once=True)     # anti-entropy: PING to 1
    results: list[bool] = []
    peers.take_over(2, results)                           # 2 streams a big delta
    peers.answer_ping(1)
    assert peers.asked() == [2]                           # 1 waits its turn
    peers.sync.sync_from(1).addBoth(results.append)       # a session needs 1's writes
    assert peers.asked() == [2, 1]
    assert peers.answer(1) == 2 and results == [True]
    assert peers.answer(0) == 500 and results == [True, True]
    assert peers.clock.getDelayedCalls() == []
    peers.store.close()


def test_a_stopped_synchroniser_begins_no_pull_that_waited(tmp_path):
    """The replica stops: it aborts its links (the streams fail) and closes the store.
    A pull that waited its turn, resumed by the failed stream, began an import on the
    store being closed (a traceback in the log at every such stop); a peer put aside
    likewise.  stop() drops them, and leaves no stall check in the reactor."""
    from twisted.logger import capturedLogs

    shared = history(2, 3)
    peers = TwoPeers(tmp_path, {1: list(shared), 2: list(shared)})
    results: list[bool] = []
    peers.take_over(2, results)
    peers.take_over(1, results)                   # waits its turn
    assert peers.asked() == [2]
    peers.sync.stop()
    peers.store.close()
    with capturedLogs() as events:
        peers.fail(0)                             # the link's abort ends the stream
    assert peers.asked() == [2] and results == [False]
    assert [e for e in events if e.get("log_failure")] == []
    assert peers.clock.getDelayedCalls() == []


class SlowLinks(TwoPeers):
    """TwoPeers whose PINGs come back ``delay[peer]`` seconds of the clock later (None:
    never); a PING whose caller's patience is shorter fails as a real one does."""

    def __init__(self, tmp_path, holds, delay: dict[int, float | None]):
        super().__init__(tmp_path, holds)
        self.delay = delay
        self.patience: list[tuple[int, float]] = []

    def ping(self, peer_id: int, timeout_s: float) -> defer.Deferred:
        self.patience.append((peer_id, timeout_s))
        d: defer.Deferred = defer.Deferred()
        delay = self.delay[peer_id]
        if delay is not None and delay < timeout_s:
            self.clock.callLater(delay, lambda: d.called or d.callback(self.status(peer_id)))
        self.clock.callLater(timeout_s, lambda: d.called or d.errback(
            PeerUnavailable(f"replica {peer_id} did not answer within {timeout_s} s")))
        return d

    def catch_up(self, need: VectorClock, via: int | None) -> list[bool]:
        results: list[bool] = []
        defer.ensureDeferred(self.sync.catch_up(need, via)).addBoth(results.append)
        return results

    def call_to(self, peer_id: int) -> int:
        return self.asked().index(peer_id)


def test_a_session_catch_up_asks_its_last_server_at_once_and_waits_for_fetch_timeout(
        tmp_path):
    """The session's last server holds its writes, but answers in 0.9 s, far longer
    than ping_timeout: its PING used to fail at 0.2 s, the other peer lacked the
    writes, and the session got ERR STALE although they were on their way (chaos seed
    106).  It is now asked for its delta at once, no PING first (a round trip less),
    and may take the whole fetch_timeout."""
    peers = SlowLinks(tmp_path, {1: history(1, 3), 2: []}, delay={1: None, 2: 0.0})
    timers = peers.sync.timers
    results = peers.catch_up(VectorClock({1: 3}), via=1)
    assert peers.asked() == [1] and peers.patience == []
    assert peers.calls[0][1].since == VectorClock()
    peers.clock.advance(timers.ping_timeout)     # not yet: the other peer is asked
    peers.clock.advance(0)
    assert peers.patience == [(2, timers.ping_timeout)] and results == []
    peers.clock.advance(0.9 - timers.ping_timeout)
    assert peers.answer(0) == 3
    assert results == [True] and peers.store.clock == VectorClock({1: 3})
    peers.store.close()


def test_a_session_catch_up_takes_whichever_peer_brings_the_writes_first(tmp_path):
    """While the last server is silent, the others are asked after ping_timeout; and
    the last server's writes end the wait at once, though another peer's stream is
    still open."""
    peers = SlowLinks(tmp_path, {1: history(1, 3), 2: history(1, 3)},
                      delay={1: None, 2: 0.0})             # 1 never answers
    timers = peers.sync.timers
    results = peers.catch_up(VectorClock({1: 3}), via=1)
    peers.clock.advance(timers.ping_timeout)
    peers.clock.advance(0)
    assert peers.asked() == [1, 2]
    assert peers.answer(1) == 3 and results == [True]
    assert peers.clock.seconds() < timers.fetch_timeout
    peers.store.close()

    (tmp_path / "b").mkdir()
    peers = SlowLinks(tmp_path / "b", {1: history(1, 3), 2: history(1, 3)},
                      delay={1: None, 2: 0.0})
    results = peers.catch_up(VectorClock({1: 3}), via=1)
    peers.clock.advance(timers.ping_timeout)
    peers.clock.advance(0)
    assert peers.asked() == [1, 2]                        # 2's stream hangs
    peers.clock.advance(0.3)
    assert peers.answer(0) == 3
    assert results == [True]
    peers.fail(1)
    peers.store.close()


def test_a_session_catch_up_still_waits_for_another_peer_once_the_last_server_fails(
        tmp_path):
    """The last server dies while another peer streams the writes: the catch-up waits
    for that stream, not only for the last server."""
    peers = SlowLinks(tmp_path, {1: history(1, 3), 2: history(1, 3)},
                      delay={1: None, 2: 0.0})
    timers = peers.sync.timers
    results = peers.catch_up(VectorClock({1: 3}), via=1)
    peers.clock.advance(timers.ping_timeout)
    peers.clock.advance(0)
    assert peers.asked() == [1, 2]                        # 2 streams
    peers.clock.advance(0.1)
    peers.fail(0)                                         # 1 dies
    assert results == []
    peers.clock.advance(0.2)
    assert peers.answer(1) == 3 and results == [True]
    peers.store.close()


def test_a_session_catch_up_that_nobody_answers_gives_up_at_fetch_timeout(tmp_path):
    peers = SlowLinks(tmp_path, {1: history(1, 3), 2: history(1, 3)},
                      delay={1: None, 2: None})
    timers = peers.sync.timers
    results = peers.catch_up(VectorClock({1: 3}), via=1)
    peers.clock.advance(timers.fetch_timeout - 0.001)
    assert results == []
    peers.clock.advance(0.001)
    assert results == [False] and peers.store.clock == VectorClock()
    peers.store.close()


def test_a_session_catch_up_does_not_share_a_pull_that_gives_up_on_its_ping_sooner(
        tmp_path):
    """Anti-entropy is PINGing the session's last server, with ping_timeout's patience,
    when the catch-up begins: sharing that pull, the catch-up failed with it at 0.2 s.
    It begins its own, which later callers share; a pull past its PING is shared."""
    peers = SlowLinks(tmp_path, {1: history(1, 3), 2: []}, delay={1: 0.5, 2: 0.0})
    timers = peers.sync.timers
    peers.sync.compare(peers.status(1), at_once=True)     # anti-entropy's PING to 1
    results = peers.catch_up(VectorClock({1: 3}), via=1)
    late = peers.catch_up(VectorClock({1: 3}), via=1)     # shares the catch-up's
    assert peers.patience == [(1, timers.ping_timeout)] and peers.asked() == [1]
    peers.clock.advance(timers.ping_timeout)              # anti-entropy's PING fails
    peers.clock.advance(0)
    assert peers.answer(0) == 3
    assert results == late == [True] and peers.store.clock == VectorClock({1: 3})

    peers.holds[1] += history(1, 5)[3:]
    peers.delay[1] = 0.0
    peers.sync.sync_from(1)                               # past its PING: streaming
    peers.clock.advance(0)
    results = peers.catch_up(VectorClock({1: 5}), via=1)
    assert [peer for peer, _ in peers.patience].count(1) == 2 and peers.asked() == [1, 1]
    assert peers.answer(1) == 2 and results == [True]
    peers.store.close()
