"""What a read may show in quorum mode: the coordinator's writes whose quorum is decided.

A write waiting for its quorum is on the coordinator's disk and perhaps nowhere else.
If the coordinator is cut off or dies now, the majority side never sees it, and a read
that showed it (its value, or only its dot in the reply's clock, which the session then
requires of every replica it asks) leaves that session asking the majority side for a
write it will never get: ``ERR STALE`` everywhere until the old coordinator is back
(chaos seed 21: a session read one key while another client's write waited, the
coordinator was cut off, and the session was refused by the side that served everyone
else; docs/reliability.md).

So in quorum mode a read shows the coordinator's own writes only up to the first one
still waiting for its quorum (Raft's commit index, for this replica's origin), or up to
what the reader's session already holds, if more.  A key whose latest write waits is
read as it was before that write: the index keeps, for each such key, the record it
held before its first waiting write and every write since (``versions``; as many as
there are writes in flight), so a read never waits for a quorum (a read that waited
could starve on a key written without pause).  Every reply's clock is cut at the same
point.  A write whose quorum was missed (``ERR QUORUM``: in doubt) counts as decided:
its client was told the outcome is unknown, and a coordinator that cannot reach a
majority stops serving within its lease.

Pure: no I/O and no clock; the replica says when a write starts to wait and when its
quorum is decided.
"""

from __future__ import annotations

import heapq
from typing import Any

from twisted.internet import defer

from replicad.vclock import VectorClock


class QuorumIndex:
    """The sequence numbers of this coordinator's writes still waiting for their quorum."""

    def __init__(self) -> None:
        self._waiting: list[int] = []      # a heap: the lowest waiting seq on top
        self._decided: set[int] = set()    # decided out of order, still in the heap
        self._watchers: list[defer.Deferred[None]] = []
        # key -> [its record before its first waiting write (None: absent), then each
        # write to it since], and the key of each waiting write: only while one waits.
        self._versions: dict[str, list[Any]] = {}
        # The key of each waiting write (None: a no-op marker's, whose versions are not
        # kept): also what says, in O(1), whether a write still waits.
        self._key_of: dict[int, str | None] = {}

    @property
    def quiet(self) -> bool:
        """No write waits: every read may show everything this replica holds."""
        return not self._waiting

    def waiting(self, seq: int, key: str | None = None, before: Any = None,
                record: Any = None) -> None:
        """Write ``seq`` (this replica's origin) is durable here and waits for its quorum;
        with ``key``: it made ``record`` of the key's record ``before``."""
        heapq.heappush(self._waiting, seq)
        self._key_of[seq] = key
        if key is None:
            return
        versions = self._versions.get(key)
        if versions is None:
            self._versions[key] = [before, record]
        else:
            versions.append(record)

    def decided(self, seq: int) -> None:
        """Write ``seq`` has its quorum, or missed it (in doubt).  Quorums are mostly
        decided in the order the writes were made: then ``seq`` is on top of the heap
        and is popped at once, without passing through ``_decided``."""
        if seq not in self._key_of:
            return
        if self._waiting[0] != seq:
            self._decided.add(seq)      # an earlier write still waits
            return
        heapq.heappop(self._waiting)
        self._passed([seq])

    def _advance(self) -> None:
        """Pop the decided writes off the top; forget the versions they passed."""
        self._passed([])

    def _passed(self, passed: list[int]) -> None:
        """``passed`` (popped already) and every decided write now on top are shown."""
        heap, decided = self._waiting, self._decided
        while decided and heap and heap[0] in decided:
            decided.discard(heap[0])
            passed.append(heapq.heappop(heap))
        if not passed:
            return
        key_of = self._key_of
        for done in passed:
            key = key_of.pop(done, None)
            if key is not None:
                self._forget(key)
        if self._watchers:
            self._wake()

    def withdraw(self, seq: int) -> None:
        """Write ``seq`` is not in the store after all (its group's COMMIT failed, and
        the next write may take its number): forget it, as if never written."""
        if seq not in self._key_of:
            return
        self._waiting.remove(seq)
        heapq.heapify(self._waiting)
        self._decided.discard(seq)
        key = self._key_of.pop(seq, None)
        if key is not None:
            versions = self._versions[key]
            versions[:] = [v for v in versions if v is None or v.seq != seq or v is versions[0]]
            if len(versions) == 1:
                del self._versions[key]
        self._advance()
        self._wake()

    def shows(self, seq: int) -> bool:
        """A read may show this replica's write ``seq``."""
        return not self._waiting or seq < self._waiting[0]

    def shown(self, key: str, current: Any, origin: int, holds: int = 0) -> Any:
        """The record a read of ``key`` shows, ``current`` being the store's: the newest
        of its versions that is not one of this replica's (``origin``) writes from the
        first still waiting on, unless the reader's session ``holds`` it already."""
        if not self._waiting or current is None or current.origin != origin:
            return current
        bound = max(self._waiting[0] - 1, holds)
        versions = self._versions.get(key)
        if current.seq <= bound or versions is None:
            return current
        for record in reversed(versions):
            if record is None or record.origin != origin or record.seq <= bound:
                return record
        return versions[0]

    def keys_written(self) -> list[str]:
        """The keys with a version kept (a write to each waits or is not shown yet)."""
        return list(self._versions)

    def _forget(self, key: str) -> None:
        """Drop the versions of ``key`` that a newer shown one replaces; the key itself
        once its newest is shown (the store's record is then what a read shows).  The
        first version is shown by construction (nothing of the key waited when it was
        kept); the others are this replica's writes."""
        versions = self._versions.get(key)
        if versions is None:
            return
        keep_from = len(versions) - 1
        if self._waiting:
            bound = self._waiting[0] - 1
            while keep_from > 0 and versions[keep_from].seq > bound:
                keep_from -= 1
        del versions[:keep_from]
        if len(versions) == 1:
            del self._versions[key]

    def cap(self, clock: VectorClock, origin: int) -> VectorClock:
        """``clock`` without this replica's writes from the first one still waiting."""
        if not self._waiting:
            return clock
        return clock.capped(origin, self._waiting[0] - 1)

    def advanced(self) -> defer.Deferred[None]:
        """Fires when the next waiting write is decided (or ``release``)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._watchers.append(d)
        return d

    def release(self) -> None:
        """Wake every watcher (the replica stops serving: they decide again)."""
        self._wake()

    def _wake(self) -> None:
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            d.callback(None)
