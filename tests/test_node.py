"""Unit tests for the role machine (one replica, a recording glue, task.Clock) and a few
whole-cluster scenarios on the simulated network of test_node_sim."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from replicad.node import MAX_EPOCH, PERSIST_RETRY_S, Announcement, Candidacy, Node, Role
from tests.test_node_sim import Network
from tests.test_node_sim import own_epoch as sim_own_epoch

F, E, A = Role.FOLLOWER, Role.ELECTING, Role.AWAITING
T, S, X = Role.TAKING_OVER, Role.SERVING, Role.STOPPED


def own_epoch(round_: int, node_id: int, stride: int = 4) -> int:
    """Replica ``node_id``'s epoch of round ``round_`` (0-based): ``round * stride + id``
    (I1b).  Stride 4 is the default members (1, 2, 3): 1 owns 1, 5, 9..., 2 owns 2, 6,
    10..., 3 owns 3, 7, 11...; members (1..4) have stride 5, (1..5) stride 6."""
    return sim_own_epoch(round_, node_id, stride)


class Glue:
    """Records every action, in order, in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.on_send_election = None  # optional hook to answer synchronously
        self.persist_failures = 0     # persist_epoch raises this many times first
        # Pre-votes (I8) are kept apart from ``calls`` and answered at once with no
        # objection, as peers that follow no one would, unless ``hold_prevotes``.
        self.prevotes: list[tuple[int, int]] = []
        self.hold_prevotes = False
        self.node: Node | None = None

    def of(self, kind: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == kind]

    def send_election(self, peer_id, epoch):
        self.calls.append(("election", peer_id, epoch))
        if self.on_send_election is not None:
            self.on_send_election(peer_id)

    def send_prevote(self, peer_id, epoch):
        self.prevotes.append((peer_id, epoch))
        if not self.hold_prevotes:
            self.node.prevote_answered(peer_id, None)

    def send_coordinator(self, peer_id, epoch):
        self.calls.append(("coordinator", peer_id, epoch))

    def pull_for_take_over(self, peer_id, epoch):
        self.calls.append(("pull", peer_id, epoch))

    held_by: set[int] = set()     # confirm_holders: the peers holding every write

    def holders(self, peers):
        return set(peers) & self.held_by

    def catch_up(self, peer_id, epoch):
        self.calls.append(("catch_up", peer_id, epoch))

    history_missing = False       # history_ready says no (a fresh cluster still unbound)

    def history_ready(self, pulled):
        self.calls.append(("history", tuple(sorted(pulled))))
        return not self.history_missing

    def role_changed(self, role, coordinator, epoch):
        self.calls.append(("role", role, coordinator, epoch))

    def persist_epoch(self, epoch):
        self.calls.append(("persist", epoch))
        if self.persist_failures > 0:
            self.persist_failures -= 1
            raise OSError("disk full")


def make(my_id, members=(1, 2, 3), **kw):
    clock, glue = Clock(), Glue()
    glue.node = Node(my_id, members, glue, clock, **kw)
    return glue.node, glue, clock


def take_over(m, glue, accept=None, fail=()):
    """Finish a take-over: the peers in ``accept`` (default: every peer announced to and
    not in ``fail``) accept the announcement and are pulled from; those in ``fail``
    time out."""
    epoch = m.coordinator_epoch
    announced = sorted({p for (p, e) in glue.of("coordinator") if e == epoch})
    if accept is None:
        accept = [p for p in announced if p not in fail]
    for peer in accept:
        m.coordinator_accepted(peer, epoch)
        m.pull_done(peer, epoch, True)
    for peer in fail:
        m.coordinator_send_failed(peer, epoch)


def coordinator_of(my_id, members=(1, 2, 3), **kw):
    """A machine that has just won (by answer timeout if it has higher members) and
    taken over: every peer accepted and was pulled from."""
    m, glue, clock = make(my_id, members, **kw)
    m.start_election("test")
    clock.advance(m._answer_timeout_s)
    assert m.role is T
    take_over(m, glue)
    assert m.role is S
    glue.calls.clear()
    return m, glue, clock


def serving(m):
    return defer.ensureDeferred(m.when_serving(m._clock.seconds() + 10))


class StateTests(SynchronousTestCase):
    def test_initial_state(self):
        m, glue, _ = make(2, epoch=4)
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch), (F, None, None))
        self.assertEqual((m.my_id, m.epoch, m.public_role), (2, 4, "electing"))
        self.assertEqual((m.serving_as, m.cannot_serve, m.take_over_progress()),
                         (None, False, None))
        self.assertEqual(glue.calls, [])

    def test_public_names(self):
        names = {r: r.public_name for r in Role}
        self.assertEqual(names, {F: "follower", E: "electing", A: "electing",
                                 T: "coordinator", S: "coordinator", X: "stopped"})
        self.assertEqual([r for r in Role if r.is_coordinator], [T, S])

    def test_bad_arguments(self):
        self.assertRaises(ValueError, make, 1, epoch=-1)
        self.assertRaises(ValueError, make, 1, epoch=MAX_EPOCH + 1)
        self.assertRaises(ValueError, make, 1, answer_timeout_s=0)
        self.assertRaises(ValueError, make, 1, reannounce_interval_s=0)
        self.assertRaises(ValueError, make, 1, quorum=0)
        self.assertRaises(ValueError, make, 1, quorum=4)   # 3 members

    def test_events_logged_with_epoch(self):
        with capturedLogs() as events:
            m, glue, _ = make(3)
            m.start_election("start-up")
            m.coordinator_received(4, 1)  # not a member: ignored
            take_over(m, glue)
        formats = [(e["log_format"].split()[2], e.get("epoch")) for e in events]
        self.assertEqual(formats, [("starts", 0), ("won", 3), ("serving", 3)])


class StartElectionTests(SynchronousTestCase):
    def test_highest_wins_at_once(self):
        m, glue, clock = make(3, epoch=7)
        m.start_election("start-up")
        e = own_epoch(2, 3)   # 11: 3's least own epoch above 7
        self.assertEqual((m.role, m.coordinator, m.epoch, m.coordinator_epoch), (T, 3, e, e))
        self.assertEqual(
            glue.calls,
            [("persist", e), ("role", T, 3, e), ("coordinator", 1, e), ("coordinator", 2, e)],
        )
        take_over(m, glue)
        self.assertEqual((m.role, m.serving_as, m.follows), (S, 3, None))

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
        self.assertEqual((m.role, m.epoch), (T, own_epoch(0, 1)))
        self.assertEqual(glue.of("coordinator"), [(2, 1), (3, 1)])

    def test_all_sends_failed_wins_at_once(self):
        m, _, clock = make(1)
        m.start_election("start-up")
        m.election_send_failed(2)
        self.assertEqual(m.role, E)
        m.election_send_failed(3)
        self.assertEqual((m.role, clock.seconds()), (T, 0))

    def test_synchronous_failures(self):
        """The glue may fail a send from inside send_election (connection refused)."""
        m, glue, _ = make(1)
        glue.on_send_election = m.election_send_failed
        m.start_election("start-up")
        self.assertEqual((m.role, m.epoch), (T, own_epoch(0, 1)))
        self.assertEqual(len(glue.of("election")), 2)

    def test_synchronous_answer_stops_the_round(self):
        m, glue, _ = make(1)
        glue.on_send_election = lambda peer: m.answer_received(peer, 0)
        m.start_election("start-up")
        self.assertEqual((m.role, glue.of("election")), (A, [(2, 0)]))

    def test_peer_down_counts_as_a_failed_election_send(self):
        """A ping to the higher replica timed out while its ELECTION is unanswered: win
        now rather than after answer_timeout (a hung coordinator, issue #8)."""
        m, glue, clock = make(2, answer_timeout_s=0.3)
        m.start_election("election from 1")
        clock.advance(0.1)
        m.peer_down(1)                 # lower: not waited on
        self.assertEqual(m.role, E)
        m.peer_down(3)
        self.assertEqual((m.role, clock.seconds()), (T, 0.1))
        m.peer_down(3, 0.3)            # now taking over: its ELECTION's silence settles it
        self.assertEqual(m.take_over_progress(), (1, 1))

    def test_peer_down_while_following_changes_nothing(self):
        m, glue, _ = make(1)
        m.coordinator_received(3, 3)
        glue.calls.clear()
        m.peer_down(3)                 # the detector's ping decides, not this
        self.assertEqual((m.role, m.coordinator, glue.calls), (F, 3, []))

    def test_failures_outside_an_election_ignored(self):
        m, glue, _ = make(1)
        m.election_send_failed(2)
        m.election_send_failed(3)
        self.assertEqual((m.role, glue.calls), (F, []))


