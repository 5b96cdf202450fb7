"""Throughput benchmark: replicad against Redis, like for like, on 127.0.0.1.

Real ``twistd replicad`` processes (LocalCluster, 3 replicas, in a temporary directory,
free ports) and our own ``redis-server`` processes (free loopback port, temporary dir,
no RDB snapshots, AOF with ``appendfsync always`` and ``everysec``), each measured for
--ops operations with --value-bytes values (default 2,000 and 100):

1. One-shot connections, sequential, one client (the replicad client model: connect,
   one request, read the reply, close), over raw sockets for both stores: PUT/SET, GET,
   and PING as the floor (no storage at all).  replicad with write_quorum 1 and 2 at the
   coordinator, and through a follower (forwarding); plus BlockingClient rows (the client
   library: session context, retry policy) to show what the library adds.
2. One persistent connection, pipelined: all requests written (by a sender thread),
   all replies read, for PUT/SET and GET.
3. Concurrency: --threads (8) client threads doing one-shot PUTs/SETs: aggregate ops/s
   and latency percentiles.

Every reply is checked byte for byte against the expected one (``OK``/``VALUE <v>`` for
replicad, ``+OK``/``$100 ...`` for Redis); a wrong reply or a socket error counts as an
error and is reported.  The server CPU time per operation comes from /proc (utime +
stime of every replica process, or of redis-server).  The script never installs
anything: without ``redis-server`` on the PATH it says how to install it and measures
replicad alone.

Results are printed as markdown; with --write they also replace the "throughput"
section of docs/benchmarks.md.  Nothing but 127.0.0.1 is contacted.

The client here is this Python script, which is slower than both servers for most rows;
bench/suite.py measures the same comparison (and more: 50 connections, 1/3/5 replicas,
a connection burst, the targets of issue #10) with a C load generator.  This script stays
for what the suite does not measure: the BlockingClient rows and the storage alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable

import _common
from _common import Summary, markdown_table

from replicad.client import BlockingClient, ClientError, build_request, get_result, put_result
from replicad.cluster import LocalCluster, _die_with_parent, find_free_base_port

now = time.perf_counter
IO_TIMEOUT_S = 10.0          # per socket operation; a stalled server fails the op, not the run
MAX_ERRORS_PER_ROW = 20      # then the row stops early (and says so)
SLOW_S = 0.020               # operations slower than this are counted as stalls
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
INSTALL_HINT = ("redis-server is not installed: run `apt-get install -y redis-server` to "
                "compare with Redis; measuring replicad alone")


# Wire formats ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Wire:
    """Request and expected reply bytes of one store's protocol (no session context)."""

    name: str

    def put(self, key: str, value: str) -> bytes:
        if self.name == "replicad":
            return f"PUT {key} {value}\r\n".encode()
        return resp("SET", key, value)

    def get(self, key: str) -> bytes:
        return f"GET {key}\r\n".encode() if self.name == "replicad" else resp("GET", key)

    def ping(self) -> bytes:
        return b"PING\r\n" if self.name == "replicad" else resp("PING")

    def put_reply(self) -> bytes:
        return b"OK\r\n" if self.name == "replicad" else b"+OK\r\n"

    def get_reply(self, value: str) -> bytes:
        data = value.encode()
        if self.name == "replicad":
            return b"VALUE " + data + b"\r\n"
        return b"$%d\r\n%s\r\n" % (len(data), data)

    def ping_reply(self) -> bytes:
        return b"PONG\r\n" if self.name == "replicad" else b"+PONG\r\n"


def resp(*words: str) -> bytes:
    """A RESP array of bulk strings: what redis-cli sends."""
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


REPLICAD = Wire("replicad")
REDIS = Wire("redis")


def read_expected(sock: socket.socket, expected: bytes) -> str | None:
    """Read len(expected) bytes and compare them as they come; None if equal.

    On a difference, reads to the end of the offending line (a server error is one line)
    and returns a description of it; also on EOF or timeout.
    """
    got = 0
    mismatch = -1
    tail = bytearray()
    while got < len(expected):
        try:
            chunk = sock.recv(262144)
        except TimeoutError:
            return f"no complete reply within {IO_TIMEOUT_S:g} s ({got} of {len(expected)} bytes)"
        except OSError as e:
            return f"connection broken after {got} bytes: {e.strerror or e}"
        if not chunk:
            return f"connection closed after {got} of {len(expected)} bytes"
        if mismatch < 0:
            want = expected[got:got + len(chunk)]
            if chunk != want:   # a different byte, or more bytes than expected
                pairs = enumerate(zip(chunk, want, strict=False))
                mismatch = got + next((i for i, (a, b) in pairs if a != b), len(want))
                line_start = expected.rfind(b"\n", 0, mismatch) + 1
                tail += expected[line_start:got] + chunk
        else:
            tail += chunk
        got += len(chunk)
        if mismatch >= 0 and tail.count(b"\n") >= 1:
            break
    if mismatch < 0:
        return None
    line = bytes(tail).split(b"\n", 1)[0].rstrip(b"\r")
    return f"unexpected reply at byte {mismatch}: {line[:120].decode('utf-8', 'replace')!r}"


