"""Slow disks for the ``fsync`` fault: every replica runs with a small preloaded library
(``slowfsync.c``, compiled here with the machine's C compiler) that makes each fsync and
fdatasync of the process first sleep as long as a file of the replica's own says; the
fault writes a delay there (0.5-3 s), the heal 0.  SQLite's COMMIT then blocks the
replica's reactor that long, as a stalled disk (a cloud volume's hiccup, a busy RAID)
does: the replica answers nothing, not even a ping, and its writes are durable only
after it.

Needs a C compiler (cc); ``library`` says so in one line before a run starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from replicad.chaos.preload import preloaded, write_setting
from replicad.cluster import ClusterError

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slowfsync.c")


class FsyncError(ClusterError):
    """The library cannot be built, or a delay cannot be written; one line."""


def compiler() -> str:
    """The C compiler's path, or FsyncError."""
    found = shutil.which("cc") or shutil.which("gcc")
    if found is None:
        raise FsyncError("the fsync fault needs a C compiler (cc) to build its preload "
                         "library")
    return found


def library(directory: str) -> str:
    """Compile the library into ``directory``; its path, or FsyncError."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "libslowfsync.so")
    done = subprocess.run([compiler(), "-shared", "-fPIC", "-O2", "-o", path, SOURCE, "-ldl"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = " ".join(done.stderr.split())[:300] or f"exit status {done.returncode}"
        raise FsyncError(f"cannot build {path}: {message}")
    return path


def environment(lib: str, delay_file: str, env: dict[str, str] | None = None
                ) -> dict[str, str]:
    """``env`` (a replica's extra environment) with the library preloaded too."""
    return preloaded(env or {}, lib, {"SLOWFSYNC_DELAY_FILE": delay_file})


def set_failing(delay_file: str) -> None:
    """From now on every fsync of the replica fails with EIO (and syncs nothing), as a
    failing disk's does: tests/integration/test_disk_failure.py."""
    _write(delay_file, "EIO", "failing fsyncs")


def set_failing_reads(delay_file: str) -> None:
    """From now on every pread of the replica fails with EIO (its syncs run as usual):
    a page SQLite does not have in its cache is a bad sector.
    tests/integration/test_disk_read_failure.py."""
    _write(delay_file, "EIOREAD", "failing reads")


def set_delay(delay_file: str, ms: int) -> None:
    """From now on every fsync of the replica first sleeps ``ms``."""
    _write(delay_file, str(int(ms)), "the fsync delay")


def _write(delay_file: str, setting: str, what: str) -> None:
    try:
        write_setting(delay_file, setting)
    except OSError as e:
        raise FsyncError(f"cannot set {what} in {delay_file}: {e}") from None
