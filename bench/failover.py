"""Failover benchmark (issue #3): what a client sees when the coordinator fails.

Measurements on real ``twistd replicad`` processes on 127.0.0.1 (LocalCluster in a
temporary directory, free ports), for each write quorum given with --write-quorum
(default 1; ``majority`` is quorum mode: a coordinator serves only once a majority
accepted its epoch, and holds a lease):

1. Client-observed gap, for each fault given with --fault:

   - ``kill`` (default).  Three replicas; one writer thread with a BlockingClient over
     the static server list writes keys back to back (each PUT acknowledged before the
     next).  The coordinator is killed with SIGKILL.  The *failover gap* is the time
     between the last write the old coordinator acknowledged and the first one a new
     coordinator acknowledged; then the killed replica is restarted, bullies its way
     back, and the *bully-back gap* is measured the same way (last ack by the interim
     coordinator to first ack by the returning one).  Repeated --runs times.
   - ``partition``.  The same, on a ProxiedCluster (every peer connection goes through
     a fault-injecting proxy), but the coordinator is *isolated* instead of killed: its
     process keeps running, its connections stay open, the proxy holds every byte to
     and from it.  The writer's server list leaves the isolated replica out (a client on
     the majority side).  The cut is held for at least --partition-hold seconds (and
     until the majority side acknowledged a write), then healed: the healed replica,
     the highest id, bullies back, and that gap is measured like after a restart.
     During the cut two more clients talk only to the isolated replica (one-shot
     requests, no retry): GETs every --probe-ms, which tell when it stops serving
     (``ERR UNAVAILABLE``: the lease step-down in quorum mode), and PUTs, which tell
     whether it still acknowledges writes.
   - ``hang``.  The coordinator is frozen with SIGSTOP (its kernel still accepts
     connections, nothing reads them), held --hang-hold s, then sent SIGCONT; it bullies
     back.  Three kinds of client (--hang-clients), each writing alone in its own hangs:
     ``fresh`` (a new BlockingClient and ClientSession per write, the hung replica first
     in its list), ``session`` (one BlockingClient with a ClientSession that has reached
     the coordinator directly, default settings) and ``cli`` (``replicad-cli --session
     FILE put`` in a loop, one process per write).  Also reported: a write's latency
     later in the hang and how the write in flight at the SIGSTOP ended.  Issue #8's
     target: the next write acknowledged within 1 s median.

2. Election time vs cluster size.  For each size, the coordinator is killed --election-runs
   times; the time from the kill until every live replica names the same new coordinator
   is measured by polling every ~10 ms (--poll-ms), with these observers:

   - ``status``: a client STATUS request to every survivor.  Every client connection to a
     follower makes it ping its coordinator (client-triggered detection), so this is
     detection on demand + election + announcement.
   - ``log``: nothing is asked.  The replicas log with microsecond timestamps and the
     survivors' role changes ("replica 1 is now follower; coordinator 2, ...") are read
     from their logs, so the survivors notice the death on their own (closed
     connection, heartbeat): detection without clients + election + announcement.
   - ``peer`` (not by default since the peer port keeps one authenticated connection
     per member, commit 318eded): a PING over the authenticated peer protocol (the
     benchmark knows the cluster secret it generated), authenticated as another
     survivor.  Peer PINGs do not trigger detection, but the probe's handshake now
     evicts that survivor's own link into the probed replica ("replica 2 connected
     again: dropping its previous connection"), and its redial evicts the probe: the
     observer then stops with a note in the report.  (A PING also counts as contact
     from the member it authenticates as, which keeps a quorum-mode lease.)

   The killed replica is restarted after each kill; the time from its restart until every
   replica names it again (process start-up included) is reported too.

Results are printed as markdown; with --write they also replace the "failover" section
of docs/benchmarks.md.  Nothing but 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import itertools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import _common
from _common import Summary, markdown_table, ms

from replicad import peerwire, wire
from replicad.client import (
    BlockingClient,
    ClientError,
    NoServerAvailable,
    OutcomeUnknown,
    build_request,
    encode_line,
    put_result,
)
from replicad.cluster import LocalCluster, find_free_base_port, parse_settings
from replicad.identity import encode_cluster_id
from replicad.session import ClientSession
from replicad.testing.cluster import ProxiedCluster

now = time.monotonic
WALL_OFFSET = time.time() - time.monotonic()   # monotonic -> wall clock (replica logs)
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
FAULTS = ("kill", "partition", "hang")
HANG_CLIENTS = ("fresh", "session", "cli")
OBSERVERS = ("status", "peer", "log")
NAN = float("nan")


class _Tracing:
    """Replicas log with microsecond timestamps (--trace); mixed into a cluster class."""

    def command(self, i: int) -> list[str]:
        command = super().command(i)   # type: ignore[misc]
        at = command.index("replicad")
        return [*command[:at], "--logger", _common.TRACE_LOGGER, *command[at:]]


class TracingCluster(_Tracing, LocalCluster):
    pass


class TracingProxiedCluster(_Tracing, ProxiedCluster):
    pass


def make_cluster(args: argparse.Namespace, size: int, data_dir: str,
                 write_quorum: str | None = None, proxied: bool = False,
                 trace: bool | None = None) -> LocalCluster:
    overrides = dict(args.overrides)
    if write_quorum is not None:
        overrides["write_quorum"] = write_quorum
    trace = args.trace if trace is None else trace
    if proxied:
        kind: type[LocalCluster] = TracingProxiedCluster if trace else ProxiedCluster
    else:
        kind = TracingCluster if trace else LocalCluster
    return kind(size, find_free_base_port(size), data_dir, overrides=overrides)


def quorum_label(write_quorum: str) -> str:
    return f"write_quorum = {write_quorum}"


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
    """PUTs <prefix>00000001, <prefix>00000002, ... back to back until stopped: one
    BlockingClient (one ClientSession) over the static server list.  pause() / resume()
    hold the loop between two writes (the hang mode runs one kind of client at a time)."""

    kind = "session"

    def __init__(self, servers: list[str], value_bytes: int, timeout_s: float | None,
                 prefix: str = "w"):
        super().__init__(name=f"writer-{self.kind}", daemon=True)
        self.servers = servers
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.client = self.new_client()
        self.value = "v" * value_bytes
        self.acks: list[Ack] = []          # appended by this thread only
        self.failures: list[Failure] = []
        self._stop_event = threading.Event()
        self._active = threading.Event()
        self._active.set()
        self._idle = threading.Event()

    def new_client(self) -> BlockingClient:
        """The library's defaults unless --client-timeout says otherwise."""
        if self.timeout_s is None:
            return BlockingClient(self.servers, session=ClientSession())
        return BlockingClient(self.servers, timeout_s=self.timeout_s, session=ClientSession())

    @property
    def session(self) -> ClientSession:
        return self.client.session

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            if not self._active.is_set():
                self._idle.set()
                self._active.wait(0.05)
                continue
            self._idle.clear()
            n += 1
            self.write_one(f"{self.prefix}{n:08d}")
        self._idle.set()

    def write_one(self, key: str) -> None:
        sent = now()
        try:
            reply, address = self.client.exchange(build_request("PUT", key, self.value))
            put_result(reply, address)
        except OutcomeUnknown as e:    # includes ERR INDOUBT / QUORUM
            self.failures.append(Failure(now(), "in doubt", str(e)))
            return
        except NoServerAvailable as e:
            self.failures.append(Failure(now(), "no server", str(e)))
            return
        except ClientError as e:
            self.failures.append(Failure(now(), type(e).__name__, str(e)))
            return
        meta = reply.meta
        self.acks.append(Ack(sent, now(), meta.by if meta else None,
                             meta.here if meta else None))

    def hold(self) -> None:
        """No new write starts (before start(): the thread starts paused)."""
        self._active.clear()

    def pause(self) -> None:
        """Return once the write in progress (if any) is done; no new one starts."""
        self._active.clear()
        self._idle.wait(60)

    def resume(self) -> None:
        self._idle.clear()
        self._active.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._active.set()
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


class FreshWriter(Writer):
    """Every write by a new BlockingClient with a new, empty ClientSession whose server
    list starts with the replica that will hang (a client that knows nothing)."""

    kind = "fresh"

    def write_one(self, key: str) -> None:
        self.client = self.new_client()
        super().write_one(key)


