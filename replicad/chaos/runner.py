"""The chaos runner: real replicas, concurrent sessions, seeded faults, a history.

``run(RunConfig(...))`` starts a ProxiedCluster (replicas reach each other only through
the fault proxy; clients reach every replica directly), runs ``clients`` threads, each a
sequence of sessions (its own BlockingClient and ClientSession) doing random PUT, GET
and DEL over ``k0`` .. ``k<keys-1>``, and carries out the seeded schedule
(replicad/chaos/schedule.py) from the main thread (replicas started from it die with
it: PDEATHSIG belongs to the forking thread).  Every operation and fault goes to the
history (replicad/chaos/history.py) as it happens.

After ``duration_s`` the clients stop, every cut is healed, every replica continued or
restarted, and the runner waits until all replicas report the same clock and
coordinator; then it records each replica's final state (STATUS, a GET of every key
through it, and the rows of its database) and stops the cluster.  The checker judges
the history; the runner only records.

A replica that exits on its own (not killed by a fault) is a finding: it is recorded
as a ``crash`` event with the tail of its log, and restarted.

With the ``full`` fault, each replica's data directory is a tmpfs of its own for the
whole run (replicad/chaos/disks.py: mounted before the cluster starts, its files copied
back when it stops); the fault shrinks one of them to its usage, the heal grows it.
With the ``clock`` fault, every replica runs under libfaketime (replicad/chaos/clocks.py)
and the fault steps one's wall clock an hour, the heal back; with ``fsync``, every
replica preloads a library that delays its fsyncs (replicad/chaos/fsyncs.py) and the
fault sets one's delay; with ``eio``, the same library makes one's fsyncs fail: it
stops at its next COMMIT (exit 74, expected: not a crash) and is started again on a
healthy disk by the heal, which records how it had ended; ``eioread`` likewise with its
preads (it stops at its next read that SQLite's cache does not hold, if any), and
``delete`` deletes one's data directory under it (it stops within a second).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import replicad
from replicad.chaos import clocks, disks, fsyncs
from replicad.chaos.history import HistoryWriter
from replicad.chaos.schedule import (
    ALL_KINDS,
    COORDINATOR,
    DISK_ERRORS,
    SELF_STOPPING,
    TARGETED,
    Fault,
    FaultKind,
    make_schedule,
)
from replicad.client import (
    BlockingClient,
    ClientError,
    InvalidRequest,
    NoServerAvailable,
    OutcomeUnknown,
    ServerError,
    build_request,
    raise_for_error,
)
from replicad.cluster import ClusterError, find_free_base_port
from replicad.datadir import DB_FILENAME
from replicad.session import ClientSession
from replicad.testing.cluster import ProxiedCluster
from replicad.vclock import ClockError, VectorClock
from replicad.wire import Code, Request, SessionContext

PROGRESS_INTERVAL_S = 5.0
TICK_S = 0.1                    # the main loop's step: fault timing is this precise
START_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 60.0
CONVERGE_POLL_S = 0.2
FINAL_GET_TIMEOUT_S = 5.0
CLIENT_JOIN_GRACE_S = 5.0       # on top of the operation timeout
OP_WEIGHTS = (("get", 45), ("put", 45), ("del", 10))
# ERR codes after which a write certainly did nothing (docs/protocol.md): bad input is
# refused before anything happens; UNAVAILABLE, STALE and BUSY say "nothing was done".
NOTHING_DONE_CODES = frozenset({
    Code.BADCMD, Code.BADARGS, Code.BADKEY, Code.BADVALUE, Code.TOOBIG, Code.LINETOOLONG,
    Code.BADENCODING, Code.BADCONTEXT, Code.AUTH, Code.UNAVAILABLE, Code.STALE, Code.BUSY,
    Code.NOSPACE,
})


@dataclass(frozen=True)
class RunConfig:
    out_dir: str
    seed: int = 1
    duration_s: float = 30.0
    replicas: int = 3
    clients: int = 3
    faults: tuple[FaultKind, ...] = ALL_KINDS
    write_quorum: str = "majority"          # "1" or "majority"
    keys: int = 8
    op_timeout_s: float = 5.0
    session_ops: int = 100                  # mean operations per session
    converge_timeout_s: float = CONVERGE_TIMEOUT_S
    progress_interval_s: float = PROGRESS_INTERVAL_S
    base_port: int | None = None
    extra_settings: dict[str, str] = field(default_factory=dict)

    @property
    def history_path(self) -> str:
        return os.path.join(self.out_dir, "history.jsonl")

    @property
    def cluster_dir(self) -> str:
        return os.path.join(self.out_dir, "cluster")


@dataclass
class RunResult:
    history_path: str
    ops: int
    faults: int
    converged: bool
    converge_s: float | None
    crashes: int


# Sessions with request ids ------------------------------------------------------------


def _library_sends_request_ids() -> bool:
    """Whether ClientSession itself gives each write a request id (issue #8)."""
    return callable(getattr(ClientSession, "next_request_id", None))


@dataclass
class IdentifiedSession(ClientSession):
    """A ClientSession whose writes carry a request id ``<client id>.<seq>`` (the wire
    has ``id=``), for a client library that does not send one itself: the checker needs
    ids to tell a write applied twice from two writes."""

    runner_client_id: str = ""
    runner_seq: int = 0
    pending: str | None = None    # the id of the write being sent, None between writes

    def begin_write(self) -> str:
        self.runner_seq += 1
        self.pending = f"{self.runner_client_id}.{self.runner_seq}"
        return self.pending

    def end_write(self) -> None:
        self.pending = None

    def context(self, *args, **kwargs):
        context = super().context(*args, **kwargs)
        if self.pending is None or context.rid is not None:
            return context
        return dataclasses.replace(context, rid=self.pending)


def new_session() -> ClientSession:
    if _library_sends_request_ids():
        return ClientSession()
    return IdentifiedSession(runner_client_id=secrets.token_hex(8))


def _with_request_id(session: ClientSession, request: Request) -> tuple[Request, str | None]:
    """The write with the request id it will carry (every attempt sends the same one),
    so that the history can name it."""
    if isinstance(session, IdentifiedSession):
        return request, session.begin_write()
    if _library_sends_request_ids():
        rid = session.next_request_id()
        return request.with_context(SessionContext(rid=rid)), rid
    return request, None


# The runner ---------------------------------------------------------------------------


class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()

    def add(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.outcomes)


class ChaosRun:
    def __init__(self, config: RunConfig, progress: Callable[[str], None] = print):
        self.config = config
        self.progress = progress
        self.schedule = make_schedule(config.seed, config.duration_s, config.replicas,
                                      config.faults)
        self.keys = [f"k{i}" for i in range(config.keys)]
        self.stop_clients = threading.Event()
        self.op_ids = itertools.count(1)
        self.counters = _Counters()
        self.faults_started: Counter[str] = Counter()
        self.active: list[tuple[Fault, list[int]]] = []
        self.down: set[int] = set()        # killed or wiped by a fault, to restart
        self.paused: set[int] = set()
        self.crashes = 0
        self.cluster: ProxiedCluster | None = None
        self.history: HistoryWriter | None = None

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> RunResult:
        config = self.config
        small_disks = FaultKind.FULL in config.faults
        if small_disks:
            disks.check()
        faketime = clocks.library() if FaultKind.CLOCK in config.faults else None
        slowfsync = (fsyncs.library(config.out_dir)
                     if {FaultKind.FSYNC, *DISK_ERRORS} & set(config.faults) else None)
        os.makedirs(config.out_dir, exist_ok=True)
        if os.path.exists(config.cluster_dir):
            disks.release_under(config.cluster_dir)
            shutil.rmtree(config.cluster_dir)
        settings = {"write_quorum": config.write_quorum, **config.extra_settings}
        base_port = config.base_port or find_free_base_port(config.replicas)
        self.cluster = cluster = ProxiedCluster(config.replicas, base_port, config.cluster_dir,
                                                overrides=settings)
        mounted = [cluster.replica_dir(i) for i in cluster.ids] if small_disks else []
        if faketime is not None:
            for i in cluster.ids:
                clocks.step(self._offset_file(i), 0)
                cluster.replica_env[i] = clocks.environment(
                    faketime, self._offset_file(i), cluster.replica_env.get(i))
        if slowfsync is not None:
            for i in cluster.ids:
                fsyncs.set_delay(self._fsync_file(i), 0)
                cluster.replica_env[i] = fsyncs.environment(
                    slowfsync, self._fsync_file(i), cluster.replica_env.get(i))
        self.history = history = HistoryWriter(config.history_path)
        converged: dict[str, Any] = {"ok": False, "seconds": None}
        try:
            history.write({
                "type": "run", "seed": config.seed, "duration_s": config.duration_s,
                "replicas": config.replicas, "clients": config.clients,
                "write_quorum": config.write_quorum,
                "faults": [k.value for k in config.faults], "keys": self.keys,
                "op_timeout_s": config.op_timeout_s, "session_ops": config.session_ops,
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "version": replicad.__version__, "settings": settings,
                "request_ids": "library" if _library_sends_request_ids() else "runner",
                "schedule": [f.to_json() for f in self.schedule],
                "small_disks": disks.SIZE if small_disks else None,
                "faketime": faketime, "slowfsync": slowfsync,
            })
            self.progress(f"chaos: seed {config.seed}, {config.replicas} replicas, "
                          f"{config.clients} clients, write_quorum {config.write_quorum}, "
                          f"{config.duration_s:g} s, {len(self.schedule)} faults planned; "
                          f"history {config.history_path}")
            for path in mounted:
                disks.mount(path)
            cluster.start()
            coordinator = cluster.wait_ready(timeout_s=START_TIMEOUT_S)
            history.write({"type": "ready", "coordinator": coordinator})
            t0 = history.now()
            threads = [threading.Thread(target=self._client, args=(n,), daemon=True,
                                        name=f"chaos-client-{n}")
                       for n in range(config.clients)]
            for thread in threads:
                thread.start()
            self._inject(t0)
            self.stop_clients.set()
            for thread in threads:
                thread.join(config.op_timeout_s + CLIENT_JOIN_GRACE_S)
            self._report_progress(history.now() - t0, final=True)
            converged = self._heal_and_converge()
            self._record_final()
            self._record_logs()
        finally:
            self.stop_clients.set()
            try:
                cluster.stop()
            finally:
                self._unmount(mounted)
                done = self.counters.snapshot()
                history.write({"type": "end", "ops": sum(done.values()),
                               "wall_s": history.now()})
                history.close()
        return RunResult(config.history_path, sum(self.counters.snapshot().values()),
                         sum(self.faults_started.values()), bool(converged.get("ok")),
                         converged.get("seconds"), self.crashes)

    def _offset_file(self, i: int) -> str:
        """Replica i's wall-clock offset (the clock fault; clocks.py)."""
        return os.path.join(self.config.out_dir, f"clock-offset-{i}")

    def _fsync_file(self, i: int) -> str:
        """Replica i's fsync delay (the fsync fault; fsyncs.py)."""
        return os.path.join(self.config.out_dir, f"fsync-delay-{i}")

    def _unmount(self, mounted: list[str]) -> None:
        """The small disks' files back in plain directories (a run's evidence); one that
        cannot be is said and left for the next run's release_under."""
        for path in mounted:
            try:
                disks.unmount(path)
            except (ClusterError, OSError) as e:
                self.progress(f"cannot unmount the small disk {path}: {e}")

    # -- clients -------------------------------------------------------------------------

    def _client(self, index: int) -> None:
        config = self.config
        assert self.cluster is not None
        rng = random.Random(f"replicad-chaos-{config.seed}-client-{index}")
        addresses = self.cluster.addresses()
        shift = index % len(addresses)
        servers = addresses[shift:] + addresses[:shift]   # first contact differs per client
        kinds = [k for k, _ in OP_WEIGHTS]
        weights = [w for _, w in OP_WEIGHTS]
        for number in itertools.count(1):
            if self.stop_clients.is_set():
                return
            name = f"c{index}s{number}"
            session = new_session()
            client = BlockingClient(servers, timeout_s=config.op_timeout_s, session=session,
                                    password=self.cluster.password)
            for _ in range(rng.randint(1, 2 * config.session_ops - 1)):
                if self.stop_clients.is_set():
                    return
                kind = rng.choices(kinds, weights)[0]
                key = rng.choice(self.keys)
                self._operation(client, session, name, index, kind, key)

    def _operation(self, client: BlockingClient, session: ClientSession, name: str,
                   index: int, kind: str, key: str) -> None:
        history = self.history
        assert history is not None
        op = next(self.op_ids)
        value = f"{name}-{op}" if kind == "put" else None
        is_write = kind in ("put", "del")
        command = {"put": "PUT", "get": "GET", "del": "DEL"}[kind]
        invoke = {"type": "invoke", "op": op, "session": name, "client": index, "kind": kind,
                  "key": key}
        if value is not None:
            invoke["value"] = value
        request = build_request(command, key, value)   # keys and values are ours: valid
        rid = None
        if is_write:
            request, rid = _with_request_id(session, request)
        if rid is not None:
            invoke["rid"] = rid
        history.write(invoke)
        result: dict[str, Any] = {"type": "complete", "op": op}
        try:
            reply, address = client.exchange(request)
            raise_for_error(reply, address)
        except ClientError as e:
            result.update(_failure(e, is_write))
        except Exception as e:   # a bug in the client library: record it, go on
            result.update({"outcome": "unknown" if is_write else "fail",
                           "status": "EXCEPTION", "error": f"{type(e).__name__}: {e}"})
        else:
            result.update({"outcome": "ok", "status": reply.status, "address": address})
            if kind == "get":
                result["value"] = reply.text if reply.status == "VALUE" else None
            meta = reply.meta
            if meta is not None:
                result.update({"vc": meta.vc.encode(), "by": meta.by, "epoch": meta.epoch,
                               "coord": meta.coord})
            if reply.status not in ("OK", "VALUE", "NOTFOUND"):
                result.update({"outcome": "unknown" if is_write else "fail",
                               "error": f"unexpected reply {reply.status}"})
        finally:
            if isinstance(session, IdentifiedSession):
                session.end_write()
        history.write(result)
        self.counters.add(result["outcome"])

    # -- faults --------------------------------------------------------------------------

    def _inject(self, t0: float) -> None:
        """Carry out the schedule until the duration is over; report progress."""
        history = self.history
        assert history is not None
        pending = list(self.schedule)
        next_progress = self.config.progress_interval_s
        while True:
            now = history.now() - t0
            if now >= self.config.duration_s:
                return   # a fault still active is ended by the final heal
            for fault, targets in list(self.active):
                if now >= fault.end_s:
                    self.active.remove((fault, targets))
                    self._end(fault, targets)
            while pending and now >= pending[0].start_s:
                self._start(pending.pop(0), now)
            self._watch()
            if now >= next_progress:
                self._report_progress(now)
                next_progress += self.config.progress_interval_s
            time.sleep(TICK_S)

    def _resolve(self, target: int | str | None) -> int:
        cluster = self.cluster
        assert cluster is not None and target is not None
        if target != COORDINATOR:
            return int(target)
        named = cluster.coordinator()
        if named is not None:
            return named
        statuses = cluster.statuses(0.5)
        serving = [i for i, s in statuses.items() if s and s.get("role") == "coordinator"]
        live = cluster.live_ids()
        return max(serving or live or cluster.ids)

    def _start(self, fault: Fault, now: float) -> None:
        cluster, history = self.cluster, self.history
        assert cluster is not None and history is not None
        kind = fault.kind
        targets: list[int] = []
        event: dict[str, Any] = {"type": "fault", "phase": "start", "index": fault.index,
                                 "kind": kind.value, "describe": fault.describe()}
        try:
            if kind in TARGETED:
                target = self._resolve(fault.target)
                targets = [target]
                if kind is FaultKind.FSYNC:
                    assert fault.delay_ms is not None
                    fsyncs.set_delay(self._fsync_file(target), fault.delay_ms)
                elif kind in SELF_STOPPING:
                    # It stops at its next COMMIT (eio), cold read (eioread) or check of
                    # its database file (delete), exit 74: not a crash to restart.
                    self.down.add(target)
                    if kind is FaultKind.EIO:
                        fsyncs.set_failing(self._fsync_file(target))
                    elif kind is FaultKind.EIOREAD:
                        fsyncs.set_failing_reads(self._fsync_file(target))
                    else:
                        shutil.rmtree(cluster.replica_dir(target), ignore_errors=True)
                elif kind is FaultKind.SLOW:
                    assert fault.delay_ms is not None
                    cluster.slow(target, fault.delay_ms)
                elif kind is FaultKind.CLOCK:
                    assert fault.step_s is not None
                    clocks.step(self._offset_file(target), fault.step_s)
                elif kind is FaultKind.FULL:
                    event["size"] = disks.fill(cluster.replica_dir(target))
                elif kind is FaultKind.PAUSE:
                    cluster.kill(target, signal.SIGSTOP)
                    self.paused.add(target)
                elif kind is FaultKind.ISOLATE:
                    cluster.isolate(target)
                else:
                    self.down.add(target)
                    cluster.kill(target, signal.SIGKILL)
                    if kind is FaultKind.WIPE:
                        shutil.rmtree(cluster.replica_dir(target), ignore_errors=True)
            elif kind in (FaultKind.SPLIT, FaultKind.BRIDGE):
                cluster.partition(*fault.groups)
                targets = sorted(i for group in fault.groups for i in group)
            elif kind is FaultKind.ONEWAY:
                assert fault.pair is not None
                cluster.cut_one_way(*fault.pair)
                targets = list(fault.pair)
        except (ClusterError, OSError, ValueError) as e:
            event["error"] = str(e)
        event["targets"] = targets
        history.write(event)
        self.faults_started[kind.value] += 1
        self.active.append((fault, targets))
        self.progress(f"  t={now:6.1f}s  fault {fault.index}: "
                      f"{fault.describe().replace(COORDINATOR, f'coordinator {targets}')}"
                      + (f" (failed: {event['error']})" if "error" in event else ""))

    def _end(self, fault: Fault, targets: list[int], final: bool = False) -> None:
        cluster, history = self.cluster, self.history
        assert cluster is not None and history is not None
        event: dict[str, Any] = {"type": "fault", "phase": "end", "index": fault.index,
                                 "kind": fault.kind.value, "targets": targets,
                                 "final_heal": final}
        try:
            if fault.kind is FaultKind.PAUSE:
                for target in targets:
                    cluster.kill(target, signal.SIGCONT)
                    self.paused.discard(target)
            elif fault.kind in (FaultKind.KILL, FaultKind.WIPE):
                for target in targets:
                    if not cluster.running(target):
                        cluster.start_replica(target)
                    self.down.discard(target)
            elif fault.kind is FaultKind.FULL:
                for target in targets:
                    disks.free(cluster.replica_dir(target))
            elif fault.kind is FaultKind.CLOCK:
                for target in targets:
                    clocks.step(self._offset_file(target), 0)
            elif fault.kind is FaultKind.FSYNC:
                for target in targets:
                    fsyncs.set_delay(self._fsync_file(target), 0)
            elif fault.kind in SELF_STOPPING:
                for target in targets:    # the disk replaced: started again if it stopped
                    if fault.kind in DISK_ERRORS:
                        fsyncs.set_delay(self._fsync_file(target), 0)
                    if not cluster.running(target):
                        event.setdefault("exits", {})[str(target)] = cluster.exit_text(target)
                        cluster.start_replica(target)
                    self.down.discard(target)
            else:
                cluster.heal()
        except (ClusterError, OSError, ValueError) as e:
            event["error"] = str(e)
        history.write(event)

    def _watch(self) -> None:
        """A replica that exited although no fault killed it: record, restart."""
        cluster, history = self.cluster, self.history
        assert cluster is not None and history is not None
        for i in cluster.ids:
            if i in self.down or cluster.running(i):
                continue
            self.crashes += 1
            tail = cluster.log_tail(i, 40)
            history.write({"type": "crash", "replica": i, "exit": cluster.exit_text(i),
                           "log_tail": tail})
            self.progress(f"  replica {i} exited on its own "
                          f"({cluster.exit_text(i)}); restarting it")
            try:
                cluster.start_replica(i)
            except ClusterError as e:
                history.write({"type": "crash", "replica": i, "restart_error": str(e)})
                self.down.add(i)   # retried at the final heal

    def _report_progress(self, now: float, final: bool = False) -> None:
        done = self.counters.snapshot()
        total = sum(done.values())
        faults = sum(self.faults_started.values())
        active = ", ".join(f.describe() for f, _ in self.active) or "none"
        self.progress(f"{'done' if final else 'progress'} t={now:6.1f}s: {total} ops "
                      f"({done['ok']} ok, {done['fail']} failed, {done['unknown']} unknown), "
                      f"{faults} faults, active: {active}")

    # -- after the faults ----------------------------------------------------------------

    def _heal_and_converge(self) -> dict[str, Any]:
        cluster, history = self.cluster, self.history
        assert cluster is not None and history is not None
        for fault, targets in self.active:
            self._end(fault, targets, final=True)
        self.active.clear()
        errors = []
        try:
            cluster.heal()
        except ClusterError as e:
            errors.append(f"heal: {e}")
        restarted = []
        for i in cluster.ids:
            if cluster.running(i):
                cluster.kill(i, signal.SIGCONT)
            else:
                try:
                    cluster.start_replica(i)
                    restarted.append(i)
                except ClusterError as e:
                    errors.append(f"restart {i}: {e}")
        self.down.clear()
        self.paused.clear()
        healed_at = history.now()
        history.write({"type": "heal", "restarted": restarted, "errors": errors})
        deadline = time.monotonic() + self.config.converge_timeout_s
        detail = ""
        while True:
            same, detail, clock, coordinator = self._same_state()
            if same:
                seconds = round(history.now() - healed_at, 3)
                event = {"type": "converged", "ok": True, "seconds": seconds, "clock": clock,
                         "coordinator": coordinator}
                break
            if time.monotonic() > deadline:
                event = {"type": "converged", "ok": False,
                         "seconds": self.config.converge_timeout_s, "detail": detail}
                break
            time.sleep(CONVERGE_POLL_S)
        history.write(event)
        self.progress("converged " + (f"{event['seconds']:.2f} s after the heal"
                                      if event["ok"] else f"NOT within "
                                      f"{self.config.converge_timeout_s:g} s: {detail}"))
        return event

    def _same_state(self) -> tuple[bool, str, str | None, int | None]:
        """Every replica answers, none is electing, all name one coordinator, one clock."""
        cluster = self.cluster
        assert cluster is not None
        clocks, coordinators = {}, {}
        for i in cluster.ids:
            status = cluster.status(i, 1.0)
            if status is None:
                return False, f"replica {i} does not answer STATUS", None, None
            if status.get("role") == "electing":
                return False, f"replica {i} is electing", None, None
            clocks[i] = _status_clock(status)
            coordinators[i] = status.get("coordinator")
        if len(set(coordinators.values())) != 1 or None in coordinators.values():
            return False, f"coordinators {coordinators}", None, None
        if len(set(clocks.values())) != 1:
            return False, f"clocks {clocks}", None, None
        coordinator = next(iter(coordinators.values()))
        return True, "", next(iter(clocks.values())), coordinator

    def _record_logs(self) -> None:
        cluster, history = self.cluster, self.history
        assert cluster is not None and history is not None
        for i in cluster.ids:
            try:
                with open(cluster.log_path(i), encoding="utf-8", errors="replace") as log:
                    for event in log_events(i, log):
                        history.write(event)
            except OSError as e:
                history.write({"type": "log", "replica": i, "kind": "unreadable",
                               "error": str(e)})

    def _record_final(self) -> None:
        cluster, history = self.cluster, self.history
        assert cluster is not None and history is not None
        dumps = {i: _dump_database(os.path.join(cluster.replica_dir(i), DB_FILENAME))
                 for i in cluster.ids}
        keys = sorted(set(self.keys).union(*(d.get("records", {}) for d in dumps.values())))
        for i in cluster.ids:
            event: dict[str, Any] = {"type": "final", "replica": i}
            status = cluster.status(i, FINAL_GET_TIMEOUT_S)
            if status is not None:
                event["status"] = {
                    "clock": _status_clock(status), "conflicts": status.get("conflicts"),
                    "epoch": status.get("epoch"), "role": status.get("role"),
                    "coordinator": status.get("coordinator"),
                    "cluster_id": status.get("cluster_id"), "origin": status.get("origin"),
                }
            gets, errors = {}, {}
            client = BlockingClient([cluster.address(i)], timeout_s=FINAL_GET_TIMEOUT_S,
                                    session=ClientSession(), password=cluster.password)
            for key in keys:
                try:
                    gets[key] = client.get(key)
                except ClientError as e:
                    errors[key] = str(e)
            event.update({"gets": gets, "get_errors": errors})
            event.update(dumps[i])
            history.write(event)


# What the checker can use from the replicas' logs: replies from the request-id memory,
# merges that met concurrent versions, and the origins a replica took after a wipe (the
# final STATUS names only the last: a write of an earlier life must still be its own).
_REPLAY = re.compile(r"request (?P<rid>\S+) was already applied as write "
                     r"(?P<origin>\d+):(?P<seq>\d+); answering it again")
_CONFLICTS = re.compile(r"(?P<n>\d+) concurrent versions resolved while pulling from "
                        r"replica (?P<peer>\d+): (?P<keys>.*)")
_ORIGIN = re.compile(r"replica \d+ joins cluster \S+: .*; its writes are numbered under "
                     r"origin (?P<origin>\d+) from now on")
MAX_LOG_EVENTS = 10_000


def log_events(replica: int, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """``log`` events from a replica's log lines (pure)."""
    count = 0
    for line in lines:
        if count >= MAX_LOG_EVENTS:
            return
        when = line[:24].strip()
        match = _REPLAY.search(line)
        if match:
            count += 1
            yield {"type": "log", "replica": replica, "kind": "replay", "when": when,
                   "rid": match["rid"], "write": [int(match["origin"]), int(match["seq"])]}
            continue
        match = _ORIGIN.search(line)
        if match:
            count += 1
            yield {"type": "log", "replica": replica, "kind": "origin", "when": when,
                   "origin": int(match["origin"])}
            continue
        match = _CONFLICTS.search(line)
        if match:
            count += 1
            yield {"type": "log", "replica": replica, "kind": "conflicts", "when": when,
                   "n": int(match["n"]), "peer": int(match["peer"]),
                   "keys": match["keys"].split()}


def _failure(e: Exception, is_write: bool) -> dict[str, Any]:
    """What an exception says about the operation's outcome."""
    text = str(e)
    if isinstance(e, InvalidRequest):   # refused before anything was sent
        return {"outcome": "fail", "status": e.code, "error": text}
    if isinstance(e, ServerError):
        code = e.code
        certain = code in NOTHING_DONE_CODES
        return {"outcome": "fail" if certain or not is_write else "unknown",
                "status": code, "error": text}
    if isinstance(e, OutcomeUnknown):
        return {"outcome": "unknown" if is_write else "fail", "status": "UNKNOWN",
                "error": text}
    if isinstance(e, NoServerAvailable):
        status = "NOSERVER"
        if e.last_reply is not None and e.last_reply.error_code:
            status = f"NOSERVER:{e.last_reply.error_code}"
        return {"outcome": "fail", "status": status, "error": text}
    return {"outcome": "unknown" if is_write else "fail", "status": type(e).__name__,
            "error": text}


def _status_clock(status: dict[str, Any]) -> str:
    clock = status.get("clock")
    if isinstance(clock, dict):
        try:
            return VectorClock({int(k): int(v) for k, v in clock.items()}).encode()
        except (ValueError, ClockError):
            pass
    return str(clock)


def _dump_database(path: str) -> dict[str, Any]:
    """Rows of a replica's database, read-only (the replica keeps running)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as e:
        return {"error": f"cannot open {path}: {e}"}
    try:
        records = {
            key: {"value": value, "origin": origin, "seq": seq, "version": version,
                  "epoch": epoch, "rid": rid}
            for key, value, origin, seq, version, epoch, rid in db.execute(
                "SELECT key, value, origin, seq, version, epoch, rid FROM kv ORDER BY key")
        }
        requests = {rid: [origin, seq, version] + (["noop"] if noop else [])
                    for rid, origin, seq, version, noop in db.execute(
                        "SELECT rid, origin, seq, version, noop FROM requests")}
        clock = VectorClock(dict(db.execute("SELECT replica, count FROM clock"))).encode()
    except sqlite3.Error as e:
        return {"error": f"cannot read {path}: {e}"}
    finally:
        db.close()
    return {"records": records, "requests": requests, "clock": clock}


def run(config: RunConfig, progress: Callable[[str], None] = print) -> RunResult:
    return ChaosRun(config, progress).run()
