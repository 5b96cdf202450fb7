"""follower_reads = yes on real replicas: a follower answers reads itself, keeps the
session guarantees, and stops answering from its own data once its coordinator has
been silent for a heartbeat interval."""

from __future__ import annotations

from replicad.client import BlockingClient
from replicad.wire import ReplyMeta

from .lines import ask, connect, read_line


def meta_of(reply: str) -> ReplyMeta:
    """The meta token a reply to a request with a context starts with, decoded."""
    token = reply.split(" ", 1)[0]
    assert token.startswith("@"), reply
    return ReplyMeta.decode(token)


def executed_by(reply: str) -> int | None:
    return meta_of(reply).by


def clock_of(reply: str) -> str:
    return meta_of(reply).vc.encode()


def wait_until_it_reads_itself(cluster, i: int, line: str = "@r=;w= GET k") -> None:
    """Until ``line`` sent to replica i is executed by i itself (``by=``), not forwarded."""
    cluster.wait_until(lambda: executed_by(ask(cluster.address(i), line)) == i,
                       timeout_s=10, what=f"replica {i} answering reads itself")


def k_old_read_by_replica_1(proxied, **overrides):
    """A proxied 3-replica cluster (``overrides``), coordinator 3, k = old written, and
    replica 1 answering reads of it itself: where a cut then tests its reads."""
    cluster = proxied(3, **overrides)
    assert cluster.coordinator() == 3
    BlockingClient(cluster.addresses(), timeout_s=20).put("k", "old")
    wait_until_it_reads_itself(cluster, 1)
    return cluster


def test_a_follower_answers_reads_itself_and_keeps_the_session(start_cluster):
    cluster = start_cluster(3, follower_reads="yes")
    assert cluster.coordinator() == 3
    written = ask(cluster.address(3), "@r=;w= PUT k v1")
    assert written.endswith(" OK"), written
    session = f"@r=;w={clock_of(written)}"
    # Read-your-writes at a follower, right after the write: answered by the follower
    # once it holds the write (else forwarded); either way v1, never nothing.
    reply = ask(cluster.address(1), f"{session} GET k")
    assert reply.endswith(" VALUE v1"), reply
    wait_until_it_reads_itself(cluster, 1, f"{session} GET k")
    # The default: every request forwarded.
    assert executed_by(ask(cluster.address(2), "@r=;w= PUT j w")) == 3


def test_without_it_or_confirmed_reads_a_follower_forwards_reads(start_cluster):
    cluster = start_cluster(3, confirmed_reads="no")
    ask(cluster.address(3), "@r=;w= PUT k v1")
    assert executed_by(ask(cluster.address(1), "@r=;w= GET k")) == 3


def test_a_follower_cut_off_from_its_coordinator_stops_answering_from_its_data(proxied):
    """Replica 3's bytes to replica 1 are held (its pushes and its PING answers): 3
    acknowledges k = new (write_quorum 1) that 1 does not get.  Once a ping from 1 to 3
    has failed (1's STATUS counts 3 down; 3's last answer is then more than a heartbeat
    interval old), a read without a session sent to 1 must not be answered from its
    own, older data: it waits for the heal and answers new, or it is refused at once
    once 1 stood down (2 still reaches 3 and objects to 1's election: node.py I8b), so
    that the client asks another replica.  (With the follower answering whatever it
    holds, it answers old at once.)"""
    cluster = k_old_read_by_replica_1(proxied, follower_reads="yes",
                                      anti_entropy_interval=60)
    cluster.cut_one_way(3, 1)
    try:
        assert BlockingClient([cluster.address(3)], timeout_s=20).put("k", "new") is None
        cluster.wait_until(lambda: peer_state(cluster, 1, 3) == "down", timeout_s=10,
                           what="replica 1 counting replica 3 down")
        conn = connect(cluster.address(1))
        conn.sendall(b"GET k\n")
        # A barrier: a STATUS on a second connection, sent once the GET is in 1's
        # socket, is answered in the reactor turn that reads the GET or a later one; a
        # read answered at once would have left at that turn's end.
        seen = cluster.status(1, timeout_s=5)
    finally:
        cluster.heal()
    with conn:
        reply = read_line(conn)
    assert reply == "VALUE new" or reply.startswith(
        "ERR UNAVAILABLE coordinator 3 is alive (replica 2 reaches it)"), reply
    assert seen is not None and seen["reads_here"] == "no"


def peer_state(cluster, i: int, peer: int) -> str | None:
    """``up`` or ``down``: how replica i's STATUS counts peer."""
    return ((cluster.status(i) or {}).get("peers") or {}).get(str(peer))
