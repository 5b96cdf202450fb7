"""The HTTP admin port of a replica (twisted.web): metrics, probes, the cluster page.

    GET /              a live page of the whole cluster (admin_page.html: one file,
                       inline CSS and JS, polls /cluster.json every second)
    GET /cluster.json  the cluster as this replica sees it (``cluster_view``)
    GET /metrics       Prometheus text format (OpenMetrics if the scraper asks for it)
    GET /healthz       200 while the process runs its reactor and the replica service
    GET /readyz        200 while this replica can serve clients (itself, or by
                       forwarding to its coordinator), else 503 with a one-line reason

Read-only by construction: only ``render_GET`` exists (twisted.web answers HEAD with
it and any other method with 405 and an ``Allow`` header), every other path is 404,
and nothing here calls anything that writes.  It exposes the cluster's state (member
addresses, clocks, roles) to whoever reaches it: bind it to a private address and put
a proxy in front if anything outside must see it (docs/operations.md).

Keys of other replicas: a PING answer does not carry a key count (the peer protocol
stays as it is), so while someone is watching (a /cluster.json request within
``PEER_FETCH_IDLE_S``) this replica asks each peer's admin port for
``/cluster.json?self=1`` (that replica alone) once per ``PEER_FETCH_INTERVAL_S``, best
effort.  A peer without an admin port, or one that does not answer, shows no key count.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ThrottlingFactory
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

import replicad
from replicad.config import ClusterConfig, describe_quorum
from replicad.metrics import clock_lag
from replicad.node import veto_reason
from replicad.vclock import ClockError, VectorClock

PAGE_FILE = "admin_page.html"
HTTP_IDLE_TIMEOUT_S = 30          # an idle admin connection is closed after this
MAX_ADMIN_CONNECTIONS = 64        # more are closed at once
PEER_FETCH_INTERVAL_S = 1.0       # how often peers' key counts are fetched, while watched
PEER_FETCH_TIMEOUT_S = 1.0        # per peer and fetch
PEER_FETCH_IDLE_S = 10.0          # stop fetching this long after the last /cluster.json
PEER_DETAIL_MAX_AGE_S = 5.0       # older fetched details are not shown
MAX_PEER_ANSWER_BYTES = 256 * 1024

JSON_TYPE = b"application/json"
TEXT_TYPE = b"text/plain; charset=utf-8"
# The page is self-contained: inline script and style, and it may only fetch from its
# own origin (/cluster.json).
PAGE_HEADERS = {
    b"content-type": b"text/html; charset=utf-8",
    b"content-security-policy": (
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'"),
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}


def readiness(replica: Any) -> tuple[bool, str]:
    """Whether this replica can serve clients now, and why (one short line).

    Ready: it is the serving coordinator, or a follower with a coordinator, and it
    holds its cluster's history (a bound store).  Not ready: not started or stopping,
    still joining (an empty replica copying the cluster's data), electing or taking
    over, or a coordinator that lost its majority in quorum mode."""
    node, store = replica.node, replica.store
    if node is None or store is None or not replica.running:
        return False, "the replica service is not running"
    role = node.role.value
    if role == "stopped":
        return False, "the replica is stopping"
    if store.cluster_id is None:
        return False, ("this replica has not joined its cluster yet (it waits to copy the "
                       "cluster's data, or for the new cluster's first coordinator)")
    if node.vetoed is not None:
        return False, veto_reason(node.vetoed)
    if node.cannot_serve:
        return False, "this replica's side of the cluster has no majority (quorum mode)"
    coordinator = node.serving_as
    if coordinator is None:
        if role == "taking-over":
            return False, "this replica is taking over as coordinator (pulling from peers)"
        return False, "no coordinator: an election is in progress"
    if coordinator == replica.my_id:
        return True, f"serving as the coordinator (epoch {node.epoch})"
    return True, f"following coordinator {coordinator} (epoch {node.epoch})"


def health(replica: Any) -> tuple[bool, str]:
    """Alive: the request was answered, so the reactor turns; the replica service runs
    with its store open."""
    if replica.running and replica.store is not None:
        return True, "alive"
    return False, "the replica service is not running"


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


class PeerDetails:
    """Key counts (and the like) of peers, fetched from their admin ports while the
    cluster page is watched; see the module docstring."""

    log = Logger()

    def __init__(self, replica: Any, reactor: Any, agent: Any = None):
        self.replica = replica
        self.reactor = reactor
        self.pool: HTTPConnectionPool | None = None
        if agent is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            self.pool._factory = _QuietHTTP11ClientFactory   # no "Starting factory" lines
            agent = Agent(reactor, connectTimeout=PEER_FETCH_TIMEOUT_S, pool=self.pool)
        self.agent = agent
        self.details: dict[int, tuple[float, dict[str, Any]]] = {}
        self._wanted_at = float("-inf")
        self._busy: set[int] = set()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        config: ClusterConfig = replica.config
        self.targets = {
            i: f"http://{config.member(i).admin}/cluster.json?self=1".encode("ascii")
            for i in config.ids
            if i != replica.my_id and config.member(i).admin is not None
        }

    def wanted(self) -> None:
        """Someone looked at /cluster.json: keep the details fresh for a while."""
        self._wanted_at = self.reactor.seconds()
        if self.targets and not self._loop.running:
            self._loop.start(PEER_FETCH_INTERVAL_S, now=True)

    def stop(self) -> defer.Deferred[None]:
        if self._loop.running:
            self._loop.stop()
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return defer.succeed(None)

    def fresh(self, peer_id: int) -> tuple[float, dict[str, Any]] | None:
        found = self.details.get(peer_id)
        if found is None or self.reactor.seconds() - found[0] > PEER_DETAIL_MAX_AGE_S:
            return None
        return found

    def _tick(self) -> None:
        if self.reactor.seconds() - self._wanted_at > PEER_FETCH_IDLE_S:
            self._loop.stop()
            return
        for peer_id, url in self.targets.items():
            if peer_id not in self._busy:
                self._busy.add(peer_id)
                d = self._fetch(peer_id, url)
                d.addBoth(lambda _, peer_id=peer_id: self._busy.discard(peer_id))

    def _fetch(self, peer_id: int, url: bytes) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._fetch_one(peer_id, url))

    async def _fetch_one(self, peer_id: int, url: bytes) -> None:
        wall = self.replica.metrics.wall
        try:
            sent = wall()
            request = self.agent.request(b"GET", url, Headers({b"accept": [JSON_TYPE]}))
            request.addTimeout(PEER_FETCH_TIMEOUT_S, self.reactor)
            response = await request
            body = readBody(response)
            body.addTimeout(PEER_FETCH_TIMEOUT_S, self.reactor)
            text = await body
            if response.code != 200 or len(text) > MAX_PEER_ANSWER_BYTES:
                return
            data = json.loads(text)
            entry = data.get("self") if isinstance(data, dict) else None
            if isinstance(entry, dict) and entry.get("id") == peer_id:
                theirs = entry.get("wall")
                if isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
                    # Its wall clock against ours at the middle of the exchange: the
                    # logs and the page's events are stamped by each replica's own.
                    entry["clock_offset_s"] = round(theirs - (sent + wall()) / 2, 3)
                self.details[peer_id] = (self.reactor.seconds(), entry)
        except Exception as e:   # best effort: the page shows no key count for it
            self.log.debug("fetching replica {peer}'s admin page failed: {error}",
                           peer=peer_id, error=e)


# What /cluster.json shows ----------------------------------------------------------------


def self_entry(replica: Any) -> dict[str, Any]:
    """This replica, as it knows itself (also what ``/cluster.json?self=1`` answers)."""
    node, store = replica.node, replica.store
    member = replica.config.member(replica.my_id)
    ready, why = readiness(replica)
    entry: dict[str, Any] = {
        "id": replica.my_id,
        "here": True,
        "client": str(member.client),
        "peer": str(member.peer),
        "admin": str(member.admin) if member.admin is not None else None,
        "link": "self",
        "ready": ready,
        "ready_reason": why,
        "age_s": 0.0,
        "wall": round(replica.metrics.wall(), 3),   # its wall clock (PeerDetails: offset)
    }
    if node is not None:
        entry.update(role=node.public_role, state=node.role.value,
                     coordinator=node.coordinator, epoch=node.epoch)
    if store is not None:
        entry.update(clock=store.clock.encode(), writes=store.clock.total(),
                     keys=store.count(), cluster_id=store.cluster_id,
                     conflicts=store.conflicts, db_bytes=replica.metrics.db_bytes())
    commits = replica.commits
    if commits is not None:
        entry["disk_full"] = commits.disk_full
    return entry


def cluster_view(replica: Any, peers: PeerDetails | None = None) -> dict[str, Any]:
    """The whole cluster seen from this replica: every member with its addresses, the
    link to it, its last PING answer (role, coordinator, epoch, clock) and how old that
    is, plus this replica's recent events (elections, failovers, links)."""
    config: ClusterConfig = replica.config
    metrics = replica.metrics
    now = replica.reactor.seconds()
    node = replica.node
    members = []
    for member_id in config.ids:
        if member_id == replica.my_id:
            members.append(self_entry(replica))
            continue
        member = config.member(member_id)
        entry: dict[str, Any] = {
            "id": member_id,
            "here": False,
            "client": str(member.client),
            "peer": str(member.peer),
            "admin": str(member.admin) if member.admin is not None else None,
            "link": "up" if replica.peer_up.get(member_id) else "down",
            "role": None, "coordinator": None, "epoch": None, "clock": None,
            "writes": None, "keys": None, "cluster_id": None, "age_s": None,
            "lag_writes": None, "missing_writes": None,
        }
        seen = metrics.peers.get(member_id)
        if seen is not None:
            status = seen.status
            entry.update(role=status.role, coordinator=status.coordinator,
                         epoch=status.epoch, clock=status.clock.encode(),
                         writes=status.clock.total(), cluster_id=status.cluster_id,
                         age_s=round(max(0.0, now - seen.at), 3))
            lag = metrics.lag(member_id)
            if lag is not None:
                entry.update(lag_writes=lag[0], missing_writes=lag[1])
        fetched = peers.fresh(member_id) if peers is not None else None
        if fetched is not None and entry["link"] == "up":
            at, detail = fetched
            entry.update({k: detail.get(k) for k in ("keys", "ready", "db_bytes",
                                                     "conflicts", "disk_full",
                                                     "clock_offset_s")})
            entry["detail_age_s"] = round(max(0.0, now - at), 3)
            if seen is None or at > seen.at:
                # Fresher than the last PING answer (anti-entropy pings a follower only
                # every anti_entropy_interval): the peer's own word, a second old at most.
                entry.update({k: detail.get(k) for k in (
                    "role", "coordinator", "epoch", "clock", "writes", "cluster_id")})
                entry["age_s"] = entry["detail_age_s"]
                # ... and the lag from that clock, not from the older PING answer
                # (a page showed a follower at this replica's clock "67 writes behind").
                try:
                    theirs = VectorClock.decode(str(detail.get("clock")))
                except ClockError:
                    pass
                else:
                    behind, ahead = clock_lag(replica.store.clock, theirs)
                    entry.update(lag_writes=behind, missing_writes=ahead)
        members.append(entry)
    store = replica.store
    ready, why = readiness(replica)
    return {
        "replica": replica.my_id,
        "now": metrics.wall(),    # the timeline's clock: the page shows events' ages
        "version": replicad.__version__,
        "cluster_id": store.cluster_id if store is not None else None,
        "write_quorum": describe_quorum(config),
        "mode": "quorum" if config.quorum_mode else "available",
        "follower_reads": config.follower_reads,
        "confirmed_reads": config.confirmed_reads,
        "role": node.public_role if node is not None else None,
        "coordinator": node.coordinator if node is not None else None,
        "epoch": node.epoch if node is not None else None,
        "ready": ready,
        "ready_reason": why,
        "members": members,
        "timeline": list(reversed(metrics.timeline)),
    }


# Resources --------------------------------------------------------------------------------


# Each resource below has no children, so a longer path (/metrics/x, /healthz/) is 404;
# GET and HEAD are the only methods, any other is 405 with an Allow header.  Both
# answers are one line of plain text (twisted.web's own are HTML pages).

ALLOWED_METHODS = (b"GET", b"HEAD")


def _plain(request: server.Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", TEXT_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    return f"{text}\n".encode()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        path = request.path.decode("ascii", "replace")[:200]
        return _plain(request, 404, f"not found: {path} (this port serves /, "
                      "/cluster.json, /metrics, /healthz and /readyz)")


class _Root(Resource):
    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return _NotFound()


class _ReadOnly(Resource):
    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return _NotFound()

    def render(self, request: server.Request) -> bytes:
        if request.method not in ALLOWED_METHODS:
            request.setHeader(b"allow", b", ".join(ALLOWED_METHODS))
            method = request.method.decode("ascii", "replace")[:20]
            return _plain(request, 405, f"method not allowed: {method} (the admin port "
                          "is read-only: GET and HEAD only)")
        return super().render(request)

    def render_HEAD(self, request: server.Request) -> bytes:
        """GET's status and headers without the body (twisted.web would send the same
        but log a warning for every HEAD: probes use HEAD)."""
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""

    def render_GET(self, request: server.Request) -> bytes:
        raise NotImplementedError


class _Probe(_ReadOnly):
    """200 ``ok: <why>`` or 503 ``<failing>: <why>``: for load balancers and probes."""

    def __init__(self, check, failing: str):
        super().__init__()
        self.check = check
        self.failing = failing

    def render_GET(self, request: server.Request) -> bytes:
        ok, why = self.check()
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", TEXT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return f"{'ok' if ok else self.failing}: {why}\n".encode()


class _Metrics(_ReadOnly):
    def __init__(self, metrics: Any):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: server.Request) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self.metrics.registry)


