"""Simulated cluster: N ``replicad.node.Node`` machines on one task.Clock, a lossy network,
a HeartbeatMonitor per replica and, in quorum mode, the glue's lease heartbeat.

The network does what replicad/replica.py does with the node's actions: every request
carries the sender's epoch and the receiver feeds it to ``epoch_seen`` before handling
it; every answered call is a ``contact``; an ELECTION answered NO is a failed send; a
COORDINATOR is accepted, rejected (with the receiver's epoch) or fails; a take-over pull
succeeds at once.  Hypothesis generates crash / recover / link-cut schedules and checks:

- once messages flow again every live replica agrees on the highest live id within
  CONVERGENCE_BOUND_S, and epochs never decrease;
- (a) at most one coordinator per epoch, ever (I1b), in both modes: across the whole
  run, every epoch was held (TAKING_OVER or SERVING) by one id only, the id the epoch
  names (``epoch % stride``), and each replica's won epochs strictly rise; also with
  member ids that are not 1..N;
- in quorum mode, the safety invariants of SafetyChecker (I6: majority, lease, fencing
  of an older epoch), at every instant.

CounterexampleTests hold two schedules: (b) leases overlap briefly, which still happens
and is harmless for writes (fencing, checked), and the former counterexample to (a), two
coordinators with one epoch, kept as a regression test of the per-coordinator epochs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase

from replicad.detector import HeartbeatMonitor
from replicad.node import ANSWER_TIMEOUT_S as ANSWER_S
from replicad.node import COORDINATOR_TIMEOUT_S as COORDINATOR_S
from replicad.node import REANNOUNCE_INTERVAL_S as REANNOUNCE_S
from replicad.node import Node, Role

DELAY_S = 0.01  # one-way message latency
RPC_TIMEOUT_S = 0.2  # glue gives up on an unanswered ELECTION / COORDINATOR (<= answer)
PING_INTERVAL_S = 0.5
PING_TIMEOUT_S = 0.2  # < PING_INTERVAL_S, as detector.py requires
LEASE_S = 2 * PING_INTERVAL_S  # config.LEASE_HEARTBEATS ping intervals
EXPIRY_SLACK_S = 1e-9           # "the same instant" in sums of float seconds

# Bound on settling after the network heals (t = 0), each timer leg at its worst:
#   a follower of a dead coordinator notices it           ping interval + timeout  0.7 s
#   one AWAITING an announcement lost before the heal
#   re-elects, and that election times out                coordinator + answer    1.1 s
#   one that missed the winner's announcement hears the
#   re-announcement, rejects its stale epoch, and the
#   winner re-elects                                      re-announce + answer    1.3 s
#   the take-over waits for an announcement sent over a
#   link that was cut before the heal to time out         RPC timeout             0.2 s
# plus 20 message latencies: 3.5 s.  (Worst seen over ~4k random schedules: ~1.1 s.)
CONVERGENCE_BOUND_S = (
    PING_INTERVAL_S + PING_TIMEOUT_S + COORDINATOR_S + 2 * ANSWER_S + REANNOUNCE_S
    + RPC_TIMEOUT_S + 20 * DELAY_S
)
STEP_S = 0.01  # so the bound is CONVERGENCE_BOUND_S / STEP_S = 350 clock steps
SETTLE_S = 3 * REANNOUNCE_S  # agreement must then hold this long, with no role change


def own_epoch(round_: int, node_id: int, stride: int) -> int:
    """The epoch replica ``node_id`` wins in its ``round_``-th stride (0-based): epochs
    are ``round * stride + id`` with stride = highest member id + 1 (Node._next_epoch),
    so an epoch names its coordinator."""
    assert 0 <= node_id < stride
    return round_ * stride + node_id


def stride_of(ids: Iterable[int]) -> int:
    return max(ids) + 1


class Replica:
    """The replica glue (replica.py's NodeActions) for one incarnation of one replica."""

    def __init__(self, net: Network, node_id: int, epoch: int) -> None:
        self.net = net
        self.id = node_id
        self.alive = True
        self.followed: int | None = None
        self.heard: dict[int, float] = {}  # peer -> when it last answered this incarnation
        self.machine = Node(
            node_id, net.ids, self, net.clock, epoch=epoch, quorum=net.quorum,
            reannounce_interval_s=net.reannounce_interval_s, lease_s=net.lease_s,
        )
        self.monitor = HeartbeatMonitor(
            net.clock, PING_INTERVAL_S, self.ping, self.machine.coordinator_failed
        )
        self.lease_heartbeat = LoopingCall(self.lease_tick)
        self.lease_heartbeat.clock = net.clock

    def start(self) -> None:
        self.monitor.start()
        if self.net.quorum > 1:
            self.lease_heartbeat.start(PING_INTERVAL_S, now=False)
        self.machine.start_election("start-up")

    def crash(self) -> None:
        self.alive = False
        self.monitor.stop()
        if self.lease_heartbeat.running:
            self.lease_heartbeat.stop()
        self.machine.stop()

    def ping(self) -> Deferred[bool]:
        """The follower's heartbeat: the coordinator is alive if it answers the PING in
        time and still calls itself coordinator; the epoch it answers with is seen."""
        target = self.machine.coordinator
        if target is None or target == self.id:
            return succeed(True)
        d: Deferred[bool] = Deferred()

        def answered(status: tuple[str, int]) -> None:
            role, epoch = status
            self.machine.epoch_seen(epoch)
            d.callback(role == "coordinator")

        self.net.call(self, target, self.machine.epoch, self.net.on_ping, PING_TIMEOUT_S,
                      answered, lambda: d.callback(False))
        return d

    def lease_tick(self) -> None:
        """Quorum mode: a coordinator pings every peer each ping interval, which keeps
        its lease (an answer is a ``contact``) and teaches it any newer epoch."""
        if self.machine.role.is_coordinator:
            for peer in self.net.ids:
                if peer != self.id:
                    self.net.call(self, peer, self.machine.epoch, self.net.on_ping,
                                  PING_TIMEOUT_S, lambda s: self.machine.epoch_seen(s[1]),
                                  lambda: None)

    # -- NodeActions ---------------------------------------------------------------

    def send_election(self, peer_id: int, epoch: int) -> None:
        machine = self.machine

        def answered(answer: tuple[bool, int]) -> None:
            ok, peer_epoch = answer
            if ok:
                machine.answer_received(peer_id, peer_epoch)
            else:
                machine.epoch_seen(peer_epoch)
                machine.election_send_failed(peer_id)

        self.net.call(self, peer_id, epoch, self.net.on_election, RPC_TIMEOUT_S, answered,
                      lambda: machine.election_send_failed(peer_id))

    def send_prevote(self, peer_id: int, epoch: int) -> None:
        machine = self.machine
        self.net.prevote(self, peer_id, epoch, lambda c: machine.prevote_answered(peer_id, c),
                         lambda: machine.prevote_failed(peer_id))

    def send_coordinator(self, peer_id: int, epoch: int) -> None:
        machine = self.machine

        def answered(answer: tuple[bool, int]) -> None:
            ok, peer_epoch = answer
            if ok:
                machine.coordinator_accepted(peer_id, epoch)
            else:
                machine.coordinator_rejected(peer_id, peer_epoch, epoch)

        self.net.call(self, peer_id, epoch, self.net.on_coordinator, RPC_TIMEOUT_S,
                      answered, lambda: machine.coordinator_send_failed(peer_id, epoch))

    def pull_for_take_over(self, peer_id: int, epoch: int) -> None:
        self.net.pulls.append((self.id, peer_id, epoch))
        self.machine.pull_done(peer_id, epoch, True)   # instant, and it always works

    def history_ready(self, pulled: set[int]) -> bool:
        return True                      # every simulated replica has its history

    def role_changed(self, role: Role, coordinator: int | None, epoch: int) -> None:
        if role is Role.STOPPED:
            return
        if coordinator != self.followed:
            self.followed = coordinator
            self.monitor.reset()  # the glue contract: a new coordinator, a fresh detector
        net = self.net
        net.role_changes.append((net.clock.seconds(), self.id, role, coordinator, epoch))
        if role is Role.TAKING_OVER:
            net.announced.append((net.clock.seconds(), self.id, epoch))
        if role.is_coordinator:
            net.holders[epoch].add(self.id)
        if role is Role.SERVING:
            net.served[epoch].add(self.id)
        net.on_role_changed(self)

    def persist_epoch(self, epoch: int) -> None:
        assert epoch > self.net.disk[self.id], "persisted epochs must rise"
        self.net.disk[self.id] = epoch


class EventClock(Clock):
    """task.Clock whose ``advance`` runs each call with the clock reading that call's own
    time.  task.Clock moves to the end of the step first and runs every call due within
    it there, so a check made by one event could see another replica's lease as over
    while that replica's expiry timer, due earlier in the same step, had not run yet
    (a hypothesis example, 2026-11-30: three replicas, a lease read 10 ms late)."""

    def advance(self, amount: float) -> None:
        end = self.rightNow + amount
        while self.calls:
            self._sortCalls()
            due = self.calls[0].getTime()
            if due > end:
                break
            self.rightNow = max(self.rightNow, due)
            super().advance(0)
        self.rightNow = end


class Network:
    def __init__(
        self,
        members: int | Iterable[int],
        reannounce_interval_s: float | None = REANNOUNCE_S,
        quorum: int = 1,
        lease_s: float | None = None,
    ) -> None:
        self.clock = EventClock()
        self.reannounce_interval_s = reannounce_interval_s
        self.quorum = quorum
        self.lease_s = lease_s
        # n replicas 1..n, or the given ids (any positive ints: {2, 5, 9} works too)
        self.ids = list(range(1, members + 1)) if isinstance(members, int) else sorted(members)
        self.disk = {i: 0 for i in self.ids}  # persisted epochs survive crashes
        self.nodes: dict[int, Replica] = {}  # live incarnations
        self.cut: set[tuple[int, int]] = set()  # directed links that drop messages
        self.role_changes: list[tuple] = []
        self.announced: list[tuple[float, int, int]] = []
        self.pulls: list[tuple[int, int, int]] = []
        self.served: defaultdict[int, set[int]] = defaultdict(set)  # epoch -> SERVING ids
        # epoch -> the ids that reached TAKING_OVER or SERVING with it, over the whole run
        self.holders: defaultdict[int, set[int]] = defaultdict(set)
        # (coordinator, epoch) -> replicas that accepted it, as seen by the receivers
        self.accepted: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        self.acceptances: list[tuple[int, int, int]] = []  # (replica, coordinator, epoch)
        self.on_role_changed = lambda replica: None  # a hook for invariant checks

    @classmethod
    def quorum_mode(cls, members: int | Iterable[int], **kw) -> Network:
        members = members if isinstance(members, int) else list(members)
        size = members if isinstance(members, int) else len(members)
        return cls(members, quorum=size // 2 + 1, lease_s=LEASE_S, **kw)

    # -- cluster control --------------------------------------------------------

    def start(self) -> None:
        for i in self.ids:
            self.recover(i)

    def crash(self, node_id: int) -> None:
        node = self.nodes.pop(node_id, None)
        if node is not None:
            node.crash()

    def recover(self, node_id: int) -> None:
        if node_id in self.nodes:
            return
        node = Replica(self, node_id, self.disk[node_id])
        self.nodes[node_id] = node
        node.start()

    def partition(self, a: int, b: int) -> None:
        self.cut |= {(a, b), (b, a)}

    def machine(self, node_id: int) -> Node:
        return self.nodes[node_id].machine

    def advance(self, seconds: float, step_s: float = STEP_S, check=None) -> None:
        while seconds > 1e-9:
            self.clock.advance(min(step_s, seconds))
            seconds -= step_s
            if check is not None:
                check()

    def serving(self) -> dict[int, Node]:
        return {i: n.machine for i, n in self.nodes.items() if n.machine.role is Role.SERVING}

    def lease_valid(self, node_id: int) -> bool:
        """Whether the replica heard from a majority (quorum - 1 peers) within LEASE_S,
        by the answers this network delivered to it (not by the node's own records).

        Up to EXPIRY_SLACK_S: a check run by another replica's event at the very instant
        a lease ends (the same clock reading, give or take a rounding of the sums) comes
        before the node's own expiry timer due at that instant."""
        heard = sorted(self.nodes[node_id].heard.get(p, float("-inf"))
                       for p in self.ids if p != node_id)
        return self.clock.seconds() < heard[-(self.quorum - 1)] + LEASE_S + EXPIRY_SLACK_S

    def not_past(self, epoch: int) -> list[int]:
        """The replicas whose persisted epoch is at most ``epoch``: only they would
        answer a fenced request of that epoch other than STALE (peerwire)."""
        return [i for i in self.ids if self.disk[i] <= epoch]

    def agreed(self) -> bool:
        """Every live replica follows the highest live id, in the same epoch."""
        if not self.nodes:
            return True
        top = max(self.nodes)
        epochs = {n.machine.coordinator_epoch for n in self.nodes.values()}
        return (
            self.machine(top).role is Role.SERVING
            and all(n.machine.coordinator == top for n in self.nodes.values())
            and all(
                n.machine.role is Role.FOLLOWER for i, n in self.nodes.items() if i != top
            )
            and len(epochs) == 1
        )

    def converge(self) -> float:
        """Let messages flow; return when the cluster settled for good.

        Checked every STEP_S for CONVERGENCE_BOUND_S + SETTLE_S.  Messages still in
        flight (an old ELECTION, a ping sent over a cut link) may disturb an early
        agreement, so "settled" is the start of the final stretch with agreement at
        every step and no role change at all; it must begin within the bound.
        """
        self.cut.clear()
        start = self.clock.seconds()
        settled = 0.0
        while self.clock.seconds() - start < CONVERGENCE_BOUND_S + SETTLE_S:
            if not self.agreed():
                settled = self.clock.seconds() - start + STEP_S
            self.clock.advance(STEP_S)
        last_change = max((c[0] for c in self.role_changes), default=start) - start
        settled = max(settled, last_change)
        assert self.agreed(), self.describe()
        assert settled <= CONVERGENCE_BOUND_S, (settled, self.describe())
        return settled

    def describe(self) -> str:
        return "; ".join(
            f"{i}:{n.machine.role.value}->{n.machine.coordinator}@{n.machine.coordinator_epoch}"
            f"/{n.machine.epoch}"
            for i, n in sorted(self.nodes.items())
        )

    # -- message delivery (what the glue and peerwire do) --------------------------

    def _later(self, delay_s: float, node: Replica, fn, *args) -> None:
        """Deliver a reply to one incarnation: a dead process hears nothing."""
        self.clock.callLater(delay_s, lambda: node.alive and fn(*args))

    def call(self, src: Replica, dst_id: int, epoch: int, handle, timeout_s: float,
             on_answer, on_failure) -> None:
        """One request and its answer.  The receiver sees the request's epoch first
        (peerwire: a newer epoch makes a coordinator step down before the handler);
        the sender counts any answer as a contact (the lease) before handling it."""
        if (src.id, dst_id) in self.cut:
            self._later(timeout_s, src, on_failure)
            return

        def deliver() -> None:
            dst = self.nodes.get(dst_id)
            if dst is None:  # connection refused: the sender learns one latency later
                self._later(DELAY_S, src, on_failure)
                return
            dst.machine.epoch_seen(epoch)
            answer = handle(dst, src.id, epoch)
            if (dst_id, src.id) in self.cut:  # the answer is lost: the sender times out
                self._later(timeout_s - DELAY_S, src, on_failure)
                return

            def answered() -> None:
                src.heard[dst_id] = self.clock.seconds()
                src.machine.contact(dst_id)
                on_answer(answer)

            self._later(DELAY_S, src, answered)

        self.clock.callLater(DELAY_S, deliver)

    def prevote(self, src: Replica, dst_id: int, epoch: int, on_answer, on_failure) -> None:
        """A pre-vote, as replica.py answers it: the receiver names the coordinator above
        the sender that it follows, pings it (a call of its own, over its own links) and
        objects only if it answered as coordinator."""
        def confirmed(dst: Replica, coordinator: int | None) -> None:
            if (dst_id, src.id) in self.cut:   # the answer is lost: the sender times out
                return
            self._later(DELAY_S, src, on_answer, coordinator)

        def handle(dst: Replica, src_id: int, epoch: int) -> None:
            coordinator = dst.machine.prevote_received(src_id)
            if coordinator is None or coordinator == dst.id:
                confirmed(dst, coordinator)
                return
            self.call(dst, coordinator, dst.machine.epoch, self.on_ping, PING_TIMEOUT_S,
                      lambda status: (dst.machine.epoch_seen(status[1]), confirmed(
                          dst, coordinator if status[0] == "coordinator" else None)),
                      lambda: confirmed(dst, None))

        if (src.id, dst_id) in self.cut:
            self._later(RPC_TIMEOUT_S, src, on_failure)
            return

        def deliver() -> None:
            dst = self.nodes.get(dst_id)
            if dst is None:
                self._later(DELAY_S, src, on_failure)
                return
            dst.machine.epoch_seen(epoch)
            handle(dst, src.id, epoch)

        self.clock.callLater(DELAY_S, deliver)

    @staticmethod
    def on_ping(dst: Replica, src_id: int, epoch: int) -> tuple[str, int]:
        return dst.machine.public_role, dst.machine.epoch

    @staticmethod
    def on_election(dst: Replica, src_id: int, epoch: int) -> tuple[bool, int]:
        return dst.machine.election_received(src_id, epoch), dst.machine.epoch

    def on_coordinator(self, dst: Replica, src_id: int, epoch: int) -> tuple[bool, int]:
        ok = dst.machine.coordinator_received(src_id, epoch)
        if ok:
            self.accepted[(src_id, epoch)].add(dst.id)
            self.acceptances.append((dst.id, src_id, epoch))
        return ok, dst.machine.epoch


# -- schedules -------------------------------------------------------------------


@st.composite
def schedules(draw, min_n=2, max_n=6, max_steps=25, pairs=False, sparse=False):
    """(members, [(wait_s, event)], pairs).  ``members`` is n (ids 1..n), or with
    ``sparse`` a list of n distinct ids in 1..20 (e.g. [2, 5, 9]).  Events: crash /
    recover a replica, cut / heal a link (one direction, or both with ``pairs``)."""
    n = draw(st.integers(min_value=min_n, max_value=max_n))
    if sparse:
        members = sorted(draw(st.lists(st.integers(min_value=1, max_value=20),
                                       min_size=n, max_size=n, unique=True)))
        ids = st.sampled_from(members)
    else:
        members = n
        ids = st.integers(min_value=1, max_value=n)
    event = st.one_of(
        st.tuples(st.just("crash"), ids),
        st.tuples(st.just("recover"), ids),
        st.tuples(st.just("cut"), ids, ids),
        st.tuples(st.just("heal"), ids, ids),
    )
    wait_s = st.integers(min_value=0, max_value=120).map(lambda cs: cs / 100)
    return members, draw(st.lists(st.tuples(wait_s, event), max_size=max_steps)), pairs


def apply(net: Network, event: tuple, pairs: bool = False) -> None:
    kind, *args = event
    if kind == "crash":
        net.crash(args[0])
    elif kind == "recover":
        net.recover(args[0])
    elif kind == "cut":
        net.cut.add((args[0], args[1]))
        if pairs:
            net.cut.add((args[1], args[0]))
    else:
        net.cut.discard((args[0], args[1]))
        if pairs:
            net.cut.discard((args[1], args[0]))


class ConvergenceTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(schedules())
    def test_converges_to_highest_live(self, schedule):
        """After any schedule, once messages flow: the highest live id is the one
        coordinator everywhere within CONVERGENCE_BOUND_S, and it stays put."""
        n, steps, _ = schedule
        net = Network(n)
        net.start()
        for wait_s, event in steps:
            net.advance(wait_s)
            apply(net, event)
        net.converge()  # asserts bound and stability

    @settings(max_examples=60, deadline=None)
    @given(schedules(min_n=3, max_n=5, pairs=True))
    def test_converges_in_quorum_mode(self, schedule):
        """The same in quorum mode: the take-over needs a majority, leases run."""
        n, steps, pairs = schedule
        net = Network.quorum_mode(n)
        net.start()
        for wait_s, event in steps:
            net.advance(wait_s)
            apply(net, event, pairs)
        if len(net.nodes) >= net.quorum:
            net.converge()

    @settings(max_examples=60, deadline=None)
    @given(schedules())
    def test_epochs_never_decrease(self, schedule):
        """A replica's epoch only rises, across restarts too (Replica.persist_epoch
        checks the disk), and the final coordinator's epoch is the highest any replica
        saw."""
        n, steps, _ = schedule
        net = Network(n)
        net.start()
        seen = {i: 0 for i in net.ids}
        for wait_s, event in steps:
            net.advance(wait_s)
            apply(net, event)
            for i, node in net.nodes.items():
                self.assertGreaterEqual(node.machine.epoch, seen[i])
                seen[i] = node.machine.epoch
        net.converge()
        if net.nodes:
            final = net.machine(max(net.nodes)).coordinator_epoch
            self.assertEqual(final, max(n.machine.epoch for n in net.nodes.values()))


class ScenarioTests(SynchronousTestCase):
    """Hand-written schedules for the properties above, easy to read when one fails."""

    def test_all_up_highest_wins_quickly(self):
        net = Network(5)
        net.start()
        self.assertLess(net.converge(), 0.1)
        self.assertEqual(net.machine(1).coordinator, 5)
        self.assertEqual([a[1] for a in net.announced], [5])  # only the highest announced
        self.assertEqual(sorted(p[1] for p in net.pulls), [1, 2, 3, 4])  # pulled from all

    def test_all_up_quorum_mode(self):
        net = Network.quorum_mode(5)
        net.start()
        self.assertLess(net.converge(), 0.1)
        self.assertEqual(dict(net.served), {own_epoch(0, 5, 6): {5}})   # epoch 5

    def test_failover_under_one_second(self):
        """Worst case: the coordinator dies just after a heartbeat tick."""
        net = Network(4)
        net.start()
        net.advance(PING_INTERVAL_S)
        net.crash(4)
        # detection <= interval + ping timeout, then a refused-fast election
        self.assertLess(net.converge(), 1.0)
        self.assertEqual(net.machine(1).coordinator, 3)

    def test_lost_announcement_heals_by_reannouncement(self):
        """1 hears nobody and wins alone; 3 wins too.  Once the links heal, only the
        periodic re-announcement tells them about each other."""
        cut = {(1, 2), (1, 3), (3, 1)}
        net = Network(3)
        net.cut.update(cut)
        net.start()
        net.advance(2.0)
        # Both serve: quorum 1, and each one's announcements were all settled (accepted
        # or timed out).
        self.assertEqual(net.machine(1).role, Role.SERVING)
        self.assertEqual(net.machine(3).role, Role.SERVING)
        # ... but not in one epoch (I1b): each won an epoch of its own.
        self.assertEqual((net.machine(1).coordinator_epoch, net.machine(3).coordinator_epoch),
                         (own_epoch(0, 1, 4), own_epoch(0, 3, 4)))
        net.converge()
        self.assertEqual(net.machine(1).coordinator, 3)

        quiet = Network(3, reannounce_interval_s=None)
        quiet.cut.update(cut)
        quiet.start()
        quiet.advance(2.0)
        quiet.cut.clear()
        quiet.advance(CONVERGENCE_BOUND_S)
        self.assertFalse(quiet.agreed())  # two coordinators forever

    def test_minority_side_of_a_partition_stops_serving(self):
        """Quorum mode: the coordinator cut off from both others loses its lease and
        answers at once that it cannot serve; the majority side elects a coordinator
        of a newer epoch, which the old one follows once the partition heals."""
        net = Network.quorum_mode(3)
        net.start()
        net.converge()
        old = net.machine(3)
        net.partition(3, 1)
        net.partition(3, 2)
        net.advance(LEASE_S + PING_INTERVAL_S)
        # 3 is the highest: it wins again alone (epoch 7, its own above 3), but cannot
        # take over without a majority
        self.assertEqual((old.role, old.take_over_progress(), old.coordinator_epoch),
                         (Role.TAKING_OVER, (1, 2), own_epoch(1, 3, 4)))
        self.assertTrue(old.cannot_serve)
        self.assertEqual((net.machine(1).coordinator, net.machine(2).role), (2, Role.SERVING))
        self.assertEqual(net.machine(2).coordinator_epoch, own_epoch(1, 2, 4))   # 6
        net.converge()
        self.assertEqual((old.role, old.coordinator_epoch, old.cannot_serve),
                         (Role.SERVING, own_epoch(1, 3, 4), False))


def check_epoch_owners(test: SynchronousTestCase, net: Network) -> None:
    """(a), I1b: over the whole run every epoch was held (TAKING_OVER or SERVING) by one
    replica only, the one it names (``epoch % stride``), and each replica's won epochs
    strictly rise, across its restarts."""
    stride = stride_of(net.ids)
    for epoch, holders in sorted(net.holders.items()):
        test.assertEqual(holders, {epoch % stride}, (epoch, net.describe()))
    for i in net.ids:
        won = [e for _, j, e in net.announced if j == i]
        test.assertEqual(won, sorted(set(won)), (i, net.describe()))


class EpochOwnershipTests(SynchronousTestCase):
    """(a) at most one coordinator per epoch, ever, whatever the schedule, in both modes,
    with ids 1..N and with arbitrary ids (which must converge too)."""

    def run_schedule(self, net: Network, steps, pairs: bool) -> None:
        net.start()
        for wait_s, event in steps:
            net.advance(wait_s)
            apply(net, event, pairs)
        if len(net.nodes) >= net.quorum:
            net.converge()
        else:
            net.advance(CONVERGENCE_BOUND_S)
        check_epoch_owners(self, net)

    @settings(max_examples=100, deadline=None)
    @given(schedules())
    def test_one_coordinator_per_epoch(self, schedule):
        members, steps, pairs = schedule
        self.run_schedule(Network(members), steps, pairs)

    @settings(max_examples=60, deadline=None)
    @given(schedules(min_n=3, max_n=5, pairs=True))
    def test_one_coordinator_per_epoch_quorum_mode(self, schedule):
        members, steps, pairs = schedule
        self.run_schedule(Network.quorum_mode(members), steps, pairs)

    @settings(max_examples=60, deadline=None)
    @given(schedules(sparse=True))
    def test_ids_not_one_to_n(self, schedule):
        members, steps, pairs = schedule
        self.run_schedule(Network(members), steps, pairs)

    @settings(max_examples=40, deadline=None)
    @given(schedules(min_n=3, max_n=5, pairs=True, sparse=True))
    def test_ids_not_one_to_n_quorum_mode(self, schedule):
        members, steps, pairs = schedule
        net = Network.quorum_mode(members)
        checker = SafetyChecker(self, net)
        net.start()
        for wait_s, event in steps:
            net.advance(wait_s, check=checker.check)
            apply(net, event, pairs)
        net.advance(2 * LEASE_S, check=checker.check)
        check_epoch_owners(self, net)

    def test_members_2_5_9(self):
        """Stride 10: 9 wins 9; once 9 dies, 5 wins 15 (its own above 9); 9 back wins
        19; every replica follows the highest live id."""
        net = Network([2, 5, 9])
        net.start()
        net.converge()
        self.assertEqual(net.machine(2).coordinator_epoch, own_epoch(0, 9, 10))
        net.crash(9)
        net.converge()
        self.assertEqual((net.machine(2).coordinator, net.machine(2).coordinator_epoch),
                         (5, own_epoch(1, 5, 10)))
        net.recover(9)
        net.converge()
        self.assertEqual((net.machine(2).coordinator, net.machine(2).coordinator_epoch),
                         (9, own_epoch(1, 9, 10)))
        check_epoch_owners(self, net)


class SafetyChecker:
    """The quorum-mode safety invariants, checked at every role change (the SERVING set
    only changes there, and persisted epochs only rise, so that is exact) and after
    every clock step (leases run out with time).

    - majority (I6): a coordinator reaches SERVING only once quorum - 1 peers accepted
      its (id, epoch), counted on the receivers' side;
    - lease (I6): a SERVING replica has heard from quorum - 1 peers within LEASE_S;
    - one coordinator per epoch (I1b): two replicas serving at once serve different
      epochs, and over the whole run every epoch had one holder (check_epoch_owners);
    - fencing (I6): while two replicas serve in epochs e1 < e2, fewer than a quorum of
      replicas are not past e1, so every fenced request of the older one meets a STALE
      majority: it cannot complete a quorum write.

    Not checked, because it does not hold (see CounterexampleTests.test_leases_overlap):
    at most one SERVING replica with a valid lease at a time.  Fencing makes that brief
    overlap harmless for writes.
    """

    def __init__(self, test: SynchronousTestCase, net: Network) -> None:
        self.test = test
        self.net = net
        net.on_role_changed = self.role_changed

    def role_changed(self, replica: Replica) -> None:
        machine, net = replica.machine, self.net
        if machine.role is Role.SERVING:
            accepted = net.accepted[(replica.id, machine.coordinator_epoch)]
            self.test.assertGreaterEqual(len(accepted) + 1, net.quorum, net.describe())
            self.check()

    def check(self) -> None:
        net, test = self.net, self.test
        serving = net.serving()
        for i in serving:
            test.assertTrue(net.lease_valid(i), (i, net.clock.seconds(), net.describe()))
        ranked = sorted((m.coordinator_epoch, i) for i, m in serving.items())
        for (older, _), (newer, _) in combinations(ranked, 2):
            test.assertLess(older, newer, net.describe())   # never one epoch twice
            test.assertLess(len(net.not_past(older)), net.quorum, net.describe())
        check_epoch_owners(test, net)


class SafetyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(schedules(min_n=3, max_n=5, pairs=True))
    # Found by a soak run (2026-11-30): replica 3's lease ends at 1.02 + LEASE_S and
    # replica 2 starts serving at that instant, 3e-16 s later in float sums, before 3's
    # own expiry timer of the same instant has run.  Failed without EXPIRY_SLACK_S.
    @example((3, [(0.0, ("crash", 1)), (0.5, ("cut", 1, 3)), (0.28, ("recover", 1)),
                  (0.23, ("cut", 2, 3))], True))
    # Found by a test run (2026-11-30): replica 2 starts serving in the step in which
    # replica 3's lease ends, 10 ms after 3's expiry timer was due, and task.Clock ran
    # 2's event first with the clock at the step's end.  Passes with EventClock.
    @example((3, [(0.53, ("crash", 1)), (1.2, ("recover", 1)), (0.1, ("cut", 1, 3)),
                  (1.01, ("recover", 1)), (0.68, ("cut", 2, 3))], True))
    def test_quorum_mode_safety(self, schedule):
        """Crashes, recoveries and partitions (both directions of a link) in quorum mode
        (quorum = majority, lease LEASE_S): the invariants of SafetyChecker hold at every
        instant, and each replica accepts epochs in non-decreasing order across its
        restarts (a replica that accepted e refuses older epochs)."""
        n, steps, pairs = schedule
        net = Network.quorum_mode(n)
        checker = SafetyChecker(self, net)
        net.start()
        for wait_s, event in steps:
            net.advance(wait_s, check=checker.check)
            apply(net, event, pairs)
        net.advance(2 * LEASE_S, check=checker.check)
        last: dict[int, int] = {}
        for replica, _, epoch in net.acceptances:
            self.assertGreaterEqual(epoch, last.get(replica, 0))
            last[replica] = epoch

    @settings(max_examples=50, deadline=None)
    @given(schedules(min_n=3, max_n=5))
    def test_quorum_mode_safety_one_way_cuts(self, schedule):
        """The same with links cut in one direction only (answers lost, requests not)."""
        n, steps, _ = schedule
        net = Network.quorum_mode(n)
        checker = SafetyChecker(self, net)
        net.start()
        for wait_s, event in steps:
            net.advance(wait_s, check=checker.check)
            apply(net, event)


class CounterexampleTests(SynchronousTestCase):
    """Two schedules that were counterexamples to properties one might expect of quorum
    mode.

    - (b) leases overlap: two replicas SERVING at once, each with a valid lease.  This
      still happens, briefly, and is harmless for writes.  A quorum-mode write is
      acknowledged only once quorum - 1 followers acked its push, and a follower acks
      only pushes from the coordinator it follows, in that coordinator's epoch
      (replica._on_push); the newer coordinator's epoch is persisted on a majority
      before it serves (I1, I6), and those replicas answer every fenced request of an
      older epoch with STALE.  Any write quorum of the deposed coordinator would have
      to include one of them, so it cannot complete a write: it learns the newer epoch
      from the STALE answer (or its next lease ping) and steps down.  SafetyChecker
      checks that fencing at every instant.
    - (a) one epoch, two coordinators: this no longer happens (I1b: an epoch is
      ``round * stride + id``, so epoch -> coordinator is a function).  The schedule
      that produced it is kept as a regression test: the second coordinator now wins
      an epoch of its own, and the first one is fenced.
    """

    def serving_with_valid_leases(self, net: Network) -> dict[int, int]:
        return {i: m.coordinator_epoch for i, m in net.serving().items() if net.lease_valid(i)}

    def test_leases_overlap(self):
        """(b), still a counterexample, harmless for writes (see the class docstring).
        3 serves epoch 3; 2 and 3 lose each other, and 1 loses its way to 3 for a while,
        so 1 elects too and does not object to 2 standing (I8); 2 wins epoch 6, accepted
        by 1.  1 reaches 3 again; 3 hears epoch 6 from 1 (a lease ping), steps down,
        wins epoch 7 at once and 1 accepts it.  2's take-over then completes (its
        announcement to 3 times out) and 2 serves epoch 6, although its only acceptor
        has moved on: its lease is valid (1 answered 0.2 s ago), so it serves alongside
        3 until its next ping to 1 teaches it epoch 7.  Meanwhile it is fenced: only 2
        itself is not past epoch 6.  (Before the pre-vote, the bridge alone did this,
        over and over: test_a_bridge_mints_no_epochs.)"""
        net = Network.quorum_mode(3)
        net.start()
        net.advance(1.03)
        net.partition(2, 3)
        net.cut.add((1, 3))
        for _ in range(200):
            net.advance(STEP_S)
            if net.machine(2).role.is_coordinator:
                break
        net.cut.discard((1, 3))
        for _ in range(200):
            net.advance(STEP_S)
            if len(self.serving_with_valid_leases(net)) > 1:
                break
        start = net.clock.seconds()
        first, second = own_epoch(1, 2, 4), own_epoch(1, 3, 4)     # 6 and 7
        self.assertEqual(self.serving_with_valid_leases(net), {2: first, 3: second})
        self.assertEqual(net.not_past(first), [2])   # 2 is fenced: 1 is past epoch 6
        self.assertLess(len(net.not_past(first)), net.quorum)
        while len(self.serving_with_valid_leases(net)) > 1:
            net.advance(STEP_S)
        # It ends within a lease ping (whose answer carries epoch 7).
        self.assertLess(net.clock.seconds() - start, PING_INTERVAL_S + 2 * DELAY_S)
        self.assertNotEqual(net.machine(2).role, Role.SERVING)   # stepped down, elects
        check_epoch_owners(self, net)

    def test_a_bridge_mints_no_epochs(self):
        """I8, both modes: 3 serves, 2 and 3 lose each other, 1 reaches both.  Before
        the pre-vote, 2 won an epoch, 1 followed it, 3 learned the epoch from 1 and won
        a newer one, and so on: 14 (20 in quorum mode) announcements in 10 s here, about
        20 elections a second in a real cluster under load.  Now 1 confirms 3 alive and
        objects: 2 mints nothing, refuses requests at once (cannot_serve, naming 1 and
        3), asks again now and then, and follows 3 once the link heals."""
        for net in (Network(3), Network.quorum_mode(3)):
            net.start()
            net.advance(2.0)
            self.assertTrue(net.agreed(), net.describe())
            epoch, announced = net.machine(3).epoch, len(net.announced)
            net.partition(2, 3)
            net.advance(10.0, check=lambda net=net: self.assertEqual(
                (net.machine(1).coordinator, net.machine(3).role), (3, Role.SERVING)))
            self.assertEqual(len(net.announced), announced)
            self.assertEqual([net.machine(i).epoch for i in (1, 2, 3)], [epoch] * 3)
            two = net.machine(2)
            self.assertEqual((two.coordinator, two.vetoed, two.cannot_serve),
                             (None, (1, 3), True))
            net.converge()
            self.assertEqual((two.coordinator, two.vetoed, two.cannot_serve),
                             (3, None, False))

    def test_a_second_coordinator_gets_its_own_epoch(self):
        """(a), regression: the schedule that used to make 3 and 2 both serve epoch 1,
        each accepted by 1.  3 serves epoch 3, accepted by 1; 2 (down so far, cut from 3,
        and its pre-vote cannot reach 1, so nothing objects: I8) wins epoch 2 on its own
        disk's history while 3 serves: two coordinators, two epochs.  1 (restarted) has
        seen 3 and rejects 2's epoch as stale; 2 re-elects above it, with 6, and 1
        accepts that (1's ping to 3 is cut, so 1 does not object); 3 learns 6 from 1 and
        wins 7.  Every epoch was held by the one replica it names."""
        net = Network.quorum_mode(3)
        net.start()
        net.crash(2)
        net.advance(1.0)
        net.partition(2, 3)
        net.cut.add((2, 1))
        net.advance(0.5)
        net.recover(2)
        net.advance(0.45)                # its ELECTION to 3 and its pre-vote timed out
        two, three = own_epoch(0, 2, 4), own_epoch(0, 3, 4)
        six, seven = own_epoch(1, 2, 4), own_epoch(1, 3, 4)
        self.assertEqual((net.machine(2).role, net.machine(2).coordinator_epoch),
                         (Role.TAKING_OVER, two))
        self.assertEqual((net.machine(3).role, net.machine(3).coordinator_epoch),
                         (Role.SERVING, three))
        net.crash(1)
        net.cut.add((1, 3))
        net.cut.discard((2, 1))
        net.recover(1)                   # electing when 2's COORDINATOR(2) arrives
        for _ in range(200):
            net.advance(STEP_S)
            if net.machine(2).role is Role.SERVING:
                break
        self.assertEqual(net.accepted[(2, two)], set())   # stale at 1
        self.assertEqual(net.accepted[(2, six)], {1})
        self.assertEqual(dict(net.holders), {three: {3}, two: {2}, six: {2}, seven: {3}})
        net.converge()
        check_epoch_owners(self, net)
