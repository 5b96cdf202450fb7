# Everything a fresh machine needs: `make demo` (a local cluster, shown working) and
# `make test` (lint + the whole test suite).  Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
# Separate data dirs: the demo always starts from an empty cluster, `make cluster` keeps
# its data between runs.
DEMO_DIR ?= ./replicad-demo
CLUSTER_DIR ?= ./replicad-local
N ?= 20

.PHONY: venv bytecode demo cluster test test-slow test-deps trial lint soak bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	# compat mode keeps twisted/plugins visible to twistd (a default editable install hides it)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

# Compiled modules for every process the tests, the demo and the cluster start: the
# package is installed in place (editable), and where PYTHONDONTWRITEBYTECODE is set
# (this project's CI machines set it) each replica, CLI and proxy process would otherwise
# compile replicad's sources again at start-up (0.82 -> 0.71 s of CPU to import
# replicad.tap, median of 15; a test run starts several hundred processes).  A source
# newer than its .pyc is still compiled afresh (Python checks), so this is never stale.
bytecode: venv
	$(PY) -m compileall -q replicad twisted tests bench >/dev/null

demo: venv bytecode
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/replicad-local --demo --data-dir $(DEMO_DIR)

cluster: venv bytecode
	$(VENV)/bin/replicad-local --data-dir $(CLUSTER_DIR)

# pytest on two workers (pytest-xdist): each test still starts its own processes on its
# own random ports; `make soak` and a plain `pytest` run them one at a time.
test: venv bytecode test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/trial --temp-directory=/tmp/replicad-trial tests
	$(PY) -m pytest -m "not slow" -n 2

# The long fault tests (a frozen receiver mid-copy, a connection flood, network
# namespaces, a live backup restored in place): CI runs them after `make test`.
test-slow: venv bytecode test-deps
	$(PY) -m pytest -m slow

# Debian's chromium, for the cluster page's browser test
# (tests/integration/test_admin_browser.py), iproute2 for the network-namespace test and
# libfaketime for the wall-clock step test (tests/integration/test_clock_steps.py);
# where one cannot be installed (no root, no apt) its test is skipped with a message and
# the rest runs.
test-deps:
	@command -v chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "chromium could not be installed: the browser test will be skipped"
	@command -v ip >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; } || \
	  echo "iproute2 could not be installed: the network-namespace test will be skipped"
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime; } || \
	  echo "libfaketime could not be installed: the wall-clock step test will be skipped"

trial: venv
	$(VENV)/bin/trial tests

lint: venv
	$(VENV)/bin/ruff check .

# The whole pytest suite N times (`make soak N=5`): which test failed in which run, the
# failing runs' output kept in .soak/run-K.log, exit status 1 if any run failed.
soak: venv bytecode
	$(PY) tests/soak.py --runs $(N)

# Quick benchmarks (markdown on stdout); bench/suite.py --full --write refreshes the
# figures in docs/benchmarks.md.  redis-server (Debian's package) is installed if missing.
bench: venv
	command -v redis-server >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq redis-server; } || \
	  echo "redis-server missing: bench/suite.py will measure replicad alone"
	command -v cc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq gcc; }
	$(PY) -m pip install $(PIP_FLAGS) -e '.[bench]' --config-settings editable_mode=compat
	$(PY) bench/failover.py --runs 5 --election-runs 2 --sizes 3,5
	$(PY) bench/sync.py --sizes 1000,10000
	$(PY) bench/suite.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(CLUSTER_DIR) .soak _trial_temp .pytest_cache .hypothesis
