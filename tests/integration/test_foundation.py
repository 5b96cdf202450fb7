"""Issue #2 end to end: real twistd replicas driven by replicad-cli and raw sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from replicad.client import BlockingClient
from replicad.config import load_config

TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile", ""]


def talk(address: str, payload: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes to a replica's client port; return everything until it closes."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass     # the server may close a connection whose line is too long mid-send
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_put_get_del_keys_round_trip(start_cluster, cli):
    cluster = start_cluster()
    servers = cluster.addresses()
    assert cli(servers, "put", "greeting", "hello", "big", "world").returncode == 0
    got = cli(servers, "get", "greeting")
    assert (got.returncode, got.stdout) == (0, "hello big world\n")
    assert cli(servers, "put", "other", "x").returncode == 0
    listed = cli(servers, "keys")
    assert listed.stdout.split() == ["greeting", "other"]
    assert cli(servers, "keys", "gr").stdout.split() == ["greeting"]
    assert cli(servers, "del", "greeting").returncode == 0
    missing = cli(servers, "get", "greeting")
    assert missing.returncode == 1 and missing.stdout == ""
    assert cli(servers, "del", "greeting").returncode == 1
    assert cli(servers, "keys").stdout.split() == ["other"]


def test_a_follower_forwards_to_the_coordinator(start_cluster, cli):
    cluster = start_cluster()
    coordinator = cluster.coordinator()
    followers = [i for i in (1, 2, 3) if i != coordinator]
    first, second = (cluster.address(i) for i in followers)
    assert cli([first], "put", "k", "through a follower").returncode == 0
    got = cli([second], "get", "k", session_file=None)
    assert got.stdout == "through a follower\n"
    # The write went through the coordinator and was pushed to every replica.
    cluster.wait_until(
        lambda: all(cluster.status(i)["clock"] == cluster.status(coordinator)["clock"]
                    for i in (1, 2, 3)),
        timeout_s=5, what="every replica has the write",
    )


def test_telnet_style_session_on_a_follower(start_cluster):
    cluster = start_cluster()
    follower = next(i for i in (1, 2, 3) if i != cluster.coordinator())
    out = talk(cluster.address(follower),
               b"PUT a 1\r\nGET a\r\nBOGUS\r\nGET a\r\nQUIT\r\n").decode()
    assert out.split("\r\n")[:5] == ["OK", "VALUE 1", out.split("\r\n")[2], "VALUE 1", "BYE"]
    assert out.split("\r\n")[2].startswith("ERR BADCMD ")


def test_a_dead_server_in_the_list_is_skipped(start_cluster, cli):
    cluster = start_cluster()
    dead = next(i for i in (1, 2, 3) if i != cluster.coordinator())
    cluster.kill(dead)
    servers = [cluster.address(dead)] + [cluster.address(i) for i in (1, 2, 3) if i != dead]
    assert cli(servers, "put", "k", "v").returncode == 0
    assert cli(servers, "get", "k").stdout == "v\n"


def test_acknowledged_writes_survive_kill_9_of_every_replica(start_cluster):
    cluster = start_cluster()
    client = BlockingClient(cluster.addresses(), timeout_s=10)
    for n in range(50):
        client.put(f"key{n}", f"value {n}")
    for i in (1, 2, 3):
        cluster.kill(i)
    for i in (1, 2, 3):
        cluster.start_replica(i)
    cluster.wait_ready(timeout_s=20)
    client = BlockingClient(cluster.addresses(), timeout_s=10)
    assert [client.get(f"key{n}") for n in range(50)] == [f"value {n}" for n in range(50)]


def test_bad_input_gets_an_error_and_the_replica_keeps_serving(start_cluster):
    cluster = start_cluster()
    address = cluster.address(cluster.coordinator())
    cases = {
        b"FROB x\r\n": "ERR BADCMD ",
        b"GET\r\n": "ERR BADARGS ",
        b"GET a b\r\n": "ERR BADARGS ",
        b"PUT onlykey\r\n": "ERR BADARGS ",
        b"GET " + b"k" * 300 + b"\r\n": "ERR BADKEY ",
        b"PUT k " + b"v" * (64 * 1024 + 1) + b"\r\n": "ERR TOOBIG ",
        b"GET \xff\xfe\r\n": "ERR BADENCODING ",
        b"@r=oops GET k\r\n": "ERR BADCONTEXT ",
    }
    for request, expected in cases.items():
        reply = talk(address, request + b"QUIT\r\n").decode()
        assert reply.startswith(expected), (request[:20], reply)
        assert reply.endswith("BYE\r\n")   # the connection stayed usable
    too_long = talk(address, b"x" * (70 * 1024 * 2) + b"\r\n").decode()
    assert too_long.startswith("ERR LINETOOLONG ")
    # Nothing was half-applied: no key k, and the replica still serves.
    client = BlockingClient([address], timeout_s=5)
    assert client.get("k") is None
    client.put("k", "fine")
    assert client.get("k") == "fine"


def test_garbage_on_the_peer_port_is_refused(start_cluster):
    cluster = start_cluster()
    member = load_config(os.path.join(cluster.data_dir, "cluster.ini")).member(1)
    with socket.create_connection((member.peer.host, member.peer.port), timeout=5) as sock:
        hello = sock.recv(1024)
        assert hello.startswith(b"HELLO 1 ")
        sock.sendall(b"GET everything\r\n")
        answer = b""
        while chunk := sock.recv(1024):
            answer += chunk
    assert answer.startswith(b"ERR AUTH ")
    assert BlockingClient([cluster.address(1)], timeout_s=5).status()["id"] == 1


def test_status_json_names_role_coordinator_epoch_clock_peers(start_cluster, cli):
    cluster = start_cluster()
    coordinator = cluster.coordinator()
    cli(cluster.addresses(), "put", "k", "v")
    # Right after start-up a link may still be dialling; it must come up by itself.
    cluster.wait_until(lambda: cluster.status(1)["peers"] == {"2": "up", "3": "up"},
                       timeout_s=5, what="replica 1 sees both peers up")
    result = cli([cluster.address(1)], "status", "--json")
    status = json.loads(result.stdout)
    assert status["id"] == 1
    assert status["role"] == ("coordinator" if coordinator == 1 else "follower")
    assert status["coordinator"] == coordinator
    assert status["epoch"] >= 1
    assert sum(status["clock"].values()) >= 1
    assert status["peers"] == {"2": "up", "3": "up"}


def test_config_mistakes_stop_start_up_with_one_line(tmp_path):
    good_peer = "[replica:1]\nclient = 127.0.0.1:17001\npeer = 127.0.0.1:17101\n"
    cases = {
        "unknown id": ("[cluster]\nsecret = s\n" + good_peer, ["--id", "7"]),
        "duplicate address": (
            "[cluster]\nsecret = s\n" + good_peer
            + "[replica:2]\nclient = 127.0.0.1:17001\npeer = 127.0.0.1:17102\n",
            ["--id", "1"],
        ),
        "bad port": ("[cluster]\nsecret = s\n[replica:1]\nclient = 127.0.0.1:99999\n"
                     "peer = 127.0.0.1:17101\n", ["--id", "1"]),
        "missing section": (good_peer, ["--id", "1"]),
    }
    for name, (text, args) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.ini"
        path.write_text(text)
        result = subprocess.run(
            [*TWISTD, "replicad", "--config", str(path), "--data-dir", str(tmp_path / "d"),
             *args],
            capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )
        assert result.returncode != 0, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("replicad: error: "), (name, lines)
        assert "Traceback" not in result.stdout + result.stderr
    unreadable = subprocess.run(
        [*TWISTD, "replicad", "--config", str(tmp_path / "nope.ini"), "--id", "1"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert unreadable.returncode != 0
    assert unreadable.stderr.strip().splitlines() == [
        f"replicad: error: cannot read config file {tmp_path / 'nope.ini'}: "
        "No such file or directory"
    ]


def test_twistd_lists_the_plugin_from_outside_the_source_tree(tmp_path):
    result = subprocess.run([TWISTD[0], "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    assert any(line.split()[:1] == ["replicad"] for line in result.stdout.splitlines())


def test_a_client_password_guards_every_replica(start_cluster, cli, tmp_path, monkeypatch):
    cluster = start_cluster(client_password="open sesame")
    follower = next(i for i in (1, 2, 3) if i != cluster.coordinator())
    refused = cli([cluster.address(follower)], "get", "k")
    assert refused.returncode == 4
    assert refused.stderr.startswith("replicad-cli: server error: ERR AUTH ")
    assert "REPLICAD_PASSWORD" in refused.stderr and len(refused.stderr.splitlines()) == 1
    wrong = talk(cluster.address(follower), b"AUTH guess\r\nGET k\r\nQUIT\r\n").decode()
    assert wrong.splitlines()[:2] == ["ERR AUTH wrong password",
                                       "ERR AUTH this cluster needs a password: send AUTH "
                                       "<password> first"]
    password_file = tmp_path / "password"
    password_file.write_text("open sesame\n")
    put = cli([cluster.address(follower)], "--password-file", str(password_file),
              "put", "k", "through a follower")
    assert put.returncode == 0, put.stderr
    monkeypatch.setenv("REPLICAD_PASSWORD", "open sesame")
    assert cli(cluster.addresses(), "get", "k").stdout == "through a follower\n"
