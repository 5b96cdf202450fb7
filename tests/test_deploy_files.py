"""Deployment (issue #11 item 5): the files an operator deploys with, checked statically
(no Docker engine or systemd needed), and the permissions of the data files.

- Dockerfile: slim Python base, a non-root USER, the data VOLUME, a HEALTHCHECK on the
  admin port's /healthz (its command is also *run* against a live replica), the
  entrypoint that runs ``twistd -n replicad`` with ``$REPLICAD_ID``.
- deploy/docker-compose.yml: three replicas with distinct ids and hostnames, each its own
  data volume, one shared read-only config naming them, admin ports.
- deploy/replicad@.service: the hardening options, and ``systemd-analyze verify`` where
  it exists.
- deploy/cluster.example.ini: loads with ``load_config``; no address is on loopback.
- The database, its -wal and -shm, the staging files and LOCK are created 0600 whatever
  the umask.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.config import load_config, parse_config
from replicad.datadir import DB_FILENAME, LOCK_FILENAME, check_data_dir, lock_data_dir
from replicad.replica import EXIT_DISK_FAILED
from replicad.store import Store

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
UNIT = ROOT / "deploy" / "replicad@.service"
EXAMPLE = ROOT / "deploy" / "cluster.example.ini"


# Permissions of the data files ---------------------------------------------------------


@pytest.fixture(params=[0o000, 0o022])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_database_files_and_lock_are_created_owner_only_whatever_the_umask(tmp_path, umask):
    data_dir = tmp_path / "replica-1"
    with lock_data_dir(str(data_dir)):
        check_data_dir(str(data_dir), 1)
        with Store(str(data_dir / DB_FILENAME)) as store:
            store.write(1, "k", "secret value")
            names = sorted(os.listdir(data_dir))
            assert names == [LOCK_FILENAME, DB_FILENAME, f"{DB_FILENAME}-shm",
                             f"{DB_FILENAME}-wal"]
            assert {name: mode(data_dir / name) for name in names} == dict.fromkeys(
                names, 0o600)


def test_staging_files_of_a_full_copy_are_owner_only(tmp_path, umask):
    with Store(str(tmp_path / DB_FILENAME)) as store:
        importer = store.begin_import()
        staging = [p for p in tmp_path.iterdir() if ".import-" in p.name]
        assert len(staging) == 1 and mode(staging[0]) == 0o600
        importer.abort()


def test_an_existing_world_readable_database_is_made_owner_only(tmp_path):
    path = tmp_path / DB_FILENAME
    with Store(str(path)) as store:
        store.write(1, "k", "v")
    os.chmod(path, 0o644)           # as replicad 0.2.0 and earlier created it
    with Store(str(path)):
        assert mode(path) == 0o600
        assert mode(Path(f"{path}-wal")) == 0o600


# Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue            # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        if whole:
            word, _, rest = whole.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [n for n, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1]:]


def only(instructions, word: str) -> str:
    found = [args for w, args in instructions if w == word]
    assert len(found) == 1, f"expected one {word}, found {found}"
    return found[0]


def test_dockerfile_runs_on_a_slim_python_as_a_non_root_user(dockerfile):
    stage = final_stage(dockerfile)
    base = stage[0][1].split()[0]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    user = only(stage, "USER").split(":")[0]
    assert user not in ("root", "0", ""), user
    # The user exists: created in the image with that uid (or name).
    runs = " ".join(args for word, args in stage if word == "RUN")
    assert "useradd" in runs and (f"--uid {user}" in runs or f" {user}" in runs)
    # ... and the USER line comes after everything that needs root.
    last_run = max(n for n, (word, _) in enumerate(stage) if word == "RUN")
    assert [w for w, _ in stage].index("USER") > last_run


def test_dockerfile_has_the_data_volume_and_owns_it(dockerfile):
    stage = final_stage(dockerfile)
    volume = only(stage, "VOLUME")
    volumes = json.loads(volume) if volume.startswith("[") else volume.split()
    assert volumes == ["/var/lib/replicad"]
    runs = " ".join(args for word, args in stage if word == "RUN")
    assert re.search(r"install -d [^&]*-m 0?700[^&]*/var/lib/replicad", runs), runs


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_dockerfile_entrypoint_runs_twistd_with_the_replica_id(dockerfile):
    stage = final_stage(dockerfile)
    entry = exec_form(only(stage, "ENTRYPOINT"))
    assert entry[:2] == ["/bin/sh", "-c"], "a shell, to expand $REPLICAD_ID"
    words = shlex.split(entry[2])
    assert words[0] == "exec", "twistd replaces the shell: it is PID 1 and gets SIGTERM"
    twistd = words[1:words.index('"$@"') if '"$@"' in words else None]
    assert twistd[0] == "twistd" and "-n" in twistd
    assert "--pidfile=" in twistd, "a stale pidfile would stop a restarted container"
    after = twistd[twistd.index("replicad"):]
    assert after[:2] == ["replicad", "--id"] and "REPLICAD_ID" in after[2]
    assert after[after.index("--config") + 1] == "${REPLICAD_CONFIG}"
    assert after[after.index("--data-dir") + 1] == "/var/lib/replicad"
    assert entry[2].rstrip().endswith('"$@"'), "extra arguments (docker run IMAGE ...) reach twistd"
    env = " ".join(args for word, args in stage if word == "ENV")
    assert "REPLICAD_CONFIG=/etc/replicad/cluster.ini" in env


def healthcheck_command(instructions) -> list[str]:
    args = only(final_stage(instructions), "HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    for option in ("--interval=", "--timeout=", "--retries="):
        assert option in options
    return exec_form(command.strip())


def test_dockerfile_healthcheck_asks_the_admin_port_with_python_alone(dockerfile):
    command = healthcheck_command(dockerfile)
    assert command[:2] == ["python", "-c"]
    code = command[2]
    assert "urllib.request" in code and "/healthz" in code
    assert "curl" not in code and "wget" not in code
    compile(code, "HEALTHCHECK", "exec")


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "tests", "replicad-data", "*.sqlite*"):
        assert name in ignored or f"**/{name}" in ignored, name
    # what the build needs is not ignored
    for name in ("replicad", "twisted", "setup.cfg", "pyproject.toml", "README.md"):
        assert name not in ignored


# compose ---------------------------------------------------------------------------------


def load_compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the compose file")
    return yaml.safe_load(COMPOSE.read_text())


def compose_config_text(compose: dict) -> str:
    return compose["configs"]["cluster"]["content"]


def test_compose_runs_three_replicas_with_distinct_ids_hostnames_and_volumes():
    compose = load_compose()
    services = compose["services"]
    assert len(services) == 3
    ids, hosts, volumes = set(), set(), set()
    for service in services.values():
        environment = service["environment"]
        ids.add(int(environment["REPLICAD_ID"]))
        hosts.add(service["hostname"])
        (data,) = [v for v in service["volumes"] if v["target"] == "/var/lib/replicad"]
        assert data["type"] == "volume"
        volumes.add(data["source"])
        assert service.get("restart") in ("unless-stopped", "always", "on-failure")
    assert ids == {1, 2, 3}
    assert len(hosts) == 3 and len(volumes) == 3
    assert volumes <= set(compose["volumes"])


def test_compose_shares_one_read_only_config_that_names_every_replica(tmp_path):
    compose = load_compose()
    services = compose["services"]
    for service in services.values():
        (config,) = service["configs"]
        assert config == {"source": "cluster", "target": "/etc/replicad/cluster.ini"}
    # The config parses (its ${REPLICAD_SECRET} is filled in by compose) and names the
    # services by their hostnames, admin ports included.
    text = compose_config_text(compose)
    assert "${REPLICAD_SECRET:?" in text
    text = re.sub(r"\$\{REPLICAD_SECRET:\?[^}]*\}", "x" * 40, text).replace("$$", "$")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    config = parse_config(parser, str(COMPOSE))
    hostname = {int(s["environment"]["REPLICAD_ID"]): s["hostname"] for s in services.values()}
    for i, member in config.members.items():
        assert member.client.host == member.peer.host == member.admin.host == hostname[i]
    ports = {s["hostname"]: s["ports"] for s in services.values()}
    for host, published in ports.items():
        assert all(p.startswith("127.0.0.1:") for p in published if ":7201" in p
                   or p.endswith(":7201")), f"{host}: the admin port is published on loopback"


# systemd ---------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        name, _, value = line.partition("=")
        settings.setdefault(f"{section}.{name.strip()}", []).append(value.strip())
    return settings


def test_systemd_unit_is_hardened():
    s = unit_settings(UNIT.read_text())

    def one(name: str) -> str:
        assert len(s.get(f"Service.{name}", [])) == 1, name
        return s[f"Service.{name}"][0]

    assert one("User") == "replicad" and one("Group") == "replicad"
    assert one("DynamicUser") == "no"
    assert one("StateDirectory") == "replicad/%i"
    assert one("StateDirectoryMode") == "0700"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("PrivateDevices") == "yes"
    assert one("NoNewPrivileges") == "yes"
    assert one("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one("CapabilityBoundingSet") == ""
    assert one("SystemCallFilter") == "@system-service"
    assert one("Restart") == "on-failure"
    # A replica whose disk failed a COMMIT exits 74 and is left stopped (replica.py).
    assert one("RestartPreventExitStatus") == str(EXIT_DISK_FAILED)
    assert int(one("LimitNOFILE")) >= 4096
    assert one("UMask") == "0077"
    start = shlex.split(one("ExecStart"))
    assert start[0].startswith("/") and start[0].endswith("/twistd")
    assert "--nodaemon" in start or "-n" in start
    assert "--pidfile=" in start
    after = start[start.index("replicad"):]
    assert after[:3] == ["replicad", "--id", "%i"]
    assert after[after.index("--data-dir") + 1] == "/var/lib/replicad/%i"
    assert after[after.index("--config") + 1] == "/etc/replicad/cluster.ini"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's program to exist: point it at a stand-in.
    twistd = tmp_path / "twistd"
    twistd.write_text("#!/bin/sh\n")
    twistd.chmod(0o755)
    text = UNIT.read_text()
    program = shlex.split(unit_settings(text)["Service.ExecStart"][0])[0]
    unit = tmp_path / "replicad@.service"
    unit.write_text(text.replace(program, str(twistd)))
    instance = tmp_path / "replicad@2.service"
    instance.symlink_to(unit)
    result = subprocess.run([analyze, "verify", str(instance)], capture_output=True,
                            text=True, timeout=60)
    # Outside a booted systemd (a container) verify cannot load some of the system's
    # units; only complaints about this unit count.
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "replicad@" in line]
    assert not ours, "\n".join(ours)


# The example config ----------------------------------------------------------------------


def test_example_config_loads_and_uses_real_addresses():
    config = load_config(str(EXAMPLE))
    assert sorted(config.members) == [1, 2, 3]
    hosts = set()
    for member in config.members.values():
        addresses = [member.client, member.peer, member.admin]
        assert all(a is not None for a in addresses)
        for address in addresses:
            assert not address.host.startswith("127.") and address.host not in (
                "localhost", "::1", "0.0.0.0"), address
        assert member.client.host == member.peer.host == member.admin.host
        hosts.add(member.client.host)
    assert len(hosts) == 3, "three machines"
    assert config.write_quorum == 2
    assert "REPLACE" in config.secret or len(config.secret) >= 32


def test_docs_name_the_files_they_explain():
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for name in ("Dockerfile", "deploy/docker-compose.yml", "deploy/replicad@.service",
                 "deploy/cluster.example.ini", "replicad-backup"):
        assert name in deploy, name
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "Copyright (c) 2026 replicad authors" in (ROOT / "LICENSE").read_text()


def test_the_entry_point_of_the_backup_tool_is_declared():
    setup = configparser.ConfigParser(interpolation=None)
    setup.read(ROOT / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    assert "replicad-backup = replicad.backup:main" in scripts


# The healthcheck command, run against a live replica ----------------------------------


@pytest.mark.integration
def test_the_dockerfile_healthcheck_passes_on_a_live_replica_and_fails_on_a_dead_one(
        tmp_path, dockerfile):
    from replicad.cluster import LocalCluster, find_free_base_port

    command = healthcheck_command(dockerfile)
    cluster = LocalCluster(size=1, base_port=find_free_base_port(1, admin=True),
                           data_dir=str(tmp_path / "cluster"), admin=True)
    env = dict(os.environ, REPLICAD_ID="1", REPLICAD_CONFIG=cluster.config_path,
               PYTHONPATH=str(ROOT))

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *command[1:]], capture_output=True,
                              text=True, timeout=30, env=env)

    with cluster:
        cluster.start()
        cluster.wait_ready(timeout_s=20)
        healthy = check()
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        cluster.kill(1)
        sick = check()
        assert sick.returncode == 1
        assert "Traceback" not in sick.stderr
        assert sick.stdout.strip().startswith("unhealthy: "), sick.stdout


# The troubleshooting table quotes the real log lines ----------------------------------

LOG_LINES = [
    "has no cluster history yet and waits to copy the",
    "cluster's data before it serves or acknowledges writes",
    "(start with --new-cluster to begin a new history instead)",
    "joins cluster",
    "begins the history of cluster",
    "(a replica of another cluster with the same secret?)",
    "steps down: epoch",
    "rejects coordinator",
    "cannot reach a majority in epoch",
    "refusing requests until it does",
    "heard from no majority for",
    "did not answer a ping",
    "won the election in epoch",
    "bad proof: is the cluster secret the same on every replica?",
    "closing peer connection from",
    "handshake timed out",
    "more unauthenticated peer connections in the last",
    "expected replica",
    "is not a member of this cluster",
    "is in use by another replicad process",
    "not replica",
    "wrong --data-dir?",
    "using the built-in cluster secret: set [cluster] secret in production",
    "concurrent versions resolved while pulling from replica",
    "(the receiver stopped reading); its read snapshot is released",
    "wrong client password from",
    "TLS handshake on the",
    "stops: its disk failed during a COMMIT",
]


def test_the_troubleshooting_table_quotes_lines_the_code_really_logs():
    source = "\n".join(p.read_text() for p in sorted((ROOT / "replicad").glob("*.py")))
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for line in LOG_LINES:
        assert line in source, f"the code no longer logs {line!r}"
        assert line in deploy, f"docs/deploy.md does not explain {line!r}"
