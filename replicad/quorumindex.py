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
still waiting for its quorum (Raft's commit index, for this replica's origin): a read
of a key whose latest write waits is held until that write's quorum is decided, and
every reply's clock is cut at that point.  A write whose quorum was missed (``ERR
QUORUM``: in doubt) counts as decided: its client was told the outcome is unknown, and
a coordinator that cannot reach a majority stops serving within its lease.

Pure: no I/O and no clock; the replica says when a write starts to wait and when its
quorum is decided.
"""

from __future__ import annotations

import heapq

from twisted.internet import defer

from replicad.vclock import VectorClock


class QuorumIndex:
    """The sequence numbers of this coordinator's writes still waiting for their quorum."""

    def __init__(self) -> None:
        self._waiting: list[int] = []      # a heap: the lowest waiting seq on top
        self._decided: set[int] = set()    # decided out of order, still in the heap
        self._watchers: list[defer.Deferred[None]] = []

    @property
    def quiet(self) -> bool:
        """No write waits: every read may show everything this replica holds."""
        return not self._waiting

    def waiting(self, seq: int) -> None:
        """Write ``seq`` (this replica's origin) is durable here and waits for its quorum."""
        heapq.heappush(self._waiting, seq)

    def decided(self, seq: int) -> None:
        """Write ``seq`` has its quorum, or missed it (in doubt)."""
        heap = self._waiting
        if not heap:
            return
        if heap[0] != seq:
            self._decided.add(seq)
            return
        heapq.heappop(heap)
        while heap and heap[0] in self._decided:
            self._decided.discard(heapq.heappop(heap))
        self._wake()

    def shows(self, seq: int) -> bool:
        """A read may show this replica's write ``seq``."""
        return not self._waiting or seq < self._waiting[0]

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
