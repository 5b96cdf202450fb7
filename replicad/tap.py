"""The twistd entry: ``twistd -n replicad --id N [--config FILE] [--data-dir DIR]``.

Config mistakes end start-up with ONE line on stderr and exit status 1.  twistd prints
its whole usage screen before a ``UsageError``, which would bury that line, so mistakes
in the config file or data directory raise ``SystemExit`` with the sentence instead;
malformed command-line arguments still get twistd's usage screen.

The data dir is locked here, in postOptions, before its database is opened: a second
replicad on the same dir stops with one line.  The lock lives on the Options object for
the life of the process and survives twistd's daemonizing (replicad.datadir).
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from replicad.client_protocol import ClientFactory
from replicad.config import ClusterConfig, ConfigError, default_config, load_config
from replicad.datadir import DataDirLock, check_data_dir, lock_data_dir
from replicad.peer import PeerServerFactory
from replicad.replica import Replica

DEFAULT_DATA_ROOT = "replicad-data"


def fail(message: str) -> SystemExit:
    return SystemExit(f"replicad: error: {message}")


class Options(usage.Options):
    synopsis = "--id N [--config FILE] [--data-dir DIR]"
    longdesc = (
        "Run one replica of a replicad cluster. With no --config, the built-in cluster "
        "of 3 replicas on 127.0.0.1 is used (client ports 7001-7003, peer ports 7101-7103)."
    )
    optFlags = [
        ["new-cluster", None,
         "begin a new history even if no peer can be reached: only for the first start "
         "of a cluster or a deliberate reset"],
    ]
    optParameters = [
        ["id", "i", None, "this replica's id (a [replica:N] section of the config)", int],
        ["config", "c", None, "cluster config file (INI); default: the built-in cluster"],
        ["data-dir", "d", None,
         f"where the SQLite database lives; default ./{DEFAULT_DATA_ROOT}/replica-<id>"],
    ]

    def postOptions(self) -> None:
        if self["id"] is None:
            raise usage.UsageError("--id is required (which replica of the cluster to run)")
        try:
            config = load_config(self["config"]) if self["config"] else default_config()
            config.member(self["id"])
        except ConfigError as e:
            raise fail(str(e)) from None
        self.cluster: ClusterConfig = config
        if self["data-dir"] is None:
            self["data-dir"] = os.path.join(DEFAULT_DATA_ROOT, f"replica-{self['id']}")
        try:
            # Kept for the life of the process: closing it (or losing it) unlocks.
            self.data_dir_lock: DataDirLock = lock_data_dir(self["data-dir"])
        except ConfigError as e:
            raise fail(str(e)) from None
        try:
            check_data_dir(self["data-dir"], self["id"])
        except ConfigError as e:
            self.data_dir_lock.close()
            raise fail(str(e)) from None


def makeService(options: Options, reactor=None) -> service.MultiService:
    """The replica, its client listener and its peer listener, in one MultiService."""
    if reactor is None:
        from twisted.internet import reactor
    config = options.cluster
    my_id = options["id"]
    member = config.member(my_id)

    top = service.MultiService()
    replica = Replica(config, my_id, options["data-dir"], reactor,
                      new_cluster=bool(options["new-cluster"]))
    replica.setServiceParent(top)
    lock = getattr(options, "data_dir_lock", None)
    if lock is not None:
        # twistd daemonizes after this (fork, setsid, fork): name the process that runs.
        reactor.callWhenRunning(lock.write_pid)

    client_listener = StreamServerEndpointService(
        serverFromString(reactor, member.client_listen_endpoint()),
        ClientFactory(replica, config, reactor),
    )
    peer_listener = StreamServerEndpointService(
        serverFromString(reactor, member.peer_listen_endpoint()),
        PeerServerFactory(
            my_id, set(config.ids), config.secret, replica, reactor,
            config.limits.max_line_bytes + 1024,
            cluster_id=lambda: replica.store.cluster_id if replica.store else None,
            max_connections=config.peer_connection_limit,
            stream_stall_timeout_s=config.timers.stream_stall_timeout,
        ),
    )
    for listener in (client_listener, peer_listener):
        # A port that cannot be bound must stop start-up, not leave a deaf replica.
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    return top
