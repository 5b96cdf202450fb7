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

import errno
import gc
import io
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import logfile, usage
from twisted.python.components import Componentized

from replicad import openfiles
from replicad.client_protocol import ClientFactory
from replicad.config import (
    ClusterConfig,
    ConfigError,
    Endpoint,
    default_config,
    endpoint_tcp_address,
    is_tls_endpoint,
    load_config,
    parse_endpoint,
    with_backlog,
)
from replicad.datadir import DataDirLock, check_data_dir, lock_data_dir
from replicad.peer import PeerServerFactory, _RateLimitedWarning
from replicad.replica import Replica
from replicad.turnsend import TurnSendEndpoint

DEFAULT_DATA_ROOT = "replicad-data"
LOG_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
              "error": LogLevel.error}
LOG_FORMATS = ("text", "json")
_log = Logger(namespace="replicad.tap")


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
        try:
            self._check_options()
        except SystemExit as e:   # one line on stderr; a daemon's log gets it too
            if isinstance(e.code, str) and e.code.startswith("replicad: error:"):
                _log_early(e.code, getattr(self, "parent", None) or {},
                           str(self.get("log-format") or "text"))
            raise

    def _check_options(self) -> None:
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


#: The collector's youngest-generation threshold in a replica process (CPython: 700).
GC_GEN0_THRESHOLD = 20_000


