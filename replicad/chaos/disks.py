"""Small disks for the ``full`` fault: each replica's data directory on a tmpfs of its
own, which the fault shrinks to what it holds plus a few pages (the replica's next
writes that need a new page find none: SQLITE_FULL) and grows back at the heal.

A tmpfs rather than a file filling a shared disk: the fault hits one replica, never the
machine's own disk, and a remount is atomic.  It needs root and mount(8); ``check``
says so in one line before a run starts.  The data lives in memory, so ``unmount``
copies it back into the plain directory first: a run's evidence (the databases its
final state was read from) is kept as with the other faults.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from replicad.cluster import ClusterError

SIZE = "256m"                 # a replica's disk while not full: far more than a run writes
SLACK_BYTES = 8 * 4096        # left free by fill(): a few pages, used up within the hold
FILL_ATTEMPTS = 5             # the replica writes on: its usage may pass the size read


class DiskError(ClusterError):
    """A small disk could not be made, filled, freed or removed; one line."""


def check() -> None:
    """Raise DiskError unless this process can mount a tmpfs."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise DiskError("the full fault needs root and mount(8): each replica's data "
                        "directory goes on a tmpfs of its own")


def mount(path: str) -> None:
    """Put ``path`` (created if missing, expected empty) on a tmpfs of SIZE."""
    os.makedirs(path, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", path)


def used_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def fill(path: str) -> int:
    """Shrink the tmpfs at ``path`` to what it holds plus SLACK_BYTES; the new size.
    tmpfs refuses a size below its usage, which the running replica may raise between
    the reading and the remount: read again and retry."""
    error = None
    for _ in range(FILL_ATTEMPTS):
        size = used_bytes(path) + SLACK_BYTES
        try:
            _run("mount", "-o", f"remount,size={size}", path)
            return size
        except DiskError as e:
            error = e
    raise DiskError(f"cannot fill {path}: {error}")


def free(path: str) -> None:
    """Grow the tmpfs at ``path`` back to SIZE."""
    _run("mount", "-o", f"remount,size={SIZE}", path)


def unmount(path: str) -> None:
    """Unmount the tmpfs at ``path``, its files copied back into the directory."""
    if not os.path.ismount(path):
        return
    kept = tempfile.mkdtemp(prefix=".kept-", dir=os.path.dirname(path))
    try:
        shutil.copytree(path, kept, dirs_exist_ok=True)
        _run("umount", "-l", path)
        for name in os.listdir(kept):
            shutil.move(os.path.join(kept, name), os.path.join(path, name))
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def release_under(directory: str) -> None:
    """Unmount, without keeping them, the tmpfs mounts under ``directory`` that an
    earlier run left behind (it died before its own unmount): the new run deletes the
    directory, which a mount point in it would refuse."""
    root = os.path.abspath(directory) + os.sep
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[0] == "tmpfs"]
    except OSError:
        return
    for point in sorted(points, reverse=True):
        point = point.replace("\\040", " ")
        if point.startswith(root):
            _run("umount", "-l", point)


def _run(*command: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        raise DiskError(f"{command[0]}: {e}") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise DiskError(f"{' '.join(command)}: {message}")
