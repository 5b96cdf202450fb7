"""The reactor a replica process runs on: Twisted's epoll reactor, on the monotonic
clock and less one wrapper.

**The monotonic clock.**  Twisted's reactors time every ``callLater`` by the wall clock
(``time.time``), which an operator, NTP or a resumed VM can step.  Measured on a real
cluster with libfaketime stepping one replica's wall clock (tests/integration/
test_clock_steps.py): one hour forward and the coordinator took the gap for a pause of
3,600 s and stood again (an election, a take-over); one hour back and every timer set
before the step waited an hour more: no heartbeats (a follower stopped checking its
coordinator) and, in quorum mode, a lease that looked valid for an hour, so a
coordinator cut off from the others went on answering reads.  ``seconds()`` here is
CLOCK_BOOTTIME (Linux; ``time.monotonic`` elsewhere), which steps do not move; every
timer, timeout, lease and pause of the replica is measured on it.  BOOTTIME rather than
CLOCK_MONOTONIC because the latter stops while the machine is suspended: a coordinator
resumed after an hour asleep would find its lease as valid as when it slept and no
pause to stand again for; BOOTTIME counts the sleep, so it does both.  Times shown to
people (the admin page's events) are read from the wall clock apart (metrics.py,
``wall``).

**The wrapper.** Twisted's ``EPollReactor.doPoll`` hands every ready socket to
``_doReadOrWrite`` through ``log.callWithLogger``, which puts the socket's
``logPrefix()`` into the legacy log context (``twisted.python.context``: a dict copied
and pushed per call) so that a *legacy* log line written while the event is handled
(``log.msg``, ``log.err``) names its connection. replicad logs with ``twisted.logger``,
whose events never read that context, and a replica handles one event per request on
every connection: measured, the wrapper was 1.4 µs of each event, and without it a
3-replica cluster served GETs 1.12x, PUTs 1.07x, one-shot GETs and PUTs 1.06x and GETs
sent to a follower 1.06x as fast (docs/benchmarks.md, "After that run (2026-11-30,
fourth session of the day)").

What is given up: a legacy line Twisted itself writes while handling an event (say
the traceback of a protocol's ``dataReceived`` that raised, which ``_doReadOrWrite``
catches, logs and answers by closing that connection, as before) reads ``[-]`` where
it read the connection's prefix.  Everything else is Twisted's own code: the poll, the
dispatch, the disconnect handling.

``twistd -n replicad`` runs on it unless a reactor was chosen (``twistd -r epoll``, or
any other ``-r``): see ``install_unless_chosen``.
"""

from __future__ import annotations

import errno
import functools
import sys
import time
from collections.abc import Callable

from twisted.internet import epollreactor
from twisted.logger import Logger

# Seconds on the clock the replica's timers run on (see the module's docstring).  A
# partial, not a function: called several times a request, it costs 16 ns more than
# Twisted's time.time, where a Python function around clock_gettime cost 70 ns more.
now: Callable[[], float] = (functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
                            if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic)


class EPollReactor(epollreactor.EPollReactor):
    """``epollreactor.EPollReactor`` on the monotonic clock, whose poll calls
    ``_doReadOrWrite`` directly."""

    log = Logger()

    seconds = staticmethod(now)     # what the reactor's timers are scheduled on

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue        # removed by an earlier event of this same poll
            try:
                handle(selectable, fd, event)
            except Exception:
                # _doReadOrWrite catches what the selectable raises; this is the net
                # that Twisted's callWithLogger was, for a bug of the reactor's own.
                self.log.failure("handling an event of {selectable!r}",
                                 selectable=selectable)

    doIteration = doPoll


def install_unless_chosen() -> bool:
    """Install EPollReactor as the global reactor, unless one is installed already
    (``twistd --reactor``, or code that imported ``twisted.internet.reactor``) or
    the epoll instance cannot be made.  True if it was installed.  (Importing this
    module fails where there is no epoll: the caller keeps Twisted's default.)"""
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    try:
        reactor = EPollReactor()
    except OSError:         # epoll_create failed (out of file descriptors)
        return False
    installReactor(reactor)
    return True
