"""``replicad-cli``: one request to the cluster from a shell, with a session kept on disk.

It runs on BlockingClient, not on the reactor: a run makes one request and exits, so
plain sockets start faster, Ctrl-C is an ordinary KeyboardInterrupt (no reactor to stop
cleanly from a signal handler), and the retry policy is the same shared code anyway.

The command line reads like redis-cli and etcdctl: options may come before or after the
command, ``--`` ends them (``put k -- -v`` stores ``-v``), and the servers come from
``--servers``, ``--config`` (a client file or a cluster file), ``$REPLICAD_SERVERS``,
``$REPLICAD_CONFIG`` or the built-in cluster, in that order.

The session (clocks, the coordinator last seen, the cluster it belongs to, the request
id counter) lives in a JSON file so that successive runs keep read-your-writes and
monotonic reads.  A session of another cluster, or a damaged file, is reset with one
line on stderr naming the file.

TLS: ``--tls`` (or ``tls = yes`` in a client file, or a cluster file whose client
listeners are ssl:/tls:) verifies the servers' certificates against the system's CAs;
``--cacert FILE`` (or ``$REPLICAD_CACERT``, or ``cacert =`` in a client file) against
the CA certificates in FILE, and implies ``--tls``.  The certificate must name the host
given in the server list.  A server whose certificate cannot be verified is refused:
when every server is, the CLI stops at once with one line (exit 3, nothing was sent).

Exit codes: 0 ok, 1 key not found, 2 usage error (a bad command line, or input the
protocol cannot carry, or an unreadable CA file, found before anything is sent), 3 no
server could serve (none reachable, none verified over TLS), or a write's outcome is
unknown, 4 the server refused the request (ERR BADKEY, TOOBIG, AUTH, ...), 130
interrupted, 70 a bug in this program.  ``status --cluster`` exits 3 when no server
answered, else 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import configparser
import contextlib
import fcntl
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import replicad
from replicad import wire
from replicad.client import (
    ATTEMPT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    BlockingClient,
    ClientError,
    InvalidRequest,
    NoServerAvailable,
    OutcomeUnknown,
    ServerError,
    SessionReset,
    TLSSetupError,
    UnexpectedReply,
)
from replicad.config import (
    ConfigError,
    default_config,
    is_tls_endpoint,
    parse_address,
    parse_config,
)
from replicad.session import ClientSession, SessionFileError, new_client_id

PROG = "replicad-cli"
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SERVER_ERROR = 4
EXIT_BUG = 70
EXIT_INTERRUPTED = 130

ENV_SERVERS = "REPLICAD_SERVERS"
ENV_CONFIG = "REPLICAD_CONFIG"
ENV_SESSION = "REPLICAD_SESSION"
ENV_PASSWORD = "REPLICAD_PASSWORD"
ENV_CACERT = "REPLICAD_CACERT"
# status --cluster asks each server alone: one that has not answered within this (unless
# --timeout says otherwise) is shown as down.
CLUSTER_STATUS_TIMEOUT_S = 2.0

COMMANDS = ("get", "put", "del", "keys", "status", "session")
WRITE_COMMANDS = ("put", "del")

USAGE = f"{PROG} [OPTIONS] COMMAND [ARGS]   (options may also follow the command; -- ends them)"
DESCRIPTION = """\
Talk to a replicad cluster.

commands:
  get KEY                print the value of KEY (exit 1 if there is none)
  put KEY [VALUE...]     store VALUE, the words joined by single spaces, and print OK;
                         with no VALUE (stdin not a terminal) or with -, the value is
                         read from stdin, less one final newline
  del KEY                delete KEY and print OK (exit 1 if there is none)
  keys [PREFIX]          list live keys, one a line
  status [--json]        the state of the replica that answers
  status --cluster       every server's state in one table (--json: a list)
  session show [--json]  the session: its file, cluster id, clocks, coordinator, client id
  session reset          start a new session (deletes the session file)"""
EPILOG = f"""\
environment:
  {ENV_SERVERS}  servers when neither --servers nor --config is given
  {ENV_CONFIG}   config file when neither --servers, --config nor {ENV_SERVERS} is
  {ENV_SESSION}  session file (default: one per server list under ~/.local/state/replicad)
  {ENV_PASSWORD} the cluster's client password (--password-file takes precedence)
  {ENV_CACERT}   CA certificate file for TLS (--cacert takes precedence; implies --tls)

