"""What the settings derive from DATABASE_URL and CELERY_BROKER_URL (config.backends), and
that the code holds no PostgreSQL session state a transaction-pooling PgBouncer would break."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.backends import (
    apply_pooler,
    broker_settings,
    database_pooler,
    is_amqp,
    whole_second_countdown,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("url", "setting", "expected"),
    [
        ("postgres://u@db:6432/signoff", "", "pgbouncer"),
        ("postgresql://u@db:5432/signoff", "", ""),
        ("postgres://u@db/signoff", "", ""),
        ("postgres://u@pooler:5432/signoff", "pgbouncer", "pgbouncer"),
        ("postgres://u@db:6432/signoff", "none", ""),
        ("postgres://u@db:6432/signoff", " PgBouncer ", "pgbouncer"),
        ("sqlite:///var/x.sqlite3", "", ""),
    ],
)
def test_the_pooler_follows_the_setting_or_the_port(url: str, setting: str, expected: str) -> None:
    assert database_pooler(url, setting) == expected


def test_an_unknown_pooler_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="SIGNOFF_DB_POOLER"):
        database_pooler("postgres://u@db:6432/x", "pgpool")


def test_behind_pgbouncer_no_server_side_cursors_and_no_prepared_statements() -> None:
    database = {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"sslmode": "require"}}
    apply_pooler(database, "pgbouncer")
    assert database["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert database["OPTIONS"] == {"sslmode": "require", "prepare_threshold": None}
    direct = {"ENGINE": "django.db.backends.postgresql"}
    assert apply_pooler(dict(direct), "") == direct


@pytest.mark.django_db
def test_the_pooled_settings_reach_a_real_connection() -> None:
    """psycopg takes prepare_threshold=None from Django's OPTIONS: it never prepares."""
    from django.db import connections

    conn = connections.create_connection("default")
    conn.settings_dict = apply_pooler(dict(conn.settings_dict, OPTIONS={}), "pgbouncer")
    try:
        conn.ensure_connection()
        assert conn.connection.prepare_threshold is None
    finally:
        conn.close()


def test_amqp_selects_quorum_queues_confirms_and_topic_exchanges() -> None:
    assert is_amqp("amqp://u:p@rabbit:5672/signoff") and is_amqp("amqps://h//")
    assert not is_amqp("redis://127.0.0.1:6379/0") and not is_amqp("redis+socket:///x")
    amqp = broker_settings("amqp://u:p@rabbit/signoff", visibility_timeout=60)
    assert amqp["BROKER_TRANSPORT_OPTIONS"] == {"confirm_publish": True}
    assert amqp["TASK_DEFAULT_QUEUE_TYPE"] == amqp["TASK_CREATE_MISSING_QUEUE_TYPE"] == "quorum"
    assert amqp["TASK_DEFAULT_EXCHANGE_TYPE"] == "topic"
    assert amqp["TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE"] == "topic"
    assert amqp["WORKER_DETECT_QUORUM_QUEUES"] is True
    redis = broker_settings("redis://127.0.0.1:6379/0", visibility_timeout=60)
    assert redis == {"BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 60}}


def test_a_delay_becomes_whole_seconds_rounded_up() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert whole_second_countdown(None, now + timedelta(milliseconds=200), now) == 1
    assert whole_second_countdown(None, now + timedelta(seconds=5.2), now) == 6
    assert whole_second_countdown(None, (now + timedelta(seconds=3)).isoformat(), now) == 3
    assert whole_second_countdown(0.4, None, now) == 1
    assert whole_second_countdown(None, now - timedelta(seconds=1), now) is None  # due: now
    assert whole_second_countdown(0, None, now) is None
    assert whole_second_countdown(None, None, now) is None


def test_the_app_rounds_delays_only_for_quorum_queues(monkeypatch) -> None:
    from celery import Celery

    from config.celery import SignoffCelery, app

    sent: list[dict] = []
    monkeypatch.setattr(Celery, "send_task", lambda self, name, *a, **o: sent.append(o))
    monkeypatch.setitem(app.conf, "task_default_queue_type", "quorum")
    SignoffCelery.send_task(app, "x", (1, 2), eta=app.now() + timedelta(milliseconds=300))
    SignoffCelery.send_task(app, "x", (1, 2), countdown=-3)
    monkeypatch.setitem(app.conf, "task_default_queue_type", "classic")
    eta = app.now() + timedelta(milliseconds=300)
    SignoffCelery.send_task(app, "x", (1, 2), eta=eta)
    assert sent == [{"countdown": 1}, {}, {"eta": eta}]


# Session-level state a transaction-pooling PgBouncer would hand to another client, or lose.
SESSION_STATE = [
    (re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I), "session advisory lock"),
    # SQL keywords as this code writes them: upper case (prose says "listen" or "Set").
    (re.compile(r"\b(UN)?LISTEN\s+\w"), "LISTEN"),
    (re.compile(r"CREATE\s+(TEMP|TEMPORARY)\s+TABLE"), "temporary table"),
    # SET CONSTRAINTS, like SET LOCAL, lasts only to the end of the transaction.
    (re.compile(r"""["']\s*SET\s+(?!LOCAL\b)(?!CONSTRAINTS\b)(?!\()[A-Za-z_]"""), "session SET"),
    (re.compile(r"\bDECLARE\s+\w+\s+.*CURSOR"), "cursor"),
    (re.compile(r"\bPREPARE\s+\w+\s+(AS|\()"), "prepared statement"),
]


def test_no_session_state_in_the_code() -> None:
    """What runs in web, worker and beat: no session advisory lock (pg_advisory_xact_lock is
    fine), no LISTEN, no temporary table, no session-level SET (SET LOCAL is fine), no
    hand-declared cursor or PREPARE. Migrations run once, directly (README)."""
    found = []
    for folder in ("orchestration", "approvals", "integrations", "config", "demo"):
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            text = path.read_text()
            for pattern, what in SESSION_STATE:
                for match in pattern.finditer(text):
                    line = text.count("\n", 0, match.start()) + 1
                    found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert found == []


def test_the_session_state_patterns_catch_what_they_name() -> None:
    samples = {
        "SELECT pg_advisory_lock(42)": "session advisory lock",
        "LISTEN signoff_events": "LISTEN",
        "CREATE TEMP TABLE t (id int)": "temporary table",
        'cursor.execute("SET statement_timeout = 5")': "session SET",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1": "cursor",
        "PREPARE q AS SELECT 1": "prepared statement",
    }
    for text, what in samples.items():
        assert [w for p, w in SESSION_STATE if p.search(text)] == [what], text
    for fine in (
        'cursor.execute("SET LOCAL jit = off")',
        'cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")',
        "SELECT pg_advisory_xact_lock(1)",
    ):
        assert not [w for p, w in SESSION_STATE if p.search(fine)], fine
