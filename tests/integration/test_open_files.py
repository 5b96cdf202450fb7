"""A replica started under a low soft open-file limit (a shell's ``ulimit -n``): real
twistd process, 200 clients connected at once with ``max_connections = 200``.

What must hold: every one of them is answered.  The replica raises its soft limit to
what its configuration needs (replicad/openfiles.py); before, under a soft limit of
128, about 112 were served and the rest reset by Twisted's EMFILE recovery before
being read (checked: this test fails there).
"""

from __future__ import annotations

import os
import resource

from replicad.cluster import LocalCluster, find_free_base_port
from tests.integration.lines import connect, read_line

CLIENTS = 200


def test_a_replica_under_a_low_soft_limit_serves_max_connections_clients(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cluster = LocalCluster(1, find_free_base_port(1), str(tmp_path / "cluster"),
                           overrides={"max_connections": str(CLIENTS)})
    # Inherited by the replica; above what this process has open, so that starting it
    # (pipes, the config) does not fail here; still far below what 200 clients need.
    low = max(128, len(os.listdir("/proc/self/fd")) + 32)
    assert low < CLIENTS
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        cluster.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    conns = []
    try:
        assert cluster.wait_ready(timeout_s=20) == 1
        for _ in range(CLIENTS):
            conn = connect(cluster.address(1))
            conn.sendall(b"PING\n")
            conns.append(conn)
        answers = []
        for conn in conns:
            try:
                answers.append(read_line(conn))
            except ConnectionResetError:
                answers.append("reset")
        assert answers.count("PONG") == CLIENTS, {a: answers.count(a) for a in set(answers)}
    finally:
        for conn in conns:
            conn.close()
        cluster.stop()
