"""replicad-cli run in-process: the command line, exit codes, one-line errors, output,
config files, stdin values and the session file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

import replicad
from replicad import cli
from replicad.client import BlockingClient
from replicad.session import ClientSession
from replicad.vclock import VectorClock
from replicad.wire import Code, Reply, ReplyMeta, error_reply
from tests.test_client import ScriptedServer, answer, refused, rid_of  # noqa: F401 (fixture)

CLUSTER_A = "a" * 32
CLUSTER_B = "b" * 32


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Never read or write the real ~/.local/state; no stray environment."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("XDG_STATE_HOME", cli.ENV_SESSION, cli.ENV_SERVERS, cli.ENV_CONFIG,
                 cli.ENV_PASSWORD, cli.ENV_CACERT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stdin", Terminal())


class Terminal(io.StringIO):
    """stdin as an interactive user has it."""

    def isatty(self) -> bool:
        return True


def piped(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data))


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


# The command line --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frob"],
        ["get"],
        ["get", "a", "b"],
        ["put"],
        ["put", "k"],                          # stdin is a terminal: no value
        ["del"],
        ["keys", "a", "b"],
        ["status", "x"],
        ["status", "--yaml"],
        ["put", "k", "-x"],                    # an option, not a value: use --
        ["get", "k", "--json"],
        ["session"],
        ["session", "frob"],
        ["--timeout", "x", "get", "k"],
        ["--timeout", "0", "get", "k"],
        ["--attempt-timeout", "-1", "get", "k"],
        ["--servers", "nohost", "get", "k"],
        ["--servers", ",", "get", "k"],
        ["--servers", "h:1", "--config", "cluster.ini", "get", "k"],
        ["--session", "s.json", "--no-session", "get", "k"],
        ["--config", "/nonexistent/cluster.ini", "get", "k"],
        ["--no-session", "session", "show"],
        ["--serv", "h:1", "get", "k"],         # no abbreviations
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert out == ""
    assert_one_error_line(err)


def test_an_option_where_a_value_was_meant_says_to_use_double_dash(capsys):
    code, _, err = run(capsys, "put", "k", "-x")
    assert code == 2 and "--" in err and "put KEY -- -x" in err


@pytest.mark.parametrize(
    "argv, name, args",
    [
        (["put", "k", "hello", "--servers", "h:1"], "put", ["k", "hello"]),
        (["--servers", "h:1", "put", "k", "hello"], "put", ["k", "hello"]),
        (["put", "--servers", "h:1", "k", "hello"], "put", ["k", "hello"]),
        (["put", "k", "--", "hello", "--servers", "x"], "put", ["k", "hello", "--servers", "x"]),
        (["put", "k", "--servers", "h:1", "--", "-v"], "put", ["k", "-v"]),
        (["put", "k", "--", "a", "--", "b"], "put", ["k", "a", "--", "b"]),
        (["--", "get", "--servers"], "get", ["--servers"]),
        (["put", "k", "-5"], "put", ["k", "-5"]),
        (["status", "--json", "--servers", "h:1"], "status", []),
        (["session", "show", "--json"], "session", ["show"]),
    ],
)
def test_options_anywhere_and_double_dash(argv, name, args):
    command = cli.parse_command_line(argv)
    assert (command.name, command.args) == (name, args)


def test_options_after_the_command_take_effect():
    command = cli.parse_command_line(["put", "k", "v", "--timeout", "1.5", "-q",
                                      "--servers=h:1", "--no-session"])
    options = command.options
    assert (options.timeout, options.quiet, options.servers, options.no_session) == (
        1.5, True, "h:1", True)


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "COMMAND" in out and "session show" in out
    assert "REPLICAD_SERVERS" in out and "exit codes" in out


def test_version(capsys):
    assert run(capsys, "--version") == (0, f"replicad-cli {replicad.__version__}\n", "")
    assert run(capsys, "get", "k", "--version")[1] == f"replicad-cli {replicad.__version__}\n"


# Exit codes and output -------------------------------------------------------------------


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


def test_no_cluster_running_fails_fast_and_says_so(capsys, refused):  # noqa: F811
    code, out, err = run(capsys, "--servers", refused, "--timeout", "60", "--no-session",
                         "get", "k")
    assert code == 3
    assert out == ""
    assert_one_error_line(err)
    assert refused in err and err.rstrip().endswith("is the cluster running?")


def test_get_prints_the_value_alone(capsys, scripted):
    s = scripted(answer(Reply("VALUE", "hello  world"), vc=VectorClock({3: 4}), by=3))
    code, out, err = run(capsys, "--servers", s.address, "--no-session", "get", "k")
    assert (code, out, err) == (0, "hello  world\n", "")
    assert s.requests == ["@r=-;w=- GET k"]


def test_a_command_runs_without_importing_twisted(scripted):
    """Every replicad-cli command is a new process, and importing Twisted (with
    pyOpenSSL) was about half of its start-up: the CLI and the blocking client do
    without it.  A whole GET in a fresh interpreter, then what it imported."""
    s = scripted(answer(Reply("VALUE", "v"), vc=VectorClock({3: 4}), by=3))
    code = ("import sys\nfrom replicad import cli\n"
            "status = cli.main(sys.argv[1:])\n"
            "print(status, sorted({m.split('.')[0] for m in sys.modules}"
            " & {'twisted', 'OpenSSL', 'zope'}))")
    done = subprocess.run([sys.executable, "-c", code, "--servers", s.address,
                           "--no-session", "get", "k"], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.splitlines() == ["v", "0 []"], done.stdout + done.stderr


def test_get_missing_exits_1(capsys, scripted):
    s = scripted(answer(Reply("NOTFOUND")))
    code, out, err = run(capsys, "--servers", s.address, "--no-session", "get", "k")
    assert code == 1 and out == ""
    assert_one_error_line(err)


def test_del_prints_ok_and_a_missing_key_exits_1(capsys, scripted):
    missing = scripted(answer(Reply("NOTFOUND")))
    present = scripted(answer(Reply("OK")))
    assert run(capsys, "--servers", missing.address, "--no-session", "del", "k")[0] == 1
    assert run(capsys, "--servers", present.address, "--no-session", "del", "k") == (
        0, "OK\n", "")
    assert run(capsys, "--servers", present.address, "--no-session", "del", "k", "-q") == (
        0, "", "")


def test_err_reply_exits_4(capsys, scripted):
    s = scripted(answer(error_reply(Code.TOOBIG, "value is 9 bytes, the limit is 8 bytes")))
    code, out, err = run(capsys, "--servers", s.address, "--no-session", "put", "k", "v")
    assert code == 4 and out == ""
    assert_one_error_line(err)
    assert "TOOBIG" in err


def test_auth_error_exits_4_with_a_hint(capsys, scripted):
    s = scripted(answer(error_reply(Code.AUTH, "this cluster needs a password")))
    code, _, err = run(capsys, "--servers", s.address, "--no-session", "get", "k")
    assert code == 4 and "REPLICAD_PASSWORD" in err
    assert_one_error_line(err)


def test_write_in_doubt_until_the_timeout_exits_3(capsys, scripted):
    s = scripted(answer(error_reply(Code.INDOUBT, "forwarded write got no answer")))
    code, _, err = run(capsys, "--servers", s.address, "--no-session", "--timeout", "0.5",
                       "put", "k", "v")
    assert code == 3
    assert_one_error_line(err)
    assert "may or may not" in err
    assert len({rid_of(line) for line in s.requests}) == 1   # always the same id


def test_write_in_doubt_then_ok_elsewhere_exits_0(capsys, scripted):
    doubtful = scripted(answer(error_reply(Code.INDOUBT, "coordinator 3 did not answer")))
    good = scripted(answer(Reply("OK")))
    code, out, err = run(capsys, "--servers", f"{doubtful.address},{good.address}",
                         "--no-session", "put", "k", "v")
    assert (code, out, err) == (0, "OK\n", "")
    assert rid_of(doubtful.requests[0]) == rid_of(good.requests[0])


def test_put_joins_words_and_prints_ok(capsys, scripted):
    s = scripted(answer(Reply("OK")))
    code, out, err = run(capsys, "--servers", s.address, "--no-session",
                         "put", "k", "a", "b", "--", "--c")
    assert (code, out, err) == (0, "OK\n", "")
    assert s.requests[0].endswith(" PUT k a b --c")


def test_put_with_options_after_the_value_stores_only_the_value(capsys, scripted):
    s = scripted(answer(Reply("OK")))
    code, out, _ = run(capsys, "--no-session", "put", "k", "hello", "--servers", s.address,
                       "--timeout", "3")
    assert (code, out) == (0, "OK\n")
    assert s.requests[0].endswith(" PUT k hello")


def test_put_quiet_prints_nothing(capsys, scripted):
    s = scripted(answer(Reply("OK")))
    assert run(capsys, "-q", "--servers", s.address, "--no-session", "put", "k", "v") == (
        0, "", "")


def test_put_dash_reads_stdin_without_the_final_newline(capsys, scripted, monkeypatch):
    s = scripted(answer(Reply("OK")))
    monkeypatch.setattr(sys, "stdin", piped(b"from stdin \n"))
    code, _, _ = run(capsys, "--servers", s.address, "--no-session", "put", "k", "-")
    assert code == 0
    assert s.requests[0].endswith(" PUT k from stdin ")


def test_put_without_a_value_reads_a_piped_stdin(capsys, scripted, monkeypatch):
    s = scripted(answer(Reply("OK")))
    monkeypatch.setattr(sys, "stdin", piped(b"hi\r\n"))
    code, out, _ = run(capsys, "--servers", s.address, "--no-session", "put", "k")
    assert (code, out) == (0, "OK\n")
    assert s.requests[0].endswith(" PUT k hi")


def test_put_without_a_value_and_an_empty_stdin_is_a_usage_error(capsys, monkeypatch,
                                                                    refused):  # noqa: F811
    monkeypatch.setattr(sys, "stdin", piped(b""))
    code, _, err = run(capsys, "--servers", refused, "--no-session", "put", "k")
    assert code == 2 and "empty" in err
    assert_one_error_line(err)


def test_a_multi_line_stdin_value_is_bad_input(capsys, monkeypatch, refused):  # noqa: F811
    monkeypatch.setattr(sys, "stdin", piped(b"two\nlines\n"))
    code, _, err = run(capsys, "--servers", refused, "--no-session", "put", "k")
    assert code == 2 and "BADVALUE" in err


def test_keys_one_per_line(capsys, scripted):
    s = scripted(answer(Reply("KEYS", lines=("a", "b"))))
    assert run(capsys, "--servers", s.address, "--no-session", "keys", "x") == (0, "a\nb\n", "")
    assert s.requests == ["@r=-;w=- KEYS x"]


STATUS_BODY = ("id 2", "role follower", "coordinator 3", "epoch 5", "clock 1:2,3:4",
               "keys 7", "peers 1:up,3:down", "conflicts 0", "write_quorum 1",
               "mode available", f"cluster_id {CLUSTER_A}", "version 0.2.0")


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
    assert (status["cluster_id"], status["version"], status["mode"]) == (
        CLUSTER_A, "0.2.0", "available")


def test_status_human(capsys, scripted):
    s = scripted(answer(Reply("STATUS", lines=STATUS_BODY)))
    code, out, _ = run(capsys, "status", "--servers", s.address, "--no-session")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["server", s.address]
    assert ["coordinator", "3"] in [line.split() for line in lines]
    assert ["clock", "1:2,3:4"] in [line.split() for line in lines]


# Where the servers come from ---------------------------------------------------------


def test_servers_from_the_environment(capsys, scripted, monkeypatch):
    s = scripted(answer(Reply("VALUE", "from env")))
    monkeypatch.setenv(cli.ENV_SERVERS, s.address)
    assert run(capsys, "--no-session", "get", "k") == (0, "from env\n", "")


def test_servers_on_the_command_line_beat_the_environment(capsys, scripted, monkeypatch,
                                                         refused):  # noqa: F811
    s = scripted(answer(Reply("VALUE", "from the command line")))
    monkeypatch.setenv(cli.ENV_SERVERS, refused)
    code, out, _ = run(capsys, "--no-session", "get", "k", "--servers", s.address)
    assert (code, out) == (0, "from the command line\n")


def test_a_bad_environment_variable_is_named(capsys, monkeypatch):
    monkeypatch.setenv(cli.ENV_SERVERS, "nohost")
    code, _, err = run(capsys, "--no-session", "get", "k")
    assert code == 2 and "$REPLICAD_SERVERS" in err


def test_client_config_file_needs_no_secret(capsys, scripted, tmp_path):
    s = scripted(answer(Reply("VALUE", "from a client file")))
    (tmp_path / "pw").write_text("sesame\n")
    ini = tmp_path / "client.ini"
    ini.write_text(f"[client]\nservers = {s.address}\ntimeout = 3\npassword_file = pw\n"
                   "tls = no\n")
    code, out, _ = run(capsys, "--config", str(ini), "--no-session", "get", "k")
    assert (code, out) == (0, "from a client file\n")
    assert s.seen[:2] == ["PING", "AUTH sesame"]
    target = cli.load_client_config(str(ini))
    assert target.timeout_s == 3.0 and target.servers == [s.address]


def test_client_config_from_the_environment(capsys, scripted, tmp_path, monkeypatch):
    s = scripted(answer(Reply("VALUE", "x")))
    ini = tmp_path / "client.ini"
    ini.write_text(f"[client]\nservers = {s.address}\n")
    monkeypatch.setenv(cli.ENV_CONFIG, str(ini))
    assert run(capsys, "--no-session", "get", "k") == (0, "x\n", "")


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("[client]\nservers = h:1\ntls = maybe\n", "tls = maybe must be yes or no"),
        ("[client]\nservers = h:1\nsecret = s\n", "unknown setting 'secret'"),
        ("[client]\ntimeout = 3\n", "needs servers"),
        ("[client]\nservers = h:1\ntimeout = soon\n", "timeout"),
        ("[client]\nservers = nohost\n", "not host:port"),
        ("[other]\nx = 1\n", "neither a [client] nor a [cluster]"),
        ("not an ini file\n", "not a valid INI file"),
    ],
)
def test_client_config_mistakes_exit_2_with_one_line(capsys, tmp_path, text, complaint):
    ini = tmp_path / "client.ini"
    ini.write_text(text)
    code, _, err = run(capsys, "--config", str(ini), "--no-session", "get", "k")
    assert code == 2 and complaint in err, err
    assert_one_error_line(err)


def test_cluster_config_file_gives_the_servers(capsys, scripted, tmp_path):
    s = scripted(answer(Reply("VALUE", "from config")))
    port = int(s.address.rsplit(":", 1)[1])
    ini = tmp_path / "cluster.ini"
    ini.write_text(f"[cluster]\nsecret = s\n\n[replica:1]\nclient = 127.0.0.1:{port}\n"
                   f"peer = 127.0.0.1:{port + 1 if port < 65535 else port - 1}\n")
    code, out, _ = run(capsys, "--config", str(ini), "--no-session", "get", "k")
    assert (code, out) == (0, "from config\n")


def test_password_from_the_environment(capsys, scripted, monkeypatch):
    s = scripted(answer(Reply("VALUE", "x")))
    monkeypatch.setenv(cli.ENV_PASSWORD, "from env")
    assert run(capsys, "--servers", s.address, "--no-session", "get", "k")[0] == 0
    assert s.seen[1] == "AUTH from env"


# The session file --------------------------------------------------------------------


def test_session_file_is_written_and_used_next_time(capsys, scripted, tmp_path):
    path = tmp_path / "sub" / "session.json"
    s = scripted(answer(Reply("OK", meta=META)))
    assert run(capsys, "--servers", s.address, "--session", str(path), "put", "k", "v")[0] == 0
    saved = json.loads(path.read_text())
    assert saved["write"] == "3:4" and saved["coordinator"] == 3
    assert sorted(os.listdir(path.parent)) == ["session.json", "session.json.lock"]
    run(capsys, "--servers", s.address, "--session", str(path), "put", "k", "v")
    client = saved["client_id"]
    assert s.requests[0] == f"@r=-;w=-;id={client}.1 PUT k v"
    assert s.requests[1] == f"@r=-;w=3:4;via=3;id={client}.2 PUT k v"


def test_runs_sharing_a_session_file_never_share_a_request_id(tmp_path):
    store = cli.SessionFile(str(tmp_path / "s.json"), warn=print)
    first = store.load(reserve_request_id=True)
    second = store.load(reserve_request_id=True)    # before the first one saved
    ids = {first.next_request_id(), second.next_request_id()}
    assert len(ids) == 2 and first.client_id == second.client_id
    store.save(second, was_reset=False)
    store.save(first, was_reset=False)
    assert store.load(reserve_request_id=True).next_request_id().endswith(".3")


def test_session_save_merges_what_another_run_saved(capsys, scripted, tmp_path):
    path = tmp_path / "session.json"
    path.write_text('{"read": "1:9", "write": "2:9"}')
    s = scripted(answer(Reply("OK", meta=META)))
    run(capsys, "--servers", s.address, "--session", str(path), "put", "k", "v")
    saved = json.loads(path.read_text())
    assert (saved["read"], saved["write"]) == ("1:9", "2:9,3:4")


def test_a_session_of_another_cluster_is_reset_with_one_line(capsys, scripted, tmp_path):
    path = tmp_path / "session.json"
    old = ClientSession(VectorClock({2: 4, 3: 40}), VectorClock({3: 40}), coordinator=3,
                        cluster=CLUSTER_A, client_id="abcdef0123456789", seq=5)
    path.write_text(old.to_json())
    answers = iter([
        error_reply(Code.STALE, "lacks writes (2:4,3:40)").with_meta(
            ReplyMeta(here=1, coord=1, cluster=CLUSTER_B)),
        Reply("OK", meta=ReplyMeta(VectorClock({1: 1}), by=1, here=1, coord=1,
                                   cluster=CLUSTER_B)),
    ])
    s = scripted(lambda line: next(answers).encode())
    code, out, err = run(capsys, "--servers", s.address, "--session", str(path),
                         "put", "k", "v")
    assert (code, out) == (0, "OK\n")
    assert_one_error_line(err)
    assert str(path) in err and CLUSTER_A in err and CLUSTER_B in err
    saved = ClientSession.from_json(path.read_text())
    assert saved.cluster == CLUSTER_B and saved.write == VectorClock({1: 1})
    assert saved.read == VectorClock() and saved.client_id != "abcdef0123456789"
    assert s.requests[1] == "@r=-;w=-;id=abcdef0123456789.6 PUT k v"


def test_a_damaged_session_file_is_reset_with_one_line(capsys, scripted, tmp_path):
    damaged = tmp_path / "session.json"
    damaged.write_text("{not json")
    s = scripted(answer(Reply("VALUE", "x")))
    code, out, err = run(capsys, "--servers", s.address, "--session", str(damaged),
                         "get", "k")
    assert (code, out) == (0, "x\n")
    assert_one_error_line(err)
    assert str(damaged) in err and "new session" in err
    assert ClientSession.from_json(damaged.read_text()) == ClientSession()


def test_an_unreadable_session_file_exits_2(capsys, tmp_path, refused):  # noqa: F811
    directory = tmp_path / "a-directory.json"
    directory.mkdir()
    code, _, err = run(capsys, "--servers", refused, "--session", str(directory), "get", "k")
    assert code == 2 and str(directory) in err
    assert_one_error_line(err)


def test_session_show_and_reset(capsys, tmp_path):
    path = tmp_path / "session.json"
    path.write_text(ClientSession(VectorClock({1: 2}), coordinator=3, cluster=CLUSTER_A,
                                  client_id="abcdef0123456789", seq=4,
                                  demoted={"h:3": 2}).to_json())
    code, out, err = run(capsys, "--session", str(path), "session", "show")
    assert code == 0 and err == ""
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert out.splitlines()[0].split() == ["file", str(path)]
    assert rows["cluster"] == [CLUSTER_A] and rows["read"] == ["1:2"]
    assert rows["coordinator"] == ["3"] and rows["client_id"] == ["abcdef0123456789"]
    assert rows["demoted"] == ["h:3"] and rows["exists"] == ["yes"]
    code, out, _ = run(capsys, "--session", str(path), "session", "show", "--json")
    shown = json.loads(out)
    assert shown["file"] == str(path) and shown["seq"] == 4 and shown["write"] == "-"
    assert run(capsys, "--session", str(path), "session", "reset") == (
        0, f"session file {path} reset\n", "")
    assert not path.exists()
    code, out, _ = run(capsys, "--session", str(path), "session", "show", "--json")
    assert json.loads(out)["exists"] is False and json.loads(out)["cluster"] is None


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


# status --cluster ------------------------------------------------------------------------


def status_body(replica: int, role: str, coordinator: int = 3,
                peers: str = "1:up,2:up,3:up") -> Reply:
    others = ",".join(p for p in peers.split(",") if not p.startswith(f"{replica}:"))
    return Reply("STATUS", lines=(f"id {replica}", f"role {role}", f"coordinator {coordinator}",
                                  "epoch 5", "clock 3:4", "keys 7", f"peers {others}",
                                  "conflicts 0", "write_quorum 1", "mode available",
                                  f"cluster_id {CLUSTER_A}", "ready yes", "version 0.2.0"))


def test_status_cluster_prints_one_table_with_a_down_server(capsys, scripted,
                                                            refused):  # noqa: F811
    one = scripted(answer(status_body(1, "follower", coordinator=2, peers="2:up,3:down")))
    two = scripted(answer(status_body(2, "coordinator", coordinator=2, peers="1:up,3:down")))
    code, out, err = run(capsys, "--servers", f"{one.address},{two.address},{refused}",
                         "--no-session", "status", "--cluster")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["SERVER", "ID", "ROLE", "COORDINATOR", "EPOCH", "CLOCK",
                                "KEYS", "PEERS", "CLUSTER", "READY", "VERSION"]
    assert lines[1].split() == [one.address, "1", "follower", "2", "5", "3:4", "7", "1/2",
                                "up", "(down:", "3)", "aaaaaaaa", "yes", "0.2.0"]
    assert lines[2].split()[:3] == [two.address, "2", "coordinator"]
    assert lines[3].split() == [refused, "-", "down"] + ["-"] * 8
    assert lines[4] == f"{refused} is down: connection refused"
    assert lines[5] == "2 of 3 up; coordinator 2 in epoch 5"


def test_status_cluster_json_is_a_list_and_names_ids_from_a_config(capsys, scripted, tmp_path,
                                                                    refused):  # noqa: F811
    one = scripted(answer(status_body(1, "follower")))
    ini = tmp_path / "cluster.ini"
    ini.write_text(f"[cluster]\nsecret = s\n[replica:1]\nclient = {one.address}\n"
                   f"peer = 127.0.0.1:1\n[replica:2]\nclient = {refused}\npeer = 127.0.0.1:2\n")
    code, out, _ = run(capsys, "--config", str(ini), "--no-session", "status", "--cluster",
                       "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["server"], r["id"], r["up"]) for r in rows] == [(one.address, 1, True),
                                                               (refused, 2, False)]
    assert rows[0]["role"] == "follower" and rows[0]["cluster_id"] == CLUSTER_A
    assert rows[1]["error"] == "connection refused"


def test_status_cluster_with_nobody_up_exits_3(capsys, refused):  # noqa: F811
    code, out, _ = run(capsys, "--servers", refused, "--no-session", "status", "--cluster")
    assert code == 3
    assert out.splitlines()[-1] == "0 of 1 up"


def test_cluster_goes_with_status_only(capsys):
    code, _, err = run(capsys, "--no-session", "get", "k", "--cluster")
    assert code == 2 and "--cluster goes with status" in err


# TLS settings ----------------------------------------------------------------------------


def tls_of(argv: list[str], env: dict[str, str] | None = None) -> tuple[bool, str | None]:
    command = cli.parse_command_line([*argv, "get", "k"])
    env = env or {}
    return cli.tls_settings(command.options, cli.resolve_target(command.options, env), env)


def test_tls_settings_and_their_precedence(tmp_path):
    assert tls_of(["--servers", "h:1"]) == (False, None)
    assert tls_of(["--servers", "h:1", "--tls"]) == (True, None)
    assert tls_of(["--servers", "h:1", "--cacert", "a.pem"]) == (True, "a.pem")
    env = {cli.ENV_CACERT: "env.pem"}
    assert tls_of(["--servers", "h:1"], env) == (True, "env.pem")
    assert tls_of(["--servers", "h:1", "--cacert", "a.pem"], env) == (True, "a.pem")
    client = tmp_path / "client.ini"
    client.write_text("[client]\nservers = h:1\ncacert = ca/ca.pem\n")
    assert tls_of(["--config", str(client)]) == (True, str(tmp_path / "ca" / "ca.pem"))
    assert tls_of(["--config", str(client)], env) == (True, "env.pem")
    client.write_text("[client]\nservers = h:1\ntls = yes\n")
    assert tls_of(["--config", str(client)]) == (True, None)
    cluster = tmp_path / "cluster.ini"
    cluster.write_text("[cluster]\nsecret = s\n[replica:1]\nclient = h:1\npeer = h:2\n"
                       "client_listen = ssl:1:privateKey=k.pem\n")
    assert tls_of(["--config", str(cluster)]) == (True, None)


def test_an_unreadable_ca_file_exits_2_before_any_network_use(capsys, refused):  # noqa: F811
    code, _, err = run(capsys, "--servers", refused, "--no-session", "--cacert",
                       "/nonexistent/ca.pem", "get", "k")
    assert code == 2
    assert_one_error_line(err)
    assert "cannot read the CA file /nonexistent/ca.pem" in err


def test_a_tls_failure_exits_3_with_one_line_and_a_hint(capsys, monkeypatch,
                                                        refused):  # noqa: F811
    from replicad.client import NoServerAvailable

    def unverified(self, key):
        raise NoServerAvailable("the TLS handshake failed with every server (h:1): TLS: "
                                "certificate verify failed", ["h:1"], tls_failed=True)

    monkeypatch.setattr(BlockingClient, "get", unverified)
    code, _, err = run(capsys, "--servers", refused, "--no-session", "--tls", "get", "k")
    assert code == 3
    assert_one_error_line(err)
    assert "give the CA certificate that signed the servers' certificates with --cacert" in err
