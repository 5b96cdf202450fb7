"""Check a chaos history: session guarantees, lost writes, convergence, duplicates.  Pure.

Input: the events of replicad/chaos/history.py (a list of dicts); output: a ``Report``
with every violation (its rule, the operations involved, a sentence) and the figures
of the run.  Nothing here talks to a replica: the history alone is the evidence.

Notation
--------
Every session is sequential (one thread, one operation at a time), so its operations
have a program order.  For an operation ``o`` that completed ``ok``:

- a **write** is a PUT, or a DEL answered OK (a tombstone).  ``V(o)`` is its version
  vector (the reply's ``vc``), its write id ``(origin, V(o)[origin])`` with the origin
  as a replica's store names it (a reply's ``by`` is the replica that answered, which
  is not the origin when a retry was answered from another replica's request-id memory);
- an **observation** is a GET, or a DEL answered NOTFOUND (it wrote nothing).  ``C(o)``
  is the serving replica's clock (the reply's ``vc``) and ``val(o)`` what it saw (a
  value, or absent).

Every PUT writes a value unique in the run, so an observed value names the write ``x``
that wrote it.  ``V(x)`` is known when ``x`` was acknowledged, or when the final state
of some replica holds ``x`` (by value) or remembers its request id.  A request applied
on both sides of a partition has two versions; an observation is judged with the one
its clock covers (a replica holds only records its clock covers), and not at all when
it covers none that is known (the request-id memories keep one write id per request
id, so the other copy's version may be forgotten: such a read is counted, not judged).
``a < b`` is the strict happened-before order of version vectors, ``a <= b`` dominance.

Before operation ``o`` of session ``s``: ``W`` is the merge of ``V(w)`` over the
session's earlier acknowledged writes, ``R`` the merge of ``C(r)`` over its earlier
observations.  A write ``y`` to key ``k`` is **covered** by a clock ``Q`` when its
version is known and ``V(y) <= Q``: a replica whose clock dominates ``Q`` holds ``y`` or a
version that wins over it (the store's invariant, docs/consistency.md), never a version
strictly older than ``y``.  "Absent" is older than every PUT; a DEL ``d`` may explain an
absent value in place of a PUT ``y`` unless ``V(d) < V(y)`` (a DEL whose outcome or
version is unknown explains anything: the checker gives the benefit of the doubt).

Rules
-----
``read-your-writes``
    For an observation ``o``: ``C(o) >= W``; ``val(o)`` is not strictly older than any
    write to its key covered by ``W`` (the session's own writes first of all): if it is
    a value, ``not V(x) < V(y)``; if absent, some DEL explains it.
``monotonic-reads``
    For an observation ``o``: ``C(o) >= R``; ``val(o)`` is not strictly older than any
    write to its key covered by ``R``, nor than any version of that key an earlier
    observation of the session returned.
``monotonic-writes``
    For a write ``o``: ``V(o) >= W`` and ``V(o)`` differs from every earlier write's
    version (so ``V(o) > V(w)`` for every earlier write ``w``: later writes of a session
    supersede its earlier ones on every replica).
``writes-follow-reads``
    For a write ``o``: ``V(o) >= R``, and ``V(o) >= V(x)`` for every version of its key
    that an earlier observation of the session returned (a write supersedes what its
    session read).
``phantom-write``
    Every value observed, and every value a replica holds at the end, was written by a
    PUT of that key whose outcome was not ``fail``, invoked before the observation ended;
    and no request the client was told did nothing (a failed write, a DEL answered
    NOTFOUND) appears as a write in a replica's request-id memory or records.  (A
    request id remembered as a no-op marker, or as write ``0:0`` before markers, is a
    request that changed nothing, kept so that a retry gets the same answer: not a
    write.)
``lost-write``
    Every acknowledged write ``w`` survives, or is superseded by a write that descends
    from it.  Two ways to lose it:

    *to a conflict*: a write ``y`` of the same key, concurrent with ``w``, outranks
    (merge rank: epoch, version total, write id) every write ``z`` with ``V(z) >= V(w)``
    that is concurrent with ``y``, ``w`` itself included: where the two branches met,
    the merge kept ``y``'s and discarded ``w`` and all that built on it.  This is found
    from the versions and epochs alone, so a loss stays visible even when later writes
    overwrite the key (the final value then dominates ``w``'s version, but ``w``'s
    value never won).  With ``write_quorum = 1`` the documented price of a split brain,
    counted, not a violation.  In quorum mode two acknowledged writes of one key with
    *concurrent* versions are a violation by themselves (the merge kept one branch, so
    acknowledged writes of the other are lost, whichever won: which one did needs the
    writes' epochs, and a reply reports the replica's epoch when it answers, not always
    the write's); so is an acknowledged write lost to a concurrent write that was never
    acknowledged, whose exact epoch a final record gives;

    *otherwise*: after the heal, with ``F`` the key's final record (the converged
    coordinator's), ``V(F) >= V(w)`` fails (``F`` strictly older, concurrent without
    winning as above, or the key has no record) or ``V(F) = V(w)`` with other data.  A
    violation in both modes.
``convergence``
    The run reached convergence; every replica's database holds the same records
    (value, write id, version, epoch) and the same clock; a GET through any replica
    returns the data the replicas hold.
``duplicate-write``
    An operation's versions, from its reply, the final records (by value, or by request
    id for a tombstone) and every replica's memory of request ids, are never ordered:
    a second version after the first means the request was applied again after its
    first copy had been applied and seen.  Two *concurrent* versions of one request id
    are not a violation: a write left in doubt on a coordinator that was cut off, sent
    again with its id to the other side, is applied by both, and the merge keeps one
    copy (the newer epoch's); they are counted (``applied_on_both_sides``) and named.
``unique-write-ids``
    A write id ``(origin, seq)`` (as the stores name it) and an acknowledged version
    belong to one operation: no write id was issued twice.
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from replicad.vclock import ClockError, Order, VectorClock


class Rule(enum.Enum):
    READ_YOUR_WRITES = "read-your-writes"
    MONOTONIC_READS = "monotonic-reads"
    MONOTONIC_WRITES = "monotonic-writes"
    WRITES_FOLLOW_READS = "writes-follow-reads"
    PHANTOM_WRITE = "phantom-write"
    LOST_WRITE = "lost-write"
    CONVERGENCE = "convergence"
    DUPLICATE_WRITE = "duplicate-write"
    UNIQUE_WRITE_IDS = "unique-write-ids"


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


# A replica remembers the request id of a request that changed nothing (a DEL of a
# missing key) as a no-op marker (store.write_noop: a write id, no data; "noop" in the
# history) so that a retry, or a copy queued elsewhere, gets its answer again; before
# markers, as write 0:0, on the answering replica alone.
NOOP_ORIGIN = 0
MAX_LISTED = 3   # writes named in one violation message
LATE_REPLY_S = 1.0   # a write answered later than this may report a newer epoch than its own
RETRIED_S = 0.3      # a write that took this long was probably sent more than once


# A known cause, named when the evidence shows it (docs/reliability.md).
REPLAYED_AFTER_MERGE = "replayed-after-merge"   # OK from the request-id memory for a
                                                # write that had lost a merge (fixed in
                                                # 6be9ee9: ERR INDOUBT, now ERR
                                                # SUPERSEDED, since) ...
REPLAYED_AFTER_OVERWRITE = "replayed-after-overwrite"   # ... except once a write made
                                                # after the merge covers its version
REAPPLIED = "reapplied"                         # a request id applied again by a replica
                                                # that never learnt it (evidence: versions)
REAPPLIED_SUSPECTED = "reapplied-suspected"     # an old value back after a retried write
NOOP_CARRIED_OUT = "noop-carried-out"           # a request answered "nothing done" applied
KNOWN_CAUSES = frozenset({REPLAYED_AFTER_MERGE, REPLAYED_AFTER_OVERWRITE, REAPPLIED,
                          REAPPLIED_SUSPECTED, NOOP_CARRIED_OUT})
# Known causes of product bugs not fixed yet (docs/reliability.md): none since 9ea17bd,
# which fixed replayed-after-overwrite.
OPEN_CAUSES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Violation:
    rule: Rule
    ops: tuple[int, ...]
    message: str
    cause: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule.value, "ops": list(self.ops), "message": self.message,
                "cause": self.cause}


@dataclass
class Op:
    id: int
    session: str
    kind: str                  # put, get, del
    key: str
    written: str | None        # put: the value written
    rid: str | None
    start: float
    end: float | None = None
    outcome: Outcome = Outcome.UNKNOWN
    status: str | None = None
    observed: str | None = None   # get: the value read (None: absent)
    vc: VectorClock | None = None
    by: int | None = None
    error: str | None = None
    version: VectorClock | None = None   # a write's version, from the reply or the end
    epoch: int | None = None              # the epoch that accepted a write, when known
    origin: int | None = None             # the replica that made the write (from a store)
    epoch_exact: bool = False             # the epoch comes from a record, not a reply
    reply_epoch: int | None = None        # the epoch the reply reported

    @property
    def is_write_kind(self) -> bool:
        return self.kind in ("put", "del")

    @property
    def acknowledged(self) -> bool:
        """An acknowledged write: a PUT answered OK, or a DEL that wrote a tombstone."""
        return self.outcome is Outcome.OK and (
            self.kind == "put" or (self.kind == "del" and self.status == "OK"))

    @property
    def observation(self) -> bool:
        return self.outcome is Outcome.OK and (
            self.kind == "get" or (self.kind == "del" and self.status == "NOTFOUND"))

    @property
    def may_have_written(self) -> bool:
        if self.kind == "put":
            return self.outcome is not Outcome.FAIL
        if self.kind == "del":
            return self.outcome is Outcome.UNKNOWN or self.acknowledged
        return False

    @property
    def write_id(self) -> tuple[int, int] | None:
        """(origin, seq), once a replica's store named the origin.  A reply's ``by`` is
        not the origin when a retried write was answered from the request-id memory."""
        if self.version is None or self.origin is None or self.version[self.origin] == 0:
            return None
        return (self.origin, self.version[self.origin])

    def describe(self) -> str:
        what = f"{self.kind} {self.key}"
        if self.kind == "put":
            what += f" {self.written}"
        if self.outcome is Outcome.OK and self.kind == "get":
            what += f" -> {self.observed if self.observed is not None else 'NOTFOUND'}"
        elif self.outcome is Outcome.OK and self.kind == "del":
            what += f" -> {self.status}"
        elif self.outcome is not Outcome.OK:
            what += f" -> {self.outcome.value}"
        if self.vc is not None:
            what += f", vc {self.vc.encode()}"
        return f"op {self.id} ({self.session}: {what})"


@dataclass(frozen=True)
class FinalRecord:
    value: str | None
    origin: int
    seq: int
    version: VectorClock
    epoch: int
    rid: str | None

    def same_data(self, other: FinalRecord) -> bool:
        return (self.value, self.origin, self.seq, self.version, self.epoch) == (
            other.value, other.origin, other.seq, other.version, other.epoch)

    def describe(self) -> str:
        value = "a tombstone" if self.value is None else repr(self.value)
        return (f"{value} (write {self.origin}:{self.seq}, version {self.version.encode()}, "
                f"epoch {self.epoch})")


@dataclass
class Replica:
    id: int
    clock: VectorClock | None = None
    status_clock: VectorClock | None = None
    origin: int | None = None      # its writes' origin (STATUS): its id until it rejoined
    conflicts: int | None = None
    records: dict[str, FinalRecord] = field(default_factory=dict)
    requests: dict[str, tuple[int, int, VectorClock]] = field(default_factory=dict)
    noops: set[str] = field(default_factory=set)   # request ids that changed nothing
    gets: dict[str, str | None] = field(default_factory=dict)
    get_errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Report:
    violations: list[Violation]
    stats: dict[str, Any]
    lost_ops: list[int] = field(default_factory=list)   # acknowledged writes lost

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_rule(self) -> dict[str, int]:
        counts = Counter(v.rule.value for v in self.violations)
        return {rule.value: counts.get(rule.value, 0) for rule in Rule}

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "stats": self.stats, "violations_by_rule": self.by_rule(),
                "violations": [v.to_json() for v in self.violations]}


class CheckError(ValueError):
    """Events that do not make a history (the message says which)."""


# Reading the events ------------------------------------------------------------------------


def _clock(text: Any, what: str) -> VectorClock | None:
    if text is None:
        return None
    try:
        return VectorClock.decode(str(text))
    except ClockError as e:
        raise CheckError(f"{what}: bad clock {text!r}: {e}") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def quorum_is_majority(write_quorum: Any, replicas: int | None) -> bool:
    """Whether the run's write quorum is partition-safe (more than half the replicas)."""
    text = str(write_quorum).strip().lower()
    if text == "majority":
        return True
    if text.isdigit() and replicas:
        return int(text) > replicas / 2
    return False