def one_shot(address: tuple[str, int], request: bytes, expected: bytes) -> str | None:
    """Connect, send one request, read its reply, close.  None on success, else why."""
    try:
        sock = socket.create_connection(address, timeout=IO_TIMEOUT_S)
    except OSError as e:
        return f"connect failed: {e.strerror or e}"
    try:
        sock.sendall(request)
        return read_expected(sock, expected)
    except OSError as e:
        return f"send failed: {e.strerror or e}"
    finally:
        sock.close()


# Servers --------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), from /proc; NaN if unknown."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14, 15 of stat
    return total


@dataclasses.dataclass
class Target:
    """One server (or cluster entry point) the rows talk to."""

    label: str
    wire: Wire
    address: tuple[str, int]
    pids: Callable[[], list[int]]     # every process of the store (all replicas)
    coordinator_pid: Callable[[], list[int]]   # the one serving (coordinator, redis-server)


class Redis:
    """A redis-server of our own on a free loopback port, in its own directory."""

    def __init__(self, binary: str, workdir: str, mode: str):
        self.mode = mode
        self.dir = os.path.join(workdir, f"redis-{mode}")
        os.makedirs(self.dir)
        self.port = find_free_base_port(1) + 1
        persistence = (["--appendonly", "no"] if mode == "off" else
                       ["--appendonly", "yes", "--appendfsync", mode])
        self.argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--dir", self.dir, *persistence, "--daemonize", "no",
                     "--logfile", os.path.join(self.dir, "redis.log")]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> str:
        if self.mode == "off":
            return "--save '' --appendonly no"
        return f"--save '' --appendonly yes --appendfsync {self.mode}"

    def start(self) -> None:
        with open(os.path.join(self.dir, "redis.out"), "wb") as out:
            # Its own session (a Ctrl-C reaches only us; we stop it), and SIGTERM if we die.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent())
        deadline = time.monotonic() + 10
        while one_shot(("127.0.0.1", self.port), REDIS.ping(), REDIS.ping_reply()) is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server ({self.settings}) did not answer PING: "
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        text = ""
        for name in ("redis.log", "redis.out"):
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8",
                          errors="replace") as handle:
                    text += handle.read()
            except OSError:
                pass
        return " | ".join(text.strip().splitlines()[-5:]) or "(no log)"

    def stop(self) -> None:
        stop_process(self.proc)

    def target(self) -> Target:
        proc = self.proc
        return Target(f"Redis appendfsync {self.mode}" if self.mode != "off"
                      else "Redis, no persistence", REDIS, ("127.0.0.1", self.port),
                      lambda: [proc.pid], lambda: [proc.pid])


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM a server this script started, SIGKILL if it lingers past 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    return out.replace("Redis server ", "")


def start_cluster(workdir: str, size: int, quorum: int,
                  progress) -> tuple[LocalCluster, int, int | None]:
    """A cluster with every peer link up; (cluster, coordinator, a follower or None)."""
    cluster = LocalCluster(size, find_free_base_port(size),
                           os.path.join(workdir, f"n{size}-wq{quorum}"),
                           overrides={"write_quorum": str(quorum)})
    cluster.start()
    cluster.wait_ready(timeout_s=30)

    def state() -> tuple | None:
        """(coordinator, epochs) once every link is up and the coordinator serves."""
        statuses = cluster.statuses(1.0)
        if any(s is None or "down" in str(s.get("peers")) for s in statuses.values()):
            return None
        named = {s["coordinator"] for s in statuses.values()}
        if len(named) != 1:
            return None
        (leader,) = named
        if (statuses.get(leader) or {}).get("ready") != "yes" \
                or statuses[leader].get("write_quorum") != quorum:
            return None
        return tuple((i, s["coordinator"], s["epoch"]) for i, s in sorted(statuses.items()))

    # Replicas started a few ms apart hold more than one election at start-up: wait until
    # nothing changed for half a second, so the measurement starts on a quiet cluster.
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
    progress(f"cluster of {size}, write_quorum={quorum} up: coordinator {coordinator}, "
             f"follower used for forwarding {follower}")
    return cluster, coordinator, follower


