"""HeartbeatMonitor with task.Clock and a hand-fired fake ping."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replicad.detector import HeartbeatMonitor

INTERVAL_S = 0.5


class Pinger:
    """ping() returns a Deferred the test fires by hand (or a canned result)."""

    def __init__(self) -> None:
        self.pending: list[Deferred[bool]] = []
        self.canned = None
        self.failures = 0

    def ping(self) -> Deferred[bool]:
        if self.canned is not None:
            return self.canned()
        d: Deferred[bool] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, ok: bool) -> None:
        self.pending.pop(0).callback(ok)

    def on_failure(self) -> None:
        self.failures += 1


def make():
    clock, pinger = Clock(), Pinger()
    return HeartbeatMonitor(clock, INTERVAL_S, pinger.ping, pinger.on_failure), pinger, clock


def result(d: Deferred) -> list:
    out: list = []
    d.addCallback(out.append)
    return out


class HeartbeatTests(SynchronousTestCase):
    def test_ticks_every_interval_not_at_start(self):
        mon, pinger, clock = make()
        mon.start()
        self.assertEqual(pinger.pending, [])
        clock.advance(INTERVAL_S)
        self.assertEqual(len(pinger.pending), 1)
        pinger.answer(True)
        clock.advance(INTERVAL_S)
        self.assertEqual(len(pinger.pending), 1)

    def test_tick_skips_while_ping_in_flight(self):
        mon, pinger, clock = make()
        mon.start()
        clock.advance(INTERVAL_S)
        clock.advance(INTERVAL_S)
        self.assertEqual(len(pinger.pending), 1)

    def test_failed_tick_calls_on_failure_once(self):
        mon, pinger, clock = make()
        mon.start()
        clock.advance(INTERVAL_S)
        pinger.answer(False)
        self.assertEqual(pinger.failures, 1)
        clock.advance(INTERVAL_S)
        pinger.answer(False)
        self.assertEqual(pinger.failures, 2)

    def test_stop(self):
        mon, pinger, clock = make()
        mon.start()
        mon.stop()
        clock.advance(10 * INTERVAL_S)
        self.assertEqual((pinger.pending, clock.getDelayedCalls()), ([], []))

    def test_result_after_stop_is_not_a_failure(self):
        mon, pinger, clock = make()
        mon.start()
        clock.advance(INTERVAL_S)
        mon.stop()
        pinger.answer(False)
        self.assertEqual(pinger.failures, 0)

    def test_bad_interval(self):
        self.assertRaises(ValueError, HeartbeatMonitor, Clock(), 0, lambda: None, lambda: None)


class RecentlyOkTests(SynchronousTestCase):
    def test_window(self):
        mon, pinger, clock = make()
        self.assertFalse(mon.recently_ok())
        result(mon.check())
        clock.advance(0.1)
        pinger.answer(True)  # success at t = 0.1
        clock.advance(INTERVAL_S)
        self.assertTrue(mon.recently_ok())
        clock.advance(0.01)
        self.assertFalse(mon.recently_ok())

    def test_failure_does_not_refresh(self):
        mon, pinger, _ = make()
        result(mon.check())
        pinger.answer(False)
        self.assertFalse(mon.recently_ok())

    def test_reset_forgets(self):
        mon, pinger, _ = make()
        result(mon.check())
        pinger.answer(True)
        mon.reset()
        self.assertFalse(mon.recently_ok())


class CheckTests(SynchronousTestCase):
    def test_true_at_once_when_recently_ok(self):
        mon, pinger, _ = make()
        result(mon.check())
        pinger.answer(True)
        self.assertEqual(result(mon.check()), [True])
        self.assertEqual(pinger.pending, [])

    def test_concurrent_checks_share_one_ping(self):
        mon, pinger, _ = make()
        first, second = result(mon.check()), result(mon.check())
        self.assertEqual(len(pinger.pending), 1)
        pinger.answer(False)
        self.assertEqual((first, second, pinger.failures), ([False], [False], 1))

    def test_check_joins_heartbeat_ping(self):
        mon, pinger, clock = make()
        mon.start()
        clock.advance(INTERVAL_S)
        got = result(mon.check())
        self.assertEqual(len(pinger.pending), 1)
        pinger.answer(True)
        self.assertEqual(got, [True])

    def test_synchronous_ping(self):
        mon, pinger, _ = make()
        pinger.canned = lambda: succeed(False)
        self.assertEqual(result(mon.check()), [False])
        self.assertEqual(result(mon.check()), [False])  # nothing left in flight
        self.assertEqual(pinger.failures, 2)

    def test_errback_counts_as_failure_and_is_logged(self):
        mon, pinger, _ = make()
        pinger.canned = lambda: fail(ConnectionError("boom"))
        self.assertEqual(result(mon.check()), [False])
        self.assertEqual(pinger.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_raising_ping_counts_as_failure(self):
        mon, pinger, _ = make()
        pinger.canned = lambda: 1 / 0
        self.assertEqual(result(mon.check()), [False])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_reset_detaches_in_flight_ping(self):
        """A ping to the old coordinator must neither be shared with checks about the
        new one nor report the new one as failed."""
        mon, pinger, _ = make()
        old = result(mon.check())
        mon.reset()
        new = result(mon.check())
        self.assertEqual(len(pinger.pending), 2)
        pinger.answer(False)  # the old coordinator's answer
        self.assertEqual((old, new, pinger.failures), ([False], [], 0))
        pinger.answer(True)
        self.assertEqual((new, mon.recently_ok()), ([True], True))

    def test_on_failure_raising_still_fires_waiters(self):
        clock, pinger = Clock(), Pinger()
        mon = HeartbeatMonitor(clock, INTERVAL_S, pinger.ping, lambda: 1 / 0)
        got = result(mon.check())
        pinger.answer(False)
        self.assertEqual(got, [False])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
