"""Simulated cluster: N BullyElection machines on one task.Clock, a lossy network and a
HeartbeatMonitor per replica.  Hypothesis generates crash / recover / link-cut schedules;
once messages flow again every live replica must agree on the highest live id within
CONVERGENCE_BOUND_S.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replicad.detector import HeartbeatMonitor
from replicad.election import ANSWER_TIMEOUT_S as ANSWER_S
from replicad.election import COORDINATOR_TIMEOUT_S as COORDINATOR_S
from replicad.election import REANNOUNCE_INTERVAL_S as REANNOUNCE_S
from replicad.election import BullyElection, Role

DELAY_S = 0.01  # one-way message latency
RPC_TIMEOUT_S = 0.2  # glue gives up on an unanswered ELECTION (< answer timeout)
PING_INTERVAL_S = 0.5
PING_TIMEOUT_S = 0.2  # < PING_INTERVAL_S, as detector.py requires

# Bound on settling after the network heals (t = 0), each timer leg at its worst:
#   a follower of a dead coordinator notices it           ping interval + timeout  0.7 s
#   one AWAITING an announcement lost before the heal
#   re-elects, and that election times out                coordinator + answer    1.1 s
#   one that missed the winner's announcement hears the
#   re-announcement, rejects its stale epoch, and the
#   winner re-elects                                      re-announce + answer    1.3 s
# plus 20 message latencies: 3.3 s.  (Worst seen over ~10k random schedules: ~1.0 s.)
CONVERGENCE_BOUND_S = (
    PING_INTERVAL_S + PING_TIMEOUT_S + COORDINATOR_S + 2 * ANSWER_S + REANNOUNCE_S
    + 20 * DELAY_S
)
STEP_S = 0.01  # so the bound is CONVERGENCE_BOUND_S / STEP_S = 330 clock steps
SETTLE_S = 3 * REANNOUNCE_S  # agreement must then hold this long, with no role change


class Node:
    """The replica glue for one incarnation of one replica."""

    def __init__(self, net: Network, node_id: int, epoch: int) -> None:
        self.net = net
        self.id = node_id
        self.alive = True
        self.followed: int | None = None
        self.machine = BullyElection(
            node_id, net.ids, self, net.clock, epoch=epoch,
            reannounce_interval_s=net.reannounce_interval_s,
        )
        self.monitor = HeartbeatMonitor(
            net.clock, PING_INTERVAL_S, self.ping, self.machine.coordinator_failed
        )

    def start(self) -> None:
        self.monitor.start()
        self.machine.start_election("start-up")

    def crash(self) -> None:
        self.alive = False
        self.monitor.stop()
        self.machine.stop()

    def ping(self) -> Deferred[bool]:
        """PONG after a round trip if the coordinator is up and reachable, else False
        after PING_TIMEOUT_S."""
        target = self.machine.coordinator
        if target is None or target == self.id:
            return succeed(True)
        up = target in self.net.nodes and not self.net.cut & {(self.id, target), (target, self.id)}
        d: Deferred[bool] = Deferred()
        self.net.clock.callLater(2 * DELAY_S if up else PING_TIMEOUT_S, d.callback, up)
        return d

    def send_election(self, peer_id: int, epoch: int) -> None:
        self.net.send_election(self, peer_id, epoch)

    def send_coordinator(self, peer_id: int, epoch: int) -> None:
        self.net.send_coordinator(self, peer_id, epoch)

    def role_changed(self, role: Role, coordinator: int | None, epoch: int) -> None:
        if coordinator != self.followed:
            self.followed = coordinator
            self.monitor.reset()  # the glue contract: a new coordinator, a fresh detector
        self.net.role_changes.append((self.net.clock.seconds(), self.id, role, coordinator, epoch))
        if role is Role.COORDINATOR:
            self.net.announced.append((self.net.clock.seconds(), self.id, epoch))

    def persist_epoch(self, epoch: int) -> None:
        assert epoch > self.net.disk[self.id], "persisted epochs must rise"
        self.net.disk[self.id] = epoch


class Network:
    def __init__(self, n: int, reannounce_interval_s: float | None = REANNOUNCE_S) -> None:
        self.clock = Clock()
        self.reannounce_interval_s = reannounce_interval_s
        self.ids = list(range(1, n + 1))
        self.disk = {i: 0 for i in self.ids}  # persisted epochs survive crashes
        self.nodes: dict[int, Node] = {}  # live incarnations
        self.cut: set[tuple[int, int]] = set()  # directed links that drop messages
        self.role_changes: list[tuple] = []
        self.announced: list[tuple[float, int, int]] = []

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
        node = Node(self, node_id, self.disk[node_id])
        self.nodes[node_id] = node
        node.start()

    def machine(self, node_id: int) -> BullyElection:
        return self.nodes[node_id].machine

    def advance(self, seconds: float, step_s: float = STEP_S) -> None:
        while seconds > 1e-9:
            self.clock.advance(min(step_s, seconds))
            seconds -= step_s

    def agreed(self) -> bool:
        """Every live replica follows the highest live id, in the same epoch."""
        if not self.nodes:
            return True
        top = max(self.nodes)
        epochs = {n.machine.coordinator_epoch for n in self.nodes.values()}
        return (
            self.machine(top).role is Role.COORDINATOR
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

    # -- message delivery (what the glue would do) ------------------------------

    def _later(self, delay_s: float, node: Node, fn, *args) -> None:
        """Deliver a reply to one incarnation: a dead process hears nothing."""
        self.clock.callLater(delay_s, lambda: node.alive and fn(*args))

    def send_election(self, src: Node, dst_id: int, epoch: int) -> None:
        if (src.id, dst_id) in self.cut:
            self._later(RPC_TIMEOUT_S, src, src.machine.election_send_failed, dst_id)
            return
        self.clock.callLater(DELAY_S, self._deliver_election, src, dst_id, epoch)

    def _deliver_election(self, src: Node, dst_id: int, epoch: int) -> None:
        dst = self.nodes.get(dst_id)
        if dst is None:  # connection refused: the sender learns one latency later
            self._later(DELAY_S, src, src.machine.election_send_failed, dst_id)
        elif dst.machine.election_received(src.id, epoch):
            if (dst_id, src.id) in self.cut:  # the OK is lost: sender times out
                wait_s = RPC_TIMEOUT_S - DELAY_S
                self._later(wait_s, src, src.machine.election_send_failed, dst_id)
            else:
                reply = (dst_id, dst.machine.epoch)
                self._later(DELAY_S, src, src.machine.answer_received, *reply)

    def send_coordinator(self, src: Node, dst_id: int, epoch: int) -> None:
        if (src.id, dst_id) not in self.cut:
            self.clock.callLater(DELAY_S, self._deliver_coordinator, src, dst_id, epoch)

    def _deliver_coordinator(self, src: Node, dst_id: int, epoch: int) -> None:
        dst = self.nodes.get(dst_id)
        if dst is None or dst.machine.coordinator_received(src.id, epoch):
            return
        if (dst_id, src.id) not in self.cut:
            reply = (dst_id, dst.machine.epoch)
            self._later(DELAY_S, src, src.machine.coordinator_rejected, *reply)


# -- schedules -------------------------------------------------------------------


@st.composite
def schedules(draw):
    n = draw(st.integers(min_value=2, max_value=6))
    ids = st.integers(min_value=1, max_value=n)
    event = st.one_of(
        st.tuples(st.just("crash"), ids),
        st.tuples(st.just("recover"), ids),
        st.tuples(st.just("cut"), ids, ids),
        st.tuples(st.just("heal"), ids, ids),
    )
    wait_s = st.integers(min_value=0, max_value=120).map(lambda cs: cs / 100)
    return n, draw(st.lists(st.tuples(wait_s, event), max_size=25))


def apply(net: Network, event: tuple) -> None:
    kind, *args = event
    if kind == "crash":
        net.crash(args[0])
    elif kind == "recover":
        net.recover(args[0])
    elif kind == "cut":
        net.cut.add((args[0], args[1]))
    else:
        net.cut.discard((args[0], args[1]))


class ConvergenceTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(schedules())
    def test_converges_to_highest_live(self, schedule):
        """After any schedule, once messages flow: the highest live id is the one
        coordinator everywhere within CONVERGENCE_BOUND_S, and it stays put."""
        n, steps = schedule
        net = Network(n)
        net.start()
        for wait_s, event in steps:
            net.advance(wait_s)
            apply(net, event)
        net.converge()  # asserts bound and stability

    @settings(max_examples=100, deadline=None)
    @given(schedules())
    def test_epochs_never_decrease(self, schedule):
        """A replica's epoch only rises, across restarts too (Node.persist_epoch checks
        the disk), and the final coordinator's epoch is the highest any replica saw."""
        n, steps = schedule
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
        self.assertEqual(net.machine(1).role, Role.COORDINATOR)
        self.assertEqual(net.machine(3).role, Role.COORDINATOR)
        net.converge()
        self.assertEqual(net.machine(1).coordinator, 3)

        quiet = Network(3, reannounce_interval_s=None)
        quiet.cut.update(cut)
        quiet.start()
        quiet.advance(2.0)
        quiet.cut.clear()
        quiet.advance(CONVERGENCE_BOUND_S)
        self.assertFalse(quiet.agreed())  # two coordinators forever
