"""The "replica N is up / down" log lines, at most one per peer per interval.

A replica logs each change of a peer link's state, which is what an operator wants
from a peer that crashes or comes back.  A link can also flap: a follower that reads,
only slower than the coordinator writes under a load of big values, has its pushes
fail as congested, catches up by a delta and is reachable again, many times a second
(hundreds of lines a run in the frozen-receiver test).  Here the first change of an
interval is logged at once; the changes after it are counted and told in one line when
the interval ends, with the state the link is in then.  Pure: a logger and a clock are
passed in.
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

LINK_LOG_INTERVAL_S = 10.0


class LinkStateLog:
    def __init__(self, log: Logger, clock: IReactorTime,
                 interval_s: float = LINK_LOG_INTERVAL_S):
        self._log, self._clock, self._interval_s = log, clock, interval_s
        self._quiet_until: dict[int, float] = {}
        self._logged_at: dict[int, float] = {}   # the peer's last line
        self._held: dict[int, int] = {}          # changes not logged yet, per peer
        self._state: dict[int, bool] = {}
        self._summaries: dict[int, IDelayedCall] = {}

    def changed(self, peer_id: int, up: bool) -> None:
        """Peer ``peer_id``'s link went up (True) or down (False)."""
        self._state[peer_id] = up
        now = self._clock.seconds()
        if now >= self._quiet_until.get(peer_id, -math.inf) and peer_id not in self._summaries:
            self._quiet_until[peer_id] = now + self._interval_s
            self._logged_at[peer_id] = now
            self._log.info("replica {peer} is {state}", peer=peer_id,
                           state="up" if up else "down")
            return
        self._held[peer_id] = self._held.get(peer_id, 0) + 1
        if peer_id not in self._summaries:
            self._summaries[peer_id] = self._clock.callLater(
                max(self._quiet_until[peer_id] - now, 0.0), self._summarise, peer_id)

    def _summarise(self, peer_id: int) -> None:
        del self._summaries[peer_id]
        held = self._held.pop(peer_id, 0)
        now = self._clock.seconds()
        since, self._logged_at[peer_id] = self._logged_at[peer_id], now
        self._quiet_until[peer_id] = now + self._interval_s
        self._log.info(
            "replica {peer} went down or came back {count} more {times} in the last "
            "{seconds:.3g} s; it is {state} now", peer=peer_id, count=held,
            times="time" if held == 1 else "times", seconds=now - since,
            state="up" if self._state[peer_id] else "down")

    def stop(self) -> None:
        """The replica stops: the summaries due are logged now, their timers cancelled."""
        for peer_id, call in list(self._summaries.items()):
            if call.active():
                call.cancel()
            self._summarise(peer_id)