class CliWriter(Writer):
    """Every write is one run of ``replicad-cli --servers ... --session FILE put KEY
    VALUE`` (default timeouts), as a shell loop would do; the session file carries the
    session from run to run.  An ack is a run that exited 0; who served it and where it
    went are read back from the session file (``last_server`` is the reply's by=,
    ``addresses[coordinator]`` the replica the next run tries first)."""

    kind = "cli"

    def __init__(self, servers: list[str], value_bytes: int, timeout_s: float | None,
                 prefix: str = "c", cli: str = "", session_path: str = ""):
        self.cli = cli
        self.session_path = session_path
        super().__init__(servers, value_bytes, timeout_s, prefix)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICAD_")}

    @property
    def session(self) -> ClientSession:
        try:
            with open(self.session_path, encoding="utf-8") as handle:
                return ClientSession.from_json(handle.read())
        except (OSError, ValueError):
            return ClientSession()

    def write_one(self, key: str) -> None:
        argv = [self.cli, "--servers", ",".join(self.servers), "--session",
                self.session_path, "put", key, self.value]
        if self.timeout_s is not None:
            argv += ["--timeout", f"{self.timeout_s:g}"]
        sent = now()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            self.failures.append(Failure(now(), "cli hung", "no exit within 120 s"))
            return
        acked = now()
        if done.returncode != 0:
            self.failures.append(Failure(acked, f"exit {done.returncode}",
                                         done.stderr.strip()[:300]))
            return
        session = self.session
        known = session.addresses.get(session.coordinator) if session.coordinator else None
        here = next((i for i, a in session.addresses.items() if a == known), None)
        self.acks.append(Ack(sent, acked, session.last_server, here))


WRITERS: dict[str, type[Writer]] = {"fresh": FreshWriter, "session": Writer, "cli": CliWriter}
CLIENT_WORDS = {
    "fresh": "fresh client (a new ClientSession per write, the hung replica first in its "
             "list)",
    "session": "library client with a session (ClientSession + BlockingClient, defaults)",
    "cli": "CLI with a session file (replicad-cli --session FILE put, one run per write)",
}


# A client that talks to one replica only (the isolated side of a partition) -----------


def one_shot(address: str, line: bytes, timeout_s: float) -> wire.Reply | str:
    """One request on a new connection, no retry: the Reply, or why there was none."""
    host, _, port = address.rpartition(":")
    deadline = now() + timeout_s
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except OSError as e:
        return f"connect failed: {e.strerror or e}"
    with sock:
        parser = wire.ReplyParser()
        buffer = b""
        try:
            sock.sendall(line)
            while True:
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    reply = parser.feed(wire.decode_line(raw))
                    if reply is not None:
                        return reply
                remaining = deadline - now()
                if remaining <= 0:
                    return f"no reply within {timeout_s:g} s"
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed the connection before a complete reply"
                buffer += chunk
        except TimeoutError:
            return f"no reply within {timeout_s:g} s"
        except OSError as e:
            return f"broke the connection ({e.strerror or e})"
        except wire.WireError as e:
            return f"garbled reply ({e.message})"


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    sent: float
    done: float
    outcome: str     # the reply status ("VALUE", "OK", ...), "ERR <code>", or a failure


def outcome_of(result: wire.Reply | str) -> str:
    if isinstance(result, str):
        return result
    if result.is_error:
        return f"ERR {result.error_code}"
    return result.status


_PROBE_KEYS = itertools.count(1)   # the isolated PUTs' keys, unique within a run


class IsolatedProbe(threading.Thread):
    """One-shot requests to a single replica, at most one per interval_s, until stopped:
    what a client that can reach only that replica sees (no retry elsewhere)."""

    def __init__(self, address: str, command: str, interval_s: float, timeout_s: float,
                 value_bytes: int):
        super().__init__(name=f"probe-{command.lower()}", daemon=True)
        self.address = address
        self.command = command
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.value = "i" * value_bytes
        self.results: list[ProbeResult] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            if self.command == "PUT":
                request = build_request("PUT", f"i{next(_PROBE_KEYS):08d}", self.value)
            else:
                request = build_request("GET", "w00000001")
            line = encode_line(request, ClientSession())
            sent = now()
            outcome = outcome_of(one_shot(self.address, line, self.timeout_s))
            self.results.append(ProbeResult(sent, now(), outcome))
            self._stop_event.wait(max(0.0, self.interval_s - (now() - sent)))

    def halt(self) -> None:
        """Send no further request (one may still be waiting for its answer)."""
        self._stop_event.set()

    def stop(self) -> None:
        self.halt()
        self.join(timeout=30)


SERVED = ("VALUE", "NOTFOUND")


@dataclasses.dataclass(frozen=True)
class IsolatedSide:
    """What the clients of the isolated replica saw during one cut: requests sent
    between the cut and the heal; times in seconds from the cut."""

    step_down: float        # answer time of the first ERR UNAVAILABLE to a GET
    last_read: float        # answer time of the last GET served before the heal
    reads_served: int       # GETs served before the heal
    writes_acked: int       # PUTs answered OK before the heal
    last_write_ack: float   # answer time of the last of them
    writes_acked_after: int   # PUTs sent during the cut, answered OK after the heal
    outcomes: dict[str, int]  # "GET ERR UNAVAILABLE" -> how many, ...

    @classmethod
    def of(cls, cut_at: float, heal_at: float, reads: list[ProbeResult],
           writes: list[ProbeResult]) -> IsolatedSide:
        reads = [r for r in reads if cut_at <= r.sent < heal_at]
        writes = [w for w in writes if cut_at <= w.sent < heal_at]
        unavailable = [r for r in reads if r.outcome == "ERR UNAVAILABLE"]
        served = [r for r in reads if r.outcome in SERVED and r.done < heal_at]
        acked = [w for w in writes if w.outcome == "OK" and w.done < heal_at]
        outcomes: dict[str, int] = {}
        for kind, results in (("GET", reads), ("PUT", writes)):
            for r in results:
                key = f"{kind} {r.outcome}"
                outcomes[key] = outcomes.get(key, 0) + 1
        return cls(
            step_down=unavailable[0].done - cut_at if unavailable else NAN,
            last_read=max(r.done for r in served) - cut_at if served else NAN,
            reads_served=len(served),
            writes_acked=len(acked),
            last_write_ack=max(w.done for w in acked) - cut_at if acked else NAN,
            writes_acked_after=sum(1 for w in writes if w.outcome == "OK"
                                   and w.done >= heal_at),
            outcomes=outcomes,
        )


# 1. Client-observed gap -----------------------------------------------------------------


@dataclasses.dataclass
class GapRun:
    failover_gap: float        # last ack by the old coordinator -> first ack by the new one
    fault_to_ack: float        # SIGKILL sent / cut ordered -> first ack by the new one
    new_coordinator: int | None
    bully_gap: float           # last ack by the interim coordinator -> first by the returning one
    recover_to_ack: float      # restart (process start) / heal -> first ack by the returning one
    failover_failures: list[Failure]
    bully_failures: list[Failure]
    fault_at: float            # monotonic times, for the trace timelines
    new_ack_at: float
    recover_at: float
    back_ack_at: float
    stall: str | None = None   # why no write was acknowledged until the victim returned
    isolated: IsolatedSide | None = None   # partition: what the isolated side's clients saw
    control_s: float = 0.0     # partition: how long the proxy took to confirm the cut
    slow_writes: list[str] = dataclasses.field(default_factory=list)   # acked, but slowly
    in_flight: str | None = None   # hang: how the write in flight at the SIGSTOP ended


@dataclasses.dataclass
class GapResult:
    write_quorum: str
    fault: str
    runs: list[GapRun]
    totals: dict
    client: str = "session"    # hang: which kind of client wrote (WRITERS)

    @property
    def title(self) -> str:
        return f"{self.fault}, {quorum_label(self.write_quorum)}"


FAULT_WORDS = {   # fault -> (the fault, the recovery), as the timelines name them
    "kill": ("SIGKILL", "restart"),
    "partition": ("cut", "heal"),
    "hang": ("SIGSTOP", "SIGCONT"),
}


