"""The ``fsync`` fault's library: built with the machine's compiler and preloaded into a
real child process, whose SQLite COMMIT then waits as long as its delay file says
(skipped without a compiler)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from replicad.chaos import fsyncs

COMMIT_TIME = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS t (x)")
started = time.monotonic()
db.execute("BEGIN"); db.execute("INSERT INTO t VALUES (1)"); db.execute("COMMIT")
print(time.monotonic() - started)
"""


def commit_seconds(env: dict[str, str], db: str) -> float:
    done = subprocess.run([sys.executable, "-c", COMMIT_TIME, db], env={**os.environ, **env},
                          capture_output=True, text=True, check=True, timeout=60)
    return float(done.stdout)


def built_library(tmp_path) -> str:
    """The library built into ``tmp_path``, or the test skipped (no compiler)."""
    try:
        return fsyncs.library(str(tmp_path / "lib"))
    except fsyncs.FsyncError as e:
        pytest.skip(str(e))


def test_a_delay_holds_each_commit_at_least_that_long(tmp_path):
    lib = built_library(tmp_path)
    delay = str(tmp_path / "fsync-delay-1")
    env = fsyncs.environment(lib, delay, {"LD_PRELOAD": "/lib/other.so"})
    assert env["LD_PRELOAD"] == f"/lib/other.so {lib}"     # both preloaded
    env = fsyncs.environment(lib, delay)
    fsyncs.set_delay(delay, 300)
    assert commit_seconds(env, str(tmp_path / "a.db")) >= 0.3   # its fsync waited
    fsyncs.set_delay(delay, 0)
    assert open(delay).read() == "0\n" and not os.path.exists(delay + ".new")


# What the child scripts below start with: a WAL database with one durable row, then
# the setting written (sys.argv[3], as fsyncs.set_failing or set_failing_reads does).
PROLOGUE = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (x)")
db.execute("BEGIN"); db.execute("INSERT INTO t VALUES ('durable')"); db.execute("COMMIT")
with open(sys.argv[2], "w") as setting:
    setting.write(sys.argv[3])
"""


def after_setting(tmp_path, setting_text: str, script: str) -> tuple[str, str]:
    """Run PROLOGUE + script in a child with the library preloaded; its output and the
    database's path."""
    lib = built_library(tmp_path)
    setting = str(tmp_path / "disk-1")
    fsyncs.set_delay(setting, 0)
    db = str(tmp_path / "a.db")
    done = subprocess.run([sys.executable, "-c", PROLOGUE + script, db, setting, setting_text],
                          env={**os.environ, **fsyncs.environment(lib, setting)},
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout, db


def rows(db: str) -> list[tuple]:
    reopened = sqlite3.connect(db)
    try:
        return reopened.execute("SELECT x FROM t").fetchall()
    finally:
        reopened.close()


# A COMMIT whose fsync fails, then a crash (os._exit: no close, no later COMMIT).
COMMIT_FAILS_THEN_CRASH = """
db.execute("BEGIN"); db.execute("INSERT INTO t VALUES ('failed')")
try:
    db.execute("COMMIT")
except sqlite3.Error as e:
    print(e.sqlite_errorname, db.execute("SELECT x FROM t").fetchall())
os._exit(0)
"""


def test_a_commit_whose_fsync_fails_comes_back_after_a_crash(tmp_path):
    """Why a replica answers such a write in doubt and stops (store.outcome_unknown):
    SQLite reports the COMMIT failed and its connection no longer sees the row, but
    the WAL holds it, and the next open recovers it."""
    out, db = after_setting(tmp_path, "EIO", COMMIT_FAILS_THEN_CRASH)
    assert out.split(" ", 1) == ["SQLITE_IOERR_FSYNC", "[('durable',)]\n"]
    assert rows(db) == [("durable",), ("failed",)]


# A read whose pages are not in the connection's cache (a new connection), then a
# COMMIT (its fsync is not failed).
READ_FAILS = """
try:
    cold = sqlite3.connect(sys.argv[1], isolation_level=None)
    cold.execute("SELECT x FROM t").fetchall()
except sqlite3.Error as e:
    print(e.sqlite_errorname)
db.execute("BEGIN"); db.execute("INSERT INTO t VALUES ('synced')"); db.execute("COMMIT")
"""


def test_failing_reads_fail_a_page_sqlite_must_read_and_leave_syncs_alone(tmp_path):
    """SQLite reports a read's EIO as SQLITE_IOERR_CORRUPTFS, which its API turns into
    SQLITE_CORRUPT on some paths (a replica's GET: "database disk image is
    malformed"): store.disk_broken counts both."""
    out, db = after_setting(tmp_path, "EIOREAD", READ_FAILS)
    assert out in ("SQLITE_IOERR_CORRUPTFS\n", "SQLITE_CORRUPT\n")
    assert rows(db) == [("durable",), ("synced",)]


def test_without_a_compiler_the_fault_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(fsyncs.FsyncError, match="needs a C compiler") as info:
        fsyncs.compiler()
    assert "\n" not in str(info.value)


def test_a_library_that_does_not_build_is_one_line(tmp_path, monkeypatch):
    try:
        fsyncs.compiler()
    except fsyncs.FsyncError as e:
        pytest.skip(str(e))
    monkeypatch.setattr(fsyncs, "SOURCE", str(tmp_path / "missing.c"))
    with pytest.raises(fsyncs.FsyncError, match="cannot build") as info:
        fsyncs.library(str(tmp_path / "lib"))
    assert "\n" not in str(info.value)
