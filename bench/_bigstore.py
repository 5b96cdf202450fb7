"""What the large-store benchmarks share (keys_listing.py, full_copy_join.py).

``--repo`` runs another checkout's replicad (a worktree of the code before a change):
its directory must come first on sys.path before anything imports replicad, so this
module imports none of it (bench/_common.py does).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

HERE_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 2000    # PUTs pipelined at a time


def add_repo_argument(parser) -> None:
    parser.add_argument("--repo", default=HERE_REPO,
                        help="the checkout whose replicad runs (default: this one)")


def use_repo(repo: str) -> None:
    """Import replicad (and run twistd) from ``repo`` from now on."""
    sys.path.insert(0, repo)
    os.chdir(repo)


def load(address: str, n: int, value: bytes = b"v") -> float:
    """PUT user:<i> = value for i < n through one connection, BATCH in flight; every
    answer checked.  Returns the seconds it took."""
    host, port = address.rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(60)
        for first in range(0, n, BATCH):
            last = min(n, first + BATCH)
            sock.sendall(b"".join(b"PUT user:%09d %s\r\n" % (i, value)
                                  for i in range(first, last)))
            answers = b""
            while answers.count(b"\r\n") < last - first:
                answers += sock.recv(1 << 20)
            assert answers.count(b"OK\r\n") == last - first, answers[:200]
    return time.monotonic() - started


@contextmanager
def three_replicas(prefix: str) -> Iterator:
    """A ready 3-replica LocalCluster of the chosen checkout, stopped and deleted after."""
    from replicad.cluster import LocalCluster, find_free_base_port  # after use_repo()

    with tempfile.TemporaryDirectory(prefix=prefix) as data:
        cluster = LocalCluster(size=3, base_port=find_free_base_port(3), data_dir=data)
        cluster.start()
        try:
            cluster.wait_ready(timeout_s=20)
            yield cluster
        finally:
            cluster.stop()


def print_elections(cluster, offsets: dict[int, int]) -> None:
    """Each replica's elections started since its log was ``offsets[i]`` long."""
    for i in cluster.ids:
        with open(cluster.log_path(i)) as log:
            log.seek(offsets[i])
            lines = [line.rstrip() for line in log if "starts an election" in line]
        print(f"- replica {i}: {len(lines)} election(s) started" +
              "".join(f"\n  - `{line}`" for line in lines[:3]))