def tune_collector() -> None:
    """Fit CPython's garbage collector to a server process.  A replica's heap is
    mostly long-lived (modules, Twisted, the hot-record cache) while each request makes
    a few dozen short-lived containers: with the default threshold a young collection
    ran every few dozen forwarded requests, and the older generations were walked
    again and again.  What start-up made is frozen (never scanned again) and the young
    generation is collected every GC_GEN0_THRESHOLD allocations: a forwarding
    follower's CPU per GET 42 -> 38 µs (docs/benchmarks.md, "The garbage collector").
    Garbage cycles are still collected, a little later."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


class ReplicaService(service.MultiService):
    """The top service; hands twistd's Application the log observer (module docstring).
    With ``tune_gc`` (a replica process of its own, not a test's service) it fits the
    garbage collector to the server once started (tune_collector)."""

    def __init__(self, log_level: str = "info", log_format: str = "text",
                 twistd_options: Mapping[str, Any] | None = None, tune_gc: bool = False):
        super().__init__()
        self.log_level = log_level
        self.log_format = log_format
        self.twistd_options = twistd_options or {}
        self.tune_gc = tune_gc
        self.open_files_warning: str | None = None    # openfiles.raise_limit's, if any

    def startService(self) -> None:
        super().startService()
        if self.tune_gc:
            tune_collector()
        if self.open_files_warning is not None:
            _log.warn("{warning}", warning=self.open_files_warning)

    def setServiceParent(self, parent) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, log_observer(
                self.log_level, self.log_format, self.twistd_options))
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        # twistd binds the listeners here, after forking: a failure is one line and
        # exit 1, not a traceback (see "Start-up failures" below).
        try:
            super().privilegedStartService()
        except Exception as e:
            raise stop_starting(describe_listen_error(e), self.twistd_options) from None


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


def use_replicad_reactor() -> bool:
    """twistd's replica runs on replicad.reactor.EPollReactor unless a reactor was
    chosen (``twistd -r NAME``) or the platform has no epoll."""
    try:
        from replicad.reactor import install_unless_chosen
    except ImportError:
        return False
    return install_unless_chosen()


def makeService(options: Options, reactor=None) -> service.MultiService:
    """The replica, its client listener, its peer listener and (when the config gives
    it an ``admin`` address) its admin port, in one MultiService."""
    bind_check = reactor is None   # twistd's own reactor: try the ports before forking
    if reactor is None:
        use_replicad_reactor()
        from twisted.internet import reactor
    config = options.cluster
    my_id = options["id"]
    member = config.member(my_id)
    try:
        check_startup(config, my_id, reactor, bind=bind_check)
    except ConfigError as e:
        raise startup_failure(str(e), getattr(options, "parent", None),
                              options.get("log-format") or "text") from None

    top = ReplicaService(options.get("log-level") or "info",
                         options.get("log-format") or "text",
                         getattr(options, "parent", None), tune_gc=bind_check)
    if bind_check:      # a replica process of its own: enough descriptors for its config
        top.open_files_warning = openfiles.raise_limit(config)
    # A disk that fails a COMMIT stops the process at once (replica._disk_failed).
    replica = Replica(config, my_id, options["data-dir"], reactor,
                      new_cluster=bool(options["new-cluster"]), halt=os._exit)
    replica.setServiceParent(top)
    lock = getattr(options, "data_dir_lock", None)
    if lock is not None:
        # twistd daemonizes after this (fork, setsid, fork): name the process that runs.
        reactor.callWhenRunning(lock.write_pid)

    # Replies and peer answers leave at the end of the reactor turn (replicad.turnsend).
    sender = replica.turn_sender
    clients = ClientFactory(replica, config, reactor)
    client_listener = StreamServerEndpointService(
        TurnSendEndpoint(serverFromString(reactor, with_backlog(
            member.client_listen_endpoint(), config.listen_backlog)), sender,
            send_over=True),     # a client that does not read pauses mid-turn
        watch_tls(clients, member.client_listen_endpoint(), "client", reactor),
    )
    peers = PeerServerFactory(
        my_id, set(config.ids), config.secret, replica, reactor,
        config.limits.max_line_bytes + 1024,
        cluster_id=lambda: replica.store.cluster_id if replica.store else None,
        max_connections=config.peer_connection_limit,
        stream_stall_timeout_s=config.timers.stream_stall_timeout,
    )
    peer_listener = StreamServerEndpointService(
        TurnSendEndpoint(serverFromString(reactor, with_backlog(
            member.peer_listen_endpoint(), config.listen_backlog)), sender),
        watch_tls(peers, member.peer_listen_endpoint(), "peer", reactor),
    )
    replica.metrics.client_connections = lambda: clients.open_connections
    replica.metrics.client_connections_backed_up = lambda: clients.backed_up_connections
    replica.metrics.peer_connections = lambda: len(peers.connections)
    for listener in (client_listener, peer_listener):
        # A port that cannot be bound must stop start-up, not leave a deaf replica.
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    admin_endpoint = member.admin_listen_endpoint()
    if admin_endpoint is not None:
        # Imported only here: the admin port brings twisted.web (about a tenth of a
        # replica's start-up), and most replicas of a test run have none.
        from replicad.admin import AdminService

        AdminService(replica, admin_endpoint, reactor).setServiceParent(top)
    return top


# Start-up failures ----------------------------------------------------------------------
#
# Every start-up failure is ONE line starting "replicad: error:" and a non-zero exit,
# never a traceback.  Most are found before twistd forks and starts logging, as
# SystemExit from postOptions or makeService (twistd prints the line on stderr and exits
# 1): the config and the data dir (postOptions); then, in makeService, TLS support, the
# certificate, key and CA files, and every port (check_startup binds and closes them,
# so a port in use is found before a daemon forks).  When the replica logs to a file
# or syslog (a daemon, --logfile), the line is written there too.  What can still
# fail later, when twistd binds the ports after forking (a port taken in between), is
# caught by ReplicaService.privilegedStartService: the line goes to the log and to
# stderr, a daemonizing twistd's first process is told through its status pipe and
# exits non-zero, and the replica exits 1.


def startup_failure(message: str, twistd_options: Mapping[str, Any] | None,
                    log_format: str = "text") -> SystemExit:
    """The SystemExit for a failure found before twistd logs: its message is the one
    line twistd prints; a replica that logs to a file or syslog gets it there too."""
    exit_ = fail(message)
    _log_early(str(exit_.code), twistd_options or {}, log_format)
    return exit_


def _startup_event(line: str) -> dict[str, Any]:
    return {"log_format": "{line}", "line": line, "log_level": LogLevel.critical,
            "log_namespace": "replicad.tap", "log_source": None, "log_time": time.time()}


def _log_early(line: str, twistd_options: Mapping[str, Any], log_format: str) -> None:
    """Write line where the replica's log would go, unless that is the terminal."""
    try:
        if twistd_options.get("syslog"):
            import syslog

            syslog.openlog(twistd_options.get("prefix") or "twisted")
            syslog.syslog(syslog.LOG_ERR, line)
            return
        name = twistd_options.get("logfile") or ""
        nodaemon = bool(twistd_options.get("nodaemon", True))
        if name == "-" or (not name and nodaemon):
            return   # stdout: the line is on stderr already
        with open(name or "twistd.log", "a", encoding="utf-8") as handle:
            observer = (json_lines_observer(handle) if log_format == "json"
                        else textFileLogObserver(handle))
            observer(_startup_event(line))
    except OSError:
        pass   # the line is on stderr; a log that cannot be written says nothing more


def check_startup(config: ClusterConfig, my_id: int, reactor: Any, bind: bool = True) -> None:
    """ConfigError, worded for the operator, for anything that would stop this replica
    later: TLS endpoints without pyOpenSSL, certificate, key and CA files that are
    missing, unreadable, not PEM, expired or not matching, endpoint strings Twisted
    refuses, and (with ``bind``) ports that cannot be bound or host names that do not
    resolve.  Nothing is kept open."""
    member = config.member(my_id)
    listeners = [
        (f"the client port of replica {my_id}", member.client_listen_endpoint(),
         "client_listen" if member.client_listen else None),
        (f"the peer port of replica {my_id}", member.peer_listen_endpoint(),
         "peer_listen" if member.peer_listen else None),
    ]
    admin = member.admin_listen_endpoint()
    if admin is not None:
        listeners.append((f"the admin port of replica {my_id}", admin,
                          "admin_listen" if member.admin_listen else None))
    dialers = [(f"[replica:{m.id}] peer_connect", m.peer_connect_endpoint(1.0))
               for m in config.members.values() if m.id != my_id and m.peer_connect]
    tls = [what for what, text, _ in listeners if is_tls_endpoint(text)]
    tls += [what for what, text in dialers if is_tls_endpoint(text)]
    if tls:
        check_tls_support(tls[0])
    for what, text, setting in listeners:
        label = f"[replica:{my_id}] {setting}" if setting else what
        endpoint = parse_endpoint(text)
        if endpoint.type == "ssl":
            _check_ssl_listener(endpoint, label)
            if setting == "client_listen":
                _warn_unnamed(endpoint, member.client.host, label)
        _twisted_parse(lambda text=text: serverFromString(reactor, text), label)
    if is_tls_endpoint(member.peer_listen) and member.peer_connect:
        _check_peer_names(member, f"[replica:{my_id}] peer_listen")
    for label, text in dialers:
        endpoint = parse_endpoint(text)
        if endpoint.tls:
            _check_tls_dialer(endpoint, label)
        _twisted_parse(lambda text=text: clientFromString(reactor, text), label)
    if bind:
        check_ports([(what, text) for what, text, _ in listeners])


def check_tls_support(what: str) -> None:
    try:
        import OpenSSL  # noqa: F401
        import service_identity  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"{what} uses TLS, which needs pyOpenSSL and service-identity ({e}): "
            f"pip install 'twisted[tls]' (replicad depends on them: reinstall it)"
        ) from None