class PreVoteTests(SynchronousTestCase):
    """I8: a replica whose higher peers all failed asks the lower ones before it mints
    an epoch; one that confirms a live coordinator above it stops the election."""

    def held(self, my_id=2, members=(1, 2, 3), **kw):
        m, glue, clock = make(my_id, members, answer_timeout_s=0.3,
                              coordinator_timeout_s=0.8, **kw)
        glue.hold_prevotes = True
        return m, glue, clock

    def test_asks_the_lower_ones_once_the_higher_failed(self):
        m, glue, clock = self.held(3, (1, 2, 3, 4, 5), epoch=5)
        m.start_election("coordinator 5 failed")
        self.assertEqual(glue.prevotes, [])
        m.election_send_failed(4)
        m.election_send_failed(5)
        self.assertEqual((m.role, sorted(glue.prevotes)), (E, [(1, 5), (2, 5)]))
        self.assertEqual(glue.of("persist"), [])        # no epoch minted yet
        m.prevote_answered(1, None)
        self.assertEqual(m.role, E)
        m.prevote_answered(2, None)
        self.assertEqual((m.role, m.epoch), (T, own_epoch(1, 3, 6)))

    def test_after_the_answer_timeout_too(self):
        m, glue, clock = self.held()
        m.start_election("start-up")
        clock.advance(0.3)
        self.assertEqual((m.role, glue.prevotes), (E, [(1, 0)]))
        clock.advance(0.29)
        self.assertEqual(m.role, E)
        clock.advance(0.01)                # silence is no objection
        self.assertEqual((m.role, m.epoch), (T, own_epoch(0, 2)))

    def test_a_failed_or_lost_peer_is_no_objection(self):
        m, glue, clock = self.held(3, (1, 2, 3, 4))
        m.start_election("start-up")
        m.election_send_failed(4)
        m.prevote_failed(1)
        self.assertEqual(m.role, E)
        m.peer_down(2)
        self.assertEqual((m.role, clock.seconds()), (T, 0))

    def test_the_highest_and_the_lowest_do_not_ask(self):
        m, glue, _ = self.held(3)
        m.start_election("start-up")
        self.assertEqual((m.role, glue.prevotes), (T, []))
        m, glue, _ = self.held(1)
        m.start_election("start-up")
        m.election_send_failed(2)
        m.election_send_failed(3)
        self.assertEqual((m.role, glue.prevotes), (T, []))

    def test_a_veto_mints_nothing_and_refuses_at_once(self):
        m, glue, clock = self.held(epoch=3)
        m.start_election("coordinator 3 failed")
        m.election_send_failed(3)
        glue.calls.clear()
        m.prevote_answered(1, 3)           # 1 follows 3, and 3 answered its ping
        self.assertEqual((m.role, m.coordinator, m.epoch), (F, None, 3))
        self.assertEqual((m.vetoed, m.cannot_serve, m.serving_as), ((1, 3), True, None))
        self.assertIsNone(m.follows)
        self.assertEqual(glue.calls, [("role", F, None, 3)])
        waiting = serving(m)
        self.assertEqual(self.successResultOf(waiting), None)   # refused, not held
        clock.advance(0.79)
        self.assertEqual(glue.of("election"), [])
        clock.advance(0.01)                # asks again, still without an epoch
        self.assertEqual((m.role, glue.of("election"), m.cannot_serve), (E, [(3, 3)], True))
        m.election_send_failed(3)
        m.prevote_answered(1, None)        # 3 is gone now: 2 stands
        self.assertEqual((m.role, m.vetoed, m.cannot_serve), (T, None, False))

    def test_the_coordinators_announcement_ends_a_veto(self):
        m, glue, clock = self.held(epoch=3)
        m.start_election("coordinator 3 failed")
        m.election_send_failed(3)
        m.prevote_answered(1, 3)
        self.assertTrue(m.coordinator_received(3, 3))   # the link healed
        self.assertEqual((m.role, m.coordinator, m.vetoed, m.cannot_serve),
                         (F, 3, None, False))
        self.assertEqual(m.follows, 3)     # may answer reads in 3's name (confirmed reads)
        clock.advance(1)                   # the retry timer died with the state
        self.assertEqual(glue.of("election"), [(3, 3)])

    def test_only_a_coordinator_above_vetoes(self):
        m, glue, _ = self.held(3, (1, 2, 3, 4))
        m.start_election("start-up")
        m.election_send_failed(4)
        m.prevote_answered(1, 2)           # below 3: not a reason (and not its business)
        m.prevote_answered(2, None)
        self.assertEqual(m.role, T)

    def test_late_answers_are_ignored(self):
        m, glue, clock = self.held()
        m.start_election("start-up")
        clock.advance(0.3)                 # the answer timeout
        clock.advance(0.3)                 # the pre-vote's
        self.assertEqual(m.role, T)
        m.prevote_answered(1, 3)
        self.assertEqual((m.role, m.vetoed), (T, None))

    def test_what_a_voter_says(self):
        m, _, _ = make(1, (1, 2, 3, 4))
        self.assertIsNone(m.prevote_received(2))          # follows no one
        m.coordinator_received(4, 4)
        self.assertEqual(m.prevote_received(2), 4)        # the glue confirms 4 first
        self.assertEqual(m.prevote_received(3), 4)
        self.assertIsNone(m.prevote_received(4))          # the coordinator itself
        self.assertIsNone(m.prevote_received(9))          # not a member
        m.coordinator_failed()
        self.assertIsNone(m.prevote_received(2))          # electing: no objection
        m, glue, _ = coordinator_of(3, (1, 2, 3, 4, 5))
        self.assertEqual((m.prevote_received(2), m.prevote_received(4)), (3, None))
        m.stop()
        self.assertIsNone(m.prevote_received(2))


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
        self.assertEqual(m.role, T)

    def test_answer_from_lower_ignored(self):
        m, _, _ = make(2)
        m.start_election("x")
        m.answer_received(1, 0)
        self.assertEqual(m.role, E)

    def test_late_answer_ignored_but_epoch_seen(self):
        m, glue, _ = make(1)
        m.coordinator_received(3, 3)
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
        m, glue, _ = coordinator_of(3)   # epoch 3
        self.assertTrue(m.election_received(1, 0))
        self.assertEqual(glue.calls, [("coordinator", 1, 3)])
        self.assertEqual((m.role, m.epoch), (S, 3))

    def test_from_lower_while_taking_over_reannounces_same_epoch(self):
        m, glue, _ = make(3)
        m.start_election("x")
        glue.calls.clear()
        self.assertTrue(m.election_received(1, 0))
        self.assertEqual((glue.calls, m.role), ([("coordinator", 1, 3)], T))

    def test_from_higher_or_stranger_is_not_answered(self):
        m, glue, _ = make(2)
        self.assertFalse(m.election_received(3, 0))
        self.assertFalse(m.election_received(9, 0))
        self.assertEqual((m.role, glue.calls), (F, []))


