"""``make soak``: run the whole pytest suite N times and say which test failed in which run.

    python tests/soak.py [--runs N] [--dir .soak] [--run-timeout S] [-- PYTEST-ARGS...]

A suite that passes once may still fail one run in ten (a deadline that depends on the
machine's speed, a port taken between check and bind); only repetition shows it.  Each
run's output goes to DIR/run-K.log and is kept only if the run failed.  Exit status 0
if every run passed, 1 if any failed (or timed out), 130 if interrupted (after the
summary of the runs so far).  Not a test module: pytest and trial do not collect it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RUNS = 20
DEFAULT_RUN_TIMEOUT_S = 1800.0
# -rfE: a "FAILED node - reason" / "ERROR node - reason" line per problem at the end.
PYTEST = ["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"]
PROBLEM_LINE = re.compile(r"^(FAILED|ERROR) (\S+)")
SUMMARY_LINE = re.compile(r"^=* ?\d+ (passed|failed|error|errors|skipped|deselected)\b.* in ")


@dataclass
class Run:
    number: int
    status: int | None          # None: killed at the run timeout
    seconds: float
    summary: str                # pytest's last line ("412 passed in 140.1s")
    problems: list[str] = field(default_factory=list)   # "FAILED tests/x.py::test_y"

    @property
    def passed(self) -> bool:
        return self.status == 0


def parse_output(text: str) -> tuple[list[str], str]:
    """(FAILED/ERROR node ids, pytest's summary line) from a run's output."""
    problems, summary = [], ""
    for line in text.splitlines():
        match = PROBLEM_LINE.match(line)
        if match:
            problems.append(f"{match.group(1)} {match.group(2)}")
        elif SUMMARY_LINE.match(line):
            summary = line.strip("= ")
    return problems, summary


def run_once(number: int, log_path: str, pytest_args: Sequence[str],
             timeout_s: float) -> Run:
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        # Its own session, so that a timeout kills pytest and whatever it started.
        proc = subprocess.Popen([sys.executable, *PYTEST, *pytest_args], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = None
        except BaseException:   # Ctrl-C: pytest got it too (same terminal); do not wait
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
    with open(log_path, encoding="utf-8", errors="replace") as log:
        problems, summary = parse_output(log.read())
    return Run(number, status, time.monotonic() - started, summary, problems)


def describe(run: Run, runs: int, log_path: str) -> str:
    head = f"soak: run {run.number}/{runs}"
    if run.passed:
        return f"{head} passed ({run.summary or f'{run.seconds:.0f} s'})"
    if run.status is None:
        why = f"timed out after {run.seconds:.0f} s"
    else:
        why = run.summary or f"pytest exited with status {run.status}"
    named = "".join(f"\n    {problem}" for problem in run.problems)
    return f"{head} FAILED ({why}); output kept in {log_path}{named}"


def report(done: list[Run], runs: int, log_dir: str) -> str:
    failed = [run for run in done if not run.passed]
    lines = [f"soak: {len(done) - len(failed)} of {len(done)} runs passed"
             + (f" (stopped after {len(done)} of {runs})" if len(done) < runs else "")]
    by_test: dict[str, list[int]] = {}
    for run in failed:
        for problem in run.problems:
            by_test.setdefault(problem, []).append(run.number)
    for problem, numbers in sorted(by_test.items()):
        lines.append(f"  {problem} in run{'s' if len(numbers) > 1 else ''} "
                     f"{', '.join(map(str, numbers))}")
    for run in failed:
        if not run.problems:
            why = ("timed out" if run.status is None
                   else f"pytest exited with status {run.status}")
            lines.append(f"  run {run.number}: {why}, no test named (see its log)")
    if failed:
        lines.append("failing runs' output: " + ", ".join(
            os.path.join(log_dir, f"run-{run.number}.log") for run in failed))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"how many times to run the suite (default {DEFAULT_RUNS})")
    parser.add_argument("--dir", default=os.path.join(ROOT, ".soak"),
                        help="where failing runs' output is kept (default .soak)")
    parser.add_argument("--run-timeout", type=float, default=DEFAULT_RUN_TIMEOUT_S,
                        metavar="S", help="kill a run that takes longer (default 1800)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    shown = os.path.relpath(args.dir)
    log_dir = args.dir if shown.startswith(os.pardir) else shown   # for messages
    os.makedirs(args.dir, exist_ok=True)
    for name in os.listdir(args.dir):   # a previous soak's logs would be mistaken for ours
        if re.fullmatch(r"run-\d+\.log", name):
            os.unlink(os.path.join(args.dir, name))

    done: list[Run] = []
    status = 0
    print(f"soak: running the suite {args.runs} times (pytest {' '.join(PYTEST[2:])} "
          f"{' '.join(args.pytest_args)})".rstrip(), flush=True)
    try:
        for number in range(1, args.runs + 1):
            log_path = os.path.join(log_dir, f"run-{number}.log")
            run = run_once(number, log_path, args.pytest_args, args.run_timeout)
            done.append(run)
            if run.passed:
                os.unlink(log_path)
            print(describe(run, args.runs, log_path), flush=True)
    except KeyboardInterrupt:
        status = 130
    print(report(done, args.runs, log_dir), flush=True)
    if status:
        return status
    return 0 if all(run.passed for run in done) else 1


if __name__ == "__main__":
    sys.exit(main())
