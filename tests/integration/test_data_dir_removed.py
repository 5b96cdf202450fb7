"""A coordinator whose data directory is deleted while it runs (an operator's rm -rf,
a volume unmounted under it): real twistd replicas.

What must hold: replica 3 stops with EX_IOERR (74) and one line in its log within its
check (replica.DATA_FILE_CHECK_S), the others elect a coordinator and take writes, and
replica 3, started again on the empty directory, copies everything from them, the
writes it acknowledged before included.  Before, SQLite went on writing to the
unlinked file without a word: replica 3 stayed the coordinator and acknowledged writes
into a file no one could open again (checked: this test fails there, replica 3 still
running at the deadline).  Marked slow (a real cluster): the slow stage.
"""

from __future__ import annotations

import shutil

import pytest

from replicad.client import BlockingClient
from replicad.cluster import LocalCluster, find_free_base_port
from replicad.replica import EXIT_DISK_FAILED

pytestmark = pytest.mark.slow


def test_a_coordinator_whose_data_directory_is_deleted_stops_and_copies_back(tmp_path):
    cluster = LocalCluster(3, find_free_base_port(3), str(tmp_path / "cluster"))
    cluster.start()
    try:
        assert cluster.wait_ready(timeout_s=20) == 3
        client = BlockingClient([cluster.address(i) for i in (3, 2, 1)], timeout_s=20)
        for n in range(20):
            client.put(f"before{n}", str(n))

        shutil.rmtree(cluster.replica_dir(3))
        cluster.wait_until(lambda: not cluster.running(3), timeout_s=20,
                           what="replica 3 stopping after its data directory was deleted")
        assert cluster.exit_text(3) == f"exit status {EXIT_DISK_FAILED}"
        with open(cluster.log_path(3), encoding="utf-8") as log:
            assert "replica 3 stops: its database file is gone: " in log.read()
        client.put("after", "x")                 # the others serve
        cluster.wait_until(lambda: cluster.coordinator() == 2, timeout_s=20,
                           what="replicas 1 and 2 naming 2 the coordinator")

        cluster.start_replica(3)                 # on an empty directory: a full copy
        assert cluster.wait_ready(timeout_s=30, coordinator=3) == 3
        only_3 = BlockingClient([cluster.address(3)], timeout_s=20)
        assert [only_3.get(f"before{n}") for n in range(20)] == [str(n) for n in range(20)]
        assert only_3.get("after") == "x"
    finally:
        cluster.stop()