class ElectionObjectionTests(SynchronousTestCase):
    """I8b: a follower of a coordinator above it objects to a lower peer's election
    (the glue confirms that coordinator first); the lower peer stands down."""

    def test_a_follower_of_a_coordinator_above_names_it(self):
        m, glue, _ = make(2, (1, 2, 3, 4))
        self.assertIsNone(m.objection_to_election(1))     # follows no one: Bully
        m.coordinator_received(4, 4)
        self.assertEqual(m.objection_to_election(1), 4)   # the glue pings 4 first
        self.assertIsNone(m.objection_to_election(3))     # not from below
        self.assertIsNone(m.objection_to_election(9))     # not a member
        self.assertEqual((m.role, glue.of("election")), (F, []))   # asking stands no one

    def test_a_coordinator_below_is_no_reason(self):
        m, _, _ = make(3, (1, 2, 3))
        m.coordinator_received(2, 2)       # (it will bully 2; meanwhile it follows it)
        self.assertIsNone(m.objection_to_election(1))
        m, _, _ = coordinator_of(3)
        self.assertIsNone(m.objection_to_election(1))     # the coordinator re-announces

    def test_an_objection_stands_the_asker_down_without_an_epoch(self):
        m, glue, clock = make(1, (1, 2, 3), answer_timeout_s=0.3, coordinator_timeout_s=0.8)
        m.coordinator_received(3, 3)
        m.start_election("coordinator 3 failed")
        self.assertEqual(glue.of("election"), [(2, 3), (3, 3)])
        glue.calls.clear()
        m.election_objected(2, 3)          # 2 follows 3, and 3 answered its ping
        self.assertEqual((m.role, m.coordinator, m.epoch), (F, None, 3))
        self.assertEqual((m.vetoed, m.cannot_serve), ((2, 3), True))
        self.assertEqual(glue.calls, [("role", F, None, 3)])
        m.election_send_failed(3)          # 3's answer never came: changes nothing
        self.assertEqual((m.role, glue.prevotes), (F, []))
        clock.advance(0.8)                 # asks again
        self.assertEqual((m.role, glue.of("election")), (E, [(2, 3), (3, 3)]))
        self.assertTrue(m.coordinator_received(3, 3))   # the cut healed
        self.assertEqual((m.role, m.coordinator, m.vetoed), (F, 3, None))

    def test_an_objection_after_an_ok_or_in_a_coordinators_name_below_changes_nothing(self):
        m, _, _ = make(1, (1, 2, 3))
        m.start_election("start-up")
        m.answer_received(3, 0)            # 3 answered first: waiting for its announcement
        m.election_objected(2, 3)
        self.assertEqual((m.role, m.vetoed), (A, None))
        m, _, _ = make(2, (1, 2, 3, 4))
        m.start_election("start-up")
        m.election_objected(3, 1)          # not above this replica: a failed answer
        self.assertEqual((m.role, m.vetoed), (E, None))
        m.election_objected(4, 4)
        self.assertEqual((m.role, m.vetoed), (F, (4, 4)))


class CoordinatorReceivedTests(SynchronousTestCase):
    def test_accept_from_higher(self):
        m, glue, clock = make(1)
        m.start_election("start-up")
        m.answer_received(3, 0)
        self.assertTrue(m.coordinator_received(3, 3))
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch, m.epoch), (F, 3, 3, 3))
        self.assertEqual((m.public_role, m.serving_as), ("follower", 3))
        self.assertEqual(glue.of("role")[-1], (F, 3, 3))
        self.assertEqual(clock.getDelayedCalls(), [])  # coordinator timer cancelled

    def test_duplicate_is_quiet(self):
        m, glue, _ = make(1)
        self.assertTrue(m.coordinator_received(3, 3))
        self.assertTrue(m.coordinator_received(3, 3))
        self.assertEqual(glue.of("role"), [(F, 3, 3)])

    def test_stale_epoch_rejected(self):
        """I3."""
        m, glue, _ = make(1, epoch=5)
        self.assertFalse(m.coordinator_received(3, 3))   # 3's own epoch, but below 5
        self.assertEqual((m.role, m.coordinator, m.epoch, glue.calls), (F, None, 5, []))

    def test_equal_epoch_accepted(self):
        """E.g. a follower that restarted: it persisted the epoch, not the coordinator."""
        m, _, _ = make(1, epoch=6)
        self.assertTrue(m.coordinator_received(2, 6))

    def test_epoch_held_by_another_coordinator_rejected(self):
        """I3 and I1b: two announcements with one epoch; the later one must re-elect
        above it (and can no longer happen honestly: 6 is 2's epoch, not 3's)."""
        m, glue, _ = make(1)
        self.assertTrue(m.coordinator_received(2, 6))
        self.assertFalse(m.coordinator_received(3, 6))
        self.assertEqual((m.coordinator, m.coordinator_epoch), (2, 6))
        self.assertTrue(m.coordinator_received(3, 7))

    def test_coordinator_steps_down_for_higher(self):
        m, glue, clock = coordinator_of(2)   # epoch 2
        self.assertTrue(m.coordinator_received(3, 3))
        self.assertEqual((m.role, m.coordinator), (F, 3))
        clock.advance(0)  # the step-down's election on the next turn: it has a coordinator
        self.assertEqual((m.role, m.coordinator, glue.of("election")), (F, 3, []))

    def test_coordinator_rejects_same_epoch_from_higher(self):
        """It holds that epoch itself; the higher one re-elects above it.  (I1b: epoch 2
        is 2's own, so 3 cannot have won it.)"""
        m, glue, _ = coordinator_of(2)
        self.assertFalse(m.coordinator_received(3, 2))
        self.assertEqual((m.role, m.coordinator_epoch, glue.calls), (S, 2, []))

    def test_lower_is_bullied_with_higher_epoch(self):
        """I5: reject, then win above the lower one's epoch."""
        m, glue, _ = make(3, epoch=1)
        self.assertFalse(m.coordinator_received(1, 9))
        e = own_epoch(2, 3)   # 11: 3's least own epoch above 9
        self.assertEqual((m.role, m.epoch, m.coordinator_epoch), (T, e, e))
        self.assertIn(("coordinator", 1, e), glue.calls)

    def test_lower_with_stale_epoch_is_answered_with_ours(self):
        """An announcement older than our own epoch was sent before the lower one saw
        it: rejected (the NO carries our epoch, which makes it step down, I7) and our
        announcement sent to it, as for an ELECTION; no new election.  (It started one:
        in a chaos run a returning replica met dozens of queued re-announcements and
        raced its epoch up by 150 in a second, restarting its take-over each time.)"""
        m, glue, _ = coordinator_of(3, epoch=5)   # won 7
        glue.calls.clear()
        self.assertIs(m.coordinator_received(1, 5), Announcement.TOLD_OUR_TERM)
        self.assertEqual((m.role, m.coordinator_epoch, m.epoch), (S, 7, 7))
        self.assertEqual(glue.calls, [("coordinator", 1, 7)])

    def test_the_verdict_says_which_claims_need_nothing_more(self):
        """The replica holds an election for a second coordinator unless the node
        followed it (ACCEPTED) or told it our newer term (TOLD_OUR_TERM): a lower
        replica's claim of a newer term, or of one this replica never won, is plainly
        REJECTED (and bullied); only ACCEPTED is true, as the peer port answers OK."""
        m, _, _ = make(2)
        self.assertIs(m.coordinator_received(3, 3), Announcement.ACCEPTED)
        self.assertIs(m.coordinator_received(3, 3), Announcement.ACCEPTED)  # again
        self.assertIs(m.coordinator_received(3, 2), Announcement.REJECTED)  # not 3's
        self.assertIs(m.coordinator_received(1, 1), Announcement.REJECTED)  # lower
        self.assertEqual([bool(v) for v in Announcement], [True, False, False])
        c, _, _ = coordinator_of(3, epoch=5)    # won 7
        self.assertIs(c.coordinator_received(1, 9), Announcement.REJECTED)  # newer: bullied

    def test_stale_announcements_do_not_restart_a_take_over(self):
        m, glue, _ = make(3, epoch=5)
        m.start_election("came back")             # wins 7 at once: taking over
        self.assertEqual((m.role, m.coordinator_epoch), (T, 7))
        for _ in range(40):                        # 2's queued re-announcements of 6
            self.assertFalse(m.coordinator_received(2, 6))
        self.assertEqual((m.role, m.coordinator_epoch, m.epoch), (T, 7, 7))

    def test_lower_with_newer_epoch_is_still_bullied(self):
        """I5: it won an epoch this coordinator never saw: elect above it."""
        m, glue, _ = coordinator_of(3, epoch=5)   # won 7
        self.assertFalse(m.coordinator_received(1, 9))
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(2, 3)))   # 11

    def test_lower_while_follower_starts_election(self):
        m, glue, _ = make(2)
        self.assertTrue(m.coordinator_received(3, 3))
        self.assertFalse(m.coordinator_received(1, 1))
        self.assertEqual((m.role, glue.of("election")), (E, [(3, 3)]))


