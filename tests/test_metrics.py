"""replicad.metrics: event hooks, scrape-time gauges, the per-replica registry.

The exposition is always parsed back with prometheus_client's own parser, so what is
checked is what Prometheus would read."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from replicad import wire
from replicad.config import default_config
from replicad.metrics import TIMELINE_LENGTH, ReplicaMetrics
from replicad.peer import PeerResponse, PeerUnavailable
from replicad.peerwire import PeerStatus
from replicad.replica import Replica
from replicad.vclock import VectorClock
from replicad.wire import Reply, Request


def samples(metrics: ReplicaMetrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape, parsed back."""
    text = metrics.exposition().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: ReplicaMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def fake_replica(tmp_path, **fields) -> SimpleNamespace:
    """What the collector reads, without a node or a store (not started)."""
    base = dict(my_id=1, node=None, store=None, commits=None, peer_up={2: False, 3: True},
                config=default_config(), data_dir=str(tmp_path), links={})
    base.update(fields)
    return SimpleNamespace(**base)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def metrics(tmp_path, clock):
    return ReplicaMetrics(fake_replica(tmp_path), clock, process=False)


def test_client_connections_backed_up_is_a_gauge_read_at_scrape(metrics):
    assert value(metrics, "replicad_client_connections_backed_up") is None   # not wired
    metrics.client_connections_backed_up = lambda: 2
    assert value(metrics, "replicad_client_connections_backed_up") == 2


# Requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, outcome", [
    (Reply("OK"), "ok"),
    (Reply("VALUE", "v"), "ok"),
    (Reply("KEYS", lines=("a",)), "ok"),
    (Reply("NOTFOUND"), "notfound"),
    (wire.error_reply("QUORUM", "fewer than 2"), "quorum"),
    (wire.error_reply("UNAVAILABLE", "no coordinator"), "unavailable"),
    (Failure(RuntimeError("bug")), "internal"),
])
def test_a_request_is_counted_by_command_and_outcome_with_its_latency(metrics, clock, reply,
                                                                       outcome):
    d: defer.Deferred = defer.Deferred()
    passed = metrics.request("PUT", d)
    assert value(metrics, "replicad_requests_total", command="PUT", outcome=outcome) is None
    clock.advance(0.004)
    d.callback(reply) if not isinstance(reply, Failure) else d.errback(reply)
    results: list = []
    passed.addBoth(results.append)
    assert results[0] is reply                     # passed on unchanged
    assert value(metrics, "replicad_requests_total", command="PUT", outcome=outcome) == 1
    assert value(metrics, "replicad_request_duration_seconds_count", command="PUT") == 1
    assert value(metrics, "replicad_request_duration_seconds_sum", command="PUT") == \
        pytest.approx(0.004)
    assert value(metrics, "replicad_request_duration_seconds_bucket", command="PUT",
                 le="0.005") == 1
    assert value(metrics, "replicad_request_duration_seconds_bucket", command="PUT",
                 le="0.0025") == 0


def test_request_latency_buckets_are_inclusive_and_cumulative_as_prometheus_has_them(
        metrics):
    """The request counts are plain numbers exposed at scrape time (not prometheus
    Counter/Histogram objects): the exposition must still read as theirs would."""
    for seconds in (0.0005, 0.0006, 10.0, 11.0):
        metrics.requests.count("GET", "ok", seconds)
    bucket = "replicad_request_duration_seconds_bucket"
    assert value(metrics, bucket, command="GET", le="0.0005") == 1     # le is inclusive
    assert value(metrics, bucket, command="GET", le="0.001") == 2
    assert value(metrics, bucket, command="GET", le="10.0") == 3
    assert value(metrics, bucket, command="GET", le="+Inf") == 4
    assert value(metrics, "replicad_request_duration_seconds_count", command="GET") == 4
    assert value(metrics, "replicad_requests_total", command="GET", outcome="ok") == 4


# Roles: elections, failovers, the timeline ---------------------------------------------------


def test_elections_wins_and_failovers_are_counted_from_role_changes(metrics):
    metrics.role_changed("electing", None, 0)
    metrics.role_changed("follower", 3, 3)          # the first coordinator: no failover
    assert value(metrics, "replicad_failovers_total") == 0
    metrics.role_changed("follower", 3, 7)          # 3 re-elected itself: no failover
    metrics.role_changed("electing", None, 7)
    metrics.role_changed("taking-over", 1, 9)
    metrics.role_changed("serving", 1, 9)           # 3 -> 1
    metrics.role_changed("follower", 3, 11)         # 1 -> 3
    assert value(metrics, "replicad_elections_total") == 2
    assert value(metrics, "replicad_elections_won_total") == 1
    assert value(metrics, "replicad_failovers_total") == 2
    kinds = [event["kind"] for event in metrics.timeline]
    assert kinds == ["election", "follow", "follow", "election", "won", "failover",
                     "serving", "follow", "failover"]
    failover = [e for e in metrics.timeline if e["kind"] == "failover"][0]
    assert (failover["previous"], failover["coordinator"], failover["epoch"]) == (3, 1, 9)
    assert "from 3 to 1" in failover["text"]


