"""A client that pipelines requests and does not read the replies: a real twistd
replica, 2,000 GETs of a 60 kB value sent at once, over plain TCP and over TLS.

What must hold: the replica's memory stays bounded (its peak resident size, VmHWM,
grows by less than 64 MB), other clients are served meanwhile, and once the client
reads, every reply arrives, in order.  The transport pauses the protocol while more
than its bufferSize of replies wait (client_protocol.py ``_RepliesBackedUp``; under TLS
through the TLS layer's producer membrane); before, the replica made all the replies at
once, and a client sending a few hundred kilobytes of such lines could exhaust its
memory (checked: this test fails there, the peak grew by 564 MB with 5,000 GETs).  The
connection is counted in ``replicad_client_connections_backed_up`` meanwhile.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from replicad.cluster import ClusterTLS, LocalCluster, find_free_base_port
from tests.integration.lines import read_line
from tests.integration.test_admin import metric_samples
from tests.tlscerts import make_ca

GETS = 2000
VALUE = "v" * 60_000


def backed_up(cluster: LocalCluster) -> float | None:
    return metric_samples(cluster, 1).get(("replicad_client_connections_backed_up", ()))


def peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])


@pytest.mark.parametrize("with_tls", [False, True], ids=["tcp", "tls"])
def test_replies_a_client_does_not_read_are_bounded(tmp_path, with_tls):
    tls, context = None, None
    if with_tls:
        ca = make_ca(str(tmp_path / "pki"))
        server = ca.issue(str(tmp_path / "pki" / "server"), "server")
        tls = ClusterTLS(server.cert, server.key, ca.cert, ca.dir)
        context = ssl.create_default_context(cafile=ca.cert)
    cluster = LocalCluster(1, find_free_base_port(1), str(tmp_path / "cluster"), tls=tls,
                           admin=True)
    host, port = cluster.address(1).rsplit(":", 1)

    def connect() -> socket.socket:
        conn = socket.create_connection((host, int(port)), timeout=30)
        return conn if context is None else context.wrap_socket(conn, server_hostname=host)

    def ask(line: str) -> str:
        with connect() as conn:
            conn.sendall(line.encode() + b"\n")
            return read_line(conn)

    cluster.start()
    try:
        assert cluster.wait_ready(timeout_s=20) == 1
        assert ask(f"PUT big {VALUE}") == "OK"
        before = peak_kb(cluster.pid(1))
        with connect() as greedy:
            greedy.sendall(b"GET big\n" * GETS)          # 16 kB: the kernel takes it
            cluster.wait_until(lambda: backed_up(cluster) == 1, timeout_s=20,
                               what="the greedy connection counted as backed up")
            assert ask("PING") == "PONG"                  # others are served
            expected = f"VALUE {VALUE}\r\n".encode()
            received = 0
            while received < GETS * len(expected):
                chunk = greedy.recv(1 << 20)
                assert chunk, f"closed after {received} bytes"
                received += len(chunk)
            assert received == GETS * len(expected)
        grown_mb = (peak_kb(cluster.pid(1)) - before) / 1024
        assert grown_mb < 64, f"the replica's peak grew by {grown_mb:.0f} MB"
    finally:
        cluster.stop()
