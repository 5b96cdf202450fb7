"""What EXCLUSIVE locking or the hot-record dict buys a GET (issue #10 item 3), measured.

Issue #10 asks to "measure what an in-memory index of the hot keys or
``locking_mode=EXCLUSIVE`` buys before adding either".  This measured both at 8eed8f3;
the dict was added (replicad.store, "Hot records"), EXCLUSIVE was not.  The variants
live in bench/variants/sitecustomize.py as subclasses of replicad.store.Store (what each
does, and what it breaks, is written there): ``exclusive`` (the shipped store plus
EXCLUSIVE) and ``nohot`` (the shipped store without its dict, every GET a SELECT), and
are measured against the store as shipped (``baseline``) at two levels:

1. In process, where a difference of a microsecond is visible: three stores on
   temporary files with the same content (the suite's 1,000 hot keys with 100-byte
   values, plus cold keys up to --keys), one per variant.  Timed per call: ``Store.get``
   of a hot key, and the whole fast path of a GET that does not touch the network, with
   the real functions (``wire.decode_line`` + ``wire.parse_request`` +
   ``Replica.answer_now``, which reads the store and builds the Reply and its meta with
   ``Replica._read``/``_meta``, + ``Reply.encode``) on a Replica object that is never
   started (its node is a stand-in that says it serves), for load.c's ``GET k`` (no
   meta) and for a library client's line with a session context (a reply with meta).
   Rounds interleave the variants (the order rotated); figures are medians of rounds.
   Every variant's replies must equal the baseline's byte for byte.
2. End to end: one real 3-replica cluster (``write_quorum = 1``) per variant, all
   running throughout, driven by bench/suite.py's load generator (GET with 50
   persistent connections and with 1); each round runs every scenario on every variant
   in turn, the order rotated.  The variant reaches the replica processes through the
   environment (LocalCluster passes it on): bench/variants on PYTHONPATH and
   REPLICAD_BENCH_VARIANT.  The script stops unless every replica logged its variant
   (and the baseline none) and only the EXCLUSIVE databases refuse another connection.

Output: markdown on stdout (progress on stderr).  --write replaces the section
"read-path" (--section) of docs/benchmarks.md and writes docs/suite/<section>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import types
from pathlib import Path

import _common
from _common import markdown_table
from suite import (
    CLIENT_BOUND,
    Scenario,
    Suite,
    Target,
    aggregate,
    compile_load,
    cpu_text,
    fmt_ms,
    fmt_rate,
    median,
    settle_cluster,
    start_cluster,
)
from throughput import cpu_seconds, log_findings, log_offsets
from twisted.internet import reactor

import replicad.store
from replicad import wire
from replicad.config import default_config
from replicad.datadir import DB_FILENAME
from replicad.identity import new_cluster_id
from replicad.replica import Replica
from replicad.store import Store

now = time.perf_counter
HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS_DIR = os.path.join(HERE, "variants")
HOT_KEYS = 1000           # the suite's keyspace: the keys its GETs read
VALUE_BYTES = 100
WRITE_BATCH = 10_000      # writes per commit while filling the in-process stores
MARK = "read-path bench variant "
QUICK = {"rounds": 1, "duration": 0.5, "warmup": 0.2, "micro_rounds": 3, "micro_calls": 5000}
FULL = {"rounds": 3, "duration": 2.0, "warmup": 0.5, "micro_rounds": 9, "micro_calls": 20000}
CALLS = {
    "get": "`Store.get` of a hot key",
    "plain": "GET fast path, load.c's line `GET k` (reply without meta)",
    "context": "GET fast path, a library client's line with a session context "
               "(reply with meta)",
}
SCENARIOS = [Scenario("get-50", "GET, 50 connections", "get", "persistent", 50, ()),
             Scenario("get-1", "GET, 1 connection", "get", "persistent", 1, ())]


def _load_variants() -> types.ModuleType:
    """bench/variants/sitecustomize.py under another name, so that it patches nothing."""
    spec = importlib.util.spec_from_file_location(
        "read_path_variants", os.path.join(VARIANTS_DIR, "sitecustomize.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


variants = _load_variants()
STORES = {"baseline": Store, **variants.VARIANTS}
VARIANTS = tuple(STORES)


def key_name(n: int, prefix: str = "g") -> str:
    """load.c's key: the prefix and n on 9 digits (hot keys g..., cold keys c...)."""
    return f"{prefix}{n:09d}"


