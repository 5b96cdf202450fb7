"""How fast this machine runs a fixed piece of CPU work right now, in continuous load
and after an idle gap: a reader's check on why the benchmarks' absolute figures move.

A fixed piece of pure-Python work (WORK additions and multiplications) is timed by the
process's own CPU clock, first back to back for --busy seconds, then once after each of
--gaps idle pauses of --gap seconds.  On a machine whose cores keep one speed the
figures agree from run to run and between the two modes.  On the development machine
(a 2-core virtual machine) they did not: the same piece took about twice as long at
one moment as at another a few minutes later, in continuous load (docs/benchmarks.md,
"Tenth session").  Run it before and after a benchmark: two absolute figures measured
at different speeds compare nothing; the suite's ratios (both sides measured in the
same round, seconds apart) are what hold.

    .venv/bin/python bench/machine_speed.py      # about 20 s, prints three lines
"""

from __future__ import annotations

import argparse
import statistics
import time

WORK = 300_000


def work() -> float:
    """CPU milliseconds of one fixed piece of work."""
    started = time.process_time()
    total = 0
    for i in range(WORK):
        total += i * i
    return (time.process_time() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=float, default=5.0,
                        help="seconds of back-to-back work (default 5)")
    parser.add_argument("--gaps", type=int, default=30, help="pauses (default 30)")
    parser.add_argument("--gap", type=float, default=0.4,
                        help="seconds of each idle pause (default 0.4)")
    args = parser.parse_args()

    busy = []
    end = time.monotonic() + args.busy
    while time.monotonic() < end:
        busy.append(work())
    busy = busy[len(busy) // 5:]    # the first fifth: the clock may still be rising
    after_gap = []
    for _ in range(args.gaps):
        time.sleep(args.gap)
        after_gap.append(work())
    fast, slow = statistics.median(busy), statistics.median(after_gap)
    print(f"continuous load:   {fast:.1f} ms per piece of work (median of {len(busy)}, "
          f"range {min(busy):.1f}-{max(busy):.1f})")
    print(f"after {args.gap:g} s idle: {slow:.1f} ms (median of {len(after_gap)}, "
          f"range {min(after_gap):.1f}-{max(after_gap):.1f})")
    print(f"work that starts after an idle gap takes {slow / fast:.2f}x as long")


if __name__ == "__main__":
    main()
