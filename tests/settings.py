"""Test settings: the real services (PostgreSQL and Redis), never the embedded default.

Override with SIGNOFF_TEST_DATABASE_URL and SIGNOFF_TEST_REDIS_URL. SIGNOFF_TEST_BROKER_URL
(amqp://...) puts the broker on RabbitMQ (Redis still keeps the test workflows' ledger), and
SIGNOFF_TEST_DB_POOLER_URL (postgres://user@host:6432) sends the test process and its worker
through PgBouncer once the test database exists (tests/conftest.py, README "PgBouncer and
RabbitMQ").
"""

import os

# pytest-xdist (`make test` runs two worker processes, gw0 and gw1): each its own Redis
# database, counting down from the given one (15 for gw0, 14 for gw1), as its test database
# gets pytest-django's `_gw0`/`_gw1` suffix. The processes a test starts (the Celery worker)
# inherit the shifted URL and the mark below, so they never shift it twice.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw") and not os.environ.get("SIGNOFF_TEST_XDIST_SHIFTED"):
    _base, _, _db = os.environ.get(
        "SIGNOFF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"
    ).rpartition("/")
    os.environ["SIGNOFF_TEST_REDIS_URL"] = f"{_base}/{int(_db) - int(_XDIST_WORKER[2:])}"
    os.environ["SIGNOFF_TEST_XDIST_SHIFTED"] = _XDIST_WORKER
    # Uploaded files too (the orphan sweep's tests list the whole folder).
    if "SIGNOFF_FILES_DIR" not in os.environ:
        from pathlib import Path

        os.environ["SIGNOFF_FILES_DIR"] = str(
            Path(__file__).resolve().parent.parent / "var" / f"test-files-{_XDIST_WORKER}"
        )

os.environ["DATABASE_URL"] = os.environ.get(
    "SIGNOFF_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signoff"
)
SIGNOFF_TEST_REDIS_URL = os.environ.get("SIGNOFF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ["CELERY_BROKER_URL"] = (
    os.environ.get("SIGNOFF_TEST_BROKER_URL") or SIGNOFF_TEST_REDIS_URL
)
SIGNOFF_TEST_DB_POOLER_URL = os.environ.get("SIGNOFF_TEST_DB_POOLER_URL", "")
# The streaming replica of scripts/replica.sh (a second cluster, 127.0.0.1:5433): an alias
# `replica` mirroring the test database (it streams from the primary, so the test database
# and every committed row appear there by themselves). Replica reads stay off in the suite;
# tests/test_db_router.py and tests/approvals/test_read_replica.py turn them on. Nothing
# connects to it otherwise, so a suite run without the replica passes as before.
SIGNOFF_TEST_REPLICA_URL = os.environ.get(
    "SIGNOFF_TEST_REPLICA_URL", "postgres://postgres@127.0.0.1:5433/signoff"
)
os.environ["DATABASE_REPLICA_URL"] = SIGNOFF_TEST_REPLICA_URL
if SIGNOFF_TEST_DB_POOLER_URL:
    # The test database is created and dropped directly (PgBouncer cannot drop a database it
    # holds connections to); every connection after that goes through PgBouncer with its
    # settings (config.backends.apply_pooler), the worker's too.
    os.environ["SIGNOFF_DB_POOLER"] = "pgbouncer"
os.environ.setdefault(
    "SIGNOFF_WORKFLOW_MODULES",
    "demo.workflows,demo.expenses,demo.trips,demo.vendors,tests.workflows,tests.fanout_workflows",
)
# Outside the embedded default the settings refuse to start without real secrets: the suite's
# own, fixed (the worker processes it starts inherit them). Never deploy them.
os.environ["SECRET_KEY"] = "tests-only-secret-key-for-the-test-databases-0123456789abcdef"
os.environ["SIGNOFF_ENCRYPTION_KEYS"] = "5ivTi3DjPOMz6XT6R0DblYlA6SpEVDUQ6Zb7kI-arhk="

from config.settings import *  # noqa: E402, F403

DATABASES["replica"]["TEST"] = {"MIRROR": "default"}  # noqa: F405
# Read by config.settings above; processes the suite starts with other settings (the embedded
# default of `make run`, the chaos run) must not inherit it.
os.environ.pop("DATABASE_REPLICA_URL", None)
SIGNOFF_REPLICA_READS = False

# The worker process reads subscriptions for every event: a test's new subscription must
# reach a worker that served an earlier test a moment ago (the cache itself is tested apart).
SIGNOFF_WEBHOOK_SUBSCRIPTION_CACHE_SECONDS = 0.0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
# The suite sends invalid tokens from one address on purpose (schemathesis' auth probes, the
# 401 tests): the throttle's own tests set the production limit back.
SIGNOFF_TOKEN_FAILURES_PER_IP = 1_000_000
# Alert rules made by a test reach the worker at once; the alert tests' webhook receivers
# listen on plain http on the loopback.
SIGNOFF_ALERT_RULE_CACHE_SECONDS = 0.0
SIGNOFF_ALERT_HTTP_HOSTS = ["127.0.0.1", "localhost"]
# The webhook tests' receivers listen on 127.0.0.1 (the refusal has its own tests).
SIGNOFF_WEBHOOK_ALLOW_PRIVATE = True
# Traces are on only where a test turns them on (tests/orchestration/test_tracing.py; its
# worker gets SIGNOFF_TEST_TRACING=1): a developer's OTEL_EXPORTER_OTLP_ENDPOINT must not send
# the suite's spans anywhere.
SIGNOFF_TRACING = os.environ.get("SIGNOFF_TEST_TRACING") == "1"