def value_text() -> str:
    return ("0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:VALUE_BYTES]


def rotated(items: tuple, round_: int) -> tuple:
    shift = round_ % len(items)
    return items[shift:] + items[:shift]


# In process ---------------------------------------------------------------------------------


def fill_store(cls: type[Store], path: str, keys: int, cluster_id: str) -> Store:
    """The same content in every store: the hot keys, then the cold ones, as writes."""
    store = cls(path)
    store.bind_cluster(cluster_id)
    names = [key_name(n) for n in range(HOT_KEYS)]
    names += [key_name(n, "c") for n in range(keys - HOT_KEYS)]
    value = value_text()
    for start in range(0, len(names), WRITE_BATCH):
        store.begin_group()
        for key in names[start:start + WRITE_BATCH]:
            store.write(1, key, value)
        store.commit_group()
    return store


def coordinator_of(store: Store, workdir: str) -> Replica:
    """A Replica that is never started, holding store, whose node says it serves."""
    replica = Replica(default_config(3), 1, workdir, reactor)
    replica.store = store
    replica.node = types.SimpleNamespace(serving_as=1, coordinator=1, epoch=1)
    return replica


def fast_path(replica: Replica):
    """What ClientProtocol.lineReceived does for a GET answered at once, but the I/O."""
    limits = replica.config.limits

    def serve(raw: bytes) -> bytes:
        request = wire.parse_request(wire.decode_line(raw), limits)
        return replica.answer_now(request).encode()

    return serve


def per_call_us(call, items: list, calls: int) -> float:
    batch = list(itertools.islice(itertools.cycle(items), calls))
    started = now()
    for item in batch:
        call(item)
    return (now() - started) / calls * 1e6


def refused(path: str, timeout_s: float = 0.0) -> float | None:
    """Seconds until a second, read-only connection (what Store's exports and
    replicad-backup open) was refused the database ("database is locked"), after the
    busy timeout; None if it could read it."""
    started = now()
    reader = sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True, timeout=timeout_s,
                             isolation_level=None)
    try:
        reader.execute("SELECT count(*) FROM kv").fetchone()
        return None
    except sqlite3.OperationalError as e:
        if "locked" not in str(e):
            raise
        return now() - started
    finally:
        reader.close()


