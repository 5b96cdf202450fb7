"""replicad.admin over real HTTP parsing (twisted.web's Site on a StringTransport), the
readiness table, the admin config settings, and the log options of the twistd plugin.

Real processes: tests/integration/test_admin.py; a real browser:
tests/integration/test_admin_browser.py."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Application, IServiceCollection
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventsFromJSONLogFile,
)
from twisted.python import usage

from replicad import admin, tap
from replicad.config import (
    Address,
    ConfigError,
    default_config,
    load_config,
    render_config,
)
from replicad.node import Role
from replicad.peerwire import PeerStatus
from replicad.replica import Replica
from replicad.vclock import VectorClock

# HTTP through the real twisted.web stack -----------------------------------------------------


@pytest.fixture
def replica(tmp_path):
    """Replica 2 of the built-in cluster, started on a MemoryReactorClock."""
    reactor = MemoryReactorClock()
    replica = Replica(default_config(), 2, str(tmp_path / "data"), reactor, new_cluster=True)
    replica.startService()
    yield replica
    if replica.running:
        replica.stopService()


def http(replica, method: str, path: str, peers=None, accept: str | None = None):
    """(status, headers, body) of one request to the admin resource tree."""
    site = admin.AdminSite(admin.admin_root(replica, peers), reactor=replica.reactor)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    extra = f"Accept: {accept}\r\n" if accept else ""
    channel.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{extra}"
                         "Connection: close\r\n\r\n".encode("ascii"))
    raw = transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    channel.connectionLost(None)
    return int(status_line.split(" ")[1]), headers, body


def take_over(replica) -> None:
    for _ in range(4):                   # replica 3 never answers: 2 takes over
        replica.reactor.advance(replica.timers.answer_timeout)
    assert replica.node.serving_as == 2


def follow(replica, coordinator=3, epoch=3) -> None:
    assert replica.node.coordinator_received(coordinator, epoch)


def test_healthz_is_200_while_the_replica_runs_and_503_after(replica):
    status, headers, body = http(replica, "GET", "/healthz")
    assert (status, body) == (200, b"ok: alive\n")
    assert headers["content-type"].startswith("text/plain")
    replica.stopService()
    status, _, body = http(replica, "GET", "/healthz")
    assert status == 503 and body.startswith(b"unhealthy: ")


def test_readyz_follows_the_role(replica):
    status, _, body = http(replica, "GET", "/readyz")          # electing at start-up
    assert status == 503
    assert body.startswith(b"not ready: ") and body.endswith(b"\n") and body.count(b"\n") == 1
    follow(replica)
    replica.store.bind_cluster("ab" * 16)
    assert http(replica, "GET", "/readyz")[:3:2] == (
        200, b"ok: following coordinator 3 (epoch 3)\n")
    replica.peer_request(1, "PING", "5")                        # a newer epoch
    take_over(replica)
    status, _, body = http(replica, "GET", "/readyz")
    assert status == 200 and body.startswith(b"ok: serving as the coordinator")


def node(role="follower", coordinator=None, serving_as=None, cannot_serve=False, epoch=3,
         vetoed=None):
    return SimpleNamespace(role=Role(role), coordinator=coordinator, serving_as=serving_as,
                           cannot_serve=cannot_serve or vetoed is not None, epoch=epoch,
                           vetoed=vetoed)


BOUND = SimpleNamespace(cluster_id="ab" * 16)


@pytest.mark.parametrize("fields, ready, reason", [
    (dict(node=None, store=None, running=False), False, "not running"),
    (dict(node=node("stopped"), store=BOUND), False, "stopping"),
    (dict(node=node("follower", 3, 3), store=SimpleNamespace(cluster_id=None)), False,
     "has not joined its cluster"),
    (dict(node=node("serving", 1, 1, cannot_serve=True), store=BOUND), False,
     "no majority"),
    (dict(node=node("follower", vetoed=(1, 3)), store=BOUND), False,
     "coordinator 3 is alive (replica 1 reaches it) but this replica cannot reach it"),
    (dict(node=node("electing"), store=BOUND), False, "election is in progress"),
    (dict(node=node("awaiting"), store=BOUND), False, "election is in progress"),
    (dict(node=node("taking-over", 1), store=BOUND), False, "taking over"),
    (dict(node=node("follower"), store=BOUND), False, "election is in progress"),
    (dict(node=node("follower", 3, 3), store=BOUND), True, "following coordinator 3"),
    (dict(node=node("serving", 1, 1), store=BOUND), True, "serving as the coordinator"),
])
def test_readiness_table(fields, ready, reason):
    replica = SimpleNamespace(**{"my_id": 1, "running": True, **fields})
    ok, why = admin.readiness(replica)
    assert ok is ready and reason in why and "\n" not in why


def test_metrics_are_prometheus_text_parsed_back(replica):
    take_over(replica)
    status, headers, body = http(replica, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in ("replicad_requests", "replicad_request_duration_seconds", "replicad_role",
                 "replicad_epoch", "replicad_elections", "replicad_failovers",
                 "replicad_conflicts", "replicad_replication_lag_writes",
                 "replicad_quorum_wait_seconds", "replicad_sync_pull_bytes",
                 "replicad_sync_pull_duration_seconds", "replicad_store_keys",
                 "replicad_store_db_bytes", "replicad_group_commits", "replicad_ready",
                 "replicad_peer_up", "process_resident_memory_bytes"):
        assert name in families, name
    role = {s.labels["role"]: s.value for s in families["replicad_role"].samples}
    assert role["serving"] == 1 and sum(role.values()) == 1


def test_metrics_speak_openmetrics_when_asked(replica):
    status, headers, body = http(replica, "GET", "/metrics",
                                 accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_cluster_json_shows_every_member_as_this_replica_sees_it(replica):
    follow(replica)
    replica.store.bind_cluster("ab" * 16)
    replica.store.write(3, "k", "v")
    replica._mark(3, True)
    replica.metrics.peer_status(PeerStatus(3, "coordinator", 3, 3, VectorClock({3: 2}),
                                           "ab" * 16))
    replica.reactor.advance(0.5)
    status, headers, body = http(replica, "GET", "/cluster.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    view = json.loads(body)
    assert (view["replica"], view["coordinator"], view["epoch"], view["ready"]) == (
        2, 3, 3, True)
    assert view["cluster_id"] == "ab" * 16
    assert (view["mode"], view["follower_reads"]) == ("available", False)
    one, two, three = view["members"]
    assert [m["id"] for m in (one, two, three)] == [1, 2, 3]
    assert two["here"] and two["link"] == "self" and two["keys"] == 1
    assert (two["role"], two["state"], two["clock"]) == ("follower", "follower", "3:1")
    assert (one["link"], one["role"], one["age_s"]) == ("down", None, None)   # never heard
    assert (three["link"], three["role"], three["coordinator"], three["epoch"]) == (
        "up", "coordinator", 3, 3)
    assert (three["clock"], three["writes"], three["age_s"]) == ("3:2", 2, 0.5)
    assert (three["lag_writes"], three["missing_writes"]) == (0, 1)
    assert three["client"] == "127.0.0.1:7003" and three["admin"] is None
    kinds = [event["kind"] for event in view["timeline"]]
    assert kinds[:2] == ["link", "follow"]                     # newest first


def test_cluster_json_self_is_this_replica_alone(replica):
    view = json.loads(http(replica, "GET", "/cluster.json?self=1")[2])
    assert list(view) == ["self"] and view["self"]["id"] == 2


def test_the_page_is_self_contained_html(replica):
    status, headers, body = http(replica, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    page = body.decode("utf-8")
    assert page.startswith("<!DOCTYPE html>") and "cluster.json" in page
    for external in ("<script src", "@import", "url(", "https://", "<img"):
        assert external not in page, external
    assert re.findall(r"<link[^>]*>", page) == ['<link rel="icon" href="data:,">']


@pytest.mark.parametrize("path", ["/nope", "/metrics/x", "/healthz/", "/index.html",
                                  "/cluster.json/1", "//metrics"])
def test_unknown_paths_are_404(replica, path):
    assert http(replica, "GET", path)[0] == 404


@pytest.mark.parametrize("path", ["/", "/metrics", "/healthz", "/readyz", "/cluster.json"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_methods_other_than_get_and_head_are_405(replica, path, method):
    status, headers, _ = http(replica, method, path)
    assert status == 405
    assert set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize("path", ["/", "/metrics", "/healthz", "/readyz"])
def test_head_answers_like_get_without_a_body(replica, path):
    get_status, get_headers, get_body = http(replica, "GET", path)
    status, headers, body = http(replica, "HEAD", path)
    assert (status, body) == (get_status, b"")
    assert headers["content-type"] == get_headers["content-type"]
    if path != "/metrics":      # the metrics change between two scrapes (timings)
        assert int(headers["content-length"]) == len(get_body)


def test_nothing_on_the_admin_port_writes(replica):
    follow(replica)
    replica.store.bind_cluster("ab" * 16)
    before = (replica.store.clock, replica.store.epoch, replica.node.role,
              replica.store.count())
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
        for path in ("/", "/metrics", "/healthz", "/readyz", "/cluster.json", "/x"):
            http(replica, method, path)
    assert (replica.store.clock, replica.store.epoch, replica.node.role,
            replica.store.count()) == before


# Peer details: key counts fetched from the peers' admin ports --------------------------------


class FakeAgent:
    def __init__(self):
        self.requests: list[bytes] = []

    def request(self, method, url, headers=None, body=None):
        self.requests.append(url)
        return defer.Deferred()         # never answers: the fetch times out


def admin_config():
    """The built-in cluster with admin ports 7201-7203."""
    config = default_config()
    return dataclasses.replace(config, members={
        i: dataclasses.replace(m, admin=Address("127.0.0.1", 7200 + i))
        for i, m in config.members.items()})


def test_peer_details_are_fetched_only_while_someone_watches(tmp_path):
    reactor = MemoryReactorClock()
    replica = Replica(admin_config(), 2, str(tmp_path / "data"), reactor, new_cluster=True)
    agent = FakeAgent()
    peers = admin.PeerDetails(replica, reactor, agent)
    assert peers.targets == {1: b"http://127.0.0.1:7201/cluster.json?self=1",
                             3: b"http://127.0.0.1:7203/cluster.json?self=1"}
    assert agent.requests == []
    peers.wanted()
    assert sorted(agent.requests) == sorted(peers.targets.values())
    reactor.advance(admin.PEER_FETCH_INTERVAL_S / 2)   # one fetch per peer at a time
    assert len(agent.requests) == 2
    for _ in range(3):                                 # to 2 intervals: 2 more ticks
        reactor.advance(admin.PEER_FETCH_INTERVAL_S / 2)
    assert 4 <= len(agent.requests) <= 6               # each timed out and was asked again
    reactor.advance(admin.PEER_FETCH_IDLE_S + 2)       # nobody asked again: stop
    count = len(agent.requests)
    reactor.advance(10)
    assert len(agent.requests) == count
    peers.stop()


def test_fetched_details_show_only_while_fresh_and_the_link_is_up(replica):
    peers = admin.PeerDetails(replica, replica.reactor, FakeAgent())
    peers.details[3] = (replica.reactor.seconds(), {"id": 3, "keys": 42, "ready": True})
    replica._mark(3, True)
    three = admin.cluster_view(replica, peers)["members"][2]
    assert (three["keys"], three["ready"], three["detail_age_s"]) == (42, True, 0.0)
    replica.reactor.advance(admin.PEER_DETAIL_MAX_AGE_S + 0.1)
    assert admin.cluster_view(replica, peers)["members"][2]["keys"] is None
    peers.details[3] = (replica.reactor.seconds(), {"id": 3, "keys": 42})
    replica._mark(3, False)
    assert admin.cluster_view(replica, peers)["members"][2]["keys"] is None


# The admin settings of the config file ----------------------------------------------------------


def write(tmp_path, text: str) -> str:
    path = tmp_path / "cluster.ini"
    path.write_text("[cluster]\nsecret = s\n" + text)
    return str(path)


def test_admin_is_off_unless_set(tmp_path):
    config = load_config(write(tmp_path, "[replica:1]\nclient = a:1\npeer = a:2\n"))
    assert config.member(1).admin is None
    assert config.member(1).admin_listen_endpoint() is None


def test_admin_address_and_listen_override_round_trip(tmp_path):
    config = load_config(write(tmp_path, (
        "[replica:1]\nclient = a:1\npeer = a:2\nadmin = 10.0.0.1:7201\n"
        "admin_listen = tcp:7201:interface=0.0.0.0\n"
        "[replica:2]\nclient = b:1\npeer = b:2\nadmin = [::1]:7202\n")))
    one, two = config.member(1), config.member(2)
    assert one.admin == Address("10.0.0.1", 7201)
    assert one.admin_listen_endpoint() == "tcp:7201:interface=0.0.0.0"
    assert two.admin_listen_endpoint() == "tcp:port=7202:interface=\\:\\:1"
    again = load_config(write(tmp_path, render_config(config).split("\n", 3)[3]))
    assert again.members == config.members


@pytest.mark.parametrize("text, message", [
    ("admin = nowhere", "admin address 'nowhere' is not host:port"),
    ("admin = a:70000", "outside 1-65535"),
    ("admin_listen = tcp:7201", "admin_listen without an admin address"),
    ("admin = a:1", "is also replica 1 client address"),
])
def test_admin_setting_mistakes_are_one_line(tmp_path, text, message):
    path = write(tmp_path, f"[replica:1]\nclient = a:1\npeer = a:2\n{text}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_admin_address_may_not_repeat_across_replicas(tmp_path):
    path = write(tmp_path, "[replica:1]\nclient = a:1\npeer = a:2\nadmin = a:9\n"
                           "[replica:2]\nclient = a:3\npeer = a:4\nadmin = a:9\n")
    with pytest.raises(ConfigError, match="replica 2 admin address a:9 is also replica 1"):
        load_config(path)


def test_make_service_adds_the_admin_listener_only_when_configured(tmp_path, monkeypatch):
    from twisted.application.internet import StreamServerEndpointService

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.ini").write_text(render_config(admin_config()))
    for config_args, listeners in (([], 2), (["--config", "c.ini"], 3)):
        options = tap.Options()
        options.parseOptions(["--id", "1", "--data-dir", f"d{listeners}", *config_args])
        top = tap.makeService(options, reactor=MemoryReactorClock())
        found = [s for s in top if isinstance(s, StreamServerEndpointService)]
        found += [s for c in top if isinstance(c, admin.AdminService) for s in c]
        assert len([s for s in found if isinstance(s, StreamServerEndpointService)]) == listeners
        options.data_dir_lock.close()


# Log options of the twistd plugin ----------------------------------------------------------------


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_log_options_default_to_info_text(in_tmp):
    options = parse("--id", "1")
    assert (options["log-level"], options["log-format"]) == ("info", "text")
    options.data_dir_lock.close()


@pytest.mark.parametrize("args, message", [
    (["--log-level", "verbose"], "--log-level must be one of debug, info, warn, error"),
    (["--log-format", "xml"], "--log-format must be one of text, json"),
])
def test_bad_log_options_are_usage_errors(in_tmp, args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse("--id", "1", *args)


def event(level: LogLevel, text: str, **fields) -> dict:
    return {"log_level": level, "log_format": text, "log_namespace": "test",
            "log_time": 1.0, **fields}


def test_the_json_observer_writes_one_object_per_line_with_the_fields():
    out = io.StringIO()
    observer = FilteringLogObserver(tap.json_lines_observer(out),
                                    [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])
    observer(event(LogLevel.debug, "hidden {x}", x=1))
    observer(event(LogLevel.info, "elected {winner} in epoch {epoch}", winner=3, epoch=7))
    observer(event(LogLevel.error, "multi\nline"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert (first["level"], first["text"], first["winner"], first["epoch"]) == (
        "info", "elected 3 in epoch 7", 3, 7)
    assert json.loads(lines[1])["text"] == "multi\nline"
    # twisted.logger reads it back
    events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue()), recordSeparator=None))
    assert events[0]["log_level"] == LogLevel.info and events[0]["winner"] == 3


@pytest.mark.parametrize("level, shown", [
    ("debug", ["debug", "info", "warn", "error"]),
    ("info", ["info", "warn", "error"]),
    ("warn", ["warn", "error"]),
    ("error", ["error"]),
])
def test_the_level_filters_events(tmp_path, level, shown):
    path = tmp_path / "replica.log"
    observer = tap.log_observer(level, "json", {"logfile": str(path), "nodaemon": False})
    for name in ("debug", "info", "warn", "error"):
        observer(event(LogLevel.levelWithName(name), name))
    observer._observer._outFile.flush()
    assert [json.loads(line)["level"] for line in path.read_text().splitlines()] == shown


def test_twistd_gets_the_observer_from_the_application(in_tmp):
    """twistd calls makeService(...).setServiceParent(application), then starts logging
    with the application's ILogObserver component (twisted.application.app)."""
    options = parse("--id", "1", "--log-format", "json", "--log-level", "warn")
    options.parent = {"logfile": str(in_tmp / "t.log"), "nodaemon": True}
    top = tap.makeService(options, reactor=MemoryReactorClock())
    application = Application("replicad")
    top.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    assert observer is not None and top in list(IServiceCollection(application))
    observer(event(LogLevel.info, "dropped"))
    observer(event(LogLevel.warn, "kept {n}", n=1))
    observer._observer._outFile.flush()
    (line,) = (in_tmp / "t.log").read_text().splitlines()
    assert json.loads(line)["text"] == "kept 1"
    options.data_dir_lock.close()


