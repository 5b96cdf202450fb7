"""Unit tests for the Bully machine (one replica, a recording glue, task.Clock) and a
few whole-cluster scenarios on the simulated network of test_election_sim."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from replicad.election import BullyElection, Role
from tests.test_election_sim import Network

F, E, A, C = Role.FOLLOWER, Role.ELECTING, Role.AWAITING, Role.COORDINATOR


class Glue:
    """Records every action, in order, in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.on_send_election = None  # optional hook to answer synchronously

    def of(self, kind: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == kind]

    def send_election(self, peer_id, epoch):
        self.calls.append(("election", peer_id, epoch))
        if self.on_send_election is not None:
            self.on_send_election(peer_id)

    def send_coordinator(self, peer_id, epoch):
        self.calls.append(("coordinator", peer_id, epoch))

    def role_changed(self, role, coordinator, epoch):
        self.calls.append(("role", role, coordinator, epoch))

    def persist_epoch(self, epoch):
        self.calls.append(("persist", epoch))


def make(my_id, members=(1, 2, 3), **kw):
    clock, glue = Clock(), Glue()
    return BullyElection(my_id, members, glue, clock, **kw), glue, clock


def coordinator_of(my_id, members=(1, 2, 3), **kw):
    """A machine that has just won (by answer timeout if it has higher members)."""
    m, glue, clock = make(my_id, members, **kw)
    m.start_election("test")
    clock.advance(m._answer_timeout_s)
    assert m.role is C
    glue.calls.clear()
    return m, glue, clock


class StateTests(SynchronousTestCase):
    def test_initial_state(self):
        m, glue, _ = make(2, epoch=4)
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch), (F, None, None))
        self.assertEqual((m.my_id, m.epoch, m.public_role), (2, 4, "electing"))
        self.assertEqual(glue.calls, [])

    def test_public_names(self):
        names = {r: r.public_name for r in Role}
        self.assertEqual(names, {F: "follower", E: "electing", A: "electing", C: "coordinator"})

    def test_bad_arguments(self):
        self.assertRaises(ValueError, make, 1, epoch=-1)
        self.assertRaises(ValueError, make, 1, answer_timeout_s=0)
        self.assertRaises(ValueError, make, 1, reannounce_interval_s=0)

    def test_events_logged_with_epoch(self):
        with capturedLogs() as events:
            m, _, _ = make(3)
            m.start_election("start-up")
            m.coordinator_received(4, 1)  # not a member: ignored
        formats = [(e["log_format"].split()[2], e.get("epoch")) for e in events]
        self.assertEqual(formats, [("starts", 0), ("won", 1)])


class StartElectionTests(SynchronousTestCase):
    def test_highest_wins_at_once(self):
        m, glue, clock = make(3, epoch=7)
        m.start_election("start-up")
        self.assertEqual((m.role, m.coordinator, m.epoch, m.coordinator_epoch), (C, 3, 8, 8))
        self.assertEqual(
            glue.calls,
            [("persist", 8), ("role", C, 3, 8), ("coordinator", 1, 8), ("coordinator", 2, 8)],
        )

    def test_lower_asks_higher_only(self):
        m, glue, _ = make(2, (1, 2, 3, 4), epoch=5)
        m.start_election("start-up")
        self.assertEqual(glue.of("election"), [(3, 5), (4, 5)])
        self.assertEqual((m.role, m.public_role), (E, "electing"))
        self.assertEqual(glue.of("role"), [(E, None, 5)])

    def test_noop_while_electing_or_awaiting(self):
        m, glue, _ = make(1)
        m.start_election("a")
        m.start_election("b")
        self.assertEqual(len(glue.of("election")), 2)
        m.answer_received(3, 0)
        m.start_election("c")
        self.assertEqual((m.role, len(glue.of("election"))), (A, 2))

    def test_no_answer_wins_after_timeout(self):
        """Lost OK: the answer timer decides."""
        m, glue, clock = make(1, answer_timeout_s=0.3)
        m.start_election("start-up")
        clock.advance(0.29)
        self.assertEqual(m.role, E)
        clock.advance(0.01)
        self.assertEqual((m.role, m.epoch), (C, 1))
        self.assertEqual(glue.of("coordinator"), [(2, 1), (3, 1)])

    def test_all_sends_failed_wins_at_once(self):
        m, _, clock = make(1)
        m.start_election("start-up")
        m.election_send_failed(2)
        self.assertEqual(m.role, E)
        m.election_send_failed(3)
        self.assertEqual((m.role, clock.seconds()), (C, 0))

    def test_synchronous_failures(self):
        """The glue may fail a send from inside send_election (connection refused)."""
        m, glue, _ = make(1)
        glue.on_send_election = m.election_send_failed
        m.start_election("start-up")
        self.assertEqual((m.role, m.epoch), (C, 1))
        self.assertEqual(len(glue.of("election")), 2)

    def test_synchronous_answer_stops_the_round(self):
        m, glue, _ = make(1)
        glue.on_send_election = lambda peer: m.answer_received(peer, 0)
        m.start_election("start-up")
        self.assertEqual((m.role, glue.of("election")), (A, [(2, 0)]))

    def test_failures_outside_an_election_ignored(self):
        m, glue, _ = make(1)
        m.election_send_failed(2)
        m.election_send_failed(3)
        self.assertEqual((m.role, glue.calls), (F, []))


