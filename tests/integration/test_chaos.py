"""Issue #9 item 3: short chaos runs in quorum mode, then the checker.

About 30 s of three real replicas behind the fault proxy, three client sessions at a
time, and every fault kind on a fixed seed; the checker must find no violation and no
acknowledged write lost.  A second run (40 s) fills disks (the ``full`` fault: a tmpfs
per replica, root only), steps wall clocks (``clock``: libfaketime), slows links
(``slow``: the fault proxy's delay) and stalls fsyncs (``fsync``: a preloaded library)
between kills and pauses; a third (25 s) fails disks (``eio``: fsyncs fail with EIO, the
replica stops).  The long runs are in docs/reliability.md.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from replicad.chaos import clocks, disks, fsyncs
from replicad.chaos.checker import check, format_report
from replicad.chaos.history import read_history
from replicad.chaos.runner import RunConfig, run
from replicad.chaos.schedule import ALL_KINDS, FaultKind

# Where a failing run's history, logs and data are kept (tmp_path is rotated away).
EVIDENCE_DIR = os.environ.get("REPLICAD_CHAOS_EVIDENCE", "/tmp/replicad-chaos-failures")
SEED = 18   # its 30 s schedule: wipe, split, isolate the coordinator, kill, one-way cut
# With full,clock,slow,fsync,kill,pause, seed 3's 40 s: kill the coordinator, delay its
# links by 180 ms, 1's clock an hour back, pause 3, stall the coordinator's fsyncs by
# 2.9 s, fill its disk.
FULL_SEED = 3


@pytest.mark.integration
@pytest.mark.slow      # 30 s of one worker: the slow stage, so `make test` stays under 5 min
def test_a_short_quorum_mode_run_keeps_every_promise(tmp_path):
    lines: list[str] = []
    config = RunConfig(out_dir=str(tmp_path / "chaos"), seed=SEED, duration_s=30.0,
                       replicas=3, clients=3, faults=ALL_KINDS, write_quorum="majority")
    result, events, report, summary = run_and_check(config, lines)
    stats = report.stats
    assert stats["writes"]["acknowledged"] > 500, summary
    assert stats["converged"], summary
    assert sum(stats["faults"].values()) >= 4 and stats["fault_errors"] == 0, summary
    assert result.crashes == 0, [e for e in events if e["type"] == "crash"]
    writes = [e for e in events if e["type"] == "invoke" and e["kind"] != "get"]
    assert writes and all(e.get("rid") for e in writes), "every write carries a request id"
    assert any(line.startswith("progress") for line in lines)
    # The bugs the long runs found are fixed (6be9ee9, 9ea17bd): any violation fails.
    assert report.ok, summary
    assert stats["writes"]["lost_total"] == 0, summary


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_run_with_full_disks_stepped_clocks_slow_links_and_stalled_fsyncs(
        tmp_path):
    """A full coordinator answers ERR NOSPACE (the checker holds it to "nothing was
    done": a value of such a write read anywhere, ever, is a violation), a stepped wall
    clock changes nothing, a slow link and a stalled disk cost time, and no
    acknowledged write is lost across them."""
    try:
        disks.check()
        clocks.library()
        fsyncs.compiler()
    except (disks.DiskError, clocks.ClockError, fsyncs.FsyncError) as e:
        pytest.skip(str(e))
    config = RunConfig(out_dir=str(tmp_path / "chaos"), seed=FULL_SEED, duration_s=40.0,
                       replicas=3, clients=3, write_quorum="majority",
                       faults=(FaultKind.FULL, FaultKind.CLOCK, FaultKind.SLOW,
                               FaultKind.FSYNC, FaultKind.KILL, FaultKind.PAUSE))
    result, events, report, summary = run_and_check(config, [])
    stats = report.stats
    assert all(stats["faults"].get(kind, 0) >= 1
               for kind in ("full", "clock", "slow", "fsync")), summary
    assert stats["fault_errors"] == 0, summary
    refused = [e for e in events if e["type"] == "complete" and e.get("status") == "NOSPACE"]
    assert refused, "a full coordinator refused writes: the fault bit"
    assert stats["writes"]["acknowledged"] > 300, summary
    assert stats["converged"] and result.crashes == 0, summary
    assert report.ok, summary
    assert stats["writes"]["lost_total"] == 0, summary


# With eio,kill,pause, seed 6's 25 s: the coordinator's fsyncs fail, pause the (new)
# coordinator, kill 3, the coordinator's fsyncs fail again.
EIO_SEED = 6


@pytest.mark.integration
@pytest.mark.slow      # 25 s of one worker
def test_a_short_run_with_failing_disks_loses_no_acknowledged_write(tmp_path):
    """A coordinator whose fsyncs fail answers the writes of that COMMIT in doubt and
    stops (exit 74: replica.py); the others serve, it is started again on a healthy
    disk and recovers what its WAL held, and no acknowledged write is lost, no value
    of a refused one appears."""
    try:
        fsyncs.compiler()
    except fsyncs.FsyncError as e:
        pytest.skip(str(e))
    config = RunConfig(out_dir=str(tmp_path / "chaos"), seed=EIO_SEED, duration_s=25.0,
                       replicas=3, clients=3, write_quorum="majority",
                       faults=(FaultKind.EIO, FaultKind.KILL, FaultKind.PAUSE))
    result, events, report, summary = run_and_check(config, [])
    stats = report.stats
    assert stats["faults"].get("eio", 0) == 2 and stats["fault_errors"] == 0, summary
    exits = [text for e in events if e["type"] == "fault" and e.get("kind") == "eio"
             for text in e.get("exits", {}).values()]
    assert exits and set(exits) == {"exit status 74"}, exits    # the fault bit, as meant
    assert stats["writes"]["acknowledged"] > 200, summary
    assert stats["converged"] and result.crashes == 0, summary
    assert report.ok, summary
    assert stats["writes"]["lost_total"] == 0, summary


def run_and_check(config: RunConfig, lines: list[str]):
    """Run, check; a failing run's directory is kept in EVIDENCE_DIR."""
    result = run(config, progress=lines.append)
    events = read_history(result.history_path)
    report = check(events)
    summary = format_report(report)
    print(summary)   # shown by pytest when the test fails
    if not report.ok or report.stats["writes"]["lost_total"]:
        kept = os.path.join(EVIDENCE_DIR, f"seed{config.seed}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copytree(config.out_dir, kept, dirs_exist_ok=True)
        summary += f"\nhistory, logs and data kept in {kept}"
    return result, events, report, summary