# replicad-local: admin ports on base+200+i, their URLs printed ----------------------------------


def test_local_cluster_admin_ports_and_config(tmp_path):
    from replicad.cluster import LocalCluster

    cluster = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path), admin=True)
    assert cluster.admin_url(2) == "http://127.0.0.1:17202/"
    assert cluster.admin_url(3, "/metrics") == "http://127.0.0.1:17203/metrics"
    config = load_config(cluster.write_config())
    assert [config.member(i).admin for i in cluster.ids] == [
        Address("127.0.0.1", 17200 + i) for i in cluster.ids]
    plain = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path / "p"))
    assert plain.admin_url(1) is None
    assert load_config(plain.write_config()).member(1).admin is None


def test_local_cluster_admin_ports_must_fit_below_65536(tmp_path):
    from replicad.cluster import ClusterError, LocalCluster

    LocalCluster(size=3, base_port=65400, data_dir=str(tmp_path))        # 65503: fits
    with pytest.raises(ClusterError, match="no room for ports up to 65603"):
        LocalCluster(size=3, base_port=65400, data_dir=str(tmp_path), admin=True)


def test_free_base_port_with_admin_leaves_the_admin_ports_free():
    from replicad.cluster import find_free_base_port, port_free

    base = find_free_base_port(3, admin=True)
    assert all(port_free("127.0.0.1", base + offset + i)
               for offset in (0, 100, 200) for i in (1, 2, 3))


