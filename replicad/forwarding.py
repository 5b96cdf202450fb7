"""One request a follower forwarded to its coordinator, while it waits (replica.py).

A plain object rather than a chain of Deferreds: forwarding is a follower's whole work
for most requests, and the chain this replaced (the peer call's Deferred, the link's
errback, the answer check, a second Deferred racing the coordinator being declared dead,
the retry's errback) was about a quarter of a forwarding follower's CPU.  The peer call
reports to ``answered``; the one Deferred left is the one the client protocol waits on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from replicad.peer import PeerResponse, PeerUnavailable
from replicad.sync import StaleEpoch

#: (the coordinator's final frame or None, the call's error or None) -> the reply;
#: raises what the forward failed with.
Interpret = Callable[[PeerResponse | None, Exception | None], object]
#: After a failure worth another try (StaleEpoch, PeerUnavailable): the reply, later.
Retry = Callable[[Exception], defer.Deferred]


class Forward:
    """Settled once, by whichever comes first: the coordinator's answer (or the call's
    failure), or ``dead()``: the coordinator was declared dead, so stop waiting (a hung
    coordinator then costs a ping interval, not the forward timeout)."""

    __slots__ = ("result", "settled", "read", "_interpret", "_retry", "_leave", "_call")

    def __init__(self, interpret: Interpret, leave: Callable[[Forward], None],
                 retry: Retry | None = None, read: bool = False):
        self.result: defer.Deferred = defer.Deferred()
        self.settled = False
        self.read = read             # a read: it may be asked again elsewhere (moved)
        self._interpret = interpret
        self._leave = leave          # take it off the replica's list of forwards
        self._retry = retry          # None: the failure is the result's
        self._call = None            # (protocol, call id), or the call's Deferred

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
                self.result.errback(e)
            else:
                self._retry(e).chainDeferred(self.result)
            return
        except Exception:
            self.result.errback()
            return
        self.result.callback(reply)

    def dead(self, error: PeerUnavailable | StaleEpoch) -> None:
        """Its coordinator was declared dead (PeerUnavailable), or a read's follower
        moved on to another coordinator (StaleEpoch: ask that one): fail with
        ``error`` and drop the call."""
        if self.settled:
            return
        self.answered(None, error)
        call = self._call
        if isinstance(call, defer.Deferred):
            call.cancel()             # its late errback finds this forward settled
        elif call is not None:
            proto, rid = call
            proto.forget(rid)