@dataclass
class _History:
    run: dict[str, Any]
    ops: dict[int, Op]
    faults: list[dict[str, Any]]
    converged: dict[str, Any] | None
    replicas: dict[int, Replica]
    end: dict[str, Any] | None
    replays: dict[str, list[tuple[int, tuple[int, int]]]]   # rid -> (replica, write id)
    origins: dict[int, int]      # origin -> replica, from the logs (every life of it)


def _read(events: Iterable[Mapping[str, Any]]) -> _History:
    run: dict[str, Any] = {}
    ops: dict[int, Op] = {}
    faults: list[dict[str, Any]] = []
    converged = None
    end = None
    replicas: dict[int, Replica] = {}
    replays: dict[str, list[tuple[int, tuple[int, int]]]] = defaultdict(list)
    origins: dict[int, int] = {}
    for event in events:
        kind = event.get("type")
        if kind == "run":
            run = dict(event)
        elif kind == "invoke":
            op_id = _int(event.get("op"))
            if op_id is None or op_id in ops:
                raise CheckError(f"invoke with a missing or repeated op id: {dict(event)!r:.200}")
            ops[op_id] = Op(op_id, str(event.get("session")), str(event.get("kind")),
                            str(event.get("key")), event.get("value"), event.get("rid"),
                            float(event.get("t", 0.0)))
        elif kind == "complete":
            op = ops.get(_int(event.get("op")))
            if op is None:
                raise CheckError(f"complete for an op never invoked: {dict(event)!r:.200}")
            op.end = float(event.get("t", op.start))
            try:
                op.outcome = Outcome(event.get("outcome"))
            except ValueError:
                raise CheckError(f"op {op.id}: unknown outcome {event.get('outcome')!r}")\
                    from None
            op.status = event.get("status")
            op.observed = event.get("value") if op.kind == "get" else None
            op.vc = _clock(event.get("vc"), f"op {op.id}")
            op.by = _int(event.get("by"))
            op.error = event.get("error")
            if op.acknowledged and op.vc is None:
                raise CheckError(f"op {op.id}: an acknowledged write without its version")
            if op.observation and op.vc is None:
                raise CheckError(f"op {op.id}: an observation without the replica's clock")
            op.reply_epoch = _int(event.get("epoch"))
            if op.acknowledged:
                op.version = op.vc
                op.epoch = op.reply_epoch
        elif kind == "fault":
            faults.append(dict(event))
        elif kind == "converged":
            converged = dict(event)
        elif kind == "final":
            replica = _final(event)
            replicas[replica.id] = replica
        elif kind == "end":
            end = dict(event)
        elif kind == "log" and event.get("kind") == "origin":
            origin, replica_id = _int(event.get("origin")), _int(event.get("replica"))
            if origin is not None and replica_id is not None:
                origins[origin] = replica_id
        elif kind == "log" and event.get("kind") == "replay":
            write = event.get("write") or [0, 0]
            if int(write[0]) == NOOP_ORIGIN:
                continue   # a no-op answered NOTFOUND again: no write to name
            replays[str(event.get("rid"))].append((int(event.get("replica", 0)),
                                                   (int(write[0]), int(write[1]))))
    for op in ops.values():
        if op.end is None and op.outcome is Outcome.UNKNOWN and not op.is_write_kind:
            op.outcome = Outcome.FAIL   # a read that never completed did nothing
    return _History(run, ops, faults, converged, replicas, end, dict(replays), origins)