def test_replicad_local_prints_the_admin_urls(tmp_path):
    from replicad import local

    args = local.build_parser().parse_args(["--data-dir", str(tmp_path), "--base-port",
                                            "17000"])
    cluster = local.cluster_from_args(args)
    assert cluster.admin
    out = io.StringIO()
    local.print_banner(cluster, 3, out, cwd=str(tmp_path))
    text = out.getvalue()
    assert "admin http://127.0.0.1:17201/  log " in text
    assert "Watch the whole cluster live in a browser: http://127.0.0.1:17201/" in text
    off = local.cluster_from_args(local.build_parser().parse_args(["--no-admin"]))
    assert not off.admin


def test_a_fresher_detail_brings_its_own_lag_not_the_ping_answers(replica):
    """The lag is computed from the clock shown: a follower that answered a PING before
    the writes and whose admin page, a second old, shows it holds them all is in step
    (the page once showed such a follower "67 writes behind")."""
    replica.store.bind_cluster("ab" * 16)
    replica._mark(3, True)
    replica.metrics.peer_status(PeerStatus(3, "follower", 2, 3, VectorClock(), "ab" * 16))
    for n in range(3):
        replica.store.write(2, f"k{n}", "v")
    replica.reactor.advance(1)
    peers = admin.PeerDetails(replica, replica.reactor, FakeAgent())
    view = admin.cluster_view(replica, peers)["members"][2]
    assert (view["clock"], view["lag_writes"]) == ("-", 3)       # the PING answer
    peers.details[3] = (replica.reactor.seconds(), {"id": 3, "clock": "2:3", "writes": 3})
    view = admin.cluster_view(replica, peers)["members"][2]
    assert (view["clock"], view["lag_writes"], view["missing_writes"]) == ("2:3", 0, 0)