class RejectedTests(SynchronousTestCase):
    def test_lower_with_newer_epoch_forces_reelection(self):
        m, glue, clock = coordinator_of(3)
        m.coordinator_rejected(1, 9)
        # Changed on purpose: a newer epoch makes a coordinator step down at once (I7)
        # and re-elect on the next turn (BullyElection re-elected inside the call).
        self.assertEqual((m.role, m.coordinator, m.epoch), (F, None, 9))
        clock.advance(0)
        e = own_epoch(2, 3)   # 11
        self.assertEqual((m.role, m.epoch, m.coordinator_epoch), (T, e, e))
        self.assertEqual(glue.of("coordinator"), [(1, e), (2, e)])

    def test_lower_with_same_epoch_forces_reelection_at_once(self):
        """Another coordinator holds our epoch there (I3): re-elect above it."""
        m, glue, _ = coordinator_of(3)   # epoch 3
        m.coordinator_rejected(1, 3, 3)
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(1, 3)))   # 7

    def test_rejection_of_an_older_announcement_ignored(self):
        m, glue, clock = coordinator_of(3, epoch=4)  # announced 7
        m.coordinator_rejected(1, 9, 7)  # re-elected (next turn): announced 11
        clock.advance(0)
        self.assertEqual((m.role, m.coordinator_epoch), (T, 11))
        glue.calls.clear()
        m.coordinator_rejected(2, 9, 7)  # also about the announcement of 7: too late
        self.assertEqual((m.role, m.coordinator_epoch, glue.calls), (T, 11, []))
        take_over(m, glue, accept=[1])   # and 2's answer to 11 is still awaited
        self.assertEqual(m.role, T)
        m.coordinator_accepted(2, 11)
        m.pull_done(2, 11, True)
        self.assertEqual(m.role, S)

    def test_rejection_from_higher_waits_to_be_bullied(self):
        m, glue, _ = coordinator_of(2)   # epoch 2
        m.coordinator_rejected(3, 2, 2)
        self.assertEqual((m.role, glue.calls), (S, []))

    def test_rejection_from_higher_with_newer_epoch_steps_down(self):
        # Changed on purpose: BullyElection stayed coordinator (in its old epoch) until
        # bullied; a newer epoch now makes a coordinator step down at once (I7), and it
        # elects on the next turn, asking the higher one.
        m, glue, clock = coordinator_of(2)
        m.coordinator_rejected(3, 9)
        self.assertEqual((m.role, m.epoch), (F, 9))
        self.assertEqual(glue.calls, [("persist", 9), ("role", F, None, 9)])
        clock.advance(0)
        self.assertEqual((m.role, glue.of("election")), (E, [(3, 9)]))

    def test_ignored_unless_coordinator(self):
        m, glue, _ = make(1)
        m.coordinator_received(3, 3)
        m.coordinator_rejected(2, 3)
        self.assertEqual((m.role, m.coordinator), (F, 3))


class FailureAndStopTests(SynchronousTestCase):
    def test_coordinator_failed_makes_follower_elect(self):
        m, glue, _ = make(1)
        m.coordinator_received(3, 3)
        m.coordinator_failed()
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch), (E, None, None))
        self.assertEqual(glue.of("election"), [(2, 3), (3, 3)])

    def test_coordinator_failed_ignored_otherwise(self):
        m, glue, _ = coordinator_of(3)
        m.coordinator_failed()
        self.assertEqual((m.role, glue.calls), (S, []))
        m, glue, _ = make(1)
        m.start_election("x")
        m.coordinator_failed()
        self.assertEqual(len(glue.of("election")), 2)

    def test_stop_cancels_timers_and_ignores_inputs(self):
        m, glue, clock = coordinator_of(2)   # epoch 2
        m.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(m.election_received(1, 5))
        self.assertFalse(m.coordinator_received(3, 7))
        m.coordinator_rejected(1, 5)
        # Changed on purpose: STOPPED is a role now, and reported like any other.
        self.assertEqual((glue.calls, m.epoch), ([("role", X, None, 2)], 2))


class StopTests(SynchronousTestCase):
    def test_stopped_ignores_inputs_and_releases_waiters(self):
        m, glue, clock = make(1, quorum=2, lease_s=1.0)
        m.start_election("x")
        waiting = serving(m)
        change = m.wait_for_change(5)
        m.stop()
        self.assertIsNone(self.successResultOf(waiting))
        self.assertTrue(self.successResultOf(change))
        self.assertEqual((m.role, m.public_role, m.cannot_serve), (X, "stopped", True))
        self.assertIsNone(m.follows)
        glue.calls.clear()
        m.start_election("x")
        m.answer_received(3, 4)
        m.election_send_failed(2)
        m.coordinator_received(3, 7)
        m.coordinator_accepted(2, 1)
        m.coordinator_send_failed(2, 1)
        m.coordinator_rejected(2, 4, 1)
        m.pull_done(2, 1, True)
        m.coordinator_failed()
        m.epoch_seen(9)
        m.set_candidacy(Candidacy.NO, "x")
        m.contact(2)
        m.poke()
        self.assertEqual((m.role, m.epoch, m.candidacy, glue.calls), (X, 0, Candidacy.YES, []))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(self.successResultOf(m.wait_for_change(5)))
        self.assertIsNone(self.successResultOf(serving(m)))


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
        clock.advance(0.3)  # won, epoch 2
        m.coordinator_received(3, 7)
        m.answer_received(3, 2)
        m.coordinator_failed()
        m.election_send_failed(3)  # won, epoch 10
        m.coordinator_rejected(1, 13)  # steps down; re-elects on the next turn
        clock.advance(0)
        clock.advance(0.3)  # won, epoch 14
        m.coordinator_received(1, 17)  # lower, with an epoch it won unseen: bully again
        clock.advance(0.3)
        persisted = [p for (p,) in glue.of("persist")]
        self.assertEqual(persisted, sorted(set(persisted)))
        won = [e for (role, _, e) in glue.of("role") if role is T]
        self.assertEqual(won, [own_epoch(r, 2) for r in (0, 2, 3, 4)])   # 2, 10, 14, 18
        self.assertEqual((persisted[-1], m.coordinator_epoch), (18, 18))

    def test_epoch_above_the_bound_ignored(self):
        """I7's second line: the wire refuses it first (peerwire)."""
        m, glue, _ = coordinator_of(3)
        m.epoch_seen(MAX_EPOCH + 1)
        self.assertEqual((m.role, m.epoch, glue.calls), (S, 3, []))
        m.epoch_seen(MAX_EPOCH)
        self.assertEqual((m.role, m.epoch), (F, MAX_EPOCH))


@st.composite
def win_histories(draw):
    """(members, my_id, start epoch, ops): members any distinct ids in 1..30 (not only
    1..N); ops are ("seen", epoch) or ("win",)."""
    members = draw(st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=6,
                            unique=True))
    my_id = draw(st.sampled_from(members))
    start = draw(st.integers(min_value=0, max_value=200))
    op = st.one_of(st.just(("win",)),
                   st.tuples(st.just("seen"), st.integers(min_value=0, max_value=400)))
    return members, my_id, start, draw(st.lists(op, max_size=30))