def measure_gap(args: argparse.Namespace, workdir: str, progress, write_quorum: str,
                fault: str) -> GapResult:
    size = 3
    partition = fault == "partition"
    name = f"gap-{fault}-wq-{write_quorum}"
    cluster = make_cluster(args, size, os.path.join(workdir, name), write_quorum,
                           proxied=partition)
    runs: list[GapRun] = []
    tag = f"gap [{fault}, wq={write_quorum}]"
    fault_word, recover_word = FAULT_WORDS[fault]
    with cluster:
        cluster.start()
        cluster.wait_ready(timeout_s=30)
        victim = wait_for_coordinator(cluster, size, timeout_s=30)
        # A partition's writer is on the majority side: it cannot reach the victim.
        servers = [cluster.address(i) for i in cluster.ids if not (partition and i == victim)]
        writer = Writer(servers, args.value_bytes, args.client_timeout or 10.0)
        writer.start()
        probes: list[IsolatedProbe] = []
        try:
            for run in range(1, args.runs + 1):
                wait_for_coordinator(cluster, victim, timeout_s=30)
                if partition:
                    wait_settled(cluster, timeout_s=30)
                # Steady state first: the victim has acknowledged writes for a while.
                mark = len(writer.acks)
                time.sleep(args.settle)
                writer.wait_for_ack(lambda a, v=victim: a.by == v, mark, 10, f"by {victim}")
                failures_before = len(writer.failures)

                if partition:
                    probes = [
                        IsolatedProbe(cluster.address(victim), "GET", args.probe_ms / 1000,
                                      args.isolated_timeout, args.value_bytes),
                        IsolatedProbe(cluster.address(victim), "PUT",
                                      max(args.probe_ms / 1000, 0.02),
                                      args.isolated_timeout, args.value_bytes),
                    ]
                    for probe in probes:
                        probe.start()
                    time.sleep(0.05)   # both have been answered before the cut
                fault_index = len(writer.acks)
                fault_at = now()
                if partition:
                    cluster.isolate(victim)
                else:
                    cluster.kill(victim, signal.SIGKILL)
                control_s = now() - fault_at
                stall = None
                try:
                    first_new = writer.wait_for_ack(
                        lambda a, t=fault_at, v=victim: a.acked > t and a.by not in (v, None),
                        fault_index, args.stall_timeout, f"after the {fault}",
                    )
                except TimeoutError as e:
                    if not args.restart_stalled:
                        raise stalled(cluster, writer, failures_before,
                                      f"{tag} run {run}: {e}") from None
                    stall = diagnose_stall(cluster, writer, victim, now() - fault_at, fault)
                    progress(f"{tag} run {run}/{args.runs}: STALLED: {stall}")
                    first_new = None

                if partition:   # hold the cut, then heal it
                    time.sleep(max(0.0, fault_at + args.partition_hold - now()))
                failures_restart = len(writer.failures)
                recover_at = now()
                if partition:
                    for probe in probes:
                        probe.halt()
                    cluster.heal()
                else:
                    cluster.start_replica(victim)
                try:
                    first_back = writer.wait_for_ack(
                        lambda a, t=recover_at, v=victim: a.acked > t and a.by == v,
                        fault_index if first_new is None else first_new, 30,
                        f"by the returning replica {victim}",
                    )
                except TimeoutError as e:
                    raise stalled(cluster, writer, failures_restart,
                                  f"{tag} run {run}: {e}") from None
                back_ack, interim_ack = writer.acks[first_back], writer.acks[first_back - 1]
                wait_for_coordinator(cluster, victim, timeout_s=30)
                isolated = None
                if partition:
                    for probe in probes:
                        probe.stop()
                    isolated = IsolatedSide.of(fault_at, recover_at, probes[0].results,
                                               probes[1].results)
                    probes = []

                slow = []
                for a in writer.acks[fault_index:first_back + 1]:
                    if a.acked - a.sent > args.slow_write:
                        healed = a.sent >= recover_at
                        slow.append(
                            f"sent {ms(a.sent - (recover_at if healed else fault_at))} ms "
                            f"after the {recover_word if healed else fault_word} to replica "
                            f"{a.here}, served by {a.by}, took {ms(a.acked - a.sent)} ms")
                new_ack = None if first_new is None else writer.acks[first_new]
                prev_ack = None if first_new is None else writer.acks[first_new - 1]
                result = GapRun(
                    failover_gap=NAN if new_ack is None else new_ack.acked - prev_ack.acked,
                    fault_to_ack=NAN if new_ack is None else new_ack.acked - fault_at,
                    new_coordinator=None if new_ack is None else new_ack.by,
                    bully_gap=NAN if new_ack is None else back_ack.acked - interim_ack.acked,
                    recover_to_ack=back_ack.acked - recover_at,
                    failover_failures=writer.failures[failures_before:failures_restart],
                    bully_failures=writer.failures[failures_restart:],
                    fault_at=fault_at, new_ack_at=NAN if new_ack is None else new_ack.acked,
                    recover_at=recover_at, back_ack_at=back_ack.acked,
                    stall=stall, isolated=isolated, control_s=control_s, slow_writes=slow,
                )
                runs.append(result)
                text = (
                    f"{tag} run {run}/{args.runs}: failover {ms(result.failover_gap)} ms "
                    f"({fault}->ack {ms(result.fault_to_ack)} ms, new coordinator "
                    f"{result.new_coordinator}), bully-back {ms(result.bully_gap)} ms, "
                    f"failed writes {len(result.failover_failures)}+"
                    f"{len(result.bully_failures)}"
                )
                if isolated is not None:
                    text += (f"; isolated side: step-down {ms(isolated.step_down)} ms, "
                             f"last read {ms(isolated.last_read)} ms, "
                             f"{isolated.writes_acked} writes acked during the cut")
                for line in slow:
                    progress(f"  slow write: {line}")
                progress(text)
        finally:
            for probe in probes:
                probe.stop()
            writer.stop()
        totals = {
            "writes": len(writer.acks),
            "failures": list(writer.failures),
            "unattributed": sum(1 for a in writer.acks if a.by is None),
            "forwarded": sum(1 for a in writer.acks if a.by != a.here),
            "latency": Summary.of([a.acked - a.sent for a in writer.acks]),
            "servers": "all 3 replicas" if not partition else
                       f"replicas {', '.join(str(i) for i in cluster.ids if i != victim)} "
                       f"(not {victim}, the one isolated)",
            "timelines": timelines(args, cluster, runs, fault) if args.trace else [],
        }
    return GapResult(write_quorum, fault, runs, totals)


