"""Backup and restore (issue #11 item 5, docs/deploy.md), with real replicas.

- ``replicad-backup`` copies the database of the live coordinator while a client keeps
  writing; the replica is then SIGKILLed, its data dir wiped and the backup restored:
  it rejoins, becomes coordinator again and holds every acknowledged write, including
  those made after the backup and while it was down.
- The other way back from a lost disk: start the replica with an empty data dir, and it
  copies the cluster while writes go on.
- The guards of ``--restore`` (another replica's backup, another cluster, a running
  replica) and the files it leaves, without processes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from replicad import backup as backup_tool
from replicad.client import BlockingClient, ClientError
from replicad.datadir import DB_FILENAME, check_data_dir, lock_data_dir
from replicad.identity import FIRST_NEW_ORIGIN
from replicad.store import Store

CLUSTER_A = "a" * 32
CLUSTER_B = "b" * 32
MAX_WRITES = 50_000     # the writer stops by itself after this many, whatever happens


class Writer(threading.Thread):
    """Writes unique keys through its own client until stopped; remembers every write
    that was acknowledged (put returned) and its value."""

    def __init__(self, servers: list[str], prefix: str = "k"):
        super().__init__(daemon=True)
        self.servers, self.prefix = servers, prefix
        self.acked: dict[str, str] = {}
        self.failed = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self) -> None:
        client = BlockingClient(self.servers, timeout_s=10)
        for n in range(MAX_WRITES):
            if self._stopping.is_set():
                return
            key, value = f"{self.prefix}{n:06d}", f"value-{n}"
            try:
                client.put(key, value)
            except ClientError:
                self.failed += 1     # outcome unknown: not counted as acknowledged
                continue
            with self._lock:
                self.acked[key] = value

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.acked)

    def wait_for(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.snapshot()) < count:
            assert self.is_alive(), "the writer stopped"
            assert time.monotonic() < deadline, (
                f"only {len(self.snapshot())} of {count} writes acknowledged "
                f"after {timeout_s} s ({self.failed} failed)")
            time.sleep(0.02)

    def stop(self) -> dict[str, str]:
        self._stopping.set()
        self.join(timeout=30)
        assert not self.is_alive()
        return self.snapshot()


def stored(db_path: str) -> dict[str, str]:
    """Live keys and values in a replica's database (read-only; it may be running)."""
    db = sqlite3.connect(Path(db_path).as_uri() + "?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM kv WHERE value IS NOT NULL"))
    finally:
        db.close()


def missing(acked: dict[str, str], have: dict[str, str]) -> list[str]:
    return sorted(k for k, v in acked.items() if have.get(k) != v)


def wait_holds(cluster, i: int, acked: dict[str, str], timeout_s: float = 30) -> None:
    path = os.path.join(cluster.replica_dir(i), DB_FILENAME)
    deadline = time.monotonic() + timeout_s
    while True:
        lacking = missing(acked, stored(path))
        if not lacking:
            return
        if time.monotonic() > deadline:
            raise AssertionError(cluster.describe(
                f"replica {i} lacks {len(lacking)} acknowledged writes, e.g. {lacking[:5]}"))
        time.sleep(0.1)


