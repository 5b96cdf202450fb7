"""Fixtures for tests that run real twistd replicas on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from replicad.cluster import LocalCluster, find_free_base_port

CLI = os.path.join(os.path.dirname(sys.executable), "replicad-cli")


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def start_cluster(tmp_path):
    """start_cluster(size=3, **settings) -> a ready LocalCluster, stopped after the test."""
    started: list[LocalCluster] = []

    def start(size: int = 3, **settings: object) -> LocalCluster:
        cluster = LocalCluster(
            size=size,
            base_port=find_free_base_port(size),
            data_dir=str(tmp_path / f"cluster-{len(started)}"),
            overrides={name: str(value) for name, value in settings.items()},
        )
        started.append(cluster)
        cluster.start()
        cluster.wait_ready(timeout_s=20)
        return cluster

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
