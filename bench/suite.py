"""Benchmark suite (issue #10 item 5): replicad beside Redis, one load generator, one run.

The load generator is bench/load.c, a single-threaded epoll program compiled here with
the machine's ``cc -O2`` into the run's temporary directory (never committed as a
binary).  It keeps N persistent connections busy in a closed loop (optionally with a
pipeline of D requests per connection), or N concurrent one-shot slots (connect, one
request, read the reply, close), or opens a burst of N connections at once; it checks
every reply byte for byte and reports ops/s, latency percentiles and its own CPU time
(getrusage), so that its share of the machine is shown and a client-bound row is
flagged.  It speaks replicad's line protocol and RESP.

Servers, all started by this script in a temporary directory on free loopback ports and
stopped at the end:

- replicad: real ``twistd replicad`` processes (LocalCluster): 3 replicas with
  ``write_quorum = 1`` (the main comparison) and ``majority``, 1 replica, 5 replicas
  with both quorums.  Default timers; ``max_connections = 4096`` so that the burst of
  2,000 connections measures opening them, not the connection limit.
- Redis: ``redis-server --save '' --appendonly yes --appendfsync always`` (the write
  comparison, an fsync per write like replicad's, and the server for GETs) and the same
  with ``--appendfsync everysec`` (a second write row).  Not installed by this script:
  without ``redis-server`` on the PATH it says how to install it (``make bench`` does)
  and measures replicad alone.

Every server runs during the whole measurement; the runs alternate: for each round, for
each scenario, each target in turn (the order rotated every round), so that a change in
the machine's load hits every target alike.  Figures are medians over the rounds (1 in
quick mode, 3 with --full).  Server CPU comes from /proc/<pid>/stat (utime+stime of every
process of the target, before and after each run) and is given per operation and per
process; the load generator's from getrusage.  The machine's other CPU use (everything
that is not the target or the load generator, idle servers included) is estimated from
/proc/stat and reported, since a busy machine changes every figure.

Scenarios: GET and PUT with 1 and 50 persistent connections, pipelined (16 on one
connection), one-shot (50 concurrent), sent to a follower (3 replicas, 50 connections,
as a ratio to the same sent to the coordinator; a GET is answered by the follower once
its coordinator confirmed it, ``confirmed_reads = yes`` by default, and GETs also go to
a cluster with ``follower_reads = yes``, where the follower answers them unconfirmed),
PUT with 50 connections for 1/3/5 replicas and both quorum modes, a sweep of connection
counts for the throughput plot, and a burst of 2,000 new connections (time until all are
open and each has answered a PING; the kernel's listen-queue overflow counter is read
around it). The targets of issue #10 are printed with the measured value, met / not met
and the ratio to the target, and (with more than one round) the same figure from each
round's own runs and in how many rounds it is met, so that a target within the machine's
run-to-run swing reads as such; --baseline adds the figures of an earlier run (its JSON)
and the ratio to them.

Output: markdown on stdout (progress on stderr).  --write replaces the section
(--section, default "suite") of docs/benchmarks.md, writes the raw results to
docs/suite/<section>.json and, if matplotlib is installed, PNG plots to
docs/suite/<section>-*.png (bench/plots.py; --plots DIR for elsewhere).  Quick by
default (about a minute); --full for the figures in docs (about 6 minutes).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import _common
import machine_speed
from _common import markdown_table
from throughput import (
    INSTALL_HINT,
    Redis,
    cpu_seconds,
    filesystem_of,
    fsync_probe,
    log_findings,
    log_offsets,
    redis_version,
)

from replicad.cluster import LocalCluster, find_free_base_port

now = time.perf_counter
HERE = os.path.dirname(os.path.abspath(__file__))
LOAD_C = os.path.join(HERE, "load.c")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_BOUND = 0.9          # load generator CPU / wall above this: the row is client-bound
MAX_CONNECTIONS = 4096      # replicad's max_connections in every cluster (burst of 2,000)

QUICK = {"rounds": 1, "duration": 0.5, "warmup": 0.2, "sweep": "1,10,50",
         "burst_timeout": 10.0, "check_requests": 20000}
FULL = {"rounds": 3, "duration": 2.0, "warmup": 0.5, "sweep": "1,5,10,25,50,100",
        "burst_timeout": 40.0, "check_requests": 100000}
SWEEP_DURATION_FACTOR = 0.5   # the extra sweep points run for half the duration


# Targets ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    key: str          # short name used in scenario lists: R3, R3m, R1, R5, R5m, R3f, Ra, Re
    label: str
    kind: str                  # "replicad" or "redis"
    proto: str                 # "line" or "resp"
    addresses: dict[str, tuple[str, int]]       # "coordinator" / "follower" -> address
    processes: Callable[[], list[tuple[str, int]]]   # (role, pid) of every server process
    size: int = 1
    quorum: str = "-"
    cluster: LocalCluster | None = None
    coordinator: int | None = None
    follower: int | None = None


REPLICAD_SHAPES = {   # key -> (replicas, write_quorum, follower_reads)
    "R3": (3, "1", False), "R3m": (3, "majority", False), "R1": (1, "1", False),
    "R5": (5, "1", False), "R5m": (5, "majority", False),
    # The opt-in: followers answer reads themselves (docs/consistency.md); measured for
    # GETs sent to a follower only, beside R3's forwarding.
    "R3f": (3, "1", True),
}
REDIS_MODES = {"Ra": "always", "Re": "everysec"}


# Targets whose row was renamed: the name now -> the name in older baselines' JSON.
RENAMED_GOALS = {
    "GET sent to a follower (confirmed reads, the default) / to the coordinator "
    "(50 connections)": "GET sent to a follower / to the coordinator (50 connections)",
}


def replicad_label(size: int, quorum: str, follower_reads: bool = False) -> str:
    if size == 1:
        return "replicad, 1 replica"
    reads = ", follower_reads = yes" if follower_reads else ""
    return f"replicad, {size} replicas, wq={quorum}{reads}"


def start_cluster(key: str, workdir: str, progress) -> Target:
    size, quorum, follower_reads = REPLICAD_SHAPES[key]
    overrides = {"write_quorum": quorum, "max_connections": str(MAX_CONNECTIONS)}
    if follower_reads:
        overrides["follower_reads"] = "yes"
    cluster = LocalCluster(size, find_free_base_port(size), os.path.join(workdir, key),
                           overrides=overrides)
    cluster.start()
    return Target(key, replicad_label(size, quorum, follower_reads), "replicad", "line",
                  {}, lambda: [], size, quorum, cluster)


def settle_cluster(target: Target, progress) -> None:
    """Wait until every peer link is up, the coordinator serves and nothing changes."""
    cluster = target.cluster
    assert cluster is not None
    cluster.wait_ready(timeout_s=30)
    want_quorum = 1 if target.quorum == "1" else target.size // 2 + 1

    def state() -> tuple | None:
        statuses = cluster.statuses(1.0)
        if any(s is None or "down" in str(s.get("peers")) for s in statuses.values()):
            return None
        named = {s["coordinator"] for s in statuses.values()}
        if len(named) != 1:
            return None
        (leader,) = named
        if (statuses.get(leader) or {}).get("ready") != "yes" \
                or statuses[leader].get("write_quorum") != want_quorum:
            return None
        return tuple((i, s["coordinator"], s["epoch"]) for i, s in sorted(statuses.items()))

    previous = None
    deadline = time.monotonic() + 30
    while (current := cluster.wait_until(state, 30, what="every peer link up and the "
                                         "coordinator ready")) != previous:
        if time.monotonic() > deadline:
            raise TimeoutError(cluster.describe("the cluster did not settle within 30 s"))
        previous = current
        time.sleep(0.5)
    coordinator = current[0][1]
    follower = min((i for i in cluster.ids if i != coordinator), default=None)
    target.coordinator, target.follower = coordinator, follower

    def address(i: int) -> tuple[str, int]:
        a = cluster.client_address(i)
        return (a.host, a.port)

    target.addresses = {"coordinator": address(coordinator)}
    if follower is not None:
        target.addresses["follower"] = address(follower)

    def processes() -> list[tuple[str, int]]:
        out = []
        for i in cluster.ids:
            pid = cluster.pid(i)
            if pid is not None:
                role = "coordinator" if i == coordinator else "follower"
                out.append((f"r{i} {role}", pid))
        out.sort(key=lambda item: (item[0].split()[1] != "coordinator", item[0]))
        return out

    target.processes = processes
    progress(f"{target.label}: coordinator {coordinator}"
             + (f", follower used {follower}" if follower else ""))


def redis_target(key: str, server: Redis) -> Target:
    proc = server.proc
    assert proc is not None
    return Target(key, f"Redis, appendfsync {server.mode}", "redis", "resp",
                  {"coordinator": ("127.0.0.1", server.port)},
                  lambda: [("redis-server", proc.pid)])


# Scenarios --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    op: str                       # get / put
    mode: str                     # persistent / oneshot
    conns: int
    targets: tuple[str, ...]
    pipeline: int = 1
    via: str = "coordinator"
    sweep: bool = False           # an extra point of the connection sweep (shorter)


def scenarios(sweep_conns: list[int]) -> list[Scenario]:
    # A request sent to a follower is measured right after the same sent to the
    # coordinator (its target's ratio is of the two): this machine's speed drifts by up
    # to 2x within minutes (bench/machine_speed.py), and the pair measured a minute
    # apart, with the rest of the round between, scattered 0.43-0.92 over three rounds.
    main = [
        Scenario("get-1", "GET, 1 connection", "get", "persistent", 1, ("R3", "Ra")),
        Scenario("get-50", "GET, 50 connections", "get", "persistent", 50,
                 ("R3", "R1", "R5", "Ra")),
        Scenario("get-50-follower", "GET, 50 connections, sent to a follower", "get",
                 "persistent", 50, ("R3", "R3f"), via="follower"),
        Scenario("put-1", "PUT, 1 connection", "put", "persistent", 1,
                 ("R3", "R3m", "Ra", "Re")),
        Scenario("put-50", "PUT, 50 connections", "put", "persistent", 50,
                 ("R3", "R3m", "R1", "R5", "R5m", "Ra", "Re")),
        Scenario("put-50-follower", "PUT, 50 connections, sent to a follower", "put",
                 "persistent", 50, ("R3",), via="follower"),
        Scenario("get-p16", "GET, pipeline 16 on 1 connection", "get", "persistent", 1,
                 ("R3", "Ra"), pipeline=16),
        Scenario("put-p16", "PUT, pipeline 16 on 1 connection", "put", "persistent", 1,
                 ("R3", "Ra", "Re"), pipeline=16),
        Scenario("get-os50", "GET, one-shot, 50 concurrent", "get", "oneshot", 50,
                 ("R3", "Ra")),
        Scenario("put-os50", "PUT, one-shot, 50 concurrent", "put", "oneshot", 50,
                 ("R3", "Ra", "Re")),
    ]
    extra = [Scenario(f"{op}-{n}", f"{op.upper()}, {n} connections", op, "persistent", n,
                      ("R3", "Ra"), sweep=True)
             for n in sweep_conns if n not in (1, 50) for op in ("get", "put")]
    return main + extra


# Measuring --------------------------------------------------------------------------------


def cpu_speed(seconds: float = 2.0) -> float:
    """Milliseconds per machine_speed.work() now, back to back for ``seconds`` (median
    after the first fifth): how fast this machine's CPU runs at the moment."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        times.append(machine_speed.work())
    return statistics.median(times[len(times) // 5:])


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def listen_overflows() -> tuple[int, int]:
    """TcpExt ListenOverflows and ListenDrops, machine-wide (the kernel's counters)."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return (0, 0)
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return table.get("ListenOverflows", 0), table.get("ListenDrops", 0)
    return (0, 0)


@dataclasses.dataclass
class Run:
    scenario: str
    target: str
    round: int
    rate: float
    p50_us: float
    p99_us: float
    ops: int
    completed: int
    errors: int
    error_sample: str
    window_s: float
    wall_s: float
    load_cpu_s: float
    cpu_s: dict[str, float]        # role -> server CPU seconds during the run
    other_cpu_s: float             # the rest of the machine during the run (estimate)


@dataclasses.dataclass
class Burst:
    target: str
    round: int
    conns: int
    connected: int
    answered: int
    all_connected_s: float
    all_answered_s: float
    answer_p50_s: float
    answer_p99_s: float
    complete: bool
    errors: int
    error_sample: str
    overflows: int
    drops: int
    load_cpu_s: float


class Suite:
    def __init__(self, args: argparse.Namespace, binary: str, progress):
        self.args = args
        self.load = binary
        self.progress = progress
        self.runs: list[Run] = []
        self.bursts: list[Burst] = []
        self._prefix = 0

    def command(self, target: Target, address: tuple[str, int], **options) -> list[str]:
        argv = [self.load, "--host", address[0], "--port", str(address[1]), "--proto",
                target.proto, "--value-bytes", str(self.args.value_bytes)]
        for name, value in options.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        return argv

    def execute(self, argv: list[str], limit_s: float) -> dict:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit_s + 60)
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return json.loads(done.stdout)

    def preload(self, target: Target) -> None:
        """The keys GETs read: --keyspace keys under prefix g, pipelined PUTs."""
        argv = self.command(target, target.addresses["coordinator"], op="put",
                            conns=1, pipeline=16, duration=0, max_ops=self.args.keyspace,
                            keyspace=self.args.keyspace, prefix="g")
        result = self.execute(argv, 120)
        if result["errors"] or result["completed"] != self.args.keyspace:
            raise RuntimeError(f"preloading {target.label} failed: {result['errors']} errors "
                               f"({result['error_sample']})")

    def run(self, scenario: Scenario, target: Target, round_: int,
            keep: bool = True) -> Run:
        args = self.args
        self._prefix += 1
        duration = args.duration * (SWEEP_DURATION_FACTOR if scenario.sweep else 1.0)
        options = dict(op=scenario.op, mode=scenario.mode, conns=scenario.conns,
                       pipeline=scenario.pipeline, duration=duration, warmup=args.warmup,
                       keyspace=args.keyspace, timeout=10)
        if scenario.op == "get":
            options["prefix"] = "g"
        else:   # a new key per PUT: a prefix of its own per run
            options["prefix"] = f"p{self._prefix}-"
            del options["keyspace"]
        argv = self.command(target, target.addresses[scenario.via], **options)
        processes = target.processes()
        before = {role: cpu_seconds([pid]) for role, pid in processes}
        busy0 = machine_busy_s()
        result = self.execute(argv, duration + args.warmup + 20)
        busy1 = machine_busy_s()
        after = {role: cpu_seconds([pid]) for role, pid in processes}
        cpu = {role: after[role] - before[role] for role in before}
        load_cpu = result["cpu_user_s"] + result["cpu_sys_s"]
        lat = result["latency"]
        run = Run(scenario.key, target.key, round_, result["rate"], lat["p50_us"],
                  lat["p99_us"], result["ops"], result["completed"], result["errors"],
                  result["error_sample"], result["window_s"], result["wall_s"], load_cpu, cpu,
                  max(0.0, busy1 - busy0 - sum(cpu.values()) - load_cpu))
        if keep:
            self.runs.append(run)
        share = load_cpu / result["wall_s"] if result["wall_s"] else 0.0
        self.progress(
            f"round {round_ + 1} {scenario.key:16} {target.key:4} {run.rate:>10,.0f}/s "
            f"p50 {run.p50_us / 1000:7.3f} ms p99 {run.p99_us / 1000:7.3f} ms, "
            f"load gen {share:4.0%} of a core"
            + (f", {run.errors} errors ({run.error_sample})" if run.errors else ""))
        return run

    def burst(self, target: Target, round_: int) -> Burst:
        args = self.args
        argv = self.command(target, target.addresses["coordinator"], mode="burst",
                            conns=args.burst_conns, timeout=args.burst_timeout)
        overflows0 = listen_overflows()
        result = self.execute(argv, args.burst_timeout)
        overflows1 = listen_overflows()
        answer = result["answer_time"]
        burst = Burst(target.key, round_, args.burst_conns, result["connected"],
                      result["answered"], result["all_connected_s"], result["all_answered_s"],
                      answer["p50_us"] / 1e6, answer["p99_us"] / 1e6, result["complete"],
                      result["errors"], result["error_sample"],
                      overflows1[0] - overflows0[0], overflows1[1] - overflows0[1],
                      result["cpu_user_s"] + result["cpu_sys_s"])
        self.bursts.append(burst)
        self.progress(
            f"round {round_ + 1} burst {target.key}: {burst.answered:,} of {burst.conns:,} "
            f"answered PING, all connected after {burst.all_connected_s:.3f} s, all answered "
            f"after {burst.all_answered_s:.3f} s; {burst.overflows} listen-queue overflows"
            + (f", {burst.errors} errors ({burst.error_sample})" if burst.errors else ""))
        return burst


def wait_serving(target: Target, load: str, timeout_s: float = 30.0) -> None:
    """After a burst: the server answers a PING on a new connection again."""
    deadline = time.monotonic() + timeout_s
    argv = [load, "--host", target.addresses["coordinator"][0], "--port",
            str(target.addresses["coordinator"][1]), "--proto", target.proto, "--mode",
            "burst", "--conns", "1", "--timeout", "5"]
    while time.monotonic() < deadline:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and json.loads(done.stdout).get("complete"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{target.label} does not answer PING after the burst")


def loadgen_check(suite: Suite, target: Target, requests: int) -> list[dict]:
    """redis-benchmark (Redis's own C client) and load.c, GET and SET with 50 connections
    on the same Redis server, one after the other: does load.c keep up, at what CPU cost?"""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return []
    host, port = target.addresses["coordinator"]
    rows = []
    for op, test in (("get", "GET"), ("put", "SET")):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = now()
        done = subprocess.run([tool, "-h", host, "-p", str(port), "-c", "50", "-n",
                               str(requests), "-d", str(suite.args.value_bytes), "-r",
                               str(suite.args.keyspace), "-t", test.lower(), "--csv"],
                              capture_output=True, text=True, timeout=300)
        wall = now() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        table = [r for r in csv.DictReader(io.StringIO(done.stdout)) if r.get("test") == test]
        if done.returncode != 0 or not table:
            suite.progress(f"redis-benchmark failed: {done.stderr.strip()[:200]}")
            return rows
        rps = float(table[0]["rps"])
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rows.append({"tool": "redis-benchmark", "op": test, "rate": rps,
                     "p50_us": float(table[0]["p50_latency_ms"]) * 1000,
                     "p99_us": float(table[0]["p99_latency_ms"]) * 1000,
                     "cpu_us_per_op": cpu / requests * 1e6, "share": cpu / wall})
        scenario = Scenario(f"check-{op}", "", op, "persistent", 50, (target.key,))
        run = suite.run(scenario, target, 0, keep=False)
        rows.append({"tool": "bench/load.c", "op": test, "rate": run.rate,
                     "p50_us": run.p50_us, "p99_us": run.p99_us,
                     "cpu_us_per_op": run.load_cpu_s / run.completed * 1e6,
                     "share": run.load_cpu_s / run.wall_s})
        suite.progress(f"load generator check, {test}: redis-benchmark {rps:,.0f}/s, "
                       f"load.c {run.rate:,.0f}/s")
    return rows


# Aggregates -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


@dataclasses.dataclass
class Cell:
    """The medians over the rounds of one scenario on one target."""

    scenario: str
    target: str
    n: int
    rate: float
    rate_min: float
    rate_max: float
    p50_us: float
    p99_us: float
    errors: int
    error_sample: str
    load_share: float          # load generator CPU / wall (of one core)
    load_us_per_op: float
    cpu_us_per_op: dict[str, float]
    other_share: float         # the rest of the machine, cores busy


def aggregate(runs: list[Run]) -> dict[tuple[str, str], Cell]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.target), []).append(run)
    cells = {}
    for (scenario, target), group in groups.items():
        roles = list(group[0].cpu_s)
        cpu = {role: median([r.cpu_s.get(role, float("nan")) / r.completed * 1e6
                             for r in group if r.completed]) for role in roles}
        cells[(scenario, target)] = Cell(
            scenario, target, len(group), median([r.rate for r in group]),
            min(r.rate for r in group), max(r.rate for r in group),
            median([r.p50_us for r in group if r.p50_us >= 0]),
            median([r.p99_us for r in group if r.p99_us >= 0]),
            sum(r.errors for r in group),
            next((r.error_sample for r in group if r.error_sample), ""),
            median([r.load_cpu_s / r.wall_s for r in group if r.wall_s]),
            median([r.load_cpu_s / r.completed * 1e6 for r in group if r.completed]),
            cpu, median([r.other_cpu_s / r.wall_s for r in group if r.wall_s]))
    return cells


# Targets of issue #10 --------------------------------------------------------------------


@dataclasses.dataclass
class Goal:
    name: str
    value: float
    threshold: float
    unit: str            # "ratio", "ops/s", "s"
    at_most: bool = False
    # The same figure in each round (its two rates measured in that round): how far a
    # run-to-run swing carries it, beside the medians' value.
    rounds: tuple[float, ...] = ()

    @property
    def known(self) -> bool:
        return self.value == self.value

    @property
    def met(self) -> bool:
        return self.met_by(self.value)

    def met_by(self, value: float) -> bool:
        """Whether ``value`` (this goal's figure, or one round's) reaches the target."""
        return value == value and (value <= self.threshold if self.at_most
                                   else value >= self.threshold)

    @property
    def fraction(self) -> float:
        """How much of the target is reached: 1.0 or more = met."""
        if not self.known or self.value <= 0:
            return 0.0 if self.known else float("nan")
        return self.threshold / self.value if self.at_most else self.value / self.threshold


def rate_of(cells, scenario: str, target: str) -> float:
    cell = cells.get((scenario, target))
    return cell.rate if cell else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if a == a and b == b and b > 0 else float("nan")


def goals(cells: dict, bursts: list[Burst], runs: list[Run] = ()) -> list[Goal]:
    by_round: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        by_round.setdefault((run.scenario, run.target), {})[run.round] = run.rate
    burst_rounds = {b.round: b.all_answered_s if b.complete else float("inf")
                    for b in bursts if b.target == "R3"}
    burst = median(list(burst_rounds.values())) if burst_rounds else float("nan")

    def share(name: str, scenario: str, target: str, of_scenario: str, of_target: str,
              threshold: float) -> Goal:
        """A goal that is a ratio of two cells, and that ratio in each round."""
        mine = by_round.get((scenario, target), {})
        theirs = by_round.get((of_scenario, of_target), {})
        return Goal(name, ratio(rate_of(cells, scenario, target),
                                rate_of(cells, of_scenario, of_target)),
                    threshold, "ratio",
                    rounds=tuple(ratio(mine[k], theirs[k]) for k in sorted(mine)
                                 if k in theirs))

    one_shot = by_round.get(("put-os50", "R3"), {})
    return [
        share("PUT, 50 connections, 3 replicas wq=1 / Redis appendfsync always",
              "put-50", "R3", "put-50", "Ra", 0.25),
        share("PUT, 50 connections, wq=majority / wq=1 (3 replicas)",
              "put-50", "R3m", "put-50", "R3", 0.80),
        share("GET, 50 connections, 3 replicas / Redis", "get-50", "R3", "get-50", "Ra", 0.50),
        share("PUT, pipeline 16 / 1 connection without pipelining",
              "put-p16", "R3", "put-1", "R3", 3.0),
        share("GET, pipeline 16 / 1 connection without pipelining",
              "get-p16", "R3", "get-1", "R3", 3.0),
        Goal("PUT, one-shot, 50 concurrent", rate_of(cells, "put-os50", "R3"), 10000,
             "ops/s", rounds=tuple(one_shot[k] for k in sorted(one_shot))),
        share("GET sent to a follower (confirmed reads, the default) / to the coordinator "
              "(50 connections)",
              "get-50-follower", "R3", "get-50", "R3", 0.70),
        share("PUT sent to a follower / to the coordinator (50 connections)",
              "put-50-follower", "R3", "put-50", "R3", 0.70),
        share("GET sent to a follower with follower_reads = yes (opt-in) / to the "
              "coordinator", "get-50-follower", "R3f", "get-50", "R3", 0.70),
        share("PUT, 50 connections, 5 replicas / 3 replicas, wq=1",
              "put-50", "R5", "put-50", "R3", 0.70),
        share("PUT, 50 connections, 5 replicas / 3 replicas, wq=majority",
              "put-50", "R5m", "put-50", "R3m", 0.70),
        Goal("burst of 2,000 new connections: all open and answered PING", burst, 2.0, "s",
             at_most=True, rounds=tuple(burst_rounds[k] for k in sorted(burst_rounds))),
    ]


# Report -----------------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"


def fmt_ms(us: float) -> str:
    if us != us or us < 0:
        return "-"
    value = us / 1000
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def fmt_ratio(x: float) -> str:
    if x != x:
        return "-"
    return f"{x:.3f}" if x < 0.1 else f"{x:.2f}"


def fmt_value(goal: Goal) -> str:
    if not goal.known:
        return "-"
    if goal.unit == "ops/s":
        return f"{goal.value:,.0f}/s"
    if goal.unit == "s":
        return "not all within the timeout" if goal.value == float("inf") \
            else f"{goal.value:.2f} s"
    return f"{goal.value:.3f}" if goal.value < 0.1 else f"{goal.value:.2f}"


def fmt_rounds(goal: Goal) -> str:
    """The goal's figure in each round, and in how many of them it is met."""
    if len(goal.rounds) < 2:
        return "-"
    texts = [fmt_value(dataclasses.replace(goal, value=value)).removesuffix("/s")
             .removesuffix(" s") for value in goal.rounds]
    met = sum(goal.met_by(value) for value in goal.rounds)
    return f"{', '.join(texts)} ({met} of {len(goal.rounds)})"


def fmt_threshold(goal: Goal) -> str:
    if goal.unit == "ops/s":
        return f">= {goal.threshold:,.0f}/s"
    if goal.unit == "s":
        return f"<= {goal.threshold:g} s"
    return f">= {goal.threshold:g}"


def cpu_text(cell: Cell) -> tuple[str, str, str]:
    """(coordinator / server, followers, all) in µs per operation."""
    roles = cell.cpu_us_per_op
    first = [v for role, v in roles.items() if "coordinator" in role or role == "redis-server"]
    followers = [f"{role.split()[0]} {v:,.0f}" for role, v in roles.items()
                 if "follower" in role]
    total = sum(v for v in roles.values() if v == v)
    return (f"{first[0]:,.0f}" if first else "-", ", ".join(followers) or "-",
            f"{total:,.0f}" if roles else "-")


def report(args, targets: dict[str, Target], cells: dict, bursts: list[Burst],
           context: dict, baseline: dict | None, runs: list[Run] = ()) -> str:
    title = "" if args.section == "suite" else f" [{args.section}]"
    rounds = "median of " + str(args.rounds) + " rounds" if args.rounds > 1 else "1 round"
    lines = [f"## Benchmark suite: replicad beside Redis (bench/suite.py){title}", "",
             "Command:", "", "```", args.invoked_as, "```", ""]
    lines += _common.machine_lines()
    lines += args.code.lines()
    lines += [
        f"- Redis: {context['redis']}; "
        + ("; ".join(f"`{s}`" for s in context["redis_settings"]) or "not run"),
        f"- replicad: LocalCluster (real twistd processes), default timers, "
        f"`max_connections = {MAX_CONNECTIONS}`; SQLite WAL, synchronous=FULL (an fsync per "
        f"write on every replica); clusters: "
        + "; ".join(t.label.removeprefix("replicad, ") for t in targets.values()
                    if t.kind == "replicad"),
        f"- load generator: bench/load.c, {context['cc']}; one thread, epoll; "
        f"{args.value_bytes}-byte values, a new key per PUT, GETs over {args.keyspace:,} "
        f"keys written before; every reply checked",
        f"- each run: {args.warmup:g} s warm-up, then {args.duration:g} s measured "
        f"(sweep points {args.duration * SWEEP_DURATION_FACTOR:g} s); {rounds}, the "
        f"targets alternating; all servers running throughout",
        f"- data directories: {context['filesystem']}; append 100 B + fdatasync there: "
        f"median {context['fsync'].median * 1000:.3f} ms, p99 "
        f"{context['fsync'].p99 * 1000:.3f} ms",
        f"- machine load: load average {context['loadavg']} at the start; the idle servers "
        f"used {context['idle_share']:.1%} of one core between runs; other processes "
        f"(not the target, not the load generator) used a median of "
        f"{context['other_share']:.0%} of one core during the runs (max "
        f"{context['other_max']:.0%})",
        f"- machine speed: bench/machine_speed.py's piece of work took "
        f"{context['speed_start']:.1f} ms at the start and {context['speed_end']:.1f} ms "
        f"at the end (continuous load, median over 2 s; the same machine has measured "
        f"15-28 ms: absolute figures of runs at different speeds do not compare, the "
        f"ratios of one round do)",
        f"- total run time: {context['elapsed']:.0f} s",
        "",
    ]
    if context.get("redis_missing"):
        lines += [f"**{INSTALL_HINT}.**", ""]

    # Targets
    goal_list = goals(cells, bursts, runs)
    per_round = any(len(g.rounds) > 1 for g in goal_list)
    before_goals = {g["name"]: g for g in (baseline or {}).get("goals", [])}
    for now_name, old_name in RENAMED_GOALS.items():     # a baseline from before a rename
        if old_name in before_goals and now_name not in before_goals:
            before_goals[now_name] = before_goals[old_name]
    lines += ["### Targets (issue #10)", "",
              "Measured against the targets of issue #10 (3 replicas, 50 persistent "
              "connections, Redis with `appendfsync always`, unless the row says "
              "otherwise). `of target` = measured / target (for a time: target / measured): "
              "1.00 or more is met." + (
                  " `in each round` = the same figure from each round's own runs (both "
                  "rates of a ratio were measured in that round), and in how many rounds "
                  "it is met: where they disagree, the target sits within this machine's "
                  "run-to-run swing." if per_round else ""), ""]
    header = ["target", "required", "measured", "status", "of target"]
    if per_round:
        header.insert(3, "in each round")
    if baseline:
        header += ["before", "now / before"]
    table = []
    for g in goal_list:
        status = "met" if g.met else ("not measured" if not g.known else "**not met**")
        row = [g.name, fmt_threshold(g), fmt_value(g), status, fmt_ratio(g.fraction)]
        if per_round:
            row.insert(3, fmt_rounds(g))
        if baseline:
            b = before_goals.get(g.name)
            if b is None or b["value"] is None:
                row += ["-", "-"]
            else:
                old = Goal(g.name, b["value"], g.threshold, g.unit, g.at_most)
                change = (ratio(old.value, g.value) if g.at_most else ratio(g.value, old.value))
                row += [fmt_value(old), fmt_ratio(change)]
        table.append(row)
    lines += markdown_table(header, table)
    lines.append("")

    # The summary table
    lines += ["### Summary: replicad (3 replicas, wq=1) beside Redis", "",
              "ops/s; Redis with `appendfsync always` (its GETs and PINGs do not touch the "
              "disk). ratio = replicad / Redis.", ""]
    summary = [("GET, 50 persistent connections", "get-50"),
               ("GET, 1 connection", "get-1"),
               ("PUT, 50 connections", "put-50"),
               ("PUT, 1 connection", "put-1"),
               ("GET, pipeline 16 on 1 connection", "get-p16"),
               ("PUT, pipeline 16 on 1 connection", "put-p16"),
               ("GET, one-shot, 50 concurrent", "get-os50"),
               ("PUT, one-shot, 50 concurrent", "put-os50")]
    before_cells = {(c["scenario"], c["target"]): c for c in (baseline or {}).get("cells", [])}
    header = ["figure", "replicad", "Redis", "ratio", "Redis everysec", "ratio"]
    if baseline:
        header += ["replicad before", "now / before"]
    table = []
    for name, key in summary:
        ours, redis, every = (rate_of(cells, key, "R3"), rate_of(cells, key, "Ra"),
                              rate_of(cells, key, "Re"))
        bound = [t for t in ("R3", "Ra", "Re") if key_bound(cells, key, t)]
        redis_text = fmt_rate(redis) + (" (client-bound)" if "Ra" in bound else "")
        row = [name, fmt_rate(ours) + (" (client-bound)" if "R3" in bound else ""),
               redis_text, fmt_ratio(ratio(ours, redis)), fmt_rate(every),
               fmt_ratio(ratio(ours, every))]
        if baseline:
            old = before_cells.get((key, "R3"))
            row += [fmt_rate(old["rate"]) if old else "-",
                    fmt_ratio(ratio(ours, old["rate"])) if old else "-"]
        table.append(row)
    get_f = ratio(rate_of(cells, "get-50-follower", "R3"), rate_of(cells, "get-50", "R3"))
    put_f = ratio(rate_of(cells, "put-50-follower", "R3"), rate_of(cells, "put-50", "R3"))
    row = ["GET / PUT sent to a follower, vs to the coordinator (50 connections)",
           f"{fmt_ratio(get_f)} / {fmt_ratio(put_f)} of direct", "", "", "", ""]
    if baseline:
        def before_ratio(a: str, b: str) -> float:
            x, y = before_cells.get((a, "R3")), before_cells.get((b, "R3"))
            return ratio(x["rate"], y["rate"]) if x and y else float("nan")

        old_g = before_ratio("get-50-follower", "get-50")
        old_p = before_ratio("put-50-follower", "put-50")
        row += [f"{fmt_ratio(old_g)} / {fmt_ratio(old_p)} of direct",
                f"{fmt_ratio(ratio(get_f, old_g))} / {fmt_ratio(ratio(put_f, old_p))}"]
    table.append(row)
    lines += markdown_table(header, table)
    lines.append("")

    # Every cell
    lines += ["### Every scenario and target", "",
              f"ops/s and latency (milliseconds, from the request's send to its reply; for "
              f"one-shot from the connect) are medians over the rounds; `range` is the "
              f"lowest and highest ops/s of the rounds. `vs Redis` compares with the Redis "
              f"`appendfsync always` server in the same scenario. `load gen` = the load "
              f"generator's CPU time over the run's wall time (of one core; over "
              f"{CLIENT_BOUND:.0%}: the row is client-bound). `other` = the rest of the "
              f"machine during the run, in cores.", ""]
    table = []
    all_scenarios = scenarios(args.sweep)
    for sc in all_scenarios:
        for tkey in sc.targets:
            cell = cells.get((sc.key, tkey))
            if cell is None:
                continue
            redis = rate_of(cells, sc.key, "Ra")
            label = targets[tkey].label + (", via a follower" if sc.via == "follower" else "")
            table.append([
                sc.title, label, fmt_rate(cell.rate),
                f"{fmt_rate(cell.rate_min)}-{fmt_rate(cell.rate_max)}" if cell.n > 1 else "-",
                fmt_ms(cell.p50_us), fmt_ms(cell.p99_us),
                fmt_ratio(ratio(cell.rate, redis)) if targets[tkey].kind != "redis" else "",
                cell.errors, f"{cell.load_share:.0%}"
                + (" **client-bound**" if cell.load_share > CLIENT_BOUND else ""),
                f"{cell.other_share:.2f}"])
    lines += markdown_table(["scenario", "target", "ops/s", "range", "p50", "p99", "vs Redis",
                             "errors", "load gen", "other"], table)
    lines.append("")

    # Cluster size
    lines += ["### Write rate against cluster size", "",
              "PUT, 50 persistent connections, to the coordinator; ops/s (p50 / p99 ms).", ""]
    table = []
    for size, keys in ((1, ("R1", "R1")), (3, ("R3", "R3m")), (5, ("R5", "R5m"))):
        row = [str(size)]
        for k in keys:
            cell = cells.get(("put-50", k))
            row.append("-" if cell is None else
                       f"{fmt_rate(cell.rate)} ({fmt_ms(cell.p50_us)} / {fmt_ms(cell.p99_us)})")
        redis = rate_of(cells, "put-50", "Ra")
        row.append(fmt_ratio(ratio(rate_of(cells, "put-50", keys[0]), redis)))
        table.append(row)
    lines += markdown_table(["replicas", "write_quorum = 1", "write_quorum = majority",
                             "wq=1 / Redis always"], table)
    lines += ["", "(1 replica: the quorum is 1 either way.)", ""]

    # CPU
    lines += ["### CPU per operation, per process", "",
              "Microseconds of CPU (utime + stime from /proc/<pid>/stat, every thread, "
              "10 ms ticks) per completed operation (warm-up included in both), medians "
              "over the rounds. Redis: its one process in the first column.", ""]
    table = []
    for sc in all_scenarios:
        if sc.sweep:
            continue
        for tkey in sc.targets:
            cell = cells.get((sc.key, tkey))
            if cell is None:
                continue
            first, followers, total = cpu_text(cell)
            label = targets[tkey].label + (", via a follower" if sc.via == "follower" else "")
            table.append([sc.title, label, first, followers, total,
                          f"{cell.load_us_per_op:,.1f}"])
    lines += markdown_table(["scenario", "target", "coordinator / redis-server",
                             "followers", "all server processes", "load generator"], table)
    lines.append("")

    # Burst
    if bursts:
        lines += [f"### A burst of {args.burst_conns:,} new connections", "",
                  f"The load generator opens {args.burst_conns:,} connections at once "
                  f"(non-blocking connects in a loop), sends PING on each as soon as it is "
                  f"connected and waits for every answer (at most {args.burst_timeout:g} s). "
                  "`connected` is the client side (the kernel completed the handshake); "
                  "`answered` needs the server to have accepted and served the connection. "
                  "Overflows: the kernel's TcpExt ListenOverflows / ListenDrops during the "
                  "burst (each dropped SYN costs the client a 1 s retransmit).", ""]
        table = []
        for b in bursts:
            table.append([targets[b.target].label, b.round + 1,
                          f"{b.answered:,} / {b.conns:,}", f"{b.all_connected_s:.3f}",
                          f"{b.all_answered_s:.3f}" if b.complete else
                          f"not all ({b.answered:,} answered)",
                          f"{b.answer_p50_s:.3f}" if b.answered else "-",
                          f"{b.answer_p99_s:.3f}" if b.answered else "-",
                          f"{b.overflows} / {b.drops}", b.errors])
        lines += markdown_table(["target", "round", "answered", "all connected (s)",
                                 "all answered (s)", "answer p50 (s)", "answer p99 (s)",
                                 "overflows / drops", "errors"], table)
        lines.append("")

    if context.get("check"):
        lines += ["### Does the load generator keep up?", "",
                  f"redis-benchmark (Redis's own C client, `-c 50 -n "
                  f"{args.check_requests:,} -d {args.value_bytes} -r {args.keyspace}`) and "
                  f"bench/load.c (50 connections, {args.duration:g} s), one after the other "
                  f"on the same server ({context['check_target']}). Client CPU from "
                  "getrusage; `share` = of one core.", ""]
        table = [[c["tool"], c["op"], fmt_rate(c["rate"]), fmt_ms(c["p50_us"]),
                  fmt_ms(c["p99_us"]), f"{c['cpu_us_per_op']:.1f}", f"{c['share']:.0%}"]
                 for c in context["check"]]
        lines += markdown_table(["client", "op", "ops/s", "p50 ms", "p99 ms",
                                 "client CPU µs/op", "share"], table)
        lines.append("")

    if context.get("plots"):
        lines += ["### Plots", ""]
        lines += [f"![{name}]({path})" for name, path in context["plots"]]
        lines.append("")

    problems = []
    for (sc, tkey), cell in sorted(cells.items()):
        if cell.errors:
            problems.append(f"{sc} on {targets[tkey].label}: {cell.errors} errors, e.g. "
                            f"`{cell.error_sample}`")
        if cell.load_share > CLIENT_BOUND:
            problems.append(f"{sc} on {targets[tkey].label}: the load generator used "
                            f"{cell.load_share:.0%} of a core: client-bound, the server may "
                            "be faster than shown")
    for b in bursts:
        if b.errors:
            problems.append(f"burst on {targets[b.target].label}: {b.errors} errors, e.g. "
                            f"`{b.error_sample}`")
    problems += context["log_findings"]
    if context["other_max"] > 0.5:
        problems.append(f"other processes used up to {context['other_max']:.0%} of a core "
                        "during some runs (a shared machine): those figures are low")
    lines += ["### Errors and anomalies", ""]
    lines += [f"- {p}" for p in problems] or [
        "None: every reply was the expected one, no row was client-bound, and the "
        "replicas' logs show no error, election or role change while they were measured."]
    if context["pulls"]:
        lines += ["", "Anti-entropy pulls logged while measured:", ""]
        lines += [f"- {p}" for p in context["pulls"]]
    lines.append("")
    return "\n".join(lines)


def key_bound(cells: dict, scenario: str, target: str) -> bool:
    cell = cells.get((scenario, target))
    return cell is not None and cell.load_share > CLIENT_BOUND


def results_json(args, targets, cells, bursts, runs, context) -> dict:
    return {
        "section": args.section,
        "command": args.invoked_as,
        "code": args.code.version,
        "fingerprint": args.code.fingerprint,
        "started": args.code.started.isoformat(),
        "settings": {"rounds": args.rounds, "duration": args.duration, "warmup": args.warmup,
                     "value_bytes": args.value_bytes, "keyspace": args.keyspace,
                     "sweep": args.sweep, "burst_conns": args.burst_conns,
                     "check_requests": args.check_requests},
        "targets": {k: {"label": t.label, "kind": t.kind, "size": t.size,
                        "quorum": t.quorum} for k, t in targets.items()},
        "scenarios": [dataclasses.asdict(s) for s in scenarios(args.sweep)],
        "cells": [dataclasses.asdict(c) for c in cells.values()],
        "runs": [dataclasses.asdict(r) for r in runs],
        "bursts": [dataclasses.asdict(b) for b in bursts],
        "goals": [{"name": g.name, "value": g.value if g.known and g.value != float("inf")
                   else None, "threshold": g.threshold, "unit": g.unit, "met": g.met,
                   "rounds": [v if v == v and v != float("inf") else None
                              for v in g.rounds]}
                  for g in goals(cells, bursts, runs)],
        "context": {k: v for k, v in context.items()
                    if isinstance(v, (str, int, float, list)) and k != "plots"},
    }


# Main -------------------------------------------------------------------------------------


def compile_load(workdir: str) -> tuple[str, str]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise SystemExit("bench/suite.py needs a C compiler for bench/load.c: "
                         "apt-get install -y gcc")
    binary = os.path.join(workdir, "load")
    done = subprocess.run([cc, "-O2", "-o", binary, LOAD_C], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compiling bench/load.c failed:\n{done.stderr}")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return binary, f"`{os.path.basename(cc)} -O2` ({version.splitlines()[0] if version else cc})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="the figures for docs: 3 rounds of 2 s runs, the whole "
                             "connection sweep, a 40 s burst timeout (about 6 min)")
    parser.add_argument("--rounds", type=int, help="rounds (quick 1, --full 3)")
    parser.add_argument("--duration", type=float, help="measured seconds per run "
                        "(quick 0.5, --full 2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each run "
                        "(quick 0.2, --full 0.5)")
    parser.add_argument("--sweep", help="connection counts for the throughput plot "
                        "(quick 1,10,50; --full 1,5,10,25,50,100)")
    parser.add_argument("--burst-conns", type=int, default=2000)
    parser.add_argument("--burst-timeout", type=float,
                        help="seconds to wait for the burst (quick 10, --full 40)")
    parser.add_argument("--skip-burst", action="store_true")
    parser.add_argument("--check-requests", type=int,
                        help="requests per redis-benchmark run in the load generator check "
                             "(quick 20000, --full 100000; 0 skips the check)")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--keyspace", type=int, default=1000,
                        help="keys written before and read by the GET runs (default 1000)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario keys to run (e.g. get-50,put-50)")
    parser.add_argument("--targets", default="",
                        help="comma-separated targets to run them on (e.g. R3,R3m; default "
                             "every scenario's own: R1 R3 R3m R5 R5m R3f replicad, Ra Re Redis)")
    parser.add_argument("--skip-redis", action="store_true", help="measure replicad only")
    parser.add_argument("--baseline", metavar="JSON",
                        help="an earlier run's results (docs/suite/<section>.json): adds "
                             "its figures and the ratio to them")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots here (default with "
                        "--write: docs/suite)")
    parser.add_argument("--at", metavar="REV",
                        help="measure the replicad of git revision REV (e.g. 3566276, the "
                             "code before issue #10) instead of this working tree: a clone "
                             "at REV in a temporary directory, this suite copied in, "
                             "results written here as usual")
    parser.add_argument("--docs-root", default=_common.ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--invoked-as", default=None, help=argparse.SUPPRESS)
    _common.add_output_arguments(parser, "suite", "suite-before")
    _common.add_keep_argument(parser)
    args = parser.parse_args(argv)
    args.invoked_as = args.invoked_as or _common.command_line()
    preset = FULL if args.full else QUICK
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.sweep = sorted({int(x) for x in str(args.sweep).split(",") if x.strip()})
    except ValueError:
        parser.error("--sweep takes comma-separated connection counts")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.burst_conns < 1 \
            or not args.sweep or min(args.sweep) < 1 or args.keyspace < 1:
        parser.error("--rounds, --duration, --burst-conns, --sweep and --keyspace must be "
                     "positive")
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    args.targets = {x.strip() for x in args.targets.split(",") if x.strip()}
    if args.targets - {*REPLICAD_SHAPES, *REDIS_MODES}:
        parser.error(f"unknown target(s) {sorted(args.targets)}; known: "
                     f"{', '.join([*REPLICAD_SHAPES, *REDIS_MODES])}")
    known = {s.key for s in scenarios(args.sweep)}
    if args.only - known:
        parser.error(f"unknown scenario(s) {sorted(args.only - known)}; known: "
                     f"{', '.join(sorted(known))}")
    return args


SUITE_FILES = ("load.c", "suite.py", "plots.py", "_common.py")


def run_at(args: argparse.Namespace, argv: list[str]) -> int:
    """--at REV: this script again, in a clone at REV, with that replicad on PYTHONPATH.

    The clone's own bench/throughput.py is used (it matches its replicad); the suite's
    files are copied in, with bench/_common.py (the suite needs its newer helpers; of
    replicad it only reads the config's Timers, which every measured revision has).
    Paths given on the command line are resolved here first, and the results go to
    this checkout's docs (--docs-root).
    """
    clone = tempfile.mkdtemp(prefix="replicad-bench-at-")
    try:
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", _common.ROOT,
                        clone], check=True)
        subprocess.run(["git", "-C", clone, "checkout", "-q", "--detach", args.at],
                       check=True)
        for name in SUITE_FILES:
            shutil.copy2(os.path.join(HERE, name), os.path.join(clone, "bench", name))
        rest, skip = [], False
        for i, word in enumerate(argv):
            if skip:
                skip = False
                continue
            if word == "--at":
                skip = True
            elif word.startswith("--at="):
                pass
            elif word in ("--json", "--plots", "--baseline") and i + 1 < len(argv):
                rest += [word, os.path.abspath(argv[i + 1])]
                skip = True
            else:
                rest.append(word)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [clone, env.get("PYTHONPATH")]))
        command = [sys.executable, os.path.join(clone, "bench", "suite.py"), *rest,
                   "--docs-root", os.path.abspath(args.docs_root),
                   "--invoked-as", args.invoked_as]
        return subprocess.run(command, env=env, cwd=clone).returncode
    finally:
        if args.keep:
            print(f"clone at {args.at} kept in {clone}", file=sys.stderr)
        else:
            shutil.rmtree(clone, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.at:
        return run_at(args, argv)
    results_path = os.path.join(args.docs_root, "docs", "benchmarks.md")
    suite_dir = os.path.join(args.docs_root, "docs", "suite")
    args.code = _common.CodeWatch()
    started = now()

    progress = _common.progress_printer(started)

    baseline = None
    if args.baseline:
        with open(args.baseline, encoding="utf-8") as handle:
            baseline = json.load(handle)
    workdir = tempfile.mkdtemp(prefix="replicad-bench-suite-")
    binary, cc = compile_load(workdir)
    redis_binary = None if args.skip_redis else shutil.which("redis-server")
    context: dict = {"redis_settings": [], "log_findings": [], "pulls": [], "cc": cc,
                     "redis_missing": redis_binary is None and not args.skip_redis,
                     "redis": redis_version(redis_binary) if redis_binary else "not run",
                     "filesystem": filesystem_of(os.path.realpath(workdir)),
                     "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
                     "speed_start": cpu_speed()}
    if context["redis_missing"]:
        print(INSTALL_HINT, file=sys.stderr, flush=True)
    plan = [s for s in scenarios(args.sweep) if not args.only or s.key in args.only]
    wanted = {t for s in plan for t in s.targets}
    if not args.skip_burst:
        wanted |= {"R3", "Ra"}
    if args.targets:
        wanted &= args.targets
    if redis_binary is None:
        wanted -= set(REDIS_MODES)
    targets: dict[str, Target] = {}
    servers: list[Redis] = []
    suite = Suite(args, binary, progress)
    try:
        context["fsync"] = fsync_probe(workdir)
        for key in REPLICAD_SHAPES:
            if key in wanted:
                targets[key] = start_cluster(key, workdir, progress)
        for key, mode in REDIS_MODES.items():
            if key in wanted:
                server = Redis(redis_binary, workdir, mode)
                context["redis_settings"].append(server.settings)
                server.start()
                servers.append(server)
                targets[key] = redis_target(key, server)
        for target in targets.values():
            if target.kind == "replicad":
                settle_cluster(target, progress)
        order = [k for k in (*REPLICAD_SHAPES, *REDIS_MODES) if k in targets]
        targets = {k: targets[k] for k in order}
        check = next((targets[k] for k in ("Re", "Ra") if k in targets), None)
        if not args.check_requests:
            check = None
        readers = [k for k in order if any(s.op == "get" and k in s.targets for s in plan)
                   or (check is not None and k == check.key)]
        for key in readers:
            suite.preload(targets[key])
        progress(f"preloaded {args.keyspace:,} keys into {', '.join(readers)}")
        offsets = {k: log_offsets(t.cluster) for k, t in targets.items() if t.cluster}
        everything = [pid for t in targets.values() for _, pid in t.processes()]
        idle0, t0 = cpu_seconds(everything), now()
        time.sleep(1.0)
        context["idle_share"] = (cpu_seconds(everything) - idle0) / (now() - t0)
        for round_ in range(args.rounds):
            for sc in plan:
                present = [t for t in sc.targets if t in targets]
                shift = round_ % len(present) if present else 0
                for tkey in present[shift:] + present[:shift]:
                    suite.run(sc, targets[tkey], round_)
            if not args.skip_burst:
                for tkey in (["R3", "Ra"] if round_ % 2 == 0 else ["Ra", "R3"]):
                    if tkey in targets:
                        suite.burst(targets[tkey], round_)
                        wait_serving(targets[tkey], binary)
                        time.sleep(1.0)   # let the closed connections drain
        if check is not None:
            context["check"] = loadgen_check(suite, check, args.check_requests)
            context["check_target"] = check.label
        for key, target in targets.items():
            if target.cluster is not None:
                target.cluster.check_alive()
                found, pulls = log_findings(target.cluster, target.label, offsets[key])
                context["log_findings"] += found
                context["pulls"] += pulls
    except BaseException:
        progress(f"failed; logs kept in {workdir}")
        for target in targets.values():
            if target.cluster is not None:
                target.cluster.stop()
        for server in servers:
            server.stop()
        raise
    for target in targets.values():
        if target.cluster is not None:
            target.cluster.stop()
    for server in servers:
        server.stop()
    cells = aggregate(suite.runs)
    others = [r.other_cpu_s / r.wall_s for r in suite.runs if r.wall_s]
    context["other_share"] = median(others) if others else float("nan")
    context["other_max"] = max(others) if others else float("nan")
    context["elapsed"] = now() - started
    context["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    context["speed_end"] = cpu_speed()

    data = results_json(args, targets, cells, suite.bursts, suite.runs, context)
    plot_dir = args.plots or (suite_dir if args.write else None)
    if plot_dir:
        try:
            import plots
            written = plots.make_plots(data, plot_dir, args.section)
        except ImportError as e:
            progress(f"no plots: {e} (pip install matplotlib into the venv)")
        else:
            rel = os.path.relpath(plot_dir, os.path.dirname(results_path))
            context["plots"] = [(name, f"{rel}/{os.path.basename(p)}") for name, p in written]
            progress("plots: " + ", ".join(p for _, p in written))
    text = report(args, targets, cells, suite.bursts, context, baseline, suite.runs)
    json_path = args.json or (os.path.join(suite_dir, f"{args.section}.json")
                              if args.write else None)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, default=str)
            handle.write("\n")
        progress(f"results: {json_path}")
    if args.keep:
        progress(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    if args.write:
        _common.write_section(args.section, text, results_path)
        progress(f"wrote the {args.section} section of {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