def test_the_timeline_keeps_the_most_recent_events_only(metrics, clock):
    for n in range(TIMELINE_LENGTH + 20):
        clock.advance(1)
        metrics.link_changed(2, n % 2 == 0)
    assert len(metrics.timeline) == TIMELINE_LENGTH
    assert metrics.timeline[-1]["at"] == TIMELINE_LENGTH + 20
    assert metrics.timeline[0]["at"] == 21


# Pulls and quorum waits ----------------------------------------------------------------------


def test_a_pull_counts_records_and_bytes_and_times_itself(metrics, clock):
    seen: list = []
    on_line, done = metrics.pull(False, lambda kind, text: seen.append(text))
    on_line("REC", "abc")
    on_line("REC", "d\u00e9f")                      # 4 bytes in UTF-8
    clock.advance(0.2)
    response = PeerResponse("END", "3:2 -")
    assert done(response) is response
    assert seen == ["abc", "d\u00e9f"]              # the real on_line still runs
    assert value(metrics, "replicad_sync_pull_records_total", kind="delta") == 2
    assert value(metrics, "replicad_sync_pull_bytes_total", kind="delta") == \
        (3 + 3 + 2) + (3 + 4 + 2)
    assert value(metrics, "replicad_sync_pull_duration_seconds_sum", kind="delta",
                 outcome="ok") == pytest.approx(0.2)
    _, done = metrics.pull(True, None)
    failure = Failure(PeerUnavailable("gone"))
    assert done(failure) is failure
    assert value(metrics, "replicad_sync_pull_duration_seconds_count", kind="full",
                 outcome="failed") == 1


def test_quorum_waits_are_a_histogram_by_outcome(metrics):
    metrics.quorum_wait(0.003, True)
    metrics.quorum_wait(2.0, False)
    assert value(metrics, "replicad_quorum_wait_seconds_count", outcome="reached") == 1
    assert value(metrics, "replicad_quorum_wait_seconds_count", outcome="missed") == 1


def test_commit_durations_are_a_histogram_by_outcome(metrics):
    metrics.commit(0.0009, True)
    metrics.commit(1.5, True)            # a stalled disk
    metrics.commit(0.002, False)
    assert value(metrics, "replicad_commit_duration_seconds_count", outcome="ok") == 2
    assert value(metrics, "replicad_commit_duration_seconds_bucket", outcome="ok",
                 le="0.001") == 1
    assert value(metrics, "replicad_commit_duration_seconds_bucket", outcome="ok",
                 le="1.024") == 1
    assert value(metrics, "replicad_commit_duration_seconds_count", outcome="failed") == 1


# State read at scrape time ------------------------------------------------------------------


def test_an_unstarted_replica_still_scrapes(metrics):
    assert value(metrics, "replicad_peer_up", peer="2") == 0
    assert value(metrics, "replicad_peer_up", peer="3") == 1
    assert value(metrics, "replicad_members") == 3
    info = [k for k in samples(metrics) if k[0] == "replicad_info"]
    assert dict(info[0][1])["replica"] == "1"
    assert value(metrics, "replicad_store_keys") is None      # no store yet


def test_replication_lag_compares_the_peers_last_clock_with_ours(tmp_path, clock):
    store = SimpleNamespace(clock=VectorClock({1: 5, 2: 3}), cluster_id="c" * 32,
                            count=lambda: 7, conflicts=2)
    metrics = ReplicaMetrics(fake_replica(tmp_path, store=store), clock, process=False)
    assert value(metrics, "replicad_replication_lag_writes", peer="2") is None   # no answer
    metrics.peer_status(PeerStatus(2, "follower", 3, 3, VectorClock({1: 2, 2: 4})))
    clock.advance(1.5)
    assert metrics.lag(2) == (3, 1)     # it lacks 3 of replica 1's; we lack 1 of its own
    assert value(metrics, "replicad_replication_lag_writes", peer="2") == 3
    assert value(metrics, "replicad_replication_missing_writes", peer="2") == 1
    assert value(metrics, "replicad_peer_last_answer_age_seconds", peer="2") == 1.5
    assert value(metrics, "replicad_clock_writes", origin="1") == 5
    assert value(metrics, "replicad_store_keys") == 7
    assert value(metrics, "replicad_conflicts_total") == 2


