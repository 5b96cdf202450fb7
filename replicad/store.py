"""SQLite-backed versioned store: per-key records, the replica's clock, export and merge.

Each key holds one Record: its value (or a tombstone), its write id (origin, seq) and the
version vector of that write: the origin's clock right after the write, merged with the
version of the record the write replaced (so a write always wins over what it replaced).
Merging keeps, per key, the record with the greatest ``rank()``; rank extends the
happened-before order to a total order, so merging is a semilattice (commutative,
associative, idempotent) and every replica picks the same winner.

Invariant (everything below relies on it):
    clock[o] >= q  implies  the state reflects write (o, q), or a record that wins over it.
So a record whose write id the clock covers can be skipped, ``export_delta(since)`` only
needs records with ``seq > since[origin]``, and a clock may only be raised together with
the records it promises (one transaction) or when the write is the next one in sequence
(``apply_pushed``).  A pushed write that arrives after a gap is merged without raising the
clock; the caller pulls a delta to fill the gap.

Durability: WAL with ``synchronous=FULL``; every change is one ``BEGIN IMMEDIATE`` .. COMMIT
on the main connection, so it is on disk when the method returns, or not applied at all;
or, inside a write group (``begin_group``/``commit_group``), one savepoint of a shared
transaction that is on disk when ``commit_group`` returns (group commit: many writes,
one fsync; replicad.groupcommit decides when).  A COMMIT that fails for another
reason than a full disk (an fsync that fails, an I/O error) has an *unknown* outcome:
SQLite rolls the transaction back on the connection, but the pages it wrote into the WAL
before the failing sync come back when the database is opened again (measured: a row
whose COMMIT failed with SQLITE_IOERR_FSYNC was there after a crash and a reopen).  The
store then calls ``disk_failed`` once; the replica stops (replica.py says why).  So it
does for any statement, a read included, that meets an I/O error or a corrupt page
(``disk_broken``): a replica whose disk cannot read its pages would otherwise answer
every such request ERR and stay the coordinator, leaving its clients nowhere to go.
Exports read from a separate read-only connection inside one read transaction, so their
clock and records come from one snapshot while the main connection keeps writing.  With
``":memory:"`` there is no second connection: exports read the main connection and see
later writes (tests that need snapshot isolation use a file).

No-op markers: a DEL of a missing key that carries a request id changes no data, but
its answer (NOTFOUND) must hold on every replica that may later see the same request
(a copy queued at a paused coordinator, a retry elsewhere).  So it is a write without
data: a write id, a version and the request id, kept in ``requests`` with ``noop`` set,
pushed and pulled like any write (``Record.noop``).  A replica whose clock covers the
marker knows the request was answered, and a pull is due wherever it is missing.

Hot records: ``get`` answers from a bounded dict of the records it read or wrote last
(HOT_RECORDS, oldest out first), because the SELECT was a third of a GET's cost
(docs/benchmarks.md, section read-path: 1.42x GETs/s).  The dict only ever holds what
the main connection sees: ``_put`` and ``_insert_new`` are the ways a record changes row
by row (both keep it), and the two ways around them clear the dict whole: a change or
group that is rolled back, and an import's finish (its bulk INSERT .. SELECT).  Inside
an open group it holds the group's records before they are durable, exactly as the
connection's own reads do.
"""

from __future__ import annotations

import collections
import functools
import glob
import itertools
import os
import sqlite3
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from replicad.identity import is_cluster_id
from replicad.vclock import MAX_ENTRY, ClockError, Order, VectorClock

SCHEMA_VERSION = "3"   # 2: kv.epoch and kv.rid, the requests table; 3: requests.noop
REQUEST_IDS_KEPT = 100_000   # request ids remembered (the newest): the retry window
BATCH_ROWS = 1000  # rows per fetchmany/staging batch: bounds memory of exports and imports
MERGE_ROWS = 2000  # staged keys merged per step of an import's finish (finish_steps)
MAX_IMPORTS = 8  # open at once: each ATTACHes a database, SQLite allows 10 per connection
MAX_CONFLICT_KEYS = 20  # keys named in an ApplyResult, for the log; the count is exact
MEMORY = ":memory:"
# The database, its -wal and -shm, and staging files hold every key and value: owner
# only, whatever the umask (SQLite would create the database 0644 less the umask).
FILE_MODE = 0o600
# The write-ahead log is cut back to this size when SQLite starts it over (after a
# checkpoint).  Without a limit it keeps its largest size for good: a reader that holds
# an old snapshot (a full copy to a slow peer, a backup) stops checkpoints from passing
# it, and the log of the writes meanwhile stays on disk (measured: 47 MB of log beside a
# 0.8 MB database after 60,000 writes under one such reader; tests/test_store.py).
# 4 times the log's usual size (SQLite checkpoints at 1,000 pages of 4 KiB), so that it
# is never cut in normal running.
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024

_SCHEMA = """
CREATE TABLE kv (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT,                 -- NULL: tombstone
    origin INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    version TEXT NOT NULL,      -- VectorClock.encode()
    vtotal INTEGER NOT NULL,    -- version.total(), second part of rank()
    epoch INTEGER NOT NULL DEFAULT 0,  -- first part of rank()
    rid TEXT                    -- the client's request id, if it sent one
) WITHOUT ROWID;
CREATE INDEX kv_write ON kv (origin, seq);
CREATE TABLE clock (replica INTEGER PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE requests (     -- recent request ids: a retried write is answered, not redone
    n INTEGER PRIMARY KEY,      -- insertion order: the oldest are evicted first
    rid TEXT NOT NULL UNIQUE,
    origin INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    version TEXT NOT NULL,
    discarded INTEGER NOT NULL DEFAULT 0,  -- its write lost a merge: not in the data
    noop INTEGER NOT NULL DEFAULT 0        -- it changed nothing (a no-op marker)
);
CREATE INDEX requests_write ON requests (origin, seq);
"""

_STAGE_SCHEMA = """
CREATE TABLE {s}.kv (
    key TEXT PRIMARY KEY NOT NULL, value TEXT, origin INTEGER NOT NULL,
    seq INTEGER NOT NULL, version TEXT NOT NULL, vtotal INTEGER NOT NULL,
    epoch INTEGER NOT NULL, rid TEXT
) WITHOUT ROWID
"""

_COLUMNS = "key, value, origin, seq, version, epoch, rid"
_REQUEST_COLUMNS = "rid, origin, seq, version, discarded, noop"
REQUEST_IDS_SHIPPED = 10_000   # a full copy carries the newest this many request ids
HOT_RECORDS = 10_000   # records kept in memory in front of get (about 1.1 KB each)
_ABSENT = object()
_INSERT_NEW = ("INSERT INTO kv (key, value, origin, seq, version, vtotal, epoch, rid)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING")

Rows = Callable[[sqlite3.Connection], Iterator[tuple]]


