"""How long do clients wait when the highest replica comes back far behind?

The highest of 3 replicas is SIGKILLed, N writes (100-byte values) go to the new
coordinator, and replica 3 is started again: it wins its election (Bully) and, as
coordinator, pulls what it lacks before it serves.  A writer thread (the client library,
all three servers) writes throughout; printed: the longest time between two of its
acknowledged writes, and replica 3's pull and election lines in order.  ``--repo`` runs
another checkout's replicad (a worktree of the code before a change).

    .venv/bin/python bench/rejoin_gap.py --writes 100000     # about 40 s
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

import _bigstore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=100_000)
    _bigstore.add_repo_argument(parser)
    args = parser.parse_args(argv)
    _bigstore.use_repo(args.repo)
    from replicad.client import BlockingClient, ClientError

    with _bigstore.three_replicas("replicad-bench-rejoin-") as cluster:
        cluster.kill(3, signal.SIGKILL)
        cluster.wait_until(lambda: cluster.coordinator() == 2, timeout_s=30,
                           what="replica 2 coordinates")
        took = _bigstore.load(cluster.address(2), args.writes, b"x" * 100)
        print(f"- replica 3 down; {args.writes:,} writes to replica 2 in {took:.0f} s")
        stop, gaps, failed = threading.Event(), [], []

        def write() -> None:
            client = BlockingClient(cluster.addresses(), timeout_s=30)
            last, n = time.monotonic(), 0
            while not stop.is_set():
                try:
                    client.put(f"w{n}", "v")
                except ClientError as e:
                    failed.append(str(e))
                    continue
                n += 1
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(1)
        logged = os.path.getsize(cluster.log_path(3))
        started = time.monotonic()
        cluster.start_replica(3)
        cluster.wait_until(lambda: cluster.coordinator() == 3, timeout_s=300,
                           what="replica 3 coordinates")
        cluster.wait_until(lambda: (cluster.status(3, 5) or {}).get("keys", 0) >= args.writes,
                           timeout_s=300, what="replica 3 holds the writes")
        print(f"- replica 3 coordinates and holds them {time.monotonic() - started:.1f} s "
              f"after its start")
        time.sleep(3)
        stop.set()
        writer.join(60)
        print(f"- the writer: {len(gaps):,} acknowledged, {len(failed)} failed; the longest "
              f"time between two acknowledged writes {max(gaps):.2f} s")
        with open(cluster.log_path(3), errors="replace") as log:
            log.seek(logged)
            for line in log:
                if any(w in line for w in ("pulled ", "starts an election", "catches up")):
                    print(f"  - `{line.split('] ', 1)[-1].split('; clock')[0].strip()[:150]}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
