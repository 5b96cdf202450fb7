"""Synchronisation benchmark (issue #4): full copy vs delta, time and bytes on the wire.

For each database size N (default 1k, 10k, 100k keys, ~100-byte values) and each number
of missed writes M (default 1, 100, 1000):

- a *template* store holds N keys written by replica 3 (built in one transaction);
- the *source* is a copy of the template plus M more writes through ``Store.write`` (they
  update existing keys spread over the key space, as a coordinator keeps writing while a
  replica is down);
- the *receiver* is a fresh copy of the template: it has all but the last M writes.

Each transfer goes through the real peer protocol over loopback TCP, in this process: a
``PeerServerFactory`` whose handler answers FULL and DELTA from the source store exactly as
``Replica.peer_request`` does, and an authenticated ``PeerClientProtocol`` on the
receiving side streaming the records into ``Store.begin_import()`` and calling
``finish()``, as ``Replica._pull`` does.  Measured: wall time from the request to the end
of ``finish()`` (and the part spent in ``finish()``), bytes received by the client
protocol after the request (every byte of the stream), records.  After every transfer
the receiver's clock and every record (value, write id, version) must equal the
source's, or the benchmark stops with an error.

Rows: ``delta`` and ``full`` into the receiver that misses M writes (what the original
design would do), and once per N ``full (empty)``: a bootstrap into an empty replica.

Memory: the full copy into an empty store is also run with the receiving side alone in
a child process (fresh interpreter, its own reactor, connected to this process's
server), which reports its RSS before the request and its peak (VmHWM) after
``finish()``: the growth is the receiving side's memory for the copy.

Optionally (--real, on by default, --no-real to skip) one real-process measurement:
a LocalCluster of 3 twistd replicas, K keys written by a client, replica 1 killed, M
more written, replica 1 restarted, and the "pulled delta ... ms" line of its log read;
then replica 1 is killed, its database deleted, restarted, and "pulled full" read.

Everything printed is markdown; --write also replaces the "sync" section of
docs/benchmarks.md.  Nothing but 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import string
import sys
import tempfile
import time

import _common
from _common import Summary, markdown_table
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

from replicad import peerwire
from replicad.peer import PeerAnswer, PeerClientFactory, PeerClientProtocol, PeerServerFactory
from replicad.store import Record, Store
from replicad.vclock import VectorClock
from replicad.wire import Limits

now = time.perf_counter

SOURCE_ID = 3          # the replica the records come from (the coordinator)
RECEIVER_ID = 1
MEMBERS = {1, 2, 3}
STREAM_IDLE_TIMEOUT_S = 5.0      # as replica.STREAM_IDLE_TIMEOUT_S
MAX_LINE_BYTES = Limits().max_line_bytes + 1024   # as the replica's peer links


# The two sides ---------------------------------------------------------------------------


class SourceHandler:
    """Answers FULL and DELTA from ``self.store`` exactly as Replica.peer_request does."""

    def __init__(self) -> None:
        self.store: Store | None = None

    def peer_request(self, peer_id: int, verb: str, payload: str) -> PeerAnswer:
        assert self.store is not None
        if verb == "DELTA":
            clock, records = self.store.export_delta(peerwire.decode_clock(payload))
        elif verb == "FULL":
            clock, records = self.store.export_full()
        else:
            raise peerwire.PeerWireError(f"the benchmark source only serves FULL/DELTA, not {verb}")
        body = (("REC", peerwire.encode_record(record)) for record in records)
        return PeerAnswer("END", clock.encode(), body=body)


class CountingClientProtocol(PeerClientProtocol):
    """The replica's dialing-side protocol, counting the bytes it receives."""

    received_bytes = 0

    def dataReceived(self, data: bytes) -> None:
        self.received_bytes += len(data)
        super().dataReceived(data)


class CountingClientFactory(PeerClientFactory):
    def buildProtocol(self, addr) -> CountingClientProtocol:
        return CountingClientProtocol(self)


