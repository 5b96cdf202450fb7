"""How far is replicad from the floor of its platform?  A bare Twisted server beside it and Redis.

Issue #10's ratios compare replicad with Redis; this says how much of the gap is the
platform (one Python process on Twisted, the kernel's loopback TCP, SQLite's fsync) and
how much is replicad's own code.  In one run, on this machine, the same load generator
(bench/load.c, 50 connections, persistent or one-shot, 100-byte values) drives in turn:

- ``Ra``: Redis, ``appendfsync always`` (the suite's write comparison);
- ``Bt``: bench/bare_server.py with replicad's reactor and turn-end sends: PING, a GET
  read from SQLite, a PUT made durable by one COMMIT per reactor turn; nothing else
  (no replication, clocks, sessions, request ids, metrics, error handling);
- ``Bw``: the same with Twisted's own ``transport.write`` (PING only);
- ``R1``: replicad, 1 replica (its write path without followers);
- ``R3``: replicad, 3 replicas, ``write_quorum = 1`` (the suite's main target).

Scenarios ``ping-50`` (no storage: the reactor, the protocol and the kernel), ``get-50``,
``put-50``, and ``ping-os50`` and ``put-os50`` (a connection per request, 50 at a
time); rounds alternate the targets as bench/suite.py does (medians of --rounds).
Reported: rate, the ratio to Redis and to the bare server, and each server's CPU µs per
operation (all its processes).

    .venv/bin/python bench/ceiling.py [--rounds 3] [--write]    # about 3.5 min

--write replaces the ``ceiling`` section of docs/benchmarks.md (--section for another).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import _common
import suite
from _common import markdown_table
from throughput import Redis, cpu_seconds, redis_version, stop_process

from replicad.cluster import find_free_base_port

HERE = os.path.dirname(os.path.abspath(__file__))
BARE = os.path.join(HERE, "bare_server.py")

SCENARIOS = [
    suite.Scenario("ping-50", "PING, 50 connections", "ping", "persistent", 50,
                   ("Ra", "Bt", "Bw", "R1", "R3")),
    suite.Scenario("get-50", "GET, 50 connections", "get", "persistent", 50,
                   ("Ra", "Bt", "R1", "R3")),
    suite.Scenario("put-50", "PUT, 50 connections", "put", "persistent", 50,
                   ("Ra", "Bt", "R1", "R3")),
    # A connection per request (issue #10's one-shot target: connect, accept, one
    # request, close on both sides): what the platform's connection handling costs,
    # with no storage (PING) and with a durable write (PUT).
    suite.Scenario("ping-os50", "PING, one-shot, 50 concurrent", "ping", "oneshot", 50,
                   ("Ra", "Bt", "R1", "R3")),
    suite.Scenario("put-os50", "PUT, one-shot, 50 concurrent", "put", "oneshot", 50,
                   ("Ra", "Bt", "R1", "R3")),
]
LABELS = {
    "Ra": "Redis, appendfsync always",
    "Bt": "bare Twisted server, turn-end sends (bench/bare_server.py)",
    "Bw": "bare Twisted server, Twisted's transport.write",
    "R1": "replicad, 1 replica",
    "R3": "replicad, 3 replicas, wq=1",
}


class BareServer:
    """bench/bare_server.py in a child process on a free loopback port."""

    def __init__(self, workdir: str, send: str):
        self.send = send
        self.dir = os.path.join(workdir, f"bare-{send}")
        os.makedirs(self.dir)
        self.port = find_free_base_port(1) + 1
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(os.path.join(self.dir, "out.log"), "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, BARE, str(self.port), self.dir, "--send", self.send],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = _ask(self.port, b"PING\r\n")
            except OSError:
                reply = b""
            if reply == b"PONG\r\n":
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(os.path.join(self.dir, "out.log"), encoding="utf-8",
                          errors="replace") as log:
                    raise RuntimeError(f"bench/bare_server.py did not start: {log.read()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)

    def target(self, key: str) -> suite.Target:
        proc = self.proc
        return suite.Target(key, LABELS[key], "bare", "line",
                            {"coordinator": ("127.0.0.1", self.port)},
                            lambda: [("bare", proc.pid)])


def _ask(port: int, line: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(line)
        return conn.recv(100)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0,
                        help="measured seconds per run (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--keyspace", type=int, default=1000)
    _common.add_output_arguments(parser, "ceiling", "ceiling-large")
    return parser.parse_args(argv)


def report(args, cells: dict, context: dict) -> str:
    lines = [f"## How far from the floor: a bare Twisted server beside replicad and Redis "
             f"(bench/ceiling.py){'' if args.section == 'ceiling' else f' [{args.section}]'}",
             "", "Command:", "", "```", _common.command_line(), "```", ""]
    lines += _common.machine_lines()
    lines += args.code.lines()
    lines += [
        f"- Redis: {context['redis']}, `--save '' --appendonly yes --appendfsync always`",
        f"- load: bench/load.c ({context['cc']}), 50 connections (persistent, or one "
        "at a time per request in the one-shot scenario), "
        f"{args.value_bytes}-byte values, a new key per PUT, GETs over "
        f"{args.keyspace:,} keys; median of {args.rounds} rounds of {args.duration:g} s "
        "(targets alternating, order rotated per round)",
        f"- machine speed (bench/machine_speed.py's work, ms; lower is faster): "
        f"{context['speed_start']:.1f} at the start, {context['speed_end']:.1f} at the end",
        "",
        "`/ Redis` and `/ bare` are ratios of rates in the same run; `server CPU µs/op` is "
        "the utime+stime of all the target's processes per completed request "
        "(for R3, the coordinator's and the followers' summed; the coordinator's alone in "
        "brackets).",
        "",
    ]
    for scenario in SCENARIOS:
        ra = cells.get((scenario.key, "Ra"))
        bare = cells.get((scenario.key, "Bt"))
        rows = []
        for key in scenario.targets:
            cell = cells.get((scenario.key, key))
            if cell is None:
                continue
            roles = cell.cpu_us_per_op
            total = sum(v for v in roles.values() if v == v)
            coord = [v for role, v in roles.items() if "coordinator" in role]
            cpu = f"{total:,.0f}" + (f" ({coord[0]:,.0f})" if coord and len(roles) > 1
                                     else "")
            rows.append([LABELS[key], f"{cell.rate:,.0f}",
                         f"{cell.rate / ra.rate:.2f}" if ra else "-",
                         f"{cell.rate / bare.rate:.2f}" if bare else "-",
                         cpu, f"{cell.p50_us / 1000:.2f}",
                         f"{cell.load_share:.0%}",
                         str(cell.errors)])
        lines += [f"### {scenario.title}", ""]
        lines += markdown_table(["server", "ops/s", "/ Redis", "/ bare", "server CPU µs/op",
                                 "p50 ms", "load gen (core)", "errors"], rows)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.code = _common.CodeWatch()
    started = time.perf_counter()
    progress = _common.progress_printer(started)
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        raise SystemExit(f"bench/ceiling.py needs redis-server: {suite.INSTALL_HINT}")
    workdir = tempfile.mkdtemp(prefix="replicad-bench-ceiling-")
    binary, cc = suite.compile_load(workdir)
    context = {"cc": cc, "redis": redis_version(redis_binary), "speed_start": suite.cpu_speed()}
    bench = suite.Suite(args, binary, progress)
    redis = Redis(redis_binary, workdir, "always")
    bares = [BareServer(workdir, "turn"), BareServer(workdir, "twisted")]
    targets: dict[str, suite.Target] = {}
    try:
        redis.start()
        targets["Ra"] = suite.redis_target("Ra", redis)
        for key, server in zip(("Bt", "Bw"), bares, strict=True):
            server.start()
            targets[key] = server.target(key)
        for key in ("R1", "R3"):
            targets[key] = suite.start_cluster(key, workdir, progress)
        for key in ("R1", "R3"):
            suite.settle_cluster(targets[key], progress)
        for key in ("Ra", "Bt", "R1", "R3"):
            bench.preload(targets[key])
        everything = [pid for t in targets.values() for _, pid in t.processes()]
        cpu_seconds(everything)
        for round_ in range(args.rounds):
            for scenario in SCENARIOS:
                present = list(scenario.targets)
                shift = round_ % len(present)
                for key in present[shift:] + present[:shift]:
                    bench.run(scenario, targets[key], round_)
        context["speed_end"] = suite.cpu_speed()
    finally:
        for target in targets.values():
            if target.cluster is not None:
                target.cluster.stop()
        for server in bares:
            server.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    cells = suite.aggregate(bench.runs)
    _common.publish(report(args, cells, context), args.section, args.write, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