class AnswerTests(SynchronousTestCase):
    def test_lower_never_announces_while_higher_answers(self):
        """I2: after an OK, only the coordinator timer may act, and it re-elects."""
        m, glue, clock = make(2, (1, 2, 3, 4))
        m.start_election("start-up")
        m.answer_received(4, 0)
        self.assertEqual(m.role, A)
        for _ in range(5):  # every round answered: never an announcement
            clock.advance(0.8)
            self.assertEqual(m.role, E)
            m.answer_received(3, 0)
        self.assertEqual(glue.of("coordinator"), [])
        self.assertEqual(len(glue.of("election")), 12)

    def test_lost_coordinator_restarts_election(self):
        m, glue, clock = make(1, coordinator_timeout_s=0.8)
        m.start_election("start-up")
        m.answer_received(2, 0)
        clock.advance(0.79)
        self.assertEqual(m.role, A)
        clock.advance(0.01)
        self.assertEqual((m.role, len(glue.of("election"))), (E, 4))
        clock.advance(0.3)  # and nobody answers this time
        self.assertEqual(m.role, C)

    def test_answer_from_lower_ignored(self):
        m, _, _ = make(2)
        m.start_election("x")
        m.answer_received(1, 0)
        self.assertEqual(m.role, E)

    def test_late_answer_ignored_but_epoch_seen(self):
        m, glue, _ = make(1)
        m.coordinator_received(3, 2)
        glue.calls.clear()
        m.answer_received(3, 7)
        self.assertEqual((m.role, m.coordinator, m.epoch), (F, 3, 7))
        self.assertEqual(glue.calls, [("persist", 7)])


class ElectionReceivedTests(SynchronousTestCase):
    def test_from_lower_answers_and_holds_election(self):
        m, glue, _ = make(2)
        self.assertTrue(m.election_received(1, 4))
        self.assertEqual((m.role, m.epoch), (E, 4))
        self.assertEqual(glue.of("election"), [(3, 4)])

    def test_from_lower_while_coordinator_reannounces_same_epoch(self):
        m, glue, _ = coordinator_of(3)
        self.assertTrue(m.election_received(1, 0))
        self.assertEqual(glue.calls, [("coordinator", 1, 1)])
        self.assertEqual((m.role, m.epoch), (C, 1))

    def test_from_higher_or_stranger_is_not_answered(self):
        m, glue, _ = make(2)
        self.assertFalse(m.election_received(3, 0))
        self.assertFalse(m.election_received(9, 0))
        self.assertEqual((m.role, glue.calls), (F, []))


