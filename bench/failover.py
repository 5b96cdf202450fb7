"""Failover benchmark (issue #3): what a client sees when the coordinator is killed.

Two measurements, each on real ``twistd replicad`` processes on 127.0.0.1 (LocalCluster
in a temporary directory, free ports):

1. Client-observed gap.  Three replicas; one writer thread with a BlockingClient over the
   static server list writes keys back to back (each PUT acknowledged before the next).
   The coordinator is killed with SIGKILL.  The *failover gap* is the time between the
   last write the old coordinator acknowledged and the first one a new coordinator
   acknowledged; then the killed replica is restarted, bullies its way back, and the
   *bully-back gap* is measured the same way (last ack by the interim coordinator to
   first ack by the returning one).  Repeated --runs times.

2. Election time vs cluster size.  For each size, the coordinator is killed --election-runs
   times; the time from the kill until every live replica names the same new coordinator
   is measured by polling every ~10 ms, with two observers:

   - ``status``: a client STATUS request to every survivor.  Every client connection to a
     follower makes it ping its coordinator (client-triggered detection), so this is
     detection on demand + election + announcement.
   - ``peer``: a PING over the authenticated peer protocol (the benchmark knows the
     cluster secret it generated).  Peer PINGs do not trigger detection, so the
     survivors notice the death on their own (closed connection, heartbeat):
     detection without clients + election + announcement.

   The killed replica is restarted after each kill; the time from its restart until every
   replica names it again (process start-up included) is reported too.

Results are printed as markdown; with --write they also replace the "failover" section
of docs/benchmarks.md.  Nothing but 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import _common
from _common import Summary, markdown_table, ms

from replicad import peerwire
from replicad.client import (
    BlockingClient,
    ClientError,
    NoServerAvailable,
    OutcomeUnknown,
    build_request,
    put_result,
)
from replicad.cluster import LocalCluster, find_free_base_port, parse_settings

now = time.monotonic
WALL_OFFSET = time.time() - time.monotonic()   # monotonic -> wall clock (replica logs)
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


class TracingCluster(LocalCluster):
    """A LocalCluster whose replicas log with microsecond timestamps (--trace)."""

    def command(self, i: int) -> list[str]:
        command = super().command(i)
        at = command.index("replicad")
        return [*command[:at], "--logger", _common.TRACE_LOGGER, *command[at:]]


def make_cluster(args: argparse.Namespace, size: int, data_dir: str) -> LocalCluster:
    kind = TracingCluster if args.trace else LocalCluster
    return kind(size, find_free_base_port(size), data_dir, overrides=args.overrides)


# The writer ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ack:
    sent: float
    acked: float
    by: int | None      # the coordinator that served the write (reply meta "by")
    here: int | None    # the replica the client reached (it may have forwarded)


@dataclasses.dataclass(frozen=True)
class Failure:
    at: float
    kind: str
    message: str


class Writer(threading.Thread):
    """PUTs w00000001, w00000002, ... back to back until stopped."""

    def __init__(self, servers: list[str], value_bytes: int, timeout_s: float):
        super().__init__(name="writer", daemon=True)
        self.client = BlockingClient(servers, timeout_s=timeout_s)
        self.value = "v" * value_bytes
        self.acks: list[Ack] = []          # appended by this thread only
        self.failures: list[Failure] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            n += 1
            sent = now()
            try:
                reply, address = self.client.exchange(
                    build_request("PUT", f"w{n:08d}", self.value)
                )
                put_result(reply, address)
            except OutcomeUnknown as e:    # includes ERR INDOUBT / QUORUM
                self.failures.append(Failure(now(), "in doubt", str(e)))
                continue
            except NoServerAvailable as e:
                self.failures.append(Failure(now(), "no server", str(e)))
                continue
            except ClientError as e:
                self.failures.append(Failure(now(), type(e).__name__, str(e)))
                continue
            meta = reply.meta
            self.acks.append(Ack(sent, now(), meta.by if meta else None,
                                 meta.here if meta else None))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def wait_for_ack(self, predicate: Callable[[Ack], bool], start: int, timeout_s: float,
                     what: str) -> int:
        """Index of the first ack at or after position start that satisfies predicate."""
        deadline = now() + timeout_s
        i = start
        while True:
            while i < len(self.acks):
                if predicate(self.acks[i]):
                    return i
                i += 1
            if now() > deadline:
                raise TimeoutError(f"no acknowledged write {what} within {timeout_s:g} s")
            if not self.is_alive():
                raise RuntimeError("the writer thread died")
            time.sleep(0.002)


# 1. Client-observed gap -----------------------------------------------------------------


@dataclasses.dataclass
class GapRun:
    failover_gap: float        # last ack by the killed coordinator -> first ack by the new one
    kill_to_ack: float         # SIGKILL sent -> first ack by the new one
    new_coordinator: int | None
    bully_gap: float           # last ack by the interim coordinator -> first by the returning one
    restart_to_ack: float      # process started -> first ack by the returning replica
    failover_failures: list[Failure]
    bully_failures: list[Failure]
    killed_at: float           # monotonic times, for the trace timelines
    new_ack_at: float
    restarted_at: float
    back_ack_at: float
    stall: str | None = None   # why no write was acknowledged until the victim returned


def measure_gap(args: argparse.Namespace, workdir: str, progress) -> tuple[list[GapRun], dict]:
    size = 3
    cluster = make_cluster(args, size, os.path.join(workdir, "gap"))
    runs: list[GapRun] = []
    with cluster:
        cluster.start()
        victim = cluster.wait_ready(timeout_s=30)
        writer = Writer(cluster.addresses(), args.value_bytes, args.client_timeout)
        writer.start()
        try:
            for run in range(1, args.runs + 1):
                victim = wait_for_coordinator(cluster, size, timeout_s=30)
                # Steady state first: the victim has acknowledged writes for a while.
                mark = len(writer.acks)
                time.sleep(args.settle)
                writer.wait_for_ack(lambda a, v=victim: a.by == v, mark, 10, f"by {victim}")
                failures_before = len(writer.failures)

                kill_index = len(writer.acks)
                killed_at = now()
                cluster.kill(victim, signal.SIGKILL)
                stall = None
                try:
                    first_new = writer.wait_for_ack(
                        lambda a, t=killed_at, v=victim: a.acked > t and a.by not in (v, None),
                        kill_index, args.stall_timeout, "after the kill",
                    )
                except TimeoutError as e:
                    if not args.restart_stalled:
                        raise stalled(cluster, writer, failures_before,
                                      f"run {run}: {e}") from None
                    stall = diagnose_stall(cluster, writer, victim, now() - killed_at)
                    progress(f"gap run {run}/{args.runs}: STALLED: {stall}")
                    first_new = None

                failures_restart = len(writer.failures)
                restarted_at = now()
                cluster.start_replica(victim)
                try:
                    first_back = writer.wait_for_ack(
                        lambda a, t=restarted_at, v=victim: a.acked > t and a.by == v,
                        kill_index if first_new is None else first_new, 30,
                        f"by the returning replica {victim}",
                    )
                except TimeoutError as e:
                    raise stalled(cluster, writer, failures_restart, f"run {run}: {e}") from None
                back_ack, interim_ack = writer.acks[first_back], writer.acks[first_back - 1]
                wait_for_coordinator(cluster, victim, timeout_s=30)

                nan = float("nan")
                new_ack = None if first_new is None else writer.acks[first_new]
                prev_ack = None if first_new is None else writer.acks[first_new - 1]
                result = GapRun(
                    failover_gap=nan if new_ack is None else new_ack.acked - prev_ack.acked,
                    kill_to_ack=nan if new_ack is None else new_ack.acked - killed_at,
                    new_coordinator=None if new_ack is None else new_ack.by,
                    bully_gap=nan if new_ack is None else back_ack.acked - interim_ack.acked,
                    restart_to_ack=back_ack.acked - restarted_at,
                    failover_failures=writer.failures[failures_before:failures_restart],
                    bully_failures=writer.failures[failures_restart:],
                    killed_at=killed_at, new_ack_at=nan if new_ack is None else new_ack.acked,
                    restarted_at=restarted_at, back_ack_at=back_ack.acked,
                    stall=stall,
                )
                runs.append(result)
                progress(
                    f"gap run {run}/{args.runs}: failover {ms(result.failover_gap)} ms "
                    f"(kill->ack {ms(result.kill_to_ack)} ms, new coordinator "
                    f"{result.new_coordinator}), bully-back {ms(result.bully_gap)} ms, "
                    f"failed writes {len(result.failover_failures)}+"
                    f"{len(result.bully_failures)}"
                )
        finally:
            writer.stop()
        totals = {
            "writes": len(writer.acks),
            "failures": list(writer.failures),
            "unattributed": sum(1 for a in writer.acks if a.by is None),
            "forwarded": sum(1 for a in writer.acks if a.by != a.here),
            "latency": Summary.of([a.acked - a.sent for a in writer.acks]),
            "timelines": timelines(args, cluster, runs) if args.trace else [],
        }
    return runs, totals


def timelines(args: argparse.Namespace, cluster: LocalCluster,
              runs: list[GapRun]) -> list[str]:
    """The replicas' log lines during the slowest and the median failover and bully-back."""
    lines: list[str] = []
    picks = []
    for label, key in (("failover", lambda r: r.failover_gap),
                       ("bully-back", lambda r: r.bully_gap)):
        ordered = sorted((i for i in range(len(runs)) if runs[i].stall is None),
                         key=lambda i, k=key: k(runs[i]))
        if not ordered:
            continue
        for which, index in (("slowest", ordered[-1]), ("median", ordered[len(ordered) // 2])):
            picks.append((label, which, index))
    stalled_runs = [i for i in range(len(runs)) if runs[i].stall is not None]
    if stalled_runs:
        picks.append(("stalled failover", "first", stalled_runs[0]))
    for label, which, index in picks:
        run = runs[index]
        limit = None
        if label == "failover":
            start, end, what = run.killed_at, run.new_ack_at, "SIGKILL"
        elif label == "stalled failover":
            start, end, what = run.killed_at, run.killed_at + 1.0, "SIGKILL"
            limit = 40
        else:
            start, end, what = run.restarted_at, run.back_ack_at, "restart"
        if limit is None:
            heading = (f"the writer's first acknowledged write under the new coordinator at "
                       f"{(end - start) * 1000:.0f} ms")
        else:
            heading = f"the first {limit} lines of the first second"
        lines += ["", f"{which} {label} (run {index + 1}), ms after the {what}; {heading}:",
                  "", "```"]
        events = []
        for i in cluster.ids:
            for t, system, text in _common.read_trace(
                cluster.log_path(i), start + WALL_OFFSET - 0.005, end + WALL_OFFSET + 0.005
            ):
                if system.startswith("replicad."):
                    events.append((t - WALL_OFFSET - start, i, text))
        failures = run.bully_failures if label == "bully-back" else run.failover_failures
        for f in failures:
            if f.at <= end + 0.005:
                events.append((f.at - start, 0, f"writer: {f.kind}: {f.message}"))
        for offset, i, text in sorted(events)[:limit]:
            lines.append(f"{offset * 1000:7.1f}  {f'r{i}' if i else '--'}  {text}")
        lines.append("```")
    return lines


def diagnose_stall(cluster: LocalCluster, writer: Writer, victim: int, waited_s: float) -> str:
    """Why the writer got no acknowledgement: compare its session with the survivors."""
    need = writer.client.session.write
    statuses = {i: s for i, s in cluster.statuses(0.5).items() if s is not None}
    named = sorted({str(s.get("coordinator")) for s in statuses.values()})
    best: dict[str, int] = {}   # per origin, the most any live replica has
    for status in statuses.values():
        clock = status.get("clock")
        for origin, count in (clock.items() if isinstance(clock, dict) else ()):
            best[origin] = max(best.get(origin, 0), int(count))
    lacking = {o: n for o, n in need.items() if n > best.get(str(o), 0)}
    text = (f"no write acknowledged {waited_s:.1f} s after the kill; the live replicas name "
            f"coordinator {'/'.join(named) or '?'}; their clocks: "
            + "; ".join(f"r{i} {s.get('clock')}" for i, s in sorted(statuses.items())))
    if lacking:
        text += (f"; the writer's session has seen writes up to "
                 f"{', '.join(f'{o}:{n}' for o, n in lacking.items())}, which no live "
                 f"replica has (acknowledged by replica {victim}, not pushed before the kill)")
    return text


class Stalled(Exception):
    """The writer got no acknowledgement in time: the message says what the cluster did."""


def stalled(cluster: LocalCluster, writer: Writer, since: int, headline: str) -> Stalled:
    lines = [headline, "the writer's failures meanwhile:"]
    failures = writer.failures[since:]
    lines += [f"  +{(f.at - failures[0].at):.3f} s {f.kind}: {f.message}" for f in failures[:10]]
    if len(failures) > 10:
        lines.append(f"  ... {len(failures) - 10} more")
    return Stalled("\n".join(lines) + "\n" + cluster.describe("cluster state:"))


def wait_for_coordinator(cluster: LocalCluster, expected: int, timeout_s: float) -> int:
    """Wait until every live replica names expected (a returning replica bullies back)."""
    deadline = now() + timeout_s
    while True:
        if cluster.wait_ready(max(0.5, deadline - now())) == expected:
            return expected
        if now() > deadline:
            raise TimeoutError(cluster.describe(
                f"replica {expected} did not become the coordinator within {timeout_s:g} s"))
        time.sleep(0.05)


# 2. Election time vs size -------------------------------------------------------------


class PeerProbe:
    """A blocking peer-protocol PING, authenticated as a live member.

    It opens its own connection (the replicas' links are untouched) and only sends PING,
    whose answer is ``OK <role> <coordinator> <epoch> <clock>``.  Unlike a client STATUS,
    a peer PING does not make a follower check its coordinator.
    """

    def __init__(self, address: tuple[str, int], server_id: int, as_id: int, secret: str):
        self.sock = socket.create_connection(address, timeout=1.0)
        self.buffer = b""
        self.rid = 0
        hello = self._line().split(" ")
        if len(hello) != 3 or hello[0] != "HELLO" or hello[1] != str(server_id):
            raise RuntimeError(f"unexpected peer greeting {hello!r}")
        nonce = peerwire.new_nonce()
        proof = peerwire.client_proof(secret, as_id, server_id, hello[2], nonce)
        self._send(f"AUTH {as_id} {nonce} {proof}")
        welcome = self._line()
        if not welcome.startswith("WELCOME "):
            raise RuntimeError(f"peer handshake refused: {welcome!r}")

    def coordinator(self) -> int | None:
        self.rid += 1
        self._send(f"{self.rid} PING")
        frame = peerwire.parse_frame(self._line())
        if frame.rid != self.rid or frame.kind != "OK":
            raise RuntimeError(f"unexpected PING answer {frame!r}")
        coordinator = frame.payload.split(" ")[1]
        return None if coordinator == "-" else int(coordinator)

    def close(self) -> None:
        self.sock.close()

    def _send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def _line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("peer closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().rstrip("\r")


def cluster_secret(cluster: LocalCluster) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cluster.config_path, encoding="utf-8")
    return parser["cluster"]["secret"]


@dataclasses.dataclass
class ElectionRun:
    size: int
    observer: str
    agree: float          # kill -> every survivor names the new coordinator
    ready: float          # kill -> the new coordinator says ready=yes (status observer only)
    winner: int | None
    back: float           # restart -> every replica names the returning one


def observe_until_agreed(
    cluster: LocalCluster, ids: list[int], excluded: int | None, poll_s: float,
    timeout_s: float, names: Callable[[int], int | None], ready: Callable[[int], bool] | None,
    started: float,
) -> tuple[float, float, int]:
    """Poll until every id names the same coordinator (not excluded); (agree, ready, who)."""
    agreed_at = ready_at = float("nan")
    winner = None
    deadline = started + timeout_s
    while now() < deadline:
        round_started = now()
        named = {names(i) for i in ids}
        if len(named) == 1:
            (candidate,) = named
            if candidate is not None and candidate != excluded and candidate in ids:
                if winner is None:
                    winner, agreed_at = candidate, now() - started
                if ready is None:
                    return agreed_at, ready_at, winner
                if ready(winner):
                    return agreed_at, now() - started, winner
        time.sleep(max(0.0, poll_s - (now() - round_started)))
    raise TimeoutError(cluster.describe(f"replicas {ids} did not agree on a coordinator "
                                        f"within {timeout_s:g} s"))


def measure_election(args: argparse.Namespace, workdir: str, size: int,
                     progress) -> list[ElectionRun]:
    cluster = make_cluster(args, size, os.path.join(workdir, f"election-{size}"))
    results: list[ElectionRun] = []
    with cluster:
        cluster.start()
        cluster.wait_ready(timeout_s=60)
        secret = cluster_secret(cluster)

        def status_names(i: int) -> int | None:
            status = cluster.status(i, timeout_s=0.5)
            return None if status is None else status["coordinator"]

        def status_ready(i: int) -> bool:
            status = cluster.status(i, timeout_s=0.5)
            return status is not None and status.get("ready") == "yes"

        for observer in args.observers:
            for run in range(1, args.election_runs + 1):
                victim = wait_for_coordinator(cluster, size, timeout_s=60)
                # Let every link to the (returned) coordinator reconnect first: a link
                # still in its reconnect back-off does not see the kill.
                time.sleep(args.election_settle)
                survivors = [i for i in cluster.ids if i != victim]
                probes: dict[int, PeerProbe] = {}

                def peer_names(i: int, probes=probes) -> int | None:
                    return probes[i].coordinator()

                try:
                    names: Callable[[int], int | None] = status_names
                    ready: Callable[[int], bool] | None = status_ready
                    if observer == "peer":
                        for i in survivors:
                            as_id = next(j for j in survivors if j != i)
                            address = cluster.peer_address(i)
                            probes[i] = PeerProbe((address.host, address.port), i, as_id,
                                                  secret)
                        names, ready = peer_names, None
                    killed_at = now()
                    cluster.kill(victim, signal.SIGKILL)
                    agree, ready_s, winner = observe_until_agreed(
                        cluster, survivors, victim, args.poll_ms / 1000, 30, names, ready,
                        killed_at,
                    )
                finally:
                    for probe in probes.values():
                        probe.close()
                restarted_at = now()
                cluster.start_replica(victim)
                back, _, _ = observe_until_agreed(
                    cluster, cluster.ids, None, args.poll_ms / 1000, 60,
                    lambda i, v=victim: v if status_names(i) == v else None, None,
                    restarted_at,
                )
                result = ElectionRun(size, observer, agree, ready_s, winner, back)
                results.append(result)
                progress(
                    f"election size {size} [{observer}] run {run}/{args.election_runs}: "
                    f"agreed on {winner} after {ms(agree)} ms"
                    + (f", ready after {ms(ready_s)} ms" if observer == "status" else "")
                    + f"; back after restart {ms(back)} ms"
                )
    return results


# Report ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, gap: tuple[list[GapRun], dict] | None,
           elections: list[ElectionRun], elapsed_s: float) -> str:
    title = "" if args.section == "failover" else f" [{args.section}]"
    lines = [f"## Failover (bench/failover.py, issue #3){title}", "",
             "Command:", "", "```", _common.command_line(), "```", ""]
    lines += _common.machine_lines()
    lines += args.code.lines()
    lines.append(_common.timers_line())
    if args.overrides:
        lines.append("- cluster settings changed with --set: "
                     + ", ".join(f"{k}={v}" for k, v in args.overrides.items()))
    else:
        lines.append("- cluster settings: defaults (write_quorum=1)")
    lines += [f"- total run time: {elapsed_s:.0f} s", ""]

    if gap is not None:
        runs, totals = gap
        lines += [
            f"### Client-observed gap, 3 replicas, {len(runs)} kills of the coordinator", "",
            "One writer thread, BlockingClient over the static server list, "
            f"{args.value_bytes}-byte values, each PUT acknowledged before the next. "
            "Gap = time between consecutive acknowledged writes across the change of "
            "coordinator. Milliseconds.", "",
        ]
        rows = []
        ok = [r for r in runs if r.stall is None]
        for label, values in (
            ("failover gap (last ack by killed -> first ack by new)",
             [r.failover_gap for r in ok]),
            ("  SIGKILL -> first ack by new coordinator", [r.kill_to_ack for r in ok]),
            ("bully-back gap (last ack by interim -> first ack by returning)",
             [r.bully_gap for r in ok]),
            ("  restart (process start) -> first ack by returning",
             [r.restart_to_ack for r in ok]),
        ):
            s = Summary.of(values)
            rows.append([label, s.n, ms(s.median), ms(s.p99), ms(s.max), ms(s.min)])
        lines += markdown_table(["measure", "n", "median", "p99", "max", "min"], rows)
        failures = totals["failures"]
        kinds: dict[str, int] = {}
        for f in failures:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        latency = totals["latency"]
        lines += [
            "",
            f"Writes acknowledged: {totals['writes']}; steady-state PUT latency median "
            f"{latency.median * 1000:.1f} ms, p99 {latency.p99 * 1000:.1f} ms; acknowledged "
            f"through a forwarding follower: {totals['forwarded']}; "
            f"failed writes: {len(failures)}"
            + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + ")"
               if failures else "")
            + ".",
        ]
        stalls = [(i + 1, r) for i, r in enumerate(runs) if r.stall is not None]
        lines += [
            "",
            f"Stalled failovers (no write acknowledged within {args.stall_timeout:g} s of the "
            f"kill; the killed replica was then restarted, and these runs are left out of "
            f"the table above): {len(stalls)} of {len(runs)}.",
        ]
        for index, r in stalls:
            lines.append(f"- run {index}: {r.stall}; the writer got its next acknowledgement "
                         f"{ms(r.restart_to_ack)} ms after the restart")
        per_failover = [len(r.failover_failures) for r in runs]
        per_bully = [len(r.bully_failures) for r in runs]
        lines += [
            "",
            f"Failed writes per kill: {per_failover}; per bully-back: {per_bully}.",
        ]
        examples = {}
        for phase, attr in (("kill", "failover_failures"), ("bully-back", "bully_failures")):
            for r in runs:
                for f in getattr(r, attr):
                    examples.setdefault((phase, f.kind, f.message.split(" (from ")[0]), f)
        if examples:
            lines += ["", "Distinct failures seen by the writer (client exception text):", ""]
            lines += [f"- during a {phase}: `{kind}` {message}"
                      for phase, kind, message in list(examples)[:6]]
        if totals["timelines"]:
            lines += ["", "#### Timelines (--trace: replica logs with microsecond "
                      "timestamps)"]
            lines += totals["timelines"]
        lines.append("")

    if elections:
        lines += [
            "### Election time vs cluster size", "",
            f"Kill -9 of the coordinator, {args.election_runs} times per size and observer, "
            f"each {args.election_settle:g} s after the cluster agreed on it; "
            f"every survivor polled every {args.poll_ms:g} ms. `agree` = kill -> every "
            "survivor names the same new coordinator; `ready` = kill -> it answers "
            "STATUS ready=yes (it has pulled from its peers); `back` = restart of the "
            "killed replica (process start-up included) -> every replica names it again. "
            "Milliseconds.", "",
        ]
        rows = []
        for size in args.sizes:
            for observer in args.observers:
                sample = [r for r in elections if r.size == size and r.observer == observer]
                if not sample:
                    continue
                agree = Summary.of([r.agree for r in sample])
                ready = Summary.of([r.ready for r in sample if r.ready == r.ready])
                back = Summary.of([r.back for r in sample])
                rows.append([
                    size, observer, agree.n, ms(agree.median), ms(agree.p99), ms(agree.max),
                    ms(ready.median), ms(ready.p99), ms(back.median), ms(back.p99),
                ])
        lines += markdown_table(
            ["replicas", "observer", "n", "agree median", "agree p99", "agree max",
             "ready median", "ready p99", "back median", "back p99"], rows)
        lines += [
            "",
            "Observers: `status` = client STATUS to each survivor (each connection makes a "
            "follower ping its coordinator: client-triggered detection); `peer` = "
            "peer-protocol PING (no side effect: the replicas notice the death on their own, "
            "from the closed connection or the heartbeat). Resolution: one polling round "
            f"(--poll-ms {args.poll_ms:g} plus the time to ask every survivor).",
            "",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10,
                        help="coordinator kills for the client-observed gap (default 10)")
    parser.add_argument("--election-runs", type=int, default=5,
                        help="kills per cluster size and observer (default 5)")
    parser.add_argument("--sizes", default="3,5,7",
                        help="cluster sizes for the election measurement (default 3,5,7)")
    parser.add_argument("--observers", default="status,peer",
                        help="status, peer or both (default status,peer)")
    parser.add_argument("--poll-ms", type=float, default=10.0,
                        help="polling interval of the election observer (default 10)")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds of steady writes before each kill (default 0.5)")
    parser.add_argument("--election-settle", type=float, default=1.0,
                        help="seconds between the cluster agreeing on the (returned) "
                             "coordinator and the next kill in the election part "
                             "(default 1; the peer links' reconnect back-off is <= 0.55 s)")
    parser.add_argument("--client-timeout", type=float, default=10.0,
                        help="the writer's BlockingClient timeout_s (default 10)")
    parser.add_argument("--stall-timeout", type=float, default=5.0,
                        help="a failover with no acknowledged write this long after the "
                             "kill counts as stalled (default 5 s)")
    parser.add_argument("--stop-on-stall", dest="restart_stalled", action="store_false",
                        help="stop at a stalled failover (keeping the logs) instead of "
                             "restarting the killed replica and going on")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a [cluster] setting for every cluster, e.g. --set "
                             "write_quorum=2 or --set ping_interval=0.2 (repeatable)")
    parser.add_argument("--skip-gap", action="store_true", help="only the election part")
    parser.add_argument("--skip-election", action="store_true", help="only the gap part")
    _common.add_output_arguments(parser, "failover", "failover-large")
    parser.add_argument("--trace", action="store_true",
                        help="replicas log with microsecond timestamps; the report shows "
                             "their log lines during the slowest and median failovers")
    _common.add_keep_argument(parser)
    args = parser.parse_args(argv)
    try:
        args.overrides = parse_settings(args.set)
    except ValueError as e:
        parser.error(str(e))
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.observers = [o.strip() for o in args.observers.split(",") if o.strip()]
    if any(o not in ("status", "peer") for o in args.observers):
        parser.error("--observers takes status and/or peer")
    if any(s < 2 for s in args.sizes):
        parser.error("cluster sizes must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.code = _common.CodeWatch()
    started = now()

    def progress(text: str) -> None:
        print(f"[{now() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="replicad-bench-failover-")
    if args.trace:   # the replicas must import bench/_common.py for --logger
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [BENCH_DIR, os.environ.get("PYTHONPATH")]))
    gap = None
    elections: list[ElectionRun] = []
    try:
        if not args.skip_gap:
            gap = measure_gap(args, workdir, progress)
        if not args.skip_election:
            for size in args.sizes:
                elections += measure_election(args, workdir, size, progress)
    except BaseException:
        progress(f"failed; cluster directories (logs) kept in {workdir}")
        raise
    else:
        if args.keep:
            progress(f"cluster directories kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(args, gap, elections, now() - started)
    _common.publish(text, args.section, args.write, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
