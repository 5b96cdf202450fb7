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
- ``nohot``: the store without its dict of hot records (replicad.store, "Hot records";
  added after this benchmark measured it, as the ``hotcache`` variant here, at 8eed8f3):
  every ``get`` runs its SELECT, as before.  What the dict buys is the baseline beside
  this variant.

Unset or empty: nothing is patched (the baseline); another value stops the process.
``replicad.store.Store`` is replaced by a subclass before anything imports it by name;
the subclass logs one line when it opens a database, which is how bench/read_path.py
checks that the variant took effect.
Imported under another name (bench/read_path.py does, for its in-process part) it
patches nothing.
"""

from __future__ import annotations

import os

import replicad.store

ENV = "REPLICAD_BENCH_VARIANT"


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


class NoHotStore(replicad.store.Store):
    """The store with every ``get`` a SELECT: no dict of hot records."""

    variant = "nohot"

    def __init__(self, path: str):
        super().__init__(path)
        _log("nohot: Store.get reads SQLite every time on {path}", path=self._path)

    def get(self, key: str) -> replicad.store.Record | None:
        row = self._db.execute(f"SELECT {replicad.store._COLUMNS} FROM kv WHERE key = ?",
                               (key,)).fetchone()
        return None if row is None else replicad.store._record(row)

    def _keep(self, key: str, record: replicad.store.Record | None) -> None:
        pass


VARIANTS = {cls.variant: cls for cls in (ExclusiveStore, NoHotStore)}


def install(name: str | None) -> None:
    """Make ``replicad.store.Store`` the named variant (None or "": leave it alone)."""
    if not name:
        return
    if name not in VARIANTS:
        raise SystemExit(f"{ENV}={name!r}: expected one of {', '.join(VARIANTS)} or nothing")
    replicad.store.Store = VARIANTS[name]


if __name__ == "sitecustomize":
    install(os.environ.get(ENV))
