"""Moving writes between replicas: pulls (delta or full copy), session catch-up, pushes.

A pull asks a peer for its clock first and then for exactly what this replica lacks:
a delta (records whose write ids our clock does not cover), or a full copy when this
replica is empty or lacks most of what the peer has seen (``full_copy_ratio``; a delta
never carries more than a full copy, so that is the only case where the full copy's one
sequential scan is the better choice).  Records stream in
one per line and are staged by the store's Importer, then merged in steps of a bounded
size, one reactor turn each (a replica busy with a large copy still answers PINGs), the
clock raised with the last step; memory stays bounded and no record is half-applied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from replicad import peerwire
from replicad.config import ClusterConfig
from replicad.peer import PeerResponse, PeerUnavailable
from replicad.peerwire import ErrorAnswer, Message, PeerStatus, PeerWireError
from replicad.store import (
    MAX_IMPORTS,
    ApplyResult,
    ImportAborted,
    Importer,
    Record,
    Store,
    disk_full,
)
from replicad.vclock import VectorClock
from replicad.wire import Code

# A sync stream may run long; it fails only when the peer goes silent this long.
STREAM_IDLE_TIMEOUT_S = 5.0

Call = Callable[..., defer.Deferred[PeerResponse]]


class StaleEpoch(Exception):
    """A peer refused a request because it has seen a newer epoch (already learnt)."""

    def __init__(self, peer_id: int, epoch: int):
        super().__init__(f"replica {peer_id} is in the newer epoch {epoch}")
        self.peer_id, self.epoch = peer_id, epoch


class _FirstPing:
    """A pull's first PING: how long it may wait for the peer, and whether it still
    does."""

    __slots__ = ("patience", "waiting")

    def __init__(self, patience: float, sent: bool = True):
        self.patience = patience
        self.waiting = sent         # not sent: the pull asks for its delta at once

    def gives_up_before(self, patience: float) -> bool:
        return self.waiting and self.patience < patience


class Synchroniser:
    """Pulls and pushes for one replica.  ``ping`` asks a peer for its PeerStatus
    (errback PeerUnavailable); ``call(peer_id, message, timeout_s, on_line)`` sends a
    typed request (errback StaleEpoch when the peer knows a newer epoch); ``mark``
    records whether a peer answered; ``epoch`` is this replica's highest epoch."""

    log = Logger()

    def __init__(
        self,
        store: Store,
        peers: list[int],
        config: ClusterConfig,
        reactor,
        ping: Callable[[int, float], defer.Deferred[PeerStatus]],
        call: Call,
        mark: Callable[[int, bool], None],
        epoch: Callable[[], int],
    ):
        self.store = store
        self.peers = sorted(peers)
        self.config = config
        self.timers = config.timers
        self.reactor = reactor
        self.ping = ping
        self.call = call
        self.mark = mark
        self.epoch = epoch
        self._pulls: dict[int, defer.Deferred[bool]] = {}
        # The first PING of each of those pulls: how long it may wait, and whether it
        # still does (a session's catch-up that may wait longer does not share it).
        self._first_pings: dict[int, _FirstPing] = {}
        # A take-over pulls from every peer at once; imports beyond the store's limit
        # (SQLite attaches 10 databases to a connection) wait for a slot.
        self._import_slots = defer.DeferredSemaphore(MAX_IMPORTS)
        self._batches: dict[int, list[_Pending]] = {}    # this turn's writes, per epoch
        self._refused: Callable[[int], None] = lambda peer_id: None
        self._full_peers: set[int] = set()      # followers whose disk was full at a push
        self._last_seen: dict[int, VectorClock] = {}
        # Peers to pull from once no pull runs (pull_when_free), one at a time, or once
        # the pulls under way make no progress (a pull begun, a record received, a step
        # merged: counted, not timed, so a record costs no clock reading).
        self._pull_later: set[int] = set()
        self._progress = 0
        self._progress_looked = 0       # _progress at the last stall check
        self._stall_check: IDelayedCall | None = None
        # Pulls past their PING (streaming or merging), and the pulls (peer, waiter)
        # that wait for them to end before they ask for what is still missing (in_turn).
        self._streaming = 0
        self._turn_waiters: deque[tuple[int, defer.Deferred[None]]] = deque()
        self._idle_waiters: list[defer.Deferred[None]] = []     # when_idle's
        # Each peer's clock as its last pull from it began (a lower bound of what it
        # holds: a peer's clock only grows): whom a take-over may count as holding its
        # writes (Replica.holders).
        self.peer_clocks: dict[int, VectorClock] = {}
        # Called after a pull's records are imported (the store's clock moved on):
        # confirmed reads waiting for a write a lost push should have brought.
        self.after_import: Callable[[], None] | None = None
        # Called when a pull's import found the disk full: the replica's one disk-full
        # episode (groupcommit.py) says so, once, in the log, STATUS and the metrics.
        self.disk_full_seen: Callable[[Exception], None] | None = None

    # Pulls -----------------------------------------------------------------------------

    def compare(self, status: PeerStatus, at_once: bool = False) -> None:
        """Anti-entropy on a peer's clock (from a heartbeat or the periodic PING): pull
        only the writes that were already missing at the previous look.  Writes pushed a
        moment ago are still in flight on the peer's own connection to us; pulling them
        again would be wasted work under load.  A lost push shows up twice and is
        pulled; an empty replica is bootstrapped at once, and so is what a peer whose
        link just came back holds (``at_once``: nothing of it can be in flight)."""
        previous = self._last_seen.get(status.peer_id)
        self._last_seen[status.peer_id] = status.clock
        lacking_now = status.clock.missing_from(self.store.clock)
        if not lacking_now:
            return
        empty = self.store.clock == VectorClock() and self.store.count() == 0
        if (empty or at_once
                or (previous is not None and previous.missing_from(self.store.clock))):
            self.pull_when_free(status.peer_id)

    def pull_when_free(self, peer_id: int) -> None:
        """Pull what peer_id has and this replica lacks: now, or, while a pull from
        another peer is under way, once no pull runs (then the pull's PING finds only
        what is still missing).  That pull likely brings most of it: a replica far
        behind whose links came back one after another, or whose coordinator's pushes
        showed a gap, copied the whole store once per peer, side by side
        (bench/rejoin_gap.py).  Anti-entropy's pulls and a push's gap take this way; a
        take-over's, a session's and a catch-up's are not put aside (a take-over's and a
        CATCHUP's take their turn after their PING: sync_from).  Nor does anything wait
        on a pull that stalls (a peer frozen mid-stream holds it up to
        STREAM_IDLE_TIMEOUT_S): with no progress for ping_timeout, the next peer put
        aside is pulled from beside it (in quorum mode a follower's gap kept it from
        acknowledging).  A pull begun here also takes its turn (``in_turn``) behind one
        that began streaming during its PING (a take-over's, say: a returning replica's
        link comes up as it stands)."""
        if any(peer != peer_id for peer in self._pulls):
            self._pull_later.add(peer_id)
            self._watch_for_stall()
            return
        self.sync_from(peer_id, in_turn=True)

    def _watch_for_stall(self) -> None:
        if self._stall_check is None:
            self._progress_looked = self._progress
            self._stall_check = self.reactor.callLater(self.timers.ping_timeout,
                                                       self._check_stalled)

    def _check_stalled(self) -> None:
        """Every ping_timeout while a peer is put aside or a pull waits its turn:
        nothing progressed since the last look, so the pulls under way stall; the next
        peer is pulled, and the next waiting pull streams, beside them."""
        self._stall_check = None
        if not self._pull_later and not self._turn_waiters:
            return
        if self._progress == self._progress_looked:
            if self._pull_later:
                self._pull_next(stalled=True)
            if self._turn_waiters:
                self._give_turn()
        self._progress_looked = self._progress
        if self._pull_later or self._turn_waiters:
            self._stall_check = self.reactor.callLater(self.timers.ping_timeout,
                                                       self._check_stalled)

    def _stop_watching(self) -> None:
        if (not self._pull_later and not self._turn_waiters
                and self._stall_check is not None):
            self._stall_check.cancel()      # nothing left to start
            self._stall_check = None

    def stop(self) -> None:
        """The replica stops: pulls put aside or waiting for their turn never begin
        (the store is about to close; one resumed by a stream that the stop broke would
        have begun an import on it), and no stall check is left in the reactor."""
        self._pull_later.clear()
        self._turn_waiters.clear()
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None

    @property
    def pulling(self) -> bool:
        return bool(self._pulls)

    def when_idle(self) -> defer.Deferred[None]:
        """Fires once no pull runs (at once if none does)."""
        if not self._pulls:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _pull_next(self, stalled: bool = False) -> None:
        """No pull runs (or those under way stall): the first peer put aside by
        pull_when_free is pulled from; the others wait for that pull in turn.  Begun
        because the others stall, it streams beside them without waiting its turn."""
        peer_id = min(self._pull_later)
        self._pull_later.discard(peer_id)
        self.sync_from(peer_id, in_turn=not stalled)

    def sync_from(self, peer_id: int, full: bool = False,
                  ping_timeout_s: float | None = None,
                  fresh: bool = False, in_turn: bool = False,
                  ping_first: bool = True) -> defer.Deferred[bool]:
        """Pull what peer_id has and this replica lacks (``full``: a full copy whatever
        the clocks say); concurrent pulls share one.  ``ping_timeout_s``: how long the
        pull's first PING may wait (default ping_timeout); a caller that may wait longer
        than the pull under way still waits for its PING begins its own (a session's
        catch-up from its last server would fail with anti-entropy's 0.2 s).

        ``fresh``: a pull that begins now, beside any already running (imports are
        staged apart and merge idempotently), which later callers share.  A take-over
        needs all the peer took until it accepted the epoch, which a pull begun before
        may lack; and waiting for that one cost a take-over 5 s when the peer froze
        in the middle of its stream (STREAM_IDLE_TIMEOUT_S; chaos seed 43).

        ``in_turn`` (a take-over's, anti-entropy's, a follower's CATCHUP): once the
        peer's PING shows what it holds, the pull waits while another streams, then
        asks only for what is still missing.  A take-over pulls from every peer that
        accepts its epoch, and they mostly hold the same writes: side by side, each
        sent all of them (a bully-back's "pulled delta from replica 1: 288 records, 0
        applied", 14 ms of its 36).  It waits only while the pulls under way progress:
        after ping_timeout without a record or a merged step, it streams beside them
        (``_check_stalled``).  A session's catch-up and a joining copy do not wait (a
        client, or the first copy of a history, waits on them).

        ``ping_first=False`` (a session's catch-up from its last server, which holds
        what it needs): a delta is asked for at once, without the PING that tells what
        the peer holds, which would cost a round trip more (on a slow link the one
        that does not fit in fetch_timeout)."""
        running = self._pulls.get(peer_id)
        patience = self.timers.ping_timeout if ping_timeout_s is None else ping_timeout_s
        if running is not None and self._first_pings[peer_id].gives_up_before(patience):
            fresh = True    # it would give up on the peer sooner than this caller may wait
        if running is None or fresh:
            running = self._start_pull(peer_id, full, patience, in_turn, ping_first)
        elif not in_turn:
            self._turn_now(peer_id)     # a caller that may not wait: it streams now
        # Each caller gets its own Deferred, so one caller's timeout cannot cancel the
        # pull that others wait on.  _sync_from never fails: it answers True/False.
        mine: defer.Deferred[bool] = defer.Deferred()

        def relay(result):
            if not mine.called:
                mine.callback(result)
            return result

        running.addBoth(relay)
        return mine

    def _start_pull(self, peer_id: int, full: bool, patience: float,
                    in_turn: bool = False, ping_first: bool = True) -> defer.Deferred[bool]:
        self._progress += 1
        first_ping = self._first_pings[peer_id] = _FirstPing(patience, ping_first)
        pull = defer.ensureDeferred(self._sync_from(peer_id, full, first_ping, in_turn))
        self._pulls[peer_id] = pull

        def done(result):
            if self._pulls.get(peer_id) is pull:    # not a fresh one begun since
                del self._pulls[peer_id]
                del self._first_pings[peer_id]
            if not self._pulls and self._pull_later:
                self._pull_next()
            self._stop_watching()
            if not self._pulls and self._idle_waiters:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        pull.addBoth(done)
        return pull

    async def _sync_from(self, peer_id: int, force_full: bool, first_ping: _FirstPing,
                         in_turn: bool = False) -> bool:
        try:
            if not first_ping.waiting:      # no PING: a delta from this replica's clock
                await self._take_turn(peer_id, wait=False)
                try:
                    return await self._pull(peer_id, False, self.store.clock, None)
                finally:
                    self._turn_over()
            try:
                status = await self.ping(peer_id, first_ping.patience)
            finally:
                first_ping.waiting = False
            self.peer_clocks[peer_id] = status.clock
            if not force_full and not status.clock.missing_from(self.store.clock):
                return True
            await self._take_turn(peer_id, wait=in_turn)
            try:
                have = self.store.clock     # with what the pulls it waited for brought
                missing = status.clock.missing_from(have)
                if not missing and not force_full:
                    return True
                behind = sum(status.clock[o] - have[o] for o in missing)
                full = force_full or (have == VectorClock() and self.store.count() == 0) or (
                    behind >= self.config.full_copy_ratio * status.clock.total()
                )
                pulled = await self._pull(peer_id, full, have, behind)
            finally:
                self._turn_over()
        except (PeerUnavailable, PeerWireError, StaleEpoch, ImportAborted) as e:
            self.log.debug("pull from replica {peer} failed: {error}", peer=peer_id, error=e)
            return False
        except Exception as e:
            if not disk_full(e):
                self.log.failure("pull from replica {peer} failed", peer=peer_id)
            elif self.disk_full_seen is not None:   # nothing of the failing step was applied
                self.disk_full_seen(e)
            return False
        return pulled

    def _take_turn(self, peer_id: int, wait: bool) -> defer.Deferred[None]:
        """Count a pull that streams now; with ``wait``, once no other streams (or
        those that do stall)."""
        if not wait or self._streaming == 0:
            self._streaming += 1
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._turn_waiters.append((peer_id, waiter))
        self._watch_for_stall()
        return waiter

    def _give_turn(self) -> None:
        self._streaming += 1
        self._turn_waiters.popleft()[1].callback(None)

    def _turn_now(self, peer_id: int) -> None:
        """A session's catch-up shares the pull from ``peer_id`` that waits its turn
        (anti-entropy's, begun a moment before): that pull streams now, as the
        catch-up's own would have."""
        waiting = [waiter for peer, waiter in self._turn_waiters if peer == peer_id]
        if not waiting:
            return
        self._turn_waiters = deque(w for w in self._turn_waiters if w[0] != peer_id)
        self._streaming += len(waiting)
        self._stop_watching()
        for waiter in waiting:
            waiter.callback(None)

    def _turn_over(self) -> None:
        self._streaming -= 1
        if self._streaming == 0 and self._turn_waiters:
            self._give_turn()
        self._stop_watching()

    async def _pull(self, peer_id: int, full: bool, have: VectorClock,
                    behind: int | None) -> bool:
        await self._import_slots.acquire()
        try:
            return await self._pull_in_slot(peer_id, full, have, behind)
        finally:
            self._import_slots.release()

    async def _pull_in_slot(self, peer_id: int, full: bool, have: VectorClock,
                            behind: int | None) -> bool:
        """``behind``: how many writes the peer's PING showed missing (None: asked for
        without a PING)."""
        kind = "FULL" if full else "DELTA"
        started = self.reactor.seconds()
        importer = self.store.begin_import()
        received = 0

        def on_line(frame_kind: str, text: str) -> None:
            nonlocal received
            if frame_kind == "REQ":
                importer.add_request(peerwire.decode_request_row(text))
                return
            importer.add(peerwire.decode_record(text))
            received += 1
            self._progress += 1

        message: Message = (peerwire.Full(self.epoch()) if full
                            else peerwire.Delta(self.epoch(), have))
        try:
            response = await self.call(peer_id, message, STREAM_IDLE_TIMEOUT_S, on_line)
            if response.kind != "END":
                raise PeerWireError(f"{kind} answered {response.kind} {response.payload[:60]}")
            clock_text, _, cluster_text = response.payload.partition(" ")
            source_cluster = peerwire.parse_cluster_id(cluster_text or "-")
            mine = self.store.cluster_id
            if None not in (mine, source_cluster) and mine != source_cluster:
                raise PeerWireError(f"replica {peer_id} holds cluster {source_cluster}, "
                                    f"not this replica's {mine}")
            result, steps, longest_s = await self._finish(importer,
                                                          peerwire.decode_clock(clock_text))
        except BaseException:
            importer.abort()
            raise
        if self.after_import is not None:
            try:
                self.after_import()
            except Exception:
                self.log.failure("after importing from replica {peer}", peer=peer_id)
        self.log.info(
            "pulled {kind} from replica {peer}: {received} records, {applied} applied, "
            "{conflicts} conflicts, {how_far}, {ms:.0f} ms (merged in {steps} "
            "step(s), the longest {step_ms:.0f} ms); clock {clock}",
            kind=kind.lower(), peer=peer_id, received=received, applied=result.applied,
            conflicts=result.conflicts, behind=behind,
            how_far="asked without a PING" if behind is None else f"{behind} writes behind",
            ms=(self.reactor.seconds() - started) * 1000, steps=steps,
            step_ms=longest_s * 1000, clock=self.store.clock.encode(),
        )
        if result.conflicts:
            self.log.warn(
                "{n} concurrent versions resolved while pulling from replica {peer}: {keys}",
                n=result.conflicts, peer=peer_id, keys=" ".join(result.conflict_keys),
            )
        return True

    async def _finish(self, importer: Importer,
                      clock: VectorClock) -> tuple[ApplyResult, int, float]:
        """The import's finish, one step per reactor turn (``Importer.finish_steps``):
        its result, how many steps it took and the longest (seconds, for the log)."""
        steps = importer.finish_steps(clock)
        count, longest = 0, 0.0
        try:
            while True:
                began = self.reactor.seconds()
                count += 1
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value, count, max(longest, self.reactor.seconds() - began)
                self._progress += 1
                longest = max(longest, self.reactor.seconds() - began)
                await task.deferLater(self.reactor, 0, lambda: None)
        finally:
            steps.close()       # stopped between steps: the staging is dropped

    async def catch_up(self, need: VectorClock, via: int | None) -> bool:
        """Fetch the writes a session depends on, within fetch_timeout: from its last
        server (it served them), and, while that has not brought them after
        ping_timeout, from any other peer whose clock shows them, one after another;
        whichever brings them first.  The last server is asked for its delta at once,
        without a PING first, and may take the whole fetch_timeout to send it: a holder
        whose messages take longer than ping_timeout (a slow link or a loaded machine)
        still answers in time, where its PING used to give up at 0.2 s and the session
        got ERR STALE although its writes were on their way (chaos seed 106)."""
        fetch_s = self.timers.fetch_timeout
        deadline = self.reactor.seconds() + fetch_s
        epoch = self.epoch()

        def settled() -> bool:
            """The writes are in, or a newer epoch was met (a STALE answer): this
            replica stepped down, and the request goes to its successor."""
            return need <= self.store.clock or self.epoch() != epoch

        late = False
        holder = None
        if via in self.peers:
            holder = self.sync_from(via, ping_timeout_s=fetch_s, ping_first=False)
            others_at = min(self.reactor.seconds() + self.timers.ping_timeout, deadline)
            late = await self._first_of([holder], others_at) and others_at == deadline
        for peer_id in reversed(self.peers):
            if late or settled() or self.reactor.seconds() >= deadline:
                break
            if peer_id == via:
                continue
            pull = self.sync_from(peer_id)
            while not (late or pull.called or settled()):
                late = await self._first_of([holder, pull], deadline)
        while not (late or holder is None or holder.called or settled()):
            late = await self._first_of([holder], deadline)
        return need <= self.store.clock

    def _first_of(self, pulls: list[defer.Deferred | None],
                  deadline: float) -> defer.Deferred[bool]:
        """Fires once any of the pulls still under way ends (False), or at the deadline
        (True); the pulls go on (others may share them)."""
        done: defer.Deferred[bool] = defer.Deferred()
        under_way = [pull for pull in pulls if pull is not None and not pull.called]
        if not under_way:
            done.callback(False)
            return done
        timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()),
                                       lambda: done.called or done.callback(True))

        def ended(result):
            if not done.called:
                timer.cancel()
                done.callback(False)
            return result

        for pull in under_way:
            pull.addBoth(ended)
        return done

    # Pushes ----------------------------------------------------------------------------

    def replicate(self, record: Record, epoch: int,
                  refused: Callable[[int], None] = lambda peer_id: None,
                  done: Callable[[bool], None] | None = None) -> defer.Deferred[bool] | None:
        """Push a durable write of ``epoch`` to every peer; fire True once write_quorum
        replicas have it on disk, False if they do not in time (or tell ``done`` that,
        with no Deferred: the coordinator's write path).  The writes of one reactor
        turn go out together, one PUSH per link (batched replication), and each batch's
        answer counts for every write in it.  A follower that does not follow this
        epoch answers NO: it is no ack, and ``refused(peer_id)`` is told."""
        pending = _Pending(record, self.config.write_quorum - 1, len(self.peers), done)
        if not self._batches:
            self.reactor.callLater(0, self.send_batches)
        self._batches.setdefault(epoch, []).append(pending)
        self._refused = refused
        if pending.needed > 0:
            pending.settle()
        return pending.result

    def send_batches(self) -> None:
        """Push the writes replicated so far (at the latest on the next turn; the group
        commit calls it at once, so a batch leaves in the turn it became durable)."""
        batches, self._batches = self._batches, {}
        if not batches:
            return
        refused = self._refused
        quorum_one: list[_Pending] = []
        for epoch, items in batches.items():
            quorum_one += [p for p in items if p.needed == 0]
            waiting = [p for p in items if p.needed > 0 and not p.settled]
            if waiting:
                _QuorumTimer(waiting, self.timers.quorum_timeout, self.reactor)
            for chunk, texts in self._chunks(items):
                message = peerwire.Push(epoch, tuple(p.record for p in chunk),
                                        peerwire.join_batch(texts))
                for peer_id in self.peers:
                    d = self.call(peer_id, message, self.timers.quorum_timeout)
                    d.addCallbacks(self._acked, self._push_failed,
                                   callbackArgs=(peer_id, chunk, refused),
                                   errbackArgs=(peer_id, chunk))
        # write_quorum = 1: acknowledged once the pushes are handed to the links (a
        # connected link wrote its push just now, ahead of these replies; one still
        # connecting sends it when it is up), so a crash right after the OK is less
        # likely to take the only copy with it.  Only a quorum of 2 or more makes that
        # a guarantee.
        for pending in quorum_one:
            pending.settle(force=True)

    def _chunks(self, items: list[_Pending]):
        """Batches that fit a peer line (the receiver's limit), each with its records
        encoded once for every peer."""
        limit = self.config.limits.max_line_bytes
        chunk: list[_Pending] = []
        texts: list[str] = []
        size = 0
        for pending in items:
            text = peerwire.encode_record(pending.record)
            length = len(text.encode("utf-8")) + 24
            if chunk and size + length > limit:
                yield chunk, texts
                chunk, texts, size = [], [], 0
            chunk.append(pending)
            texts.append(text)
            size += length
        if chunk:
            yield chunk, texts

    def _acked(self, response, peer_id: int, chunk: list[_Pending],
               refused: Callable[[int], None]) -> None:
        if peer_id in self._full_peers and response.kind == "OK":
            self._full_peers.discard(peer_id)
            self.log.info("replica {peer} stores pushed writes again", peer=peer_id)
        if response.kind == "NO":
            refused(peer_id)
        # One outcome per record; "lost" (it lost a merge there) is no acknowledgement.
        outcomes = response.payload.split(",") if response.kind == "OK" else []
        for n, pending in enumerate(chunk):
            pending.answered(response.kind == "OK"
                             and (outcomes[n] if n < len(outcomes) else "") != "lost")

    def _push_failed(self, failure, peer_id: int, chunk: list[_Pending]) -> None:
        if failure.check(PeerUnavailable):
            self.mark(peer_id, False)
        elif failure.check(ErrorAnswer) and failure.value.code == Code.NOSPACE:
            if peer_id not in self._full_peers:     # said once, until it acks again
                self._full_peers.add(peer_id)
                self.log.warn("replica {peer} cannot store pushed writes: {error}; it "
                              "pulls them once space is freed", peer=peer_id,
                              error=failure.value)
        elif not failure.check(StaleEpoch):
            self.log.failure("push to replica {peer} failed", failure, peer=peer_id)
        for pending in chunk:
            pending.answered(False)


