"""What a replica measures about itself, for ``/metrics`` and ``/cluster.json``.

Two kinds of numbers, kept apart on purpose:

- **Events** (requests and their latency, elections, failovers, quorum waits, pulls)
  can only be counted when they happen: ``replica.py`` calls the ``*`` hook methods
  below (each call is marked ``# metrics hook`` there; none changes what the replica
  does).
- **State** (role, epoch, clock, peers, store size, connections, group commits) is read
  from the replica when Prometheus scrapes, by ``ReplicaCollector``: nothing to keep in
  step, and a scrape always shows the truth of that moment.

Every replica has its own ``CollectorRegistry`` (never prometheus_client's global one),
so two replicas in one process (the tests) do not mix their numbers.

The replica is read duck-typed (``node``, ``store``, ``peer_up``, ``links``,
``commits``, ``config``, ``my_id``, ``data_dir``): this module imports nothing of
replicad's wiring, so ``replica.py`` can import it without a cycle.  Time comes from the
injected clock (``IReactorTime``), like everywhere else.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

import replicad
from replicad.datadir import DB_FILENAME

if TYPE_CHECKING:
    from replicad.vclock import VectorClock

TIMELINE_LENGTH = 50       # recent role changes, failovers and link changes kept
# Seconds.  A request is a fraction of a millisecond when served locally, milliseconds
# with fsync or a forward, up to election_wait + fetch + quorum timeouts at worst.
REQUEST_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)
QUORUM_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.0, 5.0)
PULL_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0)
# A group's COMMIT, its fsync included: about a millisecond on a healthy disk; seconds
# on a stalled one, which blocks the reactor that long (etcd's disk alarms watch the
# same, as etcd_disk_backend_commit_duration_seconds).
COMMIT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
                    0.512, 1.024, 2.048, 4.096, 8.192)
# The role values of replicad.node.Role (not imported: see the module docstring).
ROLES = ("follower", "electing", "awaiting", "taking-over", "serving", "stopped")
DB_SUFFIXES = ("", "-wal")     # replica.sqlite and its write-ahead log

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class PeerSeen:
    """A peer's last PING answer (replicad.peerwire.PeerStatus) and when it came."""

    status: Any
    at: float


