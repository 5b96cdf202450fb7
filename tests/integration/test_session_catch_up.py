"""A coordinator that lacks a session's write fetches it from the session's last server,
however long that server takes to answer within fetch_timeout.

Replica 3 (the first coordinator) alone holds the session's write: write_quorum 1, and
the proxy holds every byte 3 sends its peers, so its pushes never arrive, 1 and 2 see
it silent and elect 2.  The session then reads on 2, which lacks the write and asks 3
for its delta at once (no PING first); 3's answers stay held for HOLD_S, far longer
than ping_timeout (0.2 s), then the cut heals.  The read is served with the session's
write: 3, having heard 2's newer epoch meanwhile, re-elected itself and refuses 2's
delta as stale, so 2 steps down and sends the read on to 3 rather than answer it
ERR STALE (both seen; the test accepts either way to the write).

Checked once each: with the catch-up's patience at ping_timeout (before 6addf78) 2
answered ``ERR STALE`` at 0.2 s, inside the window; with a catch-up that met a newer
epoch answered ERR STALE instead of sent on, 2 answered that after the heal.  Chaos
seed 106 met the first with a slow link (docs/reliability.md).

The read is one request on its own connection: a client would retry the STALE and
might be served later by anti-entropy (slowed to a minute here), which would hide it.
"""

from __future__ import annotations

import threading
import time

from replicad.client import BlockingClient, encode_line
from replicad.session import ClientSession
from replicad.wire import Request

from .lines import connect, read_line

HOLD_S = 1.0     # 3's answers held: 5 ping timeouts, a tenth of fetch_timeout


def holds(cluster, i: int, origin: int) -> int:
    """How many of ``origin``'s writes replica i holds, by its STATUS clock."""
    status = cluster.status(i)
    return int(status["clock"].get(str(origin), 0)) if status else 0


def serving(cluster, i: int) -> bool:
    status = cluster.status(i)
    return bool(status) and status["coordinator"] == i and status["ready"] == "yes"


def test_a_session_read_waits_for_its_last_server_longer_than_a_ping_timeout(proxied):
    cluster = proxied(3, fetch_timeout=10, anti_entropy_interval=60)
    assert cluster.coordinator() == 3
    session = ClientSession()
    BlockingClient([cluster.address(3)], session=session, timeout_s=10).put("k", "first")
    first = holds(cluster, 3, 3)
    cluster.wait_until(lambda: holds(cluster, 1, 3) == holds(cluster, 2, 3) == first,
                       timeout_s=10, what="the first write on every replica")
    cluster.cut_one_way(3, 1)
    cluster.cut_one_way(3, 2)
    try:
        BlockingClient([cluster.address(3)], session=session, timeout_s=10).put("k", "held")
        cluster.wait_until(lambda: serving(cluster, 2), timeout_s=30,
                           what="replica 2 serving while 3 is silent")
        assert holds(cluster, 2, 3) == first < holds(cluster, 3, 3)   # 2 lacks the write

        replies: list[str] = []
        conn = connect(cluster.address(2))
        conn.sendall(encode_line(Request("GET", "k", None), session))
        reader = threading.Thread(target=lambda: replies.append(read_line(conn)),
                                  daemon=True)
        reader.start()
        time.sleep(HOLD_S)          # the window: 3's answer to the catch-up is held
        assert replies == []        # with ping_timeout's patience: ERR STALE by now
    finally:
        cluster.heal()
    reader.join(30)
    conn.close()
    assert replies and replies[0].endswith("VALUE held"), replies
