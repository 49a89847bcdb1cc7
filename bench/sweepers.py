"""Sweeper benchmark: one escalation sweep over 10,000 overdue approvals among 200,000.

Run it with ``.venv/bin/python bench/sweepers.py`` (``--help`` for the knobs). It needs
PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379, database 4 as the broker (override
with ``SIGNOFF_BENCH_SWEEP_DATABASE_URL`` / ``SIGNOFF_BENCH_SWEEP_BROKER_URL``). No worker: the
follow-up mail tasks are only queued, counted in the broker and removed again. It creates the
database ``signoff_bench_sweep`` when missing, migrates it (``manage.py migrate`` with
``DATABASE_URL``), seeds it unless the same seed is there, prints one table and writes
``bench/results/sweepers.json``.

Time: seeding takes about 5 minutes on a busy machine (once). The per-row sweeper spends about
40 ms a row here, so the default run (all 10,000 through it) takes about 8 minutes;
``--per-row-rows 1000`` keeps a run under 3 minutes and extrapolates.

The data
--------
``manage.py seed_demo`` makes the users (``admin``, ``alice``, ``bob`` in ``managers``...). One
real ``expense_approval`` instance is then started through the engine and its ``validate``
step run in this process, so ``manager_approval`` asks ``managers`` exactly as in production
(request, step runs, events, assignee rows, action token, "assigned" mail). That instance is the
template: it is cloned 200,000 times inside PostgreSQL (``INSERT ... SELECT`` over every column
of each table, so new columns need no change here; times shifted to each clone's creation) and
then removed. Of the clones:

- 10,000 ``overdue``: pending, created 2 days to 2 days 11 hours ago, so the one escalation level
  (after 2 days, to ``admin``) is due and expiry (3 days) is not; reminders already sent;
- 40,000 ``future``: pending, escalation due in 1 to 34 hours;
- 150,000 ``resolved``: approved (70 %) or rejected over the past year, no timer set.

Each clone has the template's five step runs (``manager_approval`` waiting while pending) and
six events. A table ``bench_sweep_seed`` records the layout; the next run reuses the rows, and
every run first puts the pending rows back (timers re-anchored to now, level 0, the previous
run's escalation events, tokens, mails and ``admin`` assignments removed).

What is measured
----------------
1. ``EXPLAIN (ANALYZE, BUFFERS)`` of each sweeper's due-ids query, captured from the sweeper
   itself: index used and rows examined (rows the scans returned plus rows a filter removed).
2. ``approvals.sweepers.sweep_escalations(batch=N)`` once, with 10,000 due (N = 10,000 unless
   ``--per-row-rows`` says fewer; then its 10,000-row time is extrapolated: each row is its own
   transaction, the cost is linear). The per-row design commits each request's new level, its
   event, its action token and its outbox mail together, row by row, and sends the mail task
   to the broker after each commit, so the state, the events and the queued mails are all in
   place when the call returns; the stored timestamps (event ``at``, outbox ``created_at``) give
   the timeline. CPU seconds of this process and of its PostgreSQL backend (from /proc) split
   the wall time into work and waiting. Then counted: levels, events, tokens, outbox rows,
   ``admin`` assignments, messages in the broker, failed rows.
3. A profile of the per-row sweep over 200 more rows (``--profile-rows``): SQL statements and
   their time by kind, COMMITs, template rendering, broker publishing, and pyinstrument's tree
   when it is installed (it is not a project dependency: ``.venv/bin/pip install pyinstrument``).
4. A batched prototype of the same escalation over the 10,000 (``--no-prototype`` skips it), in
   this module and this process only: phase 1, per chunk of 2,000, one transaction of two
   statements (lock with ``FOR UPDATE SKIP LOCKED``, then one statement of data-modifying CTEs:
   level, assignees, ``last_seq`` and events, outbox rows in a new ``rendering`` status);
   phase 2 renders those mails, issues their action tokens and queues their tasks. Its event
   and mail are compared with the per-row sweeper's for the same request.
5. Right after (zero due rows): the escalation sweep again, ``sweep_doorbells`` and
   ``sweep_step_timeouts`` (the seed has no scheduled, retrying or running step), 20 runs each,
   p50, and their plans.
6. When ``approvals.models`` has no partial index on ``next_escalation_at`` (the index
   ``approval_pending_escalation``), 1 and 5 again with such an index created in this database
   only (``bench_pending_escalation``, also present for the prototype, dropped at the end).

Noise: 2 cores shared with PostgreSQL and whatever else runs (other people's tests). The load
average is recorded; compare runs taken under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
# Run as a script: import from the project root, and never shadow modules from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

DB_URL = os.environ.get(
    "SIGNOFF_BENCH_SWEEP_DATABASE_URL",
    "postgres://postgres@127.0.0.1:5432/signoff_bench_sweep",
)
BROKER_URL = os.environ.get("SIGNOFF_BENCH_SWEEP_BROKER_URL", "redis://127.0.0.1:6379/4")

WORKFLOW, STEP = "expense_approval", "manager_approval"
ESCALATED_TO = "admin"
# The layout; a change here reseeds.
LAYOUT = {
    "requests": 200_000,
    "overdue": 10_000,
    "future": 40_000,
    "approved_percent": 70,
    "workflow": WORKFLOW,
    "step": STEP,
    "version": 1,
}
GOALS = {"state_changed_s": 0.5, "followups_queued_s": 10.0, "empty_sweep_ms": 50.0}
EMPTY_RUNS = 20
PROFILE_ROWS = 200
INDEX_NAME = "approval_pending_escalation"
BENCH_INDEX = "bench_pending_escalation"
BENCH_INDEX_SQL = (
    f"CREATE INDEX IF NOT EXISTS {BENCH_INDEX} ON approvals_approvalrequest "
    "(next_escalation_at) WHERE state = 'pending'"
)
SEED_TABLE = "bench_sweep_seed"
ROWS_TABLE = "bench_sweep_rows"


def log(message: str) -> None:
    print(f"[sweepers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def pct(values: list[float], p: float) -> float:
    data = sorted(values)
    rank = (len(data) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


# -- database and broker ------------------------------------------------------------------------


def admin_url() -> str:
    return urlunsplit(urlsplit(DB_URL)._replace(path="/postgres"))


def db_name() -> str:
    return urlsplit(DB_URL).path.lstrip("/")


def ensure_database() -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url(), autocommit=True, connect_timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db_name(),))
        if found.fetchone() is None:
            log(f"creating database {db_name()}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name())))


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=DB_URL,
        CELERY_BROKER_URL=BROKER_URL,
        DJANGO_SETTINGS_MODULE="config.settings",
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
    )


def manage(*args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=_env(), check=True, stdout=sys.stderr
    )


def setup_django() -> None:
    os.environ.update(_env())
    import django

    django.setup()


def broker_queues() -> dict[str, int]:
    """Messages waiting in each Celery queue (Redis lists) of the broker database."""
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    found = {}
    for key in client.scan_iter(count=1000):
        if client.type(key) == b"list":
            found[key.decode()] = client.llen(key)
    return found


def broker_purge() -> int:
    """Drop the queued messages of this benchmark (no worker runs against this broker)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(BROKER_URL)
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    waiting = client.llen(queue)
    client.delete(queue)
    return waiting