def _final(event: Mapping[str, Any]) -> Replica:
    rid = _int(event.get("replica"))
    if rid is None:
        raise CheckError(f"final event without a replica id: {dict(event)!r:.200}")
    replica = Replica(rid, error=event.get("error"))
    status = event.get("status") or {}
    replica.status_clock = _clock(status.get("clock"), f"replica {rid} STATUS")
    replica.conflicts = _int(status.get("conflicts"))
    # A decimal string in histories recorded before the client typed STATUS's origin
    # (its writes then looked made by a replica that did not make them: false losses).
    origin = status.get("origin")
    replica.origin = int(origin) if isinstance(origin, str) and origin.isdigit() \
        else _int(origin)
    replica.clock = _clock(event.get("clock"), f"replica {rid} database")
    for key, row in (event.get("records") or {}).items():
        version = _clock(row.get("version"), f"replica {rid} key {key}")
        assert version is not None
        replica.records[key] = FinalRecord(row.get("value"), int(row["origin"]),
                                           int(row["seq"]), version, int(row.get("epoch", 0)),
                                           row.get("rid"))
    for request_id, (origin, seq, version, *noop) in (event.get("requests") or {}).items():
        if int(origin) == NOOP_ORIGIN or noop == ["noop"]:
            replica.noops.add(request_id)   # remembered, not a write: nothing to check
            continue
        decoded = _clock(version, f"replica {rid} request {request_id}")
        assert decoded is not None
        replica.requests[request_id] = (int(origin), int(seq), decoded)
    replica.gets = dict(event.get("gets") or {})
    replica.get_errors = dict(event.get("get_errors") or {})
    return replica


# The checks ---------------------------------------------------------------------------------