@dataclass(slots=True)
class Record:
    """One key's state: value (None = tombstone), write id, the write's version and the
    epoch of the coordinator that accepted it.

    A value: nothing assigns to a field.  Slotted rather than frozen because one is made
    per write on the coordinator and per pushed record on each follower, and a frozen
    dataclass's __init__ sets each of its seven fields through object.__setattr__ (0.78
    µs against about 0.2; with peerwire.Frame: PUTs/s 1.05x, docs/benchmarks.md)."""

    key: str
    value: str | None
    origin: int
    seq: int
    version: VectorClock
    epoch: int = 0
    rid: str | None = None      # the request id the client sent with the write
    # A no-op marker (module docstring): a DEL that found nothing; never a row of kv.
    noop: bool = False

    @property
    def deleted(self) -> bool:
        return self.value is None

    def rank(self) -> tuple[int, int, int, int]:
        """Total order extending happened-before, epoch first.

        Along happened-before the epoch never falls (``Store.write`` refuses to write
        over a record of a newer epoch) and total() grows strictly, so this extends it.
        Epoch first means that of two concurrent versions (a split brain) the one
        accepted by the newer coordinator wins: in quorum mode that is the side that
        held a majority, so a write that missed its quorum on a deposed coordinator can
        never outrank one acknowledged by its successor (docs/consistency.md).
        """
        return (self.epoch, self.version.total(), self.origin, self.seq)


def winner(a: Record, b: Record) -> Record:
    """The record that merge keeps: the greater rank.

    Equal ranks mean the same write id, hence the same write: a is returned.
    """
    return b if b.rank() > a.rank() else a


def is_conflict(a: Record, b: Record) -> bool:
    """Concurrent versions: writes made without seeing each other (a split brain)."""
    return a.version.compare(b.version) is Order.CONCURRENT


@dataclass(frozen=True)
class RequestRow:
    """A remembered request id and the write it made, as exports carry them."""

    rid: str
    origin: int
    seq: int
    version: VectorClock
    discarded: bool = False     # its write lost a merge to a concurrent version
    noop: bool = False          # it changed nothing: a no-op marker (or origin 0)


@dataclass
class ApplyResult:
    applied: int  # records that changed the local state
    conflicts: int  # concurrent versions met (resolved by winner())
    conflict_keys: list[str] = field(default_factory=list)  # the first few, for the log

    def _conflict(self, key: str) -> None:
        self.conflicts += 1
        if len(self.conflict_keys) < MAX_CONFLICT_KEYS:
            self.conflict_keys.append(key)


class StoreError(Exception):
    """The database cannot be used (not a replicad database, bad schema) or a bad record."""


class ImportAborted(StoreError):
    """An import's finish was aborted between its steps (the store closed)."""


class NewerEpoch(StoreError):
    """A write over a record that a newer coordinator accepted: the writer is deposed."""

    def __init__(self, epoch: int):
        super().__init__(f"the key holds a write of the newer epoch {epoch}")
        self.epoch = epoch


def disk_full(error: BaseException) -> bool:
    """SQLite could not write because the disk (or the database's size limit) is full:
    SQLITE_FULL.  Nothing of the failed statement or transaction was applied; the same
    write succeeds once space is freed."""
    return (isinstance(error, sqlite3.Error)
            and getattr(error, "sqlite_errorname", None) == "SQLITE_FULL")


def outcome_unknown(error: BaseException) -> bool:
    """A COMMIT failed with ``error`` and what it wrote may be on the disk after all: the
    fsync's EIO (SQLITE_IOERR_FSYNC), another I/O error, a database file made read-only
    or corrupt under the replica; the WAL may hold the transaction, and a restart
    recovers it.  Not a full disk (SQLITE_FULL: SQLite could not write the
    transaction's pages), a lock it did not get (BUSY, LOCKED: nothing was written, the
    transaction is still open) nor a misuse of the API (a bug, before any write)."""
    if not isinstance(error, sqlite3.DatabaseError) or isinstance(
            error, (sqlite3.ProgrammingError, sqlite3.IntegrityError)):
        return False
    name = getattr(error, "sqlite_errorname", None) or ""
    return not disk_full(error) and not name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def disk_broken(error: BaseException) -> bool:
    """Whatever the statement, SQLite says the disk or the database file failed: an I/O
    error (SQLITE_IOERR_*: a read, a write, a sync the kernel failed) or a file that is
    corrupt or no longer a database (SQLITE_CORRUPT*, SQLITE_NOTADB).  Not a full disk,
    a lock, or memory (SQLITE_IOERR_NOMEM): those pass, the disk is sound."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    name = getattr(error, "sqlite_errorname", None) or ""
    return (name.startswith(("SQLITE_IOERR", "SQLITE_CORRUPT")) and name != "SQLITE_IOERR_NOMEM"
            or name == "SQLITE_NOTADB")


def check_record(record: Record) -> None:
    """Refuse a record that would break the store's invariants; raise StoreError."""
    if not isinstance(record, Record):
        raise StoreError(f"not a Record: {record!r:.80}")
    ok = (
        isinstance(record.key, str)
        and record.key != ""
        and (record.value is None or isinstance(record.value, str))
        and isinstance(record.origin, int)
        and record.origin >= 0
        and isinstance(record.seq, int)
        and record.seq >= 1
        and isinstance(record.version, VectorClock)
        and record.version[record.origin] == record.seq
        and record.version.total() <= MAX_ENTRY  # stored as an SQLite INTEGER
        and isinstance(record.epoch, int)
        and 0 <= record.epoch <= MAX_ENTRY
        and (record.rid is None or (isinstance(record.rid, str) and 0 < len(record.rid) <= 64))
        and (not record.noop or (record.value is None and record.rid is not None))
    )
    if not ok:
        raise StoreError(f"malformed record {record!r:.200}")


def _row(record: Record) -> tuple:
    version = record.version
    return (record.key, record.value, record.origin, record.seq, version.encode(),
            version.total(), record.epoch, record.rid)


def _record(row: tuple) -> Record:
    key, value, origin, seq, version, epoch, rid = row
    try:
        return Record(key, value, origin, seq, VectorClock.decode(version), epoch, rid)
    except ClockError as e:
        raise StoreError(f"corrupt version for key {key!r}: {e}") from None


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with prefix (None: no bound).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points.  The surrogate
    range is skipped because those code points cannot be encoded.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def _reading(method: Callable) -> Callable:
    """A read of the main connection that may meet a failed disk: told (Store._check)
    before the error goes on.  For the reads off the hot path; ``_select`` and ``request``
    inline it."""
    @functools.wraps(method)
    def read(self: Store, *args: object) -> object:
        try:
            return method(self, *args)
        except sqlite3.Error as e:
            self._check(e)
            raise
    return read


