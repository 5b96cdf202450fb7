"""``replicad-cli``: one request to the cluster from a shell, with a session kept on disk.

It runs on BlockingClient, not on the reactor: a run makes one request and exits, so
plain sockets start faster, Ctrl-C is an ordinary KeyboardInterrupt (no reactor to stop
cleanly from a signal handler), and the retry policy is the same shared code anyway.

The session (read and write clocks, the coordinator last seen) lives in a JSON file so
that successive runs keep read-your-writes and monotonic reads.  Exit codes: 0 ok,
1 key not found, 2 usage error, 3 no server could serve or the outcome of a write is
unknown, 4 the server answered ERR, 130 interrupted, 70 a bug in this program.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from replicad import wire
from replicad.client import (
    BlockingClient,
    InvalidRequest,
    NoServerAvailable,
    OutcomeUnknown,
    ServerError,
    UnexpectedReply,
)
from replicad.config import ConfigError, default_config, load_config, parse_address
from replicad.session import ClientSession, SessionFileError

PROG = "replicad-cli"
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SERVER_ERROR = 4
EXIT_BUG = 70
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command line or local input; exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (exit 2) instead of usage + message."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see {PROG} --help)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"timeout must be greater than 0, got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before the command and, for convenience, after it too."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--servers", metavar="H:P,H:P", default=default(None),
                        help="client addresses of the replicas (default: 127.0.0.1:7001-7003)")
    parser.add_argument("--config", metavar="FILE", default=default(None),
                        help="take the replicas' client addresses from a cluster config file")
    parser.add_argument("--timeout", metavar="S", type=_positive_float, default=default(5.0),
                        help="give up after this many seconds (default: 5)")
    parser.add_argument("--session", metavar="FILE", default=default(None),
                        help="session file (default: $REPLICAD_SESSION or one per server list "
                             "under ~/.local/state/replicad)")
    parser.add_argument("--no-session", action="store_true", default=default(False),
                        help="use a fresh session and do not save it")
    parser.add_argument("--password-file", metavar="FILE", default=default(None),
                        help="the cluster's client password, first line of FILE (default: "
                             "$REPLICAD_PASSWORD; never on the command line, where ps shows it)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Talk to a replicad cluster.")
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    get = commands.add_parser("get", help="print the value of KEY")
    get.add_argument("key", metavar="KEY")
    put = commands.add_parser(
        "put", help="store VALUE under KEY",
        description="Store VALUE (the remaining arguments joined by single spaces, or - to "
                    "read it from stdin without its final newline) under KEY.",
    )
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE", nargs=argparse.REMAINDER)
    delete = commands.add_parser("del", help="delete KEY")
    delete.add_argument("key", metavar="KEY")
    keys = commands.add_parser("keys", help="list live keys, one a line")
    keys.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    status = commands.add_parser("status", help="show the state of the replica that answers")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    for sub in (get, delete, keys, status):
        _add_common(sub, suppress=True)
    return parser


# Servers, input and the session file ---------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to send requests, and what a cluster config (if any) tells besides."""

    servers: list[str]
    limits: wire.Limits | None = None        # size limits to check locally
    by_id: dict[int, str] = field(default_factory=dict)   # replica id -> client address


def resolve_target(args: argparse.Namespace) -> Target:
    if args.servers is not None and args.config is not None:
        raise UsageError("give --servers or --config, not both")
    try:
        if args.config is not None:
            config = load_config(args.config)
        elif args.servers is not None:
            parts = [p for p in args.servers.split(",") if p.strip()]
            if not parts:
                raise UsageError("--servers needs at least one host:port")
            return Target([str(parse_address(p, "server address")) for p in parts])
        else:
            config = default_config()
    except ConfigError as e:
        raise UsageError(str(e)) from None
    by_id = {i: str(config.members[i].client) for i in config.ids}
    return Target(list(by_id.values()), config.limits, by_id)


def default_session_path(servers: list[str]) -> str:
    explicit = os.environ.get("REPLICAD_SESSION")
    if explicit:
        return explicit
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    digest = hashlib.sha256(",".join(sorted(servers)).encode("utf-8")).hexdigest()[:12]
    return os.path.join(state, "replicad", f"session-{digest}.json")


def load_session(path: str) -> ClientSession:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return ClientSession()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read session file {path}: {_reason(e)}") from None
    try:
        return ClientSession.from_json(text)
    except SessionFileError as e:
        raise UsageError(
            f"{e} ({path}); delete that file to start a new session, or use --no-session"
        ) from None


