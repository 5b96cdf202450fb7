"""LocalCluster: N real replica processes on one machine (process control only).

The command-line tools built on it live elsewhere: ``replicad-local`` in replicad/local.py,
its narrated walkthrough in replicad/demo.py; this module imports neither.

Each replica runs as ``twistd -n ... replicad --id N`` so that what a test,
a benchmark or a curious user starts is exactly what an operator runs.  Children are
put in their own process group (a Ctrl-C reaches only us, and we stop them in order)
and, on Linux, get PR_SET_PDEATHSIG=SIGTERM so that they never outlive a parent that
was killed without a chance to clean up.  Waiting is polling with deadlines: a replica
is a separate process and STATUS is the only way to observe it.
"""

from __future__ import annotations

import configparser
import ctypes
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import replicad
from replicad import config as cfg
from replicad.client import BlockingClient, ClientError

PEER_PORT_OFFSET = 100
ADMIN_PORT_OFFSET = 200   # the HTTP admin port of replica i is base+200+i (admin=True)
STOP_GRACE_S = 5.0
PR_SET_PDEATHSIG = 1   # from <linux/prctl.h>
LOG_TAIL_LINES = 30

T = TypeVar("T")


def twistd_command() -> list[str]:
    """How to run twistd with this interpreter.

    ``python -m twisted`` is the ``twist`` runner, which has no -n/--pidfile/--logfile,
    and twistd has no ``__main__``: use the console script installed next to this
    interpreter (readable in ``ps``), else call its entry point the same way.
    """
    script = shutil.which("twistd", path=os.path.dirname(sys.executable))
    if script:
        return [sys.executable, script]
    return [sys.executable, "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


class ClusterError(Exception):
    """Starting or running the local cluster failed; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ClusterTLS:
    """TLS on every replica's client and peer ports: each listens with ``cert`` and
    ``key`` (the certificate must name the cluster's host), and the replicas dial each
    other verifying it against the CA certificates in ``ca_dir`` (*.pem, Twisted's
    trustRoots); clients use ``cacert``, the CA's PEM file."""

    cert: str
    key: str
    cacert: str
    ca_dir: str

    def settings(self, client: cfg.Address, peer: cfg.Address) -> dict[str, str]:
        """The endpoint settings of one [replica:N] section."""
        keys = f"privateKey={_escape(self.key)}:certKey={_escape(self.cert)}"
        return {
            "client_listen": f"ssl:port={client.port}:interface={_escape(client.host)}:{keys}",
            "peer_listen": f"ssl:port={peer.port}:interface={_escape(peer.host)}:{keys}",
            # How the OTHER replicas dial this one: its peer port, verified.
            "peer_connect": f"tls:host={_escape(peer.host)}:port={peer.port}"
                            f":trustRoots={_escape(self.ca_dir)}",
        }


def _escape(text: str) -> str:
    """A value inside a Twisted endpoint string (``:`` and ``\\`` escaped)."""
    return text.replace("\\", "\\\\").replace(":", "\\:")


class LocalCluster:
    """A cluster of ``size`` replicas on ``host``: client port base+i, peer port base+100+i,
    and with ``admin`` the HTTP admin port base+200+i."""

    def __init__(
        self,
        size: int = 3,
        base_port: int = cfg.DEFAULT_CLIENT_BASE_PORT,
        data_dir: str = "./replicad-local",
        host: str = cfg.DEFAULT_HOST,
        overrides: dict[str, str] | None = None,
        admin: bool = False,
        tls: ClusterTLS | None = None,
    ):
        if not 1 <= size <= cfg.MAX_REPLICAS:
            raise ClusterError(f"size must be between 1 and {cfg.MAX_REPLICAS}, got {size}")
        highest = base_port + (ADMIN_PORT_OFFSET if admin else PEER_PORT_OFFSET) + size
        if not (1 <= base_port and highest <= 65535):
            raise ClusterError(
                f"base port {base_port} leaves no room for ports up to "
                f"{highest} (the highest TCP port is 65535)"
            )
        self.admin = admin
        self.tls = tls
        self.size = size
        self.base_port = base_port
        self.host = host
        self.data_dir = os.path.abspath(data_dir)
        self.overrides = {str(k): str(v) for k, v in (overrides or {}).items()}
        self.config_path = os.path.join(self.data_dir, "cluster.ini")
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._expected: set[int] = set()   # started by us and not stopped or killed by us
        # More environment for one replica's process (tests: libfaketime's LD_PRELOAD).
        self.replica_env: dict[int, dict[str, str]] = {}

    # Layout ----------------------------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        return list(range(1, self.size + 1))

    def client_address(self, i: int) -> cfg.Address:
        return cfg.Address(self.host, self.base_port + self._check_id(i))

    def peer_address(self, i: int) -> cfg.Address:
        return cfg.Address(self.host, self.base_port + PEER_PORT_OFFSET + self._check_id(i))

    def admin_address(self, i: int) -> cfg.Address | None:
        """The HTTP admin address of replica i, or None when the admin port is off."""
        if not self.admin:
            return None
        return cfg.Address(self.host, self.base_port + ADMIN_PORT_OFFSET + self._check_id(i))

    def admin_url(self, i: int, path: str = "/") -> str | None:
        address = self.admin_address(i)
        return None if address is None else f"http://{address}{path}"

    def address(self, i: int) -> str:
        return str(self.client_address(i))

    def addresses(self) -> list[str]:
        return [self.address(i) for i in self.ids]

    def pid_path(self, i: int) -> str:
        return os.path.join(self.data_dir, f"replica-{i}.pid")

    def log_path(self, i: int) -> str:
        return os.path.join(self.data_dir, f"replica-{i}.log")

    def stdio_path(self, i: int) -> str:
        """Where the child's stdout/stderr go: start-up errors before logging begins."""
        return os.path.join(self.data_dir, f"replica-{i}.out")

    def replica_dir(self, i: int) -> str:
        return os.path.join(self.data_dir, f"replica-{i}")

    def command(self, i: int) -> list[str]:
        return [
            *twistd_command(), "-n",
            "--pidfile", self.pid_path(i),
            "--logfile", self.log_path(i),
            "replicad", "--id", str(self._check_id(i)),
            "--config", self.config_path,
            "--data-dir", self.replica_dir(i),
        ]

    def _check_id(self, i: int) -> int:
        if i not in range(1, self.size + 1):
            raise ValueError(f"replica id {i} is not in this cluster (1-{self.size})")
        return i

    # Configuration ---------------------------------------------------------------------

    def write_config(self) -> str:
        """Write cluster.ini (validated; ConfigError for a bad override) and return its path."""
        os.makedirs(self.data_dir, exist_ok=True)
        base = cfg.default_config(
            self.size, self.base_port, self.base_port + PEER_PORT_OFFSET, self.host
        )
        base = dataclasses.replace(base, secret=self._secret())
        if self.admin:
            base = dataclasses.replace(base, members={
                i: dataclasses.replace(member, admin=self.admin_address(i))
                for i, member in base.members.items()
            })
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(cfg.render_config(base))
        for name, value in self.overrides.items():
            parser["cluster"][name] = value
        if self.tls is not None:
            for i in self.ids:
                parser[f"replica:{i}"].update(self.tls.settings(
                    self.client_address(i), self.peer_address(i)))
        cfg.parse_config(parser, self.config_path)   # validates, raises ConfigError
        tmp = self.config_path + ".tmp"
        # The file holds the cluster secret: readable by the owner only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as handle:
            parser.write(handle)
        os.replace(tmp, self.config_path)
        return self.config_path

    def _secret(self) -> str:
        """Generated once per data dir, so a restarted cluster keeps talking to itself."""
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(self.config_path, encoding="utf-8")
            existing = parser.get("cluster", "secret", fallback="").strip()
        except configparser.Error:
            existing = ""
        return existing or secrets.token_hex(24)

    # Processes -------------------------------------------------------------------------

    def start(self) -> None:
        """Write the config and start every replica that is not running."""
        self.write_config()
        stopped = [i for i in self.ids if not self.running(i)]
        for i in stopped:   # all ports first: fail before starting anything
            self._check_ports_free(i)
        for i in stopped:
            self.start_replica(i)

    def start_replica(self, i: int) -> None:
        if self.running(i):
            raise ClusterError(f"replica {i} is already running (pid {self._procs[i].pid})")
        if not os.path.exists(self.config_path):
            self.write_config()
        self._check_ports_free(i)
        os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ)
        # The child must import the same replicad (and find its twistd dropin) as we do.
        root = os.path.dirname(os.path.dirname(os.path.abspath(replicad.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.replica_env.get(i, {}))
        with open(self.stdio_path(i), "ab") as stdio:
            self._procs[i] = subprocess.Popen(
                self.command(i),
                stdin=subprocess.DEVNULL, stdout=stdio, stderr=subprocess.STDOUT,
                cwd=self.data_dir, env=env, start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        self._expected.add(i)

    def running(self, i: int) -> bool:
        proc = self._procs.get(i)
        return proc is not None and proc.poll() is None

    def live_ids(self) -> list[int]:
        return [i for i in self.ids if self.running(i)]

    def pid(self, i: int) -> int | None:
        return self._procs[i].pid if self.running(i) else None

    def exit_text(self, i: int) -> str:
        """How replica i ended, for messages ("signal SIGKILL", "exit status 1")."""
        proc = self._procs.get(i)
        if proc is None:
            return "not started"
        return "running" if proc.poll() is None else _exit_text(proc.returncode)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send sig to replica i and wait until the process is reaped.

        SIGSTOP and SIGCONT (freezing a replica to play a hung one) are only sent.
        """
        proc = self._procs.get(i)
        if proc is None or proc.poll() is not None:
            return
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            proc.send_signal(sig)
            return
        self._expected.discard(i)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._forget_pidfile(i)

    def stop(self) -> None:
        """SIGTERM every replica, SIGKILL what is left after 5 s.  Idempotent."""
        self._expected.clear()
        live = [(i, p) for i, p in self._procs.items() if p.poll() is None]
        for _, proc in live:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)   # a frozen replica must see the SIGTERM too
        deadline = time.monotonic() + STOP_GRACE_S
        for i, proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._forget_pidfile(i)

    def _forget_pidfile(self, i: int) -> None:
        # twistd removes it on a clean exit; after a kill it would be stale.
        try:
            os.unlink(self.pid_path(i))
        except FileNotFoundError:
            pass

    def _check_ports_free(self, i: int) -> None:
        ports = [("client", self.client_address(i)), ("peer", self.peer_address(i))]
        admin = self.admin_address(i)
        if admin is not None:
            ports.append(("admin", admin))
        for kind, address in ports:
            if not port_free(address.host, address.port):
                raise ClusterError(
                    f"port {address.port} ({kind} port of replica {i}) on {address.host} is "
                    f"already in use; is another cluster running? Pick another --base-port"
                )

    def check_alive(self) -> None:
        """ClusterError (with its log tail) if a replica we started has exited on its own."""
        for i in sorted(self._expected):
            proc = self._procs[i]
            if proc.poll() is not None:
                self._expected.discard(i)
                raise ClusterError(
                    f"replica {i} exited with {_exit_text(proc.returncode)}; "
                    f"last lines of its log:\n{_indent(self.log_tail(i, 15))}"
                )

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Observing -------------------------------------------------------------------------

    @property
    def password(self) -> str | None:
        """The client password set with the client_password override, if any."""
        return self.overrides.get("client_password") or None

    def client_options(self) -> dict[str, Any]:
        """What a BlockingClient or ReplicadClient needs to talk to this cluster (TLS)."""
        if self.tls is None:
            return {}
        return {"tls": True, "cacert": self.tls.cacert}

    def cli_options(self) -> list[str]:
        """The same for replicad-cli."""
        return [] if self.tls is None else ["--cacert", self.tls.cacert]

    def status(self, i: int, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """STATUS of replica i alone, or None if it is not running or does not answer."""
        if not self.running(i):
            return None
        client = BlockingClient([self.address(i)], timeout_s=timeout_s,
                                connect_timeout_s=min(timeout_s, 0.5), password=self.password,
                                **self.client_options())
        try:
            return client.status()
        except ClientError:
            return None

    def statuses(self, timeout_s: float = 1.0) -> dict[int, dict[str, Any] | None]:
        return {i: self.status(i, timeout_s) for i in self.live_ids()}

    def coordinator(self) -> int | None:
        """The coordinator every answering live replica names, if they agree on one."""
        named = {s["coordinator"] for s in self.statuses(0.5).values() if s is not None}
        if len(named) == 1:
            (winner,) = named
            return winner if isinstance(winner, int) else None
        return None

    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout_s: float,
        interval_s: float = 0.05,
        what: str = "a condition",
    ) -> T:
        """Poll predicate until it returns something truthy; TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(self.describe(f"timed out after {timeout_s:g} s waiting "
                                                 f"for {what}"))
            time.sleep(min(interval_s, remaining))

    def wait_ready(self, timeout_s: float = 15.0, coordinator: int | None = None) -> int:
        """Every live replica answers STATUS and all name the same live coordinator
        (``coordinator``, if given: a restarted replica first follows the one serving
        for a PING round before it stands, Replica._rejoin)."""

        def agreed() -> int | None:
            self.check_alive()
            live = self.live_ids()
            if not live:
                raise ClusterError("no replica is running")
            named, clusters = set(), set()
            for i in live:
                status = self.status(i, 0.5)
                if status is None:
                    return None
                named.add(status["coordinator"])
                clusters.add(status.get("cluster_id"))
            if len(named) == 1 and len(clusters) == 1 and "-" not in clusters:
                (winner,) = named
                if isinstance(winner, int) and winner in live and coordinator in (None, winner):
                    return winner
            return None

        return self.wait_until(
            agreed, timeout_s,
            what="every live replica to answer STATUS, hold the same cluster id and name "
                 "the same live coordinator",
        )

    def describe(self, headline: str) -> str:
        """headline, then each replica's state and the tail of its log (for failures)."""
        lines = [headline]
        for i in self.ids:
            if not self.running(i):
                lines.append(f"replica {i}: not running ({self.exit_text(i)})")
            else:
                status = self.status(i, 0.5)
                lines.append(f"replica {i}: pid {self._procs[i].pid}, STATUS {status}")
            if i in self._procs:
                lines.append(_indent(self.log_tail(i, 10)))
        return "\n".join(lines)

    def log_tail(self, i: int, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of replica i's log, and of its stdout/stderr if it wrote any."""
        parts = []
        log = tail_lines(self.log_path(i), lines)
        if log:
            parts.append(log)
        stdio = tail_lines(self.stdio_path(i), lines)
        if stdio:
            parts.append(f"(stdout/stderr of replica {i})\n{stdio}")
        return "\n".join(parts) if parts else f"(replica {i} has written no log yet)"


# Helpers -------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn making the child get SIGTERM when this thread dies (Linux only).

    The kernel ties PDEATHSIG to the thread that forked, so start replicas from a
    thread that lives as long as the cluster should.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl   # resolved before fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:   # the parent died before prctl took effect
            os._exit(1)

    return preexec


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind host:port now (SO_REUSEADDR, as Twisted does)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            low, high = map(int, handle.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def find_free_base_port(size: int = 3, host: str = cfg.DEFAULT_HOST,
                        attempts: int = 200, admin: bool = False) -> int:
    """A base port P with P+1..P+size and P+101..P+100+size free on host (for tests),
    and P+201..P+200+size with ``admin``.

    Picked at random below the kernel's ephemeral range, where outgoing connections
    would otherwise steal ports between this check and the replicas binding them.
    """
    import random

    low, high = _ephemeral_range()
    offsets = (0, PEER_PORT_OFFSET, ADMIN_PORT_OFFSET) if admin else (0, PEER_PORT_OFFSET)
    span = offsets[-1] + size
    if low - span > 10000:
        first, last = 10000, low - span - 1
    else:
        first, last = high + 1, 65535 - span
    for _ in range(attempts):
        base = random.randint(first, last)
        ports = [base + offset + i for offset in offsets for i in range(1, size + 1)]
        if all(port_free(host, p) for p in ports):
            return base
    raise ClusterError(f"found no {len(offsets) * size} free ports on {host} after "
                       f"{attempts} tries")


def tail_lines(path: str, lines: int) -> str:
    """The last ``lines`` lines of a file, reading only its end ("" if unreadable)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * lines))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


# Overrides from a command line (replicad-local, bench) --------------------------------


def parse_settings(settings: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` arguments -> overrides; ValueError names a malformed one."""
    overrides = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set needs NAME=VALUE, got {setting!r}")
        overrides[name.strip()] = value.strip()
    return overrides
