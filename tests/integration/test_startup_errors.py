"""Every start-up failure of a real ``twistd replicad`` is ONE line starting
``replicad: error:`` and a non-zero exit, never a traceback: in the foreground (-n) on
stderr, and daemonizing (--pidfile, --logfile) with the line whole in the log, the pid
file gone and twistd's exit status non-zero.

Most failures are found before twistd forks; a listener that fails after the fork
(here a unix: socket in a missing directory, which no check before the fork looks at)
takes the other path: the log, stderr and twistd's status pipe."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from replicad.cluster import PEER_PORT_OFFSET, find_free_base_port, twistd_command
from tests.tlscerts import make_ca

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports() -> tuple[int, int]:
    """A client and a peer port, free and distinct (two binds to port 0 in a row may
    get the same port back: a CI run failed so)."""
    base = find_free_base_port(1)
    return base + 1, base + PEER_PORT_OFFSET + 1


class Case:
    """A config that cannot start, what the line must say, and what else it needs."""

    def __init__(self, tmp_path, client: str = "", extra: str = "", expected: str = "",
                 hold_port: bool = False, env: dict[str, str] | None = None):
        self.client_port, self.peer_port = free_ports()
        host = client or "127.0.0.1"
        extra = extra.format(port=self.client_port, peer=self.peer_port, tmp=tmp_path)
        self.config = tmp_path / "cluster.ini"
        self.config.write_text(
            "[cluster]\nsecret = s\n\n[replica:1]\n"
            f"client = {host}:{self.client_port}\npeer = 127.0.0.1:{self.peer_port}\n{extra}")
        self.expected = expected
        self.hold_port = hold_port
        self.env = env or {}


def _tls_lines(cert: str, key: str) -> str:
    return (f"client_listen = ssl:{{port}}:interface=127.0.0.1:privateKey={key}:"
            f"certKey={cert}\n")


def port_in_use(tmp_path) -> Case:
    return Case(tmp_path, expected="address already in use", hold_port=True)


def bad_endpoint(tmp_path) -> Case:
    return Case(tmp_path, extra="client_listen = tpc:{port}\n",
                expected="unknown endpoint type 'tpc'")


def missing_certificate(tmp_path) -> Case:
    ca = make_ca(str(tmp_path / "pki"))
    server = ca.issue(str(tmp_path / "pki"), "server")
    return Case(tmp_path, extra=_tls_lines("/nonexistent/server.crt", server.key),
                expected="cannot read certKey /nonexistent/server.crt: No such file")


def unreadable_key(tmp_path) -> Case:
    ca = make_ca(str(tmp_path / "pki"))
    server = ca.issue(str(tmp_path / "pki"), "server")
    key_dir = tmp_path / "key-is-a-directory"
    key_dir.mkdir()
    return Case(tmp_path, extra=_tls_lines(server.cert, str(key_dir)),
                expected=f"cannot read privateKey {key_dir}")


def unresolvable_host(tmp_path) -> Case:
    return Case(tmp_path, client="nosuch.invalid",
                expected="cannot resolve the host name 'nosuch.invalid'")


def no_tls_support(tmp_path) -> Case:
    """pyOpenSSL missing anyway: a package on PYTHONPATH named OpenSSL that fails to
    import stands in for it."""
    shim = tmp_path / "shim" / "OpenSSL"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no OpenSSL here (test shim)')\n")
    ca = make_ca(str(tmp_path / "pki"))
    server = ca.issue(str(tmp_path / "pki"), "server")
    return Case(tmp_path, extra=_tls_lines(server.cert, server.key),
                expected="needs pyOpenSSL and service-identity",
                env={"PYTHONPATH": str(tmp_path / "shim")})


def fails_after_the_fork(tmp_path) -> Case:
    return Case(tmp_path, extra="client_listen = unix:{tmp}/no-such-dir/client.sock\n",
                expected="cannot start: no such file or directory")


CASES: dict[str, Callable] = {f.__name__: f for f in (
    port_in_use, bad_endpoint, missing_certificate, unreadable_key, unresolvable_host,
    no_tls_support, fails_after_the_fork)}


@contextlib.contextmanager
def holding(port: int, hold: bool) -> Iterator[None]:
    if not hold:
        yield
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        yield


def run_twistd(case: Case, tmp_path, *twistd_options: str, name: str
               ) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [case.env.get("PYTHONPATH"), ROOT, env.get("PYTHONPATH")]))
    command = [*twistd_command(), *twistd_options, "replicad", "--id", "1",
               "--config", str(case.config), "--data-dir", str(tmp_path / f"data-{name}")]
    with holding(case.client_port, case.hold_port):
        return subprocess.run(command, capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)


def stop_if_running(pidfile) -> None:
    """A daemon that started after all (a failing test) must not outlive it."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("name", list(CASES))
def test_a_startup_failure_is_one_line_in_the_foreground_and_as_a_daemon(tmp_path, name):
    case = CASES[name](tmp_path)

    foreground = run_twistd(case, tmp_path, "-n", "--pidfile=", name="fg")
    assert foreground.returncode != 0
    assert "Traceback" not in foreground.stderr + foreground.stdout
    lines = foreground.stderr.splitlines()
    assert len(lines) == 1, foreground.stderr
    line = lines[0]
    assert line.startswith("replicad: error: ") and case.expected in line, line

    pidfile, logfile = tmp_path / "replica.pid", tmp_path / "replica.log"
    try:
        daemon = run_twistd(case, tmp_path, "--pidfile", str(pidfile), "--logfile",
                            str(logfile), name="daemon")
    finally:
        stop_if_running(pidfile)
    assert daemon.returncode != 0, daemon
    log = logfile.read_text()
    assert "Traceback" not in log
    logged = [entry for entry in log.splitlines() if "replicad: error:" in entry]
    assert len(logged) == 1, log
    assert logged[0].endswith(line.replace(str(tmp_path / "data-fg"),
                                           str(tmp_path / "data-daemon"))), log
    assert not pidfile.exists()
    if name == "fails_after_the_fork":
        # twistd's first process waited on its status pipe: it prints its own note.
        assert "An error has occurred: b'replicad: error: cannot start" in daemon.stderr
        assert "Traceback" not in daemon.stderr
    else:
        assert daemon.stderr.splitlines() == [line], daemon.stderr