def run_backup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicad.backup", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_a_backup_of_the_live_coordinator_restored_in_place_rejoins_with_every_write(
        start_cluster, tmp_path):
    cluster = start_cluster(write_quorum="majority")
    assert cluster.wait_ready() == 3
    out = str(tmp_path / "replica-3.sqlite")
    writer = Writer(cluster.addresses())
    writer.start()
    try:
        writer.wait_for(300)
        before = writer.snapshot()
        result = run_backup("--data-dir", cluster.replica_dir(3), out)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("backed up replica 3 of cluster "), result.stdout
        during = writer.snapshot()
        assert len(during) > len(before), "no write went on while the backup ran"
        assert os.stat(out).st_mode & 0o777 == 0o600
        copy = stored(out)
        assert not missing(before, copy)         # a consistent snapshot, taken after them
        assert os.listdir(tmp_path).count("replica-3.sqlite") == 1
        assert not [n for n in os.listdir(tmp_path) if n.startswith("replica-3.sqlite")
                    and n != "replica-3.sqlite"], "the backup is one file"

        # Restoring into a running replica is refused: the data dir is locked.
        refused = run_backup("--restore", out, "--data-dir", cluster.replica_dir(3))
        assert refused.returncode == 1
        assert "is in use by another replicad process" in refused.stderr
        assert "stop the replica before restoring" in refused.stderr

        writer.wait_for(len(during) + 300)        # more writes than the backup holds
        cluster.kill(3)                           # SIGKILL the coordinator ...
        shutil.rmtree(cluster.replica_dir(3))     # ... and lose its disk
        down = len(writer.snapshot())
        writer.wait_for(down + 200)               # writes go on through replica 2

        restored = run_backup("--restore", out, "--data-dir", cluster.replica_dir(3),
                              "--id", "3")
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout.startswith("restored replica 3 of cluster ")
        assert len(stored(os.path.join(cluster.replica_dir(3), DB_FILENAME))) == len(copy)
        origin = origin_of(os.path.join(cluster.replica_dir(3), DB_FILENAME))
        assert f"its writes are numbered under origin {origin} from now on" in restored.stdout
        last_while_down = writer.snapshot()

        cluster.start_replica(3)
        assert cluster.wait_ready(timeout_s=30, coordinator=3) == 3  # back, coordinator again
        # It took over after pulling what it lacked: a fresh client (no session) asking
        # replica 3 alone sees the writes made while it was down.
        fresh = BlockingClient([cluster.address(3)], timeout_s=10)
        for key in sorted(last_while_down)[-20:]:
            assert fresh.get(key) == last_while_down[key]
        writer.wait_for(len(writer.snapshot()) + 200)    # and it serves writes,
        assert cluster.status(3)["origin"] == origin  # numbered anew (identity.py)
    finally:
        acked = writer.stop()
    assert len(acked) > len(copy)
    for i in cluster.ids:
        wait_holds(cluster, i, acked)
    restored_cluster = cluster_id_of(out)
    assert {s["cluster_id"] for s in cluster.statuses().values()} == {restored_cluster}


def origin_of(path: str) -> int | None:
    db = sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE name = 'origin'").fetchone()
    finally:
        db.close()
    return None if row is None else int(row[0])


def cluster_id_of(path: str) -> str:
    db = sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True)
    try:
        return db.execute("SELECT value FROM meta WHERE name = 'cluster_id'").fetchone()[0]
    finally:
        db.close()


@pytest.mark.slow    # 10 s: the default run stays under 5 minutes (CI runs the slow stage)
def test_a_replica_started_with_an_empty_data_dir_copies_the_cluster(start_cluster):
    cluster = start_cluster(write_quorum="majority")
    writer = Writer(cluster.addresses())
    writer.start()
    try:
        writer.wait_for(300)
        cluster.kill(1)
        shutil.rmtree(cluster.replica_dir(1))     # a new, empty disk
        writer.wait_for(len(writer.snapshot()) + 200)
        cluster.start_replica(1)
        cluster.wait_ready(timeout_s=30)
        writer.wait_for(len(writer.snapshot()) + 200)
    finally:
        acked = writer.stop()
    wait_holds(cluster, 1, acked)
    log = Path(cluster.log_path(1)).read_text()
    assert "replica 1 joins cluster" in log and "copied 2 peer(s)" in log


# The guards of --restore, on databases made here (no processes) ----------------------


def make_replica(path: Path, replica_id: int, cluster_id: str, keys: int) -> str:
    check_data_dir(str(path), replica_id)
    with Store(str(path / DB_FILENAME)) as store:
        store.bind_cluster(cluster_id)
        for n in range(keys):
            store.write(replica_id, f"k{n}", f"v{n}", epoch=1)
    return str(path)