class ReplicaMetrics:
    """The metrics of one replica: its registry, the event hooks, the timeline."""

    def __init__(self, replica: Any, clock: IReactorTime, process: bool = True,
                 wall: Callable[[], float] | None = None):
        self.replica = replica
        self.clock = clock
        # When the timeline's events happened, for people and for merging the replicas'
        # timelines: the wall clock (the replica passes time.time), not ``clock``,
        # which is the reactor's monotonic one (reactor.py).  Default: ``clock``.
        self.wall = wall or clock.seconds
        self.registry = CollectorRegistry()
        registry = self.registry
        # Requests are counted in plain dicts (_RequestCounts), exposed at scrape time:
        # prometheus_client's labelled Counter and Histogram take a lock and walk the
        # buckets on every observation, 9 % of a GET's time on the coordinator.
        self.requests = _RequestCounts()
        registry.register(_RequestCollector(self.requests))
        self.elections = Counter(
            "replicad_elections", "Elections this replica held (it entered the "
            "electing state)", registry=registry)
        self.elections_won = Counter(
            "replicad_elections_won", "Elections this replica won (it began taking "
            "over as coordinator)", registry=registry)
        self.failovers = Counter(
            "replicad_failovers", "Changes of coordinator seen by this replica (from "
            "one coordinator to another, its own start-up not counted)",
            registry=registry)
        self.pull_seconds = Histogram(
            "replicad_sync_pull_duration_seconds", "Pulls from a peer (anti-entropy, "
            "take-over, catching up, joining), by kind (delta, full) and outcome (ok, "
            "failed)", ["kind", "outcome"], buckets=PULL_BUCKETS_S, registry=registry)
        self.pull_bytes = Counter(
            "replicad_sync_pull_bytes", "Bytes of records received by pulls, by kind",
            ["kind"], registry=registry)
        self.pull_records = Counter(
            "replicad_sync_pull_records", "Records received by pulls, by kind",
            ["kind"], registry=registry)
        registry.register(ReplicaCollector(self))
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        # For /cluster.json: the last PING answer of each peer, the recent events.
        self.peers: dict[int, PeerSeen] = {}
        self.timeline: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=TIMELINE_LENGTH)
        self._last_coordinator: int | None = None
        # Set by the wiring (replicad.tap) when it builds the listeners.
        self.client_connections: Callable[[], int] | None = None
        self.client_connections_backed_up: Callable[[], int] | None = None
        self.peer_connections: Callable[[], int] | None = None

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in this replica's registry."""
        return generate_latest(self.registry)

    # Hooks (called by replicad.replica) ------------------------------------------------

    def request(self, command: str, reply: Any, started: float | None = None) -> Any:
        """A client data request began (at ``started``, default now); ``reply`` is the
        Deferred of its Reply.  Counts the outcome and the latency when it fires; passes
        the result on unchanged."""
        if started is None:
            started = self.clock.seconds()

        def done(result: Any) -> Any:
            self.answered(command, result, started)
            return result

        return reply.addBoth(done)

    def answered(self, command: str, reply: Any, started: float) -> None:
        """A client data request began at ``started`` and got ``reply`` (a Reply, or a
        Failure that the client protocol turns into ERR INTERNAL)."""
        if isinstance(reply, Failure):
            outcome = "internal"
        else:
            status = reply.status
            if status == "ERR":
                outcome = (reply.error_code or "error").lower()
            elif status == "NOTFOUND":
                outcome = "notfound"
            else:
                outcome = "ok"
        # _RequestCounts.count and _Histogram.observe, inline: this runs for every
        # request, and their two calls were a tenth of a GET's metrics cost.
        requests = self.requests
        key = (command, outcome)
        counts = requests.counts
        counts[key] = counts.get(key, 0) + 1
        latency = requests.latency
        series = latency.series.get(command) or latency._series(command)
        seconds = self.clock.seconds() - started
        series[0][bisect.bisect_left(latency.bounds, seconds)] += 1
        series[1] += seconds

    def role_changed(self, role: str, coordinator: int | None, epoch: int) -> None:
        """Replica.role_changed: count elections, wins and failovers; keep a timeline."""
        if role == "electing":
            self.elections.inc()
            self._event("election", f"held an election (epoch {epoch})", role=role,
                        epoch=epoch)
        elif role == "taking-over":
            self.elections_won.inc()
            self._event("won", f"won the election: taking over in epoch {epoch}",
                        role=role, coordinator=coordinator, epoch=epoch)
        elif role == "serving":
            self._event("serving", f"serving as coordinator in epoch {epoch}", role=role,
                        coordinator=coordinator, epoch=epoch)
        elif role == "awaiting":
            self._event("awaiting", f"a higher replica answered: awaiting its "
                        f"announcement (epoch {epoch})", role=role, epoch=epoch)
        elif role == "follower" and coordinator is not None:
            self._event("follow", f"follows coordinator {coordinator} (epoch {epoch})",
                        role=role, coordinator=coordinator, epoch=epoch)
        else:
            self._event("role", f"is {role} (epoch {epoch})", role=role,
                        coordinator=coordinator, epoch=epoch)
        if coordinator is None:
            return
        previous, self._last_coordinator = self._last_coordinator, coordinator
        if previous is not None and previous != coordinator:
            self.failovers.inc()
            self._event("failover", f"coordinator changed from {previous} to "
                        f"{coordinator} (epoch {epoch})", previous=previous,
                        coordinator=coordinator, epoch=epoch)

    def disk_changed(self, full: bool) -> None:
        """The commit group's disk-full episode began (True) or ended (False)."""
        self._event("disk", "the disk is full: writes are refused until space is freed"
                    if full else "the disk takes writes again", full=full)

    def link_changed(self, peer_id: int, up: bool, text: str | None = None) -> None:
        """The replica's view of a peer changed (Replica._mark, through its LinkStateLog:
        a flapping link's changes come summed up in one ``text``)."""
        self._event("link", text or f"replica {peer_id} is {'up' if up else 'down'}",
                    peer=peer_id, up=up)

    def peer_status(self, status: Any) -> None:
        """A peer answered a PING (role, coordinator, epoch, clock, cluster id)."""
        self.peers[status.peer_id] = PeerSeen(status, self.clock.seconds())

    def quorum_wait(self, seconds: float, reached: bool) -> None:
        self.requests.quorum_waits.observe("reached" if reached else "missed", seconds)

    def commit(self, seconds: float, ok: bool) -> None:
        """A group's COMMIT took ``seconds`` (groupcommit.py)."""
        self.requests.commits.observe("ok" if ok else "failed", seconds)

    def pull(self, full: bool, on_line: Callable[[str, str], None] | None
             ) -> tuple[Callable[[str, str], None] | None, Callable[[Any], Any]]:
        """A DELTA or FULL request is sent: returns the ``on_line`` to use instead (it
        counts records and bytes) and a callback for the call's Deferred (it times the
        pull and passes the result on)."""
        kind = "full" if full else "delta"
        started = self.clock.seconds()
        records = self.pull_records.labels(kind)
        received = self.pull_bytes.labels(kind)

        def counting(frame_kind: str, text: str) -> None:
            records.inc()
            # The frame on the wire: "<kind> <text>\n".
            received.inc(len(frame_kind) + len(text.encode("utf-8")) + 2)
            if on_line is not None:
                on_line(frame_kind, text)

        def done(result: Any) -> Any:
            outcome = "failed" if isinstance(result, Failure) or getattr(
                result, "kind", "END") != "END" else "ok"
            self.pull_seconds.labels(kind, outcome).observe(self.clock.seconds() - started)
            return result

        return counting, done

    def _event(self, kind: str, text: str, **fields: Any) -> None:
        self.timeline.append({"at": self.wall(), "replica": self.replica.my_id,
                              "kind": kind, "text": text, **fields})

    # State read at scrape time ---------------------------------------------------------

    def lag(self, peer_id: int) -> tuple[int, int] | None:
        """(writes this replica has that the peer lacked, writes the peer had that this
        replica lacks) as of the peer's last PING answer; None if it never answered."""
        seen = self.peers.get(peer_id)
        store = self.replica.store
        if seen is None or store is None:
            return None
        return clock_lag(store.clock, seen.status.clock)

    def db_bytes(self) -> int:
        total = 0
        for suffix in DB_SUFFIXES:
            try:
                total += os.path.getsize(self.db_path + suffix)
            except OSError:
                pass
        return total

    @property
    def db_path(self) -> str:
        return os.path.join(self.replica.data_dir, DB_FILENAME)


