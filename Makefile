# yan-swarm: the two quick-start commands are `make run` and `make test`.
#
# torch is installed first, pinned to the CPU build this machine keeps on disk: an unpinned
# `torch` on a machine without it pulls a multi-GB CUDA build. The project itself keeps a
# normal range (torch>=2.4), which the installed 2.13.0 satisfies.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
SCENARIO ?= scenarios/drone_patrol.yaml

.PHONY: setup run test lint proto proto-check node-pyz clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup  ## set up and run the drone patrol scenario on an embedded Ray
	$(VENV)/bin/swarm run $(SCENARIO)

test: lint  ## set up, lint, type-check, check the generated stubs, and run the test suite
	$(PY) proto/generate.py --check
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy swarm agents protocols envs

proto: setup  ## regenerate swarm/proto/v1 from proto/swarm/v1/*.proto
	$(PY) proto/generate.py

proto-check: setup
	$(PY) proto/generate.py --check

node-pyz: setup  ## build dist/swarm-node.pyz: the device node as one file needing only Python (docs/node.md)
	$(PY) -m swarm.build_node --out dist/swarm-node.pyz

clean:
	rm -rf $(VENV) runs .pytest_cache
