"""Does a full copy into a wiped replica hold it long enough for an election?

A replica that lost its disk joins again by copying a peer whole.  The records stream in
over many turns of its event loop, but merging them into the live table ran in one call
(``Importer.finish``): 4 s for a million keys, answering nothing meanwhile, PINGs
included.  This loads N keys into a real 3-replica cluster (pipelined PUTs), SIGKILLs a
replica, deletes its data dir, starts it again and, until every replica holds every key,
PINGs every replica's client port from a thread each, every few milliseconds: the
longest time each answered no PING is printed (the wiped replica's, and the sender's
while it streams the copy), with the cluster's election lines meanwhile.
``--wipe 3`` wipes the coordinator (the highest id: it wins its election back and must
copy before it serves); the default wipes follower 1.  ``--repo`` runs another checkout.

    .venv/bin/python bench/full_copy_join.py --keys 1000000          # about 3 min
    .venv/bin/python bench/full_copy_join.py --keys 1000000 --wipe 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import threading
import time

import _bigstore

PING_EVERY_S = 0.005


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--wipe", type=int, default=1, choices=(1, 2, 3))
    _bigstore.add_repo_argument(parser)
    args = parser.parse_args(argv)
    _bigstore.use_repo(args.repo)
    with _bigstore.three_replicas("replicad-bench-join-") as cluster:
        load(cluster, args.keys)
        rejoin(cluster, args.wipe)
    return 0


def load(cluster, n: int) -> None:
    took = _bigstore.load(cluster.address(3), n, b"x" * 100)
    print(f"- loaded {n:,} keys of 100 bytes in {took:.0f} s")
    cluster.wait_until(lambda: same_clock(cluster, cluster.ids), timeout_s=300,
                       what="every replica holds every key")


def same_clock(cluster, ids) -> bool:
    statuses = [cluster.status(i, 5) for i in ids]
    return None not in statuses and len({str(s["clock"]) for s in statuses}) == 1


class Pinger(threading.Thread):
    """PINGs one client port on a connection of its own; the longest silence."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.longest_s = 0.0
        self.answers = 0

    def run(self) -> None:
        host, port = self.address.rsplit(":", 1)
        last = None
        while not self.stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=30) as sock:
                    while not self.stop.is_set():
                        sock.sendall(b"PING\r\n")
                        answer = b""
                        while not answer.endswith(b"\r\n"):
                            chunk = sock.recv(4096)
                            if not chunk:
                                raise OSError("closed")
                            answer += chunk
                        now = time.monotonic()
                        if last is not None:
                            self.longest_s = max(self.longest_s, now - last)
                        last = now
                        self.answers += 1
                        time.sleep(PING_EVERY_S)
            except OSError:
                time.sleep(PING_EVERY_S)    # not listening yet: the silence starts later


def rejoin(cluster, wiped: int) -> None:
    logs = {i: os.path.getsize(cluster.log_path(i)) for i in cluster.ids}
    epoch = cluster.status(3, 5)["epoch"]
    cluster.kill(wiped)
    shutil.rmtree(cluster.replica_dir(wiped))
    os.makedirs(cluster.replica_dir(wiped))
    started = time.monotonic()
    pingers = {i: Pinger(cluster.address(i)) for i in cluster.ids if i != wiped}
    for pinger in pingers.values():
        pinger.start()
    cluster.start_replica(wiped)
    pingers[wiped] = Pinger(cluster.address(wiped))
    pingers[wiped].start()
    cluster.wait_until(lambda: same_clock(cluster, cluster.ids), timeout_s=600,
                       what="the wiped replica holds every key again")
    took = time.monotonic() - started
    time.sleep(2)      # a follower's ping interval and timeout, several times over
    for pinger in pingers.values():
        pinger.stop.set()
        pinger.join()
    print(f"- replica {wiped} wiped and restarted: every key copied in {took:.1f} s")
    for i, pinger in sorted(pingers.items()):
        print(f"- replica {i}{' (wiped)' if i == wiped else ''}: longest time without "
              f"answering a PING {pinger.longest_s:.2f} s ({pinger.answers:,} answered)")
    with open(cluster.log_path(wiped)) as log:
        log.seek(logs[wiped])
        for line in log:
            if "pulled full" in line:
                print(f"- replica {wiped}'s copy: `{line.split('] ', 1)[-1].split('; clock')[0]}`")
    _bigstore.print_elections(cluster, logs)
    status = cluster.status(3, 5)
    print(f"- coordinator afterwards: {cluster.coordinator()}; epoch {epoch} -> "
          f"{status['epoch']}")


if __name__ == "__main__":
    sys.exit(main())
