"""LocalCluster without the real replica: the config it writes, the command it runs, ports,
and its process handling, exercised with a tiny fake replica that only answers STATUS."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from replicad import cluster as cluster_module
from replicad.cluster import ClusterError, LocalCluster, find_free_base_port, port_free
from replicad.config import ConfigError, load_config


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
    local.coordinator_id = "die"
    with local, pytest.raises(ClusterError, match="replica 1 exited with exit status 3") as info:
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