def measure_hang(args: argparse.Namespace, workdir: str, progress,
                 write_quorum: str) -> list[GapResult]:
    """--fault hang: the coordinator is frozen with SIGSTOP (its kernel still accepts
    connections, nobody reads them), held --hang-hold s, then SIGCONT.  One kind of
    client writes at a time, each in its own hang, in turn: a fresh client, a library
    client with a session, the CLI with a session file.  Between hangs the resumed
    replica bullies back and every link is up again before the next one."""
    size = 3
    name = f"gap-hang-wq-{write_quorum}"
    cluster = make_cluster(args, size, os.path.join(workdir, name), write_quorum)
    runs: dict[str, list[GapRun]] = {kind: [] for kind in args.hang_clients}
    steady: dict[str, list[float]] = {kind: [] for kind in args.hang_clients}
    while_hung: dict[str, list[float]] = {kind: [] for kind in args.hang_clients}
    writers: dict[str, Writer] = {}
    with cluster:
        cluster.start()
        cluster.wait_ready(timeout_s=30)
        victim = wait_for_coordinator(cluster, size, timeout_s=30)
        servers = cluster.addresses()
        hung_first = [cluster.address(victim)] + [a for a in servers
                                                  if a != cluster.address(victim)]
        for kind in args.hang_clients:
            options: dict = {}
            if kind == "cli":
                options = {"cli": args.cli,
                           "session_path": os.path.join(workdir, f"{name}-session.json")}
            writer = WRITERS[kind](hung_first if kind == "fresh" else servers,
                                   args.value_bytes, args.client_timeout,
                                   prefix=kind[0], **options)
            writer.hold()
            writer.start()
            writers[kind] = writer
        try:
            for run in range(1, args.runs + 1):
                for kind in args.hang_clients:
                    writer = writers[kind]
                    tag = f"gap [hang, {kind}, wq={write_quorum}]"
                    wait_for_coordinator(cluster, victim, timeout_s=30)
                    wait_settled(cluster, timeout_s=30)
                    mark = len(writer.acks)
                    writer.resume()
                    time.sleep(args.settle)
                    # The client knows the coordinator: it reached it directly (the CLI's
                    # session names its address, so its next run goes there first).
                    writer.wait_for_ack(lambda a, v=victim: a.by == v and a.here == v, mark,
                                        20, f"by {victim}, reached directly")
                    failures_before = len(writer.failures)
                    fault_index = len(writer.acks)
                    before = [b.acked - a.acked for a, b in
                              zip(writer.acks[mark:fault_index],
                                  writer.acks[mark + 1:fault_index], strict=False)]
                    steady[kind] += before
                    fault_at = now()
                    cluster.kill(victim, signal.SIGSTOP)
                    stall = None
                    try:
                        first_new = writer.wait_for_ack(
                            lambda a, t=fault_at, v=victim: a.acked > t
                            and a.by not in (v, None),
                            fault_index, args.stall_timeout, "after the SIGSTOP")
                    except TimeoutError as e:
                        if not args.restart_stalled:
                            cluster.kill(victim, signal.SIGCONT)
                            raise stalled(cluster, writer, failures_before,
                                          f"{tag} run {run}: {e}") from None
                        stall = diagnose_stall(cluster, writer, victim, now() - fault_at,
                                               "hang")
                        progress(f"{tag} run {run}/{args.runs}: STALLED: {stall}")
                        first_new = None
                    time.sleep(max(0.0, fault_at + args.hang_hold - now()))
                    failures_recover = len(writer.failures)
                    recover_index = len(writer.acks)
                    recover_at = now()
                    cluster.kill(victim, signal.SIGCONT)
                    if first_new is not None:
                        while_hung[kind] += [a.acked - a.sent for a in
                                             writer.acks[first_new + 1:recover_index]
                                             if a.sent < recover_at]
                    try:
                        first_back = writer.wait_for_ack(
                            lambda a, t=recover_at, v=victim: a.acked > t and a.by == v,
                            fault_index if first_new is None else first_new, 30,
                            f"by the resumed replica {victim}")
                    except TimeoutError as e:
                        raise stalled(cluster, writer, failures_recover,
                                      f"{tag} run {run}: {e}") from None
                    writer.pause()
                    back_ack, interim_ack = writer.acks[first_back], writer.acks[first_back - 1]
                    slow = []
                    for a in writer.acks[fault_index:first_back + 1]:
                        if a.acked - a.sent > args.slow_write:
                            resumed = a.sent >= recover_at
                            offset = a.sent - (recover_at if resumed else fault_at)
                            slow.append(
                                f"sent {ms(abs(offset))} ms "
                                f"{'after' if offset >= 0 else 'before'} the "
                                f"{'SIGCONT' if resumed else 'SIGSTOP'}, served by {a.by}, "
                                f"took {ms(a.acked - a.sent)} ms")
                    new_ack = None if first_new is None else writer.acks[first_new]
                    prev_ack = None if first_new is None else writer.acks[first_new - 1]
                    result = GapRun(
                        failover_gap=NAN if new_ack is None else new_ack.acked - prev_ack.acked,
                        fault_to_ack=NAN if new_ack is None else new_ack.acked - fault_at,
                        new_coordinator=None if new_ack is None else new_ack.by,
                        bully_gap=back_ack.acked - interim_ack.acked,
                        recover_to_ack=back_ack.acked - recover_at,
                        failover_failures=writer.failures[failures_before:failures_recover],
                        bully_failures=writer.failures[failures_recover:],
                        fault_at=fault_at,
                        new_ack_at=NAN if new_ack is None else new_ack.acked,
                        recover_at=recover_at, back_ack_at=back_ack.acked,
                        stall=stall, slow_writes=slow,
                        in_flight=in_flight_note(writer.acks[fault_index:first_back + 1],
                                                 fault_at),
                    )
                    runs[kind].append(result)
                    for line in slow:
                        progress(f"  slow write: {line}")
                    progress(
                        f"{tag} run {run}/{args.runs}: failover {ms(result.failover_gap)} ms "
                        f"(SIGSTOP->ack {ms(result.fault_to_ack)} ms, new coordinator "
                        f"{result.new_coordinator}), back after SIGCONT "
                        f"{ms(result.bully_gap)} ms, failed writes "
                        f"{len(result.failover_failures)}+{len(result.bully_failures)}")
        finally:
            cluster.kill(victim, signal.SIGCONT)   # only sent: a no-op if it runs
            for writer in writers.values():
                writer.stop()
        results = []
        for kind in args.hang_clients:
            writer = writers[kind]
            totals = {
                "writes": len(writer.acks),
                "failures": list(writer.failures),
                "unattributed": sum(1 for a in writer.acks if a.by is None),
                "forwarded": sum(1 for a in writer.acks if a.by != a.here),
                "latency": Summary.of([a.acked - a.sent for a in writer.acks]),
                "steady_interval": Summary.of(steady[kind]),
                "while_hung": Summary.of(while_hung[kind]),
                "servers": ", ".join(hung_first if kind == "fresh" else servers),
                "timelines": timelines(args, cluster, runs[kind], "hang")
                if args.trace else [],
            }
            results.append(GapResult(write_quorum, "hang", runs[kind], totals, client=kind))
    return results


def in_flight_note(acks: list[Ack], fault_at: float) -> str | None:
    """The write that was in flight when the fault came, if one was: how it ended."""
    for a in acks:
        if a.sent < fault_at < a.acked:
            return (f"the write in flight at the SIGSTOP (sent {ms(fault_at - a.sent)} ms "
                    f"before it) was acknowledged by replica {a.by} "
                    f"{ms(a.acked - fault_at)} ms after it")
    return None


def wait_settled(cluster: LocalCluster, timeout_s: float) -> None:
    """Every replica answers STATUS and reports every peer up (its links are back)."""

    def settled() -> bool:
        for status in cluster.statuses(0.5).values():
            peers = str((status or {}).get("peers", ""))
            if status is None or not peers or "down" in peers:
                return False
        return True

    cluster.wait_until(settled, timeout_s, what="every replica to report every peer up")


TIMELINE_LINES = 60   # at most this many log lines per timeline


def timelines(args: argparse.Namespace, cluster: LocalCluster, runs: list[GapRun],
              fault: str) -> list[str]:
    """The replicas' log lines during the slowest and the median failover and bully-back."""
    fault_word, recover_word = FAULT_WORDS[fault]
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
        if label == "failover":
            start, end, what = run.fault_at, run.new_ack_at, fault_word
        elif label == "stalled failover":
            start, end, what = run.fault_at, run.fault_at + 1.0, fault_word
        else:
            start, end, what = run.recover_at, run.back_ack_at, recover_word
        if label == "stalled failover":
            heading = "the first second"
        else:
            heading = (f"the writer's first acknowledged write under the new coordinator at "
                       f"{(end - start) * 1000:.0f} ms")
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
        side = run.isolated
        if side is not None and label != "bully-back":
            for at, text in ((side.last_read, "isolated-side client: last GET served"),
                             (side.step_down, "isolated-side client: first ERR UNAVAILABLE"),
                             (side.last_write_ack, "isolated-side client: last PUT acked")):
                if at == at and at <= end - start + 0.005:
                    events.append((at, 0, text))
        events.sort()
        shown = events[:TIMELINE_LINES]
        more = (f"; the first {TIMELINE_LINES} of {len(events)} lines"
                if len(events) > TIMELINE_LINES else "")
        lines += ["", f"{which} {label} (run {index + 1}), ms after the {what}; "
                      f"{heading}{more}:", "", "```"]
        for offset, i, text in shown:
            lines.append(f"{offset * 1000:7.1f}  {f'r{i}' if i else '--'}  {text}")
        lines.append("```")
    return lines