class OwnEpochTests(SynchronousTestCase):
    """I1b: an epoch names one coordinator.  Epochs are ``round * stride + id`` with
    stride = highest member id + 1: a replica wins only its own epochs, and rejects an
    announcement of an epoch that is not the announcer's own."""

    @settings(max_examples=300, deadline=None)
    @given(win_histories())
    def test_won_epochs_are_own_rising_and_above_everything_seen(self, history):
        members, my_id, start, ops = history
        stride = max(members) + 1
        m, glue, _ = make(my_id, members, epoch=start)
        seen, won = start, []
        for op in ops:
            if op[0] == "seen":
                m.epoch_seen(op[1])
                seen = max(seen, op[1])
                continue
            m.start_election("x")                      # wins at once, or asks higher ids
            for peer in sorted(i for i in members if i > my_id):
                m.election_send_failed(peer)           # ... which are all down
            epoch = m.coordinator_epoch
            self.assertTrue(m.role.is_coordinator)     # SERVING at once when alone
            self.assertEqual((m.coordinator, m.epoch), (my_id, epoch))
            self.assertEqual(epoch % stride, my_id)    # its own
            self.assertGreater(epoch, seen)            # above every epoch seen (and won)
            self.assertLessEqual(epoch - stride, seen)   # the least such epoch
            won.append(epoch)
            seen = epoch
        self.assertEqual(won, sorted(set(won)))        # strictly increasing
        persisted = [p for (p,) in glue.of("persist")]
        self.assertEqual(persisted, sorted(set(persisted)))
        for epoch in won:   # durable before announced (I1)
            announced = [i for i, c in enumerate(glue.calls) if c[:1] == ("coordinator",)
                         and c[2] == epoch]
            persisted_at = glue.calls.index(("persist", epoch))
            self.assertLess(persisted_at, min(announced, default=len(glue.calls)))

    def test_examples_of_own_epochs(self):
        """Members (1, 2, 3): stride 4.  From epoch 0, 3 wins 3; above 3, 2 wins 6 and 1
        wins 5; 3 then wins 7; above 7 (its own), 3 wins 11, never 7 again."""
        for my_id, seen, expected in ((3, 0, 3), (2, 3, 6), (1, 3, 5), (3, 6, 7),
                                      (3, 7, 11), (1, 4, 5), (1, 5, 9)):
            m, _, clock = make(my_id, epoch=seen)
            m.start_election("x")
            clock.advance(m._answer_timeout_s)
            self.assertEqual((my_id, seen, m.coordinator_epoch), (my_id, seen, expected))

    def test_foreign_epoch_is_rejected(self):
        """An announcement whose epoch is not the announcer's own (6 is 2's, not 3's)
        is rejected and changes nothing; its own epoch above that is accepted."""
        m, glue, _ = make(1)
        with capturedLogs() as events:
            self.assertFalse(m.coordinator_received(3, 6))
        self.assertEqual((m.role, m.coordinator, m.epoch, glue.calls), (F, None, 0, []))
        self.assertIn("cannot be its own", events[0]["log_format"])
        self.assertEqual((events[0]["peer"], events[0]["epoch"]), (3, 6))
        for foreign in (1, 2, 4, 5, 8):
            self.assertFalse(m.coordinator_received(3, foreign))
        self.assertTrue(m.coordinator_received(3, 7))
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch), (F, 3, 7))

    def test_foreign_epoch_rejected_by_a_follower_and_a_coordinator(self):
        m, glue, _ = make(1)
        self.assertTrue(m.coordinator_received(3, 3))
        glue.calls.clear()
        self.assertFalse(m.coordinator_received(2, 7))     # 7 is 3's
        self.assertFalse(m.coordinator_received(3, 10))    # 10 is 2's
        self.assertEqual((m.role, m.coordinator, m.coordinator_epoch, glue.calls),
                         (F, 3, 3, []))
        m, glue, _ = coordinator_of(3)
        self.assertFalse(m.coordinator_received(1, 6))     # lower, and not 1's epoch
        self.assertFalse(m.coordinator_received(2, 9))
        self.assertEqual((m.role, m.coordinator_epoch), (S, 3))

    def test_announcement_above_the_bound_is_rejected(self):
        """Even when it is the announcer's own (2**48 + 3 for 3, stride 4)."""
        m, glue, _ = make(1)
        own_above = MAX_EPOCH + (3 - MAX_EPOCH) % 4
        self.assertEqual((own_above % 4, own_above > MAX_EPOCH), (3, True))
        self.assertFalse(m.coordinator_received(3, own_above))
        self.assertEqual((m.role, m.coordinator, m.epoch, glue.calls), (F, None, 0, []))

    def test_acceptance_from_a_stranger_ignored(self):
        m, glue, _ = make(3, quorum=2)
        m.start_election("x")                 # epoch 3
        m.coordinator_accepted(9, 3)          # not a member
        m.coordinator_accepted(3, 3)          # itself
        self.assertEqual((m.role, glue.of("pull"), m.take_over_progress()), (T, [], (1, 2)))
        m.coordinator_accepted(1, 3)
        self.assertEqual(glue.of("pull"), [(1, 3)])

    def test_members_2_5_9(self):
        """Ids that are not 1..N: stride 10.  5 wins 5 while 9 is silent; 9's 9 makes it
        follow 9, and 9's foreign 12 is rejected; once 9 fails, 5 wins 15, and 2, above
        that, would win 22."""
        m, glue, clock = make(5, (2, 5, 9))
        m.start_election("x")
        self.assertEqual(glue.of("election"), [(9, 0)])
        clock.advance(m._answer_timeout_s)
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(0, 5, stride=10)))
        self.assertEqual(glue.of("coordinator"), [(2, 5), (9, 5)])
        self.assertFalse(m.coordinator_received(9, 12))
        self.assertTrue(m.coordinator_received(9, 9))
        self.assertEqual((m.role, m.coordinator, m.epoch), (F, 9, 9))
        m.coordinator_failed()
        clock.advance(m._answer_timeout_s)
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(1, 5, stride=10)))
        low, glue, _ = make(2, (2, 5, 9), epoch=15)
        low.start_election("x")
        low.election_send_failed(5)
        low.election_send_failed(9)
        self.assertEqual(low.coordinator_epoch, own_epoch(2, 2, stride=10))
        self.assertTrue(low.coordinator_received(9, 29))
        self.assertEqual((low.role, low.coordinator), (F, 9))



class StepDownTests(SynchronousTestCase):
    """I7: a newer epoch makes a coordinator step down before anything else is handled,
    and it elects on the next turn."""

    def test_serving_steps_down_synchronously(self):
        m, glue, clock = coordinator_of(3)
        m.epoch_seen(5)
        self.assertEqual((m.role, m.coordinator, m.serving_as), (F, None, None))
        self.assertFalse(m.role.is_coordinator)
        self.assertEqual(glue.calls, [("persist", 5), ("role", F, None, 5)])
        clock.advance(0)
        # the highest: wins at once, with its own epoch above 5
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(1, 3)))

    def test_taking_over_steps_down_synchronously(self):
        m, glue, clock = make(3)
        m.start_election("x")          # epoch 3
        m.coordinator_accepted(1, 3)   # a pull in flight
        self.assertEqual(glue.of("pull"), [(1, 3)])
        m.epoch_seen(4)
        self.assertFalse(m.role.is_coordinator)
        self.assertIsNone(m.take_over_progress())
        m.pull_done(1, 3, True)        # about the old epoch: ignored
        self.assertEqual(m.role, F)
        clock.advance(0)
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(1, 3)))   # 7

    def test_lower_coordinator_asks_the_higher_next_turn(self):
        m, glue, clock = coordinator_of(2)
        m.epoch_seen(7)
        self.assertEqual(glue.of("election"), [])
        clock.advance(0)
        self.assertEqual((m.role, glue.of("election")), (E, [(3, 7)]))

    def test_no_election_if_it_found_a_coordinator_meanwhile(self):
        m, glue, clock = coordinator_of(2)
        m.epoch_seen(7)
        m.coordinator_received(3, 7)
        clock.advance(0)
        self.assertEqual((m.role, m.coordinator, glue.of("election")), (F, 3, []))

    def test_follower_does_not_step_down(self):
        m, glue, clock = make(1)
        m.coordinator_received(3, 3)
        m.epoch_seen(4)
        clock.advance(0)
        self.assertEqual((m.role, m.coordinator, m.epoch), (F, 3, 4))


class TakeOverHoldersTests(SynchronousTestCase):
    """confirm_holders (quorum mode): a take-over serves only once quorum - 1 of the
    peers it pulled hold every write it holds; the others are asked to catch up."""

    def taking_over(self, held_by=()):
        m, glue, _ = make(5, (1, 2, 3, 4, 5), quorum=3, confirm_holders=True)
        glue.held_by = set(held_by)
        m.start_election("x")
        e = m.coordinator_epoch
        for peer in (4, 3):
            m.coordinator_accepted(peer, e)
            m.pull_done(peer, e, True)
        for peer in (1, 2):
            m.coordinator_send_failed(peer, e)
        return m, glue, e

    def test_serves_at_once_when_the_pulled_peers_hold_everything(self):
        m, glue, e = self.taking_over(held_by={3, 4})
        self.assertEqual((m.role, glue.of("catch_up")), (S, []))

    def test_waits_for_a_pulled_peer_that_lacks_a_write_to_catch_up(self):
        m, glue, e = self.taking_over(held_by={4})
        self.assertEqual((m.role, glue.of("catch_up")), (T, [(3, e)]))
        m.coordinator_accepted(3, e)           # a late duplicate answer changes nothing
        self.assertEqual((m.role, glue.of("catch_up")), (T, [(3, e)]))
        glue.held_by.add(3)
        m.caught_up(3, e, True)
        self.assertEqual(m.role, S)

    def test_a_failed_catch_up_drops_the_peer_until_it_is_pulled_again(self):
        m, glue, e = self.taking_over(held_by={4})
        m.caught_up(3, e, False)
        self.assertEqual((m.role, m.cannot_serve), (T, True))    # 2 of 3: refusing
        m.coordinator_accepted(3, e)           # the next re-announcement's answer
        self.assertEqual(glue.of("pull")[-1], (3, e))
        m.pull_done(3, e, True)
        self.assertEqual(glue.of("catch_up"), [(3, e), (3, e)])
        glue.held_by.add(3)
        m.caught_up(3, e, True)
        self.assertEqual(m.role, S)

    def test_a_catch_up_of_another_epoch_is_ignored(self):
        m, glue, e = self.taking_over(held_by={4})
        glue.held_by.add(3)
        m.caught_up(3, e - 1, True)
        self.assertEqual(m.role, T)

    def test_off_by_default_and_with_a_quorum_of_one(self):
        m, glue, _ = make(3, quorum=2)
        glue.held_by = set()
        m.start_election("x")
        m.coordinator_accepted(1, 3)
        m.pull_done(1, 3, True)
        m.coordinator_send_failed(2, 3)
        self.assertEqual((m.role, glue.of("catch_up")), (S, []))
        m, glue, _ = make(3, confirm_holders=True)
        m.start_election("x")
        for peer in (1, 2):
            m.coordinator_accepted(peer, 3)
            m.pull_done(peer, 3, True)
        self.assertEqual((m.role, glue.of("catch_up")), (S, []))


