"""How many files a replica may have open, raised to what its configuration needs.

A replica holds a descriptor for every client connection (up to ``max_connections``),
every peer connection (``max_peer_connections`` in, one out to each other member) and
its own files: the database, its WAL and shared-memory file, three more for each copy
or delta it serves to a peer, the log, the listening sockets, the admin port's
connections.  A shell's soft limit is often 1,024 (systemd's default for services too,
though deploy/ sets LimitNOFILE=65536): with the default ``max_connections = 1000``
the process ran out (measured with ``ulimit -n 128`` and 200 connections: 112 were
served, 88 reset by Twisted's EMFILE recovery before being read).  So at start the
soft limit is raised to what the configuration needs, as Redis does for ``maxclients``;
if the hard limit is below that, as far as it goes, and a warning says how many clients
fit.  ``plan`` is the pure decision, ``raise_limit`` applies it.
"""

from __future__ import annotations

import resource

from replicad.config import ClusterConfig

# Descriptors a replica keeps besides its connections (the paragraph above).
RESERVED_FILES = 64


def files_needed(config: ClusterConfig) -> int:
    outgoing = len(config.members) - 1
    return (config.max_connections + config.peer_connection_limit + outgoing
            + RESERVED_FILES)


def plan(needed: int, soft: int, hard: int, max_connections: int
         ) -> tuple[int | None, str | None]:
    """The soft limit to set (None: leave it) and a warning (None: all fits).  Pure."""
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or soft >= needed:
        return None, None
    if hard == unlimited or hard >= needed:
        return needed, None
    fits = max(0, hard - (needed - max_connections))
    return (hard if hard > soft else None), (
        f"max_connections = {max_connections} needs about {needed} open files, but this "
        f"process may open only {hard} (its hard limit, ulimit -Hn): about {fits} "
        "clients fit, a connection beyond is reset at once. Raise the limit (systemd: "
        "LimitNOFILE=) or lower max_connections")


def raise_limit(config: ClusterConfig) -> str | None:
    """Raise this process's soft RLIMIT_NOFILE to what ``config`` needs; the warning
    to log, if it cannot be raised that far."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, warning = plan(files_needed(config), soft, hard, config.max_connections)
    if new_soft is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (OSError, ValueError) as e:
            return f"cannot raise the open-file limit from {soft} to {new_soft}: {e}"
    return warning
