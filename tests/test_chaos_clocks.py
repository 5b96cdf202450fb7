"""The ``clock`` fault's offsets: what a replica under libfaketime reads as its wall
clock (the real library, in a real child process; skipped without it)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from replicad.chaos import clocks

READ_CLOCKS = "import time; print(time.time(), time.monotonic())"


def clocks_of(env: dict[str, str]) -> tuple[float, float]:
    done = subprocess.run([sys.executable, "-c", READ_CLOCKS], env={**os.environ, **env},
                          capture_output=True, text=True, check=True, timeout=30)
    wall, monotonic = done.stdout.split()
    return float(wall), float(monotonic)


def test_a_step_moves_the_wall_clock_of_the_process_and_not_its_monotonic_one(tmp_path):
    try:
        lib = clocks.library()
    except clocks.ClockError as e:
        pytest.skip(str(e))
    offset = str(tmp_path / "clock-offset-1")
    env = clocks.environment(lib, offset)
    for step in (-3600, 3600, 0):
        clocks.step(offset, step)
        wall, monotonic = clocks_of(env)
        assert abs(wall - time.time() - step) < 60
        assert abs(monotonic - time.monotonic()) < 60       # the same clock as ours
    assert os.listdir(tmp_path) == ["clock-offset-1"]       # no .new file left


def test_without_libfaketime_the_fault_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    with pytest.raises(clocks.ClockError, match="needs libfaketime") as info:
        clocks.library()
    assert "\n" not in str(info.value)


def test_a_step_that_cannot_be_written_is_one_line(tmp_path):
    with pytest.raises(clocks.ClockError, match="cannot step the clock"):
        clocks.step(str(tmp_path / "no-such-dir" / "offset"), 3600)
