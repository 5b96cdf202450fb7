"""Nothing assumes 127.0.0.1 (issue #11 item 5): replicas on distinct addresses, driven
with ``replicad-cli``, through a failover.

- **Network namespaces** (needs root and ``ip`` from iproute2; skipped with the reason
  otherwise): each replica runs in a namespace of its own with its own address
  (10.77.0.1-3 on a bridge in a fourth, "hub" namespace) and the same ports, as on
  three machines; the CLI runs in a fifth namespace (10.77.0.100), so every connection
  crosses the bridge.  The config names the replicas by host name (replica1-3, from a
  hosts file that ``ip netns exec`` mounts over /etc/hosts in those namespaces alone),
  as deploy/docker-compose.yml does.  Every listener is checked to be on its replica's
  address alone, the admin port answers from the client's namespace, the coordinator
  is SIGKILLed and writes go on.  The namespaces, and only they, hold the addresses;
  they and their hosts files are deleted when the test ends.
- **Loopback addresses** (no privileges): 127.0.0.2, 127.0.0.3 and 127.0.0.4 (all of
  127/8 is loopback on Linux) with the *same* ports on each: anything hard-wired to
  127.0.0.1, or to "one port per replica", fails there.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import replicad
from replicad.cluster import PEER_PORT_OFFSET, _die_with_parent, twistd_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(replicad.__file__)))
CLI = os.path.join(os.path.dirname(sys.executable), "replicad-cli")
SUBNET = "10.77.0"
CLIENT_ADDRESS = f"{SUBNET}.100"
ETC_NETNS = Path("/etc/netns")
ADMIN_OFFSET = 200
READY_TIMEOUT_S = 40.0


class Replicas:
    """Replicas 1-3 on hosts[i], each on the same ports, started as
    ``[*prefix(i), twistd -n replicad ...]``; the CLI runs as ``[*cli_prefix, CLI ...]``."""

    def __init__(self, hosts: dict[int, str], base_port: int, work: Path,
                 prefix: Callable[[int], list[str]] = lambda i: [],
                 cli_prefix: list[str] | None = None):
        self.hosts, self.base_port, self.work = hosts, base_port, work
        self.prefix, self.cli_prefix = prefix, cli_prefix or []
        self.config = work / "cluster.ini"
        self.procs: dict[int, subprocess.Popen] = {}
        self.session = work / "session.json"
        self.write_config()

    def client(self, i: int) -> str:
        return f"{self.hosts[i]}:{self.base_port + 1}"

    def peer(self, i: int) -> str:
        return f"{self.hosts[i]}:{self.base_port + 1 + PEER_PORT_OFFSET}"

    def admin(self, i: int) -> str:
        return f"{self.hosts[i]}:{self.base_port + 1 + ADMIN_OFFSET}"

    def servers(self, *ids: int) -> str:
        return ",".join(self.client(i) for i in (ids or sorted(self.hosts)))

    def write_config(self) -> None:
        lines = ["[cluster]", f"secret = {secrets.token_hex(32)}", "write_quorum = majority", ""]
        for i in sorted(self.hosts):
            lines += [f"[replica:{i}]", f"client = {self.client(i)}", f"peer = {self.peer(i)}",
                      f"admin = {self.admin(i)}", ""]
        self.config.write_text("\n".join(lines))

    def log(self, i: int) -> Path:
        return self.work / f"replica-{i}.log"

    def start(self, i: int) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        command = [*self.prefix(i), *twistd_command(), "-n", "--pidfile", "",
                   "--logfile", str(self.log(i)), "replicad", "--id", str(i),
                   "--config", str(self.config), "--data-dir", str(self.work / f"data-{i}")]
        with open(self.work / f"replica-{i}.out", "ab") as out:
            # `ip netns exec` execs the command: the pid is twistd's own.
            self.procs[i] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.work, env=env, start_new_session=True,
                preexec_fn=_die_with_parent())

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(i)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for i in list(self.procs):
            self.kill(i, signal.SIGTERM)

    def cli(self, *args: str, servers: str | None = None, timeout_s: float = 10,
            session: bool = True) -> subprocess.CompletedProcess:
        command = [*self.cli_prefix, CLI, "--servers", servers or self.servers(),
                   "--timeout", str(timeout_s)]
        command += ["--session", str(self.session)] if session else ["--no-session"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        return subprocess.run([*command, *args], capture_output=True, text=True,
                              timeout=timeout_s + 30, env=env)

    def status(self, i: int) -> dict | None:
        result = self.cli("status", "--json", servers=self.client(i), timeout_s=1,
                          session=False)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def wait_ready(self, live: list[int], coordinator: int) -> str:
        """Every replica in live answers, holds one cluster id and follows coordinator;
        returns the cluster id."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        seen: dict[int, dict | None] = {}
        while time.monotonic() < deadline:
            for i in live:
                proc = self.procs[i]
                assert proc.poll() is None, self.describe(f"replica {i} exited")
            seen = {i: self.status(i) for i in live}
            answers = [s for s in seen.values() if s is not None]
            if (len(answers) == len(live)
                    and {s["coordinator"] for s in answers} == {coordinator}
                    and len({s["cluster_id"] for s in answers}) == 1
                    and all(s["ready"] == "yes" for s in answers)):
                return answers[0]["cluster_id"]
            time.sleep(0.2)
        raise AssertionError(self.describe(
            f"replicas {live} did not agree on coordinator {coordinator}: {seen}"))

    def describe(self, headline: str) -> str:
        parts = [headline]
        for i in sorted(self.procs):
            for path in (self.log(i), self.work / f"replica-{i}.out"):
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-12:]
                    parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)


