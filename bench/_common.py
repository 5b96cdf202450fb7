"""Helpers shared by the benchmarks: statistics, machine facts, the results file.

Nothing here prints: the scripts decide what to print and when.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import os
import platform
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence

import twisted
from replicad.config import Timers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_PATH = os.path.join(ROOT, "docs", "benchmarks.md")


# Statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values.

    With fewer than 100 samples p99 lies between the two largest values, so it is
    reported next to the max rather than instead of it.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p99: float
    max: float
    min: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(len(values), percentile(values, 50), percentile(values, 99),
                   max(values), min(values))


def ms(seconds: float) -> str:
    """Seconds -> "123" (milliseconds, no decimals), "-" for NaN."""
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


# Machine and invocation --------------------------------------------------------------


def command_line() -> str:
    """How this script was run, relative to the repository root when possible."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    python = os.path.relpath(sys.executable, ROOT)
    if python.startswith(".."):
        python = sys.executable
    return shlex.join([python, script, *sys.argv[1:]])


def progress_printer(started: float, clock=None):
    """The scripts' progress lines on stderr: ``[  12.3 s] text``, seconds since
    ``started`` on ``clock`` (default time.perf_counter)."""
    clock = clock or time.perf_counter

    def progress(text: str) -> None:
        print(f"[{clock() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    return progress


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def code_version() -> str:
    """The commit and whether the product code differs from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--",
                                "replicad", "twisted"], timeout=10).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    state = "with uncommitted changes in replicad/" if dirty else "clean"
    return f"commit {head.stdout.strip()} ({state})"


def code_fingerprint() -> str:
    """sha256 (12 hex digits) of the product's source files: replicad/ and the dropin.

    Taken at the start and at the end of a run, it tells whether the code under test
    changed meanwhile (replicas started later would run other code than earlier ones).
    """
    digest = hashlib.sha256()
    for top in ("replicad", os.path.join("twisted", "plugins")):
        for folder, dirs, files in sorted(os.walk(os.path.join(ROOT, top))):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, ROOT).encode() + b"\0")
                    try:
                        with open(path, "rb") as handle:
                            digest.update(handle.read())
                    except OSError:
                        digest.update(b"<unreadable>")
    return digest.hexdigest()[:12]


class CodeWatch:
    """The code version at the start of a run, compared with the end by ``lines()``."""

    def __init__(self) -> None:
        self.started = datetime.datetime.now().astimezone()
        self.version = code_version()
        self.fingerprint = code_fingerprint()

    def lines(self) -> list[str]:
        now = code_fingerprint()
        lines = [f"- started: {self.started.strftime('%Y-%m-%d %H:%M %Z')}",
                 f"- code: {self.version}; replicad/ sources sha256 {self.fingerprint}"]
        if now != self.fingerprint:
            lines.append(
                f"- **WARNING: the replicad sources changed during this run** (sha256 "
                f"{self.fingerprint} at the start, {now} at the end, now {code_version()}): "
                f"replicas started at different times ran different code"
            )
        return lines


def machine_lines() -> list[str]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return [
        f"- machine: {cores} cores (nproc), {_cpu_model()}, {platform.system()} "
        f"{platform.release()}",
        f"- python {platform.python_version()}, Twisted {twisted.__version__}, "
        f"SQLite {sqlite3.sqlite_version}",
    ]


def timers_line(timers: Timers | None = None) -> str:
    timers = timers or Timers()
    parts = [f"{f.name}={getattr(timers, f.name):g}" for f in dataclasses.fields(timers)]
    return "- timers (replicad.config.Timers, seconds): " + ", ".join(parts)


# The results file --------------------------------------------------------------------


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN {name}: written by a bench/ script with --write; edits inside are "
            f"overwritten -->", f"<!-- END {name} -->")


def write_section(name: str, body: str, path: str = RESULTS_PATH) -> None:
    """Replace the text between this benchmark's markers in path (append if absent)."""
    begin, end = _markers(name)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


# Fine-grained replica logs (diagnostics) -------------------------------------------------

TRACE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"
TRACE_LOGGER = "_common.trace_log_observer"


def add_output_arguments(parser, section: str, bigger_section: str) -> None:
    """--write and --section, the same for every benchmark script."""
    parser.add_argument("--write", action="store_true",
                        help=f"also replace the {section} section of docs/benchmarks.md")
    parser.add_argument("--section", default=section,
                        help="the docs/benchmarks.md section --write replaces (default "
                             f"{section}; e.g. {bigger_section} for a bigger run)")


def add_keep_argument(parser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs) and print where")


def publish(text: str, section: str, write: bool, progress) -> None:
    """Print the report; with --write, also replace this script's section of the results."""
    print(text)
    if write:
        write_section(section, text)
        progress(f"wrote the {section} section of {RESULTS_PATH}")


def trace_log_observer():
    """A ``twistd --logger`` factory: the usual text log, in the file named by --logfile,
    with microsecond timestamps (twistd's default format has whole seconds).

    Runs inside the replica process; bench/ must be on its PYTHONPATH.
    """
    from twisted.logger import textFileLogObserver

    path = sys.argv[sys.argv.index("--logfile") + 1]
    handle = open(path, "a", encoding="utf-8", buffering=1)  # lives as long as the process
    return textFileLogObserver(handle, timeFormat=TRACE_TIME_FORMAT)


_TRACE_LINE = re.compile(r"^(\S+) \[([^\]]*)\] (.*)$")


def read_trace(path: str, start: float, end: float) -> list[tuple[float, str, str]]:
    """(wall time, system, text) of the lines of a trace log between start and end."""
    events = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                match = _TRACE_LINE.match(line.rstrip("\n"))
                if not match:
                    continue
                try:
                    when = datetime.datetime.strptime(match.group(1), TRACE_TIME_FORMAT)
                except ValueError:
                    continue
                t = when.timestamp()
                if start <= t <= end:
                    events.append((t, match.group(2), match.group(3)))
    except OSError:
        pass
    return events