class Store:
    """The replica's database.  Single-threaded use; exports may interleave with writes."""

    def __init__(self, path: str):
        self._path = path if path == MEMORY else os.path.abspath(path)
        self._importers: set[Importer] = set()
        # (clock, conflicts, live keys) at begin
        self._group: tuple[VectorClock, int, int | None] | None = None
        self._live: int | None = None     # live keys (count); None: not counted yet
        self._group_ids = 0
        self._failed_groups: dict[int, BaseException] = {}    # group id: why
        self._stage_ids = itertools.count(1)
        # key -> Record, or None for a key never written; see "Hot records" above.
        self._hot: collections.OrderedDict[str, Record | None] = collections.OrderedDict()
        # The key's record the last write() replaced (None: the key was absent), read
        # from what the write looked up anyway: a quorum-mode coordinator keeps it while
        # the write waits for its quorum (quorumindex.py).
        self.replaced: Record | None = None
        # Told once, with the error and whether a COMMIT met it, when the disk failed: a
        # COMMIT whose outcome is unknown (outcome_unknown), any statement that met
        # disk_broken; ``disk_failure`` keeps that error.
        self.disk_failed: Callable[[BaseException, bool], None] | None = None
        self.disk_failure: BaseException | None = None
        if self._path != MEMORY:
            _make_private(self._path, wal=True)
        try:
            self._db = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        try:
            self._open()
        except sqlite3.Error as e:  # e.g. "file is not a database", "unable to open ..."
            self._db.close()
            raise StoreError(f"cannot use {path} as a replicad database: {e}") from None
        except StoreError:
            self._db.close()
            raise
        # The file opened, (device, inode): ``file_lost`` compares the path with it.
        self._opened: tuple[int, int] | None = None
        if self._path != MEMORY:
            self._remove_stale_staging()
            opened = os.stat(self._path)
            self._opened = (opened.st_dev, opened.st_ino)

    def _open(self) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if self._path != MEMORY and mode.lower() != "wal":
            raise StoreError(f"{self._path}: cannot use the WAL journal (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")  # WAL fsynced at each COMMIT: kill -9 safe
        db.execute(f"PRAGMA journal_size_limit={int(WAL_SIZE_LIMIT_BYTES)}")
        with self._transaction():
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
            tables = {name for (name,) in db.execute(query)}
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("schema", SCHEMA_VERSION), ("epoch", "0"), ("conflicts", "0")],
                )
            elif "meta" not in tables or "kv" not in tables:
                raise StoreError(f"{self._path} is an SQLite file but not a replicad database")
            meta = dict(db.execute("SELECT name, value FROM meta"))
            if meta.get("schema") == "1":
                # 1 -> 2: records gain the epoch that accepted them; older writes rank
                # as epoch 0, below every write made since.  (The requests table is
                # made as it is now, so this goes straight to the current schema.)
                db.execute("ALTER TABLE kv ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
                db.execute("ALTER TABLE kv ADD COLUMN rid TEXT")
                for statement in _SCHEMA[_SCHEMA.index("CREATE TABLE requests"):].split(";"):
                    if statement.strip():
                        db.execute(statement)
                self._set_meta("schema", SCHEMA_VERSION)
                meta["schema"] = SCHEMA_VERSION
            if meta.get("schema") == "2":
                # 2 -> 3: no-op markers; the request ids kept before (origin 0) stay
                # what they were, local answers that changed nothing.
                db.execute("ALTER TABLE requests ADD COLUMN noop INTEGER NOT NULL DEFAULT 0")
                self._set_meta("schema", SCHEMA_VERSION)
                meta["schema"] = SCHEMA_VERSION
            if meta.get("schema") != SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path} has schema version {meta.get('schema')!r}, "
                    f"this replicad needs {SCHEMA_VERSION!r}"
                )
        self._epoch = int(meta["epoch"])
        self._conflicts = int(meta["conflicts"])
        self._clock = _read_clock(db)
        self._replica_id, self._cluster_id = _read_identity(meta, self._path)
        self._origin = _read_origin(meta, self._path)

    def file_lost(self) -> str | None:
        """Why the database file at the store's path is no longer the file it has open,
        or None while it is.  SQLite goes on writing to a file that was removed (its
        data directory deleted, say) or renamed, and reports nothing: every later write
        would be acknowledged into a file no one can open again."""
        if self._opened is None:
            return None
        try:
            now = os.stat(self._path)
        except FileNotFoundError:
            return f"{self._path} was removed"
        except OSError as e:
            return f"{self._path} cannot be looked up: {e.strerror}"
        if (now.st_dev, now.st_ino) != self._opened:
            return f"{self._path} was replaced by another file"
        return None

    def _remove_stale_staging(self) -> None:
        """Staging files left by a crash during an import are garbage: drop them."""
        for name in glob.glob(glob.escape(self._path) + ".import-*"):
            try:
                os.remove(name)
            except OSError:
                pass

    def close(self) -> None:
        """Abort pending imports, commit an open write group, close the database."""
        for importer in list(self._importers):
            importer.abort()
        try:
            self.commit_group()
        finally:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, joinable: bool = False,
                     one_statement: bool = False) -> Iterator[None]:
        """One write transaction: all of it is committed, or none of it (ROLLBACK).

        While a write group is open (``begin_group``) a *joinable* change (a write, a
        pushed record) runs inside it under a savepoint, so it is still all or nothing;
        any other change commits the group first and then runs on its own.  A change
        that makes *one statement* needs no savepoint: SQLite undoes a failed statement
        by itself (and an error that ends the whole transaction fails the group's
        COMMIT, savepoint or not); that saves two statements of every plain write.
        """
        live = self._live
        if self._group is not None:
            if joinable and one_statement:
                try:
                    yield
                except BaseException as e:
                    self._hot.clear()
                    self._live = live
                    self._check(e)
                    raise
                return
            if joinable:
                self._db.execute("SAVEPOINT change")
                try:
                    yield
                    self._db.execute("RELEASE change")
                except BaseException as e:
                    self._hot.clear()
                    self._live = live
                    self._check(e)
                    self._db.execute("ROLLBACK TO change")
                    self._db.execute("RELEASE change")
                    raise
                return
            self.commit_group()
        self._begin_immediate()
        try:
            yield
            self._commit()
        except BaseException as e:
            self._hot.clear()
            self._live = live
            self._check(e)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE on the main connection; an error that says the disk failed is
        told (``_check``) before it is raised."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self._check(e)
            raise

    def _commit(self) -> None:
        """COMMIT the main connection's transaction; a failure whose outcome is unknown
        is reported (``disk_failed``) before it is raised."""
        try:
            self._db.execute("COMMIT")
        except BaseException as e:
            self._check(e, committing=True)
            raise

    def _check(self, error: BaseException, committing: bool = False) -> None:
        """Tell ``disk_failed`` (once) of an error that says the disk failed: any
        statement's disk_broken, or a COMMIT's outcome_unknown.  The replica stops on it
        (replica.py says why); the caller raises the error on as before."""
        if self.disk_failure is None and (
                disk_broken(error) or committing and outcome_unknown(error)):
            self.disk_failure = error
            if self.disk_failed is not None:
                self.disk_failed(error, committing)

    # -- group commit --------------------------------------------------------------------

    @property
    def group_open(self) -> bool:
        return self._group is not None

    @property
    def group_id(self) -> int:
        """The id of the open group (or of the next one)."""
        return self._group_ids

    def begin_group(self) -> None:
        """Open one transaction that writes and pushed records join until
        ``commit_group``: many changes, one COMMIT, one fsync.  Reads on this connection
        see the group's changes before they are durable: the caller must not answer a
        read with them (or acknowledge a write) before the group is committed."""
        if self._group is not None:
            return
        self._begin_immediate()
        self._group = (self._clock, self._conflicts, self._live)

    def commit_group(self) -> None:
        """Commit the open group: durable when this returns.  If the COMMIT fails the
        whole group is rolled back, the in-memory clock restored, the group's id
        recorded as failed (``group_failure``) and the error raised."""
        if self._group is None:
            return
        clock, conflicts, live = self._group
        self._group = None
        group_id = self._group_ids
        self._group_ids += 1
        try:
            self._write_clock(clock, self._clock)   # once per group, not per write
            self._commit()
        except BaseException as e:
            self._hot.clear()
            self._check(e)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._clock, self._conflicts, self._live = clock, conflicts, live
            self._failed_groups[group_id] = e
            raise

    def group_failure(self, group_id: int) -> BaseException | None:
        """Why that group's COMMIT failed, None if it did not (until
        ``forget_failed_groups``): a group committed early by an import may have found
        the disk full, which its writers must hear as such."""
        return self._failed_groups.get(group_id)

    def forget_failed_groups(self) -> None:
        self._failed_groups.clear()

    # -- reading -------------------------------------------------------------------------

    @property
    def clock(self) -> VectorClock:
        return self._clock

    @property
    def durable_clock(self) -> VectorClock:
        """The clock of what is committed: ``clock`` less the open group's writes."""
        group = self._group
        return self._clock if group is None else group[0]

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def replica_id(self) -> int | None:
        """The replica this database belongs to (claim()); None until first claimed."""
        return self._replica_id

    @property
    def cluster_id(self) -> str | None:
        """The cluster history this database is part of; None: unbound (never was)."""
        return self._cluster_id

    @property
    def origin(self) -> int | None:
        """The origin of this replica's writes (their ids are (origin, seq)): its replica
        id, or the new origin it took when it joined by copying (``bind_cluster``, and
        identity.py says why); None until claimed."""
        return self._replica_id if self._origin is None else self._origin

    @property
    @_reading
    def is_empty(self) -> bool:
        """No write was ever applied here: the clock is empty and kv holds no row."""
        if len(self._clock):
            return False
        return self._db.execute("SELECT 1 FROM kv LIMIT 1").fetchone() is None

    @property
    def conflicts(self) -> int:
        """Running total of concurrent versions met while merging (persisted)."""
        return self._conflicts

    def get(self, key: str) -> Record | None:
        """The record for key, tombstones included; None if the key was never written."""
        record = self._hot.get(key, _ABSENT)
        if record is _ABSENT:
            record = self._select(key)
            self._keep(key, record)
        return record

    def _select(self, key: str) -> Record | None:
        try:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM kv WHERE key = ?",
                                   (key,)).fetchone()
        except sqlite3.Error as e:    # a page the disk cannot read: the replica stops
            self._check(e)
            raise
        return None if row is None else _record(row)

    def _keep(self, key: str, record: Record | None) -> None:
        hot = self._hot
        hot[key] = record
        if len(hot) > HOT_RECORDS:
            hot.popitem(last=False)

    @_reading
    def keys(self, prefix: str = "", after: str | None = None,
             limit: int | None = None) -> list[str]:
        """Live keys starting with prefix, sorted: an index range, not a scan; only
        those above ``after``, and at most ``limit`` of them (a KEYS page)."""
        if after is not None and after >= prefix:
            sql, params = "SELECT key FROM kv WHERE key > ? AND value IS NOT NULL", [after]
        else:
            sql, params = "SELECT key FROM kv WHERE key >= ? AND value IS NOT NULL", [prefix]
        end = _prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [key for (key,) in self._db.execute(sql, params)]

    def count(self) -> int:
        """Number of live keys, as this connection sees them (a group's writes
        included): counted once (``_count_live``, a scan: the replica does it as it
        starts, and again after an import's bulk insert), then kept as the rows change.
        STATUS and every metrics scrape ask for it, and the scan took 0.12-0.19 s per
        million keys, longer than a PING answer may wait at a few million."""
        if self._live is None:
            self._live = self._count_live()
        return self._live

    @_reading
    def _count_live(self) -> int:
        return self._db.execute("SELECT count(*) FROM kv WHERE value IS NOT NULL").fetchone()[0]

    # -- changing ------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise StoreError(f"epoch must be a non-negative integer, got {epoch!r}")
        with self._transaction():
            self._set_meta("epoch", epoch)
        self._epoch = epoch

    def claim(self, replica_id: int) -> None:
        """Record that this database belongs to replica_id, on first use.

        StoreError if it already belongs to another replica: a data dir started with the
        wrong --id would issue write ids of the other replica, which breaks the rule that
        a write id is never issued twice.
        """
        if isinstance(replica_id, bool) or not isinstance(replica_id, int) or replica_id < 1:
            raise StoreError(f"replica id must be a positive integer, got {replica_id!r}")
        with self._transaction():
            owner = self._get_meta("replica_id")
            if owner is None:
                self._set_meta("replica_id", replica_id)
            elif owner != str(replica_id):
                raise StoreError(
                    f"{self._path} belongs to replica {owner}, not replica {replica_id}: "
                    "wrong --data-dir?"
                )
        self._replica_id = replica_id

    def bind_cluster(self, cluster_id: str, origin: int | None = None) -> None:
        """Record the cluster id once; binding again to the same id does nothing.
        ``origin``: from now on this replica's writes are numbered under it, recorded in
        the same transaction (a replica that joins by copying: identity.py).

        StoreError for a malformed id or origin, or if the database belongs to another
        cluster.
        """
        if not is_cluster_id(cluster_id):
            raise StoreError(f"bad cluster id {cluster_id!r:.60}: expected 32 lowercase hex")
        if origin is not None:
            _check_origin(origin)
        with self._transaction():
            bound = self._get_meta("cluster_id")
            if bound is None:
                self._set_meta("cluster_id", cluster_id)
                if origin is not None:
                    self._set_meta("origin", origin)
            elif bound != cluster_id:
                raise StoreError(
                    f"{self._path} belongs to cluster {bound}, not cluster {cluster_id}"
                )
        self._cluster_id = cluster_id
        if bound is None and origin is not None:
            self._origin = origin

    def renumber(self, origin: int) -> None:
        """Number this replica's writes under ``origin`` from now on (a restored backup:
        backup.py).  StoreError for an origin that is not a positive integer."""
        _check_origin(origin)
        with self._transaction():
            self._set_meta("origin", origin)
        self._origin = origin

    def write(self, origin: int, key: str, value: str | None, epoch: int = 0,
              rid: str | None = None) -> Record:
        """Accept a write at this replica (``origin``: its ``origin``) as the coordinator of
        ``epoch``; durable when this returns.

        The version is the clock after the write merged with the version of the record it
        replaces.  A pushed record may carry writes the clock lacks; without the merge the
        new write could rank below the record it replaced, and replicas would diverge.
        A record accepted in a newer epoch is never written over (``NewerEpoch``): the
        caller is a deposed coordinator, and rank() relies on epochs never falling along
        happened-before.
        """
        new_clock = self._clock.advance(origin)
        seq = new_clock[origin]
        record = Record(key, value, origin, seq, new_clock, epoch, rid)
        # One statement (the insert or the REPLACE) unless a request id is kept too.
        with self._transaction(joinable=True, one_statement=rid is None):
            current = self._hot.get(key, _ABSENT)
            if current is _ABSENT:
                check_record(record)
                if self._insert_new(record):
                    current = None
                else:
                    current = self._select(key)
                    record = self._over(current, record)
                    self._put(record, current)
            else:
                record = self._over(current, record)
                self._put(record, current)
            self._remember(record)
            self._save_clock(new_clock)
        self._clock = new_clock
        self.replaced = current
        return record

    def write_noop(self, origin: int, key: str, epoch: int, rid: str) -> Record:
        """Accept a DEL of ``key`` that finds nothing to delete (the caller checked) as
        a no-op marker: a write id and the request id, no data (module docstring), so
        that the NOTFOUND it is answered holds wherever the request turns up again.
        Joins a write group; NewerEpoch over a tombstone of a newer epoch, as write()."""
        current = self.get(key)
        if current is not None and current.epoch > epoch:
            raise NewerEpoch(current.epoch)
        new_clock = self._clock.advance(origin)
        record = Record(key, None, origin, new_clock[origin], new_clock, epoch, rid, noop=True)
        check_record(record)
        with self._transaction(joinable=True):
            self._remember(record)
            self._save_clock(new_clock)
        self._clock = new_clock
        return record

    def _over(self, current: Record | None, record: Record) -> Record:
        """``record``, a new write, as it replaces ``current``: refused over a newer
        epoch, its version merged with current's; checked."""
        if current is not None:
            if current.epoch > record.epoch:
                raise NewerEpoch(current.epoch)
            version = record.version.merge(current.version)
            if version[record.origin] != record.seq:
                raise StoreError(
                    f"key {record.key!r} holds write {record.origin}:"
                    f"{version[record.origin]} of this replica, but its clock is at "
                    f"{record.seq - 1}: was the database replaced?"
                )
            record = Record(record.key, record.value, record.origin, record.seq, version,
                            record.epoch, record.rid)
        check_record(record)
        return record

    def apply(self, records: Iterable[Record], clock: VectorClock | None = None) -> ApplyResult:
        """Merge remote records, then merge clock: one transaction, all or nothing.

        The caller promises that records hold every write clock covers and this store
        lacks (an export, or a delta since this store's clock).
        """
        result = ApplyResult(0, 0)
        with self._transaction():
            for record in records:
                self._merge(record, result)
            new_clock = self._clock if clock is None else self._clock.merge(clock)
            self._save_clock(new_clock)
            self._count_conflicts(result.conflicts)
        self._clock = new_clock
        self._conflicts += result.conflicts
        return result

    def apply_pushed(self, record: Record) -> str:
        """``apply_pushed_batch`` of one record."""
        return self.apply_pushed_batch((record,))[0]

    def apply_pushed_batch(self, records: Sequence[Record]) -> list[str]:
        """Merge the writes of one PUSH, in order; per record "applied", "gap" (applied
        after a gap), "duplicate" (held already), or "lost": it lost a merge to a
        concurrent version here, now or before, so this replica does not hold it (no
        acknowledgement).

        The clock advances only past a write that is the next from its origin; after a
        gap it would promise the missing writes, so it stays and the caller pulls a
        delta.  All the records are checked before any is merged and they share one
        savepoint: a batch is applied whole or not at all.
        """
        for record in records:
            check_record(record)
        before, conflicts = self._clock, self._conflicts
        outcomes: list[str] = []
        try:
            with self._transaction(joinable=True):
                if self._inserted_in_order(records):
                    self._save_clock_since(before)
                    return ["applied"] * len(records)
                result = ApplyResult(0, 0)
                for record in records:
                    outcomes.append(self._pushed(record, result))
                self._save_clock_since(before)
                self._count_conflicts(result.conflicts)
        except BaseException:
            self._clock = before
            raise
        self._conflicts = conflicts + result.conflicts
        return outcomes

    def _inserted_in_order(self, records: Sequence[Record]) -> bool:
        """The common batch in one statement: when every record is the next write of
        its origin and no hot record holds its key, the rows are inserted
        together (``executemany``).  True: all applied, ``_clock`` moved past them.
        False if a key had a row after all: the caller then merges record by record,
        and each record this inserted meets its own row there, an equal rank that
        changes nothing (the outcome is "applied", as if merged first).  A follower's
        CPU per pushed record 20-22 -> 15.5-16 µs in process (docs/benchmarks.md,
        "sixth session")."""
        hot, clock = self._hot, self._clock
        advanced: dict[int, int] = {}
        for record in records:
            have = advanced.get(record.origin) or clock[record.origin]
            if record.seq != have + 1 or hot.get(record.key) is not None or record.noop:
                return False        # a gap or a duplicate, a key known to have a row, a marker
            advanced[record.origin] = record.seq
        rows = [_row(record) for record in records]
        if self._db.executemany(_INSERT_NEW, rows).rowcount != len(records):
            return False
        for record in records:
            self._remember(record)
            self._keep(record.key, record)
            if record.value is not None and self._live is not None:
                self._live += 1
        for origin, seq in advanced.items():
            clock = clock.advance(origin, seq)
        self._clock = clock
        return True

    def _pushed(self, record: Record, result: ApplyResult) -> str:
        """One checked record of a batch, inside its savepoint; moves ``_clock``."""
        have = self._clock[record.origin]
        if have >= record.seq:
            if record.rid is not None and self.discarded(record.rid):
                return "lost"
            return "duplicate"
        applied, conflicts = result.applied, result.conflicts
        self._merge_valid(record, result)
        in_order = have == record.seq - 1
        if in_order:
            self._clock = self._clock.advance(record.origin, record.seq)
        if result.conflicts > conflicts and result.applied == applied:
            return "lost"
        return "applied" if in_order else "gap"

    def _merge(self, record: Record, result: ApplyResult) -> None:
        """Merge one record inside the caller's transaction."""
        check_record(record)
        self._merge_valid(record, result)

    def _merge_valid(self, record: Record, result: ApplyResult) -> None:
        """``_merge`` of a record already checked."""
        if self._clock[record.origin] >= record.seq:
            return  # covered: by the invariant we hold it or a winner over it
        self._remember(record)      # it happened, whether or not it wins here
        if record.noop:
            return                  # a marker: the request id is all it carries
        current = self._hot.get(record.key, _ABSENT)
        if current is _ABSENT:
            if self._insert_new(record):
                result.applied += 1
                return
            current = self._select(record.key)
        if current is not None:
            kept = winner(current, record)
            if is_conflict(current, record):
                result._conflict(record.key)
                # The loser of a concurrent pair is gone from the data: a retry of its
                # request must hear so, not OK (whatever is written to the key later).
                self._discard(record if kept is current else current)
            if kept is current:
                return
        self._put(record, current)
        result.applied += 1

    def _discard(self, record: Record) -> None:
        """The request id's write lost a merge: a retry must hear so.  Only the row of
        that very write: one request can have been applied on one side of a partition
        (this losing write) and answered NOTFOUND on the other, where its row is that
        no-op marker, whose answer still holds (chaos seed 21: marking the marker
        discarded made it travel as a write, and a retry there would have been told
        ERR INDOUBT instead of NOTFOUND)."""
        if record.rid is not None:
            self._db.execute(
                "UPDATE requests SET discarded = 1 WHERE rid = ? AND origin = ? AND seq = ?",
                (record.rid, record.origin, record.seq))

    @_reading
    def discarded(self, rid: str) -> bool:
        """Whether the write a request id made lost a merge to a concurrent version."""
        row = self._db.execute("SELECT discarded FROM requests WHERE rid = ?",
                               (rid,)).fetchone()
        return bool(row and row[0])

    def request(self, rid: str) -> RequestRow | None:
        """What a request id did (its write id and version, whether it changed nothing
        or lost a merge), if the id is among the REQUEST_IDS_KEPT newest this replica
        has seen; else None.  A row of origin 0 is a no-op kept by a replica before
        markers (schema 2): local to it, with no write id."""
        try:               # every write with a request id: _reading inlined
            row = self._db.execute(f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE rid = ?",
                                   (rid,)).fetchone()
        except sqlite3.Error as e:
            self._check(e)
            raise
        return None if row is None else _request_row(row)

    def _remember(self, record: Record) -> None:
        """Keep a write's request id (inside the caller's transaction), bounded: every
        1000 ids, the ones older than the newest REQUEST_IDS_KEPT go."""
        if record.rid is None:
            return
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO requests (rid, origin, seq, version, noop)"
            " VALUES (?, ?, ?, ?, ?)",
            (record.rid, record.origin, record.seq, record.version.encode(), record.noop))
        if cursor.rowcount and cursor.lastrowid % 1000 == 0:
            self._db.execute("DELETE FROM requests WHERE n <= ?",
                             (cursor.lastrowid - REQUEST_IDS_KEPT,))

    def _insert_new(self, record: Record) -> bool:
        """Insert ``record`` if its key has no row (True); else write nothing (False).
        A change to a key the hot records do not know tries this before it reads the
        key's row: for a new key it is one statement where the SELECT that finds nothing
        and then the REPLACE were two, and that SELECT cost about 5 µs, a third of the
        insert (PUTs/s 1.14x side by side: docs/benchmarks.md, "sixth session")."""
        cursor = self._db.execute(_INSERT_NEW, _row(record))
        if cursor.rowcount:
            self._keep(record.key, record)
            if record.value is not None and self._live is not None:
                self._live += 1
            return True
        return False

    def _put(self, record: Record, current: Record | None) -> None:
        """Write ``record`` over ``current``, the key's row (None: it has none)."""
        self._db.execute(
            "REPLACE INTO kv (key, value, origin, seq, version, vtotal, epoch, rid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            _row(record),
        )
        self._keep(record.key, record)
        if self._live is not None:
            self._live += ((record.value is not None)
                           - (current is not None and current.value is not None))

    def _save_clock(self, new: VectorClock) -> None:
        """Persist the clock ``new`` (inside the caller's transaction).  In an open
        group the group's COMMIT writes it, once for all its changes."""
        if self._group is None:
            self._write_clock(self._clock, new)

    def _save_clock_since(self, old: VectorClock) -> None:
        """``_save_clock`` for a change that already moved ``_clock`` on from ``old``."""
        if self._group is None:
            self._write_clock(old, self._clock)

    def _write_clock(self, old: VectorClock, new: VectorClock) -> None:
        changed = [(r, c) for r, c in new.items() if c != old[r]]
        if changed:
            self._db.executemany("REPLACE INTO clock (replica, count) VALUES (?, ?)", changed)

    def _count_conflicts(self, conflicts: int) -> None:
        if conflicts:
            self._set_meta("conflicts", self._conflicts + conflicts)

    def _set_meta(self, name: str, value: object) -> None:
        self._db.execute("REPLACE INTO meta (name, value) VALUES (?, ?)", (name, str(value)))

    def _get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    # -- export --------------------------------------------------------------------------

    def export_full(self, requests: bool = False) -> tuple[VectorClock, Iterator]:
        """The clock and every record (tombstones too), from one snapshot, in key order;
        with ``requests``, then every remembered request id (RequestRow)."""
        return self._export(lambda db: _fetch(db, f"SELECT {_COLUMNS} FROM kv ORDER BY key"),
                            _newest_requests if requests else None)

    def export_delta(self, since: VectorClock,
                     requests: bool = False) -> tuple[VectorClock, Iterator]:
        """The clock and the records whose write id since does not cover (seq > since[o]);
        with ``requests``, then the request ids of those writes, superseded ones
        included (what keeps a retried write from being applied twice elsewhere).

        since must not exceed the receiver's clock, or the receiver would be promised
        writes it never gets.  One index range per origin present in the table.
        """
        return self._export(_by_origin("kv", _COLUMNS, since),
                            _by_origin("requests", _REQUEST_COLUMNS, since)
                            if requests else None)

    def _export(self, rows: Rows, request_rows: Rows | None = None
                ) -> tuple[VectorClock, Iterator]:
        if self._path == MEMORY:
            return self._clock, _records_then_requests(self._db, rows, request_rows)
        reader = sqlite3.connect(
            Path(self._path).as_uri() + "?mode=ro", uri=True, isolation_level=None
        )
        snapshot = _snapshot(reader, rows, request_rows, self._check)
        clock = next(snapshot)  # started, so closing the generator runs its finally
        return clock, snapshot

    # -- import --------------------------------------------------------------------------

    def begin_import(self) -> Importer:
        """Stage a streamed full copy or large delta, merged by finish() or finish_steps().

        Each open import ATTACHes a database; SQLite allows 10 per connection, so at most
        MAX_IMPORTS may be open at once (StoreError beyond; sync.py waits for a slot).
        """
        if len(self._importers) >= MAX_IMPORTS:
            raise StoreError(f"{MAX_IMPORTS} imports are open already")
        importer = Importer(self, f"stage{next(self._stage_ids)}")
        self._importers.add(importer)
        return importer


