"""What the settings derive from ``DATABASE_URL`` and ``CELERY_BROKER_URL``: the database
options for a transaction-pooling PgBouncer in front of PostgreSQL, and the Celery options for
RabbitMQ (quorum queues, publisher confirms) or Redis (visibility timeout).

Plain functions of strings and dicts, so the choices are tested without starting anything
(tests/test_backends.py). README, "PgBouncer and RabbitMQ".
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

PGBOUNCER = "pgbouncer"
# PgBouncer's customary port: a DATABASE_URL on it is taken to point at PgBouncer.
PGBOUNCER_PORT = 6432
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def database_pooler(database_url: str, setting: str = "") -> str:
    """``"pgbouncer"`` when connections go through a transaction-pooling PgBouncer, else ``""``.

    ``SIGNOFF_DB_POOLER`` (``setting``) decides when set: ``pgbouncer``, or ``none`` for a
    direct connection whatever the port. Unset, a PostgreSQL URL on port 6432 means PgBouncer.
    """
    choice = setting.strip().lower()
    if choice in (PGBOUNCER, "none", "direct"):
        return PGBOUNCER if choice == PGBOUNCER else ""
    if choice:
        raise ValueError(f"SIGNOFF_DB_POOLER must be 'pgbouncer' or 'none', not {setting!r}")
    parts = urlsplit(database_url)
    if parts.scheme.startswith("postgres") or parts.scheme == "pgsql":
        try:
            return PGBOUNCER if parts.port == PGBOUNCER_PORT else ""
        except ValueError:  # a malformed port: dj_database_url reports it
            return ""
    return ""


def apply_pooler(database: dict[str, Any], pooler: str) -> dict[str, Any]:
    """Database settings for ``pooler`` (changed in place and returned).

    Behind PgBouncer in transaction mode, consecutive transactions of one Django connection may
    run on different server connections, so nothing may outlive a transaction:

    - no server-side cursors (``QuerySet.iterator()`` outside a transaction declares a
      ``WITH HOLD`` cursor that the next transaction's server connection does not have);
    - no prepared statements: PgBouncer 1.18 (Debian 12) cannot track them (that needs 1.21's
      ``max_prepared_statements``), so psycopg's ``prepare_threshold`` is ``None``. Django's
      default client-side binding cursors never prepare anyway; this also covers
      ``server_side_binding``.

    Signoff itself holds no session state: no session-level ``SET`` (only ``SET LOCAL``), no
    advisory locks, no ``LISTEN``, no temporary tables (tests/test_backends.py greps for them).
    Django's ``SET TIME ZONE`` on a new connection is a parameter PgBouncer tracks per client.
    """
    if pooler != PGBOUNCER:
        return database
    database["DISABLE_SERVER_SIDE_CURSORS"] = True
    options = database.setdefault("OPTIONS", {})
    options["prepare_threshold"] = None
    return database


def is_amqp(broker_url: str) -> bool:
    """Whether ``broker_url`` selects RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``)."""
    return urlsplit(broker_url).scheme in AMQP_SCHEMES


def broker_settings(broker_url: str, *, visibility_timeout: int) -> dict[str, Any]:
    """Celery settings (``CELERY_`` names, without the prefix) that depend on the broker.

    RabbitMQ: every task queue a quorum queue (replicated, durable, messages confirmed to disk),
    publisher confirms (a message counts as sent once the broker has it), no global QoS (quorum
    queues refuse it; Celery detects them and uses per-consumer prefetch), and topic exchanges
    so that a doorbell with an ETA (a retry's backoff) waits in RabbitMQ's native delayed
    delivery queues instead of a worker's memory. Acks late (in settings) applies to both.

    Redis: the visibility timeout after which an unacknowledged message is delivered again.
    """
    if is_amqp(broker_url):
        return {
            "BROKER_TRANSPORT_OPTIONS": {"confirm_publish": True},
            "TASK_DEFAULT_QUEUE_TYPE": "quorum",
            "TASK_DEFAULT_EXCHANGE_TYPE": "topic",
            "TASK_CREATE_MISSING_QUEUE_TYPE": "quorum",
            "TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE": "topic",
            "WORKER_DETECT_QUORUM_QUEUES": True,
            "BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE": "quorum",
        }
    return {"BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": visibility_timeout}}


def whole_second_countdown(
    countdown: float | None, eta: datetime | str | None, now: datetime
) -> int | None:
    """The delay of a message for RabbitMQ's native delayed delivery, in whole seconds rounded
    up, or ``None`` to send it at once.

    Celery routes a delayed message through the ``celery_delayed_*`` queues by ``int(countdown)``:
    a delay under one second raised ``ValueError`` (a 200 ms retry backoff was never sent), and a
    longer one arrived up to a second early and waited in the worker. Rounded up, it arrives
    when due or just after; a backoff is a minimum, never a promise to the millisecond.
    """
    if eta is not None:
        if isinstance(eta, str):
            eta = datetime.fromisoformat(eta)
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=now.tzinfo)
        seconds = (eta - now).total_seconds()
    elif countdown is not None:
        seconds = float(countdown)
    else:
        return None
    return math.ceil(seconds) if seconds > 0 else None