def _read(path: str, name: str, label: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as e:
        raise ConfigError(f"{label}: cannot read {name} {path}: "
                          f"{e.strerror or e}") from None


def _ssl_reason(e: BaseException) -> str:
    """The last reason OpenSSL gave, or the exception's text."""
    args = getattr(e, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][-1], tuple):
        return str(args[0][-1][-1]) or type(e).__name__
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _load_certificate(data: bytes, path: str, name: str, label: str) -> Any:
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise ConfigError(f"{label}: {name} {path} holds no PEM certificate "
                          f"({_ssl_reason(e)})") from None
    expires = certificate.not_valid_after_utc
    if expires.timestamp() < time.time():
        raise ConfigError(f"{label}: the certificate in {name} {path} expired on "
                          f"{expires:%Y-%m-%d %H:%M} UTC")
    return certificate


def _check_ssl_listener(endpoint: Endpoint, label: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_path = endpoint.kwargs["privateKey"]
    cert_path = endpoint.kwargs.get("certKey", key_path)
    key = _read(key_path, "privateKey", label)
    cert = _read(cert_path, "certKey", label)
    _load_certificate(cert, cert_path, "certKey", label)
    try:
        load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{label}: privateKey {key_path} holds no unencrypted PEM "
                          f"private key ({_ssl_reason(e)})") from None
    for name in ("extraCertChain", "dhParameters"):
        if name in endpoint.kwargs:
            _read(endpoint.kwargs[name], name, label)


def _check_tls_dialer(endpoint: Endpoint, label: str) -> None:
    roots_name = "trustRoots" if endpoint.type == "tls" else "caCertsDir"
    roots = endpoint.kwargs.get(roots_name)
    if roots is not None:
        _check_trust_dir(roots, roots_name, label)
    cert_name = "certificate" if endpoint.type == "tls" else "certKey"
    for name in (cert_name, "privateKey"):
        if name in endpoint.kwargs:
            _read(endpoint.kwargs[name], name, label)


