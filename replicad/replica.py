"""The Replica service: wires the store, the Bully machine, peer links, sync and sessions.

The logic lives in the pure modules; this file only decides *when* to call them and
turns their decisions into peer calls:

- client requests: a follower checks the coordinator is alive (client-triggered
  failure detection), forwards, and relays the reply; the coordinator catches up with
  the session's clocks, executes, pushes the write, and waits for the write quorum;
- the election's actions (ELECTION/COORDINATOR) become peer calls, and a replica that
  wins first pulls what the reachable peers have and it lacks, then serves;
- anti-entropy: a LoopingCall pings every peer and pulls (delta, or full copy when far
  behind or empty) from any peer whose clock shows writes this replica lacks.
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from replicad import peerwire, session, wire
from replicad.config import ClusterConfig
from replicad.datadir import DB_FILENAME, check_data_dir  # noqa: F401 (moved there)
from replicad.detector import HeartbeatMonitor
from replicad.election import BullyElection, Role
from replicad.peer import PeerAnswer, PeerLink, PeerUnavailable
from replicad.peerwire import PeerStatus, PeerWireError
from replicad.store import Store
from replicad.sync import Synchroniser
from replicad.vclock import VectorClock
from replicad.wire import Code, Reply, ReplyMeta, Request, WireError


class _NotCoordinator(Exception):
    """This replica stopped being the coordinator while serving a request."""


class Replica(service.MultiService):
    log = Logger()

    def __init__(self, config: ClusterConfig, my_id: int, data_dir: str, reactor,
                 new_cluster: bool = False):
        super().__init__()
        self.config = config
        self.new_cluster = new_cluster
        self.my_id = my_id
        self.data_dir = data_dir
        self.reactor = reactor
        self.timers = config.timers
        self.store: Store | None = None
        self.election: BullyElection | None = None
        self.detector: HeartbeatMonitor | None = None
        self.links: dict[int, PeerLink] = {}
        for peer_id in config.ids:
            if peer_id == my_id:
                continue
            link = PeerLink(
                reactor, my_id, peer_id,
                config.member(peer_id).peer_connect_endpoint(self.timers.connect_timeout),
                config.secret, config.limits.max_line_bytes + 1024,
                cluster_id=lambda: self.store.cluster_id if self.store else None,
            )
            link.service.setServiceParent(self)
            link.on_down = lambda peer_id=peer_id: self._link_lost(peer_id)
            link.on_up = lambda peer_id=peer_id: self._mark(peer_id, True)
            self.links[peer_id] = link
        self.peer_up: dict[int, bool] = dict.fromkeys(self.links, False)
        self._ready = False            # a coordinator serves only after its take-over pull
        self._waiters: list[defer.Deferred] = []
        self.sync: Synchroniser | None = None
        self._pinged_coordinator: int | None = None
        # Peers that failed a ping or a forward since they last answered: the evidence
        # that a forward in flight to them will get no answer.
        self._suspected: set[int] = set()
        self._anti_entropy = LoopingCall(self._anti_entropy_tick)
        self._anti_entropy.clock = reactor

    # Service life cycle ----------------------------------------------------------------

    def startService(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        self.store = Store(os.path.join(self.data_dir, DB_FILENAME))
        self.sync = Synchroniser(self.store, self.links, self.config, self.reactor,
                                 self.ping, self._mark)
        self.election = BullyElection(
            self.my_id, self.config.ids, self, self.reactor, epoch=self.store.epoch,
            answer_timeout_s=self.timers.answer_timeout,
            coordinator_timeout_s=self.timers.coordinator_timeout,
            reannounce_interval_s=self.timers.reannounce_interval,
        )
        self.detector = HeartbeatMonitor(
            self.reactor, self.timers.ping_interval, self._ping_coordinator,
            self._coordinator_ping_failed,
        )
        super().startService()
        if self.config.uses_default_secret:
            self.log.warn("using the built-in cluster secret: set [cluster] secret in production")
        self.log.info(
            "replica {id} starting: data {path}, clock {clock}, epoch {epoch}, {keys} keys",
            id=self.my_id, path=self.data_dir, clock=self.store.clock.encode(),
            epoch=self.store.epoch, keys=self.store.count(),
        )
        self.detector.start()
        self._anti_entropy.start(self.timers.anti_entropy_interval, now=False)
        self.election.start_election("start-up")

    def stopService(self):
        if self._anti_entropy.running:
            self._anti_entropy.stop()
        if self.detector is not None:
            self.detector.stop()
        if self.election is not None:
            self.election.stop()
        self._notify()
        d = defer.maybeDeferred(super().stopService)

        def close(result):
            if self.store is not None:
                self.store.close()
                self.store = None
            return result

        return d.addBoth(close)

    def _mark(self, peer_id: int, up: bool) -> None:
        """Record whether the last exchange with a peer worked; log the changes."""
        if self.peer_up.get(peer_id) != up:
            self.log.info("replica {peer} is {state}", peer=peer_id, state="up" if up else "down")
        self.peer_up[peer_id] = up
        if up:
            self._suspected.discard(peer_id)

    # ElectionActions (called by the Bully machine) -------------------------------------

    def send_election(self, peer_id: int, epoch: int) -> None:
        d = self.links[peer_id].call("ELECTION", str(epoch), self.timers.answer_timeout)

        def answered(response):
            peer_epoch = peerwire.parse_int(response.payload, "epoch")
            if response.kind == "OK":
                self.election.answer_received(peer_id, peer_epoch)
            else:
                self.election.epoch_seen(peer_epoch)
                self.election.election_send_failed(peer_id)

        d.addCallback(self._peer_answered, peer_id, answered)
        d.addErrback(self._peer_failed, peer_id, "ELECTION",
                     lambda: self.election.election_send_failed(peer_id))

    def send_coordinator(self, peer_id: int, epoch: int) -> None:
        d = self.links[peer_id].call("COORDINATOR", str(epoch), self.timers.answer_timeout)

        def answered(response):
            if response.kind != "OK":
                peer_epoch = peerwire.parse_int(response.payload, "epoch")
                self.election.coordinator_rejected(peer_id, peer_epoch)

        d.addCallback(self._peer_answered, peer_id, answered)
        d.addErrback(self._peer_failed, peer_id, "COORDINATOR", lambda: None)

    def role_changed(self, role: Role, coordinator: int | None, epoch: int) -> None:
        self.log.info(
            "replica {id} is now {role}; coordinator {coordinator}, epoch {epoch}",
            id=self.my_id, role=role.value, coordinator=coordinator, epoch=epoch,
        )
        self.detector.reset()
        self._ready = False
        if coordinator is not None:
            self._suspected.discard(coordinator)   # it just announced itself: alive
        if role is Role.COORDINATOR:
            defer.ensureDeferred(self._take_over(epoch))
        self._notify()

    def persist_epoch(self, epoch: int) -> None:
        self.store.set_epoch(epoch)

    def _peer_answered(self, response, peer_id: int, then) -> None:
        self._mark(peer_id, True)
        if response.kind == "ERR":
            raise PeerWireError(f"replica {peer_id} answered ERR {response.payload}")
        then(response)

    def _peer_failed(self, failure, peer_id: int, verb: str, then) -> None:
        if failure.check(PeerUnavailable):
            self._mark(peer_id, False)
        else:
            self.log.failure("{verb} to replica {peer} failed", failure, verb=verb, peer=peer_id)
        then()

    async def _take_over(self, epoch: int) -> None:
        """A new coordinator first pulls what reachable peers have, then serves."""
        self.log.info("coordinator {id} (epoch {epoch}) pulling from peers before serving",
                      id=self.my_id, epoch=epoch)
        await self.sync.pull_from_all()
        if self.election.role is Role.COORDINATOR and self.election.coordinator_epoch == epoch:
            self._ready = True
            self.log.info("coordinator {id} serving in epoch {epoch}, clock {clock}",
                          id=self.my_id, epoch=epoch, clock=self.store.clock.encode())
            self._notify()

    # Failure detection -----------------------------------------------------------------

    def client_connected(self) -> None:
        """A client arrived: a follower checks its coordinator (unless recently OK)."""
        if self.election is not None and self.election.role is Role.FOLLOWER:
            self.detector.check()

    def _ping_coordinator(self) -> defer.Deferred[bool]:
        coordinator = self.election.coordinator
        if coordinator is None or coordinator == self.my_id:
            return defer.succeed(True)
        self._pinged_coordinator = coordinator

        def alive(status: PeerStatus) -> bool:
            self.sync.compare(status)        # cheap anti-entropy on every heartbeat
            return status.role == Role.COORDINATOR.value

        d = self.ping(coordinator, self.timers.ping_timeout)
        d.addCallback(alive)
        d.addErrback(lambda f: f.trap(PeerUnavailable, PeerWireError) and False)
        return d

    def _suspect(self, peer_id: int | None) -> None:
        if peer_id is not None:
            self._suspected.add(peer_id)
            self._notify()     # forwards in flight to it stop waiting

    def _link_lost(self, peer_id: int) -> None:
        """The connection to a peer dropped.  If it was our coordinator, check it now
        rather than at the next heartbeat: a crashed process closes its sockets."""
        self._mark(peer_id, False)
        self._notify()     # forwards in flight to this peer stop waiting for it
        election = self.election
        if election is not None and election.role is Role.FOLLOWER:
            if election.coordinator == peer_id:
                self.detector.reset()
                self.detector.check()

    def _coordinator_ping_failed(self) -> None:
        self._suspect(self._pinged_coordinator)
        if self.election.coordinator == self._pinged_coordinator:
            self.log.info("coordinator {coordinator} did not answer a ping",
                          coordinator=self._pinged_coordinator)
            self.election.coordinator_failed()

    def ping(self, peer_id: int, timeout_s: float) -> defer.Deferred[PeerStatus]:
        """PING a peer; learn its epoch; errback PeerUnavailable if it does not answer."""
        d = self.links[peer_id].call("PING", "", timeout_s)

        def parsed(response):
            self._mark(peer_id, True)
            status = PeerStatus.parse(peer_id, response.payload)
            self.election.epoch_seen(status.epoch)
            return status

        def down(failure):
            failure.trap(PeerUnavailable)
            self._mark(peer_id, False)
            return failure

        return d.addCallbacks(parsed, down)

    def _anti_entropy_tick(self) -> None:
        for peer_id in self.links:
            d = self.ping(peer_id, self.timers.ping_timeout)
            d.addCallback(self._compare_with_peer)
            d.addErrback(lambda f: f.trap(PeerUnavailable, PeerWireError))

    def _compare_with_peer(self, status: PeerStatus) -> None:
        self.sync.compare(status)
        # Two coordinators (a healed partition, a lost announcement): Bully sorts it out.
        if status.role == Role.COORDINATOR.value and status.peer_id != self.election.coordinator:
            self.log.info("replica {peer} also claims to be coordinator; holding an election",
                          peer=status.peer_id)
            self.election.start_election("second coordinator seen")

    # Client requests -------------------------------------------------------------------

    def status(self, request: Request) -> Reply:
        return Reply("STATUS", lines=wire.status_lines(self.status_fields()),
                     meta=self._meta(request, self.store.clock))

    def status_fields(self) -> dict[str, str]:
        election = self.election
        coordinator = election.coordinator
        return {
            "id": str(self.my_id),
            "role": election.public_role,
            "coordinator": str(coordinator) if coordinator is not None else "-",
            "epoch": str(election.epoch),
            "clock": self.store.clock.encode(),
            "keys": str(self.store.count()),
            "peers": ",".join(
                f"{p}:{'up' if up else 'down'}" for p, up in sorted(self.peer_up.items())
            ),
            "conflicts": str(self.store.conflicts),
            "write_quorum": str(self.config.write_quorum),
            "ready": "yes" if self._serving_as() is not None else "no",
        }

    def _meta(self, request: Request, vc: VectorClock) -> ReplyMeta | None:
        if request.context is None:
            return None
        return ReplyMeta(
            vc=vc, by=self.my_id if self._serving_as() == self.my_id else None,
            coord=self.election.coordinator, epoch=self.election.epoch, here=self.my_id,
        )

    def _error(self, request: Request, code: str, message: str) -> Reply:
        return wire.error_reply(code, message).with_meta(self._meta(request, self.store.clock))

    def handle(self, request: Request) -> defer.Deferred[Reply]:
        return defer.ensureDeferred(self._handle(request))

    async def _handle(self, request: Request) -> Reply:
        deadline = self.reactor.seconds() + self.timers.election_wait
        while True:
            coordinator = await self._await_coordinator(deadline)
            if coordinator is None:
                return self._error(
                    request, Code.UNAVAILABLE,
                    f"no coordinator within {self.timers.election_wait:g} s; nothing was done",
                )
            if coordinator == self.my_id:
                try:
                    return await self._coordinate(request)
                except _NotCoordinator:
                    continue
            if not await self.detector.check():
                # The failed ping started an election: wait for news, do not spin.
                await self._state_change(coordinator, deadline)
                continue
            try:
                return await self._forward(coordinator, request)
            except PeerUnavailable as e:
                if e.sent and request.is_write:
                    return self._error(
                        request, Code.INDOUBT,
                        f"coordinator {coordinator} did not answer; the write may or may "
                        "not have been applied",
                    )
                self._suspect(coordinator)
                if self.election.coordinator == coordinator:
                    self.election.coordinator_failed()
                await self._state_change(coordinator, deadline)

    def _serving_as(self) -> int | None:
        """The coordinator this replica would use right now, or None while electing."""
        election = self.election
        if election is None:
            return None
        if election.role is Role.COORDINATOR:
            return self.my_id if self._ready else None
        if election.role is Role.FOLLOWER:
            return election.coordinator
        return None

    async def _await_coordinator(self, deadline: float) -> int | None:
        while (coordinator := self._serving_as()) is None:
            if not await self._news(deadline):
                return self._serving_as()
        return coordinator

    async def _state_change(self, coordinator: int, deadline: float) -> None:
        """Wait until this replica would use another coordinator (or the deadline)."""
        while self._serving_as() == coordinator:
            if not await self._news(deadline):
                return

    async def _coordinator_dead(self, coordinator: int, deadline: float) -> None:
        """Wait for evidence that coordinator died: our link to it dropped, or a ping to
        it failed.  An election (Bully makes a follower hold one whenever a lower replica
        does) or a higher replica taking over is no such evidence: the old coordinator
        is alive and will still answer what it was sent."""
        while not self.links[coordinator].down and coordinator not in self._suspected:
            if not await self._news(deadline):
                return

    async def _news(self, deadline: float) -> bool:
        """Wait for the next role change or readiness; False at the deadline."""
        remaining = deadline - self.reactor.seconds()
        if remaining <= 0 or not self.running:
            return False
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)
        waiter.addTimeout(remaining, self.reactor)
        try:
            await waiter
        except defer.TimeoutError:
            return False
        finally:
            # Every forwarded request waits here (racing its answer), so a waiter must
            # leave the list however it ends, or a steady load would grow it forever.
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    async def _forward(self, coordinator: int, request: Request) -> Reply:
        # Race the answer against this coordinator being declared dead: a hung one then
        # costs about one ping interval, not forward_timeout.  race() only counts a
        # success, so the call's outcome travels as a value (a refused call, never
        # sent, must not turn into a write in doubt).
        self._suspected.discard(coordinator)   # only evidence from now on counts
        call = self.links[coordinator].call("CLIENT", request.encode(),
                                            self.timers.forward_timeout)
        call.addCallbacks(lambda response: (response, None), lambda failure: (None, failure))
        deadline = self.reactor.seconds() + self.timers.forward_timeout
        dead = defer.ensureDeferred(self._coordinator_dead(coordinator, deadline))
        winner, outcome = await defer.race([call, dead])
        if winner == 1:
            raise PeerUnavailable(f"coordinator {coordinator} failed during the request",
                                  sent=True)
        response, failure = outcome
        if failure is not None:
            failure.raiseException()
        self._mark(coordinator, True)
        if response.kind == "NO":
            # It is not the coordinator (any more): treat it like a failed ping.
            raise PeerUnavailable(f"replica {coordinator} is not the coordinator")
        if response.kind != "END":
            self.log.warn("forwarding to {c} failed: {kind} {payload}", c=coordinator,
                          kind=response.kind, payload=response.payload)
            return self._error(request, Code.INTERNAL, "the coordinator failed to answer")
        reply = wire.parse_reply_lines([text for _, text in response.lines])
        if reply.meta is not None:
            reply = reply.with_meta(
                ReplyMeta(reply.meta.vc, reply.meta.by, reply.meta.coord, reply.meta.epoch,
                          here=self.my_id)
            )
        return reply

    async def _coordinate(self, request: Request) -> Reply:
        """Serve a data request as the coordinator (never with stale data)."""
        need = session.requirement(request.context)
        if not need <= self.store.clock:
            via = request.context.via if request.context else None
            if not await self.sync.catch_up(need, via):
                lacking = session.missing(need, self.store.clock).encode()
                return self._error(
                    request, Code.STALE,
                    f"this replica lacks writes your session has seen ({lacking}) and could "
                    f"not fetch them within {self.timers.fetch_timeout:g} s; nothing was done",
                )
        if self._serving_as() != self.my_id:
            raise _NotCoordinator()
        store = self.store
        if request.command == "GET":
            record = store.get(request.key)
            if record is None or record.deleted:
                return Reply("NOTFOUND", meta=self._meta(request, store.clock))
            return Reply("VALUE", record.value, meta=self._meta(request, store.clock))
        if request.command == "KEYS":
            keys = tuple(store.keys(request.key or ""))
            return Reply("KEYS", lines=keys, meta=self._meta(request, store.clock))
        if request.command == "DEL":
            current = store.get(request.key)
            if current is None or current.deleted:
                return Reply("NOTFOUND", meta=self._meta(request, store.clock))
        record = store.write(self.my_id, request.key, request.value)
        if not await self.sync.replicate(record):
            return self._error(
                request, Code.QUORUM,
                f"the write is on this replica but fewer than write_quorum = "
                f"{self.config.write_quorum} replicas confirmed it in time; it may or may "
                "not survive a failure",
            )
        return Reply("OK", meta=self._meta(request, record.version))

    # Peer requests (PeerRequestHandler) ------------------------------------------------

    def peer_request(self, peer_id: int, verb: str, payload: str):
        self._mark(peer_id, True)
        self.links[peer_id].alive_hint()
        election = self.election
        if verb == "PING":
            # A coordinator still pulling before it serves answers "coordinator": it is
            # alive, and forwarded requests wait for its take-over to finish.
            status = PeerStatus(self.my_id, election.public_role, election.coordinator,
                                election.epoch, self.store.clock)
            return PeerAnswer("OK", status.encode())
        if verb == "ELECTION":
            answer = election.election_received(peer_id, peerwire.parse_int(payload, "epoch"))
            return PeerAnswer("OK" if answer else "NO", str(election.epoch))
        if verb == "COORDINATOR":
            accepted = election.coordinator_received(
                peer_id, peerwire.parse_int(payload, "epoch")
            )
            return PeerAnswer("OK" if accepted else "NO", str(election.epoch))
        if verb == "CLIENT":
            return defer.ensureDeferred(self._serve_forwarded(payload))
        if verb == "PUSH":
            outcome = self.store.apply_pushed(peerwire.decode_record(payload))
            if outcome == "gap":
                self.sync.sync_from(peer_id)   # a push was lost: fetch what is missing
            return PeerAnswer("OK", outcome)
        if verb == "DELTA":
            clock, records = self.store.export_delta(peerwire.decode_clock(payload))
            return self._stream(clock, records)
        if verb == "FULL":
            clock, records = self.store.export_full()
            return self._stream(clock, records)
        raise PeerWireError(f"unknown verb {verb}")

    @staticmethod
    def _stream(clock: VectorClock, records) -> PeerAnswer:
        body = (("REC", peerwire.encode_record(record)) for record in records)
        return PeerAnswer("END", clock.encode(), body=body)

    async def _serve_forwarded(self, line: str) -> PeerAnswer:
        if self.election.role is not Role.COORDINATOR:
            return PeerAnswer("NO", str(self.election.coordinator or "-"))
        try:
            request = wire.parse_request(line, self.config.limits)
            if request is None or not request.needs_coordinator:
                raise WireError(Code.BADARGS, "only data requests are forwarded")
        except WireError as e:
            reply = e.reply()
        else:
            deadline = self.reactor.seconds() + self.timers.election_wait
            if await self._await_coordinator(deadline) != self.my_id:
                return PeerAnswer("NO", str(self.election.coordinator or "-"))
            try:
                reply = await self._coordinate(request)
            except _NotCoordinator:
                return PeerAnswer("NO", str(self.election.coordinator or "-"))
        return PeerAnswer("END", "", body=iter([("LINE", t) for t in reply.encode_lines()]))