class _ClusterJson(_ReadOnly):
    def __init__(self, replica: Any, peers: PeerDetails | None):
        super().__init__()
        self.replica = replica
        self.peers = peers

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        if b"self" in (request.args or {}):    # ?self=1: this replica alone
            view: dict[str, Any] = {"self": self_entry(self.replica)}
        else:
            if self.peers is not None:
                self.peers.wanted()
            view = cluster_view(self.replica, self.peers)
        return json.dumps(view, separators=(",", ":")).encode("utf-8")


class _Page(_ReadOnly):
    def __init__(self, page: bytes):
        super().__init__()
        self.page = page

    def render_GET(self, request: server.Request) -> bytes:
        for name, value in PAGE_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"cache-control", b"no-store")
        return self.page


def page_html() -> bytes:
    return resources.files("replicad").joinpath(PAGE_FILE).read_bytes()


def admin_root(replica: Any, peers: PeerDetails | None = None) -> Resource:
    """The resource tree: exactly the paths in the module docstring."""
    root = _Root()
    root.putChild(b"", _Page(page_html()))
    root.putChild(b"cluster.json", _ClusterJson(replica, peers))
    root.putChild(b"metrics", _Metrics(replica.metrics))
    root.putChild(b"healthz", _Probe(lambda: health(replica), "unhealthy"))
    root.putChild(b"readyz", _Probe(lambda: readiness(replica), "not ready"))
    return root