@dataclasses.dataclass
class Transfer:
    kind: str            # "FULL" or "DELTA"
    seconds: float       # request sent -> finish() returned
    finish_s: float      # of which importer.finish()
    wire_bytes: int      # bytes received after the request was sent
    records: int
    applied: int
    peak_rss_growth_kib: int | None = None
    rss_before_kib: int | None = None


async def connect(reactor, port: int, secret: str) -> CountingClientProtocol:
    factory = CountingClientFactory(RECEIVER_ID, SOURCE_ID, secret, reactor, MAX_LINE_BYTES)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    proto = await endpoint.connect(factory)
    await proto.authenticated
    return proto


async def pull(proto: CountingClientProtocol, receiver: Store, full: bool) -> Transfer:
    """What Replica._pull does: stream into an Importer, then finish() with the clock."""
    kind = "FULL" if full else "DELTA"
    importer = receiver.begin_import()
    received = 0

    def on_line(frame_kind: str, text: str) -> None:
        nonlocal received
        importer.add(peerwire.decode_record(text))
        received += 1

    proto.received_bytes = 0
    started = now()
    try:
        response = await proto.call(
            kind, "" if full else receiver.clock.encode(), STREAM_IDLE_TIMEOUT_S, on_line
        )
        if response.kind != "END":
            raise RuntimeError(f"{kind} answered {response.kind} {response.payload[:80]}")
        finishing = now()
        result = importer.finish(peerwire.decode_clock(response.payload))
    except BaseException:
        importer.abort()
        raise
    done = now()
    return Transfer(kind, done - started, done - finishing, proto.received_bytes, received,
                    result.applied)


# Building the stores ---------------------------------------------------------------------


def key_of(i: int) -> str:
    return f"user:{i:08d}"


def make_value(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=size))


def build_template(path: str, n: int, value_bytes: int, seed: int) -> None:
    """N keys written by SOURCE_ID, seq 1..N, in one transaction (fast, same records
    as N calls of Store.write on an empty store)."""
    rng = random.Random(seed)

    def records():
        for seq in range(1, n + 1):
            yield Record(key_of(seq - 1), make_value(rng, value_bytes), SOURCE_ID, seq,
                         VectorClock({SOURCE_ID: seq}))

    with Store(path) as store:
        store.apply(records(), VectorClock({SOURCE_ID: n}))