def sql(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def columns_of(table: str) -> list[str]:
    return [
        r[0]
        for r in sql(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
            [table],
        )
    ]


# -- seed ---------------------------------------------------------------------------------------

TABLES = [
    "orchestration_workflowinstance",
    "orchestration_steprun",
    "orchestration_event",
    "approvals_approvalrequest",
    "approvals_approvalrequest_assignee_users",
    "approvals_approvalrequest_assignee_groups",
    "approvals_actiontoken",
    "integrations_outboundemail",
]


def seed_matches() -> bool:
    from approvals.models import ApprovalRequest

    if not sql(f"SELECT to_regclass('{SEED_TABLE}') IS NOT NULL")[0][0]:
        return False
    row = sql(f"SELECT layout FROM {SEED_TABLE}")
    if not row:
        return False
    layout = row[0][0] if isinstance(row[0][0], dict) else json.loads(row[0][0])
    return layout == LAYOUT and ApprovalRequest.objects.count() == LAYOUT["requests"]


def make_template() -> Any:
    """One real expense, waiting on ``manager_approval``, written by the engine itself."""
    from django.contrib.auth import get_user_model

    from approvals.models import ApprovalRequest
    from orchestration import engine
    from orchestration.models import StepRun

    alice = get_user_model().objects.get(username="alice")
    instance, _ = engine.instance_start(
        workflow=WORKFLOW,
        input={"amount": 250, "currency": "EUR", "description": "Bench item", "requester": "alice"},
        business_key="BENCH-TEMPLATE",
        started_by=alice,
        actor="bench",
    )
    first = StepRun.objects.get(instance=instance, state="scheduled")
    engine.step_execute(step_run_id=first.pk, attempt=first.attempt)
    request = ApprovalRequest.objects.get(instance=instance)
    if request.step_name != STEP or request.next_escalation_at is None:
        raise SystemExit(f"template request is not the escalating {STEP}: {request!r}")
    return request


def clone(
    table: str, overrides: dict[str, str], template_where: str, layout_where: str = "TRUE"
) -> int:
    """``INSERT INTO table`` one copy of each template row (``tpl_<table>``) per layout row
    (``l``), every column copied unless overridden; ``id`` is left to its default unless set.
    Timestamps not overridden are shifted by ``l.shift``."""
    columns = columns_of(table)
    types = dict(
        sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = %s",
            [table],
        )
    )
    names, values = [], []
    for column in columns:
        if column in overrides:
            expression = overrides[column]
        elif column == "id":
            continue
        elif types[column] == "timestamp with time zone":
            expression = f"t.{column} + l.shift"
        else:
            expression = f"t.{column}"
        names.append(f'"{column}"')
        values.append(expression)
    rows = sql(
        f"WITH ins AS (INSERT INTO {table} ({', '.join(names)}) "
        f"SELECT {', '.join(values)} FROM tpl_{table} AS t CROSS JOIN {ROWS_TABLE} AS l "
        f"WHERE ({template_where}) AND ({layout_where}) RETURNING 1) SELECT count(*) FROM ins"
    )
    return rows[0][0]