class CoordinatorReceivedTests(SynchronousTestCase):
    def test_accept_from_higher(self):
        m, glue, clock = make(1)
        m.start_election("start-up")
        m.answer_received(3, 0)
        self.assertTrue(m.coordinator_received(3, 1))
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch, m.epoch), (F, 3, 1, 1))
        self.assertEqual(m.public_role, "follower")
        self.assertEqual(glue.of("role")[-1], (F, 3, 1))
        self.assertEqual(clock.getDelayedCalls(), [])  # coordinator timer cancelled

    def test_duplicate_is_quiet(self):
        m, glue, _ = make(1)
        self.assertTrue(m.coordinator_received(3, 1))
        self.assertTrue(m.coordinator_received(3, 1))
        self.assertEqual(glue.of("role"), [(F, 3, 1)])

    def test_stale_epoch_rejected(self):
        """I3."""
        m, glue, _ = make(1, epoch=5)
        self.assertFalse(m.coordinator_received(3, 4))
        self.assertEqual((m.role, m.coordinator, m.epoch, glue.calls), (F, None, 5, []))

    def test_equal_epoch_accepted(self):
        """E.g. a follower that restarted: it persisted the epoch, not the coordinator."""
        m, _, _ = make(1, epoch=5)
        self.assertTrue(m.coordinator_received(2, 5))

    def test_epoch_held_by_another_coordinator_rejected(self):
        """I3: two announcements with one epoch; the later one must re-elect above it."""
        m, glue, _ = make(1)
        m.coordinator_received(2, 5)
        self.assertFalse(m.coordinator_received(3, 5))
        self.assertEqual((m.coordinator, m.coordinator_epoch), (2, 5))
        self.assertTrue(m.coordinator_received(3, 6))

    def test_coordinator_steps_down_for_higher(self):
        m, glue, _ = coordinator_of(2)
        self.assertTrue(m.coordinator_received(3, 2))
        self.assertEqual((m.role, m.coordinator), (F, 3))

    def test_lower_is_bullied_with_higher_epoch(self):
        """I5: reject, then win above the lower one's epoch."""
        m, glue, _ = make(3, epoch=1)
        self.assertFalse(m.coordinator_received(1, 9))
        self.assertEqual((m.role, m.epoch, m.coordinator_epoch), (C, 10, 10))
        self.assertIn(("coordinator", 1, 10), glue.calls)

    def test_lower_with_stale_epoch_is_bullied_too(self):
        """Otherwise a lower coordinator that missed a newer epoch keeps its belief."""
        m, glue, _ = coordinator_of(3, epoch=5)
        self.assertFalse(m.coordinator_received(1, 2))
        self.assertEqual((m.role, m.coordinator_epoch), (C, 7))

    def test_lower_while_follower_starts_election(self):
        m, glue, _ = make(2)
        m.coordinator_received(3, 1)
        self.assertFalse(m.coordinator_received(1, 1))
        self.assertEqual((m.role, glue.of("election")), (E, [(3, 1)]))


class RejectedTests(SynchronousTestCase):
    def test_lower_with_newer_epoch_forces_reelection(self):
        m, glue, _ = coordinator_of(3)
        m.coordinator_rejected(1, 6)
        self.assertEqual((m.role, m.epoch, m.coordinator_epoch), (C, 7, 7))
        self.assertEqual(glue.of("coordinator"), [(1, 7), (2, 7)])

    def test_rejection_of_an_older_announcement_ignored(self):
        m, glue, _ = coordinator_of(3, epoch=4)  # announced 5
        m.coordinator_rejected(1, 6)  # re-elected: announced 7
        glue.calls.clear()
        m.coordinator_rejected(2, 6)  # also about the announcement of 5: too late
        self.assertEqual((m.role, m.coordinator_epoch, glue.calls), (C, 7, []))

    def test_rejection_from_higher_waits_to_be_bullied(self):
        m, glue, _ = coordinator_of(2)
        m.coordinator_rejected(3, 9)
        self.assertEqual((m.role, m.epoch, glue.calls), (C, 9, [("persist", 9)]))

    def test_ignored_unless_coordinator(self):
        m, glue, _ = make(1)
        m.coordinator_received(3, 1)
        m.coordinator_rejected(2, 1)
        self.assertEqual(m.role, F)


class FailureAndStopTests(SynchronousTestCase):
    def test_coordinator_failed_makes_follower_elect(self):
        m, glue, _ = make(1)
        m.coordinator_received(3, 1)
        m.coordinator_failed()
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch), (E, None, None))
        self.assertEqual(glue.of("election"), [(2, 1), (3, 1)])

    def test_coordinator_failed_ignored_otherwise(self):
        m, glue, _ = coordinator_of(3)
        m.coordinator_failed()
        self.assertEqual((m.role, glue.calls), (C, []))
        m, glue, _ = make(1)
        m.start_election("x")
        m.coordinator_failed()
        self.assertEqual(len(glue.of("election")), 2)

    def test_stop_cancels_timers_and_ignores_inputs(self):
        m, glue, clock = coordinator_of(2)
        m.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(m.election_received(1, 5))
        self.assertFalse(m.coordinator_received(3, 5))
        m.coordinator_rejected(1, 5)
        self.assertEqual((glue.calls, m.epoch), ([], 1))