def remove_store(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def copy_store(src: str, dst: str) -> None:
    """Copy a closed store's files (dst is replaced)."""
    remove_store(dst)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(src + suffix):
            shutil.copyfile(src + suffix, dst + suffix)


def write_missed(path: str, n: int, m: int, value_bytes: int, seed: int) -> None:
    """M writes through Store.write (the coordinator's write path), spread over the keys."""
    rng = random.Random(seed)
    with Store(path) as store:
        for j in range(m):
            store.write(SOURCE_ID, key_of((j * n) // m if m <= n else j), make_value(
                rng, value_bytes))


def verify(source: Store, receiver: Store, what: str) -> None:
    """The receiver must hold exactly the source's clock and records; raise otherwise."""
    if receiver.clock != source.clock:
        raise AssertionError(
            f"{what}: receiver clock {receiver.clock.encode()} != source clock "
            f"{source.clock.encode()}"
        )
    _, mine = source.export_full()
    _, theirs = receiver.export_full()
    count = 0
    sentinel = object()
    while True:
        a, b = next(mine, sentinel), next(theirs, sentinel)
        if a is sentinel and b is sentinel:
            break
        if a != b:
            raise AssertionError(f"{what}: record #{count} differs: source {a!r:.200} "
                                 f"receiver {b!r:.200}")
        count += 1


# The receiving side in a child process (memory) ------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    return int(match.group(1)) if match else -1


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def child_main(spec: dict) -> int:
    """--receiver-child: pull one FULL or DELTA into spec["path"] and print JSON."""

    async def run(reactor) -> None:
        proto = await connect(reactor, spec["port"], spec["secret"])
        with Store(spec["path"]) as receiver:
            proto.received_bytes = 0
            reset = _reset_peak_rss()
            before = _status_kib("VmRSS")
            transfer = await pull(proto, receiver, spec["full"])
            peak = _status_kib("VmHWM")
        proto.transport.loseConnection()
        result = dataclasses.asdict(transfer)
        result.update(rss_before_kib=before, peak_kib=peak, reset=reset)
        print(json.dumps(result))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return 0


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.done.callback(getattr(reason.value, "exitCode", None) or 0)


async def pull_in_child(reactor, port: int, secret: str, path: str, full: bool) -> Transfer:
    spec = json.dumps({"port": port, "secret": secret, "path": path, "full": full})
    collect = _Collect()
    reactor.spawnProcess(collect, sys.executable,
                         [sys.executable, os.path.abspath(__file__), "--receiver-child", spec],
                         env=dict(os.environ))
    code = await collect.done
    if code != 0:
        raise RuntimeError(f"receiver child failed (exit {code}): "
                           f"{collect.err.decode(errors='replace')[-2000:]}")
    data = json.loads(collect.out.decode().strip().splitlines()[-1])
    transfer = Transfer(data["kind"], data["seconds"], data["finish_s"], data["wire_bytes"],
                        data["records"], data["applied"])
    transfer.rss_before_kib = data["rss_before_kib"]
    transfer.peak_rss_growth_kib = (data["peak_kib"] - data["rss_before_kib"]
                                    if data["reset"] else None)
    return transfer


# The in-process benchmark ----------------------------------------------------------------


@dataclasses.dataclass
class Row:
    n: int
    m: int | None         # None: the bootstrap into an empty store
    label: str
    transfers: list[Transfer]


async def run_in_process(reactor, args: argparse.Namespace, workdir: str, progress) -> list[Row]:
    secret = peerwire.new_nonce()
    handler = SourceHandler()
    server = PeerServerFactory(SOURCE_ID, MEMBERS, secret, handler, reactor, MAX_LINE_BYTES)
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server)
    port = listening.getHost().port
    rows: list[Row] = []
    try:
        for n in args.sizes:
            template = os.path.join(workdir, f"template-{n}.sqlite")
            started = now()
            build_template(template, n, args.value_bytes, seed=n)
            progress(f"N={n}: template built in {now() - started:.1f} s")
            for index, m in enumerate(args.missed):
                source_path = os.path.join(workdir, f"source-{n}-{m}.sqlite")
                copy_store(template, source_path)
                write_missed(source_path, n, m, args.value_bytes, seed=n + m)
                with Store(source_path) as source:
                    handler.store = source
                    plans = [("delta", False, template), ("full", True, template)]
                    if index == 0:
                        plans.append(("full (empty)", True, None))
                    for label, full, base in plans:
                        transfers = []
                        for _ in range(args.repeat):
                            receiver_path = os.path.join(workdir, "receiver.sqlite")
                            if base is None:
                                remove_store(receiver_path)
                            else:
                                copy_store(base, receiver_path)
                            with Store(receiver_path) as receiver:
                                proto = await connect(reactor, port, secret)
                                transfer = await pull(proto, receiver, full)
                                proto.transport.loseConnection()
                                verify(source, receiver, f"N={n} M={m} {label}")
                            transfers.append(transfer)
                        if base is None and args.memory:
                            receiver_path = os.path.join(workdir, "receiver-child.sqlite")
                            remove_store(receiver_path)
                            child = await pull_in_child(reactor, port, secret, receiver_path,
                                                        full)
                            with Store(receiver_path) as receiver:
                                verify(source, receiver, f"N={n} child {label}")
                            rows.append(Row(n, None, "full (empty), receiver in a child "
                                            "process", [child]))
                        row = Row(n, None if base is None else m, label, transfers)
                        rows.append(row)
                        best = Summary.of([t.seconds for t in transfers])
                        progress(f"N={n} M={m} {label}: median {best.median * 1000:.1f} ms, "
                                 f"{transfers[0].wire_bytes} bytes, "
                                 f"{transfers[0].records} records")
                    handler.store = None
                remove_store(source_path)
            remove_store(template)
    finally:
        await listening.stopListening()
    return rows


