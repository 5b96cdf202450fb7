"""What a write group costs the coordinator, and so what a one-shot PUT costs (issue #10).

The one-shot PUT target (10,000/s) and PUT / Redis stand on the coordinator's CPU per
write, and that depends on how many writes share a group commit (one COMMIT, one
fdatasync): a one-shot client holds fewer writes in flight than a persistent one, so
its groups are smaller.  This measures both halves:

1. In process: a one-row SQLite COMMIT on this disk as the store makes it (WAL,
   ``synchronous=FULL``: an fdatasync) and without the fsync (``NORMAL``): wall time
   and CPU time (user + system: the kernel's part of an fdatasync is CPU too) per
   commit, the median of --rounds rounds of --commits commits.
2. On a real cluster (--replicas, default 1, ``write_quorum = 1``), driven by
   bench/suite.py's load generator (bench/load.c): PUTs over 1, 2, 5, 10, 20 and 50
   persistent connections, then one-shot PUT and PING over 50 concurrent slots (a
   connection per request).  Per run: the rate, the coordinator's CPU microseconds per
   request (/proc), and the writes per group commit (``replicad_group_commit_writes``
   / ``replicad_group_commits`` from the admin port).  A least-squares fit of the
   persistent runs, CPU per PUT = per write + per group / writes per group, splits what
   a write costs from what its group costs.

    .venv/bin/python bench/group_cost.py [--replicas 1] [--duration 3] [--write]

Output: markdown on stdout (progress on stderr); --write replaces the section
``group-cost`` of docs/benchmarks.md.  About 40 s with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import _common
from _common import markdown_table
from suite import MAX_CONNECTIONS, compile_load

from replicad.cluster import LocalCluster, find_free_base_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
PERSISTENT_CONNECTIONS = (1, 2, 5, 10, 20, 50)
ONE_SHOT_SLOTS = 50


def commit_cost(directory: str, synchronous: str, commits: int) -> dict[str, float]:
    """Microseconds per one-row COMMIT: wall, and CPU (user + system)."""
    path = os.path.join(directory, f"commit-{synchronous.lower()}.sqlite3")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(commits):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"k{i}", "x" * 100))
        db.execute("COMMIT")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    db.close()
    return {"wall_us": wall / commits * 1e6,
            "cpu_us": (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            / commits * 1e6,
            "sys_us": (after.ru_stime - before.ru_stime) / commits * 1e6}


def in_process(args, workdir: str, progress) -> dict[str, dict[str, float]]:
    out = {}
    for synchronous in ("FULL", "NORMAL"):
        rounds = [commit_cost(workdir, synchronous, args.commits) for _ in range(args.rounds)]
        out[synchronous] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        progress(f"COMMIT, synchronous={synchronous}: {out[synchronous]['wall_us']:.0f} µs "
                 f"wall, {out[synchronous]['cpu_us']:.0f} µs CPU")
    return out


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def group_counters(url: str) -> tuple[float, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}_total(?:{{[^}}]*}})? (\S+)", text,
                                                 re.M))

    return total("replicad_group_commits"), total("replicad_group_commit_writes")


def end_to_end(args, binary: str, workdir: str, progress) -> list[dict]:
    cluster = LocalCluster(args.replicas, find_free_base_port(args.replicas),
                           os.path.join(workdir, "cluster"), admin=True,
                           overrides={"write_quorum": "1",
                                      "max_connections": str(MAX_CONNECTIONS)})
    cluster.start()
    runs = []
    try:
        cluster.wait_ready(timeout_s=30)
        leader = cluster.wait_until(cluster.coordinator, 30, what="a coordinator")
        address = cluster.client_address(leader)
        pid, metrics = cluster.pid(leader), cluster.admin_url(leader, "/metrics")
        plan = ([("put", "persistent", n) for n in PERSISTENT_CONNECTIONS]
                + [("put", "oneshot", ONE_SHOT_SLOTS), ("ping", "oneshot", ONE_SHOT_SLOTS)])
        for op, mode, conns in plan:
            groups0, writes0 = group_counters(metrics)
            cpu0 = cpu_s(pid)
            done = subprocess.run(
                [binary, "--host", address.host, "--port", str(address.port), "--op", op,
                 "--mode", mode, "--conns", str(conns), "--duration", str(args.duration),
                 "--warmup", "0.5", "--value-bytes", "100"],
                capture_output=True, text=True, timeout=args.duration + 60)
            result = json.loads(done.stdout)
            cpu = cpu_s(pid) - cpu0
            groups1, writes1 = group_counters(metrics)
            groups, writes = groups1 - groups0, writes1 - writes0
            run = {"op": op, "mode": mode, "conns": conns, "rate": result["rate"],
                   "errors": result["errors"], "completed": result["completed"],
                   "cpu_us": cpu / max(result["completed"], 1) * 1e6,
                   "per_group": writes / groups if groups else 0.0,
                   "load_cpu": (result["cpu_user_s"] + result["cpu_sys_s"]) / result["wall_s"]}
            runs.append(run)
            progress(f"{op} {mode} {conns}: {run['rate']:,.0f}/s, {run['cpu_us']:.0f} µs "
                     f"CPU each, {run['per_group']:.1f} writes per group")
    finally:
        cluster.stop()
    return runs


def fit(runs: list[dict]) -> tuple[float, float] | None:
    """Least squares of cpu_us = write + group / per_group over the persistent PUT runs."""
    points = [(1 / r["per_group"], r["cpu_us"]) for r in runs
              if r["mode"] == "persistent" and r["per_group"] > 0]
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    group = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - group * mx, group


def report(args, commits, runs, context) -> str:
    lines = [f"Section `{args.section}`: `{args.invoked_as}` on {args.code.version} "
             f"({context['elapsed']:.0f} s; load average {context['loadavg']} at the start)."]
    lines += args.code.lines() + _common.machine_lines()
    lines += ["", "One-row COMMIT in process (WAL), median of "
              f"{args.rounds} rounds of {args.commits:,}:", ""]
    lines += markdown_table(
        ["synchronous", "wall µs", "CPU µs", "of it in the kernel"],
        [[name, f"{c['wall_us']:.0f}", f"{c['cpu_us']:.0f}", f"{c['sys_us']:.0f}"]
         for name, c in commits.items()])
    lines += ["", f"Real cluster ({args.replicas} replica(s), write_quorum = 1), the "
              f"coordinator's CPU per request, {args.duration:g} s runs:", ""]
    lines += markdown_table(
        ["request", "connections", "rate /s", "coordinator CPU µs each",
         "writes per group", "load generator CPU"],
        [[r["op"].upper() + (" one-shot" if r["mode"] == "oneshot" else ""), r["conns"],
          f"{r['rate']:,.0f}", f"{r['cpu_us']:.0f}",
          f"{r['per_group']:.1f}" if r["op"] == "put" else "",
          f"{r['load_cpu']:.2f}"] for r in runs])
    fitted = fit(runs)
    if fitted is not None:
        write, group = fitted
        lines += ["", f"Fit of the persistent runs: **{write:.0f} µs per PUT (its line "
                  f"read, its write and its reply) plus {group:.0f} µs per group**, of which "
                  f"the COMMIT's CPU measured above is {commits['FULL']['cpu_us']:.0f} (the "
                  "rest: the group's turn of the event loop, and waking from the fsync's "
                  "and the poll's sleeps)."]
        one_shot = next((r for r in runs if r["mode"] == "oneshot" and r["op"] == "put"),
                        None)
        ping = next((r for r in runs if r["mode"] == "oneshot" and r["op"] == "ping"), None)
        if one_shot and ping and one_shot["per_group"] > 0:
            predicted = ping["cpu_us"] + write + group / one_shot["per_group"]
            lines += [f"A one-shot PUT: its connection (a one-shot PING, {ping['cpu_us']:.0f} "
                      f"µs) plus a PUT in a group of {one_shot['per_group']:.1f} predicts "
                      f"{predicted:.0f} µs (a line read and a reply counted twice); measured "
                      f"{one_shot['cpu_us']:.0f}.  At 10,000/s the coordinator has 100 µs per "
                      "request, with a core to itself."]
    errors = sum(r["errors"] for r in runs)
    if errors:
        lines += ["", f"**{errors} requests failed**: the figures are not trustworthy."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0,
                        help="measured seconds per run (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds (default 5)")
    parser.add_argument("--commits", type=int, default=1000,
                        help="COMMITs per in-process round (default 1000)")
    _common.add_output_arguments(parser, "group-cost", "group-cost-r3")
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.duration <= 0 or args.rounds < 1 or args.commits < 1:
        parser.error("--replicas, --duration, --rounds and --commits must be positive")
    args.invoked_as = _common.command_line()
    args.code = _common.CodeWatch()
    started = time.monotonic()
    progress = _common.progress_printer(started)
    context = {"loadavg": " ".join(open("/proc/loadavg").read().split()[:3])}
    workdir = tempfile.mkdtemp(prefix="replicad-bench-group-cost-")
    try:
        binary, _ = compile_load(workdir)
        commits = in_process(args, workdir, progress)
        runs = end_to_end(args, binary, workdir, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    context["elapsed"] = time.monotonic() - started
    _common.publish(report(args, commits, runs, context), args.section, args.write, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