def seed() -> dict[str, Any]:
    """Empty the workflow, approval and outbox tables and write the layout (module doc)."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    began = time.monotonic()
    log("seed_demo (users and groups)")
    manage("seed_demo")
    present = {r[0] for r in sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    sql(
        f"TRUNCATE {', '.join(t for t in TABLES if t in present)} RESTART IDENTITY CASCADE;"
        f"DROP TABLE IF EXISTS {SEED_TABLE}; DROP TABLE IF EXISTS {ROWS_TABLE}"
    )
    broker_purge()  # seed_demo's doorbells
    template = make_template()
    broker_purge()
    steps = sql(
        "SELECT name, position FROM orchestration_steprun WHERE instance_id = %s ORDER BY position",
        [template.instance_id],
    )
    per_instance = len(steps)
    position = dict(steps)
    events = sql(
        "SELECT count(*) FROM orchestration_event WHERE instance_id = %s", [template.instance_id]
    )[0][0]
    admin_id = get_user_model().objects.get(username=ESCALATED_TO).pk
    n, overdue, future = LAYOUT["requests"], LAYOUT["overdue"], LAYOUT["future"]
    log(
        f"template: instance {template.instance_id}, {per_instance} step runs, {events} events; "
        f"cloning {n:,}"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # Rows are consistent by construction; skip the per-row foreign key triggers.
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for table in TABLES:
            key = "id" if table == "orchestration_workflowinstance" else "instance_id"
            if table == "approvals_approvalrequest_assignee_users":
                where = f"approvalrequest_id = {template.pk}"
            elif table == "approvals_approvalrequest_assignee_groups":
                where = f"approvalrequest_id = {template.pk}"
            elif table == "approvals_actiontoken":
                where = f"request_id = {template.pk}"
            else:
                where = f"{key} = '{template.instance_id}'"
            cursor.execute(
                f"CREATE TEMP TABLE tpl_{table} ON COMMIT DROP AS "
                f"SELECT * FROM {table} WHERE {where}"
            )
        # Foreign key triggers are off: remove the template's rows table by table.
        for table in TABLES:
            cursor.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM tpl_{table})")
        # g = 1..n: overdue first, then future, then resolved. ``shift`` moves every template
        # time to the clone's creation.
        cursor.execute(
            f"""
            CREATE TABLE {ROWS_TABLE} AS
            SELECT g,
                   CASE WHEN g <= %(overdue)s THEN 'overdue'
                        WHEN g <= %(overdue)s + %(future)s THEN 'future'
                        ELSE 'resolved' END AS cls,
                   md5('bench-sweep-' || g)::uuid AS instance_id,
                   abs(hashtext('s' || g)) %% 100 < %(approved)s AS approved,
                   created_at,
                   created_at - %(tpl_created)s AS shift
            FROM (
                SELECT g,
                       CASE WHEN g <= %(overdue)s
                            THEN now() - interval '2 days' - g * interval '4 seconds'
                            WHEN g <= %(overdue)s + %(future)s
                            THEN now() - interval '47 hours' + (g - %(overdue)s)
                                 * interval '3 seconds'
                            ELSE now() - interval '366 days' + g * interval '150 seconds'
                       END AS created_at
                FROM generate_series(1, %(n)s) AS g
            ) AS base
            """,
            {
                "n": n,
                "overdue": overdue,
                "future": future,
                "approved": LAYOUT["approved_percent"],
                "tpl_created": template.created_at,
            },
        )
        cursor.execute(f"ALTER TABLE {ROWS_TABLE} ADD PRIMARY KEY (g)")
        resolved = "l.cls = 'resolved'"
        step_id = f"(l.g - 1) * {per_instance} + t.position + 1"
        request_step_id = f"(l.g - 1) * {per_instance} + {position[STEP] + 1}"
        log("instances")
        clone(
            "orchestration_workflowinstance",
            {
                "id": "l.instance_id",
                "business_key": "'BENCH-' || lpad(l.g::text, 7, '0')",
                "state": f"CASE WHEN {resolved} THEN CASE WHEN l.approved THEN 'succeeded' "
                "ELSE 'failed' END ELSE t.state END",
                "finished_at": f"CASE WHEN {resolved} THEN l.created_at + interval '1 day' END",
                "updated_at": f"CASE WHEN {resolved} THEN l.created_at + interval '1 day' "
                "ELSE t.updated_at + l.shift END",
            },
            "TRUE",
        )
        log("step runs")
        later = f"t.position > {position[STEP]}"
        clone(
            "orchestration_steprun",
            {
                "id": step_id,
                "instance_id": "l.instance_id",
                "state": f"CASE WHEN NOT {resolved} THEN t.state "
                f"WHEN t.name = '{STEP}' THEN CASE WHEN l.approved THEN 'succeeded' "
                "ELSE 'failed' END "
                f"WHEN {later} THEN CASE WHEN l.approved THEN 'succeeded' "
                "ELSE 'cancelled' END ELSE t.state END",
                "finished_at": f"CASE WHEN {resolved} AND (t.name = '{STEP}' OR {later}) "
                "THEN l.created_at + interval '1 day' ELSE t.finished_at + l.shift END",
            },
            "TRUE",
        )
        log("events")
        clone("orchestration_event", {"instance_id": "l.instance_id"}, "TRUE")
        log("approval requests")
        # Pending: reminders every day until due (3 days) were sent; the next one, if any.
        age_days = "floor(extract(epoch FROM now() - l.created_at) / 86400)"
        clone(
            "approvals_approvalrequest",
            {
                "id": "l.g",
                "step_run_id": request_step_id,
                "instance_id": "l.instance_id",
                "business_key": "'BENCH-' || lpad(l.g::text, 7, '0')",
                "state": f"CASE WHEN {resolved} THEN CASE WHEN l.approved THEN 'approved' "
                "ELSE 'rejected' END ELSE 'pending' END",
                "resolved_at": f"CASE WHEN {resolved} THEN l.created_at + interval '1 day' END",
                "reminders_sent": f"CASE WHEN {resolved} THEN 0 ELSE {age_days} END",
                "last_reminded_at": f"CASE WHEN {resolved} OR {age_days} = 0 THEN NULL "
                f"ELSE l.created_at + {age_days} * interval '1 day' END",
                "next_reminder_at": f"CASE WHEN {resolved} OR {age_days} >= 2 THEN NULL "
                f"ELSE l.created_at + ({age_days} + 1) * interval '1 day' END",
                "next_escalation_at": f"CASE WHEN {resolved} THEN NULL "
                "ELSE t.next_escalation_at + l.shift END",
            },
            "TRUE",
        )
        log("assignees, tokens, mails")
        for table in (
            "approvals_approvalrequest_assignee_users",
            "approvals_approvalrequest_assignee_groups",
        ):
            clone(table, {"approvalrequest_id": "l.g"}, "TRUE")
        clone(
            "approvals_actiontoken",
            {
                "request_id": "l.g",
                "token_hash": "encode(sha256(convert_to(t.token_hash || l.g, 'UTF8')), 'hex')",
                "used_at": f"CASE WHEN {resolved} THEN l.created_at + interval '1 day' END",
            },
            "TRUE",
        )
        clone(
            "integrations_outboundemail",
            {
                "message_id": f"replace(t.message_id, '.{template.pk}.', '.' || l.g || '.')",
                "request_id": "l.g",
                "instance_id": "l.instance_id",
                "status": "'sent'",
                "sent_at": "t.created_at + l.shift + interval '5 seconds'",
            },
            "TRUE",
        )
        # Explicit ids: move the sequences past them.
        for table in ("orchestration_steprun", "approvals_approvalrequest"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        cursor.execute(f"CREATE TABLE {SEED_TABLE} (layout jsonb NOT NULL, info jsonb NOT NULL)")
        info = {
            "events_per_instance": events,
            "steps_per_instance": per_instance,
            "admin_id": admin_id,
            "anchor": None,
        }
        cursor.execute(
            f"INSERT INTO {SEED_TABLE} VALUES (%s::jsonb, %s::jsonb)",
            [json.dumps(LAYOUT), json.dumps(info)],
        )
        # The clones' times were computed from now(); the reset re-anchors from here.
        cursor.execute(
            f"UPDATE {SEED_TABLE} SET info = info || jsonb_build_object('anchor', now())"
        )
    vacuum()
    return {"seconds": round(time.monotonic() - began, 1), "template_events": events}


def vacuum(tables: list[str] | None = None) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables or [*TABLES, ROWS_TABLE]:
            cursor.execute(f"VACUUM ANALYZE {table}")


def seed_info() -> dict[str, Any]:
    value = sql(f"SELECT info FROM {SEED_TABLE}")[0][0]
    return value if isinstance(value, dict) else json.loads(value)


def reset() -> dict[str, Any]:
    """Put the pending requests back as seeded, timers re-anchored to now: undo what a previous
    sweep (or the prototype) did. Returns what it removed."""
    from django.db import transaction

    info = seed_info()
    began = time.monotonic()
    removed: dict[str, int] = {}
    with transaction.atomic():
        removed["events"] = len(
            sql("DELETE FROM orchestration_event WHERE type = 'approval_escalated' RETURNING 1")
        )
        removed["tokens"] = len(
            sql("DELETE FROM approvals_actiontoken WHERE purpose = 'escalated' RETURNING 1")
        )
        removed["mails"] = len(
            sql(
                "DELETE FROM integrations_outboundemail WHERE kind = 'approval_escalated' "
                "RETURNING 1"
            )
        )
        removed["assignments"] = len(
            sql(
                "DELETE FROM approvals_approvalrequest_assignee_users WHERE user_id = %s "
                "RETURNING 1",
                [info["admin_id"]],
            )
        )
        sql(
            "UPDATE orchestration_workflowinstance SET last_seq = %s WHERE last_seq <> %s",
            [info["events_per_instance"]] * 2,
        )
        # Every pending request (and its instance) moves by the time since the anchor, so the
        # overdue ones are overdue by the same amount each run and the others stay ahead.
        removed["reanchored"] = len(
            sql(
                f"""
                UPDATE approvals_approvalrequest AS r
                SET created_at = r.created_at + s.shift,
                    due_at = r.due_at + s.shift,
                    last_reminded_at = r.last_reminded_at + s.shift,
                    next_reminder_at = r.next_reminder_at + s.shift,
                    next_escalation_at = r.created_at + s.shift + interval '2 days',
                    level = 0
                FROM (SELECT now() - (info->>'anchor')::timestamptz AS shift
                      FROM {SEED_TABLE}) AS s
                WHERE r.state = 'pending'
                RETURNING 1
                """
            )
        )
        sql(f"UPDATE {SEED_TABLE} SET info = info || jsonb_build_object('anchor', now())")
    # The requests table only: its 50,000 updated rows would leave dead entries in the
    # partial indexes the sweepers read (the other tables lost at most 10,000 rows of millions).
    vacuum(["approvals_approvalrequest", "approvals_approvalrequest_assignee_users"])
    removed["broker_messages"] = broker_purge()
    removed["seconds"] = round(time.monotonic() - began, 1)
    return removed


def counts() -> dict[str, int]:
    rows = sql(
        """
        SELECT count(*),
               count(*) FILTER (WHERE state = 'pending'),
               count(*) FILTER (WHERE state = 'pending' AND next_escalation_at <= now()),
               count(*) FILTER (WHERE state = 'pending' AND next_escalation_at > now())
        FROM approvals_approvalrequest
        """
    )[0]
    return {
        "requests": rows[0],
        "pending": rows[1],
        "escalation_due": rows[2],
        "escalation_later": rows[3],
        "instances": sql("SELECT count(*) FROM orchestration_workflowinstance")[0][0],
        "step_runs": sql("SELECT count(*) FROM orchestration_steprun")[0][0],
        "events": sql("SELECT count(*) FROM orchestration_event")[0][0],
    }


# -- query capture and EXPLAIN ------------------------------------------------------------------


@contextmanager
def captured(into: list[tuple[str, Any]]) -> Iterator[None]:
    """Every statement this connection runs, with its parameters."""
    from django.db import connection

    def wrapper(execute: Any, statement: str, params: Any, many: bool, context: Any) -> Any:
        into.append((statement, params))
        return execute(statement, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield


def due_queries(sweep: Callable[..., int]) -> list[tuple[str, Any]]:
    """The SELECTs a sweeper runs to find due rows, captured from a run that finds none (its
    ``now`` far in the past, so nothing else runs)."""
    queries: list[tuple[str, Any]] = []
    with captured(queries):
        sweep(now=datetime(2000, 1, 1, tzinfo=UTC), batch=LAYOUT["overdue"])
    return [(q, p) for q, p in queries if q.lstrip().upper().startswith("SELECT")]


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def explain(name: str, statement: str, params: Any, now: datetime) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of a captured statement, its past timestamps replaced by
    ``now`` (the doorbell sweeper's grace is kept: it compares with ``now - grace``)."""
    from django.db import connection

    moved = []
    for value in params or ():
        if isinstance(value, datetime) and value.year < 2001:
            value = now - (datetime(2000, 1, 1, tzinfo=UTC) - value)
        moved.append(value)
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", moved)
        document = cursor.fetchone()[0]
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {statement}", moved)
        text = [row[0] for row in cursor.fetchall()]
    if isinstance(document, str):
        document = json.loads(document)
    top = document[0]
    scans = []
    examined = 0
    for node in _walk(top["Plan"]):
        if "Scan" not in node["Node Type"]:
            continue
        loops = node.get("Actual Loops", 1)
        returned = node.get("Actual Rows", 0) * loops
        removed = (
            node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
        ) * loops
        examined += returned + removed
        scans.append(
            {
                "node": node["Node Type"],
                "relation": node.get("Relation Name"),
                "index": node.get("Index Name"),
                "rows": returned,
                "removed_by_filter": removed,
                "heap_fetches": node.get("Heap Fetches"),
            }
        )
    plan = top["Plan"]
    return {
        "name": name,
        "rows_returned": plan.get("Actual Rows", 0),
        "rows_examined": examined,
        "scans": scans,
        "indexes": sorted({s["index"] for s in scans if s["index"]}),
        "seq_scans": sorted({s["relation"] for s in scans if s["node"] == "Seq Scan"}),
        "buffers_hit": plan.get("Shared Hit Blocks", 0),
        "buffers_read": plan.get("Shared Read Blocks", 0),
        "execution_ms": round(top.get("Execution Time", 0.0), 3),
        "planning_ms": round(top.get("Planning Time", 0.0), 3),
        "plan": text,
    }