class EpochTests(SynchronousTestCase):
    def test_epoch_seen_only_rises(self):
        m, glue, _ = make(1, epoch=3)
        for e in (2, 3, 5, 4, 5, 6):
            m.epoch_seen(e)
        self.assertEqual((m.epoch, glue.of("persist")), (6, [(5,), (6,)]))

    def test_persisted_before_announced(self):
        """I1: a crash right after the announcement cannot lose the epoch."""
        m, glue, _ = make(3)
        m.start_election("start-up")
        kinds = [c[0] for c in glue.calls]
        self.assertLess(kinds.index("persist"), kinds.index("coordinator"))

    def test_persist_calls_monotone_through_a_busy_history(self):
        m, glue, clock = make(2, (1, 2, 3))
        m.start_election("start-up")
        clock.advance(0.3)  # won, epoch 1
        m.coordinator_received(3, 4)
        m.answer_received(3, 2)
        m.coordinator_failed()
        m.election_send_failed(3)  # won, epoch 5
        m.coordinator_rejected(1, 8)  # re-elect
        clock.advance(0.3)  # won, epoch 9
        m.coordinator_received(1, 3)  # lower: bully again
        clock.advance(0.3)
        persisted = [p for (p,) in glue.of("persist")]
        self.assertEqual(persisted, sorted(set(persisted)))
        self.assertEqual((persisted[-1], m.coordinator_epoch), (10, 10))


class ReannounceTests(SynchronousTestCase):
    def test_coordinator_repeats_its_announcement(self):
        m, glue, clock = coordinator_of(3, reannounce_interval_s=1.0)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(glue.of("coordinator"), [(1, 1), (2, 1)] * 2)
        self.assertEqual(glue.of("role"), [])

    def test_stops_when_stepping_down(self):
        m, glue, clock = coordinator_of(2, reannounce_interval_s=1.0)
        m.coordinator_received(3, 2)
        clock.advance(5)
        self.assertEqual(glue.of("coordinator"), [])

    def test_can_be_disabled(self):
        m, glue, clock = coordinator_of(3, reannounce_interval_s=None)
        self.assertEqual(clock.getDelayedCalls(), [])


class ClusterTests(SynchronousTestCase):
    """Whole elections on the simulated network (no message loss unless stated)."""

    def coordinators(self, net):
        return [i for i, n in net.nodes.items() if n.machine.role is C]

    def test_all_up_highest_wins(self):
        net = Network(4)
        net.start()
        net.converge()
        self.assertEqual(self.coordinators(net), [4])
        self.assertEqual({n.machine.coordinator for n in net.nodes.values()}, {4})

    def test_highest_dies_next_highest_wins(self):
        net = Network(4)
        net.start()
        net.converge()
        net.crash(4)
        net.converge()
        self.assertEqual(self.coordinators(net), [3])
        self.assertEqual(net.machine(1).coordinator_epoch, 2)

    def test_highest_returns_and_bullies_with_higher_epoch(self):
        net = Network(4)
        net.start()
        net.converge()
        net.crash(4)
        net.converge()
        net.recover(4)
        net.converge()
        self.assertEqual(self.coordinators(net), [4])
        self.assertEqual(net.machine(1).coordinator_epoch, 3)

    def test_highest_returns_with_old_epoch(self):
        """4 was down through several epochs; its persisted epoch is stale, so its first
        announcement is rejected and it re-elects above the cluster's epoch."""
        net = Network(4)
        net.start()
        net.converge()
        net.crash(4)
        for _ in range(3):
            net.crash(3)
            net.converge()
            net.recover(3)
            net.converge()
        stale = net.disk[4]
        net.recover(4)
        net.converge()
        self.assertEqual(self.coordinators(net), [4])
        self.assertGreater(net.machine(4).epoch, stale + 1)

    def test_two_elections_at_once(self):
        net = Network(5)
        net.start()
        net.converge()
        net.crash(5)
        net.machine(1).coordinator_failed()
        net.machine(2).coordinator_failed()
        net.converge()
        self.assertEqual(self.coordinators(net), [4])
        self.assertEqual([a[1:] for a in net.announced], [(5, 1), (4, 2)])

    def test_lower_restarts_never_announce_while_higher_answers(self):
        net = Network(4)
        net.start()
        net.converge()
        for i in (1, 2, 3, 1, 3):
            net.crash(i)
            net.advance(0.1)
            net.recover(i)
            net.converge()
        self.assertEqual({a[1] for a in net.announced}, {4})