class _Histogram:
    """A histogram by one label, as plain numbers (one bisect and two additions per
    observation, no lock): the hot paths' timings.  ``family`` gives what
    prometheus_client's Histogram would expose, at scrape time."""

    def __init__(self, bounds: tuple[float, ...], labels: tuple[str, ...] = ()):
        self.bounds = bounds
        # label -> [per-bucket counts (the last one is +Inf), sum of seconds]
        self.series: dict[str, list] = {}
        for label in labels:      # shown from the start, at zero
            self._series(label)

    def _series(self, label: str) -> list:
        series = self.series[label] = [[0] * (len(self.bounds) + 1), 0.0]
        return series

    def observe(self, label: str, seconds: float) -> None:
        series = self.series.get(label)
        if series is None:
            series = self._series(label)
        series[0][bisect.bisect_left(self.bounds, seconds)] += 1
        series[1] += seconds

    def family(self, name: str, documentation: str, label: str) -> HistogramMetricFamily:
        histogram = HistogramMetricFamily(name, documentation, labels=[label])
        bounds = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for value, (buckets, total) in sorted(self.series.items()):
            cumulative = list(itertools.accumulate(buckets))
            histogram.add_metric([value], list(zip(bounds, cumulative, strict=True)), total)
        return histogram


class _RequestCounts:
    """Client requests by command and outcome, and their latency by command (buckets of
    REQUEST_BUCKETS_S), as plain numbers: one dict update and one bisect per request."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.latency = _Histogram(REQUEST_BUCKETS_S)
        self.quorum_waits = _Histogram(QUORUM_BUCKETS_S, ("missed", "reached"))
        self.commits = _Histogram(COMMIT_BUCKETS_S, ("failed", "ok"))

    def count(self, command: str, outcome: str, seconds: float) -> None:
        key = (command, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.latency.observe(command, seconds)


class _RequestCollector:
    """``replicad_requests_total``, ``replicad_request_duration_seconds`` and
    ``replicad_quorum_wait_seconds`` from _RequestCounts, in the form
    prometheus_client's Counter and Histogram give."""

    def __init__(self, requests: _RequestCounts):
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "replicad_requests", "Client data requests received by this replica (GET, "
            "PUT, DEL, KEYS), by command and outcome (ok, notfound, or the error code in "
            "lower case)", labels=["command", "outcome"])
        for (command, outcome), n in sorted(self.requests.counts.items()):
            counter.add_metric([command, outcome], n)
        yield counter
        yield self.requests.latency.family(
            "replicad_request_duration_seconds", "Time from receiving a client data "
            "request to its reply (forwarding to the coordinator included)", "command")
        yield self.requests.quorum_waits.family(
            "replicad_quorum_wait_seconds", "Time a coordinator waited for write_quorum "
            "replicas to have a write, by outcome (reached, missed)", "outcome")
        yield self.requests.commits.family(
            "replicad_commit_duration_seconds", "Time a write group's COMMIT took, its "
            "fsync included, by outcome (ok, failed); the reactor waits for it, so a "
            "slow disk shows here first", "outcome")


