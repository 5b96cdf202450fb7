"""Read-path variants of replicad.store.Store, for bench/read_path.py (issue #10 item 3).

Measured, not adopted: the benchmark needs each idea inside real ``twistd replicad``
processes without a line of replicad/ changed.  Python imports ``sitecustomize`` at
start-up from the first directory on sys.path that has one, so bench/read_path.py puts
this directory on the PYTHONPATH of the replicas it starts (LocalCluster hands its own
environment on to them) with REPLICAD_BENCH_VARIANT naming the variant:

- ``exclusive``: ``PRAGMA locking_mode=EXCLUSIVE`` on the store's connection, set before
  the WAL is first used, so that SQLite keeps the WAL index in the heap (no -shm file)
  and takes no file lock per read transaction.  The price: no other connection can open
  the database any more; Store's exports (a peer's DELTA/FULL pull) open one, wait
  sqlite3's busy timeout (5 s, the reactor blocked) and fail with "database is locked",
  and so would an online backup.  A fresh cluster then does not even form (a joining
  replica's FULL copy stalls its coordinator into elections), so this variant also
  reads exports over the main connection, as the store does for ":memory:": no snapshot
  (an export running beside writes could skip or repeat rows, and ship writes of an
  open group before they are durable).  Harmless here: the exports copy empty stores
  at start-up, and the script reports any pull while it measures.  What adopting
  EXCLUSIVE would have to solve.
- ``hotcache``: a dict of records in front of ``Store.get``, filled on a miss and
  updated by ``Store._put`` (every write and every merged record).  A prototype's
  invalidation, coarse on purpose: the whole dict is cleared on entering and on leaving
  any transaction that is not a joinable change (apply, an import's finish, epoch and
  identity changes: the paths that may change kv without ``_put``), when a change is
  rolled back and when a group commit fails, so it never holds a record the
  connection does not see.  Cleared whole, too, when it reaches HOT_CACHE_MAX entries.

Unset or empty: nothing is patched (the baseline); another value stops the process.
``replicad.store.Store`` is replaced by a subclass before anything imports it by name;
the subclass logs one line when it opens a database (the hot cache also logs its misses
when it closes), which is how bench/read_path.py checks that the variant took effect.
Imported under another name (bench/read_path.py does, for its in-process part) it
patches nothing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import replicad.store

ENV = "REPLICAD_BENCH_VARIANT"
HOT_CACHE_MAX = 100_000
_ABSENT = object()


def _log(text: str, **fields) -> None:
    from twisted.logger import Logger

    Logger(namespace="replicad.bench").info("read-path bench variant " + text, **fields)


class ExclusiveStore(replicad.store.Store):
    """The store with ``PRAGMA locking_mode=EXCLUSIVE``."""

    variant = "exclusive"

    def _open(self) -> None:
        self.locking_mode = self._db.execute("PRAGMA locking_mode=EXCLUSIVE").fetchone()[0]
        super()._open()
        _log("exclusive: locking_mode {mode} on {path}", mode=self.locking_mode,
             path=self._path)

    def _export(self, rows, request_rows=None):
        return self._clock, replicad.store._records_then_requests(self._db, rows, request_rows)


class HotCacheStore(replicad.store.Store):
    """The store with a dict of records in front of ``get``."""

    variant = "hotcache"

    def __init__(self, path: str):
        self._hot: dict[str, replicad.store.Record | None] = {}
        self.misses = 0
        super().__init__(path)
        _log("hotcache: Store.get behind a dict of records on {path}", path=self._path)

    def get(self, key: str) -> replicad.store.Record | None:
        record = self._hot.get(key, _ABSENT)
        if record is _ABSENT:
            self.misses += 1
            record = super().get(key)
            if len(self._hot) >= HOT_CACHE_MAX:
                self._hot.clear()
            self._hot[key] = record
        return record

    def _put(self, record: replicad.store.Record) -> None:
        super()._put(record)
        self._hot[record.key] = record

    @contextmanager
    def _transaction(self, joinable: bool = False):
        if not joinable:
            self._hot.clear()
        try:
            with super()._transaction(joinable):
                yield
        except BaseException:
            self._hot.clear()
            raise
        finally:
            if not joinable:
                self._hot.clear()

    def commit_group(self) -> None:
        try:
            super().commit_group()
        except BaseException:
            self._hot.clear()
            raise

    def close(self) -> None:
        _log("hotcache: {misses} misses, {entries} entries at close of {path}",
             misses=self.misses, entries=len(self._hot), path=self._path)
        super().close()


VARIANTS = {cls.variant: cls for cls in (ExclusiveStore, HotCacheStore)}


def install(name: str | None) -> None:
    """Make ``replicad.store.Store`` the named variant (None or "": leave it alone)."""
    if not name:
        return
    if name not in VARIANTS:
        raise SystemExit(f"{ENV}={name!r}: expected one of {', '.join(VARIANTS)} or nothing")
    replicad.store.Store = VARIANTS[name]


if __name__ == "sitecustomize":
    install(os.environ.get(ENV))