def save_session(path: str, session: ClientSession) -> None:
    """Atomic replace; clocks already on disk are merged in, since another run may have
    saved a newer session meanwhile and session clocks only ever grow."""
    try:
        on_disk = load_session(path)
    except UsageError:
        on_disk = ClientSession()
    merged = ClientSession(
        session.read.merge(on_disk.read),
        session.write.merge(on_disk.write),
        session.last_server,
        session.coordinator,
        {**on_disk.addresses, **session.addresses},
    )
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(merged.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _value_from_args(words: list[str], stdin: TextIO) -> str:
    if not words:
        raise UsageError(f"put needs a VALUE after the KEY (see {PROG} put --help)")
    if words == ["-"]:
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
    return " ".join(words)


def check_input(args: argparse.Namespace, limits: wire.Limits | None, stdin: TextIO) -> None:
    """Reject what the protocol cannot carry before touching the network (exit 2)."""
    limits = limits or wire.Limits(max_key_bytes=2**62, max_value_bytes=2**62)
    try:
        if args.command in ("get", "put", "del"):
            wire.check_key(args.key, limits)
        if args.command == "keys" and args.prefix:
            wire.check_key(args.prefix, limits)
        if args.command == "put":
            args.value = _value_from_args(args.value, stdin)
            wire.check_value(args.value, limits)
    except wire.WireError as e:
        raise UsageError(_input_message(e)) from None


def _input_message(e: wire.WireError) -> str:
    return f"bad input ({e.code}): {e.message}"


# Running a command -----------------------------------------------------------------------


def run_command(args: argparse.Namespace, client: BlockingClient, out: TextIO) -> int:
    if args.command == "get":
        value = client.get(args.key)
        if value is None:
            _fail(f"key {args.key!r} not found")
            return EXIT_NOT_FOUND
        print(value, file=out)
    elif args.command == "put":
        client.put(args.key, args.value)
    elif args.command == "del":
        if not client.delete(args.key):
            _fail(f"key {args.key!r} not found")
            return EXIT_NOT_FOUND
    elif args.command == "keys":
        for key in client.keys(args.prefix):
            print(key, file=out)
    elif args.command == "status":
        status = client.status()
        if args.json:
            print(json.dumps(status, sort_keys=False), file=out)
        else:
            width = max(len(name) for name in status)
            for name in ("server", *[n for n in status if n != "server"]):
                print(f"{name:<{width}}  {_human(status[name])}", file=out)
    return EXIT_OK


def _human(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        if not value:
            return "-"
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def read_password(path: str | None) -> str | None:
    """The client password: first line of --password-file, else $REPLICAD_PASSWORD."""
    if path is None:
        return os.environ.get("REPLICAD_PASSWORD") or None
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read password file {path}: {_reason(e)}") from None
    if not password:
        raise UsageError(f"password file {path} is empty")
    return password


def _main(argv: Sequence[str] | None, out: TextIO, stdin: TextIO) -> int:
    args = build_parser().parse_args(argv)
    if args.session is not None and args.no_session:
        raise UsageError("give --session or --no-session, not both")
    target = resolve_target(args)
    check_input(args, target.limits, stdin)
    session_path = None
    if not args.no_session:
        session_path = args.session or default_session_path(target.servers)
    session = load_session(session_path) if session_path else ClientSession()
    before = session.to_json()
    # With a config we know every replica's address, so a reply naming the coordinator
    # sends the next request straight to it instead of through a forwarding replica.
    session.addresses.update(target.by_id)
    client = BlockingClient(target.servers, timeout_s=args.timeout, session=session,
                            password=read_password(args.password_file))
    try:
        return run_command(args, client, out)
    finally:
        if session_path and session.to_json() != before:
            try:
                save_session(session_path, session)
            except OSError as e:
                _fail(f"warning: could not save the session to {session_path}: {_reason(e)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code, prints no traceback."""
    try:
        return _main(argv, sys.stdout, sys.stdin)
    except UsageError as e:
        _fail(str(e))
        return EXIT_USAGE
    except InvalidRequest as e:
        _fail(f"bad input ({e.code}): {e.message}")
        return EXIT_USAGE
    except (NoServerAvailable, OutcomeUnknown) as e:   # WriteInDoubt included
        _fail(str(e))
        return EXIT_UNAVAILABLE
    except (ServerError, UnexpectedReply) as e:
        hint = ""
        if getattr(e, "code", None) == wire.Code.AUTH:
            hint = "; give the password in $REPLICAD_PASSWORD or with --password-file"
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

