"""Heartbeat failure detector for the coordinator.

Thin on purpose: the glue supplies ``ping()`` (which enforces its own timeout) and the
clock; this module decides *when* to ping and shares one in-flight ping between the
heartbeat and client-triggered checks.

Invariant: the ping timeout (enforced by the glue inside ``ping()``) must be shorter
than ``interval_s``, or a slow ping would make the heartbeat skip ticks and detection
would take longer than one interval plus one timeout.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure


class HeartbeatMonitor:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval_s: float,
        ping: Callable[[], Deferred[bool]],
        on_failure: Callable[[], None],
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._clock = clock
        self._interval_s = interval_s
        self._ping = ping
        self._on_failure = on_failure
        self._loop: LoopingCall | None = None
        self._last_ok: float | None = None
        self._waiters: list[Deferred[bool]] | None = None  # not None <=> ping in flight
        # Bumped by reset()/stop(): a ping started before belongs to another
        # coordinator (or a stopped service), so its result must not count.
        self._generation = 0

    def start(self) -> None:
        if self._loop is not None and self._loop.running:
            return
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval_s, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._generation += 1
        self._waiters = None

    def recently_ok(self) -> bool:
        """A ping succeeded within the last interval_s."""
        return (
            self._last_ok is not None
            and self._clock.seconds() - self._last_ok <= self._interval_s
        )

    def check(self) -> Deferred[bool]:
        """Client-triggered: True at once if recently ok, else the result of a ping
        (shared with any ping already in flight)."""
        if self.recently_ok():
            return succeed(True)
        d: Deferred[bool] = Deferred()
        if self._waiters is not None:
            self._waiters.append(d)
        else:
            self._waiters = [d]
            self._start_ping(self._waiters)
        return d

    def reset(self) -> None:
        """Forget the last success; called when the coordinator changes."""
        self._generation += 1
        self._last_ok = None
        self._waiters = None  # in-flight ping was to the old coordinator; do not share it

    def _tick(self) -> None:
        if self._waiters is not None:
            return  # a ping is already in flight
        self._waiters = []
        self._start_ping(self._waiters)

    def _start_ping(self, waiters: list[Deferred[bool]]) -> None:
        generation = self._generation
        d = maybeDeferred(self._ping)
        d.addBoth(self._ping_done, waiters, generation)

    def _ping_done(
        self, result: bool | Failure, waiters: list[Deferred[bool]], generation: int
    ) -> None:
        if isinstance(result, Failure):
            self.log.failure("coordinator ping raised; counting it as failed", result)
            ok = False
        else:
            ok = bool(result)
        if self._waiters is waiters:
            self._waiters = None
        if generation == self._generation:
            if ok:
                self._last_ok = self._clock.seconds()
            else:
                try:
                    self._on_failure()
                except Exception:
                    self.log.failure("on_failure raised")
        for w in waiters:
            w.callback(ok)
