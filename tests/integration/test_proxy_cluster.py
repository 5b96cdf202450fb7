"""Issue #7: three real replicas that reach each other only through the fault proxy.

Isolating the coordinator is a partition, not a crash: replica 3 keeps running and
answering STATUS on its client port while 1 and 2 can no longer hear it.
"""

from __future__ import annotations

import configparser

import pytest

from replicad.cluster import find_free_base_port
from replicad.testing.cluster import ProxiedCluster

ELECTION_DEADLINE_S = 8.0


@pytest.fixture
def proxied_cluster(tmp_path):
    cluster = ProxiedCluster(size=3, base_port=find_free_base_port(3),
                             data_dir=str(tmp_path / "cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.proxy.running


def named_coordinators(cluster: ProxiedCluster, ids: list[int]) -> dict[int, object]:
    """Each replica's coordinator, or None for one that does not answer or is electing."""
    named = {}
    for i in ids:
        status = cluster.status(i, timeout_s=0.5)
        electing = status is None or status["role"] == "electing"
        named[i] = None if electing else status["coordinator"]
    return named


def agree_on(cluster: ProxiedCluster, ids: list[int]) -> int | None:
    named = set(named_coordinators(cluster, ids).values())
    if len(named) == 1:
        (winner,) = named
        return winner if isinstance(winner, int) else None
    return None


def joined(cluster: ProxiedCluster) -> bool:
    """Every replica reports the same cluster id: it has copied the history it needs.

    A replica that has not joined yet may not stand for election, so isolating the
    coordinator before that would leave the others without a candidate.  (Builds
    without cluster ids report none, and count as joined.)
    """
    ids = set()
    for i in cluster.ids:
        status = cluster.status(i, timeout_s=0.5)
        if status is None:
            return False
        ids.add(status.get("cluster_id", "n/a"))
    return len(ids) == 1 and ids.pop() not in ("-", "", None)


def test_replicas_dial_each_other_only_through_the_proxy(proxied_cluster):
    cluster = proxied_cluster
    assert cluster.wait_ready(timeout_s=15) == 3
    for i in cluster.ids:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(cluster.replica_config_path(i))
        for j in cluster.ids:
            connect = parser.get(f"replica:{j}", "peer_connect", fallback=None)
            if j == i:
                assert connect is None
            else:
                assert f":port={cluster.proxy_port(i, j)}:" in connect


def test_isolated_coordinator_is_replaced_then_the_cluster_reunites(proxied_cluster):
    cluster = proxied_cluster
    assert cluster.wait_ready(timeout_s=15) == 3
    cluster.wait_until(lambda: joined(cluster), timeout_s=10,
                       what="every replica to join the cluster through the proxy")

    cluster.isolate(3)
    assert cluster.held() == [(1, 3), (2, 3), (3, 1), (3, 2)]
    cluster.wait_until(
        lambda: agree_on(cluster, [1, 2]) == 2, timeout_s=ELECTION_DEADLINE_S,
        what="replicas 1 and 2 to elect 2 while 3 is isolated",
    )
    assert cluster.running(3), "an isolated replica must not be killed"
    assert cluster.status(3) is not None, "replica 3 still answers on its client port"
    cluster.check_alive()

    cluster.heal()
    assert cluster.held() == []
    winner = cluster.wait_until(
        lambda: agree_on(cluster, [1, 2, 3]), timeout_s=ELECTION_DEADLINE_S,
        what="all three replicas to agree on a coordinator after the heal",
    )
    assert winner in (1, 2, 3)
    cluster.check_alive()