def in_process(args, workdir: str, progress) -> dict:
    """µs per call of each variant, per round; what a second connection meets."""
    cluster_id = new_cluster_id()
    stores: dict[str, Store] = {}
    try:
        for v in VARIANTS:
            stores[v] = fill_store(STORES[v], os.path.join(workdir, f"{v}.sqlite"), args.keys,
                                   cluster_id)
        serve = {v: fast_path(coordinator_of(s, workdir)) for v, s in stores.items()}
        hot = [key_name(n) for n in range(HOT_KEYS)]
        token = wire.SessionContext(stores["baseline"].clock, stores["baseline"].clock,
                                    1).encode()
        lines = {"plain": [f"GET {k}\r".encode() for k in hot],
                 "context": [f"{token} GET {k}\r".encode() for k in hot]}
        expected = {kind: [serve["baseline"](raw) for raw in lines[kind]] for kind in lines}
        expected["get"] = [stores["baseline"].get(k) for k in hot]
        for v in VARIANTS:    # also fills the hot-record dict, as a first pass would
            got = {kind: [serve[v](raw) for raw in lines[kind]] for kind in lines}
            got["get"] = [stores[v].get(k) for k in hot]
            if got != expected:
                raise RuntimeError(f"variant {v} answers differently from the baseline")
        calls = {"get": lambda v: (stores[v].get, hot),
                 "plain": lambda v: (serve[v], lines["plain"]),
                 "context": lambda v: (serve[v], lines["context"])}
        rounds: dict[str, dict[str, list[float]]] = {c: {v: [] for v in VARIANTS}
                                                     for c in calls}
        for round_ in range(args.micro_rounds):
            for v in rotated(VARIANTS, round_):
                for name, pick in calls.items():
                    rounds[name][v].append(per_call_us(*pick(v), args.micro_calls))
            progress(f"in process, round {round_ + 1}: " + ", ".join(
                f"{v} get {rounds['get'][v][-1]:.2f} µs" for v in VARIANTS))
        second = {}
        for v in VARIANTS:    # sqlite3's default busy timeout, as Store._export has it
            waited = refused(os.path.join(workdir, f"{v}.sqlite"), 5.0)
            second[v] = ("readable" if waited is None
                         else f"refused (\"database is locked\") after {waited:.1f} s")
        progress("a second connection: " + "; ".join(f"{v} {t}" for v, t in second.items()))
    finally:
        for store in stores.values():
            store.close()
    return {"rounds": rounds, "second_connection": second,
            "medians": {c: {v: median(x) for v, x in by.items()} for c, by in rounds.items()}}


# End to end ---------------------------------------------------------------------------------


