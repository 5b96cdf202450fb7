"""The "replica N is up / down" log lines, at most a few per peer per interval.

A replica logs each change of a peer link's state, which is what an operator wants
from a peer that crashes or comes back.  A link can also flap: a follower that reads,
only slower than the coordinator writes under a load of big values, has its pushes
fail as congested, catches up by a delta and is reachable again, many times a second
(hundreds of lines a run in the frozen-receiver test).  Here the first few changes of
an interval are logged at once (a crash and a restart are never delayed); the changes
after them are counted and told in one line when the interval ends, with the state the
link is in then.  Pure: a logger and a clock are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

LINK_LOG_INTERVAL_S = 10.0
LINK_LOG_BURST = 4     # changes per peer logged as they happen in an interval


class LinkStateLog:
    """The first ``burst`` changes of a peer's link in an interval are logged as they
    happen (a crash, a restart); more are held and summed up at the interval's end.
    ``record(peer_id, up, text)``, if given, is told every line logged (the admin
    page's timeline keeps the same few lines, so a flapping link does not push the
    elections out of it)."""

    def __init__(self, log: Logger, clock: IReactorTime,
                 interval_s: float = LINK_LOG_INTERVAL_S, burst: int = LINK_LOG_BURST,
                 record: Callable[[int, bool, str], None] | None = None):
        self._log, self._clock, self._interval_s = log, clock, interval_s
        self._burst, self._record = burst, record
        self._window_start: dict[int, float] = {}  # the peer's interval
        self._logged: dict[int, int] = {}        # lines logged in it
        self._held: dict[int, int] = {}          # changes not logged yet
        self._state: dict[int, bool] = {}
        self._summaries: dict[int, IDelayedCall] = {}

    def changed(self, peer_id: int, up: bool) -> None:
        """Peer ``peer_id``'s link went up (True) or down (False)."""
        self._state[peer_id] = up
        now = self._clock.seconds()
        if peer_id not in self._summaries:
            if now >= self._window_start.get(peer_id, -math.inf) + self._interval_s:
                self._start_window(peer_id, now, logged=0)
            if self._logged[peer_id] < self._burst:
                self._logged[peer_id] += 1
                self._line(peer_id, "replica {peer} is {state}", peer=peer_id,
                           state="up" if up else "down")
                return
            self._summaries[peer_id] = self._clock.callLater(
                max(self._window_start[peer_id] + self._interval_s - now, 0.0),
                self._summarise, peer_id)
        self._held[peer_id] = self._held.get(peer_id, 0) + 1

    def _start_window(self, peer_id: int, now: float, logged: int) -> None:
        self._window_start[peer_id] = now
        self._logged[peer_id] = logged

    def _summarise(self, peer_id: int) -> None:
        del self._summaries[peer_id]
        held = self._held.pop(peer_id, 0)
        now = self._clock.seconds()
        since = self._window_start[peer_id]
        # Still flapping?  The next interval holds its changes from the first one.
        self._start_window(peer_id, now, logged=self._burst)
        self._line(
            peer_id, "replica {peer} went down or came back {count} more {times} in the "
            "last {seconds:.3g} s; it is {state} now", peer=peer_id, count=held,
            times="time" if held == 1 else "times", seconds=now - since,
            state="up" if self._state[peer_id] else "down")

    def _line(self, peer_id: int, fmt: str, **fields: object) -> None:
        self._log.info(fmt, **fields)
        if self._record is not None:
            self._record(peer_id, self._state[peer_id], fmt.format(**fields))

    def stop(self) -> None:
        """The replica stops: the summaries due are logged now, their timers cancelled."""
        for peer_id, call in list(self._summaries.items()):
            if call.active():
                call.cancel()
            self._summarise(peer_id)
