"""One request a follower forwarded to its coordinator, while it waits (replica.py).

A plain object rather than a chain of Deferreds: forwarding is a follower's whole work
for most requests, and the chain this replaced (the peer call's Deferred, the link's
errback, the answer check, a second Deferred racing the coordinator being declared dead,
the retry's errback) was about a quarter of a forwarding follower's CPU.  The peer call
reports to ``answered``; the outcome goes to the one Deferred a caller waits on, or,
on the client protocol's own path, to a callable with no Deferred at all.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from replicad.peer import PeerResponse, PeerUnavailable
from replicad.sync import StaleEpoch

#: (the coordinator's final frame or None, the call's error or None) -> the reply;
#: raises what the forward failed with.
Interpret = Callable[[PeerResponse | None, Exception | None], object]
#: After a failure worth another try (StaleEpoch, PeerUnavailable): the reply, later.
Retry = Callable[[Exception], defer.Deferred]
#: Told the outcome instead of a Deferred: the reply, or a Failure.
Deliver = Callable[[object], None]

log = Logger()


class Forward:
    """Settled once, by whichever comes first: the coordinator's answer (or the call's
    failure), or ``dead()``: the coordinator was declared dead, so stop waiting (a hung
    coordinator then costs a ping interval, not the forward timeout).

    The outcome goes to ``result`` (a Deferred), or, given ``deliver``, to that callable
    with no Deferred at all: the client protocol's own path (Replica.handle)."""

    __slots__ = ("result", "settled", "_interpret", "_retry", "_leave", "_call", "_deliver")

    def __init__(self, interpret: Interpret, leave: Callable[[Forward], None],
                 retry: Retry | None = None, deliver: Deliver | None = None):
        self.result: defer.Deferred | None = defer.Deferred() if deliver is None else None
        self.settled = False
        self._interpret = interpret
        self._leave = leave          # take it off the replica's list of forwards
        self._retry = retry          # None: the failure is the result's
        self._call = None            # (protocol, call id), or the call's Deferred
        self._deliver = deliver

    def sent(self, call) -> None:
        """The call to forget (PeerClientProtocol.forget) or cancel if it dies."""
        self._call = call

    def answered(self, response: PeerResponse | None, error: Exception | None) -> None:
        if self.settled:
            return
        self.settled = True
        self._leave(self)
        try:
            reply = self._interpret(response, error)
        except (StaleEpoch, PeerUnavailable) as e:
            if self._retry is None:
                self._tell(Failure(e))
            elif self._deliver is not None:
                self._retry(e).addBoth(self._tell)
            else:
                self._retry(e).chainDeferred(self.result)
            return
        except Exception:
            self._tell(Failure())
            return
        self._tell(reply)

    def _tell(self, outcome: object) -> None:
        """The reply or a Failure, to the Deferred or to ``deliver``.  What ``deliver``
        raises is logged here: it must not reach the peer link that reported."""
        if self._deliver is None:
            if isinstance(outcome, Failure):
                self.result.errback(outcome)
            else:
                self.result.callback(outcome)
            return
        try:
            self._deliver(outcome)
        except Exception:
            log.failure("telling a forward's outcome")

    def dead(self, error: PeerUnavailable) -> None:
        """Its coordinator was declared dead: fail with ``error`` and drop the call."""
        if self.settled:
            return
        self.answered(None, error)
        call = self._call
        if isinstance(call, defer.Deferred):
            call.cancel()             # its late errback finds this forward settled
        elif call is not None:
            proto, rid = call
            proto.forget(rid)
