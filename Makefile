# Signoff: `make run` (embedded default, demo data) and `make test` (PostgreSQL + Redis).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
export PORT

.PHONY: install run test test-pooled test-pgbouncer test-amqp servers lint imports bench \
	bench-quick bench-tools chaos services-check browser gettext messages axe clean replica

# PgBouncer (transaction pooling, 127.0.0.1:6432, config in var/pgbouncer/) and RabbitMQ (vhost
# AMQP_VHOST for the user guest), both Debian packages, installed and started when missing.
PGBOUNCER_URL ?= postgres://postgres@127.0.0.1:6432
AMQP_VHOST ?= signoff_test
AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/$(AMQP_VHOST)
# The end-to-end subset that runs again through PgBouncer on RabbitMQ (README, "PgBouncer and
# RabbitMQ").
E2E_CORE := tests/orchestration/test_e2e.py tests/orchestration/test_api_e2e.py \
	tests/approvals/test_e2e.py tests/test_pgbouncer.py::test_the_pooled_run_goes_through_pgbouncer
E2E_SUBSET := $(E2E_CORE) tests/test_rabbitmq.py
# make chaos BROKER=amqp: the chaos runs on RabbitMQ, restarting it mid-run.
BROKER ?= redis

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,s3]'
	touch $(STAMP)

install: $(STAMP)

run: install messages
	$(PY) manage.py runall --port $(PORT) --migrate --seed-demo

services-check: install
	$(PY) -m tests.services

# The browser tests use Debian's chromium; `playwright install` is never run.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Translations (README, "Time zone and language"): locale/*/LC_MESSAGES/django.po is the
# source, the .mo files are built here (git-ignored), with msgfmt from Debian's gettext.
gettext:
	command -v msgfmt >/dev/null || (apt-get update -qq && apt-get install -y -qq gettext)

messages: install gettext
	$(PY) manage.py compilemessages --ignore=.venv --ignore=var --ignore=build

# axe-core for the accessibility tests (tests/approvals/test_accessibility_browser.py), from the npm
# registry into build/axe (git-ignored) at install time, never fetched by a test.
AXE_VERSION := 4.14.1
AXE_JS := build/axe/node_modules/axe-core/axe.min.js
$(AXE_JS):
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	mkdir -p build/axe
	npm install --prefix build/axe --no-save --no-audit --no-fund axe-core@$(AXE_VERSION)

axe: $(AXE_JS)

servers: replica
	scripts/pgbouncer.sh start
	scripts/rabbitmq.sh start $(AMQP_VHOST)

# The streaming read replica (a second PostgreSQL cluster on 127.0.0.1:5433, README "Read
# replica"): tests/test_db_router.py and tests/approvals/test_read_replica.py read from it.
replica:
	scripts/replica.sh start

# The import rules first (seconds): a broken rule fails the run before the suite starts. Then
# the suite (PostgreSQL directly, Redis as broker), then the end-to-end subset again with the
# test process and its worker going through PgBouncer and RabbitMQ as the broker.
test: install browser messages axe imports servers
	$(PY) -m tests.services --replica
	$(PY) -m pytest -n 2 --dist loadgroup
	$(MAKE) --no-print-directory test-pooled

# The end-to-end subset through PgBouncer on RabbitMQ (what `make test` runs after the suite),
# or through one of them only.
test-pooled: install servers
	SIGNOFF_TEST_DB_POOLER_URL=$(PGBOUNCER_URL) SIGNOFF_TEST_BROKER_URL=$(AMQP_URL) \
		$(PY) -m pytest -m 'e2e or rabbitmq' $(E2E_SUBSET)

test-pgbouncer: install servers
	SIGNOFF_TEST_DB_POOLER_URL=$(PGBOUNCER_URL) $(PY) -m pytest -m e2e $(E2E_CORE)

test-amqp: install servers
	SIGNOFF_TEST_BROKER_URL=$(AMQP_URL) $(PY) -m pytest -m 'e2e or rabbitmq' $(E2E_SUBSET)

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

chaos: install services-check servers
	SIGNOFF_CHAOS_BROKER=$(BROKER) $(PY) -m pytest -m chaos tests/test_chaos.py \
		tests/orchestration/test_fanout_e2e.py tests/orchestration/test_batches_e2e.py \
		tests/orchestration/test_schedules_e2e.py tests/test_pgbouncer.py
	SIGNOFF_CHAOS_BROKER=$(BROKER) $(PY) bench/chaos.py

clean:
	rm -rf $(VENV) var staticfiles build
	find locale -name '*.mo' -delete