class TakeOverTests(SynchronousTestCase):
    def test_waits_while_its_history_is_not_ready_and_asks_again_at_each_answer(self):
        """A fresh cluster's first coordinator makes the cluster id only once every
        member was pulled from (replica.py, history_ready): until then it does not serve."""
        m, glue, _ = make(3)
        glue.history_missing = True
        m.start_election("x")
        e = m.coordinator_epoch
        m.coordinator_accepted(2, e)
        m.pull_done(2, e, True)
        m.coordinator_send_failed(1, e)
        self.assertEqual((m.role, glue.of("history")), (T, [((2,),)]))
        glue.history_missing = False
        m.coordinator_accepted(1, e)               # the next re-announcement's answer
        m.pull_done(1, e, True)
        self.assertEqual((m.role, glue.of("history")[-1]), (S, ((1, 2),)))

    def test_needs_quorum_acceptances_and_pulls(self):
        m, glue, _ = make(5, (1, 2, 3, 4, 5), quorum=3)
        m.start_election("x")
        e = own_epoch(0, 5, stride=6)
        self.assertEqual((m.role, m.public_role, m.serving_as), (T, "coordinator", None))
        self.assertEqual(m.take_over_progress(), (1, 3))
        self.assertEqual(glue.of("pull"), [])
        m.coordinator_accepted(4, e)
        m.coordinator_accepted(4, e)   # a duplicate answer: pulled once
        self.assertEqual((glue.of("pull"), m.take_over_progress()), ([(4, e)], (1, 3)))
        m.pull_done(4, e, True)
        self.assertEqual(m.take_over_progress(), (2, 3))
        m.coordinator_accepted(3, e)
        m.pull_done(3, e, True)
        self.assertEqual((m.role, m.take_over_progress()), (T, (3, 3)))  # 1, 2 unanswered
        m.coordinator_send_failed(1, e)
        self.assertEqual(m.role, T)
        m.coordinator_send_failed(2, e)
        self.assertEqual((m.role, m.serving_as, m.take_over_progress()), (S, 5, None))
        self.assertEqual(glue.of("role"), [(T, 5, e), (S, 5, e)])

    def test_accepted_but_not_pulled_does_not_count(self):
        m, glue, _ = make(3, quorum=2)
        m.start_election("x")          # epoch 3
        m.coordinator_accepted(1, 3)
        m.coordinator_send_failed(2, 3)
        self.assertEqual((m.role, m.cannot_serve), (T, False))   # the pull is in flight
        m.pull_done(1, 3, True)
        self.assertEqual(m.role, S)

    def test_default_mode_waits_for_every_answer(self):
        """quorum = 1: it serves alone, but only once every announcement is settled
        (accepted and pulled, rejected, or failed), so it has pulled from everyone up."""
        m, glue, _ = make(3)
        m.start_election("x")          # epoch 3
        m.coordinator_accepted(2, 3)
        m.pull_done(2, 3, True)
        self.assertEqual(m.role, T)
        m.coordinator_send_failed(1, 3)
        self.assertEqual(m.role, S)

    def test_a_dropped_link_settles_its_announcement(self):
        """A crashed replica: its announcement is still unanswered when its link drops;
        the take-over stops waiting for it then, not answer_timeout later."""
        m, glue, clock = make(2, answer_timeout_s=0.3)
        m.start_election("coordinator 3 failed")
        clock.advance(0.3)             # 3 silent: 2 wins
        m.coordinator_accepted(1, m.coordinator_epoch)
        m.pull_done(1, m.coordinator_epoch, True)
        self.assertEqual(m.role, T)    # 3's answer is due
        m.peer_down(1, silent_s=math.inf)   # settled already: nothing changes
        self.assertEqual(m.role, T)
        m.peer_down(3, silent_s=math.inf)
        self.assertEqual((m.role, clock.seconds()), (S, 0.3))

    def test_another_calls_timeout_does_not_settle_an_announcement(self):
        """A ping to a peer timed out while its announcement is unanswered: a loaded
        machine, not a dead peer, as like as not.  The take-over waits for the
        announcement's own answer and pulls from the peer (it may hold writes this
        replica lacks); serving at once, a quorum of 1 skipped that pull (CI)."""
        m, glue, clock = make(3, answer_timeout_s=1.5)
        m.start_election("this process was paused")      # top replica: wins at once
        epoch = m.coordinator_epoch
        m.peer_down(1, 0.2)
        m.peer_down(2, 0.2)            # anti-entropy pings, 0.2 s, lost to the load
        self.assertEqual((m.role, m.take_over_progress()), (T, (1, 1)))
        clock.advance(0.6)
        m.coordinator_accepted(2, epoch)                 # the peer was alive after all
        self.assertEqual(glue.of("pull"), [(2, epoch)])
        m.pull_done(2, epoch, True)
        self.assertEqual(m.role, T)
        m.peer_down(1, 1.5)            # silent as long as the announcement may take
        self.assertEqual(m.role, S)

    def test_peer_down_in_quorum_mode_still_needs_the_quorum(self):
        m, glue, _ = make(3, quorum=2)
        m.start_election("x")          # epoch 3
        m.peer_down(1, silent_s=math.inf)
        m.peer_down(2, silent_s=math.inf)
        self.assertEqual((m.role, m.cannot_serve), (T, True))
        m.coordinator_accepted(1, 3)
        m.pull_done(1, 3, True)
        self.assertEqual((m.role, m.cannot_serve), (S, False))

    def test_rejection_from_higher_settles(self):
        m, glue, _ = make(2)
        m.start_election("x")
        m.election_send_failed(3)      # 3 silent: 2 wins epoch 2
        m.coordinator_rejected(3, 2, 2)
        self.assertEqual(m.role, T)
        take_over(m, glue, accept=[1])
        self.assertEqual(m.role, S)

    def test_answers_about_another_epoch_ignored(self):
        m, glue, _ = make(3, epoch=4)
        m.start_election("x")          # epoch 7; 3 was its previous one
        m.coordinator_accepted(1, 3)
        m.coordinator_send_failed(2, 3)
        m.pull_done(1, 3, True)
        self.assertEqual((m.role, glue.of("pull"), m.take_over_progress()), (T, [], (1, 1)))

    def test_failed_pull_asked_again_at_the_next_reannouncement(self):
        m, glue, clock = make(3, quorum=2, reannounce_interval_s=1.0)
        m.start_election("x")          # epoch 3
        m.coordinator_accepted(1, 3)
        m.pull_done(1, 3, False)
        m.coordinator_send_failed(2, 3)
        self.assertEqual((m.role, m.cannot_serve), (T, True))
        glue.calls.clear()
        clock.advance(1.0)
        self.assertEqual(glue.of("coordinator"), [(1, 3), (2, 3)])   # 1 is asked again
        m.coordinator_accepted(1, 3)
        self.assertEqual(glue.of("pull"), [(1, 3)])
        m.pull_done(1, 3, True)
        self.assertEqual(m.role, T)          # 2's answer to the re-announcement is due
        m.coordinator_send_failed(2, 3)
        self.assertEqual((m.role, m.cannot_serve), (S, False))

    def test_reannounces_only_to_the_unsettled(self):
        m, glue, clock = make(4, (1, 2, 3, 4), quorum=3, reannounce_interval_s=1.0)
        m.start_election("x")
        take_over(m, glue, accept=[3], fail=[1, 2])
        glue.calls.clear()
        clock.advance(1.0)
        e = own_epoch(0, 4, stride=5)
        self.assertEqual(glue.of("coordinator"), [(1, e), (2, e)])

    def test_settled_but_short_fails_fast(self):
        """Quorum mode: every answer is in and no majority: refuse requests at once."""
        m, glue, clock = make(3, quorum=2, reannounce_interval_s=1.0)
        m.start_election("x")          # epoch 3
        waiting = serving(m)
        m.coordinator_send_failed(1, 3)
        self.assertNoResult(waiting)
        m.coordinator_send_failed(2, 3)
        self.assertEqual((m.role, m.cannot_serve), (T, True))
        self.assertIsNone(self.successResultOf(waiting))      # woken, and refused
        self.assertIsNone(self.successResultOf(serving(m)))   # at once
        clock.advance(1.0)                                     # re-announced: 1 accepts
        take_over(m, glue, accept=[1], fail=[2])
        self.assertEqual((m.role, m.cannot_serve), (S, False))
        self.assertEqual(self.successResultOf(serving(m)), 3)

    def test_short_in_default_mode_cannot_happen(self):
        m, glue, _ = make(3)
        m.start_election("x")
        take_over(m, glue, fail=[1, 2])
        self.assertEqual((m.role, m.cannot_serve), (S, False))