def _check_trust_dir(path: str, name: str, label: str) -> None:
    """Twisted reads every *.pem file of the directory (the first certificate of each)
    and silently skips what it cannot read: a directory with none would refuse every
    replica, so that is an error here."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        raise ConfigError(f"{label}: {name} {path} must be a directory of CA certificates "
                          f"(*.pem): {e.strerror or e}") from None
    for entry in entries:
        if entry.lower().endswith(".pem"):
            full = os.path.join(path, entry)
            try:
                with open(full, "rb") as handle:
                    _load_certificate(handle.read(), full, name, label)
                return
            except (OSError, ConfigError):
                continue
    raise ConfigError(f"{label}: {name} {path} holds no readable, unexpired CA "
                      f"certificate in a *.pem file (one certificate per file)")


def _check_peer_names(member: Any, label: str) -> None:
    """The others verify this replica's peer certificate against the host name in its
    peer_connect: a certificate that does not name it would be refused by all."""
    dial = parse_endpoint(member.peer_connect)
    listen = parse_endpoint(member.peer_listen)
    host = dial.kwargs.get("hostname") if dial.type == "ssl" else dial.param("host", 0)
    if listen.type != "ssl" or not host:
        return
    path = listen.kwargs.get("certKey", listen.kwargs["privateKey"])
    certificate = _load_certificate(_read(path, "certKey", label), path, "certKey", label)
    if not certificate_names(certificate, host):
        raise ConfigError(
            f"{label}: the certificate in {path} does not name {host}, the host the other "
            f"replicas verify when they dial replica {member.id} (its peer_connect); they "
            f"would all refuse it (give it a subjectAltName for {host})")


def _warn_unnamed(listen: Endpoint, host: str, label: str) -> None:
    """Clients verify the host name they dial: warn (clients may use another name)
    when the client certificate does not name the replica's client address."""
    path = listen.kwargs.get("certKey", listen.kwargs["privateKey"])
    certificate = _load_certificate(_read(path, "certKey", label), path, "certKey", label)
    if not certificate_names(certificate, host):
        _log.warn("{label}: the certificate in {path} does not name {host}, this "
                  "replica's client address: clients that dial {host} will refuse it",
                  label=label, path=path, host=host)


def certificate_names(certificate: Any, host: str) -> bool:
    """Whether a cryptography certificate is valid for host (a DNS name or an IP)."""
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    try:
        if isIPAddress(host) or isIPv6Address(host):
            verify_certificate_ip_address(certificate, host)
        else:
            verify_certificate_hostname(certificate, host)
    except (VerificationError, CertificateError, ValueError):
        return False   # a name it does not hold, or no subjectAltName at all
    return True


def _twisted_parse(build: Any, label: str) -> None:
    try:
        build()
    except ConfigError:
        raise
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        raise ConfigError(f"{label}: cannot read{where}: {e.strerror or e}") from None
    except Exception as e:
        reason = _ssl_reason(e)
        if "do not match" in reason:
            reason = "the certificate (certKey) and the private key (privateKey) do not match"
        raise ConfigError(f"{label}: {reason}") from None


def check_ports(listeners: list[tuple[str, str]]) -> None:
    """Bind and listen on every tcp/tcp6/ssl/tls listener's address at once, as Twisted
    will (SO_REUSEADDR), then close them: ConfigError naming the port otherwise.  unix:
    and systemd: endpoints are left to twistd."""
    sockets: list[socket.socket] = []
    try:
        for what, text in listeners:
            address = endpoint_tcp_address(parse_endpoint(text), server=True)
            if address is not None:
                sockets.append(_try_listen(what, *address))
    finally:
        for sock in sockets:
            sock.close()


def _try_listen(what: str, host: str, port: int) -> socket.socket:
    shown = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {shown} ({what}): cannot resolve the host "
                          f"name {host!r}: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
        sock.listen(1)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {shown} ({what}): "
                          f"{describe_socket_error(e)}") from None
    return sock


def describe_socket_error(e: OSError) -> str:
    reason = (e.strerror or str(e)).lower()
    if e.errno == errno.EADDRINUSE:
        return f"{reason}: another replicad, or another program, listens there"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{reason}: no interface of this machine has that address"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{reason} (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return reason


def describe_listen_error(e: BaseException) -> str:
    """One line for an exception raised while twistd binds the listeners."""
    if isinstance(e, CannotListenError):
        host = e.interface or "*"
        shown = f"[{host}]:{e.port}" if ":" in host else f"{host}:{e.port}"
        inner = e.socketError
        if isinstance(inner, OSError):
            return f"cannot listen on {shown}: {describe_socket_error(inner)}"
        return f"cannot listen on {shown}: {inner}"
    if isinstance(e, OSError) and e.strerror:
        path = e.filename2 or e.filename
        where = f": {os.fsdecode(path)}" if isinstance(path, (str, bytes)) else ""
        return f"cannot start: {e.strerror.lower()}{where}"
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"cannot start: {type(e).__name__}{': ' + first if first else ''}"