def diagnose_stall(cluster: LocalCluster, writer: Writer, victim: int, waited_s: float,
                   fault: str) -> str:
    """Why the writer got no acknowledgement: compare its session with the survivors."""
    need = writer.session.write
    others = [i for i in cluster.live_ids() if i != victim]
    statuses = {i: s for i in others if (s := cluster.status(i, 0.5)) is not None}
    named = sorted({str(s.get("coordinator")) for s in statuses.values()})
    best: dict[str, int] = {}   # per origin, the most any live replica has
    for status in statuses.values():
        clock = status.get("clock")
        for origin, count in (clock.items() if isinstance(clock, dict) else ()):
            best[origin] = max(best.get(origin, 0), int(count))
    lacking = {o: n for o, n in need.items() if n > best.get(str(o), 0)}
    side = "replicas on the majority side" if fault == "partition" else "live replicas"
    text = (f"no write acknowledged {waited_s:.1f} s after the {fault}; the {side} name "
            f"coordinator {'/'.join(named) or '?'}; their clocks: "
            + "; ".join(f"r{i} {s.get('clock')}" for i, s in sorted(statuses.items())))
    if lacking:
        text += (f"; the writer's session has seen writes up to "
                 f"{', '.join(f'{o}:{n}' for o, n in lacking.items())}, which none of them "
                 f"has (acknowledged by replica {victim}, not pushed before the {fault})")
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


class ProbeClosed(RuntimeError):
    """The replica closed the peer observer's connection after the handshake."""

    def __init__(self, server_id: int, detail: str):
        super().__init__(
            f"replica {server_id} closed the peer observer's connection ({detail}). A "
            "replica that keeps one authenticated connection per member evicts the older "
            "one when the member it impersonates redials (and the probe's own handshake "
            "evicted that member's link first): the peer observer is not side-effect free "
            "there; measure with --observers status,log"
        )


class PeerProbe:
    """A blocking peer-protocol PING, authenticated as a live member.

    It opens its own connection (the replicas' links are untouched) and only sends
    ``<rid> PING 0`` (epoch 0: older than any, so it changes nothing and is merely
    answered), whose answer is ``OK <role> <coordinator> <epoch> <clock> <cluster|->``.
    Unlike a client STATUS, a peer PING does not make a follower check its coordinator.
    It authenticates unbound (cluster ``-``), which every replica accepts.
    """

    def __init__(self, address: tuple[str, int], server_id: int, as_id: int, secret: str):
        self.sock = socket.create_connection(address, timeout=1.0)
        self.buffer = b""
        self.rid = 0
        self.server_id = server_id
        hello = self._line().split(" ")
        if len(hello) != 4 or hello[0] != "HELLO" or hello[1] != str(server_id):
            self.close()
            raise RuntimeError(f"unexpected peer greeting {hello!r}")
        server_cluster = peerwire.parse_cluster_id(hello[3])
        nonce = peerwire.new_nonce()
        fields = (secret, as_id, server_id, hello[2], nonce)
        proof = peerwire.client_proof(*fields, server_cluster=server_cluster,
                                      client_cluster=None)
        self._send(f"AUTH {as_id} {nonce} {proof} {encode_cluster_id(None)}")
        welcome = self._line().split(" ")
        expected = peerwire.server_proof(*fields, server_cluster=server_cluster,
                                         client_cluster=None)
        if (len(welcome) != 2 or welcome[0] != "WELCOME"
                or not peerwire.proofs_match(expected, welcome[1])):
            self.close()
            raise RuntimeError(f"peer handshake refused: {' '.join(welcome)!r}")

    def status(self) -> peerwire.PeerStatus:
        self.rid += 1
        verb, payload = peerwire.encode_message(peerwire.Ping(0))
        try:
            self._send(f"{self.rid} {verb} {payload}")
            line = self._line()
        except OSError as e:   # ConnectionError included
            raise ProbeClosed(self.server_id, str(e)) from None
        if line.startswith("ERR "):
            raise ProbeClosed(self.server_id, line)
        frame = peerwire.parse_frame(line)
        if frame.rid != self.rid or frame.kind != "OK":
            raise RuntimeError(f"unexpected PING answer {frame!r}")
        return peerwire.PeerStatus.parse(self.server_id, frame.payload)

    def coordinator(self) -> int | None:
        return self.status().coordinator

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
    write_quorum: str = "1"


def observe_until_agreed(
    cluster: LocalCluster, ids: list[int], excluded: int | None, poll_s: float,
    timeout_s: float, names: Callable[[int], int | None], ready: Callable[[int], bool] | None,
    started: float,
) -> tuple[float, float, int]:
    """Poll until every id names the same coordinator (not excluded); (agree, ready, who)."""
    agreed_at = ready_at = NAN
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


_ROLE_LINE = re.compile(r"^replica (\d+) is now ([\w-]+); coordinator (\w+), epoch \d+$")


def named_in_log(cluster: LocalCluster, i: int, since_wall: float) -> tuple[float, int | None]:
    """(since when, coordinator): the coordinator replica i's role changes logged since
    since_wall name last, and the wall time from which they have named it without a
    break (a later change in the same coordinator's epoch does not restart it); (nan, -1)
    if it logged none."""
    last: tuple[float, int | None] = (NAN, -1)
    for t, _, text in _common.read_trace(cluster.log_path(i), since_wall, math.inf):
        match = _ROLE_LINE.match(text)
        if match and int(match.group(1)) == i:
            named = None if match.group(3) == "None" else int(match.group(3))
            if named != last[1]:
                last = (t, named)
    return last


def log_agreement(cluster: LocalCluster, survivors: list[int], victim: int, killed_at: float,
                  poll_s: float, timeout_s: float) -> tuple[float, int]:
    """The ``log`` observer: asks the replicas nothing.  Reads their logs (microsecond
    timestamps) until every survivor's last role change names the same new coordinator;
    (kill -> the moment the last of them started naming it, the coordinator)."""
    since = killed_at + WALL_OFFSET
    while now() < killed_at + timeout_s:
        latest = {i: named_in_log(cluster, i, since) for i in survivors}
        named = {coordinator for _, coordinator in latest.values()}
        if len(named) == 1:
            (winner,) = named
            if winner is not None and winner != victim and winner in survivors:
                return max(t for t, _ in latest.values()) - since, winner
        time.sleep(poll_s)
    raise TimeoutError(cluster.describe(f"the logs of replicas {survivors} did not name one "
                                        f"new coordinator within {timeout_s:g} s"))


def measure_election(args: argparse.Namespace, workdir: str, size: int, progress,
                     write_quorum: str) -> list[ElectionRun]:
    cluster = make_cluster(args, size, os.path.join(workdir, f"election-{size}-wq-"
                                                             f"{write_quorum}"), write_quorum,
                           trace=args.trace or "log" in args.observers)
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
                if (size, write_quorum, observer) in args.observer_failures:
                    break
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
                    if observer == "log":
                        ready_s = NAN
                        agree, winner = log_agreement(cluster, survivors, victim, killed_at,
                                                      args.poll_ms / 1000, 30)
                    else:
                        agree, ready_s, winner = observe_until_agreed(
                            cluster, survivors, victim, args.poll_ms / 1000, 30, names,
                            ready, killed_at,
                        )
                except ProbeClosed as e:
                    # The observer cannot work here: say so, put the cluster back, go on.
                    args.observer_failures[(size, write_quorum, observer)] = str(e)
                    progress(f"election size {size} wq={write_quorum} [{observer}]: {e}")
                    if not cluster.running(victim):
                        cluster.start_replica(victim)
                    wait_for_coordinator(cluster, size, timeout_s=60)
                    continue
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
                result = ElectionRun(size, observer, agree, ready_s, winner, back,
                                     write_quorum)
                results.append(result)
                progress(
                    f"election size {size} wq={write_quorum} [{observer}] run "
                    f"{run}/{args.election_runs}: agreed on {winner} after {ms(agree)} ms"
                    + (f", ready after {ms(ready_s)} ms" if observer == "status" else "")
                    + f"; back after restart {ms(back)} ms"
                )
    return results


# Report ---------------------------------------------------------------------------------


def is_quorum_mode(write_quorum: str, size: int = 3) -> bool:
    if write_quorum.strip().lower() == "majority":
        return True
    return write_quorum.isdigit() and 2 * int(write_quorum) > size


def summary_row(label: str, values: list[float]) -> list[object]:
    s = Summary.of(values)
    return [label, s.n, ms(s.median), ms(s.p99), ms(s.max), ms(s.min)]