def failover_scenario(replicas: Replicas,
                      first_checks: Callable[[], None] = lambda: None) -> None:
    """The whole check, for either kind of addresses (first_checks runs once the three
    replicas are up)."""
    for i in (1, 2, 3):
        replicas.start(i)
    cluster_id = replicas.wait_ready([1, 2, 3], coordinator=3)
    first_checks()

    # Through one follower (forwarded to the coordinator), read back through another.
    put = replicas.cli("put", "greeting", "hello", "world", servers=replicas.servers(1))
    assert (put.returncode, put.stdout) == (0, "OK\n"), put.stderr
    got = replicas.cli("get", "greeting", servers=replicas.servers(2))
    assert (got.returncode, got.stdout) == (0, "hello world\n"), got.stderr
    status = replicas.status(1)
    assert status["server"] == replicas.client(1)
    assert status["peers"] == {"2": "up", "3": "up"}

    # The coordinator dies; the CLI, given every replica, carries on.
    replicas.kill(3)
    for n in range(5):
        put = replicas.cli("put", f"after-{n}", f"value {n}")
        assert (put.returncode, put.stdout) == (0, "OK\n"), replicas.describe(put.stderr)
    assert replicas.wait_ready([1, 2], coordinator=2) == cluster_id
    got = replicas.cli("get", "greeting")
    assert (got.returncode, got.stdout) == (0, "hello world\n"), got.stderr

    # It returns, takes over again (highest id) and holds what was written without it.
    replicas.start(3)
    assert replicas.wait_ready([1, 2, 3], coordinator=3) == cluster_id
    for n in range(5):
        got = replicas.cli("get", f"after-{n}", servers=replicas.servers(3), session=False)
        assert (got.returncode, got.stdout) == (0, f"value {n}\n"), got.stderr
    keys = replicas.cli("keys", servers=replicas.servers(3), session=False)
    assert keys.stdout.split() == ["after-0", "after-1", "after-2", "after-3", "after-4",
                                   "greeting"]


# Loopback addresses other than 127.0.0.1 ------------------------------------------------


LOOPBACK_HOSTS = {1: "127.0.0.2", 2: "127.0.0.3", 3: "127.0.0.4"}


