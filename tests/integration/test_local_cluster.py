"""replicad-local as a user runs it: the demo, the commands it prints (run as printed),
and SIGTERM leaving no orphans."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

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
    base = find_free_base_port(3, admin=True)   # replicad-local serves admin ports
    result = subprocess.run(
        [LOCAL, "--demo", "--base-port", str(base), "--data-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> done" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_sigterm_stops_every_replica(tmp_path):
    base = find_free_base_port(3, admin=True)   # replicad-local serves admin ports
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


class Lines:
    """A child's stdout, read line by line on a thread so that waits have deadlines."""

    def __init__(self, stream):
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, predicate, timeout_s: float = 40.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError("no matching line; output so far:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if predicate(line):
                return line


@pytest.mark.parametrize("settings", [[], ["--set", "client_password=s3cret word"]],
                         ids=["plain", "with-password"])
def test_the_printed_commands_work_as_printed(tmp_path, settings):
    """From the directory replicad-local runs in, every suggested line works when pasted
    into a shell: the CLI by its path, this cluster's (non-default) ports, the password."""
    base = find_free_base_port(3, admin=True)   # replicad-local serves admin ports
    env = dict(os.environ, REPLICAD_SESSION=str(tmp_path / "session.json"))
    env.pop("REPLICAD_PASSWORD", None)
    # As after `make cluster`: the virtualenv's bin directory is not on PATH.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                  if d and os.path.abspath(d) != bin_dir)
    local = subprocess.Popen(
        [LOCAL, "--base-port", str(base), "--data-dir", "data", *settings],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = Lines(local.stdout)
        lines.until(lambda line: line.startswith("Try, in another terminal"))
        printed = [lines.until(lambda line: True) for _ in range(4)]
        lines.until(lambda line: "Press Ctrl-C to stop" in line)
        put, get, status, kill = (line.strip().split("   #")[0] for line in printed)
        servers = ",".join(f"127.0.0.1:{base + i}" for i in (1, 2, 3))
        assert f"--servers {servers}" in put
        assert shlex.split(put)[0] == os.path.join(bin_dir, "replicad-cli")   # not under cwd
        assert kill == "kill -9 $(cat data/replica-3.pid)"

        def shell(command: str) -> subprocess.CompletedProcess:
            # As a user pastes it: a shell, in the same directory, no extra PATH entry.
            return subprocess.run(command, shell=True, cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=60)

        done = shell(put)
        assert done.returncode == 0, done.stderr
        done = shell(get)
        assert (done.returncode, done.stdout) == (0, "hello world\n"), done.stderr
        done = shell(status)
        assert done.returncode == 0 and "coordinator" in done.stdout, done.stderr

        done = shell(kill)
        assert done.returncode == 0, done.stderr
        lines.until(lambda line: "replica 3 exited (signal SIGKILL)" in line)
        done = shell(get)      # the next coordinator serves it
        assert (done.returncode, done.stdout) == (0, "hello world\n"), done.stderr

        local.send_signal(signal.SIGTERM)
        assert local.wait(timeout=30) == 0
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
        local.stdout.close()