def gap_heading(args: argparse.Namespace, result: GapResult) -> str:
    n = len(result.runs)
    wq = result.write_quorum
    quorum = is_quorum_mode(wq)
    if result.fault == "hang":
        mode = f"quorum mode ({quorum_label(wq)})" if quorum else quorum_label(wq)
        return (f"### Hung coordinator (SIGSTOP), {mode}: {result.client} client, "
                f"3 replicas, {n} hangs")
    if result.fault == "kill":
        what = f"client-observed gap, 3 replicas, {n} kills of the coordinator"
        if quorum:
            return f"### Quorum mode ({quorum_label(wq)}): {what}"
        if len(args.write_quorums) > 1 or wq != "1":
            return f"### Client-observed gap ({quorum_label(wq)}), 3 replicas, {n} kills " \
                   f"of the coordinator"
        return f"### Client-observed gap, 3 replicas, {n} kills of the coordinator"
    what = f"the coordinator isolated (not killed), 3 replicas, {n} cuts"
    if quorum:
        return f"### Partition, quorum mode ({quorum_label(wq)}): {what}"
    return f"### Partition ({quorum_label(wq)}): {what}"


def table_command(args: argparse.Namespace, result: GapResult | None = None) -> str:
    """The command that measures one table of this report (same settings)."""
    words = [".venv/bin/python", "bench/failover.py"]
    if result is not None:
        words += ["--skip-election", "--runs", str(args.runs)]
        if result.write_quorum != "1":
            words += ["--write-quorum", result.write_quorum]
        if result.fault != "kill":
            words += ["--fault", result.fault]
        if result.fault == "hang":
            words += ["--hang-clients", result.client]
            if args.hang_hold != 2.0:
                words += ["--hang-hold", f"{args.hang_hold:g}"]
            if args.client_timeout is not None:
                words += ["--client-timeout", f"{args.client_timeout:g}"]
        if result.fault == "partition" and args.partition_hold != 3.0:
            words += ["--partition-hold", f"{args.partition_hold:g}"]
    else:
        words += ["--skip-gap", "--election-runs", str(args.election_runs)]
        if args.write_quorums != ["1"]:
            words += ["--write-quorum", ",".join(args.write_quorums)]
        if args.observers != ["status", "log"]:
            words += ["--observers", ",".join(args.observers)]
        if args.sizes != [3, 5, 7]:
            words += ["--sizes", ",".join(map(str, args.sizes))]
        if args.poll_ms != 10.0:
            words += ["--poll-ms", f"{args.poll_ms:g}"]
    words += [f"--set {name}={value}" for name, value in args.overrides.items()]
    if args.trace:
        words.append("--trace")
    return " ".join(words)


def gap_section(args: argparse.Namespace, result: GapResult) -> list[str]:
    runs, totals = result.runs, result.totals
    partition = result.fault == "partition"
    hang = result.fault == "hang"
    fault_word, recover_word = FAULT_WORDS[result.fault]
    lines = [gap_heading(args, result), ""]
    if hang:
        lines += [
            f"The coordinator (replica 3) is frozen with SIGSTOP (its kernel still accepts "
            f"connections; nothing reads them), held {args.hang_hold:g} s (longer if no "
            "write was acknowledged by then), then sent SIGCONT; it bullies back and every "
            "peer link is up again before the next hang. The writer: "
            f"{CLIENT_WORDS[result.client]}, over {totals['servers']}, "
            f"{args.value_bytes}-byte values, each PUT acknowledged before the next"
            + (f", timeout {args.client_timeout:g} s" if args.client_timeout is not None
               else ", the client's default timeouts")
            + "; before each hang it has reached replica 3 directly (the CLI: its session "
            "file names replica 3's address as the coordinator's). Gap = time between "
            "consecutive acknowledged writes across the change of coordinator. "
            "Milliseconds.",
            "",
        ]
    elif partition:
        lines += [
            "The coordinator (replica 3) is cut off with `ProxiedCluster.isolate(3)`: every "
            "peer connection goes through a proxy that now holds every byte to and from "
            "replica 3 (nothing is closed, the process keeps running). One writer thread, "
            f"BlockingClient over {totals['servers']}, {args.value_bytes}-byte values, each "
            "PUT acknowledged before the next (its writes reach replica 3 through a "
            "forwarding follower). The cut is held "
            f"{args.partition_hold:g} s (longer if the majority side has not acknowledged a "
            "write by then), then healed; replica 3, the highest id, bullies back. Gap = "
            "time between consecutive acknowledged writes across the change of coordinator; "
            "times from the cut are from the moment it was ordered. Milliseconds.",
            "",
        ]
    else:
        lines += [
            "One writer thread, BlockingClient over the static server list, "
            f"{args.value_bytes}-byte values, each PUT acknowledged before the next. "
            "Gap = time between consecutive acknowledged writes across the change of "
            "coordinator. Milliseconds.", "",
        ]
    lines += [f"This table alone: `{table_command(args, result)}`", ""]
    ok = [r for r in runs if r.stall is None]
    if hang:
        labels = ("failover gap (last ack by hung -> first ack by new)",
                  "  SIGSTOP -> first ack by new coordinator",
                  "bully-back gap after the SIGCONT (last ack by interim -> first ack by "
                  "resumed)",
                  "  SIGCONT -> first ack by the resumed replica")
    elif partition:
        labels = ("failover gap (last ack by isolated -> first ack by new)",
                  "  cut -> first ack by new coordinator",
                  "bully-back gap after the heal (last ack by interim -> first ack by "
                  "healed)",
                  "  heal -> first ack by the healed replica")
    else:
        labels = ("failover gap (last ack by killed -> first ack by new)",
                  "  SIGKILL -> first ack by new coordinator",
                  "bully-back gap (last ack by interim -> first ack by returning)",
                  "  restart (process start) -> first ack by returning")
    values = ([r.failover_gap for r in ok], [r.fault_to_ack for r in ok],
              [r.bully_gap for r in ok], [r.recover_to_ack for r in ok])
    rows = [summary_row(label, v) for label, v in zip(labels, values, strict=True)]
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
    if partition:
        lines += isolated_lines(args, runs)
    if hang:
        interval, hung = totals["steady_interval"], totals["while_hung"]
        lines += [
            "",
            f"Before the hangs, acknowledgements came every {ms(interval.median)} ms "
            f"(median; p99 {ms(interval.p99)} ms): a gap cannot be shorter than that"
            + (" (a CLI run is a new process)" if result.client == "cli" else "")
            + f". While replica 3 stayed frozen, after the first acknowledgement by the new "
            f"coordinator, a write took {ms(hung.median)} ms (median of {hung.n}; p99 "
            f"{ms(hung.p99)} ms, max {ms(hung.max)} ms).",
        ]
        flights = [(i + 1, r.in_flight) for i, r in enumerate(runs) if r.in_flight]
        lines += ["", f"Hangs that caught a write in flight: {len(flights)} of {len(runs)}"
                  + (":" if flights else ".")]
        lines += [f"- run {i}: {text}" for i, text in flights[:5]]
        if len(flights) > 5:
            lines.append(f"- ... {len(flights) - 5} more")
    stalls = [(i + 1, r) for i, r in enumerate(runs) if r.stall is not None]
    recovered = ("the cut was then healed" if partition
                 else "the frozen replica was then sent SIGCONT" if hang
                 else "the killed replica was then restarted")
    lines += [
        "",
        f"Stalled failovers (no write acknowledged within {args.stall_timeout:g} s of the "
        f"{result.fault}; {recovered}, and these runs are left out of the table above): "
        f"{len(stalls)} of {len(runs)}.",
    ]
    for index, r in stalls:
        lines.append(f"- run {index}: {r.stall}; the writer got its next acknowledgement "
                     f"{ms(r.recover_to_ack)} ms after the {recover_word}")
    slow = [(i + 1, text) for i, r in enumerate(runs) for text in r.slow_writes]
    lines += [
        "",
        f"Acknowledged writes that took over {args.slow_write * 1000:.0f} ms (sent after "
        f"the {result.fault}, up to the first ack by the returning replica): "
        f"{len(slow)}" + ("." if not slow else ":"),
    ]
    lines += [f"- run {index}: {text}" for index, text in slow[:10]]
    if len(slow) > 10:
        lines.append(f"- ... {len(slow) - 10} more")
    per_failover = [len(r.failover_failures) for r in runs]
    per_bully = [len(r.bully_failures) for r in runs]
    lines += [
        "",
        f"Failed writes per {result.fault}: {per_failover}; per bully-back: {per_bully}.",
    ]
    examples = {}
    for phase, attr in ((result.fault, "failover_failures"), ("bully-back", "bully_failures")):
        for r in runs:
            for f in getattr(r, attr):
                examples.setdefault((phase, f.kind, f.message.split(" (from ")[0]), f)
    if examples:
        lines += ["", "Distinct failures seen by the writer (client exception text):", ""]
        lines += [f"- during a {phase}: `{kind}` {message}"
                  for phase, kind, message in list(examples)[:6]]
    if totals["timelines"]:
        lines += ["", "#### Timelines (--trace: replica logs with microsecond timestamps)"]
        lines += totals["timelines"]
    lines.append("")
    return lines


