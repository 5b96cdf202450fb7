"""The twistd entry: ``twistd -n replicad --id N [--config FILE] [--data-dir DIR]``.

Config mistakes end start-up with ONE line on stderr and exit status 1.  twistd prints
its whole usage screen before a ``UsageError``, which would bury that line, so mistakes
in the config file or data directory raise ``SystemExit`` with the sentence instead;
malformed command-line arguments still get twistd's usage screen.

The data dir is locked here, in postOptions, before its database is opened: a second
replicad on the same dir stops with one line.  The lock lives on the Options object for
the life of the process and survives twistd's daemonizing (replicad.datadir).

Logging (``--log-level``, ``--log-format``): twistd starts logging *after* makeService,
with the ``ILogObserver`` component of its Application if there is one (else its own
text observer).  ``ReplicaService.setServiceParent`` sees that Application (twistd
calls ``makeService(...).setServiceParent(application)``) and sets the component: an
observer writing where twistd would have (``--logfile``, stdout under ``-n``,
``--syslog``), as text or one JSON object per line, dropping events below the level.
twistd's own ``--logger`` option still wins over it, as documented by twistd.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import logfile, usage
from twisted.python.components import Componentized

from replicad.admin import AdminService
from replicad.client_protocol import ClientFactory
from replicad.config import (
    ClusterConfig,
    ConfigError,
    default_config,
    load_config,
    with_backlog,
)
from replicad.datadir import DataDirLock, check_data_dir, lock_data_dir
from replicad.peer import PeerServerFactory
from replicad.replica import Replica

DEFAULT_DATA_ROOT = "replicad-data"
LOG_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
              "error": LogLevel.error}
LOG_FORMATS = ("text", "json")


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
        ["log-level", None, "info",
         f"lowest level logged: {', '.join(LOG_LEVELS)} (debug lines are off by default)"],
        ["log-format", None, "text",
         "text, or json: one JSON object per line with the event's fields"],
    ]

    def postOptions(self) -> None:
        if self["id"] is None:
            raise usage.UsageError("--id is required (which replica of the cluster to run)")
        for name, choices in (("log-level", LOG_LEVELS), ("log-format", LOG_FORMATS)):
            self[name] = str(self[name]).strip().lower()
            if self[name] not in choices:
                raise usage.UsageError(
                    f"--{name} must be one of {', '.join(choices)}, not {self[name]!r}")
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


class ReplicaService(service.MultiService):
    """The top service; hands twistd's Application the log observer (module docstring)."""

    def __init__(self, log_level: str = "info", log_format: str = "text",
                 twistd_options: Mapping[str, Any] | None = None):
        super().__init__()
        self.log_level = log_level
        self.log_format = log_format
        self.twistd_options = twistd_options or {}

    def setServiceParent(self, parent) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, log_observer(
                self.log_level, self.log_format, self.twistd_options))
        super().setServiceParent(parent)


def log_observer(level: str, log_format: str,
                 twistd_options: Mapping[str, Any]) -> ILogObserver:
    """Events at ``level`` or above, as text or JSON lines, written where twistd would
    write its own log: ``--syslog``, ``--logfile`` (rotated on SIGUSR1, as twistd
    does), stdout with ``-n`` and no log file, else ./twistd.log."""
    if twistd_options.get("syslog"):
        from twisted.python import syslog

        prefix = twistd_options.get("prefix") or "twisted"
        inner: ILogObserver = LegacyLogObserverWrapper(syslog.SyslogObserver(prefix).emit)
    else:
        out = _log_file(twistd_options)
        inner = json_lines_observer(out) if log_format == "json" else textFileLogObserver(out)
    return FilteringLogObserver(
        inner, [LogLevelFilterPredicate(defaultLogLevel=LOG_LEVELS[level])])


def _log_file(twistd_options: Mapping[str, Any]) -> TextIO | io.TextIOBase:
    name = twistd_options.get("logfile") or ""
    nodaemon = bool(twistd_options.get("nodaemon", True))
    if name == "-" or (not name and nodaemon):
        if not nodaemon:
            raise SystemExit("replicad: error: a daemon cannot log to stdout (--logfile -)")
        return sys.stdout
    log_file = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


def json_lines_observer(out: TextIO | io.TextIOBase) -> FileLogObserver:
    """One JSON object per line: every field of the event (``eventAsJSON``, so
    ``twisted.logger.eventsFromJSONLogFile`` reads it back), plus ``level`` (its name)
    and ``text`` (the formatted message) for people and log shippers."""

    def line(event: Mapping[str, Any]) -> str:
        fields = dict(event)
        level = event.get("log_level")
        fields.setdefault("level", level.name if level is not None else None)
        fields.setdefault("text", formatEvent(event))
        return eventAsJSON(fields) + "\n"

    return FileLogObserver(out, line)


def makeService(options: Options, reactor=None) -> service.MultiService:
    """The replica, its client listener, its peer listener and (when the config gives
    it an ``admin`` address) its admin port, in one MultiService."""
    if reactor is None:
        from twisted.internet import reactor
    config = options.cluster
    my_id = options["id"]
    member = config.member(my_id)

    top = ReplicaService(options.get("log-level") or "info",
                         options.get("log-format") or "text",
                         getattr(options, "parent", None))
    replica = Replica(config, my_id, options["data-dir"], reactor,
                      new_cluster=bool(options["new-cluster"]))
    replica.setServiceParent(top)
    lock = getattr(options, "data_dir_lock", None)
    if lock is not None:
        # twistd daemonizes after this (fork, setsid, fork): name the process that runs.
        reactor.callWhenRunning(lock.write_pid)

    clients = ClientFactory(replica, config, reactor)
    client_listener = StreamServerEndpointService(
        serverFromString(reactor, with_backlog(member.client_listen_endpoint(),
                                               config.listen_backlog)), clients,
    )
    peers = PeerServerFactory(
        my_id, set(config.ids), config.secret, replica, reactor,
        config.limits.max_line_bytes + 1024,
        cluster_id=lambda: replica.store.cluster_id if replica.store else None,
        max_connections=config.peer_connection_limit,
        stream_stall_timeout_s=config.timers.stream_stall_timeout,
    )
    peer_listener = StreamServerEndpointService(
        serverFromString(reactor, with_backlog(member.peer_listen_endpoint(),
                                               config.listen_backlog)), peers,
    )
    replica.metrics.client_connections = lambda: clients.open_connections
    replica.metrics.peer_connections = lambda: len(peers.connections)
    for listener in (client_listener, peer_listener):
        # A port that cannot be bound must stop start-up, not leave a deaf replica.
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    admin_endpoint = member.admin_listen_endpoint()
    if admin_endpoint is not None:
        AdminService(replica, admin_endpoint, reactor).setServiceParent(top)
    return top
