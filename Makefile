# The two commands of the README:  `make demo`  and  `make test`.
# Both do every set-up step on a fresh machine (venv, torch first, the project,
# Debian packages) and are quiet and fast on a second run.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.collapse-installed

.PHONY: demo demo-quick test faults setup system system-demo bench

# The main job on the embedded default: a local Ray on 127.0.0.1, a local run directory, and
# Fashion-MNIST from the Debian package. RUN_DIR and ARGS may be overridden. On a machine with a
# CUDA GPU (nvidia-smi lists one) the same command runs the demo-gpu preset and says so first;
# DEMO=demo or DEMO=demo-gpu chooses.
RUN_DIR ?= runs/demo
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -m1 '^GPU')
DEMO ?= $(if $(GPU),demo-gpu,demo)
demo: $(STAMP) system-demo
	@echo "make demo: $(if $(GPU),a CUDA GPU ($(GPU)),no CUDA GPU): the $(DEMO) preset, run directory $(RUN_DIR)"
	$(VENV)/bin/collapse run --config $(DEMO) --run-dir $(RUN_DIR) $(ARGS)

# A smoke run of the same loop on the tiny preset (minutes; its 20-step models make noise, and the
# report says so).
demo-quick: $(STAMP) system-demo
	$(VENV)/bin/collapse run --config tiny --run-dir runs/demo-quick $(ARGS)

# The suite on TEST_WORKERS pytest-xdist workers (0: in this process). --dist loadscope keeps a module's
# tests, and its module-scoped run, on one worker; tests/conftest.py orders the modules longest first.
# Alone, a whole run on a Ray leaves ~30% of two cores idle (process starts, polls); two workers fill it.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# The fault matrix (faults/test_faults.py): real runs of the tiny preset on the local Ceph gateway with
# a fault injected into each, compared with an undisturbed run; prints the table. ~40 min on 2 cores.
# The raylet rows run on a 3-node loopback cluster (ray.cluster_utils.Cluster).
# Its fast cases (lease, damaged shard, bad input) are in `make test`. The full-disk row mounts a tmpfs
# (root).
faults: setup
	$(PY) -m pytest -q faults $(PYTEST_ARGS)

setup: $(STAMP) system

# torch first, from the pinned CPU build: deepspeed's unpinned torch would
# otherwise resolve a CUDA build of several GB.
# (This machine's pip configuration names local indexes that may be absent: their warnings are noise.)
PIP := $(PY) -m pip install -q --disable-pip-version-check
QUIET := 2>&1 | { grep -v '^WARNING: Location .* is ignored' || true; }; test $${PIPESTATUS[0]} -eq 0
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing torch 2.13.0 (CPU) and the project into $(VENV)"
	@$(PIP) torch==2.13.0 $(QUIET)
	@$(PIP) -e '.[test]' $(QUIET)
	@touch $(STAMP)

# Debian packages, installing only what is missing: the tests need Ceph's S3 gateway, Chromium and
# Fashion-MNIST; the demo only Fashion-MNIST.
system:
	@bash infra/install-system.sh test

system-demo:
	@bash infra/install-system.sh demo

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
