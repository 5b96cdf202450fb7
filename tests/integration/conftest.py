"""Fixtures for tests that run real twistd replicas on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from replicad.cluster import LocalCluster, find_free_base_port, tail_lines
from replicad.testing.cluster import ProxiedCluster

CLI = os.path.join(os.path.dirname(sys.executable), "replicad-cli")


LOG_TAIL_LINES = 40       # per replica: the end of each log is where a failure shows
LOG_LINE_CHARS = 300


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the end of every replica's (and the fault
    proxy's) log under its tmp_path: CI keeps only what pytest prints, and a failure
    that does not repeat on demand is explained by these lines or not at all."""
    outcome = yield
    report = outcome.get_result()
    tmp_path = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or tmp_path is None:
        return
    for path in sorted(tmp_path.rglob("*.log")):
        lines = tail_lines(str(path), LOG_TAIL_LINES).splitlines()
        text = "\n".join(line[:LOG_LINE_CHARS] for line in lines)
        report.sections.append((f"log {path.relative_to(tmp_path)} (last lines)", text))


def _starter(tmp_path, cluster_class):
    """A start(size=3, **settings) function and the list of what it started."""
    started: list = []

    def start(size: int = 3, **settings: object):
        cluster = cluster_class(
            size=size,
            base_port=find_free_base_port(size),
            data_dir=str(tmp_path / f"cluster-{len(started)}"),
            overrides={name: str(value) for name, value in settings.items()},
        )
        started.append(cluster)
        cluster.start()
        cluster.wait_ready(timeout_s=20)
        return cluster

    return start, started


@pytest.fixture
def start_cluster(tmp_path):
    """start_cluster(size=3, **settings) -> a ready LocalCluster, stopped after the test."""
    start, started = _starter(tmp_path, LocalCluster)
    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def proxied(tmp_path):
    """proxied(size=3, **settings) -> a ready ProxiedCluster (replicas reach each other
    only through the fault proxy), stopped with its proxy after the test."""
    start, started = _starter(tmp_path, ProxiedCluster)
    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def cli(tmp_path):
    """cli(servers, *args) runs replicad-cli with a session file private to the test."""
    session = str(tmp_path / "session.json")

    def run(servers: list[str], *args: str, timeout_s: float = 10.0,
            session_file: str | None = None) -> subprocess.CompletedProcess:
        command = [CLI, "--servers", ",".join(servers), "--timeout", str(timeout_s),
                   "--session", session_file or session, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    return run