class _Checker:
    def __init__(self, history: _History):
        self.h = history
        self.violations: list[Violation] = []
        self.majority = quorum_is_majority(history.run.get("write_quorum", "1"),
                                           _int(history.run.get("replicas")))
        self.puts_by_value: dict[str, Op] = {}
        self.writes_by_key: dict[str, list[tuple[int, VectorClock, Op]]] = defaultdict(list)
        self.totals_by_key: dict[str, list[int]] = {}
        self.deletes_by_key: dict[str, list[Op]] = defaultdict(list)
        self.puts_by_key: dict[str, list[tuple[int, VectorClock, Op]]] = {}
        self.put_totals_by_key: dict[str, list[int]] = {}
        self.deletes_index: dict[str, tuple[list[float], list[VectorClock], float | None]] = {}
        self.reference: dict[str, FinalRecord] | None = None
        self.lost_ops: list[int] = []   # acknowledged writes lost, either way
        self.reference_replica: int | None = None
        # writes read in a copy whose version no replica remembers -> the first such read
        self.unknown_copies: dict[int, int] = {}
        self._covering_cache: dict[int, list[Op]] = {}

    def add(self, rule: Rule, ops: Iterable[int], message: str,
            cause: str | None = None) -> None:
        self.violations.append(Violation(rule, tuple(sorted(set(ops))), message, cause))

    # -- indexes -------------------------------------------------------------------------

    def index(self) -> None:
        ops = self.h.ops
        for op in ops.values():
            if op.kind == "put" and op.written is not None:
                if op.written in self.puts_by_value:
                    other = self.puts_by_value[op.written]
                    raise CheckError(f"ops {other.id} and {op.id} write the same value "
                                     f"{op.written!r}: values must be unique in a history")
                self.puts_by_value[op.written] = op
        self._choose_reference()
        self._resolve_versions()
        self._find_ghosts()
        for op in ops.values():
            if op.version is not None and op.may_have_written:
                self.writes_by_key[op.key].append((op.version.total(), op.version, op))
            if op.kind == "del" and op.may_have_written:
                self.deletes_by_key[op.key].append(op)
        for key, writes in self.writes_by_key.items():
            writes.sort(key=lambda item: (item[0], item[2].id))
            self.totals_by_key[key] = [item[0] for item in writes]
            puts = [item for item in writes if item[2].kind == "put"]
            self.puts_by_key[key] = puts
            self.put_totals_by_key[key] = [item[0] for item in puts]
        for key, deletes in self.deletes_by_key.items():
            deletes.sort(key=lambda d: (d.start, d.id))
            starts, joins, join = [], [], VectorClock()
            unknown_from = None
            for d in deletes:
                if d.version is None:
                    unknown_from = d.start if unknown_from is None else unknown_from
                    continue
                join = join.merge(d.version)
                starts.append(d.start)
                joins.append(join)
            self.deletes_index[key] = (starts, joins, unknown_from)

    def _choose_reference(self) -> None:
        """The final state lost writes are judged against: the converged coordinator's
        records, else the replica with the most writes in its clock."""
        replicas = {i: r for i, r in self.h.replicas.items() if r.error is None}
        if not replicas:
            return
        named = _int((self.h.converged or {}).get("coordinator"))
        if named not in replicas:
            named = max(replicas, key=lambda i: ((replicas[i].clock or VectorClock()).total(),
                                                 i))
        self.reference_replica = named
        self.reference = replicas[named].records

    def _resolve_versions(self) -> None:
        """Origins of writes (from the stores), and versions of writes not acknowledged
        but applied somewhere, so that observations of them can be checked too.  A
        reply's epoch is the write's unless the reply came from the request-id memory of
        another replica; the epoch of a record in a final state is authoritative."""
        self.copies: dict[int, dict[VectorClock, str]] = defaultdict(dict)
        by_rid = {op.rid: op for op in self.h.ops.values() if op.rid and op.is_write_kind}
        for op in self.h.ops.values():
            if op.acknowledged and op.version is not None:
                self.copies[op.id][op.version] = f"the reply to op {op.id}"
        # A replica that rejoined after a wipe numbers its writes under a new origin
        # (identity.py): the final STATUS names its last, its log every one; an origin
        # found in neither (a history without the log events) maps to none.
        maker = dict(self.h.origins)
        maker.update((r.origin, r.id) for r in self.h.replicas.values() if r.origin is not None)

        def found(op: Op, origin: int, version: VectorClock, where: str) -> None:
            self.copies[op.id].setdefault(version, where)
            if op.version is None:
                op.version = version
            if op.version == version:
                if op.origin is None and op.by is not None and op.by != maker.get(origin,
                                                                                  origin):
                    op.epoch = None   # answered by a replica that did not make it
                op.origin = origin

        for replica in sorted(self.h.replicas.values(), key=lambda r: r.id):
            for request_id, (origin, _seq, version) in sorted(replica.requests.items()):
                op = by_rid.get(request_id)
                if op is not None and op.may_have_written:
                    found(op, origin, version, f"replica {replica.id}'s request ids")
            for key, record in sorted(replica.records.items()):
                op = self.puts_by_value.get(record.value) if record.value is not None \
                    else by_rid.get(record.rid or "")
                if op is None or op.key != key or not op.may_have_written:
                    continue
                found(op, record.origin, record.version,
                      f"replica {replica.id}'s record of {key!r}")
                if op.version == record.version:
                    op.epoch, op.epoch_exact = record.epoch, True
        self._estimate_late_epochs()

    def _estimate_late_epochs(self) -> None:
        """A reply carries the replica's epoch when it answers; a reply that came late
        (a write that waited, was retried, or was answered from the request-id memory)
        may carry a newer epoch than the write's.  For those, take the newest epoch the
        write's origin reported before the write began (epochs only grow, so the write's
        is at least that).  Used only to tell which branch of a conflict won, for the
        figures; quorum mode verdicts do not depend on it."""
        reported: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for op in self.h.ops.values():
            if op.outcome is Outcome.OK and op.by is not None and op.end is not None \
                    and op.reply_epoch is not None:
                reported[op.by].append((op.end, op.reply_epoch))
        timelines: dict[int, tuple[list[float], list[int]]] = {}
        for replica, entries in reported.items():
            entries.sort()
            running, highest = [], 0
            for _end, epoch in entries:
                highest = max(highest, epoch)
                running.append(highest)
            timelines[replica] = ([end for end, _ in entries], running)
        for op in self.h.ops.values():
            if not op.acknowledged or op.epoch_exact or op.epoch is None or op.end is None \
                    or op.end - op.start <= LATE_REPLY_S:
                continue
            origin = op.origin if op.origin is not None else op.by
            if origin not in timelines:
                continue
            ends, running = timelines[origin]
            before = bisect.bisect_left(ends, op.start)
            if before and running[before - 1] < op.epoch:
                op.epoch = running[before - 1]

    def sessions(self) -> dict[str, list[Op]]:
        sessions: dict[str, list[Op]] = defaultdict(list)
        for op in sorted(self.h.ops.values(), key=lambda o: (o.start, o.id)):
            sessions[op.session].append(op)
        return sessions

    # -- helpers ---------------------------------------------------------------------------

    def newer_covered(self, key: str, older: VectorClock, cover: VectorClock) -> Op | None:
        """A write to key covered by cover whose version is strictly newer than older."""
        writes = self.writes_by_key.get(key)
        if not writes or not older <= cover:
            return None   # older < V(y) <= cover would imply older <= cover
        totals = self.totals_by_key[key]
        low = bisect.bisect_right(totals, older.total())
        high = bisect.bisect_right(totals, cover.total())
        for _total, version, op in writes[low:high]:
            if version <= cover and older < version:
                return op
        return None

    def unexplained_put(self, key: str, cover: VectorClock, before: float,
                        also: Iterable[tuple[VectorClock, Op]] = ()) -> Op | None:
        """A PUT to key, covered by cover (or listed in also), that no DEL invoked
        before ``before`` can explain: an absent value was strictly older than it.

        A DEL d explains a PUT y unless V(d) < V(y), so y is unexplained exactly when
        it is above every such DEL: J <= V(y) with J the join of their versions (two
        writes never share a version)."""
        starts, joins, unknown_from = self.deletes_index.get(key, ([], [], None))
        if unknown_from is not None and unknown_from <= before:
            return None   # a DEL of unknown version may supersede anything
        count = bisect.bisect_right(starts, before)
        join = joins[count - 1] if count else VectorClock()
        for version, op in also:
            if op.kind == "put" and join <= version:
                return op
        puts = self.puts_by_key.get(key)
        if not puts or not join <= cover:
            return None
        totals = self.put_totals_by_key[key]
        low = bisect.bisect_left(totals, join.total())
        high = bisect.bisect_right(totals, cover.total())
        for _total, version, op in puts[low:high]:
            if join <= version and version <= cover:
                return op
        return None

    # -- the session guarantees ------------------------------------------------------------

    def check_sessions(self) -> None:
        for ops in self.sessions().values():
            self._check_session(ops)

    def _check_session(self, ops: list[Op]) -> None:
        read = VectorClock()
        write = VectorClock()
        writes: list[Op] = []                     # acknowledged, in order
        observations: list[Op] = []
        seen: dict[str, list[tuple[VectorClock, Op]]] = defaultdict(list)
        versions: dict[VectorClock, Op] = {}
        for op in ops:
            if op.observation:
                assert op.vc is not None
                self._observation(op, read, write, writes, observations, seen)
                read = read.merge(op.vc)
                observations.append(op)
                x = self._written_by(op)
                version = self._observed_version(op, x) if x is not None else None
                if x is not None and version is not None:
                    seen[op.key].append((version, x))
            elif op.acknowledged:
                assert op.version is not None
                self._write(op, read, write, writes, observations, seen, versions)
                write = write.merge(op.version)
                writes.append(op)
                versions.setdefault(op.version, op)

    def _observed_version(self, op: Op, x: Op) -> VectorClock | None:
        """The version of the copy of x that observation op read.  A replica holds only
        records its clock covers, so when C(op) does not cover V(x) the replica held
        another copy of x: the request was applied twice (a retry across a partition),
        and that copy's version is the one known copy C(op) covers, or unknown when a
        replica's request-id memory kept only the other one (it keeps the first write
        id it learns of a request id).  None: not known which (nothing to compare)."""
        clock = op.vc
        if x.version is None or clock is None or x.version <= clock:
            return x.version
        covered = [v for v in self.copies.get(x.id, {}) if v <= clock]
        if len(covered) == 1:
            return covered[0]
        if not covered:
            self.unknown_copies.setdefault(x.id, op.id)
        return None

    def _written_by(self, op: Op) -> Op | None:
        if op.kind != "get" or op.observed is None:
            return None
        x = self.puts_by_value.get(op.observed)
        if x is None or x.key != op.key or x.outcome is Outcome.FAIL \
                or x.start > (op.end if op.end is not None else op.start):
            return None
        return x

    def _observation(self, op: Op, read: VectorClock, write: VectorClock, writes: list[Op],
                     observations: list[Op], seen: dict[str, list[tuple[VectorClock, Op]]]
                     ) -> None:
        clock = op.vc
        assert clock is not None
        if not write <= clock:
            lacking = [w for w in writes if not w.version <= clock]
            self.add(Rule.READ_YOUR_WRITES, [op.id, *(w.id for w in lacking[-MAX_LISTED:])],
                     f"{op.describe()} was served by a replica whose clock lacks "
                     f"{write.missing_from(clock).encode()} of the session's writes, e.g. "
                     f"{_list(lacking)}")
        if not read <= clock:
            lacking = [r for r in observations if not r.vc <= clock]
            self.add(Rule.MONOTONIC_READS, [op.id, *(r.id for r in lacking[-MAX_LISTED:])],
                     f"{op.describe()} was served by a replica whose clock is behind what "
                     f"the session had read ({read.missing_from(clock).encode()} missing), "
                     f"e.g. by {_list(lacking)}")
        if op.observed is not None and op.kind == "get":
            x = self._written_by(op)
            if x is None:
                return   # phantom-write reports it
            version = self._observed_version(op, x)
            if version is None:
                return   # never acknowledged nor found at the end: nothing to compare
            newer = self.newer_covered(op.key, version, write)
            if newer is not None:
                self.add(Rule.READ_YOUR_WRITES, [op.id, x.id, newer.id],
                         f"{op.describe()} read the value of {x.describe()}, strictly older "
                         f"than {newer.describe()}, which the session's writes cover "
                         f"(W = {write.encode()})" + _retried_hint(x),
                         REAPPLIED_SUSPECTED if _retried_hint(x) else None)
                return
            newer = self.newer_covered(op.key, version, read)
            if newer is not None:
                self.add(Rule.MONOTONIC_READS, [op.id, x.id, newer.id],
                         f"{op.describe()} read the value of {x.describe()}, strictly older "
                         f"than {newer.describe()}, which the session's earlier reads cover "
                         f"(R = {read.encode()})" + _retried_hint(x),
                         REAPPLIED_SUSPECTED if _retried_hint(x) else None)
                return
            for earlier_version, earlier in seen.get(op.key, ()):
                if version < earlier_version:
                    self.add(Rule.MONOTONIC_READS, [op.id, x.id, earlier.id],
                             f"{op.describe()} read the value of {x.describe()}, strictly "
                             f"older than {earlier.describe()}, which the session read "
                             "before")
                    return
        else:
            end = op.end if op.end is not None else op.start
            put = self.unexplained_put(op.key, write, end)
            if put is not None:
                self.add(Rule.READ_YOUR_WRITES, [op.id, put.id],
                         f"{op.describe()} found the key absent, but the session's writes "
                         f"cover {put.describe()} and no DEL can have removed it"
                         + self._ghost_hint(op.key),
                         NOOP_CARRIED_OUT if self._ghost_hint(op.key) else None)
                return
            put = self.unexplained_put(op.key, read, end, seen.get(op.key, ()))
            if put is not None:
                self.add(Rule.MONOTONIC_READS, [op.id, put.id],
                         f"{op.describe()} found the key absent, but the session had read "
                         f"{put.describe()} (or a clock covering it) and no DEL can have "
                         "removed it" + self._ghost_hint(op.key),
                         NOOP_CARRIED_OUT if self._ghost_hint(op.key) else None)

    def _write(self, op: Op, read: VectorClock, write: VectorClock, writes: list[Op],
               observations: list[Op], seen: dict[str, list[tuple[VectorClock, Op]]],
               versions: dict[VectorClock, Op]) -> None:
        version = op.version
        assert version is not None
        if not write <= version:
            lacking = [w for w in writes if not w.version <= version]
            self.add(Rule.MONOTONIC_WRITES, [op.id, *(w.id for w in lacking[-MAX_LISTED:])],
                     f"{op.describe()}: its version does not supersede the session's "
                     f"earlier writes ({write.missing_from(version).encode()} missing), e.g. "
                     f"{_list(lacking)}")
        elif version in versions:
            earlier = versions[version]
            self.add(Rule.MONOTONIC_WRITES, [op.id, earlier.id],
                     f"{op.describe()} has the same version as the session's earlier "
                     f"{earlier.describe()}: it does not supersede it")
        if not read <= version:
            lacking = [r for r in observations if not r.vc <= version]
            self.add(Rule.WRITES_FOLLOW_READS,
                     [op.id, *(r.id for r in lacking[-MAX_LISTED:])],
                     f"{op.describe()}: its version does not cover what the session had "
                     f"read ({read.missing_from(version).encode()} missing), e.g. by "
                     f"{_list(lacking)}")
            return
        for earlier_version, x in seen.get(op.key, ()):
            if not earlier_version <= version:
                self.add(Rule.WRITES_FOLLOW_READS, [op.id, x.id],
                         f"{op.describe()} does not supersede {x.describe()}, whose value "
                         "the session read before writing")
                return

    # -- values that nobody wrote ----------------------------------------------------------

    def check_phantoms(self) -> None:
        for op in self.h.ops.values():
            if op.outcome is not Outcome.OK or op.kind != "get" or op.observed is None:
                continue
            if self._written_by(op) is None:
                self.add(Rule.PHANTOM_WRITE, [op.id, *self._writer_ids(op.observed)],
                         f"{op.describe()} read {op.observed!r}, which {self._why(op)}")
        for replica in sorted(self.h.replicas.values(), key=lambda r: r.id):
            for key, record in sorted(replica.records.items()):
                if record.value is None:
                    continue
                writer = self.puts_by_value.get(record.value)
                if writer is None or writer.key != key or writer.outcome is Outcome.FAIL:
                    why = ("no PUT of this key wrote" if writer is None or writer.key != key
                           else f"{writer.describe()} wrote, and it failed")
                    self.add(Rule.PHANTOM_WRITE, self._writer_ids(record.value),
                             f"replica {replica.id} holds {record.value!r} for key {key!r} "
                             f"at the end, which {why}")

    def _find_ghosts(self) -> None:
        """Requests answered as doing nothing that replicas nevertheless applied:
        op id -> (replica, where, request id, write id).

        A DEL answered NOTFOUND whose write is *concurrent* with the answer's clock is
        no ghost: an earlier attempt reached a coordinator cut off from the one that
        answered and was applied there first (a write in doubt, retried across a
        partition, applied on one side and found nothing to delete on the other); it is
        counted with the writes applied on both sides (``self.noop_elsewhere``).  Only a
        write made by a replica that had seen the answer (its version covers the
        answer's clock) was carried out after the answer."""
        self.ghosts: dict[int, tuple[int, str, str, tuple[int, int]]] = {}
        self.noop_elsewhere: set[int] = set()
        by_rid = {op.rid: op for op in self.h.ops.values() if op.rid and op.is_write_kind}
        for replica in sorted(self.h.replicas.values(), key=lambda r: r.id):
            found = [(rid, (origin, seq), version, "request ids")
                     for rid, (origin, seq, version) in replica.requests.items()]
            found += [(record.rid, (record.origin, record.seq), record.version,
                       f"record of {key!r}")
                      for key, record in replica.records.items() if record.rid]
            for rid, wid, version, where in sorted(found, key=lambda f: str(f[0])):
                op = by_rid.get(rid or "")
                if op is None or op.may_have_written or op.id in self.ghosts:
                    continue
                if (op.outcome is Outcome.OK and op.vc is not None
                        and isinstance(version, VectorClock) and not op.vc <= version):
                    self.noop_elsewhere.add(op.id)
                    continue
                self.ghosts[op.id] = (replica.id, where, str(rid), wid)
        self.noop_elsewhere -= set(self.ghosts)

    def _ghost_hint(self, key: str) -> str:
        ghosts = [(op_id, g) for op_id, g in self.ghosts.items()
                  if self.h.ops[op_id].key == key]
        if not ghosts:
            return ""
        return "; a request answered as doing nothing was carried out later on this key: " \
            + ", ".join(f"op {op_id} as write {g[3][0]}:{g[3][1]}" for op_id, g in ghosts[:3])

    def check_applied_no_ops(self) -> None:
        """A request the client was told did nothing (a DEL answered NOTFOUND, a write
        that failed) must not turn up as a write in any replica's request-id memory or
        records: that would be a write applied after its final answer, e.g. a copy of
        the request left queued at a frozen replica and carried out when it resumed."""
        for op_id, (replica, where, rid, (origin, seq)) in sorted(self.ghosts.items()):
            op = self.h.ops[op_id]
            told = ("NOTFOUND (nothing to delete)" if op.outcome is Outcome.OK
                    else f"{op.outcome.value} ({op.status}: nothing was done)")
            self.add(Rule.PHANTOM_WRITE, [op.id],
                     f"{op.describe()} was answered {told} at t={op.end}, yet replica "
                     f"{replica}'s {where} names its request id {rid} as write "
                     f"{origin}:{seq}: the request was carried out after its answer",
                     NOOP_CARRIED_OUT)

    def _writer_ids(self, value: str) -> list[int]:
        writer = self.puts_by_value.get(value)
        return [writer.id] if writer is not None else []

    def _why(self, op: Op) -> str:
        writer = self.puts_by_value.get(op.observed or "")
        if writer is None:
            return "no PUT wrote"
        if writer.key != op.key:
            return f"{writer.describe()} wrote to another key"
        if writer.outcome is Outcome.FAIL:
            return f"{writer.describe()} wrote, and it failed (nothing was done)"
        return f"{writer.describe()} wrote, invoked only after the read ended"

    # -- after the heal --------------------------------------------------------------------

    def check_lost(self) -> dict[str, Any]:
        acked = sorted((op for op in self.h.ops.values() if op.acknowledged), key=lambda o: o.id)
        figures = {"acknowledged": len(acked), "kept": 0, "lost_to_conflict": 0, "lost": 0}
        lineage = _Lineage(self.writes_by_key)
        conflicts = lineage.losers()
        if self.majority:
            self._split_brain(lineage.concurrent_acknowledged(), conflicts)
        where = f"replica {self.reference_replica}"
        unchecked = 0
        for op in acked:
            assert op.version is not None
            if op.id in conflicts:
                figures["lost_to_conflict"] += 1
                self.lost_ops.append(op.id)
                continue
            if self.reference is None:
                unchecked += 1
                continue
            final = self.reference.get(op.key)
            value = op.written if op.kind == "put" else None
            if final is None:
                figures["lost"] += 1
                self.lost_ops.append(op.id)
                self.add(Rule.LOST_WRITE, [op.id],
                         f"acknowledged {op.describe()} is lost: {where} holds no record "
                         f"of {op.key!r} at all")
                continue
            order = final.version.compare(op.version)
            if order is Order.AFTER or (order is Order.EQUAL and final.value == value):
                figures["kept"] += 1
                continue
            figures["lost"] += 1
            self.lost_ops.append(op.id)
            if order is Order.EQUAL:
                why = "the same version with other data"
            elif order is Order.CONCURRENT:
                why = "a concurrent version that should have lost the merge"
            else:
                why = "strictly older than the write"
            self.add(Rule.LOST_WRITE, [op.id, *self._writer_ids(final.value or "")],
                     f"acknowledged {op.describe()} is lost: {where} holds "
                     f"{final.describe()} for {op.key!r}, {why}")
        if unchecked:
            figures["unchecked"] = unchecked
            self.add(Rule.LOST_WRITE, [],
                     f"no replica's final state is in the history: {unchecked} acknowledged "
                     "writes cannot be checked")
        lost = figures["lost"] + figures["lost_to_conflict"]
        figures["lost_total"] = lost
        figures["lost_share"] = lost / len(acked) if acked else 0.0
        figures["by_fault"] = self._by_fault(acked, set(self.lost_ops))
        return figures

    def _by_fault(self, acked: list[Op], lost: set[int]) -> dict[str, list[int]]:
        """Acknowledged writes and those lost, by the kind of fault active when each was
        acknowledged ("none": between faults; one fault at a time)."""
        spans: list[tuple[float, float, str]] = []
        started: dict[Any, tuple[float, str]] = {}
        for fault in self.h.faults:
            t = float(fault.get("t", 0.0))
            if fault.get("phase") == "start":
                started[fault.get("index")] = (t, str(fault.get("kind")))
            elif fault.get("phase") == "end" and fault.get("index") in started:
                begun, kind = started.pop(fault.get("index"))
                spans.append((begun, t, kind))
        spans += [(begun, float("inf"), kind) for begun, kind in started.values()]
        spans.sort()
        starts = [span[0] for span in spans]
        figures: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for op in acked:
            when = op.end if op.end is not None else op.start
            i = bisect.bisect_right(starts, when) - 1
            kind = spans[i][2] if i >= 0 and when < spans[i][1] else "none"
            figures[kind][0] += 1
            figures[kind][1] += op.id in lost
        return dict(sorted(figures.items()))

    def _split_brain(self, pairs: list[tuple[Op, Op]], conflicts: dict[int, Op]) -> None:
        """Quorum mode: two acknowledged writes of one key with concurrent versions mean
        two coordinators acknowledged writes without seeing each other.  The merge keeps
        one branch, so the acknowledged writes of the other are lost: a violation,
        whichever branch won (which one did needs the epochs of the writes; a reply
        reports the replica's epoch when it answers, which is not always the write's).
        A write lost to a concurrent one that was never acknowledged, known from a final
        record with its exact epoch, is a violation too."""
        by_key: dict[str, list[tuple[Op, Op]]] = defaultdict(list)
        for w, y in pairs:
            by_key[w.key].append((w, y))
        for key, found in sorted(by_key.items()):
            involved = sorted({w.id for w, _y in found})
            w, y = found[0]
            lost = [i for i in involved if i in conflicts]
            judged = (f"; by the epochs the replies report, the merge discarded "
                      f"{len(lost)} of them: ops {', '.join(map(str, lost[:10]))}"
                      + (" ..." if len(lost) > 10 else "")) if lost else ""
            replayed = [self.h.ops[i] for i in lost if self.h.ops[i].rid in self.h.replays]
            cause = None
            ops = [self.h.ops[i] for i in involved]
            partners = self._replays_explain(ops)
            if partners is not None:
                # Every concurrent pair has a side answered OK from the request-id memory
                # once a write made since the merge covered both (the winner is named
                # when the epochs tell it, else one write it is concurrent with).
                cause = REPLAYED_AFTER_OVERWRITE
                shown = sorted(partners.items(), key=lambda item: (item[0] not in lost,
                                                                   item[0]))[:3]
                judged += ". " + " ".join(
                    self._replayed(self.h.ops[i], conflicts.get(i), partner, overwrite)
                    for i, (partner, overwrite) in shown)
            elif lost and len(replayed) == len(lost) and not self._plain_pair(ops):
                cause = REPLAYED_AFTER_MERGE
                judged += ". " + " ".join(
                    self._replayed(op, conflicts[op.id], conflicts[op.id], None)
                    for op in replayed[:3])
            self.add(Rule.LOST_WRITE, involved,
                     f"{len(involved)} acknowledged writes of {key!r} have versions "
                     f"concurrent with another acknowledged write, e.g. {w.describe()} and "
                     f"{y.describe()}: two coordinators acknowledged writes without seeing "
                     "each other, and the merge keeps one branch: the other branch's "
                     f"acknowledged writes are lost{judged}", cause)
        for op_id, y in sorted(conflicts.items()):
            if y.epoch_exact and not y.acknowledged:
                op = self.h.ops[op_id]
                self.add(Rule.LOST_WRITE, [op.id, y.id],
                         f"acknowledged {op.describe()} was lost to a conflict: the "
                         f"concurrent {y.describe()} (epoch {y.epoch}, never acknowledged) "
                         "outranks every version descending from it")

    def _replays_explain(self, ops: list[Op]) -> dict[int, tuple[Op, Op]] | None:
        """Whether the open bug explains every concurrent pair among these acknowledged
        writes of one key: one side of each pair was answered OK from the request-id
        memory after a write made since the merge covered both (REPLAYED_AFTER_OVERWRITE).
        A pair of writes acknowledged without a replay is never explained.  Returns the
        replayed writes with a concurrent partner and the covering write, or None."""
        replayed = [op for op in ops if op.rid in self.h.replays]
        if not replayed or self._plain_pair(ops):
            return None
        shown: dict[int, tuple[Op, Op]] = {}
        for a in replayed:
            for b in ops:
                assert a.version is not None and b.version is not None
                if b is a or a.version.compare(b.version) is not Order.CONCURRENT:
                    continue
                z = self._overwrite_before(a, b)
                if z is not None:
                    shown.setdefault(a.id, (b, z))
                elif b.rid not in self.h.replays or self._overwrite_before(b, a) is None:
                    return None
        return shown

    def _plain_pair(self, ops: list[Op]) -> bool:
        """Two of these writes are concurrent and neither was answered from the
        request-id memory: both acknowledged as written, a split brain of its own."""
        plain = [op for op in ops if op.rid not in self.h.replays]
        for i, a in enumerate(plain):
            for b in plain[i + 1:]:
                assert a.version is not None and b.version is not None
                if a.version.compare(b.version) is Order.CONCURRENT:
                    return True
        return False

    def _covering(self, w: Op) -> list[Op]:
        """Writes of w's key invoked before w's answer whose versions cover w's, by when
        they were invoked (a write is in the store before its own answer)."""
        cache = self._covering_cache
        if w.id not in cache:
            assert w.version is not None
            cache[w.id] = sorted(
                (z for _total, version, z in self.writes_by_key.get(w.key, ())
                 if z is not w and w.end is not None and z.start < w.end
                 and w.version <= version),
                key=lambda z: (z.start, z.id))
        return cache[w.id]

    def _overwrite_before(self, w: Op, y: Op) -> Op | None:
        """The first write of w's key invoked before w's answer whose version covers
        both w's and y's (the branches had met: a write made after the merge)."""
        assert y.version is not None
        return next((z for z in self._covering(w) if y.version <= z.version), None)

    def _replayed(self, op: Op, winner: Op | None, partner: Op,
                  overwrite: Op | None) -> str:
        answers = Counter(self.h.replays[op.rid or ""])
        memory = " and ".join(f"replica {r} (write {o}:{q}" + (f", {n} answers)" if n > 1
                                                                else ")")
                              for (r, (o, q)), n in sorted(answers.items()))
        lost = (f"a write that lost the merge to {winner.describe()}" if winner is not None
                else f"a write concurrent with {partner.describe()}")
        text = (f"{op.describe()} was answered OK at t={op.end:.3f} from the request-id "
                f"memory of {memory}, {lost}")
        if overwrite is not None:
            text += (f", after {overwrite.describe()} (invoked at t={overwrite.start:.3f})"
                     " had overwritten the key since the merge with a version covering "
                     "both: every write made after a merge covers the discarded version, "
                     "so 'superseded by a write that saw it' holds for it")
        return text + "."

    def check_convergence(self) -> None:
        converged = self.h.converged
        if converged is None:
            self.add(Rule.CONVERGENCE, [], "the history ends before the replicas converged "
                                           "(no 'converged' event)")
        elif not converged.get("ok"):
            self.add(Rule.CONVERGENCE, [],
                     f"the replicas did not converge within {converged.get('seconds')} s "
                     f"after the heal: {converged.get('detail', '')}".rstrip(": "))
        expected = _int(self.h.run.get("replicas"))
        replicas = self.h.replicas
        if expected is not None:
            missing = sorted(set(range(1, expected + 1)) - set(replicas))
            if missing:
                self.add(Rule.CONVERGENCE, [],
                         f"no final state for replica(s) {', '.join(map(str, missing))}")
        for replica in sorted(replicas.values(), key=lambda r: r.id):
            if replica.error:
                self.add(Rule.CONVERGENCE, [],
                         f"replica {replica.id}'s final state could not be read: "
                         f"{replica.error}")
        readable = [r for r in sorted(replicas.values(), key=lambda r: r.id) if not r.error]
        if len(readable) < 2 and self.reference is None:
            return
        clocks = {r.id: r.clock for r in readable}
        if len({c.encode() if c is not None else None for c in clocks.values()}) > 1:
            shown = ", ".join(f"{i}: {c.encode() if c is not None else '?'}"
                              for i, c in clocks.items())
            self.add(Rule.CONVERGENCE, [], f"the replicas' clocks differ at the end ({shown})")
        status = {r.id: r.status_clock for r in readable if r.status_clock is not None}
        if len({c.encode() for c in status.values()}) > 1:
            shown = ", ".join(f"{i}: {c.encode()}" for i, c in status.items())
            self.add(Rule.CONVERGENCE, [], f"the replicas' STATUS clocks differ ({shown})")
        keys = sorted(set().union(*(r.records for r in readable))) if readable else []
        for key in keys:
            held = {r.id: r.records.get(key) for r in readable}
            first = next(iter(held.values()))
            if any(rec is None or first is None or not rec.same_data(first)
                   for rec in held.values()):
                shown = "; ".join(f"replica {i}: {rec.describe() if rec else 'nothing'}"
                                  for i, rec in held.items())
                self.add(Rule.CONVERGENCE, self._writer_ids_of(held.values()),
                         f"the replicas hold different data for {key!r}: {shown}")
        if self.reference is None:
            return
        for replica in readable:
            for key, got in sorted(replica.gets.items()):
                record = self.reference.get(key)
                expected_value = record.value if record is not None else None
                if got != expected_value:
                    self.add(Rule.CONVERGENCE, self._writer_ids(got or ""),
                             f"GET {key!r} through replica {replica.id} after convergence "
                             f"returned {got!r}, the replicas hold {expected_value!r}")

    def _writer_ids_of(self, records: Iterable[FinalRecord | None]) -> list[int]:
        ids: list[int] = []
        for record in records:
            if record is not None and record.value is not None:
                ids += self._writer_ids(record.value)
        return ids

    # -- applied twice ---------------------------------------------------------------------

    def check_duplicates(self) -> dict[str, Any]:
        """Versions of one operation, from its reply, the records and the request-id
        memories: two that are ordered mean it was applied again after it had been seen
        (a violation); concurrent ones mean two coordinators that could not see each
        other each applied it (a write in doubt retried across a partition), and the
        merge keeps one: counted, with the ops named."""
        both_sides: list[int] = []
        for op_id, versions in sorted(self.copies.items()):
            if len(versions) < 2:
                continue
            op = self.h.ops[op_id]
            listed = sorted(versions.items(), key=lambda item: item[0].total())
            ordered = [(a, b) for i, a in enumerate(listed) for b in listed[i + 1:]
                       if a[0].compare(b[0]) is not Order.CONCURRENT]
            shown = "; ".join(f"{v.encode()} in {where}" for v, where in listed)
            if ordered:
                (first, first_where), (again, again_where) = ordered[0]
                self.add(Rule.DUPLICATE_WRITE, [op.id],
                         f"{op.describe()} (request id {op.rid}) was applied twice: "
                         f"version {again.encode()} ({again_where}) comes after "
                         f"{first.encode()} ({first_where}); all its versions: {shown}",
                         REAPPLIED)
            else:
                both_sides.append(op.id)
        owners: dict[tuple[int, int], Op] = {}
        for op in sorted(self.h.ops.values(), key=lambda o: o.id):
            if op.version is None or op.write_id is None:
                continue
            first = owners.setdefault(op.write_id, op)
            if first is not op:
                origin, seq = op.write_id
                self.add(Rule.UNIQUE_WRITE_IDS, [first.id, op.id],
                         f"{first.describe()} and {op.describe()} were both made as write "
                         f"{origin}:{seq}")
        same_version: dict[VectorClock, Op] = {}
        for op in sorted(self.h.ops.values(), key=lambda o: o.id):
            if op.acknowledged and op.version is not None:
                first = same_version.setdefault(op.version, op)
                if first is not op and (first.write_id is None or first.write_id
                                        != op.write_id):
                    self.add(Rule.UNIQUE_WRITE_IDS, [first.id, op.id],
                             f"{first.describe()} and {op.describe()} were both "
                             f"acknowledged with version {op.version.encode()}")
        # A read served by a replica whose clock lacks every known version of the write
        # it read saw another copy: applied on both sides too, a copy nobody remembers.
        read_copies = sorted(set(self.unknown_copies) - set(both_sides))
        # A DEL applied on one side and answered NOTFOUND on the other (_find_ghosts).
        both_sides += sorted(self.noop_elsewhere - set(both_sides) - set(read_copies))
        return {"applied_on_both_sides": len(both_sides) + len(read_copies),
                "applied_on_both_sides_ops": sorted(both_sides + read_copies)[:20],
                "copies_seen_only_by_reads": len(read_copies),
                "copies_seen_only_by_reads_ops": [
                    (op_id, self.unknown_copies[op_id]) for op_id in read_copies[:20]]}

    # -- figures ---------------------------------------------------------------------------

    def stats(self, lost: dict[str, Any]) -> dict[str, Any]:
        ops = list(self.h.ops.values())
        outcomes = Counter(op.outcome.value for op in ops)
        by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {o.value: 0 for o in Outcome})
        for op in ops:
            by_kind[op.kind][op.outcome.value] += 1
        faults = Counter(f.get("kind") for f in self.h.faults if f.get("phase") == "start")
        fault_errors = [f for f in self.h.faults if f.get("error")]
        conflicts = [r.conflicts for r in self.h.replicas.values() if r.conflicts is not None]
        run = self.h.run
        return {
            "seed": run.get("seed"),
            "replicas": run.get("replicas"),
            "clients": run.get("clients"),
            "write_quorum": run.get("write_quorum"),
            "duration_s": run.get("duration_s"),
            "sessions": len({op.session for op in ops}),
            "ops": len(ops),
            "outcomes": {o.value: outcomes.get(o.value, 0) for o in Outcome},
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "faults": dict(sorted(faults.items())),
            "fault_errors": len(fault_errors),
            "writes": lost,
            "converge_s": (self.h.converged or {}).get("seconds"),
            "converged": bool((self.h.converged or {}).get("ok")),
            "conflicts": max(conflicts) if conflicts else None,
            "final_get_errors": sum(len(r.get_errors) for r in self.h.replicas.values()),
            "complete": self.h.end is not None,
        }