class LeaseTests(SynchronousTestCase):
    def lease_holder(self, **kw):
        """5 serving in a cluster of 5, quorum 3, lease 1 s, every peer accepted at 0."""
        return coordinator_of(5, (1, 2, 3, 4, 5), quorum=3, lease_s=1.0,
                              reannounce_interval_s=None, **kw)

    def test_steps_down_after_lease_without_majority_contact(self):
        m, glue, clock = self.lease_holder()
        m.contact(1)            # one peer is not a majority
        clock.advance(0.99)
        self.assertEqual(m.role, S)
        waiting = m.wait_for_change(5)
        clock.advance(0.01)
        self.assertTrue(m.cannot_serve)
        self.assertTrue(self.successResultOf(waiting))   # woken by the step-down
        self.assertNotEqual(m.role, S)
        # the highest: re-won, with its next own epoch (stride 6: 5, then 11)
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(1, 5, stride=6)))
        self.assertIsNone(self.successResultOf(serving(m)))

    def test_contact_from_a_majority_keeps_the_lease(self):
        m, glue, clock = self.lease_holder()
        for _ in range(20):
            clock.advance(0.5)
            m.contact(1)
            m.contact(2 if _ % 2 else 3)   # two peers within every second
        self.assertEqual((m.role, m.cannot_serve), (S, False))
        clock.advance(1.0)
        self.assertEqual((m.role, m.cannot_serve), (T, True))

    def test_contact_from_strangers_does_not_count(self):
        m, glue, clock = self.lease_holder()
        clock.advance(0.5)
        m.contact(9)
        m.contact(5)             # itself
        m.contact(1)
        clock.advance(0.5)
        self.assertEqual(m.role, T)

    def test_answers_count_as_contact(self):
        m, glue, clock = self.lease_holder()
        clock.advance(0.9)
        e = m.coordinator_epoch
        m.coordinator_accepted(1, e)   # e.g. an answer to a re-announcement
        m.coordinator_accepted(2, e)
        clock.advance(0.9)
        self.assertEqual(m.role, S)

    def test_no_lease_in_default_mode(self):
        m, glue, clock = coordinator_of(3, lease_s=1.0, reannounce_interval_s=None)
        clock.advance(100)
        self.assertEqual((m.role, clock.getDelayedCalls()), (S, []))

    def test_expiry_at_a_rounded_instant(self):
        """Regression: at 0.6 + 0.1 the clock reads 0.7 while 0.7 - 0.6 < 0.1, so the
        lease check re-armed a zero-delay timer forever (task.Clock hung)."""
        m, glue, clock = make(3, quorum=2, lease_s=0.1, reannounce_interval_s=None)
        clock.advance(0.6)
        m.start_election("x")
        take_over(m, glue, accept=[1], fail=[2])
        self.assertEqual(m.role, S)
        clock.advance(0.1)
        self.assertEqual((m.role, m.cannot_serve), (T, True))

    def test_take_over_outlasting_the_lease_does_not_serve(self):
        """Regression: SERVING used to count every replica pulled from as heard "now",
        however long ago it answered: here 1 answered at 0 and is silent since, yet 5
        served at 2.0 with a lease to 3.0.  Now it elects again instead."""
        m, glue, clock = make(5, (1, 2, 3, 4, 5), quorum=3, lease_s=1.0,
                              reannounce_interval_s=1.0)
        m.start_election("x")
        take_over(m, glue, accept=[1], fail=[2, 3, 4])
        clock.advance(2.0)             # two re-announcements to 2, 3, 4
        take_over(m, glue, accept=[2], fail=[3, 4])
        self.assertEqual((m.role, m.coordinator_epoch, m.cannot_serve),
                         (T, own_epoch(1, 5, stride=6), True))
        # The same, with 1 heard from meanwhile (a lease ping): it serves.
        m, glue, clock = make(5, (1, 2, 3, 4, 5), quorum=3, lease_s=1.0,
                              reannounce_interval_s=1.0)
        m.start_election("x")
        take_over(m, glue, accept=[1], fail=[2, 3, 4])
        clock.advance(1.5)
        m.contact(1)
        clock.advance(0.5)
        take_over(m, glue, accept=[2], fail=[3, 4])
        self.assertEqual((m.role, m.coordinator_epoch), (S, own_epoch(0, 5, stride=6)))


class PersistTests(SynchronousTestCase):
    def test_failed_persist_of_a_win_is_retried(self):
        """I1: nothing is announced until the epoch is durable; no stuck state."""
        m, glue, clock = make(3, reannounce_interval_s=None)
        glue.persist_failures = 2
        m.start_election("x")
        self.assertEqual((m.role, m.epoch, glue.of("coordinator")), (E, 0, []))
        clock.advance(PERSIST_RETRY_S)
        self.assertEqual((m.role, m.epoch), (E, 0))
        clock.advance(PERSIST_RETRY_S)
        self.assertEqual((m.role, m.epoch, glue.of("persist")), (T, 3, [(3,)] * 3))
        take_over(m, glue)
        self.assertEqual(m.role, S)
        self.assertEqual(clock.getDelayedCalls(), [])   # no timer left dangling
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    def test_failed_persist_of_a_seen_epoch_is_retried(self):
        m, glue, clock = make(1)
        glue.persist_failures = 2
        m.epoch_seen(5)
        m.epoch_seen(7)         # fails too; one retry timer only
        self.assertEqual((m.epoch, len(clock.getDelayedCalls())), (7, 1))
        clock.advance(PERSIST_RETRY_S)
        self.assertEqual(glue.of("persist"), [(5,), (7,), (7,)])   # the latest epoch
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    def test_stop_cancels_the_persist_retry(self):
        m, glue, clock = make(1)
        glue.persist_failures = 1
        m.epoch_seen(5)
        m.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.flushLoggedErrors(OSError)


class CandidacyTests(SynchronousTestCase):
    def test_no_never_stands(self):
        m, glue, clock = make(3, candidacy=Candidacy.NO)
        self.assertFalse(m.eligible)
        m.start_election("x")
        self.assertFalse(m.election_received(1, 0))   # the lower one need not wait
        m.coordinator_failed()
        clock.advance(10)
        self.assertEqual((m.role, glue.calls), (F, []))

    def test_no_follows_even_a_lower_coordinator(self):
        m, glue, _ = make(3, candidacy=Candidacy.NO)
        self.assertTrue(m.coordinator_received(1, 1))
        self.assertEqual((m.role, m.coordinator), (F, 1))
        m.coordinator_failed()
        self.assertEqual((m.role, m.coordinator, glue.of("election")), (F, None, []))

    def test_pending_answers_ok_but_does_not_elect(self):
        m, glue, clock = make(3, candidacy=Candidacy.PENDING)
        self.assertTrue(m.election_received(1, 2))   # the lower one waits for it
        m.start_election("x")
        clock.advance(10)
        self.assertEqual((m.role, m.epoch, glue.of("election")), (F, 2, []))
        self.assertEqual(glue.of("coordinator"), [])

    def test_yes_while_following_a_higher_does_not_elect(self):
        m, glue, _ = make(2, candidacy=Candidacy.PENDING)
        self.assertTrue(m.coordinator_received(3, 3))
        m.set_candidacy(Candidacy.YES, "caught up")
        self.assertEqual((m.role, m.coordinator, glue.of("election")), (F, 3, []))
        self.assertTrue(m.eligible)

    def test_yes_while_following_a_lower_elects(self):
        m, glue, clock = make(2, candidacy=Candidacy.NO)
        m.coordinator_received(1, 1)
        m.set_candidacy(Candidacy.YES, "caught up")
        self.assertEqual((m.role, glue.of("election")), (E, [(3, 1)]))
        clock.advance(0.3)
        self.assertEqual((m.role, m.coordinator_epoch), (T, own_epoch(0, 2)))

    def test_yes_without_coordinator_elects(self):
        m, glue, _ = make(3, candidacy=Candidacy.PENDING)
        m.set_candidacy(Candidacy.YES, "fresh cluster")
        self.assertEqual((m.role, m.epoch), (T, own_epoch(0, 3)))

    def test_withdrawing_steps_a_coordinator_down(self):
        m, glue, _ = coordinator_of(3)
        m.set_candidacy(Candidacy.NO, "x")
        self.assertEqual((m.role, m.coordinator), (F, None))
        m, glue, _ = make(1)
        m.start_election("x")
        m.set_candidacy(Candidacy.PENDING, "x")
        self.assertEqual(m.role, F)

    def test_same_candidacy_is_a_noop(self):
        m, glue, _ = make(1)
        m.set_candidacy(Candidacy.YES, "x")
        self.assertEqual(glue.calls, [])


