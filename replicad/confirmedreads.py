"""Confirmed reads: a follower answers a read itself once its coordinator has told it,
after the read arrived, which writes it had made durable.

This is Raft's ReadIndex with a vector clock for the index.  Forwarding a read costs
the follower a peer frame out and one back per request and the coordinator the whole
request; here the reads a follower takes in one reactor turn share one ``READINDEX``
call, and each is answered from the follower's own store once that store holds every
write of the clock the coordinator answered.  The answer is then what the coordinator
itself would have answered at some moment after the read arrived (it reflects every
write acknowledged before that moment, in either quorum mode), so a read is exactly as
fresh as a forwarded one; the coordinator still decides, it only no longer serves.

This module is the batching alone, with no I/O: ``ask`` sends the call, and
``answer(clock, batch)`` decides what the clock lets the reads of the batch do
(replica.py, ``answer_confirmed``): once per batch, not per read.
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