def _retried_hint(x: Op) -> str:
    """A value read back long after newer writes: if its write was sent more than once
    (it took long: an attempt stalled and was retried), a stale copy of the request may
    have been carried out again, giving the old value a new version."""
    if x.end is None or x.end - x.start < RETRIED_S:
        return ""
    return (f"; op {x.id} took {x.end - x.start:.2f} s (an attempt stalled and was retried):"
            " a copy of its request carried out again later would bring its value back")


def _rank(op: Op) -> tuple[int, int, int, int]:
    """The merge's rank of a write (store.Record.rank): epoch, version total, write id."""
    assert op.version is not None and op.epoch is not None
    origin, seq = op.write_id or (-1, -1)   # ties of (epoch, total): rare
    return (op.epoch, op.version.total(), origin, seq)


class _Run:
    """Writes of one key, each version <= the next (sorted by version total).  Every entry
    of the versions is then non-decreasing along the run, so the writes <= a version are
    a prefix and those >= it a suffix, and each boundary is a bisection of one column of
    entries per replica: no clock is compared."""

    def __init__(self, ops: list[Op], positions: list[int]):
        n = len(ops)
        self.ops = ops
        self.positions = positions   # each write's place in its key's search order
        self.ranks = [_rank(op) if op.epoch is not None else None for op in ops]
        replicas = sorted({r for op in ops for r in op.version})
        self.columns = {r: [op.version[r] for op in ops] for r in replicas}
        self.next_acked = [n] * (n + 1)   # the first acknowledged write at i or after
        for i in range(n - 1, -1, -1):
            self.next_acked[i] = i if ops[i].acknowledged else self.next_acked[i + 1]
        self.last_known = [-1] * (n + 1)   # the last write with a known epoch before i
        for i in range(n):
            self.last_known[i + 1] = i if ops[i].epoch is not None else self.last_known[i]

    def count_le(self, version: VectorClock) -> int:
        """How many writes are <= version (a prefix)."""
        count = len(self.ops)
        for replica, column in self.columns.items():
            count = min(count, bisect.bisect_right(column, version[replica]))
        return count

    def first_ge(self, version: VectorClock) -> int:
        """The first index whose write is >= version (a suffix)."""
        first = 0
        for replica in version:
            column = self.columns.get(replica)
            if column is None:
                return len(self.ops)   # no write here has seen that replica
            first = max(first, bisect.bisect_left(column, version[replica]))
        return first