# The real-process measurement ------------------------------------------------------------

PULLED = re.compile(
    r"pulled (?P<kind>delta|full) from replica (?P<peer>\d+): (?P<records>\d+) records, "
    r"(?P<applied>\d+) applied, (?P<conflicts>\d+) conflicts, (?P<behind>\d+) writes behind, "
    r"(?P<ms>\d+) ms"
)


def run_real(args: argparse.Namespace, workdir: str, progress) -> list[dict]:
    from replicad.client import BlockingClient
    from replicad.cluster import LocalCluster, find_free_base_port

    results = []
    cluster = LocalCluster(3, find_free_base_port(3), os.path.join(workdir, "real"))
    rng = random.Random(7)
    with cluster:
        cluster.start()
        cluster.wait_ready(timeout_s=30)
        client = BlockingClient(cluster.addresses(), timeout_s=10)
        started = now()
        for i in range(args.real_keys):
            client.put(key_of(i), make_value(rng, args.value_bytes))
        progress(f"real: {args.real_keys} keys written in {now() - started:.1f} s")

        def pulled_after(offset: int, kind: str) -> dict:
            def find():
                with open(cluster.log_path(1), encoding="utf-8", errors="replace") as handle:
                    handle.seek(offset)
                    for match in PULLED.finditer(handle.read()):
                        if match.group("kind") == kind:
                            return match.groupdict()
                return None
            return cluster.wait_until(find, 30, what=f"a 'pulled {kind}' line of replica 1")

        # Delta: replica 1 misses M writes.
        cluster.kill(1, signal.SIGKILL)
        for i in range(args.real_missed):
            client.put(key_of(i), make_value(rng, args.value_bytes))
        offset = os.path.getsize(cluster.log_path(1))
        cluster.start_replica(1)
        delta = pulled_after(offset, "delta")
        results.append({"label": f"delta, {args.real_missed} missed writes", **delta})
        cluster.wait_ready(timeout_s=30)
        progress(f"real: {delta}")

        # Full: replica 1 comes back with an empty database.
        cluster.kill(1, signal.SIGKILL)
        shutil.rmtree(cluster.replica_dir(1))
        offset = os.path.getsize(cluster.log_path(1))
        cluster.start_replica(1)
        full = pulled_after(offset, "full")
        results.append({"label": "full, empty database", **full})
        cluster.wait_ready(timeout_s=30)
        progress(f"real: {full}")
        status = cluster.status(1)
        expected = cluster.status(cluster.coordinator() or 3)
        if status is None or expected is None or status["clock"] != expected["clock"]:
            raise AssertionError(f"replica 1 did not catch up: {status} vs {expected}")
    return results


# Report ------------------------------------------------------------------------------------


