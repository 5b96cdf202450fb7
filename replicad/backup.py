"""``replicad-backup``: an online copy of one replica's database, and putting one back.

::

    replicad-backup --data-dir DIR OUT.sqlite                  copy a running replica
    replicad-backup --restore BACKUP.sqlite --data-dir DIR     put a copy back (stopped)

**Backup** uses SQLite's online backup API (``sqlite3.Connection.backup``) in one step:
it reads one snapshot of the database inside one read transaction, so the copy is
consistent (every write in it committed, nothing half-applied) while the replica goes on
writing; it never takes the data dir's lock and never blocks the replica (WAL: readers
do not block the writer).  The copy is made next to OUT with mode 0600 (it holds every
key and value), switched to a single self-contained file (``journal_mode=DELETE``),
checked (``PRAGMA quick_check``, a replicad database with a replica id), fsynced and
renamed to OUT: OUT is either the whole backup or absent.

**Restore** puts a backup back into the data dir of the *same* replica while that
replica is stopped: it takes the data dir's lock (so it refuses while the replica runs),
checks that the backup is a replicad database of that replica (the database it replaces,
or ``--id``) and of the same cluster, removes the old ``-wal``/``-shm`` and staging
files (a write-ahead log left from the old database must never be applied to the new
one), gives the copy a new origin for the replica's writes, and renames it into
place.  The new origin because the backup lacks the writes the replica issued after it,
and a peer that holds some of them may be out of reach when the replica starts again:
numbered on from the backup's clock, its next writes would take their ids
(identity.py).  Run as root, the restored file is given the owner of the data dir (the
service user).  Started again, the replica holds the cluster id of the backup and
catches up with its peers by delta (docs/deploy.md).

Errors are one line on stderr starting ``replicad-backup: error:`` and exit status 1;
a malformed command line exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicad.config import ConfigError
from replicad.datadir import DB_FILENAME, lock_data_dir
from replicad.identity import new_origin
from replicad.store import FILE_MODE, Store, StoreError
from replicad.usage import UsageError

PROG = "replicad-backup"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class BackupError(Exception):
    """The backup or restore cannot be done; the message is one line."""


@dataclass(frozen=True)
class Summary:
    """What a replicad database holds, for the messages."""

    replica_id: int | None
    cluster_id: str | None
    keys: int
    clock: str
    epoch: int
    origin: int | None = None      # a restored copy's new origin (restore)

    def describe(self) -> str:
        who = f"replica {self.replica_id}" if self.replica_id else "an unclaimed replica"
        cluster = f"cluster {self.cluster_id}" if self.cluster_id else "no cluster yet"
        return f"{who} of {cluster}: {self.keys} keys, clock {self.clock or '-'}, " \
               f"epoch {self.epoch}"


def read_summary(db: sqlite3.Connection, name: str) -> Summary:
    """The identity and size of a replicad database; BackupError if it is not one."""
    try:
        tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "kv", "clock"} <= tables:
            raise BackupError(f"{name} is an SQLite file but not a replicad database")
        meta = dict(db.execute("SELECT name, value FROM meta"))
        keys = db.execute("SELECT count(*) FROM kv WHERE value IS NOT NULL").fetchone()[0]
        clock = ",".join(f"{r}:{c}" for r, c in
                         db.execute("SELECT replica, count FROM clock ORDER BY replica"))
    except sqlite3.Error as e:
        raise BackupError(f"cannot read {name}: {e}") from None
    replica = meta.get("replica_id")
    return Summary(
        replica_id=int(replica) if replica and replica.isdigit() else None,
        cluster_id=meta.get("cluster_id"),
        keys=keys,
        clock=clock,
        epoch=int(meta.get("epoch", "0") or 0),
    )


def _copy_file(source_path: str, tmp: str):
    """Copy the database at source_path into tmp (one consistent snapshot); errors as
    BackupError, one line each."""
    source = _readonly(source_path)
    try:
        return _copy(source, tmp, source_path)
    except sqlite3.Error as e:
        raise BackupError(f"cannot copy {source_path}: {e}") from None
    except OSError as e:
        raise BackupError(f"cannot write {tmp}: {e.strerror or e}") from None
    finally:
        source.close()


def _renumber(path: str) -> int:
    """Give the copy at ``path`` a new origin (the module docstring says why) and
    return it."""
    try:
        with Store(path) as store:
            origin = new_origin({*store.clock, store.replica_id, store.origin})
            store.renumber(origin)
    except (StoreError, sqlite3.Error) as e:
        raise BackupError(f"cannot write {path}: {e}") from None
    return origin


def _readonly(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise BackupError(f"{path} does not exist")
    try:
        return sqlite3.connect(Path(os.path.abspath(path)).as_uri() + "?mode=ro", uri=True,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise BackupError(f"cannot open {path}: {e}") from None


def _private_new_file(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: sqlite3.Connection, target_path: str, source_name: str) -> Summary:
    """source's database, one snapshot, into a new private file target_path (one file,
    rollback journal); checked and fsynced.  The caller renames it into place."""
    _private_new_file(target_path)
    try:
        target = sqlite3.connect(target_path, isolation_level=None)
        try:
            # pages=-1: every page in one step, inside one read transaction on the
            # source: a consistent snapshot, however busy the writer is.
            source.backup(target, pages=-1)
            target.execute("PRAGMA journal_mode=DELETE")   # one self-contained file
            problems = [row[0] for row in target.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise BackupError(f"the copy of {source_name} fails SQLite's check: "
                                  f"{'; '.join(problems)[:200]}")
            summary = read_summary(target, source_name)
        finally:
            target.close()
        if summary.replica_id is None:
            raise BackupError(f"{source_name} belongs to no replica yet (never started)")
        _fsync_path(target_path)
        return summary
    except BaseException:
        _remove(target_path)
        raise


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def backup(data_dir: str, out: str) -> Summary:
    """Copy the database of the replica in data_dir to out (running or not)."""
    source_path = os.path.join(data_dir, DB_FILENAME)
    out = os.path.abspath(out)
    if os.path.isdir(out):
        raise BackupError(f"{out} is a directory: name the backup file")
    if os.path.exists(out):
        raise BackupError(f"{out} exists already: a backup never overwrites a file")
    if not os.path.isdir(os.path.dirname(out)):
        raise BackupError(f"directory {os.path.dirname(out)} does not exist")
    tmp = f"{out}.tmp-{os.getpid()}"
    summary = _copy_file(source_path, tmp)
    try:
        os.link(tmp, out)       # never replaces a file that appeared meanwhile
    except FileExistsError:
        _remove(tmp)
        raise BackupError(f"{out} appeared while the backup ran; the copy was dropped") from None
    except OSError:
        os.replace(tmp, out)    # no hard links here (some file systems)
    else:
        os.remove(tmp)
    _fsync_path(os.path.dirname(out))
    return summary


def restore(backup_path: str, data_dir: str, replica_id: int | None = None) -> Summary:
    """Put backup_path in place of the database in data_dir (the replica stopped)."""
    source = _readonly(backup_path)
    try:
        wanted = read_summary(source, backup_path)
    finally:
        source.close()
    if wanted.replica_id is None:
        raise BackupError(f"{backup_path} belongs to no replica (not a replicad backup?)")
    try:
        lock = lock_data_dir(data_dir)   # refuses while the replica runs
    except ConfigError as e:
        raise BackupError(f"{e}: stop the replica before restoring") from None
    try:
        db_path = os.path.join(data_dir, DB_FILENAME)
        current = _current(db_path)
        expected = replica_id if replica_id is not None else (
            current.replica_id if current is not None else None)
        if expected is None:
            raise BackupError(
                f"{data_dir} holds no database to say which replica it belongs to: "
                f"give --id (the backup is of replica {wanted.replica_id})")
        if current is not None and current.replica_id not in (None, expected):
            raise BackupError(f"{db_path} belongs to replica {current.replica_id}, "
                              f"not replica {expected}: wrong --data-dir?")
        if wanted.replica_id != expected:
            raise BackupError(
                f"{backup_path} is a backup of replica {wanted.replica_id}, not of replica "
                f"{expected}: a replica's database records its id, and another replica's "
                f"would reissue its write ids (start an empty data dir instead: it copies "
                f"the cluster)")
        if (current is not None and current.cluster_id and wanted.cluster_id
                and current.cluster_id != wanted.cluster_id):
            raise BackupError(
                f"{db_path} belongs to cluster {current.cluster_id}, the backup to cluster "
                f"{wanted.cluster_id}: its peers would refuse it; remove {db_path} first "
                f"if you really mean to go back to the old cluster")
        tmp = os.path.join(data_dir, f"{DB_FILENAME}.restore-{os.getpid()}")
        _remove(tmp)
        summary = _copy_file(backup_path, tmp)
        origin = _renumber(tmp)
        _give_to_owner_of(data_dir, tmp)
        # The old database's log and index must go before the new file takes its name:
        # SQLite would apply a leftover -wal to the new database.
        for name in (db_path + "-wal", db_path + "-shm",
                     *glob.glob(glob.escape(db_path) + ".import-*")):
            _remove(name)
        os.replace(tmp, db_path)
        _fsync_path(data_dir)
        return dataclasses.replace(summary, origin=origin)
    finally:
        lock.close()


def _current(db_path: str) -> Summary | None:
    """What the database being replaced holds, or None if there is none (or it is
    unreadable: it is being replaced anyway, and the backup is checked on its own)."""
    if not os.path.exists(db_path) or os.path.getsize(db_path) == 0:
        return None
    try:
        db = sqlite3.connect(db_path, isolation_level=None)   # may replay its -wal
    except sqlite3.Error:
        return None
    try:
        return read_summary(db, db_path)
    except BackupError:
        return None
    finally:
        db.close()


def _give_to_owner_of(data_dir: str, path: str) -> None:
    """Run as root, hand path (and the LOCK file) to the data dir's owner: the service
    user must be able to open them."""
    if os.geteuid() != 0:
        return
    info = os.stat(data_dir)
    for name in (path, os.path.join(data_dir, "LOCK")):
        try:
            os.chown(name, info.st_uid, info.st_gid)
        except OSError:
            pass


# Command line ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Copy a replica's database while it runs (SQLite online backup), or "
                    "put such a copy back into the stopped replica's data dir.",
        epilog="Backup: replicad-backup --data-dir /var/lib/replicad/3 /backup/r3.sqlite. "
               "Restore (replica stopped): replicad-backup --restore /backup/r3.sqlite "
               "--data-dir /var/lib/replicad/3. See docs/deploy.md.",
    )
    parser.add_argument("--data-dir", required=True,
                        help="the replica's data dir (where replica.sqlite is)")
    parser.add_argument("--restore", metavar="BACKUP",
                        help="restore this backup into --data-dir (the replica stopped)")
    parser.add_argument("--id", type=int, default=None,
                        help="with --restore: the replica the data dir belongs to (needed "
                             "when the data dir holds no database)")
    parser.add_argument("out", nargs="?", metavar="OUT.sqlite",
                        help="the backup file to write (never overwritten)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.restore is None and args.out is None:
            raise UsageError(f"name the backup file to write, or --restore BACKUP "
                             f"(see {PROG} --help)")
        if args.restore is not None and args.out is not None:
            raise UsageError("--restore takes no OUT file")
        if args.id is not None and args.restore is None:
            raise UsageError("--id goes with --restore")
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    started = time.monotonic()
    try:
        if args.restore is None:
            summary = backup(args.data_dir, args.out)
            size = os.path.getsize(args.out)
            print(f"backed up {summary.describe()} to {args.out} ({size} bytes, "
                  f"{(time.monotonic() - started) * 1000:.0f} ms)")
        else:
            summary = restore(args.restore, args.data_dir, args.id)
            print(f"restored {summary.describe()} into {args.data_dir}; its writes are "
                  f"numbered under origin {summary.origin} from now on; start the replica: "
                  f"it catches up with its peers")
    except BackupError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