a client config file needs no peer secret:
  [client]
  servers = 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
  timeout = 5                 ; optional, seconds
  password_file = client.pw   ; optional, relative to the config file
  tls = yes                   ; optional (default no): connect with TLS
  cacert = ca.pem             ; optional CA file (PEM), relative to the config file;
                              ; default: the system's CAs; implies tls = yes

exit codes: 0 ok, 1 key not found, 2 usage error (bad command line or input, or an
unreadable CA file: nothing sent), 3 no server could serve (none reachable, or none whose
TLS certificate could be verified), or a write's outcome is unknown, 4 the server refused
the request (ERR ...), 130 interrupted"""


class UsageError(Exception):
    """Bad command line or local input; exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (exit 2) instead of usage + message."""

    def error(self, message: str) -> Any:
        if message.startswith("unrecognized arguments"):
            message += " (a value that begins with - goes after --, as in: put KEY -- -x)"
        raise UsageError(f"{message} (see {PROG} --help)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, usage=USAGE, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("words", nargs="*", metavar="COMMAND [ARGS]", help=argparse.SUPPRESS)
    parser.add_argument("--servers", metavar="H:P,H:P",
                        help="client addresses of the replicas (default: $REPLICAD_SERVERS, "
                             "else the built-in cluster 127.0.0.1:7001-7003)")
    parser.add_argument("--config", metavar="FILE",
                        help="a client config file ([client] servers = ...) or a cluster "
                             "config file, whose client addresses are used")
    parser.add_argument("--timeout", metavar="S", type=_seconds,
                        help=f"give up after this many seconds, retries included "
                             f"(default: {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--attempt-timeout", metavar="S", type=_seconds,
                        help=f"skip a server that has not shown it is alive within this "
                             f"many seconds (default: {ATTEMPT_TIMEOUT_S:g})")
    parser.add_argument("--session", metavar="FILE",
                        help="session file (default: $REPLICAD_SESSION or one per server list "
                             "under ~/.local/state/replicad)")
    parser.add_argument("--no-session", action="store_true",
                        help="use a fresh session and do not save it")
    parser.add_argument("--password-file", metavar="FILE",
                        help="the cluster's client password, first line of FILE (default: "
                             "$REPLICAD_PASSWORD; never on the command line, where ps shows it)")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, verifying each server's certificate and "
                             "that it names the host given (default CAs: the system's)")
    parser.add_argument("--cacert", metavar="FILE",
                        help=f"trust the CA certificates in FILE (PEM) for TLS; implies "
                             f"--tls (default: ${ENV_CACERT})")
    parser.add_argument("--cluster", action="store_true",
                        help="status: ask every server and print one table")
    parser.add_argument("--json", action="store_true",
                        help="status and session show: print JSON")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="put and del: print nothing on success (the exit code tells)")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {replicad.__version__}")
    return parser


@dataclass(frozen=True)
class Command:
    """A parsed command line: what to do and the options, wherever they were."""

    name: str
    args: list[str]
    options: argparse.Namespace

    @property
    def is_write(self) -> bool:
        return self.name in WRITE_COMMANDS


_ARITY = {   # command -> (fewest, most) arguments; None: no limit
    "get": (1, 1), "put": (1, None), "del": (1, 1), "keys": (0, 1), "status": (0, 0),
    "session": (1, 1),
}
_SHAPES = {
    "get": "get KEY", "put": "put KEY [VALUE...]", "del": "del KEY", "keys": "keys [PREFIX]",
    "status": "status [--json]", "session": "session show|reset",
}


def parse_command_line(argv: Sequence[str]) -> Command:
    """Options anywhere, ``--`` ends them: everything after it is an argument."""
    argv = list(argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    options = build_parser().parse_intermixed_args(argv)
    words = list(options.words) + tail
    if not words:
        raise UsageError(f"a COMMAND is needed: {', '.join(COMMANDS)} (see {PROG} --help)")
    name, args = words[0], words[1:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)} "
                         f"(see {PROG} --help)")
    fewest, most = _ARITY[name]
    if len(args) < fewest or (most is not None and len(args) > most):
        raise UsageError(f"usage: {PROG} {_SHAPES[name]} (see {PROG} --help)")
    if name == "session" and args[0] not in ("show", "reset"):
        raise UsageError(f"usage: {PROG} session show|reset, not {args[0]!r}")
    if options.json and name not in ("status", "session"):
        raise UsageError(f"--json goes with status or session show, not {name}")
    if options.cluster and name != "status":
        raise UsageError(f"--cluster goes with status, not {name}")
    if options.session is not None and options.no_session:
        raise UsageError("give --session or --no-session, not both")
    return Command(name, args, options)


# Servers, config files, input -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to send requests, and what a config file (if any) tells besides."""

    servers: list[str]
    limits: wire.Limits | None = None        # size limits to check locally
    by_id: dict[int, str] = field(default_factory=dict)   # replica id -> client address
    timeout_s: float | None = None           # from a client config file
    attempt_timeout_s: float | None = None
    password_file: str | None = None
    tls: bool = False                        # from a config file
    cacert: str | None = None                # from a client config file


