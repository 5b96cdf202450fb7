"""LocalCluster without the real replica: the config it writes, the command it runs, ports,
and its process handling, exercised with a tiny fake replica that only answers STATUS;
replicad-local's command line and banner; no import cycle between the tools' modules."""

from __future__ import annotations

import ast
import io
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from replicad import cluster as cluster_module
from replicad import local
from replicad.cluster import (
    ClusterError,
    LocalCluster,
    find_free_base_port,
    parse_settings,
    port_free,
)
from replicad.config import ConfigError, load_config
from replicad.usage import UsageError


def test_config_file_loads_with_the_right_ports(tmp_path):
    local = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path))
    path = local.write_config()
    assert path == str(tmp_path / "cluster.ini")
    config = load_config(path)
    assert config.ids == [1, 2, 3]
    for i in (1, 2, 3):
        assert (config.members[i].client.host, config.members[i].client.port) == (
            "127.0.0.1", 17000 + i)
        assert config.members[i].peer.port == 17100 + i
    assert not config.uses_default_secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert local.addresses() == ["127.0.0.1:17001", "127.0.0.1:17002", "127.0.0.1:17003"]
    assert local.address(2) == "127.0.0.1:17002"


def test_secret_is_generated_once_per_data_dir(tmp_path):
    first = load_config(LocalCluster(data_dir=str(tmp_path), base_port=17000).write_config())
    again = load_config(LocalCluster(data_dir=str(tmp_path), base_port=17000).write_config())
    other = load_config(LocalCluster(data_dir=str(tmp_path / "b"), base_port=17000)
                        .write_config())
    assert first.secret == again.secret != other.secret


def test_overrides_go_into_the_cluster_section(tmp_path):
    local = LocalCluster(size=2, base_port=17000, data_dir=str(tmp_path),
                         overrides={"write_quorum": "2", "ping_interval": "0.5"})
    config = load_config(local.write_config())
    assert config.write_quorum == 2
    assert config.timers.ping_interval == 0.5


@pytest.mark.parametrize("overrides", [{"colour": "blue"}, {"write_quorum": "5"}])
def test_bad_overrides_are_config_errors(tmp_path, overrides):
    local = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path), overrides=overrides)
    with pytest.raises(ConfigError):
        local.write_config()


@pytest.mark.parametrize("size, base_port", [(0, 7000), (65, 7000), (3, 65500), (3, 0)])
def test_impossible_layouts_are_refused(tmp_path, size, base_port):
    with pytest.raises(ClusterError):
        LocalCluster(size=size, base_port=base_port, data_dir=str(tmp_path))


def test_twistd_command_line(tmp_path):
    local = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path))
    d = str(tmp_path)
    assert local.command(2) == [
        *cluster_module.twistd_command(), "-n",
        "--pidfile", f"{d}/replica-2.pid",
        "--logfile", f"{d}/replica-2.log",
        "replicad", "--id", "2",
        "--config", f"{d}/cluster.ini",
        "--data-dir", f"{d}/replica-2",
    ]
    with pytest.raises(ValueError):
        local.command(4)


