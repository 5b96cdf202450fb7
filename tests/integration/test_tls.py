"""A real three-replica cluster with TLS on its client and peer ports, certificates made
at test time (tests/tlscerts.py): elections, writes and reads through replicad-cli with
--cacert, status --cluster, a failover after SIGKILL; a client without the CA is refused
with one line; a replica with another CA cannot join, and both sides log why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from replicad.client import BlockingClient, ClientError
from replicad.cluster import ClusterTLS, LocalCluster, find_free_base_port
from tests.integration.conftest import CLI
from tests.tlscerts import make_ca


@pytest.fixture
def pki(tmp_path):
    ca = make_ca(str(tmp_path / "pki"))
    server = ca.issue(str(tmp_path / "pki" / "server"), "server")
    return ca, ClusterTLS(server.cert, server.key, ca.cert, ca.dir)


@pytest.fixture
def tls_cluster(tmp_path, pki):
    clusters: list[LocalCluster] = []

    def start(cluster_class=LocalCluster) -> LocalCluster:
        cluster = cluster_class(size=3, base_port=find_free_base_port(3),
                                data_dir=str(tmp_path / "cluster"), tls=pki[1])
        clusters.append(cluster)
        cluster.start()
        cluster.wait_ready(timeout_s=30)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()


def cli(cluster: LocalCluster, session: str, *args: str, servers: list[str] | None = None,
        tls: list[str] | None = None, timeout_s: float = 10.0) -> subprocess.CompletedProcess:
    command = [CLI, "--servers", ",".join(servers or cluster.addresses()),
               "--timeout", str(timeout_s), "--session", session,
               *(cluster.cli_options() if tls is None else tls), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def log_text(cluster: LocalCluster, i: int) -> str:
    with open(cluster.log_path(i), encoding="utf-8", errors="replace") as handle:
        return handle.read()


def test_a_tls_cluster_elects_serves_and_fails_over(tls_cluster, tmp_path):
    cluster = tls_cluster()
    session = str(tmp_path / "session.json")
    assert cluster.coordinator() == 3
    for i in cluster.ids:   # both listeners are TLS
        assert "ClientFactory (TLS) starting" in log_text(cluster, i)
        assert "PeerServerFactory (TLS) starting" in log_text(cluster, i)

    put = cli(cluster, session, "put", "greeting", "hello", "tls")
    assert (put.returncode, put.stdout, put.stderr) == (0, "OK\n", "")
    # Through a follower (forwarded over the TLS peer link) and by name.
    port = cluster.client_address(1).port
    got = cli(cluster, session, "get", "greeting", servers=[f"localhost:{port}"])
    assert (got.returncode, got.stdout) == (0, "hello tls\n"), got.stderr

    table = cli(cluster, session, "status", "--cluster")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["SERVER", "ID", "ROLE"]
    assert [line.split()[2] for line in lines[1:4]] == ["follower", "follower", "coordinator"]
    assert all("2/2 up" in line for line in lines[1:4])
    assert lines[-1] == "3 of 3 up; coordinator 3 in epoch " + lines[3].split()[4]

    # SIGKILL the coordinator: the next write goes through at once, over TLS.
    cluster.kill(3, signal.SIGKILL)
    put = cli(cluster, session, "put", "after", "failover")
    assert (put.returncode, put.stdout) == (0, "OK\n"), put.stderr
    assert cluster.wait_ready(timeout_s=20) == 2
    got = cli(cluster, session, "get", "greeting")
    assert (got.returncode, got.stdout) == (0, "hello tls\n"), got.stderr

    status = cli(cluster, session, "status", "--cluster", "--json")
    assert status.returncode == 0, status.stderr
    rows = {row["server"]: row for row in json.loads(status.stdout)}
    down = rows[cluster.address(3)]
    assert down["up"] is False and down["error"] == "connection refused"
    assert rows[cluster.address(2)]["role"] == "coordinator"
    assert rows[cluster.address(1)]["peers"] == {"2": "up", "3": "down"}
    table = cli(cluster, session, "status", "--cluster")
    assert f"{cluster.address(3)} is down: connection refused" in table.stdout
    assert "2 of 3 up; coordinator 2" in table.stdout

    # It returns, takes over again (highest id) and holds every key.
    cluster.start_replica(3)
    cluster.wait_until(lambda: cluster.coordinator() == 3, 30, what="replica 3 to lead again")
    keys = cli(cluster, session, "keys")
    assert sorted(keys.stdout.split()) == ["after", "greeting"], keys.stderr

    # SIGTERM stops a TLS replica at once (it waited ~5 s for close_notify, then got
    # SIGKILLed by stop()'s grace period): peer links are aborted, not closed.
    cluster.stop()
    assert [cluster.exit_text(i) for i in cluster.ids] == ["signal SIGTERM"] * 3


def test_clients_without_the_ca_or_without_tls_are_refused_with_one_line(tls_cluster,
                                                                          tmp_path):
    cluster = tls_cluster()
    session = str(tmp_path / "session.json")
    started = time.monotonic()
    refused = cli(cluster, session, "get", "k", tls=["--tls"], timeout_s=20)
    assert time.monotonic() - started < 10          # at once, not after --timeout
    assert refused.returncode == 3 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("replicad-cli: the TLS handshake failed with every "
                                     "server")
    assert "certificate verify failed" in refused.stderr and "--cacert" in refused.stderr

    plain = cli(cluster, session, "get", "k", tls=[], timeout_s=20)
    assert plain.returncode == 3 and plain.stderr.count("\n") == 1
    assert "closed the connection without answering" in plain.stderr
    assert "--tls" in plain.stderr

    # Each replica logged what happened on its client port.
    def logged() -> bool:
        text = log_text(cluster, 1)
        return ("TLS handshake on the client port" in text and "unknown ca" in text
                and "wrong version number" in text)

    cluster.wait_until(logged, 15, what="replica 1 to log the failed handshakes")


def test_a_replica_with_another_ca_cannot_join(tls_cluster, tmp_path, pki):
    """Replica 3 returns with a certificate from another CA, and trusting only that CA:
    the others refuse it and it refuses them; it stays down, and both sides say why."""
    other = make_ca(str(tmp_path / "pki"), "other-ca")
    foreign = other.issue(str(tmp_path / "pki" / "foreign"), "foreign")
    foreign_tls = ClusterTLS(foreign.cert, foreign.key, other.cert, other.dir)

    class OneForeign(LocalCluster):
        def command(self, i: int) -> list[str]:
            command = super().command(i)
            if i == 3 and os.path.exists(self.config_path + ".foreign"):
                command[command.index("--config") + 1] = self.config_path + ".foreign"
            return command

    cluster = tls_cluster(OneForeign)
    session = str(tmp_path / "session.json")
    assert cli(cluster, session, "put", "k", "v").returncode == 0
    cluster.kill(3, signal.SIGTERM)
    with open(cluster.config_path, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace(pki[1].key, foreign.key).replace(pki[1].cert, foreign.cert)
    text = text.replace(pki[1].ca_dir, other.dir)
    with open(cluster.config_path + ".foreign", "w", encoding="utf-8") as handle:
        handle.write(text)
    before = {i: len(log_text(cluster, i)) for i in cluster.ids}
    cluster.start_replica(3)

    def refused_everywhere() -> bool:
        news = {i: log_text(cluster, i)[before[i]:] for i in cluster.ids}
        return all("TLS handshake on the peer port" in news[i] and "unknown ca" in news[i]
                   for i in cluster.ids)

    cluster.wait_until(refused_everywhere, 20, what="every replica to log refused peers")
    time.sleep(1.0)
    cluster.check_alive()
    for i in (1, 2):
        status = cluster.status(i)
        assert status["peers"]["3"] == "down", status
        assert status["coordinator"] == 2
    client = BlockingClient([cluster.address(3)], timeout_s=5, **{
        "cacert": foreign_tls.cacert})
    try:
        status = client.status()
    except ClientError as e:   # pragma: no cover - the replica is up: it answers
        pytest.fail(f"replica 3 does not answer its own clients: {e}")
    assert status["peers"] == {"1": "down", "2": "down"}
    assert status["coordinator"] != 2