def _find_open(parent: list[int], i: int) -> int:
    """The first index >= i still open (union-find over closed indices, path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


class _Lineage:
    """Concurrent versions of each key, and which acknowledged writes a merge discarded.

    ``w`` is lost to a conflict when some write ``y`` of its key, concurrent with it,
    outranks every write ``z`` with ``V(z) >= V(w)`` concurrent with ``y`` (``w``
    included): where the branches met, y's won over every continuation of w.  Ranks need
    epochs; writes whose epoch is unknown take no part in that search.

    Comparing every write with every write (and again for each rival's rescue) did not
    finish in 11 minutes on a wq=1 run, whose keys have thousands of concurrent versions.
    So each key's writes are cut into runs (``_Run``) along which versions only grow:
    one per origin when its clock only grew (``ordered``), else each origin's writes cut
    where a version does not dominate the one before or a known rank drops (a wiped
    replica starting over, writes of unknown origin).  In a run the writes concurrent
    with a version are a range, found by bisection, and the ``z >= w`` concurrent with
    ``y`` are those >= w before the first write >= y (``z <= y`` would give ``w <= y``);
    ranks grow along the run, so the run's best such ``z`` is its last write with a known
    epoch before that first write >= y, whatever ``w`` is: y's *rescuer* in that run if
    it outranks y.  (In ``ordered`` keys that write is the one tried even where ranks do
    not grow: the rule before runs existed, kept.)  w is rescued from y exactly when it
    is <= one of y's rescuers, so ``losers`` sweeps the writes y from the best rank down,
    each taking the acknowledged writes still open that it is concurrent with and not
    below one of its rescuers: about n log n per key instead of n² (or n³)."""

    def __init__(self, writes_by_key: Mapping[str, list[tuple[int, VectorClock, Op]]]):
        self.keys: list[tuple[list[Op], list[_Run]]] = []
        for writes in writes_by_key.values():
            known = [op for _t, _v, op in writes]
            chains: dict[int, list[Op]] = defaultdict(list)
            for op in known:
                origin = op.origin if op.origin is not None else op.by
                chains[origin if origin is not None else -1].append(op)
            for chain in chains.values():
                chain.sort(key=lambda o: (o.version.total(), o.id))
            ordered = all(a.version <= b.version for chain in chains.values()
                          for a, b in zip(chain, chain[1:], strict=False))
            self.keys.append((known, self._runs(known, list(chains.values()), ordered)))

    @staticmethod
    def _runs(known: list[Op], chains: list[list[Op]], ordered: bool) -> list[_Run]:
        """The runs of one key, each write with its place in the order the writes were
        searched before (origin by origin when ordered, else by version total), which
        says which of several equal candidates is named."""
        if ordered:
            runs, place = [], 0
            for chain in chains:
                runs.append(_Run(chain, list(range(place, place + len(chain)))))
                place += len(chain)
            return runs
        where = {op.id: i for i, op in enumerate(known)}
        runs = []
        for chain in chains:
            run: list[Op] = []
            best = None   # the rank of the run's last write with a known epoch
            for op in chain:
                rank = _rank(op) if op.epoch is not None else None
                if run and (not run[-1].version <= op.version
                            or (rank is not None and best is not None and rank < best)):
                    runs.append(_Run(run, [where[o.id] for o in run]))
                    run, best = [], None
                run.append(op)
                best = rank if rank is not None else best
            runs.append(_Run(run, [where[o.id] for o in run]))
        return runs

    def concurrent_acknowledged(self) -> list[tuple[Op, Op]]:
        """Every acknowledged write with a concurrent acknowledged write of its key,
        paired with the first of them in search order."""
        pairs = []
        for known, runs in self.keys:
            for w in known:
                if not w.acknowledged:
                    continue
                assert w.version is not None
                best: tuple[int, Op] | None = None
                for run in runs:
                    low, high = run.count_le(w.version), run.first_ge(w.version)
                    i = run.next_acked[low] if low < high else high
                    if i < high and (best is None or run.positions[i] < best[0]):
                        best = (run.positions[i], run.ops[i])
                if best is not None:
                    pairs.append((w, best[1]))
        return pairs

    def losers(self) -> dict[int, Op]:
        """Acknowledged write id -> the concurrent write that won over it."""
        lost: dict[int, Op] = {}
        for known, runs in self.keys:
            winners = self._sweep(runs)
            lost.update((w.id, winners[w.id]) for w in known if w.id in winners)
        return lost

    @staticmethod
    def _sweep(runs: list[_Run]) -> dict[int, Op]:
        """One key's losers.  The writes y with a known epoch in the order each w tries
        its rivals (best rank first, ties in search order); an acknowledged w with a
        known epoch stays open until the first y concurrent with it, w not below one of
        y's rescuers, closes it: lost to y if y outranks it, else safe (no later y
        outranks it either).  Each w is closed once."""
        opened = []
        for run in runs:
            n = len(run.ops)
            opened.append([i if run.ops[i].acknowledged and run.ranks[i] is not None
                           else i + 1 for i in range(n)] + [n])
        rivals = [(rank, run.positions[i], run.ops[i]) for run in runs
                  for i, rank in enumerate(run.ranks) if rank is not None]
        rivals.sort(key=lambda r: r[1])
        rivals.sort(key=lambda r: r[0], reverse=True)
        winners: dict[int, Op] = {}
        for rank_y, _place, y in rivals:
            version = y.version
            assert version is not None
            ranges = []
            for run, parent in zip(runs, opened, strict=True):
                low, high = run.count_le(version), run.first_ge(version)
                if low < high and _find_open(parent, low) < high:
                    ranges.append((run, parent, low, high))
            if not ranges:
                continue
            rescuers = []   # per run, its best z against y (if it outranks y)
            for run in runs:
                j = run.last_known[run.first_ge(version)]
                if j >= 0 and run.ranks[j] > rank_y:
                    rescuers.append(run.ops[j].version)
            for run, parent, low, high in ranges:
                for z in rescuers:
                    low = max(low, run.count_le(z))   # w <= z: rescued by z
                i = _find_open(parent, low)
                while i < high:
                    if run.ranks[i] < rank_y:
                        winners[run.ops[i].id] = y
                    parent[i] = i + 1
                    i = _find_open(parent, i + 1)
        return winners


def _list(ops: list[Op]) -> str:
    shown = [op.describe() for op in ops[-MAX_LISTED:]]
    more = len(ops) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check(events: Iterable[Mapping[str, Any]]) -> Report:
    """Every rule over one history; CheckError if the events are not a history."""
    history = _read(events)
    checker = _Checker(history)
    checker.index()
    checker.check_sessions()
    checker.check_phantoms()
    checker.check_applied_no_ops()
    lost = checker.check_lost()
    checker.check_convergence()
    lost.update(checker.check_duplicates())
    return Report(checker.violations, checker.stats(lost), sorted(checker.lost_ops))


# The summary ---------------------------------------------------------------------------------


def format_report(report: Report, max_violations: int = 50) -> str:
    s = report.stats
    out = s["outcomes"]
    lines = [
        f"run: seed {s['seed']}, {s['replicas']} replicas, {s['clients']} clients, "
        f"write_quorum {s['write_quorum']}, {s['duration_s']} s"
        + ("" if s["complete"] else " (history incomplete: the run did not finish)"),
        f"operations: {s['ops']} in {s['sessions']} sessions: {out['ok']} ok, "
        f"{out['fail']} failed, {out['unknown']} unknown",
    ]
    for kind, counts in s["by_kind"].items():
        lines.append(f"  {kind:4} ok {counts['ok']:6}  failed {counts['fail']:6}  "
                     f"unknown {counts['unknown']:6}")
    faults = ", ".join(f"{k} {n}" for k, n in s["faults"].items()) or "none"
    lines.append(f"faults: {sum(s['faults'].values())} ({faults})"
                 + (f", {s['fault_errors']} could not be carried out" if s["fault_errors"]
                    else ""))
    w = s["writes"]
    if "lost_share" in w:
        lines.append(
            f"acknowledged writes: {w['acknowledged']}, kept {w['kept']}, lost "
            f"{w['lost_total']} ({100 * w['lost_share']:.3g} %): {w['lost_to_conflict']} to "
            f"conflicts, {w['lost']} otherwise")
        by_fault = w.get("by_fault") or {}
        if by_fault:
            lines.append("  acknowledged / lost, by the fault active when acknowledged: "
                         + ", ".join(f"{kind} {n} / {m}"
                                     + (f" ({100 * m / n:.3g} %)" if m else "")
                                     for kind, (n, m) in by_fault.items()))
        if w.get("applied_on_both_sides"):
            lines.append(f"writes in doubt applied on both sides of a partition (one copy "
                         f"kept by the merge): {w['applied_on_both_sides']}, e.g. ops "
                         + ", ".join(map(str, w["applied_on_both_sides_ops"][:5])))
        if w.get("copies_seen_only_by_reads"):
            lines.append(
                f"  of which {w['copies_seen_only_by_reads']} known only from a read of a "
                "copy no replica remembers: "
                + ", ".join(f"op {a} read by op {b}"
                            for a, b in w["copies_seen_only_by_reads_ops"][:3]))
    else:
        lines.append(f"acknowledged writes: {w['acknowledged']}, not checked (no final state)")
    converge = s["converge_s"]
    lines.append("converged: " + (f"{converge:.2f} s after the heal" if s["converged"]
                                  and converge is not None else "no")
                 + (f"; conflicts counted by the replicas: {s['conflicts']}"
                    if s["conflicts"] is not None else ""))
    counts = report.by_rule()
    lines.append("violations: " + ("none" if report.ok else str(len(report.violations))))
    for rule, n in counts.items():
        lines.append(f"  {rule:20} {n}")
    for violation in report.violations[:max_violations]:
        lines.append(f"[{violation.rule.value}] {violation.message}")
    if len(report.violations) > max_violations:
        lines.append(f"... and {len(report.violations) - max_violations} more")
    return "\n".join(lines)
