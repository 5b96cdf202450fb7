"""Stepped wall clocks for the ``clock`` fault: every replica runs under libfaketime
(LD_PRELOAD) with a file of its own that says how far its wall clock is from the real
one; the fault writes ``+3600`` or ``-3600`` there, the heal ``+0``.  The monotonic
clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC), as a real step leaves it.

Needs Debian's libfaketime; ``library`` says so in one line before a run starts.  Every
read of the wall clock then reads the file (FAKETIME_NO_CACHE: a step is seen at once),
which costs a replica a little on each log line, nothing on a request.
"""

from __future__ import annotations

import glob

from replicad.chaos.preload import preloaded, write_setting
from replicad.cluster import ClusterError

LIBRARY_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"


class ClockError(ClusterError):
    """libfaketime is missing, or a step could not be written; one line."""


def library() -> str:
    """The path of libfaketime, or ClockError."""
    found = sorted(glob.glob(LIBRARY_GLOB))
    if not found:
        raise ClockError("the clock fault needs libfaketime (Debian's libfaketime package: "
                         f"{LIBRARY_GLOB})")
    return found[0]


def environment(lib: str, offset_file: str, env: dict[str, str] | None = None
                ) -> dict[str, str]:
    """``env`` (a replica's extra environment) with libfaketime preloaded too, the wall
    clock ``offset_file``'s seconds off."""
    return preloaded(env or {}, lib, {"FAKETIME_TIMESTAMP_FILE": offset_file,
                                      "FAKETIME_NO_CACHE": "1",
                                      "FAKETIME_DONT_FAKE_MONOTONIC": "1"})


def step(offset_file: str, seconds: int) -> None:
    """From now on the replica's wall clock is ``seconds`` off the real one."""
    try:
        write_setting(offset_file, f"{seconds:+d}")
    except OSError as e:
        raise ClockError(f"cannot step the clock in {offset_file}: {e}") from None
