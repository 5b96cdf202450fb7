"""Confirmed reads: a follower answers a read itself once its coordinator has told it,
after the read arrived, which writes it had made durable.

This is Raft's ReadIndex with a vector clock for the index.  Forwarding a read costs
the follower a peer frame out and one back per request and the coordinator the whole
request; here the reads that arrive while no call is in flight share one ``READINDEX``
call (``ReadConfirmations``), and each is answered from the follower's own store once
that store holds every write of the clock the coordinator answered, at once or when
the push of what it lacks arrives (``AwaitingWrites``).  The answer is then what the
coordinator itself would have answered at some moment after the read arrived (it
reflects every write acknowledged before that moment, in either quorum mode), so a read
is exactly as fresh as a forwarded one; the coordinator still decides, it only no
longer serves.

This module is the batching and the waiting alone, with no I/O and the clock injected:
``ask`` sends the call, and ``answer(confirmation, batch)`` decides what it lets the
reads of the batch do (replica.py, ``_answer_confirmed``): once per batch, not per
read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

# Given what ``ask`` fired with (the confirmation: who answered and its durable clock),
# or None: not confirmed (the coordinator no longer serves, the call failed or timed
# out; the reads then take the forwarding path), and the reads the call covers, as
# confirm() was given them.
Answer = Callable[[Any | None, list[Any]], None]


class ReadConfirmations:
    """At most one confirmation in flight, shared by every read that arrived before it
    was sent.

    A read must be confirmed by a call *sent after it arrived* (else a write acknowledged
    between the call and the read could be missed), so a read that arrives while a call
    is in flight waits for the next one, which is sent as soon as that call is answered
    (or at the end of the turn, if none is in flight).  Under load each call then covers
    every read of a round trip, not of one turn: fewer calls for the coordinator to
    answer and for the follower to make."""

    log = Logger()

    def __init__(self, clock: IReactorTime,
                 ask: Callable[[], defer.Deferred[Any | None]], answer: Answer):
        self._clock = clock
        self._ask = ask
        self._answer = answer
        self._waiting: list[Any] = []
        self._call = None            # the end-of-turn send, when scheduled
        self._in_flight = False
        self.asked = 0               # calls sent: for tests and metrics
        # What became of the reads (the replica counts them): for /metrics.
        self.outcomes = {"answered": 0, "waited": 0, "forwarded": 0}

    def confirm(self, read: Any) -> None:
        """``read`` is answered (``answer(confirmation, [..., read, ...])``) once a
        confirmation asked for after this call is answered."""
        self._waiting.append(read)
        if self._call is None and not self._in_flight:
            self._call = self._clock.callLater(0, self._send)

    def _send(self) -> None:
        self._call = None
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        self.asked += 1
        self._in_flight = True
        try:
            d = self._ask()
        except Exception:
            self.log.failure("asking the coordinator to confirm {n} reads", n=len(batch))
            d = defer.succeed(None)
        d.addErrback(lambda failure: None)      # any failure: not confirmed
        d.addCallback(self._answered, batch)

    def _answered(self, confirmation: Any | None, batch: list[Any]) -> None:
        self._in_flight = False
        self._tell(confirmation, batch)
        if self._waiting and self._call is None:
            self._send()                # they arrived before now: ask for them at once

    def _tell(self, confirmation: Any | None, batch: list[Any]) -> None:
        try:
            self._answer(confirmation, batch)
        except Exception:
            self.log.failure("answering {n} confirmed reads", n=len(batch))

    def cancel(self) -> None:
        """Stop (the replica stops): reads still waiting are not confirmed."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        batch, self._waiting = self._waiting, []
        self._tell(None, batch)


class AwaitingWrites:
    """Confirmed reads whose confirmation named writes this follower does not hold yet.

    The coordinator confirms what it has committed, and pushes it in the same turn; the
    push travels on another connection than the confirmation, so under writes a read
    is often confirmed a moment before the writes it must see arrive.  Forwarding it
    then would cost the confirmation and the forward; it waits instead, is answered by
    the first commit that brings what it needs (``recheck``, after each of this
    follower's commits), and is given up (forwarded) if none does within ``wait_s``."""

    log = Logger()

    def __init__(self, clock: IReactorTime, wait_s: float,
                 covered: Callable[[Any], bool], answer: Callable[[Any, Any], None],
                 give_up: Callable[[Any], None]):
        self._clock = clock
        self._wait_s = wait_s
        self._covered = covered
        self._answer = answer
        self._give_up = give_up
        self._reads: list[tuple[float, Any, Any]] = []   # (deadline, need, read)
        self._timer = None

    def __len__(self) -> int:
        return len(self._reads)

    def add(self, need: Any, read: Any) -> None:
        """``answer(read, need)`` once ``covered(need)``; ``give_up(read)`` after
        ``wait_s``."""
        self._reads.append((self._clock.seconds() + self._wait_s, need, read))
        if self._timer is None:
            self._timer = self._clock.callLater(self._wait_s, self._expire)

    def recheck(self) -> None:
        """Answer the reads whose needs are covered now (the others keep waiting).  A
        read added while they are answered (a reply lets its connection's next line in)
        is kept, after them: the list stays in deadline order."""
        if not self._reads:
            return
        reads, self._reads = self._reads, []
        waiting = []
        for entry in reads:
            if self._covered(entry[1]):
                self._run(self._answer, entry[2], entry[1])
            else:
                waiting.append(entry)
        self._reads = waiting + self._reads

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        late = [entry for entry in self._reads if entry[0] <= now]
        self._reads = [entry for entry in self._reads if entry[0] > now]
        for entry in late:
            self._run(self._give_up, entry[2])
        self._stop_timer()           # add() armed one meanwhile: the earliest comes first
        if self._reads:
            self._timer = self._clock.callLater(max(0.0, self._reads[0][0] - now),
                                                self._expire)

    def cancel(self) -> None:
        """Stop (the replica stops, or no longer follows): give every read up now."""
        self._stop_timer()
        reads, self._reads = self._reads, []
        for entry in reads:
            self._run(self._give_up, entry[2])

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _run(self, what: Callable[..., None], *args: Any) -> None:
        try:
            what(*args)
        except Exception:
            self.log.failure("answering a confirmed read")
