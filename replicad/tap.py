"""The twistd entry: ``twistd -n replicad --id N [--config FILE] [--data-dir DIR]``.

Config mistakes end start-up with ONE line on stderr and exit status 1.  twistd prints
its whole usage screen before a ``UsageError``, which would bury that line, so mistakes
in the config file or data directory raise ``SystemExit`` with the sentence instead;
malformed command-line arguments still get twistd's usage screen.
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from replicad.client_protocol import ClientFactory
from replicad.config import ClusterConfig, ConfigError, default_config, load_config
from replicad.peer import PeerServerFactory
from replicad.replica import Replica, check_data_dir

DEFAULT_DATA_ROOT = "replicad-data"


def fail(message: str) -> SystemExit:
    return SystemExit(f"replicad: error: {message}")


class Options(usage.Options):
    synopsis = "--id N [--config FILE] [--data-dir DIR]"
    longdesc = (
        "Run one replica of a replicad cluster. With no --config, the built-in cluster "
        "of 3 replicas on 127.0.0.1 is used (client ports 7001-7003, peer ports 7101-7103)."
    )
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
            check_data_dir(self["data-dir"])
        except ConfigError as e:
            raise fail(str(e)) from None


def makeService(options: Options, reactor=None) -> service.MultiService:
    """The replica, its client listener and its peer listener, in one MultiService."""
    if reactor is None:
        from twisted.internet import reactor
    config = options.cluster
    my_id = options["id"]
    member = config.member(my_id)

    top = service.MultiService()
    replica = Replica(config, my_id, options["data-dir"], reactor)
    replica.setServiceParent(top)

    client_listener = StreamServerEndpointService(
        serverFromString(reactor, member.client_listen_endpoint()),
        ClientFactory(replica, config, reactor),
    )
    peer_listener = StreamServerEndpointService(
        serverFromString(reactor, member.peer_listen_endpoint()),
        PeerServerFactory(
            my_id, set(config.ids), config.secret, replica, reactor,
            config.limits.max_line_bytes + 1024,
        ),
    )
    for listener in (client_listener, peer_listener):
        # A port that cannot be bound must stop start-up, not leave a deaf replica.
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    return top