class AdminSite(server.Site):
    """A Site that keeps quiet: a page polling every second must not fill the log
    (requests are logged at debug level), and errors show no traceback."""

    log_ = Logger()
    noisy = False
    displayTracebacks = False

    def log(self, request: server.Request) -> None:
        self.log_.debug("admin {method} {uri} -> {code}",
                        method=request.method.decode("ascii", "replace"),
                        uri=request.uri.decode("ascii", "replace")[:200], code=request.code)


class AdminService(service.MultiService):
    """The admin listener and the peer-detail fetcher, stopped together."""

    def __init__(self, replica: Any, endpoint: str, reactor: Any):
        super().__init__()
        self.peers = PeerDetails(replica, reactor)
        site = AdminSite(admin_root(replica, self.peers), timeout=HTTP_IDLE_TIMEOUT_S,
                         reactor=reactor)
        # More connections than this are closed at once (the admin port is no data path).
        factory = ThrottlingFactory(site, maxConnectionCount=MAX_ADMIN_CONNECTIONS)
        factory.noisy = False
        self.listener = StreamServerEndpointService(serverFromString(reactor, endpoint),
                                                    factory)
        # A port that cannot be bound stops start-up, as for the other listeners.
        self.listener._raiseSynchronously = True
        self.listener.setServiceParent(self)

    def stopService(self):
        stopped = super().stopService()
        return defer.gatherResults([defer.maybeDeferred(lambda: stopped), self.peers.stop()])