class _QuorumTimer:
    """The one timer of the quorum writes pushed together: a write that has not heard
    from enough replicas when it fires is settled as missed.  (A timer per write cost a
    DelayedCall and addTimeout's callbacks on every write.)  Cancelled once every write
    of the batch is settled, so settled batches leave nothing in the reactor's heap."""

    def __init__(self, waiting: list[_Pending], timeout_s: float, clock):
        self._unsettled = len(waiting)
        for pending in waiting:
            pending.timer = self
        self._call = clock.callLater(timeout_s, self._expire, waiting)

    def settled(self) -> None:
        self._unsettled -= 1
        if self._unsettled == 0 and self._call.active():
            self._call.cancel()

    def _expire(self, waiting: list[_Pending]) -> None:
        for pending in waiting:
            pending.settle(force=True)


class _Pending:
    """One write waiting for its quorum: acks counted from the batches it went in."""

    timer: _QuorumTimer | None = None

    def __init__(self, record: Record, needed: int, peers: int,
                 done: Callable[[bool], None] | None = None):
        self.record = record
        self.needed = needed          # acks needed besides the coordinator's own copy
        self.outstanding = peers
        self.acks = 0
        self.settled = False
        self.done = done              # told the outcome; else the result fires with it
        self.result: defer.Deferred[bool] | None = (
            defer.Deferred() if done is None else None)

    def answered(self, ack: bool) -> None:
        self.outstanding -= 1
        self.acks += ack
        if self.needed > 0:
            self.settle()

    def settle(self, force: bool = False) -> None:
        if self.settled:
            return
        if force or self.acks >= self.needed or self.outstanding == 0:
            self.settled = True
            if self.timer is not None:
                self.timer.settled()
            if self.done is not None:
                self.done(self.acks >= self.needed)
            else:
                self.result.callback(self.acks >= self.needed)
