# Signoff: `make run` (embedded default, demo data) and `make test` (PostgreSQL + Redis).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
export PORT

.PHONY: install run test lint imports bench bench-quick bench-tools chaos services-check browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,s3]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) manage.py runall --port $(PORT) --migrate --seed-demo

services-check: install
	$(PY) -m tests.services

# The browser tests use Debian's chromium; `playwright install` is never run.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The import rules first (seconds): a broken rule fails the run before the suite starts.
test: install services-check browser imports
	$(PY) -m pytest

# The import rules of DESIGN.md as import-linter contracts (pyproject.toml, ARCHITECTURE.md).
imports: install
	$(VENV)/bin/lint-imports

lint: install imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The load generator (wrk) and pgbench come from Debian packages.
bench-tools:
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	command -v pgbench >/dev/null || (apt-get update -qq && apt-get install -y -qq postgresql-client)

# Every benchmark, one summary table, bench/results/latest.json (BENCH_ARGS="--only engine,api").
bench: install services-check bench-tools
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: install services-check bench-tools
	$(PY) bench/run.py --quick $(BENCH_ARGS)

chaos: install services-check
	$(PY) -m pytest -m chaos tests/test_chaos.py
	$(PY) bench/chaos.py

clean:
	rm -rf $(VENV) var staticfiles
