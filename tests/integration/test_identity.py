"""Issue #7 item 4 end to end: a data dir is locked by its process and claimed by its
replica, so a second replicad on it, or a start with the wrong --id, stops with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import replicad
from replicad.client import BlockingClient, ClientError
from replicad.cluster import twistd_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(replicad.__file__)))


def twistd(*args: str, cwd, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return subprocess.run([*twistd_command(), *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd, env=env)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a start-up that must fail; nothing else printed."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replicad: error: ")
    return lines[0]


def replica_args(cluster, i: int, data_dir: str) -> list[str]:
    return ["replicad", "--id", str(i), "--config", cluster.config_path, "--data-dir", data_dir]


def test_a_second_replicad_on_a_running_replicas_data_dir_exits_with_one_line(
        start_cluster, tmp_path):
    cluster = start_cluster()
    data_dir = cluster.replica_dir(2)
    result = twistd("-n", "--pidfile", "", *replica_args(cluster, 2, data_dir), cwd=tmp_path)
    assert one_line(result) == (
        f"replicad: error: data dir {data_dir} is in use by another replicad process "
        f"(pid {cluster.pid(2)})"
    )
    # The running replica did not notice.
    assert BlockingClient([cluster.address(2)], timeout_s=5).status()["id"] == 2
    cluster.check_alive()


def test_a_data_dir_of_another_replica_exits_with_one_line(start_cluster, tmp_path):
    cluster = start_cluster()
    cluster.stop()                       # replica 2's data dir is free, and claimed by 2
    data_dir = cluster.replica_dir(2)
    result = twistd("-n", "--pidfile", "", *replica_args(cluster, 3, data_dir), cwd=tmp_path)
    database = os.path.join(data_dir, "replica.sqlite")
    assert one_line(result) == (
        f"replicad: error: {database} belongs to replica 2, not replica 3: wrong --data-dir?"
    )


def test_the_lock_survives_daemonizing_and_names_the_daemon(start_cluster, tmp_path):
    cluster = start_cluster()
    cluster.kill(3)                      # run replica 3 as a real daemon instead
    data_dir = cluster.replica_dir(3)
    pidfile = str(tmp_path / "daemon.pid")
    started = twistd("--pidfile", pidfile, "--logfile", str(tmp_path / "daemon.log"),
                     *replica_args(cluster, 3, data_dir), cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    daemon_pid = None
    try:
        deadline = time.monotonic() + 20
        while daemon_pid is None and time.monotonic() < deadline:
            try:
                with open(pidfile) as f:
                    daemon_pid = int(f.read().strip() or 0) or None
            except FileNotFoundError:
                time.sleep(0.05)
        assert daemon_pid is not None, "the daemon wrote no pidfile"
        cluster.wait_until(lambda: answers(cluster.address(3)), timeout_s=20,
                           what="the daemonized replica 3 answers")
        result = twistd("-n", "--pidfile", "", *replica_args(cluster, 3, data_dir),
                        cwd=tmp_path)
        # The parent that took the lock exited when twistd forked; the daemon holds it
        # and its pid is the one named.
        assert one_line(result) == (
            f"replicad: error: data dir {data_dir} is in use by another replicad process "
            f"(pid {daemon_pid})"
        )
    finally:
        if daemon_pid is not None:
            stop_process(daemon_pid)


def answers(address: str) -> bool:
    try:
        return BlockingClient([address], timeout_s=1, connect_timeout_s=0.5).status()["id"] == 3
    except ClientError:
        return False


def stop_process(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM the daemon we started, SIGKILL it if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
