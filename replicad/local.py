"""``replicad-local``: a replicad cluster on this machine until Ctrl-C, or the demo.

The command line, the banner, the watch loop and signal handling; starting and stopping
the replicas is replicad/cluster.py's job, the narrated walkthrough (``--demo``)
replicad/demo.py's.  This is a tool a person runs in a terminal, so it prints.

The banner's commands must work as printed, pasted into another terminal in the directory
replicad-local was started from: ``replicad-cli`` is named by its path (``make cluster``
does not put .venv/bin on PATH), with ``--servers`` for this cluster's addresses (it may
not be on the default ports) and ``--password-file`` when a client password is set.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from replicad import config as cfg
from replicad import demo as walkthrough
from replicad.cluster import ClusterError, LocalCluster, parse_settings
from replicad.usage import UsageError

PROG = "replicad-local"
DEFAULT_DATA_DIR = "./replicad-local"
DEMO_DATA_DIR = "./replicad-demo"
PASSWORD_FILE = "client-password"   # in the data dir, written when client_password is set
# A new cluster first agrees on a cluster id (made by its first coordinator), then serves.
READY_TIMEOUT_S = 30.0
WATCH_INTERVAL_S = 0.5

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUG = 70


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (exit 2) instead of usage + message."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see {PROG} --help)")


class _Terminated(Exception):
    """SIGTERM or SIGHUP: stop like on Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run a replicad cluster on this machine.")
    parser.add_argument("--size", type=int, default=3, help="number of replicas (default 3)")
    parser.add_argument("--base-port", type=int, default=cfg.DEFAULT_CLIENT_BASE_PORT,
                        help="replica i listens on base+i (clients) and base+100+i (peers)")
    parser.add_argument("--data-dir", default=None,
                        help=f"config, logs and databases, kept between runs (default "
                             f"{DEFAULT_DATA_DIR}, or {DEMO_DATA_DIR} with --demo)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a [cluster] setting, e.g. --set write_quorum=2 (repeatable)")
    parser.add_argument("--demo", action="store_true",
                        help="run a narrated failover walkthrough, then stop")
    parser.add_argument("--no-admin", dest="admin", action="store_false",
                        help="no HTTP admin ports (by default replica i serves its admin "
                             "page, /metrics, /healthz and /readyz on base+200+i)")
    return parser


def cluster_from_args(args: argparse.Namespace) -> LocalCluster:
    """The cluster the command line describes (nothing started); UsageError, ClusterError."""
    try:
        overrides = parse_settings(args.set)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data_dir = args.data_dir or (DEMO_DATA_DIR if args.demo else DEFAULT_DATA_DIR)
    return LocalCluster(args.size, args.base_port, data_dir, overrides=overrides,
                        admin=args.admin)


# What to print ---------------------------------------------------------------------------


