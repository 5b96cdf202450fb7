"""replicad.datadir: the data dir lock and the start-up check of the database's owner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from replicad.config import ConfigError
from replicad.datadir import (
    DB_FILENAME,
    LOCK_FILENAME,
    DataDirLock,
    check_data_dir,
    lock_data_dir,
)
from replicad.store import Store

ROOT = Path(__file__).resolve().parent.parent


def in_use(path, pid: int) -> str:
    return f"data dir {path} is in use by another replicad process (pid {pid})"


def test_lock_creates_the_dir_and_writes_the_pid(tmp_path):
    path = str(tmp_path / "a" / "b")
    with lock_data_dir(path) as lock:
        assert isinstance(lock, DataDirLock) and lock.locked
        assert (Path(path) / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"
    assert not lock.locked


def test_second_lock_fails_with_one_sentence_naming_the_holder(tmp_path):
    path = str(tmp_path)
    first = lock_data_dir(path)
    # A separate open file description: flock conflicts even within one process.
    with pytest.raises(ConfigError) as info:
        lock_data_dir(path)
    assert str(info.value) == in_use(path, os.getpid())
    assert "\n" not in str(info.value)
    assert first.locked                     # the failed attempt did not disturb it
    first.close()


def test_close_releases_the_lock_and_is_idempotent(tmp_path):
    path = str(tmp_path)
    first = lock_data_dir(path)
    first.close()
    first.close()
    second = lock_data_dir(path)            # free again
    assert second.locked
    second.close()


def test_the_lock_file_is_not_the_lock(tmp_path):
    # A LOCK file left behind (by a crash, say) with a stale pid does not block anyone.
    (tmp_path / LOCK_FILENAME).write_text("999999999\n")
    lock = lock_data_dir(str(tmp_path))
    assert (tmp_path / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"
    lock.close()


def test_write_pid_rewrites_the_pid_in_place(tmp_path):
    lock = lock_data_dir(str(tmp_path))
    (tmp_path / LOCK_FILENAME).write_text("12345678901234567890\n")    # longer than a pid
    lock.write_pid()
    assert (tmp_path / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"
    lock.close()
    lock.write_pid()                        # harmless once released


def test_unknown_pid_is_left_out_of_the_message(tmp_path):
    lock = lock_data_dir(str(tmp_path))
    (tmp_path / LOCK_FILENAME).write_text("")
    with pytest.raises(ConfigError) as info:
        lock_data_dir(str(tmp_path))
    assert str(info.value) == f"data dir {tmp_path} is in use by another replicad process"
    lock.close()


def test_lock_under_a_regular_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create data dir"):
        lock_data_dir(str(blocker / "d"))


HOLDER = textwrap.dedent(
    """
    import sys, time
    from replicad.datadir import lock_data_dir
    lock = lock_data_dir(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()          # hold the lock until the test closes stdin
    """
)


def start_holder(path: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_process_holding_the_lock_is_named_by_pid(tmp_path):
    path = str(tmp_path)
    holder = start_holder(path)
    try:
        with pytest.raises(ConfigError) as info:
            lock_data_dir(path)
        assert str(info.value) == in_use(path, holder.pid)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    lock_data_dir(path).close()             # the holder exited: the kernel released it


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = str(tmp_path)
    holder = start_holder(path)
    holder.kill()
    holder.wait(timeout=10)
    holder.stdin.close()
    holder.stdout.close()
    lock = lock_data_dir(path)
    assert lock.locked
    lock.close()


def test_a_forked_child_keeps_the_lock_after_the_parent_closes_it(tmp_path):
    # What twistd's daemonizing does: fork, then the parent goes away.  The flock belongs
    # to the open file description, which the child's inherited descriptor keeps alive.
    path = str(tmp_path)
    lock = lock_data_dir(path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                            # the child: hold the inherited lock a while
        try:
            os.close(write_end)
            os.read(read_end, 1)            # until the parent says "done"
        finally:
            os._exit(0)
    os.close(read_end)
    try:
        lock.close()                        # the parent's copy is gone ...
        with pytest.raises(ConfigError, match="in use by another replicad process"):
            lock_data_dir(path)             # ... and the lock is still held
    finally:
        os.write(write_end, b"x")
        os.close(write_end)
        os.waitpid(pid, 0)
    lock_data_dir(path).close()             # the last copy closed: free


# check_data_dir -------------------------------------------------------------------------


def test_check_data_dir_claims_the_database(tmp_path):
    path = str(tmp_path / "d")
    check_data_dir(path, 2)
    with Store(os.path.join(path, DB_FILENAME)) as store:
        assert store.replica_id == 2
    check_data_dir(path, 2)                 # the same replica again: fine


def test_check_data_dir_refuses_another_replicas_database(tmp_path):
    path = str(tmp_path / "d")
    check_data_dir(path, 2)
    with pytest.raises(ConfigError) as info:
        check_data_dir(path, 3)
    db = os.path.join(os.path.abspath(path), DB_FILENAME)
    assert str(info.value) == f"{db} belongs to replica 2, not replica 3: wrong --data-dir?"


def test_check_data_dir_reports_a_damaged_database(tmp_path):
    (tmp_path / DB_FILENAME).write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(ConfigError, match=DB_FILENAME):
        check_data_dir(str(tmp_path), 1)


def test_replica_module_still_exports_the_moved_names():
    from replicad import datadir, replica

    assert replica.DB_FILENAME is datadir.DB_FILENAME
    assert replica.check_data_dir is datadir.check_data_dir


def test_a_new_data_dir_is_private(tmp_path):
    import stat

    from replicad.datadir import make_data_dir

    old = os.umask(0o022)
    try:
        make_data_dir(str(tmp_path / "new"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
