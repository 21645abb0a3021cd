# yan-swarm: the two quick-start commands are `make run` and `make test`.
#
# Installs come from constraints.txt, the lock: every dependency, transitive ones too, at the
# version the suite passed with, so a fresh machine months later gets what was tested, not
# what is newest. `make lock` refreshes it (README, "Reproducible installs").
#
# torch is installed first, on its own: an unpinned `torch` on a machine without it pulls a
# multi-GB CUDA build. TORCH defaults to the lock's pin (the CPU build this machine keeps on
# disk); `make setup TORCH=torch==2.x.y` overrides it, and the rest still comes from the lock.
# The project itself keeps a normal range (torch>=2.4).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= constraints.txt
TORCH ?= $(shell grep -m1 '^torch==' $(LOCK))
SCENARIO ?= scenarios/drone_patrol.yaml

.PHONY: setup run test test-fast test-numerics lint lock proto proto-check node-pyz clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	grep -v '^torch==' $(LOCK) > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --constraint $(VENV)/constraints.txt pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet --constraint $(VENV)/constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup  ## set up and run the drone patrol scenario on an embedded Ray
	$(VENV)/bin/swarm run $(SCENARIO)

test: lint  ## set up, lint, type-check, check the generated stubs, and run the whole test suite
	$(PY) proto/generate.py --check
	$(PY) -m pytest -q

test-fast: setup  ## the edit loop: every test not marked slow (no real processes, builds or full runs)
	$(PY) -m pytest -q -m "not slow"

test-numerics: setup  ## the numerics tests under every CPU kernel family and at 1 and 2 threads
	bash tests/numerics_matrix.sh $(PY)

lint: setup  ## ruff, mypy, and the package import rules of docs/ARCHITECTURE.md (.importlinter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy swarm agents protocols envs
	$(VENV)/bin/lint-imports

lock:  ## refresh constraints.txt: newest versions the project's ranges allow, in a scratch venv
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet "$(TORCH)"
	.lock-venv/bin/python -m pip install --quiet ".[dev]"
	{ echo "# The lock: tested versions of every dependency (make setup installs from it)."; \
	  echo "# Refresh: make lock, then make test, and commit this file if the suite passes."; \
	  echo "# Made by make lock with $$(.lock-venv/bin/python --version) on $$(uname -sm)."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable \
	    | grep -v '^yan-swarm' | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(LOCK)
	rm -rf .lock-venv

proto: setup  ## regenerate swarm/proto/v1 from proto/swarm/v1/*.proto
	$(PY) proto/generate.py

proto-check: setup
	$(PY) proto/generate.py --check

node-pyz: setup  ## build dist/swarm-node.pyz: the device node as one file needing only Python (docs/node.md)
	$(PY) -m swarm.build_node --out dist/swarm-node.pyz

clean:
	rm -rf $(VENV) runs .pytest_cache
