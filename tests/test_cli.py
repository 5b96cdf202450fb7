"""replicad-cli run in-process: exit codes, one-line errors, output, the session file."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest

from replicad import cli
from replicad.client import BlockingClient
from replicad.vclock import VectorClock
from replicad.wire import Code, Reply, ReplyMeta, error_reply
from tests.test_client import ScriptedServer, answer, refused  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Never read or write the real ~/.local/state."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("REPLICAD_SESSION", raising=False)


@pytest.fixture
def scripted():
    started: list[ScriptedServer] = []

    def start(script):
        started.append(ScriptedServer(script))
        return started[-1]

    yield start
    for s in started:
        s.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str) -> None:
    assert err.startswith("replicad-cli: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


META = ReplyMeta(VectorClock({3: 4}), by=3, here=3, coord=3, epoch=2)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frob"],
        ["get"],
        ["get", "a", "b"],
        ["put", "k"],
        ["status", "--yaml"],
        ["--timeout", "x", "get", "k"],
        ["--timeout", "0", "get", "k"],
        ["--servers", "nohost", "get", "k"],
        ["--servers", ",", "get", "k"],
        ["--servers", "h:1", "--config", "cluster.ini", "get", "k"],
        ["--session", "s.json", "--no-session", "get", "k"],
        ["--config", "/nonexistent/cluster.ini", "get", "k"],
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert_one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "two words"],
        ["get", ""],
        ["del", "k\x01"],
        ["keys", "a b"],
        ["put", "k", "bell\x07"],
    ],
)
def test_bad_key_or_value_exits_2_before_any_network_use(capsys, argv, refused):  # noqa: F811
    code, out, err = run(capsys, "--servers", refused, "--no-session", *argv)
    assert code == 2
    assert_one_error_line(err)
    assert "bad input" in err


def test_sizes_are_checked_locally_when_a_config_gives_the_limits(capsys, tmp_path, refused):  # noqa: F811
    port = int(refused.rsplit(":", 1)[1])
    ini = tmp_path / "cluster.ini"
    ini.write_text(f"[cluster]\nsecret = s\nmax_value_bytes = 8\n\n[replica:1]\n"
                   f"client = 127.0.0.1:{port}\npeer = 127.0.0.1:{port - 1}\n")
    for argv in (["put", "k", "123456789"], ["get", "k" * 300]):
        code, _, err = run(capsys, "--config", str(ini), "--no-session", *argv)
        assert code == 2
        assert_one_error_line(err)


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "COMMAND" in out


def test_no_server_reachable_exits_3(capsys, refused):  # noqa: F811
    code, out, err = run(capsys, "--servers", refused, "--timeout", "0.3", "--no-session",
                         "get", "k")
    assert code == 3
    assert out == ""
    assert_one_error_line(err)
    assert refused in err and "connection refused" in err


def test_damaged_session_file_exits_2(capsys, tmp_path, refused):  # noqa: F811
    damaged = tmp_path / "session.json"
    damaged.write_text("{not json")
    code, _, err = run(capsys, "--servers", refused, "--session", str(damaged), "get", "k")
    assert code == 2
    assert_one_error_line(err)
    assert str(damaged) in err and "--no-session" in err


def test_get_prints_the_value_alone(capsys, scripted):
    s = scripted(answer(Reply("VALUE", "hello  world"), vc=VectorClock({3: 4}), by=3))
    code, out, err = run(capsys, "--servers", s.address, "--no-session", "get", "k")
    assert (code, out, err) == (0, "hello  world\n", "")
    assert s.requests == ["@r=-;w=- GET k"]


def test_get_missing_exits_1(capsys, scripted):
    s = scripted(answer(Reply("NOTFOUND")))
    code, out, err = run(capsys, "--servers", s.address, "--no-session", "get", "k")
    assert code == 1 and out == ""
    assert_one_error_line(err)


def test_del_missing_exits_1_and_del_prints_nothing(capsys, scripted):
    missing = scripted(answer(Reply("NOTFOUND")))
    present = scripted(answer(Reply("OK")))
    assert run(capsys, "--servers", missing.address, "--no-session", "del", "k")[0] == 1
    assert run(capsys, "--servers", present.address, "--no-session", "del", "k") == (0, "", "")


def test_err_reply_exits_4(capsys, scripted):
    s = scripted(answer(error_reply(Code.TOOBIG, "value is 9 bytes, the limit is 8 bytes")))
    code, out, err = run(capsys, "--servers", s.address, "--no-session", "put", "k", "v")
    assert code == 4 and out == ""
    assert_one_error_line(err)
    assert "TOOBIG" in err


def test_in_doubt_write_exits_3(capsys, scripted):
    s = scripted(answer(error_reply(Code.INDOUBT, "forwarded write got no answer")))
    code, _, err = run(capsys, "--servers", s.address, "--no-session", "put", "k", "v")
    assert code == 3
    assert_one_error_line(err)


def test_put_joins_words_and_prints_nothing(capsys, scripted):
    s = scripted(answer(Reply("OK")))
    code, out, err = run(capsys, "--servers", s.address, "--no-session",
                         "put", "k", "a", "b", "--c")
    assert (code, out, err) == (0, "", "")
    assert s.requests == ["@r=-;w=- PUT k a b --c"]


def test_put_dash_reads_stdin_without_the_final_newline(capsys, scripted, monkeypatch):
    s = scripted(answer(Reply("OK")))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin \n")))
    code, _, _ = run(capsys, "--servers", s.address, "--no-session", "put", "k", "-")
    assert code == 0
    assert s.requests == ["@r=-;w=- PUT k from stdin "]


def test_keys_one_per_line(capsys, scripted):
    s = scripted(answer(Reply("KEYS", lines=("a", "b"))))
    assert run(capsys, "--servers", s.address, "--no-session", "keys", "x") == (0, "a\nb\n", "")
    assert s.requests == ["@r=-;w=- KEYS x"]


STATUS_BODY = ("id 2", "role follower", "coordinator 3", "epoch 5", "clock 1:2,3:4",
               "keys 7", "peers 1:up,3:down", "conflicts 0", "write_quorum 1")


def test_status_json_is_one_object_with_the_required_fields(capsys, scripted):
    s = scripted(answer(Reply("STATUS", lines=STATUS_BODY)))
    code, out, _ = run(capsys, "--servers", s.address, "--no-session", "status", "--json")
    assert code == 0
    assert out.count("\n") == 1
    status = json.loads(out)
    assert status["id"] == 2 and status["role"] == "follower"
    assert status["coordinator"] == 3 and status["epoch"] == 5
    assert status["clock"] == {"1": 2, "3": 4}
    assert status["keys"] == 7 and status["conflicts"] == 0
    assert status["peers"] == {"1": "up", "3": "down"}
    assert status["server"] == s.address


def test_status_human(capsys, scripted):
    s = scripted(answer(Reply("STATUS", lines=STATUS_BODY)))
    code, out, _ = run(capsys, "status", "--servers", s.address, "--no-session")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["server", s.address]
    assert ["coordinator", "3"] in [line.split() for line in lines]
    assert ["clock", "1:2,3:4"] in [line.split() for line in lines]


def test_session_file_is_written_and_used_next_time(capsys, scripted, tmp_path):
    path = tmp_path / "sub" / "session.json"
    s = scripted(answer(Reply("OK", meta=META)))
    assert run(capsys, "--servers", s.address, "--session", str(path), "put", "k", "v")[0] == 0
    saved = json.loads(path.read_text())
    assert saved["write"] == "3:4" and saved["coordinator"] == 3
    assert os.listdir(path.parent) == ["session.json"]   # no temporary file left
    run(capsys, "--servers", s.address, "--session", str(path), "put", "k", "v")
    assert s.requests[1] == "@r=-;w=3:4;via=3 PUT k v"


def test_session_save_merges_what_another_run_saved(capsys, scripted, tmp_path):
    path = tmp_path / "session.json"
    path.write_text('{"read": "1:9", "write": "2:9"}')
    s = scripted(answer(Reply("OK", meta=META)))
    run(capsys, "--servers", s.address, "--session", str(path), "put", "k", "v")
    saved = json.loads(path.read_text())
    assert (saved["read"], saved["write"]) == ("1:9", "2:9,3:4")


def test_default_session_path(monkeypatch, tmp_path):
    servers = ["127.0.0.1:7002", "127.0.0.1:7001"]
    path = cli.default_session_path(servers)
    assert path.startswith(str(tmp_path / "home" / ".local" / "state" / "replicad"))
    assert path == cli.default_session_path(list(reversed(servers)))
    assert path != cli.default_session_path(["127.0.0.1:7001"])
    assert os.path.basename(path).startswith("session-") and len(os.path.basename(path)) == 25
    monkeypatch.setenv("REPLICAD_SESSION", str(tmp_path / "explicit.json"))
    assert cli.default_session_path(servers) == str(tmp_path / "explicit.json")


def test_default_session_file_is_used(capsys, scripted, tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICAD_SESSION", str(tmp_path / "env.json"))
    s = scripted(answer(Reply("VALUE", "x", meta=META)))
    assert run(capsys, "--servers", s.address, "get", "k")[0] == 0
    assert json.loads((tmp_path / "env.json").read_text())["read"] == "3:4"


def test_config_file_gives_the_servers(capsys, scripted, tmp_path):
    s = scripted(answer(Reply("VALUE", "from config")))
    port = int(s.address.rsplit(":", 1)[1])
    ini = tmp_path / "cluster.ini"
    ini.write_text(f"[cluster]\nsecret = s\n\n[replica:1]\nclient = 127.0.0.1:{port}\n"
                   f"peer = 127.0.0.1:{port + 1 if port < 65535 else port - 1}\n")
    code, out, _ = run(capsys, "--config", str(ini), "--no-session", "get", "k")
    assert (code, out) == (0, "from config\n")


def test_interrupt_exits_130(capsys, monkeypatch, refused):  # noqa: F811
    def interrupted(self, key):
        raise KeyboardInterrupt

    monkeypatch.setattr(BlockingClient, "get", interrupted)
    code, _, err = run(capsys, "--servers", refused, "--no-session", "get", "k")
    assert code == 130
    assert_one_error_line(err)


def test_unexpected_exception_is_one_line(capsys, monkeypatch, refused):  # noqa: F811
    def broken(self, key):
        raise RuntimeError("boom")

    monkeypatch.setattr(BlockingClient, "get", broken)
    code, _, err = run(capsys, "--servers", refused, "--no-session", "get", "k")
    assert code == cli.EXIT_BUG
    assert_one_error_line(err)
    assert "boom" in err