def test_restore_refuses_another_replicas_backup(tmp_path, capsys):
    make_replica(tmp_path / "r3", 3, CLUSTER_A, 5)
    target = make_replica(tmp_path / "r2", 2, CLUSTER_A, 1)
    out = str(tmp_path / "r3.sqlite")
    assert backup_tool.main(["--data-dir", str(tmp_path / "r3"), out]) == 0
    assert backup_tool.main(["--restore", out, "--data-dir", target]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"replicad-backup: error: {out} is a backup of replica 3, "
                          f"not of replica 2")
    assert "\n" not in err
    assert stored(os.path.join(target, DB_FILENAME)) == {"k0": "v0"}   # untouched


def test_restore_refuses_a_backup_of_another_cluster(tmp_path, capsys):
    make_replica(tmp_path / "old", 2, CLUSTER_A, 5)
    target = make_replica(tmp_path / "new", 2, CLUSTER_B, 1)
    out = str(tmp_path / "old.sqlite")
    assert backup_tool.main(["--data-dir", str(tmp_path / "old"), out]) == 0
    assert backup_tool.main(["--restore", out, "--data-dir", target]) == 1
    err = capsys.readouterr().err
    assert f"belongs to cluster {CLUSTER_B}, the backup to cluster {CLUSTER_A}" in err


def test_restore_refuses_while_the_data_dir_is_locked(tmp_path, capsys):
    source = make_replica(tmp_path / "r1", 1, CLUSTER_A, 3)
    out = str(tmp_path / "r1.sqlite")
    assert backup_tool.main(["--data-dir", source, out]) == 0
    with lock_data_dir(source):
        assert backup_tool.main(["--restore", out, "--data-dir", source]) == 1
    assert "is in use by another replicad process" in capsys.readouterr().err


def test_restore_replaces_the_database_and_drops_the_old_log(tmp_path):
    source = make_replica(tmp_path / "r1", 1, CLUSTER_A, 3)
    out = str(tmp_path / "r1.sqlite")
    assert backup_tool.main(["--data-dir", source, out]) == 0
    # Later writes, left in the write-ahead log by a replica that was killed: the
    # restore must not let SQLite apply that log to the restored file.
    db_path = os.path.join(source, DB_FILENAME)
    keeper = sqlite3.connect(db_path)
    keeper.execute("PRAGMA wal_autocheckpoint=0")
    keeper.execute("UPDATE kv SET value = 'later' WHERE key = 'k0'")
    keeper.commit()
    shutil.copy(db_path + "-wal", tmp_path / "wal")
    keeper.close()
    shutil.copy(tmp_path / "wal", db_path + "-wal")
    old_umask = os.umask(0)
    try:
        assert backup_tool.main(["--restore", out, "--data-dir", source]) == 0
    finally:
        os.umask(old_umask)
    assert sorted(os.listdir(source)) == ["LOCK", DB_FILENAME]
    assert os.stat(db_path).st_mode & 0o777 == 0o600
    assert stored(db_path) == {"k0": "v0", "k1": "v1", "k2": "v2"}
    # Its writes take a new origin: the backup's clock lacks the ones made after it.
    assert origin_of(out) is None and origin_of(db_path) >= FIRST_NEW_ORIGIN
    check_data_dir(source, 1)       # the replica would start on it


def test_backup_is_refused_where_there_is_no_replica_and_never_overwrites(tmp_path, capsys):
    assert backup_tool.main(["--data-dir", str(tmp_path / "none"), str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
    source = make_replica(tmp_path / "r1", 1, CLUSTER_A, 1)
    existing = tmp_path / "existing.sqlite"
    existing.write_text("keep me")
    assert backup_tool.main(["--data-dir", source, str(existing)]) == 1
    assert "never overwrites" in capsys.readouterr().err
    assert existing.read_text() == "keep me"
    assert backup_tool.main(["--data-dir", source]) == 2
