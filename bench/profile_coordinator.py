"""Where a request's time goes (issue #10 item 6): py-spy on the coordinator under load.

A 3-replica LocalCluster (``write_quorum = 1``, the suite's settings) is driven by the
suite's load generator (bench/load.c) with PUT and GET over 50 persistent connections
(--scenarios); while each run is under way, ``py-spy record --format raw --function``
samples the coordinator process (every thread, Python frames only) for --duration
seconds.  The samples are summarised by *own* time (the innermost Python frame of each
sample: the function whose code, or the C call it made, was running) per function and
per category (bench/profile_coordinator.py CATEGORIES: parsing, vector clocks, SQLite, Deferreds,
logging, ...), and by *inclusive* time for the same categories (samples with such a frame
anywhere on the stack).  py-spy leaves out idle samples (the reactor waiting in epoll),
so ``not idle`` = samples / (rate x duration) is the share of the wall time the reactor
thread was on a CPU, runnable, or blocked in another syscall (fdatasync); time in C and
in the kernel (a COMMIT's fdatasync, send(), SQLite's own work) is counted in the Python
function that called it.  The coordinator's user and system CPU time (/proc) are given
beside it, so that waiting (for the disk, or for a CPU on a shared machine) can be told
from work.

``--perf`` samples with Linux ``perf record`` instead (every CPU cycle of the process:
the interpreter, the kernel's syscalls, SQLite, libc), and splits the CPU time per
request by where it ran and by C-level symbol: py-spy sees Python frames only and counts
a call into C (a ``recv``, a COMMIT) with the Python function that made it, which over-
states the syscalls of a request whose CPU is mostly the interpreter's.  Needs ``perf``
(Debian: linux-perf) and ``kernel.perf_event_paranoid`` <= 1, or root.

``--before REV`` first measures the replicad of git revision REV the same way (a clone
at REV with these benchmark files copied in, as ``suite.py --at`` does) and reports the
two side by side.  ``--write`` replaces the section (default ``profile``) of
docs/benchmarks.md and writes the raw numbers to docs/suite/<section>.json; ``--keep``
keeps the raw py-spy files (flamegraph.pl input) and the cluster logs.  About 30 s per
revision with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import _common
from _common import markdown_table
from suite import (
    Scenario,
    Suite,
    compile_load,
    settle_cluster,
    start_cluster,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, every thread, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILE_FILES = ("load.c", "suite.py", "plots.py", "profile_coordinator.py")

SCENARIOS = {
    "put-50": Scenario("put-50", "PUT, 50 connections", "put", "persistent", 50, ("R3",)),
    "get-50": Scenario("get-50", "GET, 50 connections", "get", "persistent", 50, ("R3",)),
    "put-1": Scenario("put-1", "PUT, 1 connection", "put", "persistent", 1, ("R3",)),
    "get-1": Scenario("get-1", "GET, 1 connection", "get", "persistent", 1, ("R3",)),
    # Sent to a follower, which is then the process profiled (it forwards each request).
    "get-50-follower": Scenario("get-50-follower", "GET, 50 connections, sent to a follower",
                                "get", "persistent", 50, ("R3",), via="follower"),
    "put-50-follower": Scenario("put-50-follower", "PUT, 50 connections, sent to a follower",
                                "put", "persistent", 50, ("R3",), via="follower"),
    # A connection per request (connect, request, reply, close), 50 at a time.
    "put-os50": Scenario("put-os50", "PUT, one-shot, 50 concurrent", "put", "oneshot", 50,
                         ("R3",)),
    "get-os50": Scenario("get-os50", "GET, one-shot, 50 concurrent", "get", "oneshot", 50,
                         ("R3",)),
}

# (category, pattern on "function (file)" of a frame), first match wins.  Own time of a
# sample goes to the category of its innermost frame.
CATEGORIES = [
    ("vector clocks (encode/decode/merge)", r"replicad/vclock\.py"),
    ("client protocol: parse/encode lines", r"replicad/wire\.py"),
    ("peer protocol: frames, records", r"replicad/peerwire\.py"),
    ("SQLite (store, group commit)", r"replicad/(store|groupcommit)\.py"),
    ("socket syscalls (send, recv, accept)", r"twisted/internet/(tcp|_newtls)\.py"),
    ("epoll, reactor loop, write buffers", r"twisted/internet/(abstract|epollreactor|"
                                           r"posixbase|base|selectreactor|main)\.py|"
                                           r"callWithLogger|callWithContext|"
                                           r"twisted/python/context\.py"),
    ("logging", r"twisted/logger/|twisted/python/log\.py|/logging/"),
    ("metrics", r"replicad/metrics\.py|prometheus_client/"),
    ("Deferred / coroutine machinery", r"twisted/internet/defer\.py"),
    ("line framing (LineReceiver)", r"twisted/protocols/basic\.py"),
    ("other Twisted", r"twisted/"),
    ("request handling (replica, client protocol)", r"replicad/(replica|client_protocol)\.py"),
    ("election / node state", r"replicad/(node|detector)\.py"),
    ("replication, peer links", r"replicad/(peer|sync)\.py"),
    ("other replicad", r"replicad/"),
    ("Python stdlib / other", r".*"),
]
# Helpers whose own time belongs to their caller's category (untilConcludes wraps the
# socket's send() in tcp.py, and a log file's write() in logging).
PASS_THROUGH = re.compile(r"^untilConcludes \(.*twisted/python/util\.py")
# Categories every sample is inside (the reactor runs everything): no inclusive figure.
NO_INCLUSIVE = {"socket syscalls (send, recv, accept)", "epoll, reactor loop, write buffers",
                "other Twisted", "Python stdlib / other", "other replicad"}
_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def category(frame: str) -> str:
    for name, pattern in _COMPILED:
        if pattern.search(frame):
            return name
    return CATEGORIES[-1][0]


def short_frame(frame: str) -> str:
    """``func (/long/path/replicad/store.py:123)`` -> ``store.py: func``."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    if "replicad/" in path:
        path = "replicad/" + path.rsplit("replicad/", 1)[1]
    path = path.split("/", 1)[1] if path.startswith("python3.") and "/" in path else path
    return f"{path}: {match.group('func')}"