HANG_TARGET_S = 1.0   # issue #8: the next write acknowledged within 1 s (median)


def hang_summary(args: argparse.Namespace, hangs: list[GapResult]) -> list[str]:
    """One table for every client kind and write quorum of the hang mode."""
    rows = []
    for result in hangs:
        ok = [r for r in result.runs if r.stall is None]
        gap = Summary.of([r.failover_gap for r in ok])
        to_ack = Summary.of([r.fault_to_ack for r in ok])
        back = Summary.of([r.bully_gap for r in ok])
        interval = result.totals["steady_interval"]
        hung = result.totals["while_hung"]
        stalls = len(result.runs) - len(ok)
        met = gap.n and gap.median <= HANG_TARGET_S and not stalls
        rows.append([
            result.client, quorum_label(result.write_quorum).split(" = ")[1],
            f"{gap.n}" + (f" (+{stalls} stalled)" if stalls else ""),
            ms(gap.median), ms(gap.p99), ms(gap.max), ms(to_ack.median),
            ms(interval.median), ms(hung.median), ms(back.median),
            sum(len(r.failover_failures) + len(r.bully_failures) for r in result.runs),
            "met" if met else "**not met**",
        ])
    lines = [
        "### Hung coordinator (SIGSTOP): summary", "",
        "The coordinator frozen with SIGSTOP while one client writes back to back, each "
        "kind of client in its own hangs (details per client below). `gap` = last write "
        "acknowledged by the hung coordinator -> first acknowledged by the new one; "
        "`stop->ack` = SIGSTOP -> that first acknowledgement; `interval` = time between "
        "acknowledgements before the hang (the floor of a gap); `while hung` = a write's "
        "latency later in the hang; `back` = the bully-back gap after SIGCONT; `failed` = "
        "writes that raised or exited non-zero (a user would have seen them). Target "
        f"(issue #8): the next write acknowledged within {HANG_TARGET_S:g} s median, with "
        "default settings. Milliseconds.", "",
    ]
    lines += markdown_table(
        ["client", "write_quorum", "hangs", "gap median", "gap p99", "gap max",
         "stop->ack median", "interval", "while hung", "back median", "failed",
         "gap <= 1 s median"], rows)
    lines.append("")
    return lines


def isolated_lines(args: argparse.Namespace, runs: list[GapRun]) -> list[str]:
    """The isolated side of each cut: when it stopped serving, what it acknowledged."""
    sides = [(r, r.isolated) for r in runs if r.isolated is not None]
    if not sides:
        return []
    stepped = [s.step_down for _, s in sides if s.step_down == s.step_down]
    rows = [
        summary_row("lease step-down: cut -> first ERR UNAVAILABLE to a GET", stepped),
        summary_row("cut -> last GET served by the isolated replica",
                    [s.last_read for _, s in sides if s.last_read == s.last_read]),
        summary_row("cut -> last PUT acknowledged (OK) by the isolated replica",
                    [s.last_write_ack for _, s in sides
                     if s.last_write_ack == s.last_write_ack]),
    ]
    overlap = [(s.last_read - r.fault_to_ack) for r, s in sides
               if s.last_read == s.last_read and r.fault_to_ack == r.fault_to_ack
               and s.last_read > r.fault_to_ack]
    outcomes: dict[str, int] = {}
    for _, s in sides:
        for key, count in s.outcomes.items():
            outcomes[key] = outcomes.get(key, 0) + count
    never = len(sides) - len(stepped)
    lines = [
        "",
        "The isolated side: during each cut two more clients talked to replica 3 only, "
        f"one-shot requests without retry (timeout {args.isolated_timeout:g} s): a GET every "
        f"{args.probe_ms:g} ms and a PUT at most every {max(args.probe_ms, 20):g} ms, each "
        "sent once the previous one was answered. Counted: requests sent between the cut "
        "and the heal; a GET is served when answered VALUE or NOTFOUND. Milliseconds from "
        "the cut.",
        "",
    ]
    lines += markdown_table(["measure", "n", "median", "p99", "max", "min"], rows)
    lines += [
        "",
        f"Cuts after which replica 3 never answered ERR UNAVAILABLE before the heal: "
        f"{never} of {len(sides)}. PUTs to replica 3 acknowledged (OK) during the cut: "
        f"{sum(s.writes_acked for _, s in sides)} (per cut "
        f"{[s.writes_acked for _, s in sides]}); sent during the cut and acknowledged only "
        f"after the heal: {sum(s.writes_acked_after for _, s in sides)}. Cuts in which "
        f"replica 3 still served a GET after the majority side had acknowledged a write "
        f"under the new coordinator: {len(overlap)} of {len(sides)}"
        + (f" (by up to {ms(max(overlap))} ms)" if overlap else "")
        + ". Answers to the isolated side's requests, all cuts: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())) + ".",
        "",
        f"The proxy confirmed each cut within {ms(max(r.control_s for r in runs))} ms "
        f"(median {ms(Summary.of([r.control_s for r in runs]).median)} ms) of it being "
        "ordered.",
    ]
    return lines


