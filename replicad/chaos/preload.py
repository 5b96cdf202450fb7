"""What the ``clock`` and ``fsync`` faults share: a library preloaded into every replica
(LD_PRELOAD, more than one joined by spaces) that reads a small setting file of the
replica's own, which the fault rewrites while the replica runs."""

from __future__ import annotations

import os


def preloaded(env: dict[str, str], lib: str, settings: dict[str, str]) -> dict[str, str]:
    """``env`` (a replica's extra environment) with ``lib`` preloaded too, after any
    library it preloads already, and the library's ``settings``."""
    return {**env, **settings, "LD_PRELOAD": " ".join(filter(None, [env.get("LD_PRELOAD"),
                                                                     lib]))}


def write_setting(path: str, text: str) -> None:
    """Replace the setting file at ``path`` atomically: the replica reads either the old
    setting or the new, never half of one (OSError if it cannot be written)."""
    with open(path + ".new", "w", encoding="ascii") as handle:
        handle.write(text + "\n")
    os.replace(path + ".new", path)
