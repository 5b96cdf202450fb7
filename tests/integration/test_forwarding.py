"""A read a follower forwarded is asked again once that follower moves on to another
coordinator, and a write forwarded there ends in doubt if the old coordinator does not
answer a ping either (replica.py, ``_moved_to``).

Chaos seed 24 (docs/reliability.md): a follower forwarded a GET (and another a PUT) to
its coordinator just before the coordinator was cut off; a lower replica noticed first
and held an election, which made the follower coordinator itself; the requests still
waited for the cut-off coordinator's answer, for the whole forward_timeout, and their
clients gave up.

The window is forced: replica 2 forwards at once (``confirmed_reads = no``) and checks
its coordinator only every 30 s (so it cannot notice the cut itself, and each request is
in flight before anything changes: its PONG leaves in the same turn as the forward), and
its forward_timeout is 60 s, twice the client's wait here.  2 <-> 3 is cut before the
requests, 1 <-> 3 after them: replica 1 notices, holds an election, 2 takes over.
"""

from __future__ import annotations

import configparser
import signal

from .lines import connect, read_lines

SLOW_PING_INTERVAL_S = "30"
LONG_FORWARD_TIMEOUT_S = "60"
CLIENT_WAIT_S = 30.0      # well under the forward_timeout: only a request moved on is in time


def restart_with(cluster, i: int, **settings: str) -> None:
    """Replica i again, with its own [cluster] settings (its cluster-i.ini only)."""
    cluster.kill(i, signal.SIGTERM)
    path = cluster.replica_config_path(i)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    parser["cluster"].update(settings)
    with open(path, "w", encoding="utf-8") as handle:
        parser.write(handle)
    cluster.start_replica(i)


def test_requests_forwarded_to_a_cut_off_coordinator_are_settled_by_its_successor(proxied):
    cluster = proxied(3)
    assert cluster.coordinator() == 3
    with connect(cluster.address(3)) as conn:
        conn.sendall(b"PUT k v\n")
        assert read_lines(conn, 1) == ["OK"]
    restart_with(cluster, 2, ping_interval=SLOW_PING_INTERVAL_S,
                 forward_timeout=LONG_FORWARD_TIMEOUT_S, confirmed_reads="no")
    cluster.wait_until(lambda: (cluster.status(2) or {}).get("coordinator") == 3,
                       timeout_s=20, what="replica 2 to follow 3 again")
    with connect(cluster.address(2)) as conn:   # 2 pings 3 now: OK for the next 30 s
        conn.sendall(b"GET k\n")
        assert read_lines(conn, 1) == ["VALUE v"]

    cluster.cut(2, 3)
    try:
        with connect(cluster.address(2), timeout_s=CLIENT_WAIT_S) as read, \
                connect(cluster.address(2), timeout_s=CLIENT_WAIT_S) as write:
            read.sendall(b"PING\nGET k\n")
            write.sendall(b"PING\nPUT j w\n")
            assert read_lines(read, 1) == ["PONG"]    # the GET is forwarded (and held)
            assert read_lines(write, 1) == ["PONG"]   # so is the PUT
            cluster.cut(1, 3)
            assert read_lines(read, 1) == ["VALUE v"]
            # 3 does not answer 2's probe either: the write is in doubt (it may have
            # been applied there), said now and not at the forward_timeout
            assert read_lines(write, 1)[0].startswith("ERR INDOUBT ")
        assert (cluster.status(2) or {}).get("role") == "coordinator"
    finally:
        cluster.heal()