def report(args: argparse.Namespace, rows: list[Row], real: list[dict],
           elapsed_s: float) -> str:
    title = "" if args.section == "sync" else f" [{args.section}]"
    lines = [f"## Synchronisation: full copy vs delta (bench/sync.py, issue #4){title}", "",
             "Command:", "", "```", _common.command_line(), "```", ""]
    lines += _common.machine_lines()
    lines += args.code.lines()
    lines += [f"- total run time: {elapsed_s:.0f} s", ""]
    lines += [
        f"### In-process, real peer protocol over loopback TCP ({args.value_bytes}-byte "
        f"values, median of {args.repeat})", "",
        "`time` = request sent -> `Importer.finish()` returned (sender and receiver share "
        "one process and one core); `finish` = the part spent in `finish()`; `bytes` = "
        "bytes received by the receiving protocol; every transfer verified "
        "(clock and all records equal to the source's).", "",
    ]
    table = []
    for row in rows:
        if "child" in row.label:
            continue
        t = Summary.of([x.seconds for x in row.transfers])
        f = Summary.of([x.finish_s for x in row.transfers])
        first = row.transfers[0]
        table.append([
            f"{row.n:,}", "-" if row.m is None else f"{row.m:,}", row.label,
            f"{first.records:,}", f"{first.wire_bytes:,}", f"{t.median * 1000:.1f}",
            f"{t.max * 1000:.1f}", f"{f.median * 1000:.1f}",
            f"{first.wire_bytes / t.median / 1e6:.1f}" if t.median > 0 else "-",
        ])
    lines += markdown_table(["keys", "missed", "transfer", "records", "bytes", "time ms",
                             "max ms", "finish ms", "MB/s"], table)
    children = [row for row in rows if "child" in row.label]
    if children:
        lines += [
            "", "### Memory of the receiving side (full copy into an empty store, receiver "
            "alone in a child process)", "",
            "RSS before the request (interpreter, Twisted, open store) and peak RSS growth "
            "until `finish()` returned (VmHWM, reset before the request). The time here "
            "has sender and receiver on different cores.", "",
        ]
        table = []
        for row in children:
            t = row.transfers[0]
            growth = "-" if t.peak_rss_growth_kib is None else f"{t.peak_rss_growth_kib / 1024:.1f}"
            table.append([f"{row.n:,}", f"{t.wire_bytes / 1e6:.1f}",
                          f"{(t.rss_before_kib or 0) / 1024:.1f}", growth,
                          f"{t.seconds * 1000:.0f}"])
        lines += markdown_table(["keys", "MB received", "RSS before MiB",
                                 "peak growth MiB", "time ms"], table)
    if real:
        lines += [
            "", f"### Real processes (3 twistd replicas, {args.real_keys:,} keys written "
            "through the client)", "",
            "From replica 1's log line \"pulled ... ms\" (measured inside the replica, "
            "request to finish()).", "",
        ]
        lines += markdown_table(
            ["case", "kind", "from", "records", "applied", "writes behind", "ms"],
            [[r["label"], r["kind"], r["peer"], r["records"], r["applied"], r["behind"],
              r["ms"]] for r in real])
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="database sizes in keys (default 1000,10000,100000)")
    parser.add_argument("--missed", default="1,100,1000",
                        help="missed writes (default 1,100,1000)")
    parser.add_argument("--quick", action="store_true", help="sizes 1000,10000 only")
    parser.add_argument("--repeat", type=int, default=3,
                        help="transfers per cell, the median is reported (default 3)")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the child-process memory measurement")
    parser.add_argument("--no-real", dest="real", action="store_false",
                        help="skip the real-process measurement")
    parser.add_argument("--real-keys", type=int, default=2000)
    parser.add_argument("--real-missed", type=int, default=100)
    _common.add_output_arguments(parser, "sync", "sync-large")
    args = parser.parse_args(argv)
    sizes = "1000,10000" if args.quick else args.sizes
    args.sizes = [int(s) for s in sizes.split(",") if s.strip()]
    args.missed = [int(s) for s in args.missed.split(",") if s.strip()]
    if not args.sizes or not args.missed or min(args.sizes + args.missed) < 1:
        parser.error("--sizes and --missed take positive integers")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--receiver-child"]:
        return child_main(json.loads(argv[1]))
    args = parse_args(argv)
    args.code = _common.CodeWatch()
    started = now()

    progress = _common.progress_printer(started)

    workdir = tempfile.mkdtemp(prefix="replicad-bench-sync-")
    rows: list[Row] = []

    async def in_process(reactor) -> None:
        rows.extend(await run_in_process(reactor, args, workdir, progress))

    try:
        try:
            task.react(lambda reactor: defer.ensureDeferred(in_process(reactor)))
        except SystemExit as e:   # task.react always exits; 0 means success
            if e.code not in (0, None):
                raise
        real = run_real(args, workdir, progress) if args.real else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(args, rows, real, now() - started)
    _common.publish(text, args.section, args.write, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
