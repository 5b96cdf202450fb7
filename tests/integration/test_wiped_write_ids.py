"""A wiped or restored replica never issues a write id again (DESIGN.md, "Data model
and identity").

The window, forced with the fault proxy: the coordinator's last write reaches one
follower only; the coordinator is killed and its disk wiped while that follower is cut
off; it comes back, copies the one peer it can reach (which lacks that write) and
coordinates again.  Numbered as before, from the clock it copied, its next write takes
the id of the write it can no longer see, and once the partition heals the replicas
hold different data for ever: each side thinks it has the other's write (the ids are
equal), so no pull ever brings it.  A replica that joins by copying takes a new origin
for its writes (identity.py; replica.py, ``_bind``), and so does one restored from a
backup taken before that write (backup.py, ``restore``): the two writes have two ids
and the heal brings each to every replica.  Without the new origin this test fails
(checked once for each way back): replica 1 never holds ``only-on-2`` and replica 2
never holds ``after-wipe``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from replicad import backup as backup_tool
from replicad.datadir import DB_FILENAME

from .test_partitions import converged, follows, try_put


def rows(cluster, i: int) -> dict[str, str | None]:
    """Replica i's records, read from its database file (a reader beside the replica)."""
    path = os.path.join(cluster.replica_dir(i), DB_FILENAME)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM kv"))
    finally:
        db.close()


def coordinates(cluster, i: int) -> bool:
    status = cluster.status(i)
    return status is not None and status["role"] == "coordinator" and status["ready"] == "yes"


@pytest.mark.parametrize("way_back", ["wiped", "restored"])
def test_a_replica_back_from_a_lost_disk_never_reissues_a_write_id(
        proxied, tmp_path, way_back):
    cluster = proxied(3)                                  # write_quorum = 1
    assert cluster.coordinator() == 3
    expected = {f"k{n}": str(n) for n in range(5)}
    for key, value in expected.items():
        assert try_put(cluster.addresses(), key, value)
    cluster.wait_until(lambda: converged(cluster), timeout_s=10, what="every replica holds k0-k4")
    backup = str(tmp_path / "replica-3.sqlite")
    assert backup_tool.main(["--data-dir", cluster.replica_dir(3), backup]) == 0

    cluster.kill(1)                       # 3's next write reaches 2 alone
    assert try_put([cluster.address(3)], "only-on-2", "v")   # acknowledged: wq = 1
    expected["only-on-2"] = "v"
    cluster.wait_until(lambda: cluster.status(2)["clock"] == cluster.status(3)["clock"],
                       timeout_s=10, what="replica 2 holds the write")

    cluster.kill(3)
    shutil.rmtree(cluster.replica_dir(3))
    if way_back == "restored":
        assert backup_tool.main(["--restore", backup, "--data-dir", cluster.replica_dir(3),
                                 "--id", "3"]) == 0
    cluster.isolate(2)                                    # the one holder, cut off
    cluster.start_replica(1)
    cluster.start_replica(3)
    cluster.wait_until(lambda: coordinates(cluster, 3) and follows(cluster, 1, 3),
                       timeout_s=20, what="replica 3 catches up with replica 1 and coordinates")
    assert try_put([cluster.address(3)], "after-wipe", "w")
    expected["after-wipe"] = "w"

    cluster.heal()
    cluster.wait_until(lambda: converged(cluster) and cluster.coordinator() == 3,
                       timeout_s=20, what="the replicas agree again")
    for i in cluster.ids:
        cluster.wait_until(lambda i=i: rows(cluster, i) == expected, timeout_s=10,
                           what=f"replica {i} holds every acknowledged write "
                                f"(it holds {rows(cluster, i)})")


def test_quorum_mode_a_wiped_coordinator_does_not_reissue_the_id_of_a_write_in_doubt(proxied):
    """Quorum mode, 5 replicas: a wiped replica copies 3 of the 4 others, which hold
    every acknowledged write but not one that was in doubt (pushed to replica 4 alone,
    never acknowledged).  Numbered on from the copy, the wiped coordinator's next,
    acknowledged, write took that write's id, and replica 4 never received it.  Without
    the new origin this test fails (checked once): replica 4 lacks ``after-wipe``."""
    cluster = proxied(5, write_quorum="majority", quorum_timeout=0.5)
    assert cluster.coordinator() == 5
    for n in range(5):
        assert try_put(cluster.addresses(), f"k{n}", str(n))
    cluster.wait_until(lambda: converged(cluster), timeout_s=10, what="every replica holds k0-k4")

    for i in (1, 2, 3):
        cluster.kill(i)
    assert not try_put([cluster.address(5)], "in-doubt", "v", timeout_s=2.0)  # 2 of 5
    cluster.wait_until(lambda: cluster.status(4)["clock"] == cluster.status(5)["clock"],
                       timeout_s=10, what="replica 4 holds the write in doubt")

    cluster.kill(5)
    shutil.rmtree(cluster.replica_dir(5))
    cluster.isolate(4)                                    # the one holder, cut off
    for i in (1, 2, 3, 5):
        cluster.start_replica(i)
    cluster.wait_until(lambda: coordinates(cluster, 5), timeout_s=30,
                       what="wiped replica 5 copies replicas 1-3 and coordinates")
    assert try_put([cluster.address(5)], "after-wipe", "w")   # acknowledged by a majority

    cluster.heal()
    cluster.wait_until(lambda: converged(cluster) and cluster.coordinator() == 5,
                       timeout_s=20, what="the replicas agree again")
    reference = rows(cluster, 5)
    assert {key: reference.get(key) for key in ("k0", "k4", "after-wipe")} == {
        "k0": "0", "k4": "4", "after-wipe": "w"}
    for i in cluster.ids:
        cluster.wait_until(lambda i=i: rows(cluster, i) == reference, timeout_s=10,
                           what=f"replica {i} holds what replica 5 holds "
                                f"(it holds {rows(cluster, i)}, 5 holds {reference})")
