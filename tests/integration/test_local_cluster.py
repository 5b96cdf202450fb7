"""replicad-local as a user runs it: the demo, and SIGTERM leaving no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from replicad.cluster import find_free_base_port

LOCAL = os.path.join(os.path.dirname(sys.executable), "replicad-local")


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is pid (from /proc, no extra package)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_demo_runs_and_succeeds(tmp_path):
    base = find_free_base_port(3)
    result = subprocess.run(
        [LOCAL, "--demo", "--base-port", str(base), "--data-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> done" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_sigterm_stops_every_replica(tmp_path):
    base = find_free_base_port(3)
    local = subprocess.Popen(
        [LOCAL, "--base-port", str(base), "--data-dir", str(tmp_path / "c")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        replicas: list[int] = []
        while time.monotonic() < deadline and len(replicas) < 3:
            replicas = children_of(local.pid)
            time.sleep(0.05)
        assert len(replicas) == 3
        for line in local.stdout:     # wait until it says the cluster is up
            if f"127.0.0.1:{base + 3}" in line:
                break
        local.send_signal(signal.SIGTERM)
        assert local.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in replicas):
            time.sleep(0.05)
        assert not any(alive(pid) for pid in replicas)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
