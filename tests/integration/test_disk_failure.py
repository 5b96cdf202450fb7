"""A coordinator whose disk fails its fsync: real twistd replicas, replica 3's syncs made
to fail with EIO by the chaos suite's preloaded library (replicad/chaos/slowfsync.c;
needs a C compiler, skipped without one).

What must hold: the write whose COMMIT failed is answered ``ERR INDOUBT``, never "nothing
was done" (its WAL pages come back when the database is opened again: checked here on
a copy of replica 3's files); replica 3 stops with EX_IOERR (74) and one line in its
log; the others take over and the write, sent again with its request id, is applied
there once; replica 3, started again on a healthy disk, recovers and catches up, and
every replica holds the write.  Before, replica 3 answered ``ERR INTERNAL ... nothing was
done`` and went on serving (checked: this test fails there).  Marked slow (a real
cluster): the slow stage.
"""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from replicad.chaos import fsyncs
from replicad.client import BlockingClient
from replicad.cluster import LocalCluster, find_free_base_port
from replicad.datadir import DB_FILENAME
from replicad.replica import EXIT_DISK_FAILED
from tests.integration.lines import ask
from tests.test_chaos_fsyncs import built_library

pytestmark = pytest.mark.slow

RID = "d15cfa11.1"


def words(reply: str) -> list[str]:
    """The reply without its ``@...`` metadata."""
    parts = reply.split()
    return parts[1:] if parts and parts[0].startswith("@") else parts


def held_on_disk(cluster: LocalCluster, i: int, key: str, scratch: str) -> str | None:
    """The value replica i's database files hold for ``key`` (a copy opened, so that
    SQLite's recovery of the WAL runs on the copy)."""
    os.makedirs(scratch)
    for suffix in ("", "-wal"):
        source = os.path.join(cluster.replica_dir(i), DB_FILENAME + suffix)
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(scratch, DB_FILENAME + suffix))
    db = sqlite3.connect(os.path.join(scratch, DB_FILENAME))
    try:
        row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return None if row is None else row[0]


def started_with_a_disk_to_fail(tmp_path) -> tuple[LocalCluster, str]:
    """Three replicas started, replica 3 with the library preloaded; the path of its
    setting file (no fault set yet: fsyncs.set_failing, set_failing_reads)."""
    lib = built_library(tmp_path)
    setting = str(tmp_path / "disk-3")
    fsyncs.set_delay(setting, 0)
    cluster = LocalCluster(3, find_free_base_port(3), str(tmp_path / "cluster"))
    cluster.replica_env[3] = fsyncs.environment(lib, setting)
    cluster.start()
    return cluster, setting


def test_a_coordinator_whose_fsync_fails_answers_in_doubt_and_stops(tmp_path):
    cluster, setting = started_with_a_disk_to_fail(tmp_path)
    try:
        assert cluster.wait_ready(timeout_s=20) == 3
        assert words(ask(cluster.address(3), "PUT before x")) == ["OK"]

        fsyncs.set_failing(setting)
        reply = ask(cluster.address(3), f"@r=;w=;id={RID} PUT k v")
        assert words(reply)[:2] == ["ERR", "INDOUBT"], reply
        assert "may or may not have been applied" in reply, reply
        assert "nothing was done" not in reply, reply
        cluster.wait_until(lambda: not cluster.running(3), timeout_s=20,
                           what="replica 3 stopping after its failed COMMIT")
        assert cluster.exit_text(3) == f"exit status {EXIT_DISK_FAILED}"
        with open(cluster.log_path(3), encoding="utf-8") as log:
            assert "replica 3 stops: its disk failed during a COMMIT" in log.read()
        # Why "in doubt": the write its connection rolled back is in the WAL.
        assert held_on_disk(cluster, 3, "k", str(tmp_path / "copy")) == "v"

        # The client sends it again with its request id: applied by the next coordinator.
        others = BlockingClient([cluster.address(2), cluster.address(1)], timeout_s=20)
        cluster.wait_until(lambda: words(ask(cluster.address(2), f"@r=;w=;id={RID} PUT k v"))
                           [:1] == ["OK"], timeout_s=20, what="the write taken again by 2")

        fsyncs.set_delay(setting, 0)                   # the disk replaced: start it again
        cluster.start_replica(3)
        assert cluster.wait_ready(timeout_s=30, coordinator=3) == 3
        cluster.wait_until(lambda: len({str((s or {}).get("clock")) for s in
                                        cluster.statuses().values()}) == 1,
                           timeout_s=20, what="every replica at the same clock")
        for i in cluster.ids:
            assert words(ask(cluster.address(i), "GET k")) == ["VALUE", "v"]
        assert others.get("before") == "x"
    finally:
        cluster.stop()
