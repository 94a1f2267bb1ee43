# Every target creates or reuses .venv itself, so a fresh clone needs only Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BATCHCTL := $(VENV)/bin/batchctl
STAMP := $(VENV)/.installed
# Bytecode as an installed package has it: an editable checkout under
# PYTHONDONTWRITEBYTECODE would otherwise compile its modules in every command.
BYTECODE := $(PY) -m compileall -q batchctl
DEMO_STATE ?= .demo-state

.DEFAULT_GOAL := help
.PHONY: help install fmt lint type test test-fast check demo bench screenshot clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("batchctl needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install batchctl with its dev tools

fmt: $(STAMP) ## format and auto-fix
	$(VENV)/bin/ruff format batchctl tests bench
	$(VENV)/bin/ruff check --fix batchctl tests bench

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check batchctl tests bench
	$(VENV)/bin/ruff format --check batchctl tests bench

type: $(STAMP) ## mypy strict
	$(VENV)/bin/mypy

test: $(STAMP) ## run the whole test suite
	$(BYTECODE)
	$(PY) -m pytest

test-fast: $(STAMP) ## the test suite without the slow tests
	$(BYTECODE)
	$(PY) -m pytest -m "not slow"

check: lint type test ## lint, type-check and test

demo: $(STAMP) ## run the example plan on this machine (state in .demo-state/)
	$(BYTECODE)
	BATCHCTL_STATE_DIR=$(DEMO_STATE) ./demo.sh $(BATCHCTL)

bench: $(STAMP) ## measure the engine at scale, local throughput, fair sharing and critical path order (results: bench/RESULTS.md)
	$(PY) bench/engine_scale.py --items 100000 --machines 1000
	$(PY) bench/local_throughput.py --repeat 3
	$(PY) bench/fair_share.py
	$(PY) bench/critical_path.py

screenshot: $(STAMP) ## redraw docs/report.png, the README's picture of an HTML report (needs chromium)
	$(BYTECODE)
	$(PY) docs/screenshot.py --out docs/report.png

clean: ## remove the venv, caches and demo state
	rm -rf $(VENV) $(DEMO_STATE) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
