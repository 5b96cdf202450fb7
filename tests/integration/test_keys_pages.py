"""A KEYS listing bigger than one reply (``max_keys``), end to end: a telnet user gets
ERR TOOMANY and can page by hand; the CLI and the client library page by themselves,
through the coordinator and through a follower (which forwards, or answers once its
coordinator confirmed)."""

from __future__ import annotations

from replicad.client import BlockingClient

from .test_foundation import talk


def test_a_listing_bigger_than_a_reply_is_paged(start_cluster, cli):
    cluster = start_cluster(max_keys=5)
    keys = sorted(f"user:{n:02d}" for n in range(12))
    writer = BlockingClient(cluster.addresses(), timeout_s=10)
    for key in keys:
        writer.put(key, "v")
    writer.put("other", "x")

    answer = talk(cluster.address(3), b"KEYS user:\r\nKEYS user: AFTER user:09 LIMIT 5\r\n"
                                      b"KEYS user: LIMIT 6\r\nQUIT\r\n").decode()
    lines = answer.split("\r\n")
    assert lines[0].startswith("ERR TOOMANY 5 keys at most in one reply, and more start "
                               "with 'user:': ask for them in pages, KEYS user: LIMIT 5")
    assert lines[1:5] == ["KEYS 2", "user:10", "user:11", "END"]
    assert lines[5].startswith("ERR BADARGS LIMIT must be a number from 1 to 5")

    assert writer.keys("user:") == keys
    assert BlockingClient([cluster.address(1)], timeout_s=10).keys() == ["other", *keys]
    listed = cli([cluster.address(2)], "keys", "user:")
    assert (listed.returncode, listed.stdout.split()) == (0, keys)
    assert cli([cluster.address(2)], "keys", "oth").stdout.split() == ["other"]
