"""Does one KEYS over many keys hold the coordinator long enough for an election?

A replica reads and encodes a KEYS listing within one turn of its event loop and
answers nothing else meanwhile, PINGs included.  This loads N keys into a real
3-replica cluster (pipelined PUTs to the coordinator), sends one plain ``KEYS``, times
the answer, lets the client library read the listing (in pages when the answer is
``ERR TOOMANY``) and prints the followers' election lines meanwhile.  ``--repo`` runs
another checkout's replicad (e.g. a worktree of the code before the pages).

    .venv/bin/python bench/keys_listing.py --keys 1000000     # about 2 min
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import _bigstore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    _bigstore.add_repo_argument(parser)
    args = parser.parse_args(argv)
    _bigstore.use_repo(args.repo)
    from replicad.client import BlockingClient
    with _bigstore.three_replicas("replicad-bench-keys-") as cluster:
        run(cluster, args.keys, BlockingClient)
    return 0


def run(cluster, n: int, client_class) -> None:
    took = _bigstore.load(cluster.address(3), n)
    print(f"- loaded {n:,} keys in {took:.0f} s")
    host, port = cluster.address(3).rsplit(":", 1)
    cluster.wait_until(lambda: len({str(cluster.status(i, 5)["clock"]) for i in cluster.ids}) == 1,
                       timeout_s=300, what="every replica holds every key")
    logs = {i: os.path.getsize(cluster.log_path(i)) for i in cluster.ids}
    started = time.monotonic()
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(60)
        sock.sendall(b"KEYS\r\n")
        answer = b""
        while not (answer.endswith(b"END\r\n") or answer.startswith(b"ERR")
                   and answer.endswith(b"\r\n")):
            answer += sock.recv(1 << 20)
    head = answer.split(b"\r\n", 1)[0][:70].decode()
    print(f"- one KEYS: {head!r}, "
          f"{len(answer) / 1e6:.1f} MB in {time.monotonic() - started:.2f} s")
    if answer.startswith(b"ERR"):
        started = time.monotonic()
        listed = client_class([cluster.address(3)], timeout_s=60).keys()
        print(f"- the client library read {len(listed):,} keys in pages in "
              f"{time.monotonic() - started:.2f} s")
    time.sleep(2)     # a follower's ping interval and timeout, several times over
    _bigstore.print_elections(cluster, logs)
    print(f"- coordinator afterwards: {cluster.coordinator()}")


if __name__ == "__main__":
    sys.exit(main())
