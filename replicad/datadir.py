"""The data directory: its database file, its lock, and the start-up checks.

One process per data dir: ``lock_data_dir`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``<dir>/LOCK``.  Two replicas on one database would each issue write ids from the same
clock, and a write id must never be issued twice.

Why flock: the lock belongs to the open file description, so the kernel drops it when
the last descriptor closes, however the process ends (SIGKILL included: no stale lock to
clean up), and a fork inherits it.  twistd parses options (where the lock is taken) and
then daemonizes (fork, setsid, fork): the daemon keeps the lock because the descriptor
stays open in every process and the parents exit.  The descriptor is close-on-exec, so
a program the replica might exec does not hold it.

The LOCK file holds the holder's pid for the error message only; the lock itself is the
flock, never the file's existence or contents.
"""

from __future__ import annotations

import errno
import fcntl
import os

from replicad.config import ConfigError
from replicad.store import Store, StoreError

DB_FILENAME = "replica.sqlite"
LOCK_FILENAME = "LOCK"


class DataDirLock:
    """An exclusive flock on ``<path>/LOCK``, held until close() or process exit."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd: int | None = fd

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def write_pid(self) -> None:
        """Record this process's pid in the lock file.

        lock_data_dir writes it once; call this again after a fork (twistd daemonizing)
        so the message a second locker prints names the process that holds the lock.
        """
        if self._fd is None:
            return
        data = f"{os.getpid()}\n".encode("ascii")
        os.pwrite(self._fd, data, 0)     # then truncate: a reader never sees it empty
        os.ftruncate(self._fd, len(data))

    def close(self) -> None:
        """Release the lock (idempotent).  Exiting the process releases it too."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)     # the last descriptor of the description: the flock goes

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "locked" if self.locked else "released"
        return f"<DataDirLock {self.path} {state}>"


def make_data_dir(path: str) -> None:
    """Create the data dir if needed (0700: it holds the data) and check it is
    writable; ConfigError otherwise."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create data dir {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data dir {path} is not writable")


def lock_data_dir(path: str) -> DataDirLock:
    """Create the data dir if needed and lock it for this process.

    ConfigError (one sentence) if another process holds the lock, naming its pid.
    Keep the returned object for as long as the process serves this data dir.
    """
    make_data_dir(path)
    lock_path = os.path.join(path, LOCK_FILENAME)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ConfigError(f"cannot lock data dir {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _read_pid(fd)
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"cannot lock data dir {path}: {e.strerror or e}") from None
        who = f" (pid {holder})" if holder is not None else ""
        raise ConfigError(
            f"data dir {path} is in use by another replicad process{who}"
        ) from None
    lock = DataDirLock(path, fd)
    try:
        lock.write_pid()
    except OSError:
        pass     # the pid is for the message only: a full disk must not stop the replica
    return lock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def check_data_dir(path: str, replica_id: int) -> None:
    """Create the data dir, make sure its database opens and belongs to replica_id.

    The first start of a replica claims its database; a later start with another --id
    (the wrong --data-dir) fails here with one line.  ConfigError for every problem.
    """
    make_data_dir(path)
    try:
        with Store(os.path.join(path, DB_FILENAME)) as store:
            store.claim(replica_id)
    except StoreError as e:
        raise ConfigError(str(e)) from None