def replica_target(cluster: LocalCluster, i: int, coordinator: int, label: str) -> Target:
    address = cluster.client_address(i)
    return Target(label, REPLICAD, (address.host, address.port),
                  lambda: [p for p in map(cluster.pid, cluster.ids) if p is not None],
                  lambda: [p for p in [cluster.pid(coordinator)] if p is not None])


# Measurements ---------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    part: str                 # "one-shot", "pipelined", "concurrent"
    target: str
    op: str
    ops: int                  # operations attempted
    wall_s: float
    latencies: list[float]    # seconds, successful operations only
    errors: list[str]
    cpu_s: float              # CPU time of every server process during the row (NaN: unknown)
    coordinator_cpu_s: float  # of the coordinator (or redis-server) alone
    note: str = ""

    @property
    def ok(self) -> int:
        return self.ops - len(self.errors)

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_s / self.ops * 1e6 if self.ops else float("nan")

    @property
    def coordinator_cpu_us_per_op(self) -> float:
        return self.coordinator_cpu_s / self.ops * 1e6 if self.ops else float("nan")


class CpuMeter:
    """CPU time of a target's processes between start() and stop()."""

    def __init__(self, target: Target):
        self.target = target
        self.all = self.coordinator = float("nan")

    def start(self) -> None:
        self._all0 = cpu_seconds(self.target.pids())
        self._coordinator0 = cpu_seconds(self.target.coordinator_pid())

    def stop(self) -> None:
        self.all = cpu_seconds(self.target.pids()) - self._all0
        self.coordinator = cpu_seconds(self.target.coordinator_pid()) - self._coordinator0


Op = Callable[[int], str | None]    # operation number -> None on success, else why