def explain_sweeper(name: str, sweep: Callable[..., int]) -> list[dict[str, Any]]:
    from django.utils import timezone

    now = timezone.now()
    return [
        explain(f"{name}[{i}]", statement, params, now)
        for i, (statement, params) in enumerate(due_queries(sweep))
    ]


def escalation_index() -> dict[str, Any]:
    rows = sql(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'approvals_approvalrequest'"
    )
    on_column = {name: d for name, d in rows if "next_escalation_at" in d}
    return {
        "model_index": INDEX_NAME,
        "present": INDEX_NAME in on_column,
        "indexes_on_next_escalation_at": on_column,
    }


# -- timing -------------------------------------------------------------------------------------


class FailureCounter:
    """Counts the rows a sweeper logged as failed (it logs and goes on)."""

    def __init__(self) -> None:
        import logging

        self.records: list[str] = []
        self.handler = logging.Handler(level=logging.ERROR)
        self.handler.emit = lambda record: self.records.append(record.getMessage())  # type: ignore[method-assign]
        self.logger = logging.getLogger("signoff.sweepers")

    def __enter__(self) -> FailureCounter:
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)


def repeat(fn: Callable[[], Any], runs: int = EMPTY_RUNS) -> dict[str, Any]:
    times, results = [], []
    for _ in range(runs):
        began = time.perf_counter()
        results.append(fn())
        times.append((time.perf_counter() - began) * 1000)
    return {
        "runs": runs,
        "p50_ms": round(pct(times, 50), 2),
        "p90_ms": round(pct(times, 90), 2),
        "min_ms": round(min(times), 2),
        "max_ms": round(max(times), 2),
        "acted_on": sorted(set(results)),
    }


def outcome(started: datetime, info: dict[str, Any]) -> dict[str, Any]:
    """What the escalation left in the database, and when (seconds after ``started``)."""
    row = sql(
        """
        SELECT count(*) FILTER (WHERE level = 1 AND next_escalation_at IS NULL),
               count(*) FILTER (WHERE state = 'pending' AND next_escalation_at <= now())
        FROM approvals_approvalrequest WHERE state = 'pending'
        """
    )[0]
    events = sql(
        """
        SELECT count(*), count(DISTINCT instance_id),
               extract(epoch FROM min(at) - %(s)s), extract(epoch FROM max(at) - %(s)s),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM at - %(s)s))
        FROM orchestration_event WHERE type = 'approval_escalated'
        """,
        {"s": started},
    )[0]
    mails = sql(
        """
        SELECT count(*), count(*) FILTER (WHERE status = 'queued' AND subject <> ''),
               extract(epoch FROM max(created_at) - %(s)s)
        FROM integrations_outboundemail WHERE kind = 'approval_escalated'
        """,
        {"s": started},
    )[0]
    gaps = sql(
        """
        SELECT count(*) FROM orchestration_workflowinstance i
        WHERE i.last_seq <> (SELECT max(seq) FROM orchestration_event e WHERE e.instance_id = i.id)
          AND i.id IN (SELECT instance_id FROM orchestration_event
                       WHERE type = 'approval_escalated')
        """
    )[0][0]
    queues = broker_queues()
    from django.conf import settings

    return {
        "requests_escalated": row[0],
        "still_due": row[1],
        "events": events[0],
        "instances_with_event": events[1],
        "instances_last_seq_mismatch": gaps,
        "first_event_at_s": _round(events[2]),
        "median_event_at_s": _round(events[4]),
        "last_event_at_s": _round(events[3]),
        "outbox_rows": mails[0],
        "outbox_rows_rendered_and_queued": mails[1],
        "last_outbox_row_at_s": _round(mails[2]),
        "tokens": sql("SELECT count(*) FROM approvals_actiontoken WHERE purpose = 'escalated'")[0][
            0
        ],
        "admin_assignments": sql(
            "SELECT count(*) FROM approvals_approvalrequest_assignee_users WHERE user_id = %s",
            [info["admin_id"]],
        )[0][0],
        "broker_messages": queues.get(settings.CELERY_TASK_DEFAULT_QUEUE, 0),
    }