def parse_raw(path: str) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: one ``root;...;leaf count`` per line."""
    stacks = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line:
                continue
            frames, _, count = line.rpartition(" ")
            try:
                stacks.append((frames.split(";"), int(count)))
            except ValueError:
                continue
    return stacks


def summarise(stacks: list[tuple[list[str], int]], top: int) -> dict:
    total = sum(count for _, count in stacks)
    own: dict[str, int] = {}
    own_cat: dict[str, int] = {}
    own_cat_of: dict[str, str] = {}
    incl_cat: dict[str, int] = {}
    incl_fn: dict[str, int] = {}
    for frames, count in stacks:
        leaf = frames[-1]
        name = short_frame(leaf)
        if len(frames) > 1 and PASS_THROUGH.search(leaf):
            name = f"{name} <- {short_frame(frames[-2]).split(': ', 1)[-1]}"
            leaf = frames[-2]
        own[name] = own.get(name, 0) + count
        own_cat_of[name] = category(leaf)
        cat = category(leaf)
        own_cat[cat] = own_cat.get(cat, 0) + count
        for c in {category(f) for f in frames}:
            incl_cat[c] = incl_cat.get(c, 0) + count
        for f in {short_frame(f) for f in frames}:
            incl_fn[f] = incl_fn.get(f, 0) + count
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": total,
        "top_own": [{"frame": f, "samples": n, "category": own_cat_of[f]} for f, n in ranked],
        "own_categories": dict(sorted(own_cat.items(), key=lambda kv: -kv[1])),
        "inclusive_categories": dict(sorted(incl_cat.items(), key=lambda kv: -kv[1])),
        "top_inclusive": [{"frame": f, "samples": n} for f, n in
                          sorted(incl_fn.items(), key=lambda kv: -kv[1])[:top * 2]],
    }


# Measuring ----------------------------------------------------------------------------


# perf report's "dso" (where the sampled instruction was) -> a name for the reader.
DSO_NAMES = (
    (re.compile(r"^libpython|^python3"), "Python interpreter (libpython)"),
    (re.compile(r"^\[kernel"), "kernel (syscalls, TCP, epoll, the disk)"),
    (re.compile(r"^libsqlite3"), "SQLite (libsqlite3)"),
    (re.compile(r"^libc\.|^ld-linux|^libm\."), "libc (malloc, memcpy)"),
    (re.compile(r"^_sqlite3|^_socket|^select|^_bisect|^_heapq|^_json"),
     "Python's C modules (_sqlite3, _socket, ...)"),
)
_PERF_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)(?:\s+\[[.k]\]\s+(\S+))?")


def dso_name(dso: str) -> str:
    for pattern, name in DSO_NAMES:
        if pattern.search(dso):
            return name
    return "other"


def perf_report(raw: str, sort: str) -> list[tuple[float, str, str]]:
    """``perf report --sort <sort>`` of a recording: (percent, dso, symbol or "") rows."""
    done = subprocess.run(["perf", "report", "-i", raw, "--no-children", "--sort", sort,
                           "--stdio", "-q", "-g", "none"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"perf report failed: {done.stderr.strip()[-300:]}")
    rows = []
    for line in done.stdout.splitlines():
        match = _PERF_LINE.match(line)
        if match:
            rows.append((float(match.group(1)), match.group(2), match.group(3) or ""))
    return rows


def summarise_perf(raw: str, top: int) -> dict:
    where: dict[str, float] = {}
    for share, dso, _ in perf_report(raw, "dso"):
        name = dso_name(dso)
        where[name] = where.get(name, 0.0) + share
    symbols = [{"symbol": symbol, "where": dso_name(dso), "share": share}
               for share, dso, symbol in perf_report(raw, "dso,symbol")[:top]]
    return {"samples": None, "where": dict(sorted(where.items(), key=lambda kv: -kv[1])),
            "top_symbols": symbols}


def perf_binary() -> str:
    found = shutil.which("perf")
    if not found:
        raise SystemExit("bench/profile_coordinator.py --perf needs perf "
                         "(Debian: apt-get install linux-perf)")
    return found


def py_spy() -> str:
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(found, os.X_OK):
        raise SystemExit("bench/profile_coordinator.py needs py-spy: .venv/bin/pip install py-spy")
    return found


def measure(args: argparse.Namespace, progress) -> dict:
    workdir = tempfile.mkdtemp(prefix="replicad-bench-profile-")
    binary, cc = compile_load(workdir)
    spy = perf_binary() if args.perf else py_spy()
    target = start_cluster("R3m" if args.write_quorum == "majority" else "R3", workdir,
                           progress)
    results: dict = {"code": args.code.version, "fingerprint": args.code.fingerprint,
                     "scenarios": {}, "cc": cc}
    try:
        settle_cluster(target, progress)
        # Suite.run: load for warm-up + duration; py-spy records inside it, 1 s to spare.
        load_args = argparse.Namespace(**vars(args))
        load_args.duration = args.duration + 1.0
        suite = Suite(load_args, binary, progress)
        if any(SCENARIOS[k].op == "get" for k in args.scenarios):
            suite.preload(target)
        cluster = target.cluster
        assert cluster is not None
        coordinator = target.coordinator
        assert coordinator is not None
        for key in args.scenarios:
            scenario = SCENARIOS[key]
            profiled = (target.follower if scenario.via == "follower" or args.follower
                        else coordinator)
            pid = cluster.pid(profiled)
            assert pid is not None
            raw = os.path.join(workdir, f"{key}.raw")
            if args.perf:
                argv = [spy, "record", "-F", str(args.rate), "-p", str(pid), "-o", raw,
                        "--", "sleep", f"{args.duration:g}"]
            else:
                argv = [spy, "record", "--pid", str(pid), "--duration", f"{args.duration:g}",
                        "--rate", str(args.rate), "--format", "raw", "--function",
                        "--output", raw]
            if args.nonblocking and not args.perf:
                argv.append("--nonblocking")
            spy_done: dict = {}

            def record(argv=argv, spy_done=spy_done) -> None:
                spy_done["proc"] = subprocess.run(argv, capture_output=True, text=True,
                                                  timeout=args.duration + 60)

            # load.c runs warm-up + duration + a margin; py-spy starts after the warm-up.
            timer = threading.Timer(args.warmup, record)
            user0, sys0 = cpu_split(pid)
            timer.start()
            run = suite.run(scenario, target, 0)
            timer.join()
            user1, sys1 = cpu_split(pid)
            cpu0, cpu1 = user0 + sys0, user1 + sys1
            done = spy_done["proc"]
            if done.returncode != 0 or not os.path.exists(raw):
                raise RuntimeError(f"{os.path.basename(spy)} failed ({done.returncode}): "
                                   f"{done.stderr.strip()[-500:]}")
            if args.perf:
                summary = summarise_perf(raw, args.top)
            else:
                summary = summarise(parse_raw(raw), args.top)
            expected = args.rate * args.duration
            summary.update({
                "rate_ops": run.rate, "p50_us": run.p50_us, "p99_us": run.p99_us,
                "errors": run.errors,
                "busy": summary["samples"] / expected if summary["samples"] else None,
                "cpu_us_per_op": (cpu1 - cpu0) / run.completed * 1e6 if run.completed
                else float("nan"),
                "coordinator_cpu_share": (cpu1 - cpu0) / run.wall_s if run.wall_s else 0.0,
                "system_share": (sys1 - sys0) / (cpu1 - cpu0) if cpu1 > cpu0 else 0.0,
                "other_share": run.other_cpu_s / run.wall_s if run.wall_s else 0.0,
                "py_spy": done.stderr.strip().splitlines()[-2:] if done.stderr else [],
            })
            if args.keep:
                summary["raw"] = raw
            results["scenarios"][key] = summary
            if args.perf:
                progress(f"{key}: {run.rate:,.0f} ops/s under perf, "
                         f"{summary['cpu_us_per_op']:.1f} µs of CPU per request, on CPU "
                         f"{summary['coordinator_cpu_share']:.0%}")
            else:
                progress(f"{key}: {run.rate:,.0f} ops/s under py-spy, {summary['samples']} "
                         f"samples (not idle {summary['busy']:.0%} of the time, on CPU "
                         f"{summary['coordinator_cpu_share']:.0%})")
    finally:
        target.cluster.stop()
        if args.keep:
            progress(f"raw py-spy files and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def measure_at(args: argparse.Namespace, rev: str, progress) -> dict:
    """This script in a clone at rev (its replicad), --json into a temporary file."""
    clone = tempfile.mkdtemp(prefix="replicad-bench-profile-at-")
    out = os.path.join(clone, "result.json")
    try:
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", _common.ROOT,
                        clone], check=True)
        subprocess.run(["git", "-C", clone, "checkout", "-q", "--detach", rev], check=True)
        for name in PROFILE_FILES:
            shutil.copy2(os.path.join(HERE, name), os.path.join(clone, "bench", name))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [clone, env.get("PYTHONPATH")]))
        command = [sys.executable, os.path.join(clone, "bench", "profile_coordinator.py"),
                   "--scenarios", ",".join(args.scenarios), "--duration",
                   f"{args.duration:g}", "--warmup", f"{args.warmup:g}", "--rate",
                   str(args.rate), "--top", str(args.top), "--json", out]
        if args.nonblocking:
            command.append("--nonblocking")
        if args.perf:
            command.append("--perf")
        if args.keep:
            command.append("--keep")
        progress(f"measuring {rev} in {clone}")
        subprocess.run(command, env=env, cwd=clone, check=True)
        with open(out, encoding="utf-8") as handle:
            return json.load(handle)
    finally:
        if not args.keep:
            shutil.rmtree(clone, ignore_errors=True)


# Report -------------------------------------------------------------------------------


def pct(n: float, total: float) -> str:
    return "-" if not total else f"{100 * n / total:.1f}%"


def report_head(args: argparse.Namespace, now_: dict, before: dict | None, elapsed: float,
                heading: str, sampling: str, legend: str) -> list[str]:
    """The lines every report opens with: what ran, where, how it was sampled."""
    title = "" if args.section == "profile" else f" [{args.section}]"
    lines = [f"## Where a request's time goes: {heading}{title}", "",
             "Command:", "", "```", _common.command_line(), "```", ""]
    lines += _common.machine_lines()
    lines += args.code.lines()
    lines += [
        f"- cluster: 3 replicas, write_quorum = {args.write_quorum}, default timers (as the "
        f"suite's); load: bench/load.c ({now_.get('cc', 'cc')}), {args.value_bytes}-byte "
        f"values, a new key per PUT, GETs over {args.keyspace:,} keys",
        f"- {sampling}",
        "- before: " + (before["code"] if before else "not measured")
        + f"; now: {now_['code']}",
        f"- total run time: {elapsed:.0f} s",
        "",
        legend,
        "",
    ]
    return lines


def names_in_order(runs: list[tuple[str, dict | None]], key: str, field: str) -> list[str]:
    """The names of ``field`` (a dict) in scenario ``key`` over the runs, each once, in
    the order they first appear (the rows of a before/now table)."""
    names: list[str] = []
    for _, data in runs:
        s = data["scenarios"].get(key)
        if s:
            names += [name for name in s[field] if name not in names]
    return names


def report_perf(args: argparse.Namespace, now_: dict, before: dict | None,
                elapsed: float) -> str:
    """The --perf report: CPU per request, split by where it ran, and the top symbols."""
    who = "a follower" if args.follower else "the coordinator"
    lines = report_head(
        args, now_, before, elapsed,
        f"perf on {who} (bench/profile_coordinator.py --perf)",
        f"perf record -F {args.rate} -p PID for {args.duration:g} s per scenario after "
        f"{args.warmup:g} s of load: CPU samples of every thread, user and kernel",
        "`CPU µs/op` = the process's utime+stime (/proc) per completed request; each "
        "`µs/op` below is that times the share of perf's samples taken there (where the "
        "sampled instruction was). Unlike py-spy's, these are shares of CPU time, not of "
        "wall time: waiting for the disk or for a CPU is not in them.")
    runs = [("before", before), ("now", now_)] if before else [("now", now_)]
    for key in args.scenarios:
        lines += [f"### {SCENARIOS[key].title}", ""]
        places = names_in_order(runs, key, "where")
        header = ["", *(label for label, _ in runs)]
        rows = [["ops/s (under perf)"], ["CPU µs/op"], ["of it in the kernel (stime)"]]
        rows += [[place] for place in places]
        for _, data in runs:
            s = data["scenarios"].get(key) or {}
            cpu = s.get("cpu_us_per_op", float("nan"))
            rows[0].append(f"{s.get('rate_ops', 0):,.0f}")
            rows[1].append(f"{cpu:.1f}")
            rows[2].append(f"{s.get('system_share', float('nan')):.0%}")
            for row, place in zip(rows[3:], places, strict=True):
                share = s.get("where", {}).get(place, 0.0)
                row.append(f"{share:.1f} % = {cpu * share / 100:.1f} µs")
        lines += markdown_table(header, rows)
        lines.append("")
        for label, data in runs:
            s = data["scenarios"].get(key)
            if not s:
                continue
            lines += [f"Top {args.top} symbols, {label}:", ""]
            lines += markdown_table(
                ["symbol", "where", "share"],
                [[f"`{t['symbol']}`", t["where"], f"{t['share']:.1f} %"]
                 for t in s["top_symbols"][:args.top]])
            lines.append("")
    return "\n".join(lines)


def report(args: argparse.Namespace, now_: dict, before: dict | None, elapsed: float) -> str:
    if args.perf:
        return report_perf(args, now_, before, elapsed)
    lines = report_head(
        args, now_, before, elapsed, "py-spy on the coordinator (bench/profile_coordinator.py)",
        f"py-spy record --rate {args.rate} --function --format raw"
        + (" --nonblocking" if args.nonblocking else "")
        + f", {args.duration:g} s per scenario after {args.warmup:g} s of load; Python "
        "frames only (time in C is counted in the Python function that called it)",
        "`coordinator CPU µs/op` = its utime+stime per completed request during the run "
        "(py-spy's pauses slow it a little), `of it in the kernel` = the stime share "
        "(syscalls: send, recv, epoll, fdatasync's CPU part), `on CPU` = utime+stime over "
        "the run's wall time. `not idle` = py-spy's samples / (rate x duration): the "
        "share of the wall time the reactor thread was *not* waiting in epoll, i.e. on a "
        "CPU, runnable but waiting for one (a shared machine), or blocked in a syscall "
        "(fdatasync). The percentages below are of those samples: shares of the "
        "reactor's wall time, not of its CPU time; where `not idle` is well above `on "
        "CPU` the difference is waiting (disk or scheduler), and it is counted in the "
        "function that waited (e.g. a COMMIT's fdatasync in Store.commit_group).")
    runs = [("before", before), ("now", now_)] if before else [("now", now_)]
    for key in args.scenarios:
        title_ = SCENARIOS[key].title
        lines += [f"### {title_}", ""]
        rows = []
        for label, data in runs:
            s = data["scenarios"].get(key)
            if s is None:
                continue
            rows.append([label, f"{s['rate_ops']:,.0f}", f"{s['cpu_us_per_op']:,.0f}",
                         f"{s.get('system_share', float('nan')):.0%}",
                         f"{s['coordinator_cpu_share']:.0%}", f"{s['busy']:.0%}",
                         s["samples"], s["errors"], f"{s['other_share']:.2f}"])
        lines += markdown_table(["code", "ops/s (under py-spy)", "coordinator CPU µs/op",
                                 "of it in the kernel", "on CPU", "not idle", "samples",
                                 "errors", "other (cores)"], rows)
        lines.append("")
        cats = names_in_order(runs, key, "own_categories")
        header = ["category"]
        for label, _ in runs:
            header += [f"own {label}", f"inclusive {label}"]
        crow = []
        for c in cats:
            row = [c]
            for _, data in runs:
                s = data["scenarios"].get(key) or {}
                total = s.get("samples", 0)
                row += [pct(s.get("own_categories", {}).get(c, 0), total),
                        "-" if c in NO_INCLUSIVE
                        else pct(s.get("inclusive_categories", {}).get(c, 0), total)]
            crow.append(row)
        lines += ["By category (own = the innermost frame is there; inclusive = such a "
                  "frame anywhere on the stack):", ""]
        lines += markdown_table(header, crow)
        lines.append("")
        for label, data in runs:
            s = data["scenarios"].get(key)
            if not s:
                continue
            total = s["samples"]
            lines += [f"Top {args.top} functions by own time, {label}:", ""]
            lines += markdown_table(
                ["function", "own", "category"],
                [[f"`{t['frame']}`", pct(t["samples"], total), t["category"]]
                 for t in s["top_own"][:args.top]])
            lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="put-50,get-50",
                        help=f"comma-separated, of {', '.join(SCENARIOS)} "
                             "(default put-50,get-50)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds py-spy records per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before py-spy starts (default 1)")
    parser.add_argument("--rate", type=int, default=None,
                        help="samples/s (py-spy: 100; perf: 999)")
    parser.add_argument("--perf", action="store_true",
                        help="sample with Linux perf (CPU time by where it ran, C symbols) "
                             "instead of py-spy (Python frames)")
    parser.add_argument("--follower", action="store_true",
                        help="profile a follower (it applies the pushes) instead of the "
                             "coordinator, for every scenario")
    parser.add_argument("--write-quorum", choices=("1", "majority"), default="1",
                        help="the cluster's write_quorum (the suite's R3 or R3m)")
    parser.add_argument("--nonblocking", action="store_true",
                        help="py-spy --nonblocking (does not pause the coordinator)")
    parser.add_argument("--top", type=int, default=12,
                        help="functions listed per scenario (default 12)")
    parser.add_argument("--before", metavar="REV",
                        help="also measure git revision REV (e.g. 3566276) and compare")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--keyspace", type=int, default=1000)
    _common.add_output_arguments(parser, "profile", "profile-before")
    _common.add_keep_argument(parser)
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not args.scenarios or any(s not in SCENARIOS for s in args.scenarios):
        parser.error(f"--scenarios takes {', '.join(SCENARIOS)}")
    if args.rate is None:
        args.rate = 999 if args.perf else 100
    # What Suite.run reads from its arguments.
    args.rounds = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.code = _common.CodeWatch()
    started = time.perf_counter()
    progress = _common.progress_printer(started)
    before = measure_at(args, args.before, progress) if args.before else None
    now_ = measure(args, progress)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(now_, handle, indent=1)
            handle.write("\n")
    text = report(args, now_, before, time.perf_counter() - started)
    if args.write:
        path = os.path.join(_common.ROOT, "docs", "suite", f"{args.section}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"before": before, "now": now_}, handle, indent=1)
            handle.write("\n")
        progress(f"results: {path}")
    print(text)
    if args.write:
        _common.write_section(args.section, text, _common.RESULTS_PATH)
        progress(f"wrote the {args.section} section of {_common.RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
