"""``python -m replicad.chaos [run|check|plot] ...`` (plain ``python -m replicad.chaos``
runs).  Exit status: 0 no violation, 1 violations found, 2 usage or unreadable input,
3 the run itself failed (the cluster did not start)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys

from replicad.chaos.checker import CheckError, check, format_report
from replicad.chaos.history import HistoryError, read_history
from replicad.chaos.schedule import ScheduleError, make_schedule, parse_kinds

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m replicad.chaos",
                                     description="Fault injection and history checking "
                                                 "for replicad.")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run a cluster under faults and check the history")
    run.add_argument("--seed", type=int, default=None,
                     help="seeds the fault schedule and the clients' choices (default: random,"
                          " printed)")
    run.add_argument("--duration", type=float, default=30.0, help="seconds of faults and "
                     "client load (default 30)")
    run.add_argument("--replicas", type=int, choices=(3, 5), default=3)
    run.add_argument("--clients", type=int, default=3, help="concurrent sessions (threads)")
    run.add_argument("--faults", default="all",
                     help="comma list of kill,pause,isolate,split,oneway,bridge,wipe,full,"
                          "clock,slow,fsync,eio,eioread,delete; all (the first seven: full needs "
                          "root, clock libfaketime, fsync, eio and eioread a C compiler); "
                          "none (default all)")
    run.add_argument("--write-quorum", choices=("1", "majority"), default="majority")
    run.add_argument("--out", default=None, help="directory for the history, the cluster's "
                     "data and logs, the report and the plot (default chaos-out/<time>-<seed>)")
    run.add_argument("--keys", type=int, default=8, help="size of the key set (default 8)")
    run.add_argument("--op-timeout", type=float, default=5.0,
                     help="client deadline per operation, retries included (default 5 s)")
    run.add_argument("--session-ops", type=int, default=100,
                     help="mean operations per session before a client starts a new one")
    run.add_argument("--converge-timeout", type=float, default=60.0)
    run.add_argument("--progress", type=float, default=5.0, help="seconds between progress "
                     "lines")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="another cluster setting (repeatable)")
    run.add_argument("--no-plot", action="store_true", help="do not draw timeline.png")
    run.add_argument("--dry-run", action="store_true", help="print the schedule and stop")
    chk = commands.add_parser("check", help="check a history; exit 1 on any violation")
    chk.add_argument("history")
    chk.add_argument("--json", action="store_true", help="the full report as JSON")
    chk.add_argument("--max", type=int, default=50, help="violations printed (default 50)")
    plt = commands.add_parser("plot", help="draw a history's timeline as a PNG")
    plt.add_argument("history")
    plt.add_argument("-o", "--output", default=None,
                     help="PNG path (default: timeline.png beside the history)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "check", "plot", "-h", "--help"):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "plot":
        return _plot(args.history, args.output)
    return _run(args)


def _load(path: str):
    try:
        return read_history(path)
    except (OSError, HistoryError) as e:
        print(f"cannot read {path}: {e}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    events = _load(args.history)
    if events is None:
        return EXIT_USAGE
    try:
        report = check(events)
    except CheckError as e:
        print(f"{args.history} is not a usable history: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report, args.max))
    return EXIT_OK if report.ok else EXIT_VIOLATIONS


def _plot(history: str, output: str | None) -> int:
    from replicad.chaos.plot import PlotUnavailable, plot

    events = _load(history)
    if events is None:
        return EXIT_USAGE
    path = output or os.path.join(os.path.dirname(os.path.abspath(history)), "timeline.png")
    try:
        lost = check(events).lost_ops
    except CheckError:
        lost = []
    try:
        plot(events, path, lost_ops=lost)
    except PlotUnavailable as e:
        print(f"no plot: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"timeline: {path}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from replicad.chaos.runner import RunConfig, run
    from replicad.cluster import ClusterError, parse_settings

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        kinds = parse_kinds(args.faults)
        settings = parse_settings(args.set)
        schedule = make_schedule(seed, args.duration, args.replicas, kinds)
    except (ScheduleError, ValueError) as e:
        print(f"usage error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.clients < 1 or args.keys < 1 or args.session_ops < 1:
        print("usage error: --clients, --keys and --session-ops must be at least 1",
              file=sys.stderr)
        return EXIT_USAGE
    from replicad.chaos import clocks, disks, fsyncs
    from replicad.chaos.schedule import DISK_ERRORS, FaultKind

    try:    # what the faults asked for need of this machine, said before anything starts
        if FaultKind.FULL in kinds:
            disks.check()
        if FaultKind.CLOCK in kinds:
            clocks.library()
        if {FaultKind.FSYNC, *DISK_ERRORS} & set(kinds):
            fsyncs.compiler()
    except ClusterError as e:
        print(f"cannot run these faults here: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    if args.dry_run:
        for fault in schedule:
            print(f"{fault.start_s:7.2f} s  {fault.describe()}")
        return EXIT_OK
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join("chaos-out", f"{stamp}-q{args.write_quorum}-seed{seed}")
    config = RunConfig(
        out_dir=os.path.abspath(out), seed=seed, duration_s=args.duration,
        replicas=args.replicas, clients=args.clients, faults=kinds,
        write_quorum=args.write_quorum, keys=args.keys, op_timeout_s=args.op_timeout,
        session_ops=args.session_ops, converge_timeout_s=args.converge_timeout,
        progress_interval_s=args.progress, extra_settings=settings,
    )
    try:
        run(config, progress=lambda line: print(line, flush=True))
    except ClusterError as e:
        print(f"the run failed: {e}", file=sys.stderr)
        print(f"history so far: {config.history_path}", file=sys.stderr)
        return EXIT_RUN_FAILED
    events = _load(config.history_path)
    if events is None:
        return EXIT_RUN_FAILED
    try:
        report = check(events)
    except CheckError as e:
        print(f"the history is not usable: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    text = format_report(report)
    with open(os.path.join(out, "report.txt"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(report.to_json(), handle, indent=2)
    print(text)
    if not args.no_plot:
        from replicad.chaos.plot import PlotUnavailable, plot

        try:
            path = os.path.join(out, "timeline.png")
            print(f"timeline: {plot(events, path, lost_ops=report.lost_ops)}")
        except PlotUnavailable as e:
            print(f"no timeline plot: {e}")
    print(f"history: {config.history_path}")
    return EXIT_OK if report.ok else EXIT_VIOLATIONS


if __name__ == "__main__":
    sys.exit(main())
