"""Settings for benchmark experiments: the project's settings plus overrides the project does
not read from the environment. Use with ``bench/engine.py --settings bench.settings``; without
any ``BENCH_*`` variable it equals ``config.settings``.

- ``BENCH_CONN_HEALTH_CHECKS=0|1``: Django's ``SELECT 1`` before the first query on a reused
  connection.
- ``BENCH_DB_REUSE_MAX=N``: ``CELERY_DB_REUSE_MAX``; Celery's Django fixup then closes the
  worker's database connection every N tasks instead of after every task (Celery >= 5.5.3
  ignores ``CONN_MAX_AGE`` in workers).
- ``BENCH_CLOSE_OLD_CONNECTIONS=1``: ``bench.workflows`` calls Django's
  ``close_old_connections()`` before each task (honours ``CONN_MAX_AGE`` and health checks),
  what the engine would do if it managed worker connections itself.
- ``BENCH_SYNCHRONOUS_COMMIT=off|local|on``: PostgreSQL ``synchronous_commit`` for every
  connection (``off`` skips waiting for the WAL flush at COMMIT).
"""

import os

from config.settings import *  # noqa: F403
from config.settings import DATABASES, env_bool, env_int

if os.environ.get("BENCH_CONN_HEALTH_CHECKS") is not None:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env_bool("BENCH_CONN_HEALTH_CHECKS")
if os.environ.get("BENCH_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = env_int("BENCH_DB_REUSE_MAX", 0)
BENCH_CLOSE_OLD_CONNECTIONS = env_bool("BENCH_CLOSE_OLD_CONNECTIONS")
if os.environ.get("BENCH_SYNCHRONOUS_COMMIT"):
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options["options"] = f"-c synchronous_commit={os.environ['BENCH_SYNCHRONOUS_COMMIT']}"