@contextlib.contextmanager
def variant_environment(variant: str):
    """os.environ as the replicas of this variant must inherit it, for the block."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [VARIANTS_DIR,
                                                             saved.get("PYTHONPATH")]))
    os.environ.pop(variants.ENV, None)
    if variant != "baseline":
        os.environ[variants.ENV] = variant
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_variant(variant: str, workdir: str, progress) -> Target:
    with variant_environment(variant):
        target = start_cluster("R3", os.path.join(workdir, variant), progress)
    target.key, target.label = variant, f"3 replicas wq=1, {variant}"
    return target


def variant_lines(target: Target, i: int) -> list[str]:
    with open(target.cluster.log_path(i), encoding="utf-8", errors="replace") as handle:
        return [line.split(MARK, 1)[1].strip() for line in handle if MARK in line]


def check_started(target: Target) -> str:
    """Stop unless every replica of the cluster runs its variant, and only that."""
    cluster, variant = target.cluster, target.key
    for i in cluster.ids:
        named = {line.split(":", 1)[0] for line in variant_lines(target, i)}
        if named != ({variant} - {"baseline"}):
            raise RuntimeError(f"{target.label}: replica {i} logged the variants "
                               f"{sorted(named)} (see {cluster.log_path(i)})")
        locked = refused(os.path.join(cluster.replica_dir(i), DB_FILENAME)) is not None
        if locked != (variant == "exclusive"):
            raise RuntimeError(f"{target.label}: another connection is "
                               f"{'' if locked else 'not '}refused replica {i}'s database")
    logged = "no variant line" if variant == "baseline" else f"the `{variant}` line"
    other = "is refused" if variant == "exclusive" else "can read"
    return (f"{variant}: every replica logged {logged} when it opened its store, and "
            f"another connection {other} its database")


def end_to_end(args, workdir: str, progress) -> dict:
    binary, cc = compile_load(workdir)
    suite = Suite(args, binary, progress)
    targets: dict[str, Target] = {}
    checks, findings, pulls = [], [], []
    try:
        for variant in VARIANTS:
            targets[variant] = start_variant(variant, workdir, progress)
        for target in targets.values():
            settle_cluster(target, progress)
            suite.preload(target)
            if args.keys > HOT_KEYS:
                cold = args.keys - HOT_KEYS
                result = suite.execute(suite.command(
                    target, target.addresses["coordinator"], op="put", conns=1, pipeline=16,
                    duration=0, max_ops=cold, keyspace=cold, prefix="c"), 600)
                if result["errors"] or result["completed"] != cold:
                    raise RuntimeError(f"preloading {cold} cold keys into {target.label} "
                                       f"failed: {result['error_sample']}")
            checks.append(check_started(target))
        progress(f"{len(targets)} clusters settled, preloaded ({args.keys:,} keys) and checked")
        offsets = {v: log_offsets(t.cluster) for v, t in targets.items()}
        everything = [pid for t in targets.values() for _, pid in t.processes()]
        idle0, t0 = cpu_seconds(everything), now()
        time.sleep(1.0)
        idle_share = (cpu_seconds(everything) - idle0) / (now() - t0)
        for round_ in range(args.rounds):
            for scenario in SCENARIOS:
                for variant in rotated(VARIANTS, round_):
                    suite.run(scenario, targets[variant], round_)
        for variant, target in targets.items():
            target.cluster.check_alive()
            found, pulled = log_findings(target.cluster, target.label, offsets[variant])
            findings += found
            pulls += pulled
    except BaseException:
        progress(f"failed; logs kept in {workdir}")
        raise
    finally:
        for target in targets.values():
            target.cluster.stop()
    return {"cc": cc, "runs": suite.runs, "cells": aggregate(suite.runs), "checks": checks,
            "findings": findings, "pulls": pulls, "idle_share": idle_share}


# Report -------------------------------------------------------------------------------------


def coordinator_us(cell) -> float:
    return next((v for role, v in cell.cpu_us_per_op.items() if "coordinator" in role),
                float("nan"))


def versus(variant: str, value: float, base: float, text: str) -> str:
    """``text (0.93x)``: a variant beside the baseline (the baseline: text alone)."""
    if variant == "baseline" or not (value == value and base == base and base > 0):
        return text
    return f"{text} ({value / base:.2f}x)"


def report(args, micro: dict, e2e: dict, context: dict) -> str:
    rounds = f"median of {args.rounds} rounds" if args.rounds > 1 else "1 round"
    lines = ["## Read path: what EXCLUSIVE locking or the hot-record dict buys a GET "
             "(bench/read_path.py)", "", "Command:", "", "```", args.invoked_as, "```", ""]
    lines += _common.machine_lines() + args.code.lines()
    lines += [
        "- variants (bench/variants/sitecustomize.py, subclasses of replicad.store.Store; "
        "nothing of them is in replicad/): `baseline` = the store as shipped (WAL, "
        "synchronous=FULL, the dict of hot records in front of `Store.get`); `exclusive` = "
        "the same plus `PRAGMA locking_mode=EXCLUSIVE` set before the WAL is first used; "
        "`nohot` = the store without the dict (every `Store.get` a SELECT)",
        f"- data: {HOT_KEYS:,} hot keys (the GETs read them in turn, as load.c does) with "
        f"{VALUE_BYTES}-byte values, {args.keys:,} keys in all; the dict holds up to "
        f"{replicad.store.HOT_RECORDS:,} records, so every hot GET hits it: its best case",
        "- in process: the fast path is `wire.decode_line` + `wire.parse_request` + "
        "`Replica.answer_now` (the store read, the Reply and its meta, the metrics hook) + "
        "`Reply.encode`, on a Replica that is never started; "
        f"{args.micro_calls:,} calls per variant and round, median of {args.micro_rounds} "
        "rounds, the variants interleaved; every variant's replies equal to the baseline's "
        "byte for byte",
        f"- end to end: one LocalCluster (real twistd processes, 3 replicas, write_quorum "
        f"1) per variant, all running throughout; bench/load.c ({e2e['cc']}), "
        f"{args.warmup:g} s warm-up + {args.duration:g} s measured per run, {rounds}, the "
        "variants alternating",
        f"- machine load: load average {context['loadavg']} at the start, "
        f"{context['loadavg_end']} at the end; idle clusters used {e2e['idle_share']:.1%} "
        f"of a core; total run time {context['elapsed']:.0f} s",
        ""]

    cells, med = e2e["cells"], micro["medians"]
    lines += ["### Summary", "",
              "In process: µs per call. End to end: ops/s, latency in ms, the coordinator's "
              "CPU µs per GET. (Nx) = the variant / the baseline.", ""]
    table = [[CALLS[c] + ", µs"] + [versus(v, med[c][v], med[c]["baseline"],
                                           f"{med[c][v]:.2f}") for v in VARIANTS]
             for c in CALLS]
    for sc in SCENARIOS:
        base = cells.get((sc.key, "baseline"))
        for name, get, fmt in (("ops/s", lambda c: c.rate, fmt_rate),
                               ("p50 ms", lambda c: c.p50_us, fmt_ms),
                               ("coordinator CPU µs/GET", coordinator_us, "{:,.0f}".format)):
            row = [f"{sc.title}: {name}"]
            for v in VARIANTS:
                cell = cells.get((sc.key, v))
                row.append("-" if cell is None or base is None
                           else versus(v, get(cell), get(base), fmt(get(cell))))
            table.append(row)
    lines += markdown_table(["", *VARIANTS], table)
    base50 = cells.get(("get-50", "baseline"))
    if base50 is not None:
        share = med["get"]["baseline"] / coordinator_us(base50)
        lines += ["", f"`Store.get` takes {med['get']['baseline']:.2f} µs, "
                  f"{share:.1%} of the {coordinator_us(base50):,.0f} µs of coordinator CPU a "
                  "GET costs with 50 connections: the most a faster get could save."]
    lines.append("")

    lines += ["### In process", "",
              "µs per call: median, and the lowest and highest round.", ""]
    table = []
    for c, label in CALLS.items():
        for v in VARIANTS:
            values = micro["rounds"][c][v]
            table.append([label, v, f"{med[c][v]:.2f}", f"{min(values):.2f}-{max(values):.2f}",
                          f"{med[c][v] / med[c]['baseline']:.2f}",
                          f"{med[c]['baseline'] - med[c][v]:+.2f}"])
    lines += markdown_table(["call", "variant", "µs", "range", "/ baseline",
                             "saved µs"], table)
    lines += ["", "A second, read-only connection to the database (what `Store`'s exports, "
              "a peer's pull, and replicad-backup open; sqlite3's 5 s busy timeout): "
              + "; ".join(f"{v} {text}" for v, text in micro["second_connection"].items())
              + ". So `exclusive` also reads exports over the main connection "
              "(bench/variants/sitecustomize.py says why and what that gives up).", ""]

    lines += ["### End to end", "",
              "GETs sent to the coordinator. ops/s and latency (ms) are medians over the "
              "rounds, `range` the lowest and highest ops/s; CPU µs per GET from "
              "/proc/<pid>/stat (warm-up included); `load gen` = the load generator's CPU "
              f"share of a core (over {CLIENT_BOUND:.0%}: client-bound); `other` = the rest "
              "of the machine during the run, in cores.", ""]
    table = []
    for sc in SCENARIOS:
        base = cells.get((sc.key, "baseline"))
        for v in VARIANTS:
            cell = cells.get((sc.key, v))
            if cell is None:
                continue
            coordinator, followers, _ = cpu_text(cell)
            table.append([
                sc.title, v, fmt_rate(cell.rate),
                f"{fmt_rate(cell.rate_min)}-{fmt_rate(cell.rate_max)}" if cell.n > 1 else "-",
                f"{cell.rate / base.rate:.2f}", fmt_ms(cell.p50_us), fmt_ms(cell.p99_us),
                coordinator, f"{coordinator_us(cell) / coordinator_us(base):.2f}", followers,
                f"{cell.load_share:.0%}", f"{cell.other_share:.2f}", cell.errors])
    lines += markdown_table(["scenario", "variant", "ops/s", "range", "/ baseline", "p50",
                             "p99", "coordinator CPU µs/GET", "/ baseline", "followers",
                             "load gen", "other", "errors"], table)
    lines += ["", "### Checks: the variants ran in the replicas", ""]
    lines += [f"- {text}" for text in e2e["checks"]]

    problems = list(e2e["findings"])
    problems += [f"{sc} on {v}: {cell.errors} errors, e.g. `{cell.error_sample}`"
                 for (sc, v), cell in sorted(cells.items()) if cell.errors]
    problems += [f"{sc} on {v}: the load generator used {cell.load_share:.0%} of a core "
                 "(client-bound)" for (sc, v), cell in sorted(cells.items())
                 if cell.load_share > CLIENT_BOUND]
    problems += [f"anti-entropy pull: {p}" for p in e2e["pulls"]]
    lines += ["", "### Errors and anomalies", ""]
    lines += [f"- {p}" for p in problems] or [
        "None: every reply was the expected one, no row was client-bound, and the replicas "
        "logged no error, election, role change or pull while measured."]
    lines.append("")
    return "\n".join(lines)


# Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a check that everything works: 1 round of 0.5 s runs, "
                             "3 short in-process rounds")
    parser.add_argument("--rounds", type=int, help="end-to-end rounds (default 3; quick 1)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds per run (default 2; quick 0.5)")
    parser.add_argument("--warmup", type=float,
                        help="unmeasured seconds before each run (default 0.5; quick 0.2)")
    parser.add_argument("--micro-rounds", type=int, help="in-process rounds (default 9)")
    parser.add_argument("--micro-calls", type=int,
                        help="in-process calls per variant and round (default 20000)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here "
                        "(with --write: docs/suite/<section>.json)")
    parser.add_argument("--keys", type=int, default=HOT_KEYS,
                        help=f"keys in each store and cluster, the {HOT_KEYS:,} hot ones "
                             f"included (default {HOT_KEYS:,}: no cold keys)")
    _common.add_output_arguments(parser, "read-path", "read-path-100k")
    _common.add_keep_argument(parser)
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.rounds, args.micro_rounds, args.micro_calls) < 1 or args.duration <= 0 \
            or args.warmup < 0 or args.keys < HOT_KEYS:
        parser.error(f"rounds, calls and --duration must be positive, --keys at least "
                     f"{HOT_KEYS}")
    args.keyspace, args.value_bytes = HOT_KEYS, VALUE_BYTES   # what bench/suite.py reads
    args.invoked_as = _common.command_line()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.code = _common.CodeWatch()
    started = now()

    progress = _common.progress_printer(started)

    context = {"loadavg": " ".join(open("/proc/loadavg").read().split()[:3])}
    workdir = tempfile.mkdtemp(prefix="replicad-bench-read-path-")
    micro = in_process(args, workdir, progress)
    e2e = end_to_end(args, workdir, progress)
    context["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    context["elapsed"] = now() - started
    if args.keep:
        progress(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(args, micro, e2e, context)
    path = args.json or (os.path.join(_common.ROOT, "docs", "suite", f"{args.section}.json")
                          if args.write else None)
    if path:
        data = {"section": args.section, "command": args.invoked_as,
                "code": args.code.version, "fingerprint": args.code.fingerprint,
                "started": args.code.started.isoformat(), "context": context,
                "settings": {k: getattr(args, k) for k in (*FULL, "keys")},
                "micro": micro, "runs": [dataclasses.asdict(r) for r in e2e["runs"]],
                "cells": [dataclasses.asdict(c) for c in e2e["cells"].values()],
                "checks": e2e["checks"], "findings": e2e["findings"], "pulls": e2e["pulls"]}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        progress(f"results: {path}")
    _common.publish(text, args.section, args.write, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