def test_twistd_command_runs_twistd():
    result = subprocess.run([*cluster_module.twistd_command(), "--version"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "twistd" in result.stdout.lower()


def test_find_free_base_port_returns_free_ports():
    base = find_free_base_port(size=3)
    ports = [base + i for i in (1, 2, 3, 101, 102, 103)]
    assert all(port_free("127.0.0.1", p) for p in ports)


def test_port_in_use_is_one_clear_error(tmp_path):
    base = find_free_base_port(size=2)
    with socket.create_server(("127.0.0.1", base + 102)):
        local = LocalCluster(size=2, base_port=base, data_dir=str(tmp_path))
        with pytest.raises(ClusterError, match=f"port {base + 102} .*peer port of replica 2"):
            local.start()
        assert local.live_ids() == []   # checked before starting anything


# Process handling with a fake replica ----------------------------------------------------

FAKE_REPLICA = textwrap.dedent("""
    import socket, sys
    port, my_id, coordinator, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    if coordinator == "die":
        print("fake replica: cannot start, config is broken", flush=True)
        sys.exit(3)
    with open(log, "a") as f:
        f.write(f"fake replica {my_id} listening on {port}\\n")
    server = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            body = [f"id {my_id}", "role follower", f"coordinator {coordinator}", "epoch 1"]
            reply = [f"STATUS {len(body)}", *body, "END"]
            conn.sendall("".join(line + "\\r\\n" for line in reply).encode())
""")


class FakeCluster(LocalCluster):
    """Runs FAKE_REPLICA instead of twistd; every replica names `coordinator`."""

    coordinator_id = "3"

    def command(self, i: int) -> list[str]:
        return [sys.executable, "-c", FAKE_REPLICA, str(self.client_address(i).port), str(i),
                self.coordinator_id, self.log_path(i)]


@pytest.fixture
def fake(tmp_path):
    local = FakeCluster(size=3, base_port=find_free_base_port(3), data_dir=str(tmp_path))
    yield local
    local.stop()


def test_start_wait_ready_kill_and_stop(fake):
    with fake:
        fake.start()
        assert fake.wait_ready(timeout_s=15) == 3
        assert fake.coordinator() == 3
        assert fake.status(1)["server"] == fake.address(1)
        pids = [fake.pid(i) for i in fake.ids]
        fake.kill(2)
        assert not fake.running(2) and fake.status(2) is None
        assert fake.exit_text(2) == "signal SIGKILL"
        assert fake.live_ids() == [1, 3]
        with pytest.raises(ClusterError, match="already running"):
            fake.start_replica(1)
        fake.start_replica(2)
        assert fake.wait_ready(timeout_s=15) == 3
    assert fake.live_ids() == []
    for pid in pids:
        assert not _alive(pid)
    fake.stop()   # idempotent


def test_wait_until_timeout_names_what_and_shows_logs(fake):
    fake.start()
    fake.wait_ready(timeout_s=15)
    with pytest.raises(TimeoutError) as info:
        fake.wait_until(lambda: False, timeout_s=0.2, what="pigs to fly")
    message = str(info.value)
    assert "pigs to fly" in message
    assert "fake replica 1 listening" in message
    assert "'coordinator': 3" in message


def test_wait_ready_reports_a_replica_that_died_at_start(tmp_path):
    local = FakeCluster(size=2, base_port=find_free_base_port(2), data_dir=str(tmp_path))
    local.coordinator_id = "die"          # both die: whichever is seen first is named
    with local, pytest.raises(ClusterError,
                              match=r"replica [12] exited with exit status 3") as info:
        local.start()
        local.wait_ready(timeout_s=15)
    assert "config is broken" in str(info.value)


def test_wait_ready_needs_a_live_coordinator(tmp_path):
    local = FakeCluster(size=2, base_port=find_free_base_port(2), data_dir=str(tmp_path))
    local.coordinator_id = "7"
    with local, pytest.raises(TimeoutError, match="same live coordinator"):
        local.start()
        local.wait_ready(timeout_s=0.5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_replicas_do_not_outlive_a_killed_parent(tmp_path):
    parent_code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_cluster_unit import FakeCluster
        from replicad.cluster import find_free_base_port
        local = FakeCluster(size=2, base_port=find_free_base_port(2), data_dir={str(tmp_path)!r})
        local.start()
        print(" ".join(str(local.pid(i)) for i in local.ids), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              text=True)
    try:
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2 and all(_alive(pid) for pid in children)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in children if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever inherited it."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


# Settings and the replicad-local command line --------------------------------------------


def test_parse_settings():
    assert parse_settings([]) == {}
    assert parse_settings(["write_quorum=2", " ping_interval = 0.5 ", "client_password=a=b"]) \
        == {"write_quorum": "2", "ping_interval": "0.5", "client_password": "a=b"}
    for bad in ("write_quorum", "=2", " =2"):
        with pytest.raises(ValueError, match="--set needs NAME=VALUE"):
            parse_settings([bad])


def test_data_dirs_of_the_demo_and_of_the_cluster_differ(tmp_path):
    parser = local.build_parser()
    plain = local.cluster_from_args(parser.parse_args([]))
    demo = local.cluster_from_args(parser.parse_args(["--demo"]))
    assert plain.data_dir == os.path.abspath("replicad-local")
    assert demo.data_dir == os.path.abspath("replicad-demo")
    chosen = local.cluster_from_args(parser.parse_args(["--demo", "--data-dir", str(tmp_path)]))
    assert chosen.data_dir == str(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--size", "three"], "invalid int value"),
    (["--colour", "blue"], "unrecognized arguments"),
    (["--set", "write_quorum"], "--set needs NAME=VALUE"),
])
def test_command_line_mistakes_are_the_one_usage_error(argv, message):
    with pytest.raises(UsageError, match=message):
        local.cluster_from_args(local.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    (["--size", "0"], "size must be between"),
    (["--set", "colour=blue"], "colour"),
    (["--bogus"], "unrecognized arguments: --bogus (see replicad-local --help)"),
])
def test_main_reports_mistakes_in_one_line_before_starting_anything(tmp_path, capsys, argv,
                                                                     message):
    assert local.main([*argv, "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("replicad-local: ") and message in err
    assert err.count("\n") == 1
    assert not os.path.exists(tmp_path / "d" / "replica-1")


def test_the_tools_share_one_usage_error():
    from replicad import usage

    assert local.UsageError is usage.UsageError
    assert not hasattr(cluster_module, "_Usage")
    with pytest.raises(usage.UsageError):
        local.build_parser().parse_args(["--size"])


# The banner: commands that work as printed ------------------------------------------------


@pytest.fixture
def venv(tmp_path):
    """A fake interpreter directory holding an executable replicad-cli, as in .venv/bin."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "replicad-cli"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def banner(local_cluster, coordinator=3, **kwargs) -> list[str]:
    out = io.StringIO()
    local.print_banner(local_cluster, coordinator, out, **kwargs)
    return out.getvalue().splitlines()


def test_banner_names_the_cli_by_path_with_this_clusters_servers(tmp_path, venv):
    cluster = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path / "data"))
    lines = banner(cluster, 3, cluster_id="ab" * 16, executable=str(venv / "python"),
                   cwd=str(tmp_path))
    cli = "venv/bin/replicad-cli --servers 127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003"
    assert lines == [
        "replicad-local: 3 replicas are up; replica 3 is the coordinator "
        f"(cluster id {'ab' * 16}).",
        "  replica 1: client 127.0.0.1:17001  peer 127.0.0.1:17101  log data/replica-1.log",
        "  replica 2: client 127.0.0.1:17002  peer 127.0.0.1:17102  log data/replica-2.log",
        "  replica 3: client 127.0.0.1:17003  peer 127.0.0.1:17103  log data/replica-3.log",
        "Try, in another terminal in this directory:",
        f"  {cli} put greeting hello world",
        f"  {cli} get greeting",
        f"  {cli} status",
        "  kill -9 $(cat data/replica-3.pid)   # then see another replica take over",
        "Data is kept in data between runs. Press Ctrl-C to stop.",
    ]


def test_banner_paths_outside_the_directory_are_absolute(tmp_path, venv):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cluster = LocalCluster(size=2, base_port=17000, data_dir=str(tmp_path / "data"))
    commands = local.suggested_commands(cluster, 2, executable=str(venv / "python"),
                                        cwd=str(elsewhere))
    assert commands[0] == (f"{venv}/replicad-cli --servers 127.0.0.1:17001,127.0.0.1:17002 "
                           "put greeting hello world")
    assert commands[-1] == f"kill -9 $(cat {tmp_path}/data/replica-2.pid)"


def test_banner_quotes_paths_for_the_shell(tmp_path):
    bin_dir = tmp_path / "my venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "replicad-cli").write_text("#!/bin/sh\n")
    (bin_dir / "replicad-cli").chmod(0o755)
    cluster = LocalCluster(size=1, base_port=17000, data_dir=str(tmp_path / "a dir"))
    put, get, status, kill = local.suggested_commands(
        cluster, 1, executable=str(bin_dir / "python"), cwd=str(tmp_path))
    assert shlex.split(get) == ["my venv/bin/replicad-cli", "--servers", "127.0.0.1:17001",
                                "get", "greeting"]
    assert kill == "kill -9 $(cat 'a dir/replica-1.pid')"
    os.makedirs(tmp_path / "a dir")
    (tmp_path / "a dir" / "replica-1.pid").write_text("12345")
    echoed = subprocess.run(["sh", "-c", kill.replace("kill -9", "echo", 1)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert echoed.stdout == "12345\n"


def test_a_cli_in_the_current_directory_is_run_as_dot_slash(venv):
    assert local.cli_program(str(venv / "python"), cwd=str(venv)) == ["./replicad-cli"]


def test_without_a_console_script_the_cli_runs_as_a_module(tmp_path):
    python = tmp_path / "python"
    assert local.cli_program(str(python), cwd=str(tmp_path)) == [
        "./python", "-m", "replicad.cli"]


def test_the_real_cli_is_found_next_to_this_interpreter():
    (program,) = local.cli_program()
    assert os.path.isfile(program) and os.access(program, os.X_OK)
    assert os.path.samefile(program, os.path.join(os.path.dirname(sys.executable),
                                                  "replicad-cli"))


def test_a_client_password_goes_into_a_file_the_commands_name(tmp_path, venv):
    cluster = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path / "data"),
                           overrides={"client_password": "s3cret"})
    cluster.write_config()
    path = local.write_password_file(cluster)
    assert path == str(tmp_path / "data" / "client-password")
    assert open(path).read() == "s3cret\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    put = local.suggested_commands(cluster, 3, executable=str(venv / "python"),
                                   cwd=str(tmp_path))[0]
    assert "--password-file data/client-password put greeting" in put
    assert "s3cret" not in "\n".join(banner(cluster, executable=str(venv / "python")))
    assert local.write_password_file(LocalCluster(data_dir=str(tmp_path / "b"))) is None


def test_starting_line_says_whether_the_cluster_is_new(tmp_path):
    cluster = LocalCluster(size=3, base_port=17000, data_dir=str(tmp_path))
    out = io.StringIO()
    local.print_starting(cluster, True, out)
    local.print_starting(cluster, False, out)
    new, kept = out.getvalue().splitlines()
    assert new.startswith("replicad-local: starting 3 replicas on 127.0.0.1:17001-17003 (a new")
    assert "agree on a cluster id" in new
    assert "data kept in" in kept


# No import cycle ---------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imported_modules(path: str) -> set[str]:
    """Every module a source file imports, at any depth (functions, TYPE_CHECKING too)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_cluster_imports_neither_the_demo_nor_replicad_local():
    imported = _imported_modules(os.path.join(REPO, "replicad", "cluster.py"))
    assert not imported & {"replicad.demo", "replicad.local"}
    assert not _imported_modules(os.path.join(REPO, "replicad", "demo.py")) & {"replicad.local"}
    assert not _imported_modules(os.path.join(REPO, "replicad", "usage.py"))


@pytest.mark.parametrize("first, then", [
    ("replicad.cluster", "replicad.demo"),
    ("replicad.demo", "replicad.cluster"),
    ("replicad.local", "replicad.cluster"),
])
def test_no_import_cycle_in_a_fresh_interpreter(first, then):
    code = textwrap.dedent(f"""
        import sys
        import {first}
        import {then}
        # Now on its own: importing cluster must not pull in the tools built on it.
        for name in ("replicad.cluster", "replicad.demo", "replicad.local"):
            sys.modules.pop(name, None)
        import replicad.cluster
        print(",".join(m for m in ("replicad.demo", "replicad.local") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_make_uses_separate_data_dirs():
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")

    def dry_run(target: str) -> str:
        return subprocess.run([make, "-n", target], capture_output=True, text=True, cwd=REPO,
                              timeout=60).stdout

    demo, cluster, clean = dry_run("demo"), dry_run("cluster"), dry_run("clean")
    assert "rm -rf ./replicad-demo\n" in demo
    assert "replicad-local --demo --data-dir ./replicad-demo" in demo
    assert "replicad-local --data-dir ./replicad-local" in cluster
    assert "rm -rf" not in cluster
    assert "./replicad-demo" in clean and "./replicad-local" in clean