def test_each_replica_has_its_own_registry(tmp_path, clock):
    one = ReplicaMetrics(fake_replica(tmp_path), clock, process=False)
    two = ReplicaMetrics(fake_replica(tmp_path, my_id=2), clock, process=False)
    one.role_changed("electing", None, 0)
    assert value(one, "replicad_elections_total") == 1
    assert value(two, "replicad_elections_total") == 0
    # and prometheus_client's global registry holds none of it
    from prometheus_client import REGISTRY
    assert REGISTRY.get_sample_value("replicad_elections_total") is None


# Through a real Replica (MemoryReactorClock, SQLite) ------------------------------------------


@pytest.fixture
def replica(tmp_path):
    reactor = MemoryReactorClock()
    replica = Replica(default_config(), 2, str(tmp_path / "data"), reactor, new_cluster=True)
    replica.startService()
    yield replica
    replica.stopService()


def take_over(replica: Replica) -> None:
    for _ in range(4):                         # replica 3 never answers: 2 takes over
        replica.reactor.advance(replica.timers.answer_timeout)
    assert replica.node.serving_as == 2


def serve(replica: Replica, line: str) -> Reply:
    d = replica.handle(wire.parse_request(line, replica.config.limits))
    replica.reactor.advance(0)
    replica.reactor.advance(0)
    return d.result


def test_the_replicas_hooks_feed_its_metrics(replica):
    metrics = replica.metrics
    take_over(replica)
    assert value(metrics, "replicad_role", role="serving") == 1
    assert value(metrics, "replicad_role", role="follower") == 0
    assert value(metrics, "replicad_coordinator_id") == 2
    assert value(metrics, "replicad_ready") == 1
    assert value(metrics, "replicad_elections_won_total") == 1
    assert serve(replica, "PUT k v").status == "OK"
    assert serve(replica, "DEL nothing").status == "NOTFOUND"
    # a read answered on the fast path is counted too
    assert replica.answer_now(Request("GET", "k")).status == "VALUE"
    assert value(metrics, "replicad_requests_total", command="PUT", outcome="ok") == 1
    assert value(metrics, "replicad_requests_total", command="DEL", outcome="notfound") == 1
    assert value(metrics, "replicad_requests_total", command="GET", outcome="ok") == 1
    assert value(metrics, "replicad_quorum_wait_seconds_count", outcome="reached") == 1
    assert value(metrics, "replicad_store_keys") == 1
    assert value(metrics, "replicad_clock_writes", origin="2") == 1
    assert value(metrics, "replicad_group_commits_total") >= 1
    assert value(metrics, "replicad_group_commit_writes_total") >= 1
    assert value(metrics, "replicad_store_db_bytes") > 0
    assert value(metrics, "replicad_epoch") == replica.node.epoch


def test_ping_answers_and_link_changes_reach_the_metrics(replica):
    status = PeerStatus(3, "coordinator", 3, 3, VectorClock({3: 2}), None)
    replica.call = lambda peer_id, message, timeout_s, on_line=None: defer.succeed(
        PeerResponse("OK", status.encode()))
    replica._mark(3, True)
    results: list = []
    replica.ping(3, 0.2).addBoth(results.append)
    assert results[0].clock == VectorClock({3: 2})
    assert replica.metrics.peers[3].status.role == "coordinator"
    assert value(replica.metrics, "replicad_replication_missing_writes", peer="3") == 2
    assert value(replica.metrics, "replicad_peer_up", peer="3") == 1
    assert [e["text"] for e in replica.metrics.timeline if e["kind"] == "link"] == [
        "replica 3 is up"]


def test_a_pull_through_replica_call_is_measured(replica):
    from replicad import peerwire

    class Link:
        def call(self, verb, payload, timeout_s, on_line):
            on_line("REC", "x" * 10)
            return defer.succeed(PeerResponse("END", "- -"))

        def abort(self):          # what Replica.stopService does to every link
            pass

    replica.links[3] = Link()
    results: list = []
    replica.call(3, peerwire.Delta(replica.node.epoch, VectorClock()), 1.0,
                 lambda kind, text: None).addBoth(results.append)
    assert results[0].kind == "END"
    assert value(replica.metrics, "replicad_sync_pull_records_total", kind="delta") == 1
    assert value(replica.metrics, "replicad_sync_pull_bytes_total", kind="delta") == 15
