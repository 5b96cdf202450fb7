"""A follower's cost per pushed record, in process (issue #10 item 6: where the time goes).

A coordinator's store writes --records new keys (100-byte values, as the suite's PUTs);
they are encoded as PUSH frames of --batch records (at 50 connections a follower gets
about 38 per coordinator group: metrics ``replicad_group_commit_writes`` /
``replicad_group_commits`` on the coordinator) and a follower's store on a temporary
file decodes and applies them, as replica.Replica._on_push does, with a COMMIT (the
fdatasync included) per batch or with the whole run in one transaction (--no-commit),
which tells the disk's share from the Python's.  CPU time (process_time: the kernel's
part of an fdatasync included) per record, the median of --rounds.  No network, no
reactor: what the real follower adds to this is its frames, its answer and the reactor
(bench/suite.py reports the real process's CPU per PUT).

    .venv/bin/python bench/follower_apply.py [--records 20000] [--batch 38] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from replicad import peerwire
from replicad.store import Store


def payloads(directory: str, records: int, batch: int) -> list[str]:
    coordinator = Store(os.path.join(directory, "coordinator.db"))
    coordinator.begin_group()
    written = [coordinator.write(3, f"p1-{i:09d}", "x" * 100, epoch=1) for i in range(records)]
    coordinator.commit_group()
    coordinator.close()
    return [peerwire.encode_message(peerwire.Push(1, tuple(written[i:i + batch])))[1]
            for i in range(0, records, batch)]


def apply_all(path: str, frames: list[str], commit: bool) -> float:
    """CPU µs per record to decode and apply every frame into a new store at path."""
    follower = Store(path)
    records = 0
    started = time.process_time()
    for frame in frames:
        message = peerwire.decode_message("PUSH", frame)
        if not follower.group_open:
            follower.begin_group()
        outcomes = follower.apply_pushed_batch(message.records)
        assert outcomes == ["applied"] * len(message.records), outcomes[:3]
        records += len(message.records)
        if commit:
            follower.commit_group()
    if follower.group_open:
        follower.commit_group()
    spent = time.process_time() - started
    follower.close()
    return spent / records * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=38)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.records < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--records, --batch and --rounds must be at least 1")
    with tempfile.TemporaryDirectory() as directory:
        frames = payloads(directory, args.records, args.batch)
        results: dict[str, list[float]] = {"a COMMIT per batch": [], "one transaction": []}
        for n in range(args.rounds):
            for commit, name in ((True, "a COMMIT per batch"), (False, "one transaction")):
                path = os.path.join(directory, f"follower-{n}-{commit}.db")
                results[name].append(apply_all(path, frames, commit))
    print(f"{args.records:,} records in PUSH frames of {args.batch}, median of {args.rounds}:")
    for name, values in results.items():
        print(f"  {name:20} {statistics.median(values):6.2f} µs CPU per record "
              f"(rounds {', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
