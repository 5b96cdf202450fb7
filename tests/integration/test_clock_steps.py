"""A replica whose wall clock is stepped (an operator's ``date -s``, NTP stepping, a VM
resumed): real twistd replicas, one of them under libfaketime with its wall clock moved
an hour while it runs (CLOCK_MONOTONIC left alone: FAKETIME_DONT_FAKE_MONOTONIC).

What must hold: a step forward is not a pause (the coordinator does not stand again:
no election, no new epoch, every write acknowledged), and a step back does not stretch
a quorum-mode lease (a coordinator cut off from the others stops serving within its
lease, rather than answer reads with a value the majority has overwritten for an hour).  Both held
only once the reactor ran on the monotonic clock (replicad/reactor.py): before, the
first test saw epoch 3 become 7 ("coordinator 3 was paused for 3600.2 s") and in the
second the isolated coordinator stayed ready for the whole deadline.

Needs Debian's libfaketime (``make test-deps`` installs it); skipped without it.
Marked slow (real clusters, about 15 s): run by ``.ci/run``'s slow stage.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from replicad.chaos import clocks
from replicad.client import BlockingClient, ClientError, build_request
from replicad.cluster import LocalCluster, find_free_base_port
from replicad.testing.cluster import ProxiedCluster

from .lines import ask

pytestmark = pytest.mark.slow

HOUR_S = 3600
HEARTBEATS = 6          # ping_interval (0.3 s) each: a stepped reactor reacts at the first
DEADLINE_S = 10.0


@pytest.fixture
def stepped(tmp_path):
    """stepped(cluster_class, **settings) -> (a ready 3-replica cluster whose replica 3
    runs under libfaketime, step(seconds)), stopped after the test."""
    try:
        lib = clocks.library()
    except clocks.ClockError as e:
        pytest.skip(str(e))
    offset = str(tmp_path / "clock-offset-3")
    clusters = []

    def step(seconds: int) -> None:
        """Replica 3's wall clock, ``seconds`` from the real one from now on."""
        clocks.step(offset, seconds)

    def start(kind=LocalCluster, admin=False, **settings):
        step(0)
        cluster = kind(3, find_free_base_port(3, admin=admin), str(tmp_path / "cluster"),
                       overrides=settings, **({"admin": True} if admin else {}))
        cluster.replica_env[3] = clocks.environment(lib, offset)
        clusters.append(cluster)
        cluster.start()
        assert cluster.wait_ready(timeout_s=20) == 3
        return cluster, step

    yield start
    for cluster in clusters:
        cluster.stop()


def epochs(cluster) -> dict[int, object]:
    return {i: (cluster.status(i) or {}).get("epoch") for i in cluster.ids}


def heartbeats_pass(cluster, client: BlockingClient, count: int) -> int:
    """Write for ``count`` heartbeat intervals (measured on the monotonic clock);
    return how many writes were acknowledged (each one or an exception)."""
    interval = float(cluster.overrides.get("ping_interval", 0.3))
    until = time.monotonic() + count * interval
    n = 0
    while time.monotonic() < until:
        reply, _ = client.exchange(build_request("PUT", f"k{n % 8}", f"v{n}"))
        assert reply.status == "OK", reply
        n += 1
    return n


def test_a_wall_clock_an_hour_ahead_is_no_pause_of_the_coordinator(stepped):
    cluster, step = stepped()
    client = BlockingClient(cluster.addresses(), timeout_s=5)
    assert heartbeats_pass(cluster, client, 2) > 0
    before = epochs(cluster)
    step(+HOUR_S)
    assert heartbeats_pass(cluster, client, HEARTBEATS) > 0
    assert epochs(cluster) == before, "an election followed the step"
    assert cluster.coordinator() == 3
    with open(cluster.log_path(3), encoding="utf-8") as log:
        text = log.read()
    assert "paused" not in text, text[-2000:]


def test_a_wall_clock_an_hour_back_does_not_stretch_a_quorum_mode_lease(stepped):
    cluster, step = stepped(ProxiedCluster, write_quorum="majority")
    client = BlockingClient(cluster.addresses(), timeout_s=5)
    assert heartbeats_pass(cluster, client, 2) > 0
    reply, _ = client.exchange(build_request("PUT", "k", "before"))
    assert reply.status == "OK"
    step(-HOUR_S)
    assert heartbeats_pass(cluster, client, 2) > 0      # the step is read, then the cut
    cluster.isolate(3)
    majority = BlockingClient([cluster.address(1), cluster.address(2)], timeout_s=5)
    reply, _ = majority.exchange(build_request("PUT", "k", "after"))
    assert reply.status == "OK", reply
    # Its lease ends, as without the step: it refuses, and the value it holds is
    # no longer read from it (docs/consistency.md: within the lease it may be).
    cluster.wait_until(lambda: (cluster.status(3) or {}).get("ready") == "no",
                       timeout_s=DEADLINE_S, what="the isolated coordinator's lease to end")
    assert ask(cluster.address(3), "GET k").startswith("ERR UNAVAILABLE")
    assert ask(cluster.address(3), "PUT k isolated").startswith("ERR UNAVAILABLE")
    try:
        reply, _ = majority.exchange(build_request("GET", "k"))
    except ClientError as e:
        pytest.fail(f"the majority side cannot read: {e}")
    assert reply.text == "after"


def clock_offset(cluster, seen_by: int, of: int) -> float | None:
    """Replica ``of``'s wall clock against ``seen_by``'s, as ``seen_by``'s page says."""
    with urllib.request.urlopen(cluster.admin_url(seen_by, "/cluster.json"), timeout=5) as r:
        return json.load(r)["members"][of - 1].get("clock_offset_s")


def test_the_cluster_page_shows_a_replicas_wall_clock_off_the_others(stepped):
    """Timers no longer read the wall clock, but each replica's log lines and page
    events are stamped by its own: the page says whose is off, and by how much."""
    cluster, step = stepped(admin=True)
    cluster.wait_until(lambda: clock_offset(cluster, 1, 3) is not None,
                       timeout_s=DEADLINE_S, what="replica 1's page to show replica 3's clock")
    assert abs(clock_offset(cluster, 1, 3)) < 5                 # in step, so far
    step(+HOUR_S)
    ahead = cluster.wait_until(lambda: (clock_offset(cluster, 1, 3) or 0) > HOUR_S / 2
                               and clock_offset(cluster, 1, 3), timeout_s=DEADLINE_S,
                               what="replica 1's page to show replica 3 an hour ahead")
    assert abs(ahead - HOUR_S) < 5, ahead
    behind = cluster.wait_until(lambda: (clock_offset(cluster, 3, 1) or 0) < -HOUR_S / 2
                                and clock_offset(cluster, 3, 1), timeout_s=DEADLINE_S,
                                what="replica 3's page to show replica 1 an hour behind")
    assert abs(behind + HOUR_S) < 5, behind
