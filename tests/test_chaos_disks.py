"""The ``full`` fault's small disks: a real tmpfs, filled and freed by remounts (needs
root and mount(8); skipped with the reason elsewhere)."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from replicad.chaos import disks


@pytest.fixture
def disk(tmp_path):
    try:
        disks.check()
    except disks.DiskError as e:
        pytest.skip(str(e))
    path = str(tmp_path / "replica-1")
    disks.mount(path)
    yield path
    disks.release_under(str(tmp_path))


def write(path: str, name: str, size: int) -> None:
    with open(os.path.join(path, name), "wb") as handle:
        handle.write(b"x" * size)
        handle.flush()
        os.fsync(handle.fileno())


def test_a_filled_disk_takes_a_few_pages_more_then_none_until_freed(disk):
    write(disk, "db", 100_000)
    size = disks.fill(disk)
    assert disks.used_bytes(disk) < size <= disks.used_bytes(disk) + disks.SLACK_BYTES + 4096
    write(disk, "a-page", 4096)                   # the slack: a few pages more
    with pytest.raises(OSError) as info:
        write(disk, "more", disks.SLACK_BYTES)
    assert info.value.errno == errno.ENOSPC
    disks.free(disk)
    write(disk, "more", 1_000_000)


def test_unmounting_keeps_the_files_in_the_plain_directory(disk):
    write(disk, "db", 5000)
    disks.unmount(disk)
    assert not os.path.ismount(disk)
    assert os.path.getsize(os.path.join(disk, "db")) == 5000
    assert [n for n in os.listdir(os.path.dirname(disk)) if n.startswith(".kept-")] == []
    disks.unmount(disk)                           # not a mount point any more: nothing


def test_a_mount_left_by_a_dead_run_is_released_so_its_directory_can_go(disk, tmp_path):
    write(disk, "db", 10)
    with pytest.raises(OSError):
        shutil.rmtree(tmp_path / "replica-1")    # a mount point cannot be removed
    disks.release_under(str(tmp_path))
    assert not os.path.ismount(disk)
    shutil.rmtree(tmp_path / "replica-1")


def test_a_failed_mount_command_is_one_line(tmp_path):
    try:
        disks.check()
    except disks.DiskError as e:
        pytest.skip(str(e))
    with pytest.raises(disks.DiskError, match="remount") as info:
        disks.fill(str(tmp_path))                 # not a mount point
    assert "\n" not in str(info.value)


def test_without_root_the_fault_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(disks.DiskError, match="needs root and mount"):
        disks.check()