class Bench:
    def __init__(self, args: argparse.Namespace, progress):
        self.args = args
        self.progress = progress
        self.value = "v" * args.value_bytes
        self.rows: list[Row] = []
        self._tags = 0

    def keys(self) -> Callable[[int], str]:
        """A fresh key space per PUT row: every PUT inserts a new key, in both stores."""
        self._tags += 1
        tag = self._tags
        return lambda n: f"tp{tag:02d}-{n:07d}"

    def _warm(self, op: Op) -> None:
        for n in range(self.args.warmup):
            op(self.args.ops + n)   # keys beyond the measured range

    def sequential(self, target: Target, op_name: str, op: Op, note: str = "") -> Row:
        self._warm(op)
        latencies: list[float] = []
        errors: list[str] = []
        ops = self.args.ops
        cpu = CpuMeter(target)
        cpu.start()
        start = now()
        done = 0
        for n in range(ops):
            t0 = now()
            why = op(n)
            t1 = now()
            done += 1
            if why is None:
                latencies.append(t1 - t0)
            else:
                errors.append(why)
                if len(errors) >= MAX_ERRORS_PER_ROW:
                    note = (note + "; " if note else "") + f"stopped after {done} ops"
                    break
        wall = now() - start
        cpu.stop()
        row = Row("one-shot", target.label, op_name, done, wall, latencies, errors,
                  cpu.all, cpu.coordinator, note)
        self._done(row)
        return row

    def pipelined(self, target: Target, op_name: str, requests: Callable[[int], bytes],
                  reply: Callable[[int], bytes]) -> Row:
        ops = self.args.ops
        payload = b"".join(requests(n) for n in range(ops))
        expected = b"".join(reply(n) for n in range(ops))
        errors: list[str] = []
        sock = socket.create_connection(target.address, timeout=IO_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent_error: list[str] = []

        def send() -> None:
            try:
                sock.sendall(payload)
            except OSError as e:
                sent_error.append(f"send failed: {e.strerror or e}")

        try:
            # Warm the connection with a PING and its reply, outside the timing.
            sock.sendall(target.wire.ping())
            why = read_expected(sock, target.wire.ping_reply())
            if why is not None:
                errors.append(f"warm-up: {why}")
            cpu = CpuMeter(target)
            cpu.start()
            start = now()
            sender = threading.Thread(target=send, name="pipeline-sender", daemon=True)
            sender.start()
            why = read_expected(sock, expected)
            wall = now() - start
            cpu.stop()
            sender.join(timeout=IO_TIMEOUT_S)
        finally:
            sock.close()
        errors += sent_error
        if why is not None:
            errors.append(why)
        # A pipelined batch succeeds or fails as a whole: no per-request latency.
        row = Row("pipelined", target.label, op_name, ops, wall, [], errors, cpu.all,
                  cpu.coordinator)
        if errors:   # do not report a rate for a broken batch
            row.wall_s = float("nan")
        self._done(row)
        return row

    def concurrent(self, target: Target, op_name: str, op: Op) -> Row:
        threads = self.args.threads
        ops = self.args.ops
        self._warm(op)
        barrier = threading.Barrier(threads + 1)
        results: list[tuple[float, float, list[float], list[str]]] = []
        lock = threading.Lock()

        def worker(index: int) -> None:
            mine = range(index, ops, threads)
            latencies: list[float] = []
            errors: list[str] = []
            barrier.wait()
            start = now()
            for n in mine:
                t0 = now()
                why = op(n)
                t1 = now()
                if why is None:
                    latencies.append(t1 - t0)
                else:
                    errors.append(why)
                    if len(errors) >= MAX_ERRORS_PER_ROW:
                        break
            end = now()
            with lock:
                results.append((start, end, latencies, errors))

        workers = [threading.Thread(target=worker, args=(i,), name=f"client-{i}", daemon=True)
                   for i in range(threads)]
        for w in workers:
            w.start()
        cpu = CpuMeter(target)
        cpu.start()
        barrier.wait()
        for w in workers:
            w.join(timeout=IO_TIMEOUT_S * ops)
        cpu.stop()
        wall = max(r[1] for r in results) - min(r[0] for r in results)
        latencies = [x for r in results for x in r[2]]
        errors = [x for r in results for x in r[3]]
        row = Row("concurrent", target.label, op_name, len(latencies) + len(errors), wall,
                  latencies, errors, cpu.all, cpu.coordinator, f"{threads} threads")
        self._done(row)
        return row

    def _done(self, row: Row) -> None:
        self.rows.append(row)
        s = Summary.of(row.latencies)
        latency = (f", median {fmt_ms(s.median)} ms, p99 {fmt_ms(s.p99)} ms"
                   if row.latencies else "")
        self.progress(f"{row.part}: {row.target} {row.op}: {row.rate:,.0f} ops/s{latency}"
                      + (f", {len(row.errors)} errors (first: {row.errors[0]})"
                         if row.errors else ""))

    # The three parts for one target ---------------------------------------------------

    def one_shot_rows(self, target: Target, ping: bool = True, get: bool = True,
                      note: str = "") -> None:
        wire, address, value = target.wire, target.address, self.value
        if ping:
            request, reply = wire.ping(), wire.ping_reply()
            self.sequential(target, "PING", lambda n: one_shot(address, request, reply), note)
        key = self.keys()
        put_reply = wire.put_reply()
        self.sequential(target, "PUT",
                        lambda n: one_shot(address, wire.put(key(n), value), put_reply), note)
        if get:
            get_reply = wire.get_reply(value)
            self.sequential(target, "GET",
                            lambda n: one_shot(address, wire.get(key(n)), get_reply), note)

    def pipelined_rows(self, target: Target) -> None:
        wire, value = target.wire, self.value
        key = self.keys()
        self.pipelined(target, "PUT", lambda n: wire.put(key(n), value),
                       lambda n: wire.put_reply())
        self.pipelined(target, "GET", lambda n: wire.get(key(n)),
                       lambda n: wire.get_reply(value))

    def concurrent_rows(self, target: Target) -> None:
        wire, address, value = target.wire, target.address, self.value
        key = self.keys()
        put_reply = wire.put_reply()
        self.concurrent(target, "PUT",
                        lambda n: one_shot(address, wire.put(key(n), value), put_reply))

    def client_library_rows(self, cluster: LocalCluster, target: Target) -> None:
        """BlockingClient over the static server list: what replicad-cli does."""
        client = BlockingClient(cluster.addresses(), timeout_s=IO_TIMEOUT_S)
        key = self.keys()
        value = self.value
        forwarded = [0, 0]   # PUT, GET replies whose executing replica != the one reached

        def put(n: int) -> str | None:
            try:
                reply, address = client.exchange(build_request("PUT", key(n), value))
                put_result(reply, address)
            except ClientError as e:
                return f"{type(e).__name__}: {e}"
            if reply.meta is not None and reply.meta.here != reply.meta.by:
                forwarded[0] += 1
            return None

        def get(n: int) -> str | None:
            try:
                reply, address = client.exchange(build_request("GET", key(n)))
                got = get_result(reply, address)
            except ClientError as e:
                return f"{type(e).__name__}: {e}"
            if reply.meta is not None and reply.meta.here != reply.meta.by:
                forwarded[1] += 1
            return None if got == value else f"GET {key(n)} returned {got!r:.40}"

        label = f"{target.label.split(',')[0]}, BlockingClient (all 3 servers)"
        lib = dataclasses.replace(target, label=label)
        self.sequential(lib, "PUT", put)
        self.rows[-1].note = f"{forwarded[0]} forwarded"
        forwarded[0] = 0
        self.sequential(lib, "GET", get)
        self.rows[-1].note = f"{forwarded[1]} forwarded"


# Context: the disk, the replicas' logs -----------------------------------------------------


def fsync_probe(directory: str, samples: int = 200) -> Summary:
    """Append 100 bytes + fdatasync, as a WAL commit does: the disk's floor per write."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(samples):
            t0 = now()
            os.write(fd, b"x" * 100)
            os.fdatasync(fd)
            times.append(now() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return Summary.of(times)


def store_probes(directory: str, ops: int, warmup: int, value: str) -> dict[str, Summary]:
    """Store.write as shipped (WAL, synchronous=FULL), without fsync, and Store.get."""
    from replicad.store import Store

    results: dict[str, Summary] = {}
    for mode in ("FULL", "OFF"):
        path = os.path.join(directory, f"store-probe-{mode}.sqlite")
        store = Store(path)
        try:
            if mode != "FULL":
                store._db.execute(f"PRAGMA synchronous={mode}")   # this probe's store only
            for n in range(warmup):
                store.write(1, f"warm{n:07d}", value)
            times = []
            for n in range(ops):
                t0 = now()
                store.write(1, f"k{n:07d}", value)
                times.append(now() - t0)
            label = ("Store.write as shipped (WAL, synchronous=FULL: fsync per commit)"
                     if mode == "FULL" else "Store.write with synchronous=OFF (no fsync)")
            results[label] = Summary.of(times)
            if mode == "FULL":
                times = []
                for n in range(ops):
                    t0 = now()
                    store.get(f"k{n:07d}")
                    times.append(now() - t0)
                results["Store.get"] = Summary.of(times)
        finally:
            store.close()
    return results


def filesystem_of(path: str) -> str:
    """'ext4 on /dev/vda' for the mount holding path (longest matching mount point)."""
    best = ("", "unknown filesystem")
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            for line in handle:
                device, mount, kind = line.split()[:3]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) \
                        and len(mount) > len(best[0]):
                    best = (mount, f"{kind} on {device}")
    except OSError:
        pass
    return best[1]


LOG_PROBLEMS = ("Traceback", "Unhandled", "ERROR", "failed", "INTERNAL", "did not answer",
                "election", "is down", "is now", "conflict", "gap")


def log_offsets(cluster: LocalCluster) -> dict[int, int]:
    """Where each replica's log ends now: the measurement's lines come after."""
    offsets = {}
    for i in cluster.ids:
        try:
            offsets[i] = os.path.getsize(cluster.log_path(i))
        except OSError:
            offsets[i] = 0
    return offsets


def log_findings(cluster: LocalCluster, label: str,
                 offsets: dict[int, int]) -> tuple[list[str], list[str]]:
    """What the replicas logged during the measurement: (trouble, anti-entropy pulls)."""
    found, pulls = [], []
    for i in cluster.ids:
        try:
            with open(cluster.log_path(i), "rb") as handle:
                handle.seek(offsets.get(i, 0))
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        pulled = [line for line in lines if "pulled " in line]
        bad = [line for line in lines
               if line not in pulled and any(word in line for word in LOG_PROBLEMS)]
        if bad:
            kinds = Counter(next(word for word in LOG_PROBLEMS if word in line)
                            for line in bad)
            found.append(f"{label}, replica {i}: {len(bad)} log lines ("
                         + ", ".join(f"{n} '{word}'" for word, n in kinds.most_common())
                         + f") such as `{bad[0][:200]}`")
        if pulled:
            text = pulled[0].split("] ", 1)[-1]
            pulls.append(f"{label}, replica {i}: {len(pulled)} pulls, e.g. `{text[:160]}`")
    return found, pulls


# Report ---------------------------------------------------------------------------------


CPU_COORDINATOR = "coordinator CPU µs/op"
CPU_ALL = "all replicas CPU µs/op"


def fmt_ms(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    value = seconds * 1000
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def fmt_rate(rate: float) -> str:
    return "-" if rate != rate else f"{rate:,.0f}"


def fmt_cpu(us: float) -> str:
    return "-" if us != us else f"{us:,.0f}"


def find(rows: list[Row], part: str, target: str, op: str) -> Row | None:
    for row in rows:
        if row.part == part and row.target == target and row.op == op:
            return row
    return None


def headline(rows: list[Row]) -> list[str]:
    """replicad vs Redis ratios for the rows both have."""
    pairs = [
        ("one-shot PUT", "one-shot", "replicad wq=1, coordinator", "Redis appendfsync always",
         "PUT"),
        ("one-shot PUT", "one-shot", "replicad wq=1, coordinator",
         "Redis appendfsync everysec", "PUT"),
        ("one-shot PUT", "one-shot", SINGLE, "Redis appendfsync always", "PUT"),
        ("one-shot GET", "one-shot", "replicad wq=1, coordinator", "Redis appendfsync always",
         "GET"),
        ("one-shot PING", "one-shot", "replicad wq=1, coordinator", "Redis appendfsync always",
         "PING"),
        ("pipelined PUT", "pipelined", "replicad wq=1, coordinator",
         "Redis appendfsync always", "PUT"),
        ("pipelined GET", "pipelined", "replicad wq=1, coordinator",
         "Redis appendfsync always", "GET"),
        ("concurrent PUT", "concurrent", "replicad wq=1, coordinator",
         "Redis appendfsync always", "PUT"),
    ]
    lines = []
    for label, part, ours, theirs, op in pairs:
        a, b = find(rows, part, ours, op), find(rows, part, theirs, op)
        if a is None or b is None or not (a.rate > 0 and b.rate > 0):
            continue
        who = "1 replica" if ours == SINGLE else "3 replicas, write_quorum=1"
        lines.append(f"- {label}: replicad ({who}) {fmt_rate(a.rate)} "
                     f"ops/s vs {theirs} {fmt_rate(b.rate)} ops/s: Redis is "
                     f"{b.rate / a.rate:.1f}x faster")
    return lines


def report(args: argparse.Namespace, bench: Bench, context: dict, elapsed_s: float) -> str:
    title = "" if args.section == "throughput" else f" [{args.section}]"
    lines = [f"## Throughput against Redis (bench/throughput.py){title}", "",
             "Command:", "", "```", _common.command_line(), "```", ""]
    lines += _common.machine_lines()
    lines += args.code.lines()
    lines += [
        f"- Redis: {context['redis']}",
        f"- settings: {args.ops:,} operations per row (+{args.warmup} untimed warm-up), "
        f"{args.value_bytes}-byte values, a new key per PUT, {args.threads} threads in the "
        "concurrency part; the client is this Python script on the same 2 cores",
        "- replicad: clusters of 3 replicas with write_quorum (`wq`) 1 and 2, and of 1 "
        "replica (LocalCluster, real twistd processes, one after the other), default "
        "timers; SQLite WAL with synchronous=FULL: an fsync per write on every replica",
        f"- Redis servers: `redis-server --port N --bind 127.0.0.1 --dir TMP` plus "
        f"{'; '.join(f'`{s}`' for s in context['redis_settings']) or '(not run)'}",
        f"- data directories: {context['filesystem']}; append 100 B + fdatasync there: "
        f"median {fmt_ms(context['fsync'].median)} ms, p99 {fmt_ms(context['fsync'].p99)} ms "
        f"({context['fsync'].n} samples)",
        f"- total run time: {elapsed_s:.0f} s",
        "",
    ]
    if context.get("redis_missing"):
        lines += [f"**{INSTALL_HINT}.**", ""]
    head = headline(bench.rows)
    if head:
        lines += ["Headline:", "", *head, ""]

    rows = [r for r in bench.rows if r.part == "one-shot"]
    if rows:
        lines += [
            "### 1. One-shot connections, sequential, one client", "",
            "Each operation: connect, send one request, read the whole reply, close "
            "(raw sockets for both stores unless the row says BlockingClient). Latency is "
            "per operation, connect and close included; ops/s = successful operations / "
            "wall time of the row; CPU = utime+stime per operation from /proc (10 ms ticks) "
            "of the coordinator, and of all three replica processes (for Redis both are "
            "redis-server). PUT is SET for Redis. Latencies in milliseconds.", "",
        ]
        table = []
        for r in rows:
            s = Summary.of(r.latencies)
            table.append([r.target, r.op, r.ops, fmt_rate(r.rate), fmt_ms(s.median),
                          fmt_ms(s.p99), fmt_ms(s.max), fmt_cpu(r.coordinator_cpu_us_per_op),
                          fmt_cpu(r.cpu_us_per_op), len(r.errors), r.note])
        lines += markdown_table(["target", "op", "ops", "ops/s", "median", "p99", "max",
                                 CPU_COORDINATOR, CPU_ALL, "errors", "note"], table)
        lines.append("")

    rows = [r for r in bench.rows if r.part == "pipelined"]
    if rows:
        lines += [
            "### 2. One persistent connection, pipelined", "",
            f"All {args.ops:,} requests written on one connection (a sender thread), all "
            "replies read and compared; ops/s = requests / time from the first byte sent "
            "to the last reply read. replicad answers a connection's requests one at a "
            "time (it pauses reading while serving), so this removes the connection and "
            "round-trip costs but not the per-write commit.", "",
        ]
        table = [[r.target, r.op, r.ops, fmt_rate(r.rate),
                  f"{r.wall_s / r.ops * 1e6:.1f}" if r.ops and r.wall_s == r.wall_s else "-",
                  fmt_cpu(r.coordinator_cpu_us_per_op), fmt_cpu(r.cpu_us_per_op),
                  len(r.errors)] for r in rows]
        lines += markdown_table(["target", "op", "ops", "ops/s", "µs per op",
                                 CPU_COORDINATOR, CPU_ALL, "errors"], table)
        lines.append("")

    rows = [r for r in bench.rows if r.part == "concurrent"]
    if rows:
        lines += [
            f"### 3. Concurrency: {args.threads} client threads, one-shot PUTs", "",
            f"{args.ops:,} PUTs shared by {args.threads} threads, each a one-shot connection "
            "to the coordinator (or Redis); ops/s = all operations / time from the first "
            "start to the last finish. Milliseconds.", "",
        ]
        table = []
        for r in rows:
            s = Summary.of(r.latencies)
            table.append([r.target, r.op, r.ops, fmt_rate(r.rate), fmt_ms(s.median),
                          fmt_ms(s.p99), fmt_ms(s.max), fmt_cpu(r.coordinator_cpu_us_per_op),
                          fmt_cpu(r.cpu_us_per_op), len(r.errors)])
        lines += markdown_table(["target", "op", "ops", "ops/s", "median", "p99", "max",
                                 CPU_COORDINATOR, CPU_ALL, "errors"], table)
        lines.append("")

    probes = context.get("probes")
    if probes:
        lines += [
            "### 4. The storage alone (in this process, no network, no Twisted)", "",
            f"{args.ops:,} operations each on a fresh `replicad.store.Store` in the same "
            "temporary directory as the replicas, new key per write; the synchronous=OFF "
            "store is this benchmark's own (its connection's PRAGMA changed), to show what "
            "the fsync costs. Milliseconds.", "",
        ]
        table = [[label, s.n, fmt_ms(s.median), fmt_ms(s.p99), fmt_ms(s.max)]
                 for label, s in probes.items()]
        lines += markdown_table(["operation", "n", "median", "p99", "max"], table)
        lines.append("")

    problems = []
    for r in bench.rows:
        if r.errors:
            distinct = sorted(set(r.errors))
            problems.append(f"{r.part} {r.target} {r.op}: {len(r.errors)} errors, e.g. "
                            + "; ".join(f"`{e}`" for e in distinct[:3]))
    for r in bench.rows:
        slow = sorted((x for x in r.latencies if x > SLOW_S), reverse=True)
        if slow:
            problems.append(
                f"{r.part} {r.target} {r.op}: {len(slow)} of {r.ops} operations took over "
                f"{SLOW_S * 1000:.0f} ms (" + ", ".join(fmt_ms(x) for x in slow[:5])
                + (", ..." if len(slow) > 5 else "") + " ms)")
    problems += context["log_findings"]
    lines += ["### Errors and anomalies", ""]
    lines += [f"- {p}" for p in problems] or [
        f"None: every reply was the expected one, no operation took over "
        f"{SLOW_S * 1000:.0f} ms, and the replicas' logs show no error, failed call, "
        "election or role change while they were measured."]
    if context["pulls"]:
        lines += ["", "Anti-entropy pulls logged while the replicas were measured (a follower "
                  "fetching writes it lacked from the coordinator):", ""]
        lines += [f"- {p}" for p in context["pulls"]]
    lines.append("")
    return "\n".join(lines)


# Main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=2000,
                        help="operations per measured row (default 2000)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="untimed operations before each row (default 50)")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=8,
                        help="client threads in the concurrency part (default 8)")
    parser.add_argument("--redis-modes", default="always,everysec",
                        help="Redis persistence per server: always, everysec, no (AOF with "
                             "that appendfsync) or off (no AOF); default always,everysec")
    parser.add_argument("--skip-redis", action="store_true", help="measure replicad only")
    parser.add_argument("--skip-replicad", action="store_true", help="measure Redis only")
    _common.add_output_arguments(parser, "throughput", "throughput-large")
    _common.add_keep_argument(parser)
    args = parser.parse_args(argv)
    args.redis_modes = [m.strip() for m in args.redis_modes.split(",") if m.strip()]
    if any(m not in ("always", "everysec", "no", "off") for m in args.redis_modes):
        parser.error("--redis-modes takes always, everysec, no and/or off")
    if args.ops < 1 or args.threads < 1 or args.warmup < 0 or args.value_bytes < 1:
        parser.error("--ops, --threads and --value-bytes must be positive")
    return args


def measure_redis(bench: Bench, binary: str, workdir: str, context: dict) -> None:
    for mode in bench.args.redis_modes:
        server = Redis(binary, workdir, mode)
        context["redis_settings"].append(server.settings)
        server.start()
        try:
            target = server.target()
            bench.progress(f"{target.label} on port {server.port}")
            bench.one_shot_rows(target, ping=mode == bench.args.redis_modes[0])
            bench.pipelined_rows(target)
            if mode == "always":
                bench.concurrent_rows(target)
        finally:
            server.stop()


SINGLE = "replicad, 1 replica (no replication)"


def measure_replicad(bench: Bench, workdir: str, context: dict) -> None:
    for size, quorum in ((3, 1), (3, 2), (1, 1)):
        cluster, coordinator, follower = start_cluster(workdir, size, quorum, bench.progress)
        with cluster:
            offsets = log_offsets(cluster)
            label = SINGLE if size == 1 else f"replicad wq={quorum}, coordinator"
            coord = replica_target(cluster, coordinator, coordinator, label)
            bench.one_shot_rows(coord, ping=(size, quorum) == (3, 1))
            if follower is not None and quorum == 1:
                via = replica_target(cluster, follower, coordinator,
                                     "replicad wq=1, via a follower")
                bench.one_shot_rows(via, ping=False)
                bench.client_library_rows(cluster, coord)
            bench.pipelined_rows(coord)
            bench.concurrent_rows(coord)
            cluster.check_alive()
            name = "1 replica" if size == 1 else f"3 replicas, wq={quorum}"
            findings, pulls = log_findings(cluster, name, offsets)
            context["log_findings"] += findings
            context["pulls"] += pulls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.code = _common.CodeWatch()
    started = now()

    progress = _common.progress_printer(started)

    workdir = tempfile.mkdtemp(prefix="replicad-bench-throughput-")
    binary = shutil.which("redis-server")
    context: dict = {"redis_settings": [], "log_findings": [], "pulls": [],
                     "redis_missing": binary is None and not args.skip_redis,
                     "redis": redis_version(binary) if binary else "not installed",
                     "filesystem": filesystem_of(os.path.realpath(workdir))}
    if context["redis_missing"]:
        print(INSTALL_HINT, file=sys.stderr, flush=True)
    bench = Bench(args, progress)
    try:
        context["fsync"] = fsync_probe(workdir)
        if not args.skip_replicad:
            context["probes"] = {"append 100 B + fdatasync (the disk alone)": context["fsync"],
                                 **store_probes(workdir, args.ops, args.warmup, bench.value)}
        if not args.skip_replicad:
            measure_replicad(bench, workdir, context)
        if binary and not args.skip_redis:
            measure_redis(bench, binary, workdir, context)
    except BaseException:
        progress(f"failed; logs kept in {workdir}")
        raise
    else:
        if args.keep:
            progress(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(args, bench, context, now() - started)
    _common.publish(text, args.section, args.write, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