def parse_servers(text: str, source: str) -> list[str]:
    parts = [p for p in text.replace("\n", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise UsageError(f"{source} needs at least one host:port")
    try:
        return [str(parse_address(p, f"{source}: server address")) for p in parts]
    except ConfigError as e:
        raise UsageError(str(e)) from None


def resolve_target(options: argparse.Namespace, env: Mapping[str, str]) -> Target:
    if options.servers is not None and options.config is not None:
        raise UsageError("give --servers or --config, not both")
    if options.servers is not None:
        return Target(parse_servers(options.servers, "--servers"))
    if options.config is not None:
        return load_client_config(options.config)
    if env.get(ENV_SERVERS, "").strip():
        return Target(parse_servers(env[ENV_SERVERS], f"${ENV_SERVERS}"))
    if env.get(ENV_CONFIG, "").strip():
        return load_client_config(env[ENV_CONFIG])
    config = default_config()
    by_id = {i: str(config.members[i].client) for i in config.ids}
    return Target(list(by_id.values()), config.limits, by_id)


_CLIENT_KEYS = {"servers", "timeout", "attempt_timeout", "password_file", "tls", "cacert"}
_NO = {"no", "false", "off", "0"}
_YES = {"yes", "true", "on", "1"}


def load_client_config(path: str) -> Target:
    """A ``[client]`` file (servers, optional timeout, attempt_timeout, password_file,
    tls = no), or a cluster file (``[cluster]`` + ``[replica:N]``), whose client
    addresses and size limits are taken."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise UsageError(f"config file {path} is not a valid INI file: {first}") from None
    where = f"config file {path}"
    if parser.has_section("client"):
        section = parser["client"]
        unknown = set(section) - _CLIENT_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown setting {sorted(unknown)[0]!r} in [client] "
                             f"(known: {', '.join(sorted(_CLIENT_KEYS))})")
        if "servers" not in section:
            raise UsageError(f"{where}: [client] needs servers = host:port,...")
        tls = section.get("tls", "no").strip().lower()
        if tls not in _NO | _YES:
            raise UsageError(f"{where}: tls = {tls} must be yes or no")
        password_file = _relative_path(section, "password_file", path)
        cacert = _relative_path(section, "cacert", path)
        return Target(
            parse_servers(section["servers"], f"{where}: servers"),
            timeout_s=_setting_seconds(section, "timeout", where),
            attempt_timeout_s=_setting_seconds(section, "attempt_timeout", where),
            password_file=password_file,
            tls=tls in _YES or cacert is not None,
            cacert=cacert,
        )
    if not parser.has_section("cluster"):
        raise UsageError(f"{where} has neither a [client] nor a [cluster] section")
    try:
        config = parse_config(parser, path)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    by_id = {i: str(config.members[i].client) for i in config.ids}
    # Clients reach the replicas the way they listen: with TLS if their listeners do.
    tls = any(is_tls_endpoint(m.client_listen) for m in config.members.values())
    return Target(list(by_id.values()), config.limits, by_id, tls=tls)


def _relative_path(section: configparser.SectionProxy, name: str, path: str) -> str | None:
    """A file named in a config file: relative to that file's directory."""
    value = section.get(name, "").strip() or None
    if value is None:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(value))


def tls_settings(options: argparse.Namespace, target: Target,
                 env: Mapping[str, str]) -> tuple[bool, str | None]:
    """(tls, cacert): --cacert, else $REPLICAD_CACERT, else the config's cacert; TLS
    when any of them is given, or --tls, or the config says so."""
    cacert = options.cacert or env.get(ENV_CACERT, "").strip() or target.cacert
    return bool(options.tls or cacert or target.tls), cacert or None


def _setting_seconds(section: configparser.SectionProxy, name: str, where: str) -> float | None:
    if name not in section:
        return None
    try:
        return _seconds(section[name])
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{where}: {name} {e}") from None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return True   # unknown: do not block reading it


def _read_stdin(stdin: TextIO) -> str:
    data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the value read from stdin is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def value_of(words: list[str], stdin: TextIO) -> str:
    """put's VALUE: the words joined by single spaces; ``-`` or no words (stdin not a
    terminal) read stdin, less one final newline."""
    if words == ["-"]:
        return _read_stdin(stdin)
    if words:
        return " ".join(words)
    if _is_terminal(stdin):
        raise UsageError(f"put needs a VALUE after the KEY, or the value on stdin "
                         f"(see {PROG} --help)")
    try:
        text = _read_stdin(stdin)
    except OSError as e:
        raise UsageError(f"cannot read the value from stdin: {e.strerror or e}") from None
    if not text:
        raise UsageError("put KEY without a VALUE reads it from stdin, which was empty; "
                         "give '' for an empty value")
    return text


def check_input(command: Command, limits: wire.Limits | None, stdin: TextIO) -> str | None:
    """Reject what the protocol cannot carry before touching the network (exit 2);
    returns put's value."""
    limits = limits or wire.Limits(max_key_bytes=2**62, max_value_bytes=2**62)
    value = None
    try:
        if command.name in ("get", "put", "del"):
            wire.check_key(command.args[0], limits)
        if command.name == "keys" and command.args:
            wire.check_key(command.args[0], limits)
        if command.name == "put":
            value = value_of(command.args[1:], stdin)
            wire.check_value(value, limits)
    except wire.WireError as e:
        raise UsageError(f"bad input ({e.code}): {e.message}") from None
    return value


def read_password(path: str | None, env: Mapping[str, str],
                  config_path: str | None = None) -> str | None:
    """--password-file, else $REPLICAD_PASSWORD, else the config file's password_file."""
    if path is None and env.get(ENV_PASSWORD):
        return env[ENV_PASSWORD]
    path = path or config_path
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read password file {path}: {_reason(e)}") from None
    if not password:
        raise UsageError(f"password file {path} is empty")
    return password


# The session file ---------------------------------------------------------------------


def default_session_path(servers: list[str], env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    explicit = env.get(ENV_SESSION)
    if explicit:
        return explicit
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    digest = hashlib.sha256(",".join(sorted(servers)).encode("utf-8")).hexdigest()[:12]
    return os.path.join(state, "replicad", f"session-{digest}.json")


class SessionFile:
    """The session on disk: loaded and saved under a lock (``<file>.lock``), so that
    runs sharing a file never use one request id twice and never lose each other's
    clocks.  A damaged file is reset with one line naming it."""

    def __init__(self, path: str, warn: Any):
        self.path = path
        self._warn = warn
        self.damaged = False   # it could not be read back: save the new session over it

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, warn: bool) -> ClientSession | None:
        """The session on disk; None when there is no file (or a damaged one)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read session file {self.path}: {_reason(e)}") from None
        try:
            return ClientSession.from_json(text)
        except SessionFileError as e:
            if warn:
                self.damaged = True
                self._warn(f"session file {self.path} cannot be read back ({e}); "
                           "starting a new session")
            return None

    def load(self, reserve_request_id: bool = False) -> ClientSession:
        """The session; with reserve_request_id, the next request id is taken on disk
        first, so a concurrent run sharing the file gets the one after."""
        if not reserve_request_id:
            return self._read(warn=True) or ClientSession()
        try:
            with self._locked():
                session = self._read(warn=True) or ClientSession()
                if session.client_id is None:
                    session.client_id = new_client_id()
                reserved = ClientSession.from_json(session.to_json())
                reserved.next_request_id()
                self._write(reserved)
        except OSError as e:
            raise UsageError(f"cannot write session file {self.path}: {_reason(e)}") from None
        return session

    def save(self, session: ClientSession, was_reset: bool) -> None:
        """Merge with what is on disk (another run may have saved meanwhile; clocks of
        one cluster only ever grow), then replace the file atomically."""
        with self._locked():
            on_disk = self._read(warn=False)
            self._write(merge_sessions(session, on_disk, was_reset))

    def reset(self) -> bool:
        """Delete the file; True if there was one."""
        with self._locked():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return False
            return True

    def _write(self, session: ClientSession) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(session.to_json() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def merge_sessions(ours: ClientSession, on_disk: ClientSession | None,
                   was_reset: bool) -> ClientSession:
    """What to save: ours, with what another run saved meanwhile if it is the same
    session (the same cluster, or one not yet known).  After a reset, only a file of
    the new cluster is merged."""
    if on_disk is None:
        return ours
    if was_reset:
        same = on_disk.cluster == ours.cluster
    else:
        same = None in (on_disk.cluster, ours.cluster) or on_disk.cluster == ours.cluster
    if not same:
        return ours
    same_client = ours.client_id is None or on_disk.client_id in (None, ours.client_id)
    return ClientSession(
        read=ours.read.merge(on_disk.read),
        write=ours.write.merge(on_disk.write),
        last_server=ours.last_server if ours.last_server is not None else on_disk.last_server,
        coordinator=ours.coordinator if ours.coordinator is not None else on_disk.coordinator,
        addresses={**on_disk.addresses, **ours.addresses},
        cluster=ours.cluster or on_disk.cluster,
        client_id=ours.client_id or on_disk.client_id,
        seq=max(ours.seq, on_disk.seq) if same_client else ours.seq,
        epoch=max(ours.epoch, on_disk.epoch),
        demoted=dict(ours.demoted),   # this run's view of who failed is the newest
    )


def describe_reset(reset: SessionReset, path: str | None) -> str:
    where = f"session file {path}" if path else "the session"
    return (f"{where} belonged to cluster {reset.old_cluster}, but {reset.address} "
            f"answers for cluster {reset.new_cluster} (a new or wiped cluster?); "
            "starting a new session")


# Running a command -----------------------------------------------------------------------


def run_command(command: Command, value: str | None, client: BlockingClient,
                out: TextIO) -> int:
    name, args, quiet = command.name, command.args, command.options.quiet
    if name == "get":
        found = client.get(args[0])
        if found is None:
            _fail(f"key {args[0]!r} not found")
            return EXIT_NOT_FOUND
        print(found, file=out)
    elif name == "put":
        client.put(args[0], value)
        if not quiet:
            print("OK", file=out)
    elif name == "del":
        if not client.delete(args[0]):
            _fail(f"key {args[0]!r} not found")
            return EXIT_NOT_FOUND
        if not quiet:
            print("OK", file=out)
    elif name == "keys":
        for key in client.keys(args[0] if args else ""):
            print(key, file=out)
    elif name == "status":
        status = client.status()
        if command.options.json:
            print(json.dumps(status, sort_keys=False), file=out)
        else:
            _print_table(status, "server", out)
    return EXIT_OK


# status --cluster --------------------------------------------------------------------

CLUSTER_COLUMNS = ("server", "id", "role", "coordinator", "epoch", "clock", "keys", "peers",
                   "cluster", "ready", "version")


def run_cluster_status(clients: Mapping[str, BlockingClient], by_id: Mapping[int, str],
                       as_json: bool, out: TextIO) -> int:
    """STATUS from every server at once (each client knows one server); one table, or
    a JSON list, in the order of the server list.  A server that does not answer is a
    row marked down with the reason.  Exit 3 when none answered."""
    results: dict[str, dict[str, Any] | ClientError] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(clients))) as pool:
        futures = {server: pool.submit(client.status) for server, client in clients.items()}
        for server, future in futures.items():
            try:
                results[server] = future.result()
            except ClientError as e:
                results[server] = e
    ids = {address: i for i, address in by_id.items()}
    rows: list[dict[str, Any]] = []
    for server, result in results.items():
        if isinstance(result, dict):
            rows.append({**result, "server": server, "up": True})
        else:
            rows.append({"server": server, "id": ids.get(server), "up": False,
                         "error": _why_down(result, server)})
    if as_json:
        print(json.dumps(rows), file=out)
    else:
        _print_cluster_table(rows, out)
    return EXIT_OK if any(row["up"] for row in rows) else EXIT_UNAVAILABLE


def _why_down(e: ClientError, server: str) -> str:
    if getattr(e, "all_refused", False):
        return "connection refused"
    reason = getattr(e, "last_reason", None) or str(e)
    if reason.startswith(f"{server}: "):
        reason = reason[len(server) + 2:]
    if isinstance(e, ServerError):
        reason = f"ERR {e.code} {e.message}"
    return reason.removesuffix(" (retryable)")


def _cluster_cells(row: dict[str, Any]) -> list[str]:
    if not row["up"]:
        return [row["server"], _human(row.get("id")), "down"] + ["-"] * 8
    peers = row.get("peers")
    if isinstance(peers, dict):
        down = [p for p, state in peers.items() if state != "up"]
        shown = f"{len(peers) - len(down)}/{len(peers)} up"
        if down:
            shown += f" (down: {','.join(down)})"
    else:
        shown = _human(peers)
    cluster = row.get("cluster_id")
    return [row["server"], _human(row.get("id")), _human(row.get("role")),
            _human(row.get("coordinator")), _human(row.get("epoch")), _human(row.get("clock")),
            _human(row.get("keys")), shown,
            cluster[:8] if isinstance(cluster, str) and len(cluster) > 8 else _human(cluster),
            _human(row.get("ready")), _human(row.get("version"))]


def _print_cluster_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    table = [[c.upper() for c in CLUSTER_COLUMNS]] + [_cluster_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(CLUSTER_COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(),
              file=out)
    for row in rows:
        if not row["up"]:
            print(f"{row['server']} is down: {row['error']}", file=out)
    up = [r for r in rows if r["up"]]
    summary = f"{len(up)} of {len(rows)} up"
    named = {r.get("coordinator") for r in up}
    if len(named) == 1 and up:
        (coordinator,) = named
        epochs = {r.get("epoch") for r in up if r.get("id") == coordinator}
        epoch = f" in epoch {epochs.pop()}" if len(epochs) == 1 else ""
        summary += (f"; coordinator {coordinator}{epoch}" if coordinator is not None
                    else "; no coordinator")
    elif up:
        summary += "; they name different coordinators: " + ", ".join(
            f"{_human(r.get('id'))} follows {_human(r.get('coordinator'))}" for r in up)
    clusters = {r.get("cluster_id") for r in up} - {None, "-"}
    if len(clusters) > 1:
        summary += f"; {len(clusters)} different cluster ids: check the server list"
    print(summary, file=out)


def run_session_command(command: Command, store: SessionFile | None, out: TextIO) -> int:
    if store is None:
        raise UsageError(f"session {command.args[0]} needs a session file, not --no-session")
    if command.args[0] == "reset":
        existed = store.reset()
        print(f"session file {store.path} {'reset' if existed else 'did not exist'}",
              file=out)
        return EXIT_OK
    session = store.load()
    fields: dict[str, Any] = {
        "file": store.path,
        "exists": os.path.exists(store.path),
        **json.loads(session.to_json()),
    }
    if command.options.json:
        print(json.dumps(fields), file=out)
    else:
        fields["demoted"] = list(session.demoted)   # the addresses; epochs are for JSON
        _print_table(fields, "file", out)
    return EXIT_OK


def _print_table(fields: dict[str, Any], first: str, out: TextIO) -> None:
    width = max(len(name) for name in fields)
    for name in (first, *[n for n in fields if n != first]):
        print(f"{name:<{width}}  {_human(fields[name])}", file=out)


def _human(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if not value:
            return "-"
        return ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _tls_hint(e: BaseException) -> str:
    if getattr(e, "silent", False):
        return f" (--tls, with --cacert FILE or ${ENV_CACERT} for the cluster's own CA)"
    if not getattr(e, "tls_failed", False):
        return ""
    if "does not speak TLS" in str(e):
        return "; leave out --tls (and --cacert) for servers without TLS"
    return ("; give the CA certificate that signed the servers' certificates with --cacert "
            f"FILE (or ${ENV_CACERT}), and list the servers by a name or address their "
            "certificates hold")


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _main(argv: Sequence[str], out: TextIO, stdin: TextIO, env: Mapping[str, str]) -> int:
    command = parse_command_line(argv)
    options = command.options
    target = resolve_target(options, env)
    store = None
    if not options.no_session:
        store = SessionFile(options.session or default_session_path(target.servers, env),
                            _fail)
    if command.name == "session":
        return run_session_command(command, store, out)
    value = check_input(command, target.limits, stdin)
    password = read_password(options.password_file, env, target.password_file)
    tls, cacert = tls_settings(options, target, env)
    if command.name == "status" and options.cluster:
        clients = {server: BlockingClient(
            [server], timeout_s=options.timeout or CLUSTER_STATUS_TIMEOUT_S,
            password=password, tls=tls, cacert=cacert,
            attempt_timeout_s=options.attempt_timeout or target.attempt_timeout_s
            or ATTEMPT_TIMEOUT_S,
        ) for server in target.servers}
        return run_cluster_status(clients, target.by_id, options.json, out)
    session = store.load(reserve_request_id=command.is_write) if store else ClientSession()
    before = session.to_json()
    # With a config we know every replica's address, so a reply naming the coordinator
    # sends the next request straight to it instead of through a forwarding replica.
    session.addresses.update(target.by_id)
    resets: list[SessionReset] = []

    def reset(event: SessionReset) -> None:
        resets.append(event)
        _fail(describe_reset(event, store.path if store else None))

    client = BlockingClient(
        target.servers,
        timeout_s=options.timeout or target.timeout_s or DEFAULT_TIMEOUT_S,
        session=session,
        password=password,
        attempt_timeout_s=options.attempt_timeout or target.attempt_timeout_s
        or ATTEMPT_TIMEOUT_S,
        on_session_reset=reset,
        tls=tls,
        cacert=cacert,
    )
    try:
        return run_command(command, value, client, out)
    finally:
        if store is not None and (session.to_json() != before or resets or store.damaged):
            try:
                store.save(session, was_reset=bool(resets))
            except OSError as e:
                _fail(f"warning: could not save the session to {store.path}: {_reason(e)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code, prints no traceback."""
    try:
        return _main(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stdin,
                     os.environ)
    except UsageError as e:
        _fail(str(e))
        return EXIT_USAGE
    except InvalidRequest as e:
        _fail(f"bad input ({e.code}): {e.message}")
        return EXIT_USAGE
    except TLSSetupError as e:
        _fail(str(e))
        return EXIT_USAGE
    except (NoServerAvailable, OutcomeUnknown) as e:   # WriteInDoubt included
        _fail(str(e) + _tls_hint(e))
        return EXIT_UNAVAILABLE
    except (ServerError, UnexpectedReply) as e:
        hint = ""
        if getattr(e, "code", None) == wire.Code.AUTH:
            hint = f"; give the password in ${ENV_PASSWORD} or with --password-file"
        _fail(f"server error: {e}{hint}")
        return EXIT_SERVER_ERROR
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); keep Python from complaining at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except SystemExit as e:   # --help and --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except Exception as e:
        _fail(f"internal error, please report it: {type(e).__name__}: {e}")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
