"""`make test` runs this first: stop at once, with a message, when PostgreSQL or Redis is
unreachable (the suite never skips for a missing service)."""

from __future__ import annotations

import os
import sys

import psycopg
import redis

DB_URL = os.environ.get("SIGNOFF_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signoff")
REDIS_URL = os.environ.get("SIGNOFF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REPLICA_URL = os.environ.get(
    "SIGNOFF_TEST_REPLICA_URL", "postgres://postgres@127.0.0.1:5433/signoff"
)


def replica_problem() -> str | None:
    """Why the streaming replica cannot serve the replica tests, or None."""
    try:
        with psycopg.connect(REPLICA_URL.rsplit("/", 1)[0] + "/postgres", connect_timeout=3) as c:
            row = c.execute(
                "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)"
            ).fetchone()
    except Exception as exc:  # noqa: BLE001
        return f"the read replica is unreachable at {REPLICA_URL} ({exc})"
    if row != (True, "streaming"):
        return f"the server at {REPLICA_URL} is not a streaming standby (recovery, receiver: {row})"
    return None


def main(argv: list[str] | None = None) -> int:
    """``--replica``: check the streaming read replica too (make test)."""
    argv = sys.argv[1:] if argv is None else argv
    problems = []
    try:
        # The test database is created by pytest-django; connect to the server's own one.
        with psycopg.connect(DB_URL.rsplit("/", 1)[0] + "/postgres", connect_timeout=3):
            pass
    except Exception as exc:  # noqa: BLE001
        problems.append(
            f"PostgreSQL is unreachable at {DB_URL} ({exc}).\n"
            "  Start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "  or point SIGNOFF_TEST_DATABASE_URL at a server."
        )
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        problems.append(
            f"Redis is unreachable at {REDIS_URL} ({exc}).\n"
            "  Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''\n"
            "  or point SIGNOFF_TEST_REDIS_URL at a server."
        )
    if "--replica" in argv:
        problem = replica_problem()
        if problem:
            problems.append(problem + ".\n  Start it: scripts/replica.sh start (or make replica)")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
