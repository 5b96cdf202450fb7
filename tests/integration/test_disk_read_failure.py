"""A coordinator whose disk cannot read its pages: real twistd replicas, replica 3's
preads made to fail with EIO by the chaos suite's preloaded library
(replicad/chaos/slowfsync.c, setting ``EIOREAD``; needs a C compiler, skipped without
one).

What must hold: the GET that meets the bad page is answered ``ERR UNAVAILABLE`` (nothing
was done: ask another replica), so a client goes on to the next server, where the value
is; replica 3 stops with EX_IOERR (74) and one line in its log, and the others elect a
coordinator.  Before, replica 3 answered ``ERR INTERNAL`` to every such read, went on
answering pings and stayed the coordinator: its clients were stranded (checked: this
test fails there).  The read is forced to miss SQLite's page cache: the database is
larger than the cache, replica 3 is restarted (cold), and the key read is one of the
first written, whose page the restart's reads (STATUS counts every live key) pushed
out.  Marked slow (a real cluster): the slow stage.
"""

from __future__ import annotations

import signal

import pytest

from replicad.chaos import fsyncs
from replicad.client import BlockingClient
from replicad.replica import EXIT_DISK_FAILED
from tests.integration.lines import ask, connect, read_lines
from tests.integration.test_disk_failure import started_with_a_disk_to_fail, words

pytestmark = pytest.mark.slow

KEYS = 3000          # of VALUE_BYTES each: about 10 MB, five times SQLite's 2 MB cache
VALUE_BYTES = 3000


def value(i: int) -> str:
    return f"{i:05d}" + "v" * (VALUE_BYTES - 5)


def put_all(address: str) -> None:
    """KEYS writes pipelined on one connection, every one answered OK."""
    with connect(address) as conn:
        for start in range(0, KEYS, 500):
            batch = range(start, min(start + 500, KEYS))
            conn.sendall(b"".join(f"PUT k{i:05d} {value(i)}\n".encode() for i in batch))
            replies = read_lines(conn, len(batch))
            assert [words(r)[:1] for r in replies] == [["OK"]] * len(batch), replies[:3]


def test_a_coordinator_that_cannot_read_a_page_stops_and_its_client_goes_on(tmp_path):
    cluster, setting = started_with_a_disk_to_fail(tmp_path)
    try:
        assert cluster.wait_ready(timeout_s=20) == 3
        put_all(cluster.address(3))
        cluster.kill(3, signal.SIGTERM)            # a clean stop: its cache starts cold
        cluster.start_replica(3)
        assert cluster.wait_ready(timeout_s=30, coordinator=3) == 3

        fsyncs.set_failing_reads(setting)
        reply = ask(cluster.address(3), "GET k00000")
        assert words(reply)[:2] == ["ERR", "UNAVAILABLE"], reply
        assert "replica 3 stops: its disk failed" in reply, reply
        cluster.wait_until(lambda: not cluster.running(3), timeout_s=20,
                           what="replica 3 stopping after a read its disk failed")
        assert cluster.exit_text(3) == f"exit status {EXIT_DISK_FAILED}"
        with open(cluster.log_path(3), encoding="utf-8") as log:
            # SQLite reports a read's EIO as a corrupt file (SQLITE_IOERR_CORRUPTFS).
            assert ("replica 3 stops: its disk failed (database disk image is malformed)"
                    in log.read())

        # A client whose list starts with replica 3 is served by the others.
        client = BlockingClient([cluster.address(i) for i in (3, 2, 1)], timeout_s=20)
        assert client.get("k00001") == value(1)
        cluster.wait_until(lambda: cluster.coordinator() == 2, timeout_s=20,
                           what="replicas 1 and 2 naming 2 the coordinator")
    finally:
        cluster.stop()
