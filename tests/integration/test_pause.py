"""A coordinator frozen (SIGSTOP) with a client's write queued at it, woken after the
cluster has carried that write out elsewhere: it must not carry it out again.

Found by a chaos run (docs/reliability.md, fe552b0): on waking, the calls the
coordinator had made before the pause all timed out at once and reported its peers
down, so the take-over it started at once counted them failed and, with an election
quorum of 1, served alone, without the take-over pull that brings the request ids:
the queued copy was applied a second time, its old value back over a newer write.

How the window is forced: the fault proxy holds every byte replica 3 sends its peers
from before the SIGSTOP until HEAL_AFTER_WAKE_S after the SIGCONT, so calls of its are
in flight (unanswered, past their deadlines) when it wakes, and a take-over started at
once still finds its peers cut off; they are reachable again well within
``answer_timeout`` (raised to 1.5 s here) after it wakes.  The pause lasts at least
twice the 1.2 s after which a coordinator counts itself paused.  With the immediate
election restored (before fe552b0) the queued copy is applied again (checked: 3 of 3).

The second test wakes a coordinator whose peer was restarted while it slept (its links
to that peer end the moment it runs) and which alone holds a newer write.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from replicad.client import BlockingClient

from .lines import connect, read_line

RID = "0123abcd00000000.1"
PAUSE_S = 2.5            # > 2 x pause_s (4 ping intervals of 0.3 s)
HEAL_AFTER_WAKE_S = 0.3  # well after a take-over started at once, well before 1.5 s
HOLD_S = 0.6             # > a ping timeout + an anti-entropy interval, < answer_timeout


def put_with_id(address: str) -> str:
    """``PUT k old`` with the request id RID, on its own connection: the reply."""
    with connect(address) as conn:
        conn.sendall(f"@r=;w=;id={RID} PUT k old\n".encode())
        return read_line(conn)


def carried_out_elsewhere_then_overwritten(cluster, client) -> None:
    """While 3 sleeps, the others take over: the request queued at 3 (same id) is
    applied there, then a newer write of ``k``."""
    cluster.wait_until(lambda: status_word(put_with_id(cluster.address(1))) == "OK",
                       timeout_s=30, what="the write applied by the others")
    client.put("k", "new")


def held_at_3(cluster, key: str, value: str) -> None:
    """From now on replica 3's calls stay unanswered (its heartbeats, its pushes), and
    it alone holds ``key = value`` (acknowledged: write_quorum 1)."""
    cluster.cut_one_way(3, 1)
    cluster.cut_one_way(3, 2)
    BlockingClient([cluster.address(3)], timeout_s=10).put(key, value)


@contextlib.contextmanager
def frozen_with(cluster, line: str):
    """Replica 3 SIGSTOPped with ``line`` waiting in its socket (the socket is what the
    block gets); leaving the block, the pause is made at least PAUSE_S long, 3 is
    woken, and the proxy's cuts are healed HEAL_AFTER_WAKE_S later."""
    cluster.kill(3, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        queued = connect(cluster.address(3))
        queued.sendall(f"{line}\n".encode())   # waits in its socket
        yield queued
        time.sleep(max(0.0, PAUSE_S - (time.monotonic() - stopped)))   # a long pause
    finally:
        cluster.kill(3, signal.SIGCONT)
        time.sleep(HEAL_AFTER_WAKE_S)
        cluster.heal()


def status_word(reply: str) -> str:
    """``OK`` of ``@vc=...;by=2 OK``, ``ERR`` of ``@... ERR INDOUBT ...``."""
    words = reply.split()
    return words[1] if words and words[0].startswith("@") and len(words) > 1 else (
        words[0] if words else "")


def test_a_woken_coordinator_pulls_before_it_serves_what_was_queued(proxied):
    cluster = proxied(answer_timeout=1.5, coordinator_timeout=2.0)
    assert cluster.coordinator() == 3
    client = BlockingClient([cluster.address(1), cluster.address(2)], timeout_s=20)
    client.put("k", "first")
    held_at_3(cluster, "pushed", "held")
    with frozen_with(cluster, f"@r=;w=;id={RID} PUT k old") as queued:
        carried_out_elsewhere_then_overwritten(cluster, client)

    reply = read_line(queued)
    queued.close()
    # A replay: k's current write is a newer one, so the outcome of the old copy is
    # reported unknown (Writes.replay); applied anew it would answer OK.
    assert status_word(reply) == "ERR" and "SUPERSEDED" in reply, reply
    with open(cluster.log_path(3), encoding="utf-8") as log:
        assert f"request {RID} was already applied" in log.read()
    cluster.wait_ready(timeout_s=30)
    assert BlockingClient(cluster.addresses(), timeout_s=20).get("k") == "new"


def serving(cluster, i: int, coordinator: int) -> bool:
    status = cluster.status(i)
    return bool(status) and status["coordinator"] == coordinator and status["ready"] == "yes"


def test_a_woken_coordinator_whose_peer_restarted_pulls_its_writes_first(start_cluster):
    """Replica 3 (coordinator) sleeps while replica 2 takes over alone, acknowledges a
    write that only it holds (write_quorum 1, replica 1 killed), and is restarted: every
    connection between 2 and 3 is closed while 3 sleeps, so 3 wakes to links that end
    (EOF) the moment it runs.  It bullies back, and must pull 2's write before it
    serves: a GET queued at 3 while it slept, and one sent after, answer "second".

    Anti-entropy (which would also bring the write, later) is slowed to a minute, so
    only the take-over pull can: with it skipped, both answer "first" (checked once)."""
    cluster = start_cluster(3, anti_entropy_interval=60)
    assert cluster.coordinator() == 3
    BlockingClient(cluster.addresses(), timeout_s=20).put("k", "first")

    cluster.kill(3, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        queued = connect(cluster.address(3))
        queued.sendall(b"GET k\n")                 # waits in 3's socket
        cluster.kill(1)
        cluster.wait_until(lambda: serving(cluster, 2, 2), timeout_s=30,
                           what="replica 2 serving alone")
        assert BlockingClient([cluster.address(2)], timeout_s=20).put("k", "second") is None
        cluster.kill(2)                            # SIGKILL: its sockets to 3 close
        cluster.start_replica(2)
        cluster.wait_until(lambda: serving(cluster, 2, 2), timeout_s=30,
                           what="replica 2 back and serving")
        time.sleep(max(0.0, PAUSE_S - (time.monotonic() - stopped)))   # a long pause
    finally:
        cluster.kill(3, signal.SIGCONT)

    assert read_line(queued) == "VALUE second"
    queued.close()
    cluster.wait_until(lambda: serving(cluster, 3, 3) and serving(cluster, 2, 3),
                       timeout_s=30, what="replica 3 serving again, 2 following it")
    assert BlockingClient([cluster.address(3)], timeout_s=20).get("k") == "second"
    with open(cluster.log_path(3), encoding="utf-8") as log:
        assert "was paused" in log.read()


DEL_RID = "0123abcd00000000.2"


def del_with_id(address: str) -> str:
    """``DEL k`` with the request id DEL_RID, on its own connection: the reply."""
    with connect(address) as conn:
        conn.sendall(f"@r=;w=;id={DEL_RID} DEL k\n".encode())
        return read_line(conn)


def test_a_del_answered_notfound_elsewhere_is_not_carried_out_by_a_woken_coordinator(
        proxied):
    """Replica 3 (coordinator) holds ``k`` alone (write_quorum 1, its pushes held by the
    proxy) and sleeps with a ``DEL k`` queued in its socket; the retry of that DEL (same
    request id) reaches replica 2, which never had ``k`` and answers NOTFOUND.  Woken,
    3 must answer its queued copy NOTFOUND too and keep ``k``: the client was told the
    DEL did nothing.  Found by chaos seed 4 (docs/reliability.md): a request that
    changed nothing left no trace a pull could carry, so 3 deleted ``k``.  With the
    no-op DEL's marker write taken out (Replica._coordinate answering NOTFOUND from
    the local memory alone) the queued copy answers OK and ``k`` is gone (checked)."""
    # election_wait: if the woken 3 blocks long enough to count as paused again (a
    # COMMIT that took 2 s on a loaded disk did, in a soak run), its queued DEL waits
    # out the second stand rather than answering UNAVAILABLE after the default 3 s.
    cluster = proxied(answer_timeout=1.5, coordinator_timeout=2.0, election_wait=10)
    assert cluster.coordinator() == 3
    held_at_3(cluster, "k", "held")
    with frozen_with(cluster, f"@r=;w=;id={DEL_RID} DEL k") as queued:
        cluster.wait_until(lambda: status_word(del_with_id(cluster.address(2)))
                           == "NOTFOUND", timeout_s=30, what="the DEL answered NOTFOUND")

    reply = read_line(queued)
    queued.close()
    assert status_word(reply) == "NOTFOUND", reply
    cluster.wait_ready(timeout_s=30)
    cluster.wait_until(lambda: serving(cluster, 1, 3) and serving(cluster, 2, 3),
                       timeout_s=30, what="replica 3 serving again, 1 and 2 following it")
    assert BlockingClient(cluster.addresses(), timeout_s=20).get("k") == "held"


def log_after(cluster, i: int, offset: int) -> str:
    with open(cluster.log_path(i), encoding="utf-8") as log:
        log.seek(offset)
        return log.read()


def test_a_take_over_waits_for_its_peers_answers_not_for_a_lost_ping(start_cluster):
    """Replica 3 wakes from a pause with a PUT queued that the others carried out
    meanwhile (as in the first test), and when it takes over, both its peers are
    frozen for HOLD_S: longer than a ping timeout (0.2 s) plus an anti-entropy interval
    (0.1 s here), well shorter than answer_timeout (3 s: room for a slow test
    process).  Its PINGs time out; its announcements are answered late.  It must wait
    for those answers and pull before it serves the queued copy.  With a ping's
    timeout settling an announcement (as before this test) it served alone at once, a
    quorum of 1, and applied the copy anew: OK, not ERR SUPERSEDED (checked).  Found
    by CI as a flake of the DEL test above, where a loaded machine lost the ping."""
    # election_wait: the queued PUT waits out 3's stand-again wait and its take-over
    cluster = start_cluster(3, answer_timeout=3.0, coordinator_timeout=3.5, election_wait=10,
                            anti_entropy_interval=0.1)
    assert cluster.coordinator() == 3
    client = BlockingClient([cluster.address(1), cluster.address(2)], timeout_s=20)
    client.put("k", "first")
    cluster.kill(3, signal.SIGSTOP)
    stopped = time.monotonic()
    queued = connect(cluster.address(3))
    try:
        queued.sendall(f"@r=;w=;id={RID} PUT k old\n".encode())     # waits in 3's socket
        carried_out_elsewhere_then_overwritten(cluster, client)
        cluster.kill(1, signal.SIGSTOP)
        cluster.kill(2, signal.SIGSTOP)
        offset = os.path.getsize(cluster.log_path(3))
        time.sleep(max(0.0, PAUSE_S - (time.monotonic() - stopped)))   # a long pause
        cluster.kill(3, signal.SIGCONT)
        cluster.wait_until(lambda: "won the election" in log_after(cluster, 3, offset),
                           timeout_s=30, what="replica 3 taking over")
        time.sleep(HOLD_S)          # the window: its pings time out, nothing answers
    finally:
        cluster.kill(3, signal.SIGCONT)
        cluster.kill(1, signal.SIGCONT)
        cluster.kill(2, signal.SIGCONT)

    reply = read_line(queued)
    queued.close()
    assert status_word(reply) == "ERR" and "SUPERSEDED" in reply, reply
    cluster.wait_ready(timeout_s=30)
    assert BlockingClient(cluster.addresses(), timeout_s=20).get("k") == "new"
