"""The open-file limit a replica raises at start (replicad/openfiles.py): the pure
plan, and the limit of a real child process."""

from __future__ import annotations

import resource
import subprocess
import sys

from replicad.config import default_config, with_overrides
from replicad.openfiles import RESERVED_FILES, files_needed, plan

UNLIMITED = resource.RLIM_INFINITY


def test_what_a_configuration_needs():
    config = with_overrides(default_config(), max_connections=1000)   # 3 members
    assert files_needed(config) == 1000 + config.peer_connection_limit + 2 + RESERVED_FILES


def test_a_soft_limit_below_the_need_is_raised_to_it_when_the_hard_one_allows():
    assert plan(1100, 1024, 524288, 1000) == (1100, None)
    assert plan(1100, 1024, UNLIMITED, 1000) == (1100, None)


def test_a_limit_that_suffices_is_left_alone():
    assert plan(1100, 65536, 65536, 1000) == (None, None)
    assert plan(1100, UNLIMITED, UNLIMITED, 1000) == (None, None)


def test_a_hard_limit_below_the_need_is_taken_whole_and_said_in_one_line():
    soft, warning = plan(1100, 256, 512, 1000)
    assert soft == 512
    assert "max_connections = 1000 needs about 1100 open files" in warning
    assert "only 512" in warning and "about 412 clients fit" in warning
    assert "\n" not in warning
    assert plan(1100, 512, 512, 1000)[0] is None          # nothing to raise


RAISE_UNDER_LOW_SOFT_LIMIT = """
import resource, sys
from replicad.config import default_config, with_overrides
from replicad.openfiles import files_needed, raise_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
config = with_overrides(default_config(), max_connections=200)
print(raise_limit(config), resource.getrlimit(resource.RLIMIT_NOFILE)[0] == files_needed(config))
"""


def test_a_real_process_soft_limit_is_raised():
    done = subprocess.run([sys.executable, "-c", RAISE_UNDER_LOW_SOFT_LIMIT],
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["None", "True"]
