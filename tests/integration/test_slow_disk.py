"""A replica whose disk stalls: real twistd replicas, the coordinator's fsyncs each held
300 ms by the chaos suite's preloaded library (replicad/chaos/slowfsync.c; needs a C
compiler, skipped without one).

What must hold: its writes are still acknowledged only once durable (after the stall),
and an operator can see the stall where etcd's operators look, in the COMMIT duration
histogram on /metrics (``replicad_commit_duration_seconds``): before it, a stalled
disk showed only as elections.  Marked slow (a real cluster): the slow stage.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicad.chaos import fsyncs
from replicad.client import BlockingClient, build_request
from replicad.cluster import LocalCluster, find_free_base_port
from tests.test_chaos_fsyncs import built_library

pytestmark = pytest.mark.slow

STALL_MS = 300


def commits_over(cluster: LocalCluster, replica: int, seconds: str) -> float:
    """How many of the replica's group COMMITs took longer than ``seconds`` (a bucket
    bound as exposed)."""
    with urllib.request.urlopen(cluster.admin_url(replica, "/metrics"), timeout=5) as r:
        text = r.read().decode("utf-8")
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "replicad_commit_duration_seconds_bucket"
                    and sample.labels.get("outcome") == "ok"):
                counts[sample.labels["le"]] = sample.value
    return counts["+Inf"] - counts[seconds]


def test_a_stalled_disk_shows_in_the_commit_durations_and_delays_no_ack_past_it(tmp_path):
    lib = built_library(tmp_path)
    delay = str(tmp_path / "fsync-delay-3")
    fsyncs.set_delay(delay, 0)
    cluster = LocalCluster(3, find_free_base_port(3, admin=True), str(tmp_path / "cluster"),
                           admin=True)
    cluster.replica_env[3] = fsyncs.environment(lib, delay)
    cluster.start()
    try:
        assert cluster.wait_ready(timeout_s=20) == 3
        client = BlockingClient([cluster.address(3)], timeout_s=10)
        reply, _ = client.exchange(build_request("PUT", "before", "x"))
        assert reply.status == "OK"
        assert commits_over(cluster, 3, "0.256") == 0      # a healthy disk
        fsyncs.set_delay(delay, STALL_MS)
        started = time.monotonic()
        reply, _ = client.exchange(build_request("PUT", "during", "x"))
        assert reply.status == "OK"
        assert time.monotonic() - started >= STALL_MS / 1000   # acknowledged once durable
        assert commits_over(cluster, 3, "0.256") >= 1
    finally:
        cluster.stop()
