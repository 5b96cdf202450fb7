"""ProxiedCluster: a LocalCluster whose replicas reach each other only through the proxy.

Every replica gets its own config file, the shared one with each other replica's
``peer_connect`` pointing at the proxy's route for that ordered pair, so a test can
partition replicas (``cut``, ``isolate``, ``partition``) while all of them keep running
and answering clients on their own ports.  Clients still talk to replicas directly.

The proxy binds port 0 and reports its ports in a ready file: no window in which
another process could take a port picked in advance.  Control calls block (with a
timeout) and return once the proxy says the change is in effect.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

import replicad
from replicad import config as cfg
from replicad.cluster import (
    STOP_GRACE_S,
    ClusterError,
    LocalCluster,
    _die_with_parent,
    _indent,
    tail_lines,
)

PROXY_READY_TIMEOUT_S = 10.0
CONTROL_TIMEOUT_S = 5.0
PEER_CONNECT_TIMEOUT_S = 1


class ProxyCommandError(ClusterError):
    """The proxy answered a control command with ERR."""


def child_env() -> dict[str, str]:
    """The environment for a child that must import this same replicad."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(replicad.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ProxyProcess:
    """``python -m replicad.testing.proxy`` as a child process: start, command, stop."""

    def __init__(self, routes: Mapping[str, cfg.Address], work_dir: str,
                 name: str = "proxy", host: str = cfg.DEFAULT_HOST):
        self.routes = dict(routes)   # route name "A-B" -> target address
        self.work_dir = os.path.abspath(work_dir)
        self.host = host
        self.log_path = os.path.join(self.work_dir, f"{name}.log")
        self.ready_path = os.path.join(self.work_dir, f"{name}.json")
        self.control_port: int | None = None
        self.route_ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    def command_line(self) -> list[str]:
        args = [sys.executable, "-m", "replicad.testing.proxy", "--control", "0",
                "--ready-file", self.ready_path]
        for name, target in self.routes.items():
            args += ["--route", f"{name}=0:{target.host}:{target.port}"]
        return args

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    def start(self, timeout_s: float = PROXY_READY_TIMEOUT_S) -> None:
        """Start the proxy and wait until it listens (idempotent while it runs)."""
        if self.running:
            return
        os.makedirs(self.work_dir, exist_ok=True)
        try:
            os.unlink(self.ready_path)   # a stale file would name old ports
        except FileNotFoundError:
            pass
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command_line(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.work_dir, env=child_env(),
                start_new_session=True, preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(self.ready_path):
            if self._proc.poll() is not None:
                raise ClusterError(f"the proxy exited with status {self._proc.returncode}; "
                                   f"its log:\n{_indent(self.log_tail())}")
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"the proxy did not start within {timeout_s:g} s; "
                                   f"its log:\n{_indent(self.log_tail())}")
            time.sleep(0.02)
        with open(self.ready_path, encoding="utf-8") as handle:
            ready = json.load(handle)
        self.control_port = int(ready["control"])
        self.route_ports = {name: int(port) for name, port in ready["routes"].items()}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period.  Idempotent."""
        proc, self._proc = self._proc, None
        self.control_port = None
        self.route_ports = {}
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def command(self, line: str, timeout_s: float = CONTROL_TIMEOUT_S) -> list[str]:
        """Send one control line; its answer lines (without the final OK / END).

        ProxyCommandError for ERR, ClusterError if the proxy cannot be reached in time.
        """
        if self.control_port is None or not self.running:
            raise ClusterError("the proxy is not running")
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        try:
            with socket.create_connection((self.host, self.control_port),
                                          timeout=timeout_s) as sock:
                sock.sendall(line.encode("utf-8") + b"\n")
                buffer = b""
                while True:
                    while b"\n" in buffer:
                        raw, buffer = buffer.split(b"\n", 1)
                        answer = raw.decode("utf-8", "replace").rstrip("\r")
                        if answer in ("OK", "END"):
                            return lines
                        if answer.startswith("ERR"):
                            raise ProxyCommandError(f"proxy refused {line!r}: {answer}")
                        lines.append(answer)
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    data = sock.recv(4096)
                    if not data:
                        raise ClusterError(f"the proxy closed the control connection "
                                           f"before answering {line!r}")
                    buffer += data
        except OSError as e:   # socket.timeout included
            raise ClusterError(f"no answer from the proxy to {line!r} within "
                               f"{timeout_s:g} s: {e}") from None

    def log_tail(self, lines: int = 20) -> str:
        return tail_lines(self.log_path, lines) or "(the proxy has written no log yet)"


class ProxiedCluster(LocalCluster):
    """A LocalCluster whose peer connections all go through one fault-injecting proxy."""

    def __init__(
        self,
        size: int = 3,
        base_port: int = cfg.DEFAULT_CLIENT_BASE_PORT,
        data_dir: str = "./replicad-local",
        host: str = cfg.DEFAULT_HOST,
        overrides: dict[str, str] | None = None,
    ):
        super().__init__(size, base_port, data_dir, host, overrides)
        routes = {
            self.route_name(i, j): self.peer_address(j)
            for i in self.ids for j in self.ids if i != j
        }
        self.proxy = ProxyProcess(routes, self.data_dir)
        self._configs_for_proxy_pid: int | None = None   # the proxy the files name

    # Layout ----------------------------------------------------------------------------

    @staticmethod
    def route_name(i: int, j: int) -> str:
        """The route carrying the connection replica i dials to replica j."""
        return f"{i}-{j}"

    def proxy_port(self, i: int, j: int) -> int:
        """The proxy port replica i dials to reach replica j (the proxy must be running)."""
        self._check_id(i)
        self._check_id(j)
        try:
            return self.proxy.route_ports[self.route_name(i, j)]
        except KeyError:
            raise ClusterError("the proxy is not running") from None

    def replica_config_path(self, i: int) -> str:
        return os.path.join(self.data_dir, f"cluster-{self._check_id(i)}.ini")

    def command(self, i: int) -> list[str]:
        command = super().command(i)
        command[command.index("--config") + 1] = self.replica_config_path(i)
        return command

    # Configuration ---------------------------------------------------------------------

    def write_config(self) -> str:
        """Write cluster.ini and, from it, one cluster-<i>.ini per replica.

        The per-replica files name the proxy's ports, so this starts the proxy first.
        """
        self.proxy.start()
        path = super().write_config()
        for i in self.ids:
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(path, encoding="utf-8")
            for j in self.ids:
                if j != i:
                    parser[f"replica:{j}"]["peer_connect"] = (
                        f"tcp:host={self.proxy.host}:port={self.proxy_port(i, j)}"
                        f":timeout={PEER_CONNECT_TIMEOUT_S}"
                    )
            target = self.replica_config_path(i)
            cfg.parse_config(parser, target)   # validates, raises ConfigError
            _write_private(target, parser)
        self._configs_for_proxy_pid = self.proxy.pid
        return path

    # Processes -------------------------------------------------------------------------

    def start(self) -> None:
        self.proxy.start()
        super().start()

    def start_replica(self, i: int) -> None:
        self.proxy.start()
        if self._configs_for_proxy_pid != self.proxy.pid:
            self.write_config()   # the proxy was (re)started: its ports changed
        super().start_replica(i)

    def stop(self) -> None:
        """Stop every replica, then the proxy.  Idempotent."""
        try:
            super().stop()
        finally:
            self.proxy.stop()
            self._configs_for_proxy_pid = None

    def describe(self, headline: str) -> str:
        lines = [super().describe(headline)]
        if self.proxy.running:
            try:
                held = self.proxy.command("STATUS", timeout_s=1.0)
            except ClusterError as e:
                held = [str(e)]
            lines.append(f"proxy: pid {self.proxy.pid}, held: {', '.join(held) or 'nothing'}")
        else:
            lines.append("proxy: not running")
        lines.append(_indent(self.proxy.log_tail(10)))
        return "\n".join(lines)

    # Faults ----------------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        """Hold every byte between a and b, both ways (a partition, not a crash)."""
        self._control("CUT", a, b)

    def cut_one_way(self, src: int, dst: int) -> None:
        """Hold the bytes from src to dst only; dst's bytes still reach src."""
        self._control("CUTONEWAY", src, dst)

    def no_dial(self, dialer: int, listener: int) -> None:
        """Hold route dialer-listener both ways: dialer cannot reach listener's peer
        port, listener still reaches dialer's (one-way reachability)."""
        self._control("NODIAL", dialer, listener)

    def heal(self, a: int | None = None, b: int | None = None) -> None:
        """Release a<->b; with only a, every cut involving a; with neither, every cut."""
        if a is None and b is not None:
            raise ValueError("heal(b=...) needs a as well")
        self._control("HEAL", *(i for i in (a, b) if i is not None))

    def isolate(self, i: int) -> None:
        """Cut replica i from every other replica."""
        self._control("ISOLATE", i)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every pair of replicas that are in different groups (adds to existing cuts)."""
        listed = [sorted(self._check_id(i) for i in group) for group in groups]
        self.proxy.command("PARTITION " + " ".join(",".join(map(str, g)) for g in listed))

    def slow(self, i: int, delay_ms: int) -> None:
        """Delay every byte between replica i and the others, both ways, by delay_ms
        (0 or a heal involving i ends it)."""
        self.proxy.command(f"SLOW {self._check_id(i)} {int(delay_ms)}")

    def held(self) -> list[tuple[int, int]]:
        """Every held direction (src, dst), from the proxy's STATUS."""
        pairs = []
        for line in self.proxy.command("STATUS"):
            verb, src, dst, *_ = line.split()
            if verb != "DELAY":
                pairs.append((int(src), int(dst)))
        return pairs

    def _control(self, verb: str, *ids: int) -> None:
        self.proxy.command(" ".join([verb, *(str(self._check_id(i)) for i in ids)]))


def _write_private(path: str, parser: configparser.ConfigParser) -> None:
    """Write atomically, readable by the owner only (the file holds the cluster secret)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as handle:
        parser.write(handle)
    os.replace(tmp, path)