def report(args: argparse.Namespace, gaps: list[GapResult], elections: list[ElectionRun],
           elapsed_s: float) -> str:
    title = "" if args.section == "failover" else f" [{args.section}]"
    lines = [f"## Failover (bench/failover.py, issue #3){title}", "",
             "Command:", "", "```", _common.command_line(), "```", ""]
    lines += _common.machine_lines()
    lines += args.code.lines()
    lines.append(_common.timers_line())
    modes = [f"{wq} (quorum mode)" if is_quorum_mode(wq) else wq for wq in args.write_quorums]
    lines.append(f"- write_quorum measured: {', '.join(modes)}; faults: "
                 f"{', '.join(args.faults)}")
    if args.overrides:
        lines.append("- other cluster settings changed with --set: "
                     + ", ".join(f"{k}={v}" for k, v in args.overrides.items()))
    else:
        lines.append("- other cluster settings: defaults")
    lines += [f"- total run time: {elapsed_s:.0f} s", ""]

    hangs = [g for g in gaps if g.fault == "hang"]
    for result in gaps:
        if hangs and result is hangs[0]:
            lines += hang_summary(args, hangs)
        lines += gap_section(args, result)

    if elections:
        several = len(args.write_quorums) > 1
        lines += [
            "### Election time vs cluster size", "",
            f"Kill -9 of the coordinator, {args.election_runs} times per size"
            + (", write quorum" if several else "")
            + f" and observer, each {args.election_settle:g} s after the cluster agreed on "
            f"it; every survivor polled every {args.poll_ms:g} ms. `agree` = kill -> every "
            "survivor names the same new coordinator; `ready` = kill -> it answers "
            "STATUS ready=yes (it has pulled from its peers); `back` = restart of the "
            "killed replica (process start-up included) -> every replica names it again. "
            "Milliseconds.", "",
            f"This table alone: `{table_command(args)}`", "",
        ]
        rows = []
        for wq in args.write_quorums:
            for size in args.sizes:
                for observer in args.observers:
                    sample = [r for r in elections if r.size == size
                              and r.observer == observer and r.write_quorum == wq]
                    if not sample:
                        continue
                    agree = Summary.of([r.agree for r in sample])
                    ready = Summary.of([r.ready for r in sample if r.ready == r.ready])
                    back = Summary.of([r.back for r in sample])
                    rows.append([
                        *([wq] if several else []),
                        size, observer, agree.n, ms(agree.median), ms(agree.p99),
                        ms(agree.max), ms(ready.median), ms(ready.p99), ms(back.median),
                        ms(back.p99),
                    ])
        lines += markdown_table(
            [*(["write_quorum"] if several else []),
             "replicas", "observer", "n", "agree median", "agree p99", "agree max",
             "ready median", "ready p99", "back median", "back p99"], rows)
        lines += [
            "",
            "Observers: `status` = client STATUS to each survivor (each connection makes a "
            "follower ping its coordinator: client-triggered detection); `peer` = "
            "peer-protocol PING (no detection side effect: the replicas notice the death on "
            "their own, from the closed connection or the heartbeat; but since 318eded its "
            "handshake evicts the link of the member it authenticates as); `log` = nothing "
            "is asked, the survivors' logs are read (microsecond timestamps) and `agree` is "
            "the last of the moments they started naming the new coordinator (no side "
            "effect). Resolution: one polling round "
            f"(--poll-ms {args.poll_ms:g} plus the time to ask every survivor); `log` takes "
            "the logged times.",
            "",
        ]
        for (size, wq, observer), why in sorted(args.observer_failures.items()):
            lines += [f"The `{observer}` observer could not run ({size} replicas, "
                      f"{quorum_label(wq)}): {why}", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10,
                        help="coordinator kills (or cuts) per write quorum and fault for the "
                             "client-observed gap (default 10)")
    parser.add_argument("--election-runs", type=int, default=5,
                        help="kills per cluster size, write quorum and observer (default 5)")
    parser.add_argument("--sizes", default="3,5,7",
                        help="cluster sizes for the election measurement (default 3,5,7)")
    parser.add_argument("--observers", default="status,log",
                        help="status, log and/or peer (default status,log; log reads the "
                             "replicas' logs and asks them nothing; peer impersonates a "
                             "member and evicts its link, see above)")
    parser.add_argument("--write-quorum", dest="write_quorums", default=None,
                        metavar="Q[,Q...]",
                        help="write_quorum of every cluster: 1, a number or majority (quorum "
                             "mode); a comma-separated list measures each in turn (default "
                             "1, or what --set write_quorum= says)")
    parser.add_argument("--fault", dest="faults", default="kill", metavar="F[,F...]",
                        help="how the coordinator fails in the gap measurement: kill "
                             "(SIGKILL, then restart), partition (isolated by a proxy, "
                             "then healed) and/or hang (SIGSTOP, then SIGCONT); default "
                             "kill")
    parser.add_argument("--hang-clients", default=",".join(HANG_CLIENTS),
                        metavar="C[,C...]",
                        help="hang: which clients write, each in its own hangs: fresh (a "
                             "new session per write, the hung replica first in its list), "
                             "session (BlockingClient with a ClientSession), cli "
                             "(replicad-cli --session FILE put, one run per write); "
                             "default all three")
    parser.add_argument("--hang-hold", type=float, default=2.0,
                        help="hang: seconds from SIGSTOP to SIGCONT, at least (default 2; "
                             "longer while no write has been acknowledged)")
    parser.add_argument("--cli", default=os.path.join(os.path.dirname(sys.executable),
                                                      "replicad-cli"),
                        help="hang: the replicad-cli to run (default: next to this Python)")
    parser.add_argument("--partition-hold", type=float, default=3.0,
                        help="seconds a cut is held before the heal, at least (default 3, "
                             "above quorum_timeout, so that the isolated replica's answers "
                             "after its first in-doubt write are seen too; longer while the "
                             "majority side has acknowledged no write)")
    parser.add_argument("--probe-ms", type=float, default=5.0,
                        help="partition: interval of the GETs to the isolated replica "
                             "(default 5; its PUTs: at least 20)")
    parser.add_argument("--isolated-timeout", type=float, default=4.0,
                        help="partition: how long a request to the isolated replica waits "
                             "for its answer (default 4 s: above election_wait, 3 s)")
    parser.add_argument("--poll-ms", type=float, default=10.0,
                        help="polling interval of the election observer (default 10)")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds of steady writes before each kill or cut (default 0.5)")
    parser.add_argument("--election-settle", type=float, default=1.0,
                        help="seconds between the cluster agreeing on the (returned) "
                             "coordinator and the next kill in the election part "
                             "(default 1; the peer links' reconnect back-off is <= 0.55 s)")
    parser.add_argument("--client-timeout", type=float, default=None,
                        help="the writer's BlockingClient timeout_s (default 10 for kill "
                             "and partition; hang: the client's and the CLI's own default, "
                             "5 s)")
    parser.add_argument("--stall-timeout", type=float, default=5.0,
                        help="a failover with no acknowledged write this long after the "
                             "kill or cut counts as stalled (default 5 s)")
    parser.add_argument("--slow-write", type=float, default=1.0,
                        help="list acknowledged writes around a failover that took longer "
                             "than this (default 1 s)")
    parser.add_argument("--stop-on-stall", dest="restart_stalled", action="store_false",
                        help="stop at a stalled failover (keeping the logs) instead of "
                             "restarting the killed replica (healing the cut) and going on")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a [cluster] setting for every cluster, e.g. --set "
                             "ping_interval=0.2 (repeatable)")
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
    set_quorum = args.overrides.pop("write_quorum", None)
    if args.write_quorums is None:
        args.write_quorums = set_quorum or "1"
    elif set_quorum is not None:
        parser.error("give the write quorum with --write-quorum or --set write_quorum=, "
                     "not both")
    args.write_quorums = [q.strip().lower() for q in args.write_quorums.split(",") if q.strip()]
    if not args.write_quorums or any(q != "majority" and not q.isdigit()
                                     for q in args.write_quorums):
        parser.error("--write-quorum takes 1, another number or majority (comma-separated)")
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if not args.faults or any(f not in FAULTS for f in args.faults):
        parser.error("--fault takes kill, partition and/or hang")
    args.hang_clients = [c.strip() for c in args.hang_clients.split(",") if c.strip()]
    if not args.hang_clients or any(c not in HANG_CLIENTS for c in args.hang_clients):
        parser.error("--hang-clients takes fresh, session and/or cli")
    if "hang" in args.faults and "cli" in args.hang_clients and not os.access(args.cli,
                                                                              os.X_OK):
        parser.error(f"--cli {args.cli}: not an executable (pip install -e . in the venv)")
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.observers = [o.strip() for o in args.observers.split(",") if o.strip()]
    if not args.observers or any(o not in OBSERVERS for o in args.observers):
        parser.error("--observers takes status, peer and/or log")
    args.observer_failures = {}   # (size, write quorum, observer) -> why it could not run
    if any(s < 2 for s in args.sizes):
        parser.error("cluster sizes must be at least 2")
    if args.probe_ms <= 0 or args.partition_hold < 0 or args.isolated_timeout <= 0:
        parser.error("--probe-ms and --isolated-timeout must be > 0, --partition-hold >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.code = _common.CodeWatch()
    started = now()

    progress = _common.progress_printer(started, now)

    workdir = tempfile.mkdtemp(prefix="replicad-bench-failover-")
    if args.trace or "log" in args.observers:   # replicas import bench/_common.py
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [BENCH_DIR, os.environ.get("PYTHONPATH")]))
    gaps: list[GapResult] = []
    elections: list[ElectionRun] = []
    try:
        if not args.skip_gap:
            for fault in args.faults:
                for write_quorum in args.write_quorums:
                    if fault == "hang":
                        gaps += measure_hang(args, workdir, progress, write_quorum)
                    else:
                        gaps.append(measure_gap(args, workdir, progress, write_quorum,
                                                fault))
        if not args.skip_election:
            for write_quorum in args.write_quorums:
                for size in args.sizes:
                    elections += measure_election(args, workdir, size, progress,
                                                  write_quorum)
    except BaseException:
        progress(f"failed; cluster directories (logs) kept in {workdir}")
        raise
    else:
        if args.keep:
            progress(f"cluster directories kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(args, gaps, elections, now() - started)
    _common.publish(text, args.section, args.write, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