def shown_path(path: str, cwd: str | None = None) -> str:
    """path as a user in cwd would type it: relative when it is under cwd, else absolute."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, cwd or os.getcwd())
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return path
    return relative


def cli_program(executable: str | None = None, cwd: str | None = None) -> list[str]:
    """The words that run replicad-cli from cwd: the console script installed next to
    this interpreter (found by path, as .venv/bin is usually not on PATH), else the
    interpreter with ``-m replicad.cli``."""
    executable = os.path.abspath(executable or sys.executable)
    script = os.path.join(os.path.dirname(executable), "replicad-cli")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [_as_command(shown_path(script, cwd))]
    return [_as_command(shown_path(executable, cwd)), "-m", "replicad.cli"]


def _as_command(path: str) -> str:
    # A word without a slash is looked up on PATH, not in the current directory.
    return path if os.sep in path else os.path.join(os.curdir, path)


def password_path(cluster: LocalCluster) -> str:
    return os.path.join(cluster.data_dir, PASSWORD_FILE)


def write_password_file(cluster: LocalCluster) -> str | None:
    """The client password in a file for ``--password-file`` (owner only), if one is set."""
    if cluster.password is None:
        return None
    path = password_path(cluster)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write(cluster.password + "\n")
    return path


def cli_words(cluster: LocalCluster, executable: str | None = None,
              cwd: str | None = None) -> list[str]:
    """replicad-cli with the options that point it at this cluster."""
    words = [*cli_program(executable, cwd), "--servers", ",".join(cluster.addresses())]
    if cluster.password is not None:
        words += ["--password-file", shown_path(password_path(cluster), cwd)]
    return words


def suggested_commands(cluster: LocalCluster, coordinator: int,
                       executable: str | None = None, cwd: str | None = None) -> list[str]:
    """Shell lines to try the cluster from cwd, each working as printed (the last one
    kills the coordinator, so it comes last)."""
    cli = shlex.join(cli_words(cluster, executable, cwd))
    pid_file = shlex.quote(shown_path(cluster.pid_path(coordinator), cwd))
    return [
        f"{cli} put greeting hello world",
        f"{cli} get greeting",
        f"{cli} status",
        f"kill -9 $(cat {pid_file})",
    ]


def print_banner(cluster: LocalCluster, coordinator: int, out: TextIO,
                 cluster_id: str | None = None, executable: str | None = None,
                 cwd: str | None = None) -> None:
    data_dir = shown_path(cluster.data_dir, cwd)
    identity = f" (cluster id {cluster_id})" if cluster_id else ""
    print(f"{PROG}: {cluster.size} replicas are up; replica {coordinator} is the "
          f"coordinator{identity}.", file=out)
    for i in cluster.ids:
        admin = f"admin {cluster.admin_url(i)}  " if cluster.admin else ""
        print(f"  replica {i}: client {cluster.address(i)}  peer {cluster.peer_address(i)}  "
              f"{admin}log {shown_path(cluster.log_path(i), cwd)}", file=out)
    print_watch(cluster, out)
    print("Try, in another terminal in this directory:", file=out)
    *commands, kill = suggested_commands(cluster, coordinator, executable, cwd)
    for command in commands:
        print(f"  {command}", file=out)
    print(f"  {kill}   # then see another replica take over", file=out)
    print(f"Data is kept in {data_dir} between runs. Press Ctrl-C to stop.", file=out,
          flush=True)


def print_watch(cluster: LocalCluster, out: TextIO) -> None:
    """Where to watch the cluster in a browser (nothing without admin ports)."""
    if not cluster.admin:
        return
    print(f"Watch the whole cluster live in a browser: {cluster.admin_url(1)} (any "
          f"replica's admin page shows every replica; also /metrics, /healthz, /readyz)",
          file=out, flush=True)


def print_starting(cluster: LocalCluster, new: bool, out: TextIO) -> None:
    first, last = cluster.address(1), cluster.client_address(cluster.size).port
    where = f"{first}-{last}" if cluster.size > 1 else first
    data_dir = shown_path(cluster.data_dir)
    if new:
        how = (f"a new cluster in {data_dir}: the replicas agree on a cluster id, then elect "
               f"a coordinator")
    else:
        how = f"with the data kept in {data_dir}"
    print(f"{PROG}: starting {cluster.size} replicas on {where} ({how})", file=out,
          flush=True)


# Running ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        cluster = cluster_from_args(args)
        cluster.write_config()   # a bad --set is a usage error, found before starting
    except (UsageError, ClusterError, cfg.ConfigError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:   # --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated()

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        return _run(cluster, args.demo)
    except (KeyboardInterrupt, _Terminated):
        print(f"{PROG}: stopping", file=sys.stderr)
        return EXIT_OK
    except (ClusterError, cfg.ConfigError, TimeoutError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        print(f"{PROG}: internal error, please report it: {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_BUG
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave orphans behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(cluster: LocalCluster, demo: bool) -> int:
    new = not any(os.path.exists(cluster.replica_dir(i)) for i in cluster.ids)
    print_starting(cluster, new, sys.stdout)
    cluster.start()
    coordinator = cluster.wait_ready(timeout_s=READY_TIMEOUT_S)
    if demo:
        print_watch(cluster, sys.stdout)
        try:
            walkthrough.run(cluster, out=sys.stdout)
        except walkthrough.DemoError as e:
            print(f"{PROG}: demo failed: {e}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    write_password_file(cluster)
    status = cluster.status(coordinator) or {}
    cluster_id = status.get("cluster_id")
    print_banner(cluster, coordinator, sys.stdout,
                 cluster_id=cluster_id if isinstance(cluster_id, str) else None)
    _watch(cluster, sys.stdout)
    return EXIT_OK   # not reached: only a signal ends _watch


def _watch(cluster: LocalCluster, out: TextIO) -> None:
    """Until a signal: report replicas that exit (a user killing one to try failover)."""
    reported: set[int] = set()
    while True:
        for i in cluster.ids:
            if not cluster.running(i) and i not in reported:
                reported.add(i)
                print(f"{PROG}: replica {i} exited ({cluster.exit_text(i)})",
                      file=out, flush=True)
            elif cluster.running(i):
                reported.discard(i)
        time.sleep(WATCH_INTERVAL_S)


if __name__ == "__main__":
    sys.exit(main())