def _make_private(path: str, wal: bool = False) -> None:
    """Create path with mode 0600 before SQLite opens it, or take the group and other
    bits off an existing one (and its -wal and -shm: files of an older version).

    SQLite gives the -wal and -shm files it creates the database file's mode, so one
    private database file makes all three private.  An existing file is changed by
    path, never opened here: closing a descriptor of a file SQLite has open in this
    process would drop SQLite's POSIX locks on it.  Errors are left to SQLite (a
    directory that is not writable) or ignored (a file of another owner).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        for name in (path, path + "-wal", path + "-shm") if wal else (path,):
            try:
                mode = os.stat(name).st_mode & 0o7777
                if mode & 0o077:
                    os.chmod(name, mode & ~0o077)
            except OSError:
                pass
        return
    except OSError:
        return
    try:
        os.fchmod(fd, FILE_MODE)    # the umask may have taken owner bits off
    finally:
        os.close(fd)


def _read_clock(db: sqlite3.Connection) -> VectorClock:
    return VectorClock(db.execute("SELECT replica, count FROM clock"))


def _read_identity(meta: dict[str, str], path: str) -> tuple[int | None, str | None]:
    """The replica id and cluster id from the meta table (absent rows: None)."""
    replica_text, cluster_id = meta.get("replica_id"), meta.get("cluster_id")
    if replica_text is not None and not (replica_text.isascii() and replica_text.isdigit()
                                         and int(replica_text) >= 1):
        raise StoreError(f"{path}: corrupt replica id {replica_text!r:.40} in meta")
    if cluster_id is not None and not is_cluster_id(cluster_id):
        raise StoreError(f"{path}: corrupt cluster id {cluster_id!r:.60} in meta")
    return (None if replica_text is None else int(replica_text)), cluster_id


def _check_origin(origin: object) -> None:
    if isinstance(origin, bool) or not isinstance(origin, int) or not 1 <= origin <= MAX_ENTRY:
        raise StoreError(f"an origin must be a positive integer, got {origin!r:.40}")


def _read_origin(meta: dict[str, str], path: str) -> int | None:
    """The origin recorded when the replica joined by copying; None: its replica id."""
    text = meta.get("origin")
    if text is not None and not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ENTRY):
        raise StoreError(f"{path}: corrupt origin {text!r:.40} in meta")
    return None if text is None else int(text)


def _fetch(db: sqlite3.Connection, sql: str, params: tuple = ()) -> Iterator[tuple]:
    """Rows in fetchmany batches: memory stays bounded whatever the table size."""
    cursor = db.execute(sql, params)
    try:
        while batch := cursor.fetchmany(BATCH_ROWS):
            yield from batch
    finally:
        cursor.close()


def _snapshot(reader: sqlite3.Connection, rows: Rows, request_rows: Rows | None,
              failed: Callable[[BaseException], None]) -> Iterator:
    """Yield the clock, then the records (then the request rows), all inside one read
    transaction on reader; ``failed`` hears SQLite's errors (a page the disk cannot
    read) before they go on.

    The connection (and with it the read transaction, which holds back WAL checkpoints)
    is closed when the generator is exhausted, closed or garbage collected.
    """
    try:
        reader.execute("BEGIN")
        yield _read_clock(reader)  # the first read fixes the snapshot
        yield from _records_then_requests(reader, rows, request_rows)
    except sqlite3.Error as e:
        failed(e)
        raise
    finally:
        reader.close()


def _records_then_requests(db: sqlite3.Connection, rows: Rows,
                           request_rows: Rows | None) -> Iterator:
    for row in rows(db):
        yield _record(row)
    if request_rows is not None:
        for row in request_rows(db):
            yield _request_row(row)


def _request_row(row: tuple) -> RequestRow:
    rid, origin, seq, version, discarded, noop = row
    try:
        return RequestRow(rid, origin, seq, VectorClock.decode(version), bool(discarded),
                          bool(noop) or origin == 0)
    except ClockError as e:
        raise StoreError(f"corrupt version for request {rid!r}: {e}") from None


def _newest_requests(db: sqlite3.Connection) -> Iterator[tuple]:
    """What a full copy carries: the newest REQUEST_IDS_SHIPPED request ids (retries
    come within seconds; all 100,000 made a wiped replica's copy take seconds)."""
    return _fetch(db, f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE origin > 0"
                      " ORDER BY n DESC LIMIT ?", (REQUEST_IDS_SHIPPED,))


def _by_origin(table: str, columns: str, since: VectorClock) -> Rows:
    """Rows of table whose write id since does not cover: one index range per origin
    (origin 0, no-ops kept before markers, has no write id and is never shipped)."""

    def rows(db: sqlite3.Connection) -> Iterator[tuple]:
        origin = 0
        while True:
            (origin,) = db.execute(
                f"SELECT min(origin) FROM {table} WHERE origin > ?", (origin,)
            ).fetchone()
            if origin is None:
                return
            yield from _fetch(
                db,
                f"SELECT {columns} FROM {table} WHERE origin = ? AND seq > ? ORDER BY seq",
                (origin, since[origin]),
            )

    return rows


class Importer:
    """Stages records outside the live table, in short committed batches.

    The reactor runs other writes between add() calls, so no transaction stays open on
    the main connection between calls.  Staging is an ATTACHed database: a throw-away file
    next to the database (same disk, not /tmp which may be RAM), or a temporary one for
    ":memory:".  After finish() or abort() the importer is closed.
    """

    def __init__(self, store: Store, schema: str):
        self._store = store
        self._db = store._db
        self._schema = schema
        self._pending: list[tuple] = []
        self._requests: list[tuple] = []
        if store._path == MEMORY:
            self._file = None
        else:
            self._file = f"{store._path}.import-{uuid.uuid4().hex}"
        store.commit_group()    # ATTACH and DETACH cannot run inside a transaction
        if self._file is not None:
            _make_private(self._file)
        self._db.execute(f"ATTACH DATABASE ? AS {schema}", (self._file or "",))
        try:
            # Not durable on purpose: a crash makes the staging garbage anyway.
            self._db.execute(f"PRAGMA {schema}.journal_mode=MEMORY")
            self._db.execute(f"PRAGMA {schema}.synchronous=OFF")
            self._db.execute(_STAGE_SCHEMA.format(s=schema))
        except BaseException:
            self._drop()
            raise
        self._active = True

    def add_request(self, row: RequestRow) -> None:
        """Stage one request id (merged into the store's at finish)."""
        self._check_open()
        if not (isinstance(row.rid, str) and 0 < len(row.rid) <= 64 and row.origin >= 1
                and row.seq >= 1 and not (row.noop and row.discarded)):
            raise StoreError(f"malformed request row {row!r:.120}")
        self._requests.append((row.rid, row.origin, row.seq, row.version.encode(),
                               int(row.discarded), int(row.noop)))

    def add(self, record: Record) -> None:
        """Stage one record (the highest rank wins if a key comes twice)."""
        self._check_open()
        check_record(record)
        if record.noop:     # markers travel as request rows in a pull, never as records
            raise StoreError(f"a no-op marker among a pull's records: {record!r:.120}")
        self._pending.append(_row(record))
        if len(self._pending) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        s = self._schema
        self._store.commit_group()    # a write group must not swallow the staging
        self._db.execute("BEGIN")  # deferred: only the staging database gets locked
        try:
            self._db.executemany(
                f"INSERT INTO {s}.kv (key, value, origin, seq, version, vtotal, epoch, rid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " value = excluded.value, origin = excluded.origin, seq = excluded.seq,"
                " version = excluded.version, vtotal = excluded.vtotal, epoch = excluded.epoch,"
                " rid = excluded.rid"
                " WHERE (excluded.epoch, excluded.vtotal, excluded.origin, excluded.seq)"
                " > (epoch, vtotal, origin, seq)",
                self._pending,
            )
            self._db.execute("COMMIT")
        except BaseException as e:
            self._store._check(e)     # the staging file is on the same disk
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._pending.clear()

    def finish(self, clock: VectorClock) -> ApplyResult:
        """Merge the staged records and the clock into the store, all steps at once."""
        steps = self.finish_steps(clock)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def finish_steps(self, clock: VectorClock) -> Generator[None, None, ApplyResult]:
        """Merge the staged records in steps of MERGE_ROWS keys, one transaction each; the
        clock rises in the last step, so a caller can run other work between steps (a
        million keys took 4 s in one call: a replica that answers no PING for that long
        looks dead).  Returns the ApplyResult.

        Records land before the clock that promises them; the invariant only asks the
        reverse, and a write over such a record merges its version (``write``).  If the
        steps stop early (closed, an error) the staging is dropped, the merged records
        stay and the clock is not raised: a later pull brings the rest.  The request rows
        go in with the first step, so a retry hears what a write became (lost a merge,
        changed nothing) before its record arrives.  An import of at most MERGE_ROWS keys
        is one step: one transaction, as before.
        """
        self._check_open()
        store, db, s = self._store, self._db, self._schema
        try:
            self._flush()
            result = ApplyResult(0, 0)
            requests, self._requests = self._requests, []
            last = ""  # keys are non-empty, so every key is > ""
            while True:
                upper = db.execute(f"SELECT key FROM {s}.kv WHERE key > ? ORDER BY key"
                                   " LIMIT 1 OFFSET ?", (last, MERGE_ROWS - 1)).fetchone()
                final = upper is None
                conflicts = result.conflicts
                with store._transaction():
                    if requests:
                        db.executemany(
                            "INSERT INTO main.requests (rid, origin, seq, version, discarded,"
                            " noop) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rid) DO UPDATE SET"
                            " discarded = max(discarded, excluded.discarded)", requests)
                    self._merge_keys(last, None if final else upper[0], result)
                    if final:
                        new_clock = store._clock.merge(clock)
                        store._save_clock(new_clock)
                    store._count_conflicts(result.conflicts - conflicts)
                requests = []
                store._conflicts += result.conflicts - conflicts
                if final:
                    store._clock = new_clock
                    return result
                last = upper[0]
                yield
                if not self._active:
                    raise ImportAborted("the store closed while an import was merged")
        finally:
            if self._active:
                self._drop()

    def _merge_keys(self, after: str, upto: str | None, result: ApplyResult) -> None:
        """Merge the staged keys in (after, upto] (upto None: all after), inside the
        caller's transaction.  Keys the store lacks go in with one INSERT .. SELECT (the
        bootstrap case); keys on both sides are compared row by row with winner() to
        count conflicts."""
        store, db, s = self._store, self._db, self._schema
        bound = "s.key > ?" if upto is None else "s.key > ? AND s.key <= ?"
        args = (after,) if upto is None else (after, upto)
        # CROSS JOIN makes SQLite walk the staging in key order and probe kv by key;
        # fetchall: no cursor stays open on kv while _merge() writes to it.
        for row in db.execute(
            f"SELECT s.key, s.value, s.origin, s.seq, s.version, s.epoch, s.rid"
            f" FROM {s}.kv AS s CROSS JOIN main.kv AS k ON k.key = s.key WHERE {bound}"
            " ORDER BY s.key", args,
        ).fetchall():
            store._merge(_record(row), result)
        new = f"{bound} AND NOT EXISTS (SELECT 1 FROM main.kv AS k WHERE k.key = s.key)"
        db.execute(
            "INSERT OR IGNORE INTO main.requests (rid, origin, seq, version)"
            f" SELECT rid, origin, seq, version FROM {s}.kv AS s WHERE rid IS NOT NULL"
            f" AND {new}", args)
        (live,) = db.execute(
            f"SELECT count(*) FROM {s}.kv AS s WHERE value IS NOT NULL AND {new}", args
        ).fetchone()
        inserted = db.execute(
            "INSERT INTO main.kv (key, value, origin, seq, version, vtotal, epoch, rid)"
            f" SELECT key, value, origin, seq, version, vtotal, epoch, rid FROM {s}.kv AS s"
            f" WHERE {new}", args,
        ).rowcount
        if inserted:
            store._hot.clear()      # the INSERT .. SELECT went around _put
            if store._live is not None:
                store._live += live   # and around the count
        result.applied += inserted

    def abort(self) -> None:
        """Drop the staging; the live data is untouched.  Harmless if already closed."""
        if self._active:
            self._drop()

    def _check_open(self) -> None:
        if not self._active:
            raise StoreError("this import is finished or aborted")

    def _drop(self) -> None:
        self._active = False
        self._pending.clear()
        self._requests.clear()
        self._store._importers.discard(self)
        try:
            self._store.commit_group()
            self._db.execute(f"DETACH DATABASE {self._schema}")
        finally:
            if self._file is not None and os.path.exists(self._file):
                os.remove(self._file)  # journal_mode=MEMORY: no -journal file beside it