class WaitTests(SynchronousTestCase):
    def test_when_serving_resolves_at_serving(self):
        m, glue, _ = make(3)
        waiting = serving(m)
        m.start_election("x")
        self.assertNoResult(waiting)       # taking over: not yet
        take_over(m, glue)
        self.assertEqual(self.successResultOf(waiting), 3)

    def test_when_serving_resolves_for_a_follower(self):
        m, _, _ = make(1)
        waiting = serving(m)
        m.start_election("x")
        m.answer_received(3, 0)
        self.assertNoResult(waiting)
        m.coordinator_received(3, 3)
        self.assertEqual(self.successResultOf(waiting), 3)
        self.assertEqual(self.successResultOf(serving(m)), 3)   # at once now

    def test_when_serving_gives_up_at_the_deadline(self):
        m, _, clock = make(1)
        waiting = defer.ensureDeferred(m.when_serving(2.0))
        m.poke()                           # woken, nothing changed: waits on
        clock.advance(1.99)
        self.assertNoResult(waiting)
        clock.advance(0.01)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(defer.ensureDeferred(m.when_serving(1.0))))

    def test_wait_for_change(self):
        m, _, clock = make(1)
        change = m.wait_for_change(1.0)
        m.start_election("x")
        self.assertTrue(self.successResultOf(change))
        change = m.wait_for_change(1.0)
        m.poke()
        self.assertTrue(self.successResultOf(change))
        change = m.wait_for_change(0.2)
        clock.advance(0.2)
        self.assertFalse(self.successResultOf(change))
        self.assertFalse(self.successResultOf(m.wait_for_change(0)))


class ReannounceTests(SynchronousTestCase):
    def test_coordinator_repeats_its_announcement(self):
        m, glue, clock = coordinator_of(3, reannounce_interval_s=1.0)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(glue.of("coordinator"), [(1, 3), (2, 3)] * 2)
        self.assertEqual(glue.of("role"), [])

    def test_stops_when_stepping_down(self):
        m, glue, clock = coordinator_of(2, reannounce_interval_s=1.0)
        self.assertTrue(m.coordinator_received(3, 3))
        clock.advance(5)
        self.assertEqual(glue.of("coordinator"), [])

    def test_can_be_disabled(self):
        m, glue, clock = coordinator_of(3, reannounce_interval_s=None)
        self.assertEqual(clock.getDelayedCalls(), [])


class ClusterTests(SynchronousTestCase):
    """Whole elections on the simulated network (no message loss unless stated)."""

    def coordinators(self, net):
        return [i for i, n in net.nodes.items() if n.machine.role is S]

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
        # stride 5: 4 won 4, then 3 its least own epoch above 4
        self.assertEqual(net.machine(1).coordinator_epoch, own_epoch(1, 3, stride=5))

    def test_highest_returns_and_bullies_with_higher_epoch(self):
        net = Network(4)
        net.start()
        net.converge()
        net.crash(4)
        net.converge()
        net.recover(4)
        net.converge()
        self.assertEqual(self.coordinators(net), [4])
        self.assertEqual(net.machine(1).coordinator_epoch, own_epoch(1, 4, stride=5))

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
        cluster = max(n.machine.epoch for n in net.nodes.values())
        net.recover(4)
        net.converge()
        self.assertEqual(self.coordinators(net), [4])
        won = [e for (_, i, e) in net.announced if i == 4]
        first = own_epoch(1, 4, stride=5)          # its least own epoch above stale 4
        self.assertEqual((stale, won[-2]), (own_epoch(0, 4, stride=5), first))
        self.assertLess(first, cluster)            # rejected: the cluster is past it
        self.assertGreater(net.machine(4).epoch, cluster)
        self.assertEqual(net.machine(4).epoch % 5, 4)

    def test_two_elections_at_once(self):
        net = Network(5)
        net.start()
        net.converge()
        net.crash(5)
        net.machine(1).coordinator_failed()
        net.machine(2).coordinator_failed()
        net.converge()
        self.assertEqual(self.coordinators(net), [4])
        self.assertEqual([a[1:] for a in net.announced],
                         [(5, own_epoch(0, 5, stride=6)), (4, own_epoch(1, 4, stride=6))])

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

    def test_quorum_mode_majority_side_serves(self):
        net = Network.quorum_mode(5)
        net.start()
        net.converge()
        net.crash(5)
        net.crash(4)
        net.converge()
        self.assertEqual(self.coordinators(net), [3])
        net.crash(3)     # 2 of 5 left: nobody can serve
        net.advance(5.0)
        self.assertEqual(self.coordinators(net), [])
        self.assertTrue(net.machine(2).cannot_serve)
        net.recover(5)
        net.converge()
        self.assertEqual(self.coordinators(net), [5])


class PauseTests(SynchronousTestCase):
    def test_a_paused_coordinator_stands_again_only_after_answer_timeout(self):
        """The peers' down reports that come right after a pause (calls sent before it,
        timed out on waking) must not settle the take-over: it starts answer_timeout
        later, with the evidence spent, and waits for the peers it then announces to."""
        m, glue, clock = coordinator_of(3, pause_s=1.0)
        clock.advance(2.0)                          # no tick: the process was frozen
        glue.calls.clear()                          # (its re-announcements meanwhile)
        assert m.serving_as is None and m.role is E
        m.peer_down(1)                              # stale: a call from before the pause
        m.peer_down(2)
        assert glue.of("coordinator") == [] and m.role is E
        clock.advance(m._answer_timeout_s)          # then it stands
        assert m.role is T
        assert sorted(p for p, _ in glue.of("coordinator")) == [1, 2]
        take_over(m, glue)                          # they answer: pulled from
        assert m.role is S and sorted(p for p, _ in glue.of("pull")) == [1, 2]
        assert m.serving_as == 3


class PauseNoticedByTheTickTests(SynchronousTestCase):
    def test_a_pause_noticed_by_the_heartbeat_loop_is_handled_alike(self):
        """On waking, the wiring's loop may run before any request is read: the tick
        then notices the pause, and the coordinator stands again after the wait too,
        not on the next request (by when a peer's ELECTION may have started an
        immediate take-over)."""
        m, glue, clock = coordinator_of(3, pause_s=1.0)
        clock.advance(2.0)
        glue.calls.clear()
        m.tick()
        assert m.role is E and glue.of("coordinator") == []
        m.start_election("election from 2")       # a lower replica's ELECTION, read next
        assert glue.of("coordinator") == []
        clock.advance(m._answer_timeout_s)
        assert m.role is T and sorted(p for p, _ in glue.of("coordinator")) == [1, 2]


class LateRejectionTests(SynchronousTestCase):
    def test_a_late_rejection_of_an_older_announcement_starts_no_election(self):
        """A coordinator that was paused gets, after it re-elected, the rejections of
        the announcements it queued before: each used to start another election (an
        election storm of 7 epochs in a second, seen in an integration run)."""
        m, glue, clock = coordinator_of(3)
        old = m.coordinator_epoch
        m.epoch_seen(old + 4)                 # it learnt a newer epoch and re-elected
        clock.advance(0)
        take_over(m, glue)
        current = m.coordinator_epoch
        assert current > old
        glue.calls.clear()
        m.coordinator_rejected(1, current, my_epoch=old)   # the answer to the old one
        clock.advance(0)
        assert m.coordinator_epoch == current and glue.of("election") == []
        assert m.role is Role.SERVING
