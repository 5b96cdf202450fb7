"""The Replica service: wiring between the store, the node, peer links, sync and sessions.

The logic lives in the pure modules (``node`` decides roles, ``joining`` whether an
unbound replica may take part, ``session`` what a request needs, ``store`` how records
merge); this file turns their decisions into peer calls and their inputs into method
calls:

- peer requests are decoded once into typed messages (``peerwire``) and their epoch is
  checked here, at one edge (``peer_request``), before any handler runs;
- client requests wait with ``Node.when_serving``; a follower checks its coordinator
  is alive (client-triggered detection), forwards and relays the reply; the
  coordinator catches up with the session's clocks and executes: a read here, a write
  by ``writes`` (into the open commit group, pushed, answered once write_quorum
  replicas hold it; a retried request id answered, never applied twice);
- anti-entropy: a LoopingCall pings every peer and pulls what a peer has and this
  replica lacks; in quorum mode a coordinator also pings every peer each
  ``ping_interval`` to keep its lease.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import time
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

import replicad
from replicad import peerwire, session, wire
from replicad.config import ClusterConfig
from replicad.confirmedreads import AwaitingWrites, ReadConfirmations
from replicad.datadir import DB_FILENAME, check_data_dir  # noqa: F401 (moved there)
from replicad.detector import HeartbeatMonitor
from replicad.forwarding import Forward, Retry
from replicad.groupcommit import GroupCommit, GroupFailed
from replicad.identity import new_cluster_id, new_origin
from replicad.joining import Joining
from replicad.linklog import LinkStateLog
from replicad.metrics import ReplicaMetrics
from replicad.node import Announcement, Candidacy, Node, Role, veto_reason
from replicad.peer import (
    PeerAnswer,
    PeerLink,
    PeerResponse,
    PeerUnavailable,
    StreamRefused,
)
from replicad.peerwire import Message, PeerStatus, PeerWireError
from replicad.quorumindex import QuorumIndex
from replicad.store import Record, Store, disk_full
from replicad.sync import StaleEpoch, Synchroniser
from replicad.turnsend import TurnSender
from replicad.vclock import VectorClock
from replicad.wire import Code, Reply, ReplyMeta, Request, WireError
from replicad.writes import NotCoordinator, Writes

PAUSE_TICKS = 4                 # no heartbeat tick for this many ping intervals: paused
EXIT_DISK_FAILED = 74           # sysexits.h EX_IOERR: the process stops, its disk failed
DATA_FILE_CHECK_S = 1.0         # how often a replica looks that its database file is there
# A bound replica that starts this many writes behind a peer catches up before it stands
# for election: as coordinator it would pull them all before serving, with every client
# waiting (6.1 s for 100,000 missed writes: bench/rejoin_gap.py; it grows with the store).
REJOIN_BEHIND_WRITES = 1000
WAITING_FIRST_LOG_S = 1.0       # an unbound replica says what it waits for after this,
WAITING_LOG_INTERVAL_S = 10.0   # then this often


class Replica(service.MultiService):
    log = Logger()

    def __init__(self, config: ClusterConfig, my_id: int, data_dir: str, reactor,
                 new_cluster: bool = False, halt: Callable[[int], None] | None = None):
        super().__init__()
        # How the process stops when its disk fails: the twistd plugin passes os._exit
        # (a crash, as far as the disk and the peers can tell); without one (a replica
        # in a test's process) the exit status is only kept in ``halted``.
        self._halt = halt
        self.halted: int | None = None
        self._stopping_because = ""
        self._waiting_for_members_said = False    # history_ready's log line, once
        self.config = config
        self.new_cluster = new_cluster
        self.my_id = my_id
        self.data_dir = data_dir
        self.reactor = reactor
        self.timers = config.timers
        self.store: Store | None = None
        self.node: Node | None = None
        self.detector: HeartbeatMonitor | None = None
        self.sync: Synchroniser | None = None
        self.commits: GroupCommit | None = None
        self.links: dict[int, PeerLink] = {}
        # Shared by this replica's links and (tap.py) its client and peer ports.
        self.turn_sender = TurnSender(reactor)
        # A follower's reads share one READINDEX call in flight (confirmedreads.py).
        self.confirmations = ReadConfirmations(reactor, self._ask_read_index,
                                               self._answer_confirmed)
        # Quorum mode: this coordinator's writes still waiting for their quorum, which
        # no read may show yet (quorumindex.py).
        self.quorum_index = QuorumIndex()
        # Confirmed reads waiting for the push of a write their confirmation named.
        self.awaiting = AwaitingWrites(reactor, self.timers.ping_timeout, self._covers,
                                       self._answer_waited, self._forward_read)
        for peer_id in config.ids:
            if peer_id == my_id:
                continue
            link = PeerLink(
                reactor, my_id, peer_id,
                config.member(peer_id).peer_connect_endpoint(self.timers.connect_timeout),
                config.secret, config.limits.max_line_bytes + 1024,
                cluster_id=lambda: self.store.cluster_id if self.store else None,
                turn_sender=self.turn_sender,
            )
            link.service.setServiceParent(self)
            link.on_down = lambda peer_id=peer_id: self._link_lost(peer_id)
            link.on_up = lambda peer_id=peer_id: self._mark(peer_id, True)
            self.links[peer_id] = link
        self.peer_up: dict[int, bool] = dict.fromkeys(self.links, False)
        quorum_mode = config.quorum_mode
        self.election_quorum = config.majority if quorum_mode else 1
        self.joining = Joining(
            my_id, config.ids,
            len(config.ids) - config.majority + 1 if quorum_mode else 1, new_cluster,
        )
        self._pinged_coordinator: int | None = None
        # (coordinator, its clock) from the last PING it answered as the coordinator:
        # what a follower must hold before it answers a read itself (follower_reads).
        self._coordinator_seen: tuple[int, VectorClock] | None = None
        # Peers that failed a ping or a forward since they last answered, each with when
        # its silence began (the failed call's start): the evidence that a forward in
        # flight to them will get no answer, and, once old enough, that a take-over
        # need not wait for their answer (send_coordinator).
        self._suspected: dict[int, float] = {}
        # Forwards in flight, per coordinator: told dead() when it is
        # declared dead (a failed ping, its link dropped), so they stop waiting for it.
        self._forwards: dict[int, set[Forward]] = {}
        self._joining_from: set[int] = set()     # copies in flight while joining
        # A flapping link: few log lines, and as few on the admin page's timeline.
        self._link_log = LinkStateLog(self.log, reactor,
                                      record=lambda *line: self.metrics.link_changed(*line))
        self._last_waiting_log = float("-inf")
        self._anti_entropy = LoopingCall(self._anti_entropy_tick)
        self._anti_entropy.clock = reactor
        self._lease_heartbeat = LoopingCall(self._lease_tick)
        self._lease_heartbeat.clock = reactor
        # An unbound replica looks at its peers every ping_interval until it knows
        # whether it starts a fresh cluster or must copy one (joining.py).
        self._discovery = LoopingCall(self._discovery_tick)
        self._discovery.clock = reactor
        self._data_file_check = LoopingCall(self._check_data_file)
        self._data_file_check.clock = reactor
        self._started_at = 0.0
        self.metrics = ReplicaMetrics(self, reactor,   # metrics hook: /metrics, admin page
                                      wall=time.time)

    # Service life cycle ----------------------------------------------------------------

    def startService(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        self.store = Store(os.path.join(self.data_dir, DB_FILENAME))
        if self.store.replica_id is None:     # built without check_data_dir (tests)
            self.store.claim(self.my_id)      # its writes' origin (identity.py)
        self.store.disk_failed = self._disk_failed
        self.commits = GroupCommit(self.store, self.reactor)
        self.sync = Synchroniser(self.store, list(self.links), self.config, self.reactor,
                                 self.ping, self.call, self._mark, lambda: self.node.epoch)
        self.commits.after_flush = self._after_commit
        self.commits.before_commit = self._before_commit
        self.commits.disk_changed = self.metrics.disk_changed   # metrics hook
        self.commits.committed = self.metrics.commit            # metrics hook
        self.sync.after_import = self._after_import
        self.sync.disk_full_seen = self.commits.full_seen
        self.node = Node(
            self.my_id, self.config.ids, self, self.reactor, epoch=self.store.epoch,
            quorum=self.election_quorum,
            answer_timeout_s=self.timers.answer_timeout,
            coordinator_timeout_s=self.timers.coordinator_timeout,
            reannounce_interval_s=self.timers.reannounce_interval,
            lease_s=self.timers.lease_timeout,
            pause_s=PAUSE_TICKS * self.timers.ping_interval,
            # A bound replica stands once it has looked at its peers (_rejoin).
            candidacy=Candidacy.NO if self._bound else self._candidacy(),
            confirm_holders=self.config.quorum_mode,
        )
        self.writes = Writes(
            self.my_id, self.config, self.reactor, self.store, self.commits, self.sync,
            self.quorum_index, self.node, self.metrics, self._meta, self._error,
            self._push_refused,
        )
        self.detector = HeartbeatMonitor(
            self.reactor, self.timers.ping_interval, self._ping_coordinator,
            self._coordinator_ping_failed,
        )
        super().startService()
        if self.config.uses_default_secret:
            self.log.warn("using the built-in cluster secret: set [cluster] secret in production")
        self.log.info(
            "replica {id} starting: data {path}, cluster {cluster}, clock {clock}, epoch "
            "{epoch}, {keys} keys, write quorum {quorum}",
            id=self.my_id, path=self.data_dir, cluster=self.store.cluster_id or "(unbound)",
            clock=self.store.clock.encode(), epoch=self.store.epoch,
            keys=self.store.count(), quorum=self.config.write_quorum,
        )
        self.detector.start()
        self._started_at = self.reactor.seconds()
        self._anti_entropy.start(self.timers.anti_entropy_interval, now=False)
        if not self._bound:
            self._discovery.start(self.timers.ping_interval, now=True)
        self._lease_heartbeat.start(self.timers.ping_interval, now=False)
        self._data_file_check.start(DATA_FILE_CHECK_S, now=False)
        if self._bound:
            self._rejoin()
        else:
            self.node.start_election("start-up")

    def stopService(self):
        for loop in (self._anti_entropy, self._lease_heartbeat, self._discovery,
                     self._data_file_check):
            if loop.running:
                loop.stop()
        if self.detector is not None:
            self.detector.stop()
        if self.node is not None:
            self.node.stop()
        self._link_log.stop()
        self.awaiting.cancel()            # their reads take the path that refuses now
        self.confirmations.cancel()
        if self.sync is not None:
            self.sync.stop()              # before the links' aborts end its streams
        for link in self.links.values():
            link.abort()     # no graceful TLS close: every peer is stopping too
        d = defer.maybeDeferred(super().stopService)

        def close(result):
            if self.store is not None:
                self.commits.flush()
                self.store.close()
                self.store = None
            return result

        return d.addBoth(close)

    def _rejoin(self, waited: bool = False) -> None:
        """A bound replica coming back asks its peers' clocks first.  Far behind one (a
        long outage, an old backup of its disk) it catches up from it as a follower, the
        cluster serving meanwhile, and only then stands (Bully: it will take over); else
        it stands at once, as before.  A peer that does not answer is no reason to wait.
        ``waited``: asked again after the pulls under way at the first look landed."""
        timeout_s = max(self.timers.answer_timeout, self.timers.ping_timeout)
        asks = [self.ping(peer_id, timeout_s).addErrback(lambda failure: None)
                for peer_id in self.links]
        defer.gatherResults(asks).addCallback(self._rejoin_with, waited)

    def _rejoin_with(self, statuses: list[PeerStatus | None], waited: bool = False) -> None:
        if self.store is None:
            return                      # stopped meanwhile
        mine = self.store.clock
        ahead = [(sum(s.clock[o] - mine[o] for o in s.clock.missing_from(mine)), s.peer_id)
                 for s in statuses if s is not None and self._of_this_cluster(s)]
        behind, peer_id = max(ahead, default=(0, None))
        if peer_id is None or behind < REJOIN_BEHIND_WRITES:
            self.node.set_candidacy(Candidacy.YES, "caught up by the pulls under way"
                                    if waited else "start-up")
            return
        self.log.info("replica {id} is {behind} writes behind replica {peer}: it catches up "
                      "before it stands for election", id=self.my_id, behind=behind,
                      peer=peer_id)
        if self.sync.pulling:
            # A pull began meanwhile (a link back: anti-entropy; a push's gap) and likely
            # brings most of this: two whole copies ran side by side
            # (bench/rejoin_gap.py).  Ask the clocks again once it has landed.
            self.sync.when_idle().addCallback(lambda _: self._rejoin(waited=True))
            return

        def stand(ok: object) -> None:
            self.node.set_candidacy(Candidacy.YES, f"caught up with replica {peer_id}"
                                    if ok is True else f"no catch-up from replica {peer_id}")

        self.sync.sync_from(peer_id).addBoth(stand)

    def _candidacy(self) -> Candidacy:
        if self._bound or self.joining.fresh:
            return Candidacy.YES
        return Candidacy.NO if self.joining.knows_history else Candidacy.PENDING

    @property
    def _bound(self) -> bool:
        return self.store is not None and self.store.cluster_id is not None

    def _mark(self, peer_id: int, up: bool, silent_s: float = 0.0) -> None:
        """Record whether the last exchange with a peer worked (``silent_s``: how long a
        failed one waited, math.inf for a dropped link: Node.peer_down's evidence); log
        the changes.  A peer back after being down is compared with at once (a PING,
        then a pull of what it has and this replica lacks), not at the next anti-entropy
        tick: a coordinator
        that took over while its links were still reconnecting (a heal) pulled from no
        one, and served without the other side's writes for up to anti_entropy_interval
        (chaos seed 4: converged 2.44 s after the heal)."""
        was = self.peer_up.get(peer_id)
        if was != up:
            self._link_log.changed(peer_id, up)      # and the metrics' timeline
            if up and was is False and self.running:
                self.reactor.callLater(0, self._anti_entropy_with, peer_id, True)
        self.peer_up[peer_id] = up
        if up:
            self._suspected.pop(peer_id, None)
            if self.node is not None:
                self.node.contact(peer_id)
        elif self.node is not None:
            self.node.peer_down(peer_id, silent_s)

    def _epoch_seen(self, epoch: int) -> None:
        if self.node is not None:
            self.node.epoch_seen(epoch)

    # Calls to peers --------------------------------------------------------------------

    def call(self, peer_id: int, message: Message, timeout_s: float,
             on_line=None) -> defer.Deferred[PeerResponse]:
        """Send a typed request; a ``STALE <epoch>`` answer teaches this replica the
        newer epoch and fails the call with StaleEpoch."""
        pull = isinstance(message, (peerwire.Delta, peerwire.Full))   # metrics hook
        if pull:   # metrics hook: count the records and bytes of a pull, time it
            on_line, pulled = self.metrics.pull(isinstance(message, peerwire.Full), on_line)
        d = self.links[peer_id].call(*peerwire.encode_message(message), timeout_s, on_line)
        if pull:   # metrics hook
            d.addBoth(pulled)

        return d.addCallback(self._answer_from, peer_id)

    def _answer_from(self, response: PeerResponse, peer_id: int) -> PeerResponse:
        """A peer answered a call: it is up; STALE and ERR answers are raised."""
        self._mark(peer_id, True)
        if response.kind == "STALE":
            epoch = peerwire.parse_epoch(response.payload)
            self._epoch_seen(epoch)
            raise StaleEpoch(peer_id, epoch)
        if response.kind == "ERR":
            error = peerwire.ErrorAnswer(peer_id, response.payload)
            if error.code == Code.UNAVAILABLE:     # it stops (_stopping_answer): down
                raise PeerUnavailable(str(error), sent=True)
            raise error
        return response

    def _failed(self, failure, peer_id: int, verb: str, silent_s: float = 0.0) -> None:
        if failure.check(PeerUnavailable):
            self._mark(peer_id, False, silent_s)
        elif not failure.check(StaleEpoch):
            self.log.failure("{verb} to replica {peer} failed", failure, verb=verb, peer=peer_id)

    def _ask(self, peer_id: int, message: Message, timeout_s: float,
             answered: Callable[[PeerResponse], None], failed: Callable[[], None]) -> None:
        """Call ``peer_id`` for the node: ``answered(response)``, or ``failed()`` if the
        call failed or its answer did not parse (``answered`` raised). Either way the
        node hears of it: an answer it never heard of would leave it waiting on that
        peer (for a take-over's catch-up, until the next election)."""
        verb = message.verb

        def not_answered(failure) -> None:
            self._failed(failure, peer_id, verb, timeout_s)
            failed()

        d = self.call(peer_id, message, timeout_s)
        d.addCallback(answered).addErrback(not_answered)
        d.addErrback(self._failed, peer_id, verb)

    # NodeActions (called by the node) ---------------------------------------------------

    def _known_down(self, peer_id: int) -> bool:
        """A ping or call to it just failed, or its link dropped: no objection is
        expected from it (send_prevote).  Elections still ask it: skipping a peer that is
        merely starting up made lower replicas win and be bullied back at every cluster
        start."""
        return peer_id in self._suspected or self.links[peer_id].down

    def _silent_for(self, peer_id: int) -> float:
        """How long the peer is known to have been silent: math.inf if its link
        dropped, since its failed call began if it is suspected, else 0."""
        if self.links[peer_id].down:
            return math.inf
        since = self._suspected.get(peer_id)
        return 0.0 if since is None else self.reactor.seconds() - since

    def send_election(self, peer_id: int, epoch: int) -> None:
        def answered(response: PeerResponse) -> None:
            epoch_text, _, coordinator = response.payload.partition(" ")
            peer_epoch = peerwire.parse_epoch(epoch_text)
            if response.kind == "OK":
                self.node.answer_received(peer_id, peer_epoch)
                return
            self.node.epoch_seen(peer_epoch)
            if coordinator:     # it follows a live coordinator above us (node.py I8b)
                self.node.election_objected(
                    peer_id, peerwire.parse_int(coordinator, "coordinator"))
            else:
                self.node.election_send_failed(peer_id)

        self._ask(peer_id, peerwire.Election(epoch), self.timers.answer_timeout,
                  answered, lambda: self.node.election_send_failed(peer_id))

    def send_prevote(self, peer_id: int, epoch: int) -> None:
        if self._known_down(peer_id):
            # No objection from a peer this replica cannot reach; still ask it.
            self.reactor.callLater(0, self.node.prevote_failed, peer_id)

        def answered(response: PeerResponse) -> None:
            epoch_text, _, coordinator = response.payload.partition(" ")
            self.node.epoch_seen(peerwire.parse_epoch(epoch_text))
            objection = None
            if response.kind == "NO":
                objection = peerwire.parse_int(coordinator, "coordinator")
            self.node.prevote_answered(peer_id, objection)

        self._ask(peer_id, peerwire.PreVote(epoch), self.timers.answer_timeout,
                  answered, lambda: self.node.prevote_failed(peer_id))

    def send_coordinator(self, peer_id: int, epoch: int) -> None:
        """Announce; a peer silent for as long as its answer would be waited for (a
        hung coordinator, after its failed ping and the ELECTION it did not answer) does
        not hold the take-over up for answer_timeout again (0.3 s of a failover); still
        tell it, in case.  A younger suspicion (one lost 0.2 s ping) is waited out as
        node.py's peer_down would: a take-over with a quorum of 1 that counted a live
        peer out served without its writes."""
        if self._silent_for(peer_id) >= self.timers.answer_timeout:
            self.reactor.callLater(0, self.node.coordinator_send_failed, peer_id, epoch)

        def answered(response: PeerResponse) -> None:
            if response.kind == "OK":
                self.node.coordinator_accepted(peer_id, epoch)
            else:
                peer_epoch = peerwire.parse_epoch(response.payload)
                self.node.coordinator_rejected(peer_id, peer_epoch, epoch)

        self._ask(peer_id, peerwire.Coordinator(epoch), self.timers.answer_timeout,
                  answered, lambda: self.node.coordinator_send_failed(peer_id, epoch))

    def pull_for_take_over(self, peer_id: int, epoch: int) -> None:
        """The peer accepted the epoch: pull all it took until then (a fresh pull, not
        one begun before), its PING given answer_timeout as the announcement was.  With
        ping_timeout's 0.2 s a PING lost to a loaded machine failed the pull, and a
        take-over with a quorum of 1 served without that live peer's writes (the
        request ids among them: node.py, peer_down).  In its turn: after the pulls
        streaming before it, it asks only for what they did not bring (sync.py)."""
        timers = self.timers
        d = self.sync.sync_from(peer_id, fresh=True, in_turn=True, ping_timeout_s=max(
            timers.answer_timeout, timers.ping_timeout))
        d.addCallback(lambda ok: self.node.pull_done(peer_id, epoch, bool(ok)))
        d.addErrback(self._failed, peer_id, "take-over pull")

    def history_ready(self, pulled: set[int]) -> bool:
        """A fresh cluster's first coordinator makes the cluster id (joining.py), once
        every other member accepted its epoch and was pulled from (or at once with
        --new-cluster).  Not before: a member seen unbound that has not answered since
        may have won before it, made an id and stalled before anyone saw it; an id made
        now would begin a second history, and the two coordinators would follow each
        other's announcements for ever (their links, made unbound, carry no id to
        compare).  Such a member that comes back bullies this replica (or is followed)
        and its id reaches it in a PING answer."""
        if self._bound:
            return True
        missing = sorted(set(self.config.ids) - {self.my_id} - pulled)
        if missing and not self.new_cluster:
            if not self._waiting_for_members_said:
                self._waiting_for_members_said = True
                self.log.info("replica {id} waits for every member before it begins the "
                              "history of a new cluster: {missing} not heard from yet",
                              id=self.my_id, missing=", ".join(map(str, missing)))
            return False
        self.store.bind_cluster(new_cluster_id())
        self.log.info("replica {id} begins the history of cluster {cluster}",
                      id=self.my_id, cluster=self.store.cluster_id)
        return True

    def holders(self, peers: set[int]) -> set[int]:
        clock, known = self.store.clock, self.sync.peer_clocks
        return {p for p in peers if p in known and clock <= known[p]}

    def catch_up(self, peer_id: int, epoch: int) -> None:
        def answered(response: PeerResponse) -> None:
            held = response.kind == "OK"
            if held:
                self.sync.peer_clocks[peer_id] = peerwire.decode_clock(response.payload)
                held = peer_id in self.holders({peer_id})
            self.node.caught_up(peer_id, epoch, held)

        self._ask(peer_id, peerwire.CatchUp(epoch), self.timers.election_wait,
                  answered, lambda: self.node.caught_up(peer_id, epoch, False))

    def role_changed(self, role: Role, coordinator: int | None, epoch: int) -> None:
        self.log.info(
            "replica {id} is now {role}; coordinator {coordinator}, epoch {epoch}",
            id=self.my_id, role=role.value, coordinator=coordinator, epoch=epoch,
        )
        self.metrics.role_changed(role.value, coordinator, epoch)   # metrics hook
        self.quorum_index.release()     # reads held for a quorum decide again
        if role is Role.STOPPED:
            return
        self.detector.reset()
        if coordinator is not None:
            self._suspected.pop(coordinator, None)   # it just announced itself: alive
            self._moved_to(coordinator, epoch)

    def persist_epoch(self, epoch: int) -> None:
        self.store.set_epoch(epoch)

    # Failure detection -----------------------------------------------------------------

    def client_connected(self) -> None:
        """A client arrived: a follower checks its coordinator (unless recently OK)."""
        if self.node is not None and self.node.role is Role.FOLLOWER:
            self.detector.check()

    def _ping_coordinator(self) -> defer.Deferred[bool]:
        coordinator = self.node.coordinator
        if coordinator is None or coordinator == self.my_id:
            return defer.succeed(True)
        self._pinged_coordinator = coordinator

        def alive(status: PeerStatus) -> bool:
            self._compare(status)        # cheap anti-entropy on every heartbeat
            if status.role != "coordinator":
                return False
            self._coordinator_seen = (coordinator, status.clock)
            return True

        d = self.ping(coordinator, self.timers.ping_timeout)
        d.addCallback(alive)
        d.addErrback(lambda f: f.trap(PeerUnavailable, PeerWireError, StaleEpoch) and False)
        return d

    def _suspect(self, peer_id: int | None, waited_s: float = 0.0) -> None:
        """A call to the peer, begun ``waited_s`` ago, failed."""
        if peer_id is not None:
            self._suspected.setdefault(peer_id, self.reactor.seconds() - waited_s)
            self._forwards_dead(peer_id)
            self.node.poke()

    def _link_lost(self, peer_id: int) -> None:
        """The connection to a peer dropped.  If it was our coordinator, check it now
        rather than at the next heartbeat: a crashed process closes its sockets."""
        self._mark(peer_id, False, silent_s=math.inf)
        node = self.node
        if node is None:
            return
        self._forwards_dead(peer_id)
        node.poke()
        if node.role is Role.FOLLOWER and node.coordinator == peer_id:
            self.detector.reset()
            self.detector.check()

    def _coordinator_ping_failed(self) -> None:
        self._suspect(self._pinged_coordinator, self.timers.ping_timeout)
        if self.node.coordinator == self._pinged_coordinator:
            self.log.info("coordinator {coordinator} did not answer a ping",
                          coordinator=self._pinged_coordinator)
            self.node.coordinator_failed()

    def ping(self, peer_id: int, timeout_s: float) -> defer.Deferred[PeerStatus]:
        """PING a peer; learn its epoch; errback PeerUnavailable if it does not answer."""
        d = self.call(peer_id, peerwire.Ping(self.node.epoch), timeout_s)

        def parsed(response):
            status = PeerStatus.parse(peer_id, response.payload)
            self.metrics.peer_status(status)   # metrics hook: /cluster.json, lag
            self.node.epoch_seen(status.epoch)
            return status

        def down(failure):
            failure.trap(PeerUnavailable)
            self._mark(peer_id, False, timeout_s)
            return failure

        return d.addCallbacks(parsed, down)

    def _lease_tick(self) -> None:
        """Every ping_interval: tell the node this process runs (pause detection), and
        in quorum mode a coordinator hears from every peer, which keeps its lease
        (Node.contact through _mark)."""
        self.node.tick()
        if self.config.quorum_mode and self.node.role.is_coordinator:
            for peer_id in self.links:
                d = self.ping(peer_id, self.timers.ping_timeout)
                d.addErrback(lambda f: f.trap(PeerUnavailable, PeerWireError, StaleEpoch))

    def _anti_entropy_tick(self) -> None:
        for peer_id in self.links:
            self._anti_entropy_with(peer_id)

    def _anti_entropy_with(self, peer_id: int, link_back: bool = False) -> None:
        """PING a peer and compare clocks; ``link_back``: its link was down until now,
        so nothing it has is still in flight to this replica, and what this replica
        lacks is pulled at once (sync.Synchroniser.compare)."""
        if self.node is None or self.node.role is Role.STOPPED:
            return
        d = self.ping(peer_id, self.timers.ping_timeout)
        d.addCallback(self._compare_with_peer, link_back)
        d.addErrback(lambda f: f.trap(PeerUnavailable, PeerWireError, StaleEpoch))

    def _discovery_tick(self) -> None:
        if self._bound:
            self._discovery.stop()
            return
        self._anti_entropy_tick()
        now = self.reactor.seconds()
        if not self.joining.fresh and (self.joining.knows_history
                                       or now - self._started_at >= WAITING_FIRST_LOG_S):
            if now - self._last_waiting_log >= WAITING_LOG_INTERVAL_S:
                self._last_waiting_log = now
                self.log.warn(
                    "replica {id} has no cluster history yet and waits to copy the "
                    "cluster's data before it serves or acknowledges writes: {what}",
                    id=self.my_id, what=self.joining.waiting_for(),
                )

    def _compare_with_peer(self, status: PeerStatus, link_back: bool = False) -> None:
        self._compare(status, link_back)
        node = self.node
        if status.role != "coordinator" or status.peer_id == node.coordinator:
            return
        # A peer coordinating in the newest epoch is followed as if it had announced
        # itself: its announcement may never arrive (the path towards this replica is
        # cut or its peer port flooded) while this replica's PINGs reach it, and an
        # election would end the same way, or loop if no COORDINATOR can arrive.
        # The node's checks are those of an announcement (a lower eligible peer, an
        # older epoch, another cluster's coordinator are not followed).
        # TOLD_OUR_TERM: a lower replica's claim of an older term, its answer sent
        # before this replica's announcement reached it (one that followed it while it
        # looked at its peers, _rejoin, then won); the node told it our term again.
        if (self._of_this_cluster(status)
                and node.coordinator_received(status.peer_id, status.epoch)
                in (Announcement.ACCEPTED, Announcement.TOLD_OUR_TERM)):
            return
        # Two coordinators (a healed partition, an older epoch): Bully sorts it out.
        self.log.info("replica {peer} also claims to be coordinator; holding an election",
                      peer=status.peer_id)
        node.start_election("second coordinator seen")

    def _of_this_cluster(self, status: PeerStatus) -> bool:
        """The peer holds this replica's cluster history, or none yet."""
        return status.cluster_id in (None, self.store.cluster_id)

    def _compare(self, status: PeerStatus, link_back: bool = False) -> None:
        """What a peer's PING answer means for identity and anti-entropy."""
        self.joining.peer_seen(status.peer_id, status.cluster_id,
                               empty=status.clock == VectorClock())
        if self._bound:
            if self._of_this_cluster(status):
                self.sync.compare(status, at_once=link_back)
            return
        if self.joining.fresh:
            if status.cluster_id is not None:
                # A fresh cluster's coordinator made the id: nothing existed before it.
                self._bind(status.cluster_id, f"fresh cluster, id from replica {status.peer_id}")
            else:
                self.node.set_candidacy(Candidacy.YES, "every member is new: a fresh cluster")
            self.sync.compare(status)
            return
        if status.cluster_id is not None:
            self.node.set_candidacy(Candidacy.NO, "the cluster has a history to copy first")
            copying = len(self._joining_from) + self.joining.copied
            if (not self.joining.has_copied(status.peer_id)
                    and status.peer_id not in self._joining_from
                    and copying < self.joining.pulls_needed):
                self._join_from(status)

    def _join_from(self, status: PeerStatus) -> None:
        """Copy a bound peer: a full copy into an empty store, else what it has and
        this replica lacks (a delta covers all of it: the store's clock invariant)."""
        self._joining_from.add(status.peer_id)
        d = self.sync.sync_from(status.peer_id, full=self.store.is_empty)

        def copied(ok: bool) -> None:
            self._joining_from.discard(status.peer_id)
            if not ok or self._bound:
                return
            cluster = self.joining.pulled(status.peer_id, status.cluster_id)
            if cluster is not None:
                self._bind(cluster, f"copied {self.joining.pulls_needed} peer(s)",
                           copied=True)

        d.addCallback(copied)

    def _bind(self, cluster_id: str, reason: str, copied: bool = False) -> None:
        """Join the cluster history ``cluster_id``.  ``copied``: by copying peers, which
        may lack writes this replica issued before its disk was wiped (held by a peer
        it cannot reach): its writes take a new origin (identity.py), or it would issue
        their ids again."""
        store = self.store
        origin = new_origin({*self.config.ids, *store.clock}) if copied else None
        store.bind_cluster(cluster_id, origin)
        self.log.info("replica {id} joins cluster {cluster}: {reason}{numbered}",
                      id=self.my_id, cluster=cluster_id, reason=reason,
                      numbered="" if origin is None else
                      f"; its writes are numbered under origin {origin} from now on")
        self.node.set_candidacy(Candidacy.YES, reason)

    # Client requests -------------------------------------------------------------------

    def status(self, request: Request) -> Reply:
        return Reply("STATUS", lines=wire.status_lines(self.status_fields()),
                     meta=self._meta(request, self.store.clock))

    def status_fields(self) -> dict[str, str]:
        node = self.node
        coordinator = node.coordinator
        return {
            "id": str(self.my_id),
            "role": node.public_role,
            "coordinator": str(coordinator) if coordinator is not None else "-",
            "epoch": str(node.epoch),
            "clock": self.store.clock.encode(),
            "keys": str(self.store.count()),
            "peers": ",".join(
                f"{p}:{'up' if up else 'down'}" for p, up in sorted(self.peer_up.items())
            ),
            "conflicts": str(self.store.conflicts),
            "write_quorum": str(self.config.write_quorum),
            "mode": "quorum" if self.config.quorum_mode else "available",
            "follower_reads": "yes" if self.config.follower_reads else "no",
            "confirmed_reads": "yes" if self.config.confirmed_reads else "no",
            "reads_here": "yes" if self._reads_here() else "no",
            "cluster_id": self.store.cluster_id or "-",
            "origin": str(self.store.origin),
            "ready": "yes" if node.serving_as is not None else "no",
            "disk": "full" if self.commits.disk_full else "ok",
            "version": replicad.__version__,
        }

    def _meta(self, request: Request, vc: VectorClock,
              executed: bool = False) -> ReplyMeta | None:
        """``executed``: this replica served the request (a read: a follower's too)."""
        if request.context is None:
            return None
        node = self.node
        return ReplyMeta(
            vc=vc, by=self.my_id if executed or node.serving_as == self.my_id else None,
            coord=node.coordinator, epoch=node.epoch, here=self.my_id,
            cluster=self.store.cluster_id,
        )

    def _error(self, request: Request, code: str, message: str) -> Reply:
        return wire.error_reply(code, message).with_meta(self._meta(request, self._shown_clock()))

    def handle(self, request: Request, placed=None,
               started: float | None = None) -> defer.Deferred[Reply]:
        """Serve a data request; ``placed()`` is called once its place in the order is
        fixed (client_protocol: a pipelining client's next request may start then).
        ``started``: when it arrived, if earlier than now (a confirmed read forwarded
        after all), for its latency in the metrics."""
        reply = self._forward_now(request)
        if reply is None:
            reply = self.writes.take(request, placed)
        if reply is None:
            reply = defer.ensureDeferred(self._handle(request, placed))
        return self.metrics.request(request.command, reply, started)   # metrics hook

    def answer_now(self, request: Request) -> Reply | None:
        """The read fast path: the answer, if this replica can give it at once (it
        serves, the session needs nothing it lacks, no write is waiting for its
        COMMIT); else None and the request takes the full path (handle)."""
        if not self._can_read_now(request):
            return None
        started = self.reactor.seconds()   # metrics hook
        reply = self._read(request)
        self.metrics.answered(request.command, reply, started)   # metrics hook
        return reply

    def _can_read_now(self, request: Request) -> bool:
        # _reads_here(), inline: asked for every read, on followers too.
        return (request.is_read
                and (self.node.serving_as == self.my_id
                     or (self.config.follower_reads and self._may_read_here()))
                and self.commits.settled
                and (request.context is None    # a session's reads may need to wait
                     or request.context.requirement() <= self.store.clock))

    def _shows(self, request: Request) -> bool:
        """A DEL may answer NOTFOUND from what this replica holds of its key: in quorum
        mode, not from a DEL of this coordinator's still waiting for its quorum
        (quorumindex.py says why)."""
        index = self.quorum_index
        if index.quiet:
            return True
        record = self.store.get(request.key)
        return record is None or record.origin != self.store.origin or index.shows(record.seq)

    def _shown_clock(self, request: Request | None = None) -> VectorClock:
        """The clock a reply carries: the store's, less this coordinator's writes from
        the first still waiting for its quorum (quorum mode), but never less than what
        ``request``'s session requires (a read answered here holds all that: its own
        writes may have their quorum while an earlier write of another client still
        waits, and a reply must not say it was served without them)."""
        index = self.quorum_index
        if index.quiet:
            return self.store.clock
        shown = index.cap(self.store.clock, self.store.origin)
        if request is not None and request.context is not None:
            shown = shown.merge(request.context.requirement())
        return shown

    def _reads_here(self) -> bool:
        """This replica answers a read itself right now (once its writes are durable
        and the session's clocks are covered): the serving coordinator, or a follower
        that _may_read_here.  STATUS says so (``reads_here``)."""
        return self.node.serving_as == self.my_id or self._may_read_here()

    def _may_read_here(self) -> bool:
        """follower_reads: this follower may answer a read itself if its coordinator
        answered a ping within the heartbeat interval and this replica holds every write
        the coordinator had when it answered (a read without a session then misses at
        most the writes of one heartbeat interval; a session's own clocks are checked
        by the caller, as on the coordinator).  Else the read is forwarded."""
        if not self.config.follower_reads or self.config.quorum_mode:
            # Quorum mode: this follower may hold writes its coordinator has not yet
            # got a quorum for, which no read may show (quorumindex.py); confirmed
            # reads answer there instead (they are checked against what it confirmed).
            return False
        seen = self._coordinator_seen
        return (seen is not None and seen[0] == self._live_coordinator()
                and seen[1] <= self.store.clock)

    def _live_coordinator(self) -> int | None:
        """The coordinator this replica follows, if it answered a ping within the
        heartbeat interval and this replica is joined and not refusing: reads may be
        answered here in its name (follower reads, confirmed reads); else None."""
        coordinator = self.node.follows
        if coordinator is not None and self._bound and self.detector.recently_ok():
            return coordinator
        return None

    def answer_confirmed(self, request: Request, deliver) -> bool:
        """A follower's read, answered from its own store once its coordinator has
        confirmed, after the read arrived, the writes it had made durable (Raft's
        ReadIndex with a vector clock: confirmedreads.py), by ``deliver(reply)``; False
        where the read takes the forwarding path instead.  No Deferred on the way: a
        follower's hot path."""
        if not (request.is_read and self.config.confirmed_reads):
            return False
        coordinator = self._live_coordinator()
        if coordinator is None:
            return False
        self.confirmations.confirm(
            (request, deliver, coordinator, self.reactor.seconds()))   # metrics hook
        return True

    def _answer_confirmed(self, confirmation: tuple[int, VectorClock] | None,
                          reads: list) -> None:
        """The reads a confirmation covers: each answered here once this replica holds
        every write of the confirmed clock and of the session's, all committed (at once,
        or when the push of one it lacks arrives: AwaitingWrites), if the coordinator
        that confirmed is the one it arrived under and this replica still follows; else
        forwarded after all (a coordinator that changed or did not confirm, or a push
        that did not come within ping_timeout)."""
        node = self.node
        coordinator = node.coordinator
        valid = (confirmation is not None and self.store is not None
                 and node.role is Role.FOLLOWER and confirmation[0] == coordinator)
        outcomes = self.confirmations.outcomes   # metrics hook
        # Whether this replica covers the confirmed clock, asked once for the reads
        # without a session: nothing a read's delivery does changes this store at once
        # (a follower's store changes only by pushes and pulls, which come by the reactor).
        confirmed = confirmation[1] if valid else None
        covered = valid and self._covers(confirmed)
        within = not self.config.quorum_mode
        for read in reads:
            if not valid or read[2] != coordinator:
                self._forward_read(read)
                continue
            context = read[0].context
            if context is None:
                need, covers = confirmed, covered
            else:
                need = confirmed.merge(context.requirement())
                covers = self._covers(need)
            if not covers:
                self.awaiting.add(need, read)
            elif not (within or self._within(read[0], need)):
                self._forward_read(read)
            else:
                outcomes["answered"] += 1   # metrics hook
                self._answer_read(read, need)

    def _covers(self, need: VectorClock) -> bool:
        """This replica holds every write of ``need``, and nothing uncommitted."""
        store = self.store
        return store is not None and need <= store.clock and self.commits.settled

    def _within(self, request: Request, need: VectorClock) -> bool:
        """Quorum mode: what this follower would show of the read's key is within the
        confirmed clock ``need`` (it may hold a write its coordinator has no quorum for
        yet, which no read may show: quorumindex.py); else the read is forwarded."""
        if not self.config.quorum_mode:
            return True
        store = self.store
        if request.command != "GET":
            return store.clock <= need
        record = store.get(request.key)
        return record is None or record.seq <= need.get(record.origin, 0)

    def _answer_read(self, read, need: VectorClock) -> None:
        """Answer a confirmed read; in quorum mode its reply carries the confirmed clock
        (what it showed is within it), not this follower's own."""
        request, deliver, _, started = read
        reply = self._read(request, need if self.config.quorum_mode else None)
        self.metrics.answered(request.command, reply, started)   # metrics hook
        deliver(reply)

    def _answer_waited(self, read, need: VectorClock) -> None:
        if not self._within(read[0], need):
            self._forward_read(read)
            return
        self.confirmations.outcomes["waited"] += 1   # metrics hook
        self._answer_read(read, need)

    def _forward_read(self, read) -> None:
        """The read takes the path it would have taken unconfirmed (handle's, timed in
        the metrics from its arrival, not from now); a failure is delivered as such
        (the client protocol answers it ERR INTERNAL, as for any request)."""
        self.confirmations.outcomes["forwarded"] += 1   # metrics hook
        request, deliver, _, started = read
        try:
            forwarded = self.handle(request, started=started)
        except Exception:
            forwarded = defer.fail()
        forwarded.addBoth(deliver)

    def _ask_read_index(self) -> defer.Deferred[tuple[int, VectorClock] | None]:
        """READINDEX to the coordinator this follower follows: (it, its durable clock),
        or None if it does not confirm (not serving, an older replica's ERR, no answer
        within ping_timeout: the reads are forwarded)."""
        node = self.node
        coordinator = node.coordinator
        if node.role is not Role.FOLLOWER or coordinator is None:
            return defer.succeed(None)
        d = self.call(coordinator, peerwire.ReadIndex(node.epoch), self.timers.ping_timeout)

        def answered(response: PeerResponse) -> tuple[int, VectorClock] | None:
            if response.kind != "OK":
                return None
            return coordinator, peerwire.decode_clock(response.payload)

        return d.addCallback(answered)

    def _read(self, request: Request, vc: VectorClock | None = None) -> Reply:
        """Answer a read from this replica's store, its reply carrying ``vc`` (default:
        the clock it may show)."""
        store = self.store
        meta = self._meta(request, self._shown_clock(request) if vc is None else vc,
                          executed=True)
        index = self.quorum_index
        # Quorum mode, a read answered as the coordinator: as of its writes whose
        # quorum is decided (a follower's confirmed read, with ``vc``, checked its own).
        shown = vc is None and not index.quiet
        holds = (request.context.requirement().get(store.origin, 0)
                 if shown and request.context is not None else 0)
        if request.command == "GET":
            record = store.get(request.key)
            if shown:
                record = index.shown(request.key, record, store.origin, holds)
            if record is None or record.value is None:      # absent, or a tombstone
                return Reply("NOTFOUND", meta=meta)
            return Reply("VALUE", record.value, meta=meta)
        return self._keys(request, meta, holds if shown else None)

    def _keys(self, request: Request, meta: ReplyMeta | None, holds: int | None) -> Reply:
        """A KEYS reply: at most ``max_keys`` keys, a page of them if asked for (a page
        shorter than its LIMIT is the last), else ERR TOOMANY.  ``holds``: quorum mode,
        as of the writes whose quorum is decided (``_shown_keys``)."""
        prefix, page = request.key or "", request.page
        after = page.after if page is not None else None
        most = self.config.limits.max_keys
        limit = page.limit if page is not None else None
        # One more than a reply holds says whether more are left; the quorum index
        # may hide as many of them as it holds keys.
        hidden = 0 if holds is None else len(self.quorum_index.keys_written())
        asked = (limit or most) + 1 + hidden
        keys = self.store.keys(prefix, after, asked)
        if holds is not None:
            keys = self._shown_keys(prefix, keys, holds, after,
                                    keys[-1] if len(keys) == asked else None)
        if len(keys) <= (limit or most):
            return Reply("KEYS", lines=tuple(keys), meta=meta)
        if limit is not None:
            return Reply("KEYS", lines=tuple(keys[:limit]), meta=meta)
        # The number first: a client pages with LIMITs no larger (client.py).
        where = f"start with {prefix!r}" if prefix else "are live"
        asking = f"KEYS {prefix} " if prefix else "KEYS "
        return wire.error_reply(
            Code.TOOMANY, f"{most} keys at most in one reply, and more {where}: ask for "
                          f"them in pages, {asking}LIMIT {most}, then {asking}AFTER <its "
                          f"last key> LIMIT {most} until a page is short").with_meta(meta)

    def _shown_keys(self, prefix: str, keys: list[str], holds: int,
                    after: str | None = None, upto: str | None = None) -> list[str]:
        """A KEYS listing as of the writes whose quorum is decided (quorumindex.py): of
        the keys above ``after`` and up to ``upto`` (the last one read, when the read
        stopped at its limit)."""
        listed = set(keys)
        index, store = self.quorum_index, self.store
        for key in index.keys_written():
            if (key.startswith(prefix) and (after is None or key > after)
                    and (upto is None or key <= upto)):
                record = index.shown(key, store.get(key), store.origin, holds)
                if record is not None and record.value is not None:
                    listed.add(key)
                else:
                    listed.discard(key)
        return sorted(listed)

    def _unavailable(self, request: Request) -> Reply:
        vetoed = self.node.vetoed
        if vetoed is not None:
            why = f"{veto_reason(vetoed)}; try another replica"
        elif self.node.cannot_serve:
            why = "this replica's side of the cluster has no majority"
        elif not self.node.eligible:
            why = "this replica is still copying the cluster's data"
        else:
            why = f"no coordinator within {self.timers.election_wait:g} s"
        return self._error(request, Code.UNAVAILABLE, f"{why}; nothing was done")

    async def _handle(self, request: Request, placed=None,
                      deadline: float | None = None) -> Reply:
        if deadline is None:
            deadline = self.reactor.seconds() + self.timers.election_wait
        node = self.node
        while True:
            coordinator = await node.when_serving(deadline)
            if coordinator is None:
                return self._unavailable(request)
            if coordinator == self.my_id:
                try:
                    return await self._coordinate(request, placed)
                except NotCoordinator:
                    continue
            if not await self.detector.check():
                # The failed ping started an election: wait for news, do not spin.
                await self._state_change(coordinator, deadline)
                continue
            sent_in = node.epoch
            try:
                return await self._forward(coordinator, request)
            except (StaleEpoch, PeerUnavailable) as e:
                reply = await self._forward_failed(request, coordinator, sent_in, e, deadline)
                if reply is not None:
                    return reply

    def _forward_now(self, request: Request) -> defer.Deferred[Reply] | None:
        """The follower's fast path: forward at once, with no coroutine, when the
        coordinator is known and answered a ping within the heartbeat interval (what
        _handle's loop would find); None when the full path must decide.  A forward
        that fails continues in _handle's loop, as if it had been sent from there."""
        node = self.node
        coordinator = node.serving_as
        if (coordinator is None or coordinator == self.my_id or node.cannot_serve
                or not self.detector.recently_ok()):
            return None
        deadline = self.reactor.seconds() + self.timers.election_wait
        sent_in = node.epoch
        return self._forward(coordinator, request, lambda error: defer.ensureDeferred(
            self._retry_forward(request, coordinator, sent_in, error, deadline)))

    async def _retry_forward(self, request: Request, coordinator: int, sent_in: int,
                             error: Exception, deadline: float) -> Reply:
        reply = await self._forward_failed(request, coordinator, sent_in, error, deadline)
        if reply is not None:
            return reply
        return await self._handle(request, None, deadline)

    async def _forward_failed(self, request: Request, coordinator: int, sent_in: int,
                              error: Exception, deadline: float) -> Reply | None:
        """After a failed forward: the reply if it must be final (a write that may have
        been applied), else None once it is worth trying again."""
        if isinstance(error, StaleEpoch):
            # The refusal taught us a newer epoch.  If the coordinator is the same
            # (it re-elected itself higher, as after every bully-back) nothing else
            # will change: send again at once, now in the new epoch.
            if self.node.epoch == sent_in:
                await self._state_change(coordinator, deadline)
            return None
        if error.sent and request.is_write:
            return self._error(
                request, Code.INDOUBT,
                f"coordinator {coordinator} did not answer; the write may or may "
                "not have been applied",
            )
        self._suspect(coordinator)
        if self.node.coordinator == coordinator:
            self.node.coordinator_failed()
        await self._state_change(coordinator, deadline)
        return None

    async def _state_change(self, coordinator: int, deadline: float) -> None:
        """Wait until this replica would use another coordinator (or the deadline)."""
        node = self.node
        while node.serving_as == coordinator and not node.cannot_serve:
            if not await node.wait_for_change(deadline - self.reactor.seconds()):
                return

    def _forwards_dead(self, coordinator: int) -> None:
        """Evidence that coordinator died: the forwards in flight to it stop waiting.
        An election (Bully makes a follower hold one whenever a lower replica does) or a
        higher replica taking over is no such evidence: the old coordinator is alive
        and will still answer what it was sent."""
        for forward in list(self._forwards.pop(coordinator, ())):
            forward.dead(PeerUnavailable(
                f"coordinator {coordinator} failed during the request", sent=True))

    def _moved_to(self, coordinator: int, epoch: int) -> None:
        """This replica now follows (or is) ``coordinator``: reads still waiting for
        another coordinator's answer are asked again through the usual path, which
        sends them there (or serves them here).  The old one may be deposed and cut
        off (in chaos seed 24 a read waited on one for the whole forward_timeout while
        this replica itself served: its client gave up after 5 s); a read has no
        effect, so asking again is safe.  Writes keep waiting, as one may have been
        applied there (an election is no evidence of death, _forwards_dead), but the
        old coordinator is pinged once: if it does not answer, that is the evidence,
        and its writes end in doubt now (the client sends them again with their
        request id) instead of at forward_timeout, past the client's own deadline."""
        for old, forwards in list(self._forwards.items()):
            if old != coordinator:
                for forward in [f for f in forwards if f.read]:
                    forward.dead(StaleEpoch(old, epoch))
                if forwards:
                    self._probe(old)

    def _probe(self, old: int) -> None:
        """Ping a coordinator this replica no longer follows, for the writes still
        forwarded to it: no answer declares it dead to them (_forwards_dead)."""
        def unanswered(failure) -> None:
            failure.trap(PeerUnavailable, PeerWireError)
            self._forwards_dead(old)

        d = self.ping(old, self.timers.ping_timeout)
        d.addCallbacks(lambda _: None, unanswered)
        d.addErrback(self._failed, old, "PING")

    def _forward(self, coordinator: int, request: Request,
                 retry: Retry | None = None) -> defer.Deferred[Reply]:
        """Send a request to the coordinator; the Deferred fires with its reply, or
        fails with PeerUnavailable (sent or not) or StaleEpoch, or, given ``retry``,
        with what retry(that error) gives.  The answer races the coordinator being
        declared dead (_forwards_dead): a hung one then costs about one ping interval,
        not forward_timeout.  No coroutine, timer or Deferred per forward beyond the
        one returned: a follower's hot path (forwarding.py)."""
        self._suspected.pop(coordinator, None)   # only evidence from now on counts
        waiting = self._forwards.setdefault(coordinator, set())
        forward = Forward(lambda response, error: self._forwarded(
            response, error, coordinator, request), waiting.discard, retry, request.is_read)
        waiting.add(forward)
        verb, payload = peerwire.encode_message(
            peerwire.Client(self.node.epoch, request.encode()))
        link = self.links[coordinator]
        timeout_s = self.timers.forward_timeout
        try:
            call = link.send(verb, payload, timeout_s, forward.answered)
        except PeerUnavailable as e:     # not reading: not sent
            forward.answered(None, e)
            return forward.result
        if call is None:                 # no connection yet: call() connects first
            call = link.call(verb, payload, timeout_s)
            call.addCallbacks(forward.answered, lambda failure: forward.answered(
                None, failure.value), (None,))
        forward.sent(call)
        return forward.result

    def _forwarded(self, response: PeerResponse | None, error: Exception | None,
                   coordinator: int, request: Request) -> Reply | wire.RelayedReply:
        if error is not None:     # what PeerLink.call's errback makes of the others:
            if isinstance(error, (PeerUnavailable, StaleEpoch)):
                raise error
            raise PeerUnavailable(f"replica {coordinator}: {error}", sent=True)
        response = self._answer_from(response, coordinator)
        if response.kind == "NO":
            # It is not the coordinator (any more): treat it like a failed ping.
            raise PeerUnavailable(f"replica {coordinator} is not the coordinator")
        if response.kind == "REPLY":
            texts = [response.payload]
        elif response.kind == "END":
            texts = [text for _, text in response.lines]
        else:
            self.log.warn("forwarding to {c} failed: {kind} {payload}", c=coordinator,
                          kind=response.kind, payload=response.payload)
            return self._error(request, Code.INTERNAL, "the coordinator failed to answer")
        relayed = wire.relay(texts, self.my_id)    # the coordinator's lines, as they are
        if relayed is not None:
            return relayed
        reply = wire.parse_reply_lines(texts)
        if reply.meta is not None:    # the coordinator's meta, but reached here
            reply = reply.with_meta(dataclasses.replace(reply.meta, here=self.my_id))
        return reply

    async def _coordinate(self, request: Request, placed=None) -> Reply:
        """Serve a data request as the coordinator (never with stale data).  ``placed``
        is called where the request's effect is fixed: a read answered, a write in the
        open commit group (a write placed later is applied after it)."""
        need = session.requirement(request.context)
        if not need <= self.store.clock:
            via = request.context.via if request.context else None
            if not await self.sync.catch_up(need, via):
                if self.node.serving_as != self.my_id:
                    # It stepped down meanwhile (the fetch met a newer epoch, say): the
                    # request goes to the coordinator that replaced it, which may hold
                    # the writes (the session's last server often is that one).
                    raise NotCoordinator()
                lacking = session.missing(need, self.store.clock).encode()
                return self._error(
                    request, Code.STALE,
                    f"this replica lacks writes your session has seen ({lacking}) and could "
                    f"not fetch them within {self.timers.fetch_timeout:g} s; nothing was done",
                )
        node = self.node
        if node.serving_as != self.my_id:
            raise NotCoordinator()
        epoch = node.coordinator_epoch
        store = self.store
        while request.is_read and not self.commits.settled:
            # Never answer with a write not yet on disk.  Checked again after the wait:
            # a writer told before this read may have opened the next group already.
            await self.commits.durable()
            if node.serving_as != self.my_id:
                raise NotCoordinator()
        if request.is_read:
            if placed is not None:
                placed()
            return self._read(request)
        rid = request.context.rid if request.context else None
        if rid is not None and store.request(rid) is not None and not self.commits.settled:
            # Sent again while its first copy waits for its COMMIT: answered (and pushed
            # again) only once the first could be, and only if that COMMIT worked (if
            # it failed, this copy is decided afresh).
            await self.commits.durable()
            if node.serving_as != self.my_id:
                raise NotCoordinator()
        done = store.request(rid) if rid is not None else None
        if done is not None:
            return await self.writes.replay(request, done)
        if request.command == "DEL":
            current = store.get(request.key)
            if current is None or current.deleted:
                if rid is None and not self._shows(request):
                    # NOTFOUND because of a DEL still waiting for its quorum: decided
                    # once that quorum is (quorumindex.py)
                    await self.quorum_index.advanced()
                    return await self._coordinate(request, placed)
                if rid is None and not self.commits.settled:
                    # NOTFOUND reads the store: like a read, it is answered only from
                    # what is durable (the DEL before it may still fail), so decide again
                    await self.commits.durable()
                    return await self._coordinate(request, placed)
                if rid is not None:
                    # Its answer must hold wherever the request turns up again (a copy
                    # queued at a paused coordinator, a retry elsewhere): a no-op
                    # marker, replicated like a write (store.py).
                    return await self.writes.apply(request, rid, epoch, placed, noop=True)
                if placed is not None:
                    placed()
                return Reply("NOTFOUND", meta=self._meta(request, self._shown_clock(request)))
        return await self.writes.apply(request, rid, epoch, placed)

    def _disk_failed(self, error: BaseException, committing: bool) -> None:
        """The disk failed (the store tells this once).  A COMMIT that failed may be on
        the disk after all (an fsync's EIO; store.outcome_unknown): this process no
        longer knows what its disk holds, and a later COMMIT could report durable what
        is not (after a failed fsync the kernel may have dropped the pages and cleared
        the error).  A page it cannot read, or a corrupt one (store.disk_broken), leaves
        every request that needs it failing, while the replica answers pings and stays
        the coordinator: its clients would have nowhere to go.  Either way it stops, as
        PostgreSQL, etcd and Redis (appendfsync always) do on a failed fsync: the others
        serve meanwhile (a coordinator among them is elected), and a restart on a sound
        disk reads what it holds (SQLite recovers the WAL) and catches up.  The requests
        of this turn are answered first: the writers of a failed COMMIT in doubt
        (writes.py), any other that failed by ``stopping_reply``."""
        if not self._stop(f"its disk failed ({error})"):
            return
        if committing:
            self.log.critical(
                "replica {replica} stops: its disk failed during a COMMIT ({error}); the "
                "writes in it may or may not be on the disk. Check the disk, then start "
                "the replica again: it recovers what its database holds and catches up "
                "(exit status {status})", replica=self.my_id, error=error,
                status=EXIT_DISK_FAILED)
        else:
            self.log.critical(
                "replica {replica} stops: its disk failed ({error}). Check the disk and "
                "the database file, then start the replica again, or on an empty data "
                "directory to take a full copy from the others (exit status {status})",
                replica=self.my_id, error=error, status=EXIT_DISK_FAILED)

    def _check_data_file(self) -> None:
        """Every DATA_FILE_CHECK_S: is the database file still at its path?  Removed
        (the data directory deleted under the running replica) or replaced, SQLite goes
        on writing to the file it has open and says nothing, and every write acknowledged
        from then on is in a file no one can open again, gone when the process ends.  It
        stops instead, as PostgreSQL's postmaster does when its data directory's lock
        file is gone; what it acknowledged before is on the others (or reaches them with
        this turn's pushes), and started again on an empty directory it copies them."""
        lost = self.store.file_lost()
        if lost is None or not self._stop(f"its database file is gone: {lost}"):
            return
        self.log.critical(
            "replica {replica} stops: its database file is gone: {lost}. Start it again: "
            "on an empty data directory it copies the data from the others (exit status "
            "{status})", replica=self.my_id, lost=lost, status=EXIT_DISK_FAILED)

    def _stop(self, because: str) -> bool:
        """Stop with EXIT_DISK_FAILED once this turn's answers are sent (the twistd
        plugin's ``halt`` exits; a replica in a test only records ``halted``).  False:
        it is stopping already."""
        if self.halted is not None:
            return False
        self.halted = EXIT_DISK_FAILED
        self._stopping_because = because
        self.reactor.callLater(0, self._halt_now)
        return True

    def stopping_reply(self, request: Request) -> Reply | None:
        """The answer to a request that failed while this replica stops on a failed disk
        (None: it does not stop; the failure is answered ERR INTERNAL).  A read was not
        served: UNAVAILABLE, so the client asks the next server.  A write may have
        passed a coordinator before the failure (a forwarded one): in doubt."""
        if self.halted is None:
            return None
        why = self._why_stopping()
        if request.is_write:
            return wire.error_reply(
                Code.INDOUBT, f"the write may or may not have been applied: {why}")
        return wire.error_reply(Code.UNAVAILABLE,
                                f"{why}; nothing was done: ask another replica")

    def _why_stopping(self) -> str:
        """What the answers of a replica that stops say (``stopping_reply``, and the
        peer requests and streams that failed then: ``_stopping_answer``)."""
        return f"replica {self.my_id} stops: {self._stopping_because}"

    def _halt_now(self) -> None:
        self.turn_sender.send_now()     # the in-doubt answers leave first
        if self._halt is not None:
            self._halt(EXIT_DISK_FAILED)

    def _before_commit(self) -> None:
        """Nothing buffered for the end of the turn waits for a COMMIT's fsync: a
        forwarding follower's relayed replies and new forwards would otherwise wait for
        the push it applies in the same turn, and every forwarded write with them."""
        self.turn_sender.send_now()

    def _after_commit(self) -> None:
        """A group is durable and its writers were told: push its writes and send what
        the commit released (a follower's acks) in this turn.  A turn later, the pushes
        would wait behind the requests that turn reads and their group's COMMIT; in
        quorum mode every write waits for them."""
        self.sync.send_batches()
        self._recheck_awaiting()
        self.turn_sender.send_now()

    def _after_import(self) -> None:
        """A pull was committed: its reads may be answered, and a disk that was full
        takes writes again (a follower whose pushes failed catches up this way)."""
        self.commits.commit_worked()
        self._recheck_awaiting()

    def _recheck_awaiting(self) -> None:
        """Answer the confirmed reads a commit's pushes or a pull just covered."""
        if self.awaiting:
            self.awaiting.recheck()

    def _push_refused(self, peer_id: int) -> None:
        """A follower refused a push (it follows no one, or another epoch): announce
        this epoch to it again rather than wait for the next re-announcement."""
        node = self.node
        if node.role.is_coordinator and node.coordinator_epoch is not None:
            self.send_coordinator(peer_id, node.coordinator_epoch)

    # Peer requests: the edge -----------------------------------------------------------

    def peer_request(self, peer_id: int, verb: str, payload: str):
        """Decode, check the epoch once, dispatch to one handler per message."""
        self._mark(peer_id, True)
        self.links[peer_id].alive_hint()
        try:
            message = peerwire.decode_message(verb, payload)
        except PeerWireError as e:
            self.log.warn("refusing {verb} from replica {peer}: {error}", verb=verb[:20],
                          peer=peer_id, error=e)
            raise
        node = self.node
        node.epoch_seen(message.epoch)        # a newer epoch: a coordinator steps down
        if message.fenced and message.epoch < node.epoch:
            return PeerAnswer("STALE", str(node.epoch))
        handler = getattr(self, f"_on_{message.verb.lower()}")
        try:
            answer = handler(peer_id, message)
        except Exception:
            return self._stopping_answer(Failure())
        if isinstance(answer, defer.Deferred):
            answer.addErrback(self._stopping_answer)
        return answer

    def _stopping_answer(self, failure: Failure) -> PeerAnswer:
        """A peer request that failed while this replica stops on a failed disk (a push
        it could not apply, a pull it could not read): ``ERR UNAVAILABLE``, which the
        caller counts as this replica down (``_answer_from``), not a traceback per
        request on both sides (the stop is logged once, chaos seed 100).  Any other
        failure goes on to the peer port, which logs it and answers ERR INTERNAL."""
        if self.halted is None:
            failure.raiseException()
        return PeerAnswer("ERR", f"{Code.UNAVAILABLE} {self._why_stopping()}")

    def _on_ping(self, peer_id: int, message: peerwire.Ping) -> PeerAnswer:
        # A coordinator still taking over answers "coordinator": it is alive, and
        # forwarded requests wait for its take-over to finish.
        node = self.node
        status = PeerStatus(self.my_id, node.public_role, node.coordinator, node.epoch,
                            self.store.clock, self.store.cluster_id)
        return PeerAnswer("OK", status.encode())

    def _on_readindex(self, peer_id: int, message: peerwire.ReadIndex) -> PeerAnswer:
        """Confirm a follower's reads: this coordinator's durable clock, if it serves now
        (the same test a read forwarded here would meet), else NO."""
        node = self.node
        if node.serving_as != self.my_id or node.cannot_serve:
            return PeerAnswer("NO", str(node.epoch))
        # What a read here would show: committed, and (quorum mode) not from this
        # coordinator's first write still waiting for its quorum on.
        shown = self.quorum_index.cap(self.store.durable_clock, self.store.origin)
        return PeerAnswer("OK", shown.encode())

    def _on_election(self, peer_id: int, message: peerwire.Election):
        """Bully's answer (OK, and an election of this replica's own), unless this
        replica follows a coordinator above it that answers a ping now: then it
        objects in that coordinator's name, as to a pre-vote (node.py I8b), and keeps
        following it."""
        node = self.node

        def bully() -> PeerAnswer:
            answer = node.election_received(peer_id, message.epoch)
            return PeerAnswer("OK" if answer else "NO", str(node.epoch))

        coordinator = node.objection_to_election(peer_id)
        if coordinator is None:
            return bully()

        def answer(alive: bool) -> PeerAnswer:
            if not alive or node.objection_to_election(peer_id) != coordinator:
                return bully()
            node.epoch_seen(message.epoch)
            return self._objection(coordinator)

        return self._confirm_coordinator(coordinator).addCallback(answer)

    def _on_prevote(self, peer_id: int, message: peerwire.PreVote):
        """Object to a peer standing only if this replica follows a coordinator above it
        that answers a ping now (node.py I8): the asker cannot reach it, but the cluster
        can."""
        node = self.node

        def answer(objection: bool) -> PeerAnswer:
            if objection:
                return self._objection(coordinator)
            return PeerAnswer("OK", str(node.epoch))

        coordinator = node.prevote_received(peer_id)
        if coordinator is None or coordinator == self.my_id:
            return answer(coordinator is not None)
        return self._confirm_coordinator(coordinator).addCallback(answer)

    def _objection(self, coordinator: int) -> PeerAnswer:
        """``NO <epoch> <coordinator>``: do not stand, ``coordinator`` is alive (the
        answer to a PREVOTE or an ELECTION, node.py I8 and I8b)."""
        return PeerAnswer("NO", f"{self.node.epoch} {coordinator}")

    def _confirm_coordinator(self, coordinator: int) -> defer.Deferred[bool]:
        """True once ``coordinator``, which this replica follows, answered a ping saying
        it coordinates.  One that does not answer is checked as a failed heartbeat
        would be (so a crashed one is replaced at once); False then."""
        node = self.node
        if self._known_down(coordinator):
            return defer.succeed(False)

        def confirmed(status: PeerStatus) -> bool:
            return status.role == "coordinator" and node.coordinator == coordinator

        def unreachable(failure) -> bool:
            failure.trap(PeerUnavailable, PeerWireError, StaleEpoch)
            if node.coordinator == coordinator and node.role is Role.FOLLOWER:
                self._pinged_coordinator = coordinator
                self._coordinator_ping_failed()
            return False

        return self.ping(coordinator, self.timers.ping_timeout).addCallbacks(
            confirmed, unreachable)

    def _on_coordinator(self, peer_id: int, message: peerwire.Coordinator) -> PeerAnswer:
        accepted = self.node.coordinator_received(peer_id, message.epoch)
        return PeerAnswer("OK" if accepted else "NO", str(self.node.epoch))

    def _on_client(self, peer_id: int, message: peerwire.Client):
        """A request a follower forwarded.  A read this replica can answer at once is
        answered here, and a write it can take at once is taken here (Writes.take),
        with no coroutine: a forwarding follower's GETs and PUTs."""
        node = self.node
        if not node.role.is_coordinator:
            return self._not_coordinator()
        try:
            request = wire.parse_request(message.line, self.config.limits)
            if request is None or not request.needs_coordinator:
                raise WireError(Code.BADARGS, "only data requests are forwarded")
        except WireError as e:
            return _final(e.reply(), peer_id)
        try:
            if self._can_read_now(request):
                return _final(self._read(request), peer_id)
            written = self.writes.take(request)
        except Exception:
            return self._forward_failed_here(Failure(), request, peer_id)
        if written is None:
            written = defer.ensureDeferred(self._serve_forwarded(request, peer_id))
        else:
            written.addCallback(_final, peer_id)
        return written.addErrback(self._forward_failed_here, request, peer_id)

    def _forward_failed_here(self, failure: Failure, request: Request,
                             via: int) -> PeerAnswer:
        """A forwarded request that failed on this replica: while it stops on a failed
        disk, answered as on the client port (``stopping_reply``: UNAVAILABLE for a
        read, in doubt for a write), a final reply the follower relays; any other
        failure goes to the peer port, which logs it and answers ERR INTERNAL.  Before,
        a disk that failed a forwarded write's read left a traceback in the log and the
        client ERR INTERNAL from the follower, after which it asks no other server
        (chaos seed 100, a coordinator whose disk failed reads)."""
        stopping = self.stopping_reply(request)
        if stopping is None:
            failure.raiseException()
        self.log.info("forwarded {command} from replica {peer} failed as this replica "
                      "stops: {error}", command=request.command, peer=via,
                      error=failure.getErrorMessage())
        return _final(stopping, via)

    def _on_push(self, peer_id: int, message: peerwire.Push) -> PeerAnswer:
        node = self.node
        # Fencing: only the coordinator this replica accepted, in that epoch, and only
        # once this replica holds the cluster's history (joining.py).
        if not self._accepted(peer_id, message.epoch) or not (self._bound
                                                              or self.joining.fresh):
            return PeerAnswer("NO", str(node.epoch))
        store = self.store
        try:
            applied = self.commits.run(lambda: store.apply_pushed_batch(message.records))
        except sqlite3.Error as e:
            if not disk_full(e):
                raise
            return self._no_space_for_pushes()

        def answer(outcomes: list[str]) -> PeerAnswer:   # an acknowledgement: on disk now
            if "gap" in outcomes:
                self.sync.pull_when_free(peer_id)   # a push was lost: fetch what is missing
            return PeerAnswer("OK", ",".join(outcomes))

        def failed(failure):
            if failure.check(GroupFailed) and failure.value.disk_full:
                return self._no_space_for_pushes()
            return failure       # a failed disk: _stopping_answer

        return applied.addCallbacks(answer, failed)

    def _no_space_for_pushes(self) -> PeerAnswer:
        """A full disk (groupcommit says so in the log, once): the coordinator hears it
        as an ERR it logs once, not as a failure with a traceback per push.  Nothing of
        the batch was applied; this replica pulls the writes once space is freed (the
        next push finds a gap, anti-entropy)."""
        return PeerAnswer("ERR", f"{Code.NOSPACE} replica {self.my_id}'s disk is full: "
                                 "nothing of the push was applied")

    def _accepted(self, peer_id: int, epoch: int) -> bool:
        """This replica follows peer_id as the coordinator of ``epoch`` (it accepted that
        announcement): the fence of what only that coordinator may ask (PUSH, CATCHUP)."""
        node = self.node
        return (node.role is Role.FOLLOWER and node.coordinator == peer_id
                and node.coordinator_epoch == epoch)

    def _on_catchup(self, peer_id: int, message: peerwire.CatchUp) -> PeerAnswer:
        """The coordinator taking over that this replica accepted asks it to hold every
        write it holds before it serves (node.py, ``_held_by_a_majority``): pull them,
        and say the clock once that is durable."""
        if not self._accepted(peer_id, message.epoch):
            return PeerAnswer("NO", str(self.node.epoch))

        def pulled(ok: bool) -> PeerAnswer:
            if not ok:      # (the pull logged why): not caught up, as if refused
                return PeerAnswer("NO", str(self.node.epoch))
            return PeerAnswer("OK", self.store.clock.encode())

        # In its turn (sync.py): a follower back from a partition pulls from each peer
        # as its link returns, and a catch-up beside those streams received what they
        # were bringing (chaos seed 105: 1,015 records, 0 applied, 122 ms of a take-over).
        return self.sync.sync_from(peer_id, in_turn=True).addCallback(pulled)

    def _on_delta(self, peer_id: int, message: peerwire.Delta) -> PeerAnswer:
        return self._stream(*self.store.export_delta(message.since, requests=True))

    def _on_full(self, peer_id: int, message: peerwire.Full) -> PeerAnswer:
        return self._stream(*self.store.export_full(requests=True))

    def _stream(self, clock: VectorClock, items) -> PeerAnswer:
        """REC lines, then REQ lines (the request ids of those writes, superseded ones
        included), then END: all from one read snapshot."""
        body = (("REC", peerwire.encode_record(item)) if isinstance(item, Record)
                else ("REQ", peerwire.encode_request_row(item)) for item in items)
        cluster = self.store.cluster_id or "-"
        return PeerAnswer("END", f"{clock.encode()} {cluster}",
                          body=self._unless_stopping(body))

    def _unless_stopping(self, body):
        """A stream's body, whose read that meets a failed disk ends it as
        ``_stopping_answer`` ends a request: ERR UNAVAILABLE, one log line."""
        try:
            yield from body
        except Exception:
            if self.halted is None:
                raise
            raise StreamRefused(f"{Code.UNAVAILABLE} {self._why_stopping()}") from None

    def _not_coordinator(self) -> PeerAnswer:
        """The refusal of a forwarded request: NO and the coordinator this replica
        knows, so the follower asks it instead."""
        return PeerAnswer("NO", str(self.node.coordinator or "-"))

    async def _serve_forwarded(self, request: Request, via: int) -> PeerAnswer:
        node = self.node
        deadline = self.reactor.seconds() + self.timers.election_wait
        if await node.when_serving(deadline) != self.my_id:
            if node.cannot_serve:
                return _final(self._unavailable(request), via)
            return self._not_coordinator()
        try:
            reply = await self._coordinate(request)
        except NotCoordinator:
            return self._not_coordinator()
        return _final(reply, via)


def _final(reply: Reply, via: int) -> PeerAnswer:
    """A forwarded request's reply, as the peer answer that carries it.  Its meta names
    the follower that forwarded it (``via``) as the replica the client reached, so the
    follower passes the lines on unchanged (wire.relay)."""
    meta = reply.meta
    if meta is not None and meta.here != via:
        reply = reply.with_meta(dataclasses.replace(meta, here=via))
    lines = reply.encode_lines()
    if len(lines) == 1:      # GET, PUT, DEL, errors: one frame, not a LINE and an END
        return PeerAnswer("REPLY", lines[0])
    return PeerAnswer("END", "", lines=tuple(("LINE", t) for t in lines))