class ReplicaCollector:
    """Gauges and store counters read from the replica at scrape time."""

    def __init__(self, metrics: ReplicaMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        replica = metrics.replica
        node, store = replica.node, replica.store
        config = replica.config
        info = InfoMetricFamily("replicad", "This replica: id, version, cluster, mode")
        info.add_metric([], {
            "replica": str(replica.my_id),
            "version": replicad.__version__,
            "cluster_id": (store.cluster_id if store is not None else None) or "",
            "write_quorum": str(config.write_quorum),
            "mode": "quorum" if config.quorum_mode else "available",
        })
        yield info
        yield _gauge("replicad_members", "Replicas in the cluster's member list",
                     len(config.ids))
        commits = replica.commits
        yield _gauge("replicad_disk_full", "1 while this replica's last COMMIT failed "
                     "because its disk is full (writes, or the pushed writes it applies, "
                     "are refused until space is freed)",
                     1 if commits is not None and commits.disk_full else 0)
        if node is not None:
            role = GaugeMetricFamily(
                "replicad_role", "1 for this replica's current role (follower, "
                "electing, awaiting, taking-over, serving, stopped), 0 for the others",
                labels=["role"])
            for name in ROLES:
                role.add_metric([name], 1 if node.role.value == name else 0)
            yield role
            yield _gauge("replicad_coordinator_id", "The coordinator this replica "
                         "follows or is (0: none known)", node.coordinator or 0)
            yield _gauge("replicad_epoch", "Highest election epoch this replica has seen",
                         node.epoch)
            ready = (node.serving_as is not None and not node.cannot_serve
                     and store is not None and store.cluster_id is not None)
            yield _gauge("replicad_ready", "1 when this replica serves clients itself or "
                         "by forwarding (what /readyz answers 200 to)", int(ready))
        peer_up = GaugeMetricFamily("replicad_peer_up", "1 when the last exchange with "
                                    "the peer worked", labels=["peer"])
        lag = GaugeMetricFamily(
            "replicad_replication_lag_writes", "Writes this replica has applied that the "
            "peer had not, as of the peer's last PING answer", labels=["peer"])
        ahead = GaugeMetricFamily(
            "replicad_replication_missing_writes", "Writes the peer had applied that this "
            "replica has not, as of the peer's last PING answer", labels=["peer"])
        age = GaugeMetricFamily(
            "replicad_peer_last_answer_age_seconds", "Seconds since the peer last "
            "answered a PING from this replica", labels=["peer"])
        now = metrics.clock.seconds()
        for peer_id in sorted(replica.peer_up):
            label = [str(peer_id)]
            peer_up.add_metric(label, int(bool(replica.peer_up[peer_id])))
            behind = metrics.lag(peer_id)
            if behind is not None:
                lag.add_metric(label, behind[0])
                ahead.add_metric(label, behind[1])
                age.add_metric(label, max(0.0, now - metrics.peers[peer_id].at))
        yield from (peer_up, lag, ahead, age)
        if store is not None:
            clock = GaugeMetricFamily("replicad_clock_writes", "This replica's vector "
                                      "clock: writes applied per originating replica",
                                      labels=["origin"])
            for origin in sorted(store.clock):
                clock.add_metric([str(origin)], store.clock[origin])
            yield clock
            yield _gauge("replicad_store_keys", "Live keys in this replica's store",
                         store.count())
            yield _gauge("replicad_store_db_bytes", "Size of the SQLite database and its "
                         "write-ahead log, in bytes", metrics.db_bytes())
            yield CounterMetricFamily("replicad_conflicts", "Concurrent versions met and "
                                      "resolved by this replica (kept in its database)",
                                      value=store.conflicts)
        if commits is not None:
            yield CounterMetricFamily("replicad_group_commits", "Group commits (one "
                                      "fsync each) that carried writes",
                                      value=commits.groups)
            yield CounterMetricFamily("replicad_group_commit_writes", "Writes and "
                                      "pushed records carried by group commits",
                                      value=commits.writes)
        confirmations = getattr(replica, "confirmations", None)
        if confirmations is not None:
            yield CounterMetricFamily("replicad_read_index_calls", "READINDEX calls this "
                                      "replica sent, as a follower, to confirm its reads",
                                      value=confirmations.asked)
            outcomes = CounterMetricFamily(
                "replicad_confirmed_reads", "Reads this replica took to answer once "
                "confirmed, by outcome: answered here at once, answered here after "
                "waiting for a push (waited), or forwarded after all", labels=["outcome"])
            for outcome, count in sorted(confirmations.outcomes.items()):
                outcomes.add_metric([outcome], count)
            yield outcomes
        for name, source, text in (
            ("replicad_client_connections", metrics.client_connections,
             "Open client connections"),
            ("replicad_client_connections_backed_up", metrics.client_connections_backed_up,
             "Client connections whose replies wait unread (over 64 KiB): none of their "
             "requests is served until the client reads"),
            ("replicad_peer_connections", metrics.peer_connections,
             "Open connections on the peer port (peers dialing in, handshakes)"),
        ):
            if source is not None:
                yield _gauge(name, text, source())


def clock_lag(ours: VectorClock, theirs: VectorClock) -> tuple[int, int]:
    """(writes ``ours`` holds that ``theirs`` lacks, writes ``theirs`` holds that
    ``ours`` lacks)."""
    behind = sum(ours[o] - theirs[o] for o in ours.missing_from(theirs))
    ahead = sum(theirs[o] - ours[o] for o in theirs.missing_from(ours))
    return behind, ahead


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