def _round(value: Any, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def sample(request_id: int) -> dict[str, Any]:
    """One escalated request as the sweep left it (the link's token masked), to compare the
    prototype's output with the sweeper's."""
    import re

    event = sql(
        "SELECT e.seq, e.step, e.attempt, e.actor, e.data FROM orchestration_event e "
        "JOIN approvals_approvalrequest r ON r.instance_id = e.instance_id "
        "WHERE r.id = %s AND e.type = 'approval_escalated'",
        [request_id],
    )
    mail = sql(
        'SELECT message_id, kind, "to", subject, body_text, body_html, status '
        "FROM integrations_outboundemail WHERE request_id = %s AND kind = 'approval_escalated'",
        [request_id],
    )
    request = sql(
        "SELECT level, next_escalation_at FROM approvals_approvalrequest WHERE id = %s",
        [request_id],
    )

    def mask(value: Any) -> Any:
        # The link's token is random; the due time moves with each run's re-anchoring.
        if isinstance(value, str):
            value = re.sub(r"/a/[^/\s\"'<]+/", "/a/<token>/", value)
            return re.sub(r"Due [^\n<]*", "Due <time>", value)
        return value

    return {
        "request": [list(r) for r in request],
        "event": [[_jsonish(v) for v in r] for r in event],
        "mail": [[mask(_jsonish(v)) for v in r] for r in mail],
    }


def _jsonish(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value[:1] in "[{" else value
        except ValueError:
            return value
    return value


class CpuClock:
    """CPU seconds used by this process and by its PostgreSQL backend (read from /proc: the
    server runs on this machine). Under load, wall time minus both is time spent waiting for a
    core, for the WAL flush at COMMIT, or for Redis."""

    def __init__(self) -> None:
        self.backend = sql("SELECT pg_backend_pid()")[0][0]
        self.tick = os.sysconf("SC_CLK_TCK")

    def server(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.backend}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def read(self) -> tuple[float, float | None]:
        return time.process_time(), self.server()


def measure_escalation(info: dict[str, Any], rows: int) -> dict[str, Any]:
    """The timed per-row sweep over ``rows`` of the 10,000 due rows (all of them by default)."""
    from django.utils import timezone

    from approvals.sweepers import sweep_escalations

    clock = CpuClock()
    load = loadavg()
    with FailureCounter() as failures:
        started = timezone.now()
        client0, server0 = clock.read()
        began = time.perf_counter()
        done = sweep_escalations(batch=rows)
        elapsed = time.perf_counter() - began
        client1, server1 = clock.read()
    per = max(done, 1)
    client_ms = (client1 - client0) * 1000 / per
    server_ms = None if server0 is None or server1 is None else (server1 - server0) * 1000 / per
    result = {
        "rows": rows,
        "acted_on": done,
        "seconds": round(elapsed, 3),
        "per_row_ms": round(elapsed * 1000 / per, 3),
        "cpu_per_row_ms": {
            "python": round(client_ms, 3),
            "postgres_backend": None if server_ms is None else round(server_ms, 3),
            "waiting": None
            if server_ms is None
            else round(elapsed * 1000 / per - client_ms - server_ms, 3),
        },
        "failed_rows": len(failures.records),
        "failures": failures.records[:5],
        "load_before": load,
        "load_after": loadavg(),
    }
    if done < LAYOUT["overdue"]:
        result["extrapolated_10k_s"] = round(elapsed * LAYOUT["overdue"] / per, 1)
        # On two idle cores the sweep would take about its CPU time (PostgreSQL and Python
        # alternate, one statement at a time) plus the COMMITs' WAL flushes.
    result["outcome"] = outcome(started, info)
    return result


def clear_due() -> int:
    """Move the escalations still due a day ahead (for the empty sweeps)."""
    return len(
        sql(
            "UPDATE approvals_approvalrequest SET next_escalation_at = now() + interval '1 day' "
            "WHERE state = 'pending' AND next_escalation_at <= now() RETURNING 1"
        )
    )


# -- profile of the per-row sweep ---------------------------------------------------------------


def _statement_kind(statement: str) -> str:
    """``SELECT approvals_approvalrequest`` and the like: verb and first table."""
    import re

    words = statement.lstrip(" (\n").split()
    verb = words[0].upper() if words else "?"
    pattern = {
        "SELECT": r'\bFROM\s+"?(\w+)"?',
        "INSERT": r'\bINTO\s+"?(\w+)"?',
        "UPDATE": r'^UPDATE\s+"?(\w+)"?',
        "DELETE": r'\bFROM\s+"?(\w+)"?',
    }.get(verb)
    found = re.search(pattern, statement, re.IGNORECASE) if pattern else None
    suffix = " FOR UPDATE" if verb == "SELECT" and "FOR UPDATE" in statement.upper() else ""
    return f"{verb} {found.group(1) if found else '?'}{suffix}"


@contextmanager
def timed_calls(owner: Any, name: str, into: list[float]) -> Iterator[None]:
    """Time every call of ``owner.name`` (a module function or an instance method)."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - began)

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if isinstance(owner, type) or hasattr(owner, "__file__"):
            setattr(owner, name, original)
        else:
            delattr(owner, name)  # the instance attribute hid the class's method


def profile_per_row(rows: int) -> dict[str, Any]:
    """The per-row sweep over ``rows`` due requests: where the time goes per row."""
    from django.db import connection

    from approvals.sweepers import sweep_escalations
    from integrations import mail

    statements: dict[str, list[float]] = defaultdict(list)

    def wrapper(execute: Any, statement: str, params: Any, many: bool, context: Any) -> Any:
        began = time.perf_counter()
        try:
            return execute(statement, params, many, context)
        finally:
            statements[_statement_kind(statement)].append(time.perf_counter() - began)

    render: list[float] = []
    publish: list[float] = []
    commits: list[float] = []
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None  # noqa: N806
    profiler = Profiler(interval=0.0005) if Profiler else None
    with (
        connection.execute_wrapper(wrapper),
        timed_calls(mail, "render_to_string", render),
        timed_calls(mail, "_enqueue", publish),
        timed_calls(connection, "_commit", commits),
    ):
        if profiler:
            profiler.start()
        began = time.perf_counter()
        done = sweep_escalations(batch=rows)
        elapsed = time.perf_counter() - began
        if profiler:
            profiler.stop()
    per = max(done, 1)
    sql_total = sum(sum(v) for v in statements.values())
    parts = {
        "sql_round_trips": sql_total,
        "commit": sum(commits),
        "template_rendering": sum(render),
        "broker_publish": sum(publish),
    }
    parts["python_other"] = elapsed - sum(parts.values())
    result: dict[str, Any] = {
        "rows": done,
        "seconds": round(elapsed, 3),
        "per_row_ms": round(elapsed * 1000 / per, 3),
        "statements_per_row": round(sum(len(v) for v in statements.values()) / per, 2),
        "breakdown_per_row_ms": {k: round(v * 1000 / per, 3) for k, v in parts.items()},
        "statements": sorted(
            (
                {
                    "kind": kind,
                    "per_row": round(len(times) / per, 2),
                    "ms_per_row": round(sum(times) * 1000 / per, 3),
                    "mean_ms": round(statistics.fmean(times) * 1000, 3),
                }
                for kind, times in statements.items()
            ),
            key=lambda s: -s["ms_per_row"],
        ),
        "renders_per_row": round(len(render) / per, 2),
        "note": "timers and the profiler slow the run; compare shares, not the total",
    }
    if profiler:
        tree = profiler.output_text(
            unicode=False, color=False, processor_options={"filter_threshold": 0.02}
        )
        flat = profiler.output_text(unicode=False, color=False, flat=True)
        result["pyinstrument_tree"] = tree.splitlines()
        result["pyinstrument_flat_top"] = [line for line in flat.splitlines() if line.strip()][:40]
    else:
        result["pyinstrument_tree"] = ["pyinstrument not installed: pip install pyinstrument"]
    return result


# -- batched prototype --------------------------------------------------------------------------

PROTOTYPE_CHUNK = 2_000
RENDER_CHUNK = 500
RENDERING = "rendering"  # an outbox row whose mail is still to be rendered (proposed status)


# One statement per chunk and escalation level: the data-modifying CTEs all see the rows as
# they were before it (so ``newcomers`` compares with the assignees before this level).
ESCALATE_SQL = """
WITH due AS (
    SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(next)s::timestamptz[]) AS next
), req AS (
    UPDATE approvals_approvalrequest r
    SET level = r.level + 1, next_escalation_at = due.next
    FROM due WHERE r.id = due.id
    RETURNING r.id, r.instance_id, r.step_run_id, r.requester_id, r.allow_self_approval
), newcomers AS (
    SELECT req.id AS request_id, req.instance_id, u.id AS user_id, u.email
    FROM req CROSS JOIN auth_user u
    WHERE u.is_active AND u.email <> ''
      AND (u.id = ANY(%(users)s::int[]) OR u.id IN (
           SELECT user_id FROM auth_user_groups WHERE group_id = ANY(%(groups)s::int[])))
      AND (u.id IS DISTINCT FROM req.requester_id OR req.allow_self_approval)
      AND NOT EXISTS (
          SELECT 1 FROM approvals_approvalrequest_assignee_users au
          WHERE au.approvalrequest_id = req.id AND au.user_id = u.id)
      AND NOT EXISTS (
          SELECT 1 FROM approvals_approvalrequest_assignee_groups ag
          JOIN auth_user_groups ug ON ug.group_id = ag.group_id
          WHERE ag.approvalrequest_id = req.id AND ug.user_id = u.id)
), add_users AS (
    INSERT INTO approvals_approvalrequest_assignee_users (approvalrequest_id, user_id)
    SELECT req.id, u FROM req CROSS JOIN unnest(%(users)s::int[]) AS u
    ON CONFLICT DO NOTHING RETURNING 1
), add_groups AS (
    INSERT INTO approvals_approvalrequest_assignee_groups (approvalrequest_id, group_id)
    SELECT req.id, g FROM req CROSS JOIN unnest(%(groups)s::int[]) AS g
    ON CONFLICT DO NOTHING RETURNING 1
), inst AS (
    UPDATE orchestration_workflowinstance i
    SET last_seq = i.last_seq + 1, updated_at = %(now)s
    FROM req WHERE i.id = req.instance_id
    RETURNING i.id, i.last_seq
), events AS (
    INSERT INTO orchestration_event (instance_id, seq, type, step, attempt, actor, data, at)
    SELECT inst.id, inst.last_seq, 'approval_escalated', s.name, NULLIF(s.attempt, 0),
           'sweeper', %(data)s::jsonb, %(now)s
    FROM inst JOIN req ON req.instance_id = inst.id
    JOIN orchestration_steprun s ON s.id = req.step_run_id
    RETURNING id, instance_id, seq, step, attempt
), mails AS (
    INSERT INTO integrations_outboundemail (message_id, kind, "to", subject, body_text,
        body_html, status, attempts, last_error, created_at, instance_id, request_id)
    SELECT format('<signoff.escalated.%%s.%%s.%%s@%%s>', n.request_id, n.user_id, %(level)s,
                  %(domain)s::text),
           'approval_escalated', jsonb_build_array(n.email), '', '', '', %(rendering)s, 0, '',
           %(now)s, n.instance_id, n.request_id
    FROM newcomers n
    ON CONFLICT (message_id) DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM req), (SELECT count(*) FROM mails),
       (SELECT count(*) FROM add_users) + (SELECT count(*) FROM add_groups),
       (SELECT coalesce(json_agg(json_build_array(id, instance_id, seq, step, attempt)), '[]')
        FROM events)
"""


def prototype_escalate_state(now: datetime, batch: int, chunk: int) -> dict[str, Any]:
    """Phase 1 of the proposed batched escalation. Per chunk, one transaction of two
    statements: the first locks the due requests and their instances (``SKIP LOCKED``: a row
    another sweep or a decision holds is left for the next run; the WHERE clause is re-checked
    on the locked rows), the second (``ESCALATE_SQL``, per escalation level present) moves
    ``level`` / ``next_escalation_at``, adds the assignees, bumps ``last_seq`` and writes one
    event per request, and one outbox row per newcomer whose mail phase 2 renders. Levels with
    an assignees function or ``replace`` are left to the per-row sweeper."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import transaction

    from approvals import notifications
    from approvals.definitions import ApprovalStep
    from approvals.services import timer_at
    from orchestration.definitions import registry
    from orchestration.journal import _announce
    from orchestration.models import Event, WorkflowInstance

    User = get_user_model()  # noqa: N806
    domain = notifications._domain()
    done, per_row, commits, statements, mails = 0, [], [], 0, 0
    announce: list[Event] = []
    while done < batch:
        with transaction.atomic():
            # Short statements over a few thousand rows: JIT compilation costs more than it
            # saves (the planner's row estimates for the unnest() arrays set it off).
            sql("SET LOCAL jit = off")
            rows = sql(
                """
                SELECT r.id, r.instance_id, r.level, r.created_at, i.workflow, i.version,
                       r.step_name
                FROM approvals_approvalrequest r
                JOIN orchestration_workflowinstance i ON i.id = r.instance_id
                WHERE r.state = 'pending' AND r.next_escalation_at <= %s
                ORDER BY r.next_escalation_at
                LIMIT %s
                FOR UPDATE OF r, i SKIP LOCKED
                """,
                [now, min(chunk, batch - done)],
            )
            statements += 1
            if not rows:
                break
            groups: dict[tuple[str, int, str, int], list[tuple[Any, ...]]] = defaultdict(list)
            for row in rows:
                groups[(row[4], row[5], row[6], row[2])].append(row)
            for (workflow, version, step_name, level_no), members in groups.items():
                definition = registry.get(workflow, version)
                spec = definition.steps.get(step_name) if definition else None
                ids = [r[0] for r in members]
                if not isinstance(spec, ApprovalStep) or level_no >= len(spec.escalate):
                    sql(
                        "UPDATE approvals_approvalrequest SET next_escalation_at = NULL "
                        "WHERE id = ANY(%s)",
                        [ids],
                    )
                    statements += 1
                    continue
                level = spec.escalate[level_no]
                if level.assignees is not None or level.replace:
                    per_row.extend((r[0], r[1]) for r in members)
                    continue
                users = list(User.objects.filter(username__in=level.users, is_active=True))
                group_objs = list(Group.objects.filter(name__in=level.groups))
                after = level_no + 1
                data = {
                    "level": after,
                    "users": [u.username for u in users],
                    "groups": [g.name for g in group_objs],
                    "replace": False,
                    "removed": [],
                }
                following = (
                    [timer_at(spec, r[3], spec.escalate[after].after) for r in members]
                    if after < len(spec.escalate)
                    else [None] * len(members)
                )
                changed, queued, _, written = sql(
                    ESCALATE_SQL,
                    {
                        "ids": ids,
                        "next": following,
                        "users": [u.pk for u in users],
                        "groups": [g.pk for g in group_objs],
                        "now": now,
                        "data": json.dumps(data),
                        "level": after,
                        "domain": domain,
                        "rendering": RENDERING,
                    },
                )[0]
                statements += 3
                mails += queued
                written = json.loads(written) if isinstance(written, str) else written
                announce += [
                    Event(
                        id=pk,
                        instance_id=uuid.UUID(instance_id),
                        seq=seq,
                        type="approval_escalated",
                        step=step,
                        attempt=attempt,
                        actor="sweeper",
                        data=data,
                        at=now,
                    )
                    for pk, instance_id, seq, step, attempt in written
                ]
            transaction.on_commit(lambda: commits.append(time.perf_counter()))
            done += len(rows)
    state_end = time.perf_counter()
    # The engine's after-commit announcement (webhook deliveries), once the state is in.
    instances = WorkflowInstance.objects.in_bulk({e.instance_id for e in announce})
    for event in announce:
        event.instance = instances[event.instance_id]
    _announce(announce)
    return {
        "announce_s": round(time.perf_counter() - state_end, 3),
        "rows": done,
        "mails": mails,
        "per_row_fallback": per_row,
        "last_commit": commits[-1] if commits else state_end,
        "statements": statements,
    }


def prototype_render(chunk: int) -> dict[str, Any]:
    """Phase 2: render the mails phase 1 wrote (one action token each), mark them queued and
    send their tasks in one broker connection per chunk."""
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.template.loader import render_to_string
    from django.utils import timezone

    from approvals import notifications
    from approvals.models import ActionToken, ApprovalRequest
    from integrations.models import OutboundEmail
    from integrations.tasks import send_email

    User = get_user_model()  # noqa: N806
    rendered, render_s, publish_s = 0, 0.0, 0.0
    max_age = timedelta(seconds=notifications.settings.SIGNOFF_LINK_MAX_AGE_SECONDS)
    signer = notifications.signing.TimestampSigner(salt=notifications.LINK_SALT)
    while True:
        with transaction.atomic():
            mails = list(
                OutboundEmail.objects.select_for_update(skip_locked=True)
                .filter(status=RENDERING)
                .order_by("id")[:chunk]
            )
            if not mails:
                break
            requests = ApprovalRequest.objects.select_related("requester").in_bulk(
                {m.request_id for m in mails}
            )
            # <signoff.escalated.{request}.{user}.{level}@domain>: the proposal stores the
            # user and the template context in the row instead.
            keys = [m.message_id[1:].split("@")[0].split(".") for m in mails]
            users = User.objects.in_bulk({int(k[3]) for k in keys})
            now = timezone.now()
            tokens = []
            began = time.perf_counter()
            for mail_row, key in zip(mails, keys, strict=True):
                request, user, level = requests[mail_row.request_id], users[int(key[3])], key[4]
                raw = notifications.secrets.token_urlsafe(32)
                tokens.append(
                    ActionToken(
                        request=request,
                        user=user,
                        token_hash=notifications._hash(raw),
                        purpose="escalated",
                        created_at=now,
                        expires_at=now + max_age,
                    )
                )
                context = notifications._context(
                    request,
                    user=user,
                    link=notifications.link_url(signer.sign(raw)),
                    level=int(level),
                )
                text = render_to_string("email/approval_escalated.txt", context).lstrip()
                subject, _, body = text.partition("\n")
                mail_row.subject = subject.removeprefix("Subject:").strip()[:300]
                mail_row.body_text = body.strip() + "\n"
                mail_row.body_html = render_to_string("email/approval_escalated.html", context)
            render_s += time.perf_counter() - began
            ActionToken.objects.bulk_create(tokens)
            # bulk_update's CASE WHEN per column grows with the square of the chunk.
            sql(
                "UPDATE integrations_outboundemail m SET subject = v.subject, "
                "body_text = v.body_text, body_html = v.body_html, status = %s "
                "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) "
                "AS v(id, subject, body_text, body_html) WHERE m.id = v.id",
                [
                    OutboundEmail.Status.QUEUED,
                    [m.pk for m in mails],
                    [m.subject for m in mails],
                    [m.body_text for m in mails],
                    [m.body_html for m in mails],
                ],
            )
            ids = [m.pk for m in mails]

            def publish(ids: list[int] = ids) -> None:
                nonlocal publish_s
                began = time.perf_counter()
                with send_email.app.producer_or_acquire() as producer:
                    for pk in ids:
                        send_email.apply_async((pk,), producer=producer)
                publish_s += time.perf_counter() - began

            transaction.on_commit(publish)
            rendered += len(mails)
    return {"mails": rendered, "render_s": round(render_s, 3), "publish_s": round(publish_s, 3)}


def measure_prototype(info: dict[str, Any]) -> dict[str, Any]:
    from django.utils import timezone

    from approvals.sweepers import sweep_escalations
    from integrations.tasks import send_email

    clock = CpuClock()
    load = loadavg()
    started = timezone.now()
    cpu0 = clock.read()
    began = time.perf_counter()
    state = prototype_escalate_state(started, LAYOUT["overdue"], PROTOTYPE_CHUNK)
    phase1_end = time.perf_counter()
    cpu1 = clock.read()
    fallback = 0
    if state["per_row_fallback"]:
        # The per-row sweeper's own loop for the levels the prototype does not batch.
        fallback = sweep_escalations(now=started, batch=len(state["per_row_fallback"]))
    render = prototype_render(RENDER_CHUNK)
    end = time.perf_counter()
    cpu2 = clock.read()

    def cpu(a: tuple[float, float | None], b: tuple[float, float | None]) -> dict[str, Any]:
        server = None if a[1] is None or b[1] is None else round(b[1] - a[1], 3)
        return {"python_s": round(b[0] - a[0], 3), "postgres_backend_s": server}

    result = {
        "chunk": PROTOTYPE_CHUNK,
        "render_chunk": RENDER_CHUNK,
        "acted_on": state["rows"],
        "mails": state["mails"],
        "statements_phase1": state["statements"],
        "per_row_fallback": fallback,
        "state_changed_s": round(state["last_commit"] - began, 3),
        "phase1_with_announcements_s": round(phase1_end - began, 3),
        "announcements_s": state["announce_s"],
        "followups_queued_s": round(end - began, 3),
        "phase2_s": round(end - phase1_end, 3),
        "phase2": render,
        "cpu_phase1": cpu(cpu0, cpu1),
        "cpu_phase2": cpu(cpu1, cpu2),
        "load_before": load,
        "load_after": loadavg(),
        "outcome": outcome(started, info),
    }
    # The broker side of one task message per render chunk (a task taking a list of ids, as
    # proposed) instead of one per mail: the same ids, published again, then purged.
    ids = [r[0] for r in sql("SELECT id FROM integrations_outboundemail WHERE status = 'queued'")]
    began = time.perf_counter()
    with send_email.app.producer_or_acquire() as producer:
        for i in range(0, len(ids), RENDER_CHUNK):
            send_email.app.send_task(
                "bench.send_emails", args=(ids[i : i + RENDER_CHUNK],), producer=producer
            )
    result["phase2"]["publish_one_message_per_chunk_s"] = round(time.perf_counter() - began, 3)
    return result


# -- report -------------------------------------------------------------------------------------


def _plan_line(plan: dict[str, Any]) -> str:
    scans = ", ".join(
        f"{s['node']} on {s['relation']}" + (f" using {s['index']}" if s["index"] else "")
        for s in plan["scans"]
    )
    return (
        f"  {plan['name']:26} {plan['rows_returned']:>6,} rows"
        f"  examined {plan['rows_examined']:>7,}"
        f"  buffers {plan['buffers_hit']:>5}+{plan['buffers_read']:<4} "
        f"{plan['execution_ms']:8.3f} ms  {scans}"
    )


def _verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "-"
    return "met" if value <= goal else "MISSED"


def render(report: dict[str, Any]) -> str:
    timed = report["per_row_sweep"]
    out = timed["outcome"]
    empty = report["empty_sweeps"]
    index = report["escalation_index"]
    lines = [
        f"Signoff sweeper benchmark  {report['finished_at']}  ({report['environment']['cpus']} "
        "cores shared with other work: noisy)",
        f"load average (1, 5, 15 min): start {report['load']['start']}, "
        f"sweep {timed['load_before']} -> {timed['load_after']}, end {report['load']['end']}",
        "data: " + ", ".join(f"{k} {v:,}" for k, v in report["counts"].items()),
        f"index {index['model_index']} on next_escalation_at: "
        + (
            "present"
            if index["present"]
            else "MISSING (approvals/models.py has none; the due query scans the table)"
        ),
        "",
        f"{'measure':52} {'value':>10}  {'goal':>9}  verdict",
    ]

    def row(name: str, value: float | None, unit: str, goal: float | None) -> None:
        shown = "-" if value is None else f"{value:,.3f} {unit}"
        goal_text = "" if goal is None else f"<= {goal:g} {unit}"
        verdict = "" if goal is None else _verdict(value, goal)
        lines.append(f"{name:52} {shown:>10}  {goal_text:>9}  {verdict}")

    g = report["goals"]
    full = timed.get("extrapolated_10k_s", timed["seconds"])
    how = "" if "extrapolated_10k_s" not in timed else f" (x{10_000 // timed['acted_on']:,})"
    row(f"per-row sweep, 10,000 due: state + events{how}", full, "s", g["state_changed_s"])
    row(f"per-row sweep, 10,000 due: mails queued{how}", full, "s", g["followups_queued_s"])
    cpu = timed["cpu_per_row_ms"]
    row(f"  measured: {timed['acted_on']:,} rows", timed["seconds"], "s", None)
    row("  per row: wall", timed["per_row_ms"], "ms", None)
    row("  per row: Python CPU", cpu["python"], "ms", None)
    row("  per row: PostgreSQL backend CPU", cpu["postgres_backend"], "ms", None)
    row("  per row: waiting (a core, WAL flush, Redis)", cpu["waiting"], "ms", None)
    for name, result in empty.items():
        row(
            f"empty sweep p50 ({name}, {result['runs']} runs)",
            result["p50_ms"],
            "ms",
            g["empty_sweep_ms"],
        )
    if report.get("with_bench_index"):
        result = report["with_bench_index"]["empty"]
        row(
            f"empty sweep p50 (escalations, with {BENCH_INDEX})",
            result["p50_ms"],
            "ms",
            g["empty_sweep_ms"],
        )
    proto = report.get("prototype")
    if proto:
        row(
            "batched prototype: state changed + events + intents",
            proto["state_changed_s"],
            "s",
            g["state_changed_s"],
        )
        row(
            "batched prototype: follow-up mails rendered+queued",
            proto["followups_queued_s"],
            "s",
            g["followups_queued_s"],
        )
    lines += [
        "",
        "per-row sweep left: "
        f"{out['requests_escalated']:,} escalated, {out['still_due']:,} still due, "
        f"{out['events']:,} events, {out['outbox_rows']:,} outbox rows "
        f"({out['outbox_rows_rendered_and_queued']:,} rendered), {out['tokens']:,} tokens, "
        f"{out['admin_assignments']:,} admin assignments, {out['broker_messages']:,} broker "
        f"messages, {timed['failed_rows']} failed rows, "
        f"{out['instances_last_seq_mismatch']} last_seq mismatches",
        f"  timeline (s after start): first event {out['first_event_at_s']}, median "
        f"{out['median_event_at_s']}, last {out['last_event_at_s']}; last outbox row "
        f"{out['last_outbox_row_at_s']}; call returned {timed['seconds']}",
        "",
        "EXPLAIN (ANALYZE, BUFFERS) of the due-ids queries, as the sweepers build them:",
    ]
    for plans in report["explain"].values():
        lines += [_plan_line(p) for p in plans]
    if report.get("with_bench_index"):
        lines.append(f"  with {BENCH_INDEX}:")
        lines += [_plan_line(p) for p in report["with_bench_index"]["explain"]]
    prof = report.get("profile")
    if prof:
        lines += [
            "",
            f"profile of the per-row sweep over {prof['rows']:,} rows ({prof['per_row_ms']} ms "
            f"a row with timers on, {prof['statements_per_row']} SQL statements a row):",
            "  " + ", ".join(f"{k} {v} ms" for k, v in prof["breakdown_per_row_ms"].items()),
            "  statements a row (count, ms): "
            + "; ".join(
                f"{s['kind']} {s['per_row']} / {s['ms_per_row']}" for s in prof["statements"][:12]
            ),
        ]
    if prof and prof.get("pyinstrument_tree"):
        lines += ["", "pyinstrument (per-row sweep, frames under 2 % hidden):"]
        lines += ["  " + line for line in prof["pyinstrument_tree"] if line.strip()][:60]
    if proto:
        out2 = proto["outcome"]
        c1, c2 = proto["cpu_phase1"], proto["cpu_phase2"]
        lines += [
            "",
            f"batched prototype (chunks of {proto['chunk']:,}, render chunks of "
            f"{proto['render_chunk']}): state {proto['state_changed_s']} s "
            f"({proto['statements_phase1']} statements), with announcements "
            f"{proto['phase1_with_announcements_s']} s, render+queue {proto['phase2_s']} s "
            f"(rendering {proto['phase2']['render_s']} s, broker {proto['phase2']['publish_s']} s"
            f" for one message a mail, "
            f"{proto['phase2']['publish_one_message_per_chunk_s']} s for one a chunk)",
            f"  CPU: phase 1 Python {c1['python_s']} s + PostgreSQL {c1['postgres_backend_s']} s;"
            f" phase 2 Python {c2['python_s']} s + PostgreSQL {c2['postgres_backend_s']} s",
            f"  left: {out2['requests_escalated']:,} escalated, {out2['events']:,} events, "
            f"{out2['outbox_rows_rendered_and_queued']:,} mails rendered and queued, "
            f"{out2['tokens']:,} tokens, {out2['admin_assignments']:,} admin assignments, "
            f"{out2['broker_messages']:,} broker messages, "
            f"{out2['instances_last_seq_mismatch']} last_seq mismatches; same event and mail "
            f"as the sweeper's: {report['prototype_matches_sweeper']}",
        ]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reseed", action="store_true", help="seed even if the seed matches")
    parser.add_argument(
        "--per-row-rows",
        type=int,
        default=LAYOUT["overdue"],
        help="due rows the timed per-row sweep handles (fewer: its time for 10,000 is "
        "extrapolated; 40 to 90 ms a row on this busy machine)",
    )
    parser.add_argument("--profile-rows", type=int, default=PROFILE_ROWS, help="0: no profile")
    parser.add_argument("--no-prototype", action="store_true", help="skip the batched prototype")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "sweepers.json")
    args = parser.parse_args(argv)
    rows = max(1, min(args.per_row_rows, LAYOUT["overdue"]))

    began = time.monotonic()
    load_start = loadavg()
    ensure_database()
    log("migrate")
    manage("migrate", "--noinput", "-v", "0")
    setup_django()

    from approvals.sweepers import sweep_escalations
    from orchestration.sweepers import sweep_doorbells, sweep_step_timeouts

    if args.reseed or not seed_matches():
        log("seeding (about 5 minutes on a busy machine)")
        seeded = {"reused": False, **seed()}
        log(f"seeded in {seeded['seconds']} s")
    else:
        seeded = {"reused": True}
        log("seed present, reused")
    info = seed_info()
    server = sql("SHOW server_version")[0][0]
    index = escalation_index()
    notes: list[str] = []
    if not index["present"]:
        notes.append(
            f"approvals/models.py declares no index {INDEX_NAME} (none on next_escalation_at): "
            f"the due query reads the whole table; the lines with {BENCH_INDEX} show what the "
            "index gives (created in this database only, dropped again)"
        )
    if rows < LAYOUT["overdue"]:
        notes.append(
            f"the per-row sweep was timed over {rows:,} of the 10,000 due rows "
            "(--per-row-rows); its 10,000-row figures are extrapolated (each row is its own "
            "transaction: the cost is linear)"
        )
    log("reset: " + json.dumps(reset()))
    data = counts()
    log("data: " + ", ".join(f"{k} {v:,}" for k, v in data.items()))
    if data["escalation_due"] != LAYOUT["overdue"]:
        raise SystemExit(f"expected {LAYOUT['overdue']} due, found {data['escalation_due']}")
    # The oldest due request: the first any sweep handles.
    probe = LAYOUT["overdue"]

    plans: dict[str, list[dict[str, Any]]] = {}
    indexed: dict[str, Any] = {}
    report: dict[str, Any] = {}
    try:
        plans["escalations_due"] = explain_sweeper("escalations, 10,000 due", sweep_escalations)
        if not index["present"]:
            sql(BENCH_INDEX_SQL)
            sql("ANALYZE approvals_approvalrequest")
            indexed["explain"] = explain_sweeper("escalations, 10,000 due", sweep_escalations)
            sql(f"DROP INDEX {BENCH_INDEX}")

        log(f"timing the per-row escalation sweep over {rows:,} due rows")
        timed = measure_escalation(info, rows)
        log(
            f"  {timed['acted_on']:,} escalated in {timed['seconds']} s "
            f"({timed['per_row_ms']} ms a row)"
        )
        per_row_sample = sample(probe)
        broker_purge()

        if args.profile_rows:
            if counts()["escalation_due"] < args.profile_rows:
                log("reset: " + json.dumps(reset()))
            log(f"profile over {args.profile_rows:,} rows")
            report["profile"] = profile_per_row(args.profile_rows)
            broker_purge()

        if not args.no_prototype:
            log("reset: " + json.dumps(reset()))
            log("batched prototype over 10,000 due rows")
            if not index["present"]:
                # The proposal includes the index: its lock query walks it like the sweeper's.
                sql(BENCH_INDEX_SQL)
                sql("ANALYZE approvals_approvalrequest")
            report["prototype"] = measure_prototype(info)
            report["prototype"]["with_index"] = INDEX_NAME if index["present"] else BENCH_INDEX
            sql(f"DROP INDEX IF EXISTS {BENCH_INDEX}")
            proto_sample = sample(probe)
            report["prototype_matches_sweeper"] = proto_sample == per_row_sample
            if not report["prototype_matches_sweeper"]:
                report["samples"] = {"per_row": per_row_sample, "prototype": proto_sample}
            log(
                f"  state {report['prototype']['state_changed_s']} s, follow-ups "
                f"{report['prototype']['followups_queued_s']} s"
            )
            broker_purge()
        else:
            notes.append(f"{clear_due():,} still due rows moved a day ahead for the empty sweeps")

        log(f"empty sweeps ({EMPTY_RUNS} runs each)")
        empty = {"escalations": repeat(lambda: sweep_escalations(batch=LAYOUT["overdue"]))}
        plans["escalations_empty"] = explain_sweeper("escalations, 0 due", sweep_escalations)
        empty["doorbells"] = repeat(sweep_doorbells)
        plans["doorbells"] = explain_sweeper("doorbells, 0 due", sweep_doorbells)
        empty["step_timeouts"] = repeat(sweep_step_timeouts)
        plans["step_timeouts"] = explain_sweeper("step_timeouts, 0 due", sweep_step_timeouts)
        if not index["present"]:
            sql(BENCH_INDEX_SQL)
            sql("ANALYZE approvals_approvalrequest")
            indexed["empty"] = repeat(lambda: sweep_escalations(batch=LAYOUT["overdue"]))
            indexed["explain"] += explain_sweeper("escalations, 0 due", sweep_escalations)
            indexed["index_sql"] = BENCH_INDEX_SQL
            report["with_bench_index"] = indexed
    finally:
        sql(f"DROP INDEX IF EXISTS {BENCH_INDEX}")
        broker_purge()

    report = {
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "layout": LAYOUT,
        "goals": GOALS,
        "seed": seeded,
        "counts": data,
        "escalation_index": index,
        "per_row_sweep": timed,
        "empty_sweeps": empty,
        "explain": plans,
        **report,
        "notes": notes,
        "load": {"start": load_start, "end": loadavg()},
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server,
            "database": db_name(),
            "broker": BROKER_URL,
        },
        "duration_s": round(time.monotonic() - began, 1),
    }
    print(render(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {args.output} in {report['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
