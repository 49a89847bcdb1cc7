# Signoff: `make run` (embedded default, demo data) and `make test` (PostgreSQL + Redis).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
export PORT

.PHONY: install run test lint bench chaos services-check browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) manage.py runall --port $(PORT) --migrate --seed-demo

services-check: install
	$(PY) -m tests.services

# The browser tests use Debian's chromium; `playwright install` is never run.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: install services-check browser
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install services-check
	$(PY) bench/engine.py

chaos: install services-check
	$(PY) bench/chaos.py

clean:
	rm -rf $(VENV) var staticfiles