def free_on_all(hosts: list[str], attempts: int = 200) -> int:
    """A base port P with P+1, P+101 and P+201 free on every host."""
    import random

    for _ in range(attempts):
        base = random.randint(10000, 30000)
        ports = [base + 1, base + 1 + PEER_PORT_OFFSET, base + 1 + ADMIN_OFFSET]
        if all(_bindable(h, p) for h in hosts for p in ports):
            return base
    raise AssertionError(f"no free ports on {hosts}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@pytest.mark.slow    # 10 s: the default run stays under 5 minutes (CI runs the slow stage)
def test_three_replicas_on_other_loopback_addresses_with_the_same_ports(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("only Linux routes all of 127.0.0.0/8 to the loopback interface")
    hosts = list(LOOPBACK_HOSTS.values())
    if not all(_bindable(h, 0) for h in hosts):
        pytest.skip(f"cannot bind {hosts} here")
    replicas = Replicas(LOOPBACK_HOSTS, free_on_all(hosts), tmp_path)
    try:
        failover_scenario(replicas)
    finally:
        replicas.stop()


# Network namespaces ------------------------------------------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class Namespaces:
    """A hub namespace with a bridge, and one namespace per node, each with a veth into
    the bridge and its address.  Created here, deleted by delete()."""

    def __init__(self, tag: str):
        self.tag = tag
        self.hub = f"{tag}-hub"
        self.created: list[str] = []
        self.etc_dirs: list[Path] = []

    def hosts_file(self, ns: str, hosts: dict[str, str]) -> None:
        """/etc/hosts as processes in ns see it (``ip netns exec`` bind-mounts
        /etc/netns/<ns>/hosts over it): name -> address, plus localhost."""
        if not ETC_NETNS.exists():
            ETC_NETNS.mkdir()
            self.etc_dirs.append(ETC_NETNS)    # removed last, if it is empty then
        directory = ETC_NETNS / ns
        directory.mkdir()
        self.etc_dirs.insert(0, directory)
        lines = ["127.0.0.1 localhost"] + [f"{a} {n}" for n, a in sorted(hosts.items())]
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    def name(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def add_hub(self) -> None:
        ip("netns", "add", self.hub)
        self.created.append(self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")

    def add_node(self, node: str, address: str) -> str:
        ns = self.name(node)
        ip("netns", "add", ns)
        self.created.append(ns)
        port = f"p-{node}"
        # Both ends are made inside namespaces of ours: nothing touches the host's.
        ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        return ns

    def delete(self) -> None:
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created.clear()
        for directory in self.etc_dirs:
            if directory == ETC_NETNS:
                try:
                    directory.rmdir()
                except OSError:
                    pass        # not empty: another test's hosts files are in it
            else:
                shutil.rmtree(directory, ignore_errors=True)
        self.etc_dirs.clear()


def listening(ns: str) -> set[str]:
    """host:port of every TCP listener in a namespace."""
    result = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return {line.split()[3] for line in result.stdout.splitlines() if line.strip()}


def http_get(ns: str, url: str) -> tuple[int, str]:
    """GET url from inside ns with Python's urllib: (status, body)."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        "    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    status, _, body = result.stdout.partition("\n")
    return int(status), body


@pytest.fixture
def namespaces():
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux only")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed: apt-get install iproute2")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    spaces = Namespaces(f"rd{os.getpid() % 100000}")
    try:
        spaces.add_hub()
    except (RuntimeError, OSError) as e:
        spaces.delete()
        pytest.skip(f"this machine does not allow network namespaces: {e}")
    try:
        yield spaces
    finally:
        spaces.delete()


@pytest.mark.slow
def test_three_replicas_in_network_namespaces_driven_by_the_cli(namespaces, tmp_path):
    addresses = {i: f"{SUBNET}.{i}" for i in (1, 2, 3)}
    names = {i: f"replica{i}" for i in (1, 2, 3)}
    try:
        replica_ns = {i: namespaces.add_node(f"r{i}", address)
                      for i, address in addresses.items()}
        client_ns = namespaces.add_node("c", CLIENT_ADDRESS)
        for ns in [*replica_ns.values(), client_ns]:
            namespaces.hosts_file(ns, {names[i]: addresses[i] for i in names})
    except (RuntimeError, OSError) as e:
        pytest.skip(f"this machine does not allow veth pairs or bridges in namespaces: {e}")
    replicas = Replicas(
        names, 7000, tmp_path,
        prefix=lambda i: ["ip", "netns", "exec", replica_ns[i]],
        cli_prefix=["ip", "netns", "exec", client_ns],
    )

    def first_checks() -> None:
        # Each replica listens on its own address, and on nothing else.
        for i, ns in replica_ns.items():
            assert listening(ns) == {f"{addresses[i]}:{port}" for port in (7001, 7101, 7201)}
        # The admin port, from the client's namespace: alive, and the cluster page's
        # data names every replica by its address.
        assert http_get(client_ns, f"http://{replicas.admin(1)}/healthz")[0] == 200
        status, body = http_get(client_ns, f"http://{replicas.admin(1)}/cluster.json")
        assert status == 200
        assert all(replicas.client(i) in body for i in names)

    try:
        failover_scenario(replicas, first_checks)
    finally:
        replicas.stop()