def stop_starting(message: str, twistd_options: Mapping[str, Any]) -> SystemExit:
    """After twistd started logging (and may have forked): log the line, write it on
    the terminal's stderr, tell a daemonizing twistd's waiting first process through
    its status pipe (it exits 1, printing its own note), remove the pid file, and
    return SystemExit(1) for the caller to raise."""
    line = f"replicad: error: {message}"
    _log.critical("{line}", line=line)
    stderr = sys.__stderr__
    if twistd_options.get("nodaemon", True) and stderr is not None:
        try:
            stderr.write(line + "\n")
            stderr.flush()
        except (OSError, ValueError):
            pass
    pipe = twistd_options.get("statusPipe") if isinstance(twistd_options, Mapping) else None
    if pipe is not None:
        short = line if len(line) <= 98 else line[:94].rsplit(" ", 1)[0] + " ..."
        try:
            os.write(pipe, b"1 " + short.encode("ascii", "backslashreplace")[:98])
            os.close(pipe)
        except OSError:
            pass
        try:
            twistd_options["statusPipe"] = None   # type: ignore[index]
        except TypeError:
            pass
    pidfile = twistd_options.get("pidfile")
    if pidfile:
        try:
            os.unlink(pidfile)
        except OSError:
            pass
    return SystemExit(1)


# TLS handshakes that fail --------------------------------------------------------------

TLS_FAILURE_LOG_INTERVAL_S = 10.0
_TLS_FAILURE_KINDS = {"untrusted": "this replica's certificate not trusted",
                      "plain": "plain text", "other": "other reasons"}


class TLSFailureLog(Factory):
    """Stands in for a TLS listener's factory: builds the wrapped factory's own
    protocols and logs connections that end before their TLS handshake completed: a
    peer or client that does not trust this replica's certificate (``alert unknown
    ca``), plain text on a TLS port (``wrong version number``), and so on.  Each kind
    is logged at most once per TLS_FAILURE_LOG_INTERVAL_S, with a count of the rest.
    Without it a replica with the wrong CA is refused in silence."""

    noisy = False

    def __init__(self, wrapped: Any, port_name: str, clock: Any):
        self.wrapped = wrapped
        self.port_name = port_name
        self._clock = clock
        self._warnings: dict[str, _RateLimitedWarning] = {}

    def logPrefix(self) -> str:
        return self.wrapped.logPrefix()

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.wrapped.buildProtocol(addr)
        if proto is None:
            return None
        lost = proto.connectionLost

        def connectionLost(reason: Any = None) -> None:
            transport = getattr(proto, "transport", None)
            if reason is not None and not getattr(transport, "_handshakeDone", True):
                self._report(addr, reason)
            lost(reason)

        proto.connectionLost = connectionLost
        return proto

    def _report(self, addr: Any, reason: Any) -> None:
        from OpenSSL.SSL import Error as SSLError

        if not reason.check(SSLError):
            return   # closed before a word (a port scan, a probe): not a TLS failure
        why = _ssl_reason(reason.value)
        kind, hint = "other", ""
        if "unknown ca" in why or "bad certificate" in why or "certificate unknown" in why:
            kind, hint = "untrusted", (" (it does not trust this replica's certificate: "
                                       "check its CA, and that the certificate names the "
                                       "host it dials)")
        elif "wrong version" in why or "http request" in why or "packet length" in why:
            kind, hint = "plain", (" (it does not speak TLS: a plain tcp: endpoint or a "
                                   "client without --tls?)")
        if kind not in self._warnings:
            self._warnings[kind] = _RateLimitedWarning(
                _log, self._clock, TLS_FAILURE_LOG_INTERVAL_S,
                f"{{count}} more TLS handshakes failed on the {self.port_name} port in the "
                f"last {{seconds:g}} s ({_TLS_FAILURE_KINDS[kind]})")
        host = getattr(addr, "host", addr)
        port = getattr(addr, "port", "")
        self._warnings[kind].warn(
            "TLS handshake on the {port_name} port with {peer} failed: {reason}{hint}",
            port_name=self.port_name, peer=f"{host}:{port}", reason=why, hint=hint)


def watch_tls(factory: Any, endpoint_text: str, port_name: str, clock: Any) -> Any:
    """The factory to listen with: wrapped in TLSFailureLog when the endpoint is TLS."""
    if is_tls_endpoint(endpoint_text):
        return TLSFailureLog(factory, port_name, clock)
    return factory
