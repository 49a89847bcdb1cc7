"""Sweeper benchmark: one escalation sweep over 10,000 overdue approvals among 200,000.

Run it with ``.venv/bin/python bench/sweepers.py`` (``--help`` for the knobs). It needs
PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379, database 4 as the broker (override
with ``SIGNOFF_BENCH_SWEEP_DATABASE_URL`` / ``SIGNOFF_BENCH_SWEEP_BROKER_URL``). It creates the
database ``signoff_bench_sweep`` when missing, migrates it (``manage.py migrate`` with
``DATABASE_URL``), seeds it unless the same seed is there, prints one table and writes
``bench/results/sweepers.json``, whose ``summary`` list (measure, value, unit, goal, ok) is what
``make bench`` shows.

Time: seeding takes 1 to 5 minutes (once); a run with the seed present takes about a minute.

The data
--------
``manage.py seed_demo`` makes the users (``admin``, ``alice``, ``bob`` in ``managers``...). One
real ``expense_approval`` instance is then started through the engine and its ``validate``
step run in this process, so ``manager_approval`` asks ``managers`` exactly as in production
(request, step runs, events, assignee rows, "assigned" mail). That instance is the
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
1. ``EXPLAIN (ANALYZE, BUFFERS)`` of each sweeper's due-ids queries, captured from the sweeper
   itself: index used and rows examined.
2. For comparison, the per-row path (``SIGNOFF_ESCALATION_BATCHED = False``, as on SQLite) over
   ``--per-row-rows`` (200) of the due rows: time and CPU per row; its event and mail for the
   oldest request are kept to compare with the batched sweep's.
3. The production sweep, ``approvals.sweepers.sweep_escalations`` (batched on PostgreSQL), over
   the 10,000 due rows, with a Celery worker (2 processes) consuming only the render queue
   (``SIGNOFF_MAIL_RENDER_QUEUE``): when each chunk committed (the last one: *state changed*),
   when the call returned (events announced), and when every mail was rendered (with the link
   placeholder: action tokens are issued at delivery, which is not run here) and its delivery
   task in the broker (*follow-ups dispatched*; the delivery tasks are counted and purged, no
   mail is sent). Then counted: levels, events, tokens (none: none is sent), mails,
   ``admin`` assignments, broker messages, ``last_seq`` mismatches, failed rows.
4. ``EXPLAIN (ANALYZE, BUFFERS)`` of one chunk's two statements (rolled back), CTE by CTE: where
   phase 1's database time goes. ``--profile``: pyinstrument's tree of one more sweep.
5. Right after (zero due rows): each sweeper 20 times, p50 (escalations, reminders, expiry,
   doorbells, step timeouts, mail outbox).

Noise: 2 cores shared with PostgreSQL and whatever else runs (other people's tests). The load
average is recorded; compare runs taken under similar load.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script: import from the project root, and never shadow modules from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BenchRun,
    db_name,
    ensure_database,
    finished_at,
    loadavg,
    make_log,
    percentile,
    with_secrets,
    worker_answers,
)
from orchestration.worker import worker_command  # noqa: E402

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
INDEX_NAME = "approval_pending_escalation"
BENCH_INDEX = "bench_pending_escalation"
BENCH_INDEX_SQL = (
    f"CREATE INDEX IF NOT EXISTS {BENCH_INDEX} ON approvals_approvalrequest "
    "(next_escalation_at) WHERE state = 'pending'"
)
SEED_TABLE = "bench_sweep_seed"
ROWS_TABLE = "bench_sweep_rows"
log = make_log("sweepers")


# -- database and broker ------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return with_secrets(
        dict(
            os.environ,
            DATABASE_URL=DB_URL,
            CELERY_BROKER_URL=BROKER_URL,
            DJANGO_SETTINGS_MODULE="config.settings",
            LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        )
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
    client.delete(queue, "bench_sweep_render")
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
                "link_ref": "jsonb_set(t.link_ref, '{request}', to_jsonb(l.g))",
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
        removed["timers"] = timers_rebuild()
    # The requests table only: its 50,000 updated rows would leave dead entries in the
    # partial indexes the sweepers read (the other tables lost at most 10,000 rows of millions).
    # The outbox too: the last run's rendered rows left dead entries in the partial index the
    # escalation sweep reads first (email_rendering_created).
    vacuum(
        [
            "approvals_approvalrequest",
            "approvals_escalationtimer",
            "approvals_approvalrequest_assignee_users",
            "integrations_outboundemail",
        ]
    )
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
    from django.test import override_settings

    queries: list[tuple[str, Any]] = []
    # One connection, this one, so every statement is captured.
    with captured(queries), override_settings(SIGNOFF_ESCALATION_CONNECTIONS=1):
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
        "p50_ms": round(percentile(times, 50), 2),
        "p90_ms": round(percentile(times, 90), 2),
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
        # A link's token would be random (the outbox keeps a placeholder); the due time moves
        # with each run's re-anchoring.
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
    moved = len(
        sql(
            "UPDATE approvals_approvalrequest SET next_escalation_at = now() + interval '1 day' "
            "WHERE state = 'pending' AND next_escalation_at <= now() RETURNING 1"
        )
    )
    timers_rebuild()
    return moved


def timers_rebuild() -> int:
    """The escalation timers (``approvals_escalationtimer``) as the requests say them, as
    the services keep them: one row per pending request with a timer."""
    sql("DELETE FROM approvals_escalationtimer")
    return len(
        sql(
            "INSERT INTO approvals_escalationtimer (request_id, due_at) "
            "SELECT id, next_escalation_at FROM approvals_approvalrequest "
            "WHERE state = 'pending' AND next_escalation_at IS NOT NULL RETURNING 1"
        )
    )


# -- the production (batched) escalation sweep --------------------------------------------------

RENDER_QUEUE = "bench_sweep_render"  # the bench's worker consumes only the render tasks


class RenderWorker:
    """A Celery worker (prefork, 2 processes) on the bench database and broker that consumes
    only the render queue: the delivery tasks it queues stay in the broker, counted, then
    purged (no mail is sent)."""

    def __init__(self, concurrency: int = 2) -> None:
        self.concurrency = concurrency
        self.name = f"bench-sweep-{os.getpid()}@localhost"
        self.log = ROOT / "var" / "bench-sweep-worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        began = time.monotonic()
        self.log.parent.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            worker_command(
                queues=RENDER_QUEUE,
                concurrency=self.concurrency,
                hostname=self.name,
                loglevel="WARNING",
                extra=["--without-heartbeat"],
            ),
            cwd=ROOT,
            env=_env(),
            stdout=open(self.log, "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"render worker exited; see {self.log}")
            if worker_answers(self.name):
                return round(time.monotonic() - began, 1)
        raise SystemExit(f"render worker not ready; see {self.log}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)


def mail_status() -> dict[str, int]:
    return dict(
        sql(
            "SELECT status, count(*) FROM integrations_outboundemail "
            "WHERE kind = 'approval_escalated' GROUP BY status"
        )
    )


def measure_batched(info: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """One production sweep (``sweep_escalations``, batched on PostgreSQL) over the 10,000 due
    rows, the render worker running. Timeline: each chunk's commit (its render tasks are sent
    right after it, in ``mails_dispatch``), the call's return (after the announcements), and
    the moment every mail is rendered, queued and its delivery task is in the broker."""
    from django.conf import settings
    from django.utils import timezone

    from approvals import sweepers

    commits: list[float] = []
    dispatch = sweepers.mails_dispatch

    def timed_dispatch(ids: list[int]) -> None:
        commits.append(time.perf_counter())
        dispatch(ids)

    clock = CpuClock()
    load = loadavg()
    settings.SIGNOFF_MAIL_RENDER_QUEUE = RENDER_QUEUE
    sweepers.mails_dispatch = timed_dispatch
    try:
        with FailureCounter() as failures:
            started = timezone.now()
            cpu0 = clock.read()
            began = time.perf_counter()
            done = sweepers.sweep_escalations(batch=LAYOUT["overdue"])
            returned = time.perf_counter()
            cpu1 = clock.read()
    finally:
        sweepers.mails_dispatch = dispatch
        del settings.SIGNOFF_MAIL_RENDER_QUEUE
    mails = sql(
        "SELECT count(*) FROM integrations_outboundemail WHERE kind = 'approval_escalated'"
    )[0][0]
    from django.conf import settings as dj

    from integrations.mail import DELIVERY_SLICE

    queue = dj.CELERY_TASK_DEFAULT_QUEUE
    finished = None
    status: dict[str, int] = {}
    # Delivery tasks carry up to DELIVERY_SLICE mails each, one or more per render task: done
    # when every mail is queued, no render task is left and the delivery messages stop
    # growing (each render task sends its delivery tasks right after its commit).
    least = -(-mails // DELIVERY_SLICE)
    seen = -1
    while time.perf_counter() - began < timeout:
        status = mail_status()
        queues = broker_queues()
        messages = queues.get(queue, 0)
        if (
            status.get("queued", 0) == mails
            and queues.get(RENDER_QUEUE, 0) == 0
            and messages >= least
            and messages == seen
        ):
            finished = time.perf_counter() - 0.05  # it was done at the previous poll
            break
        seen = messages
        time.sleep(0.05)
    server = None if cpu0[1] is None or cpu1[1] is None else round(cpu1[1] - cpu0[1], 3)
    return {
        "acted_on": done,
        "chunk": sweepers._setting("SIGNOFF_ESCALATION_CHUNK", sweepers.ESCALATION_CHUNK),
        "render_slice": sweepers.RENDER_SLICE,
        "state_changed_s": round((commits[-1] if commits else returned) - began, 3),
        "chunk_commits_s": [round(c - began, 3) for c in commits],
        "sweep_returned_s": round(returned - began, 3),
        "followups_dispatched_s": None if finished is None else round(finished - began, 3),
        "mails": mails,
        "mail_status": status,
        "cpu_sweep": {"python_s": round(cpu1[0] - cpu0[0], 3), "postgres_backend_s": server},
        "failed_rows": len(failures.records),
        "failures": failures.records[:5],
        "load_before": load,
        "load_after": loadavg(),
        "outcome": outcome(started, info),
    }


def explain_chunk(chunk: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one chunk's lock and escalate statements, rolled back:
    where the database time of phase 1 goes, statement by statement and CTE by CTE."""
    from django.db import connection, transaction
    from django.utils import timezone

    from approvals import sweepers

    captured_sql: list[tuple[str, Any]] = []

    class Rollback(Exception):
        pass

    result: dict[str, Any] = {}
    now = timezone.now()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
            cursor.execute(sweepers.LOCK_PLANNER)
            cursor.execute(sweepers.LOCK_DUE_SQL, [now, now, [], chunk])
            rows = cursor.fetchall()
            cursor.execute(sweepers.PLANNER_BACK)
            sid = transaction.savepoint()
            with captured(captured_sql):
                sweepers._escalate_chunk(rows)
            transaction.savepoint_rollback(sid)
            statement, params = next(q for q in captured_sql if "WITH due" in q[0])
            for name, (text, args) in {
                "lock": (sweepers.LOCK_DUE_SQL, [now, now, [], chunk]),
                "escalate": (statement, params),
            }.items():
                # The planner settings the sweep runs each statement with.
                cursor.execute(sweepers.LOCK_PLANNER if name == "lock" else sweepers.PLANNER_BACK)
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {text}", args)
                document = cursor.fetchone()[0]
                document = json.loads(document) if isinstance(document, str) else document
                top = document[0]
                parts = []
                for node in top["Plan"].get("Plans", []):
                    if node.get("Subplan Name", "").startswith("CTE"):
                        parts.append(
                            {
                                "cte": node["Subplan Name"].removeprefix("CTE "),
                                "ms": round(node.get("Actual Total Time", 0.0), 1),
                                "buffers_hit": node.get("Shared Hit Blocks", 0),
                                "buffers_read": node.get("Shared Read Blocks", 0),
                                "buffers_written": node.get("Shared Written Blocks", 0),
                            }
                        )
                result[name] = {
                    "rows": len(rows),
                    "execution_ms": round(top.get("Execution Time", 0.0), 1),
                    "ctes": parts,
                }
            raise Rollback
    except Rollback:
        pass
    return result


def profile_batched() -> list[str]:
    """pyinstrument's tree of one batched sweep (rolled back afterwards by a reset)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return ["pyinstrument not installed: .venv/bin/pip install pyinstrument"]
    from approvals import sweepers

    dispatch = sweepers.mails_dispatch
    sweepers.mails_dispatch = lambda ids: None
    profiler = Profiler(interval=0.001)
    try:
        profiler.start()
        sweepers.sweep_escalations(batch=LAYOUT["overdue"])
        profiler.stop()
    finally:
        sweepers.mails_dispatch = dispatch
    text = profiler.output_text(
        unicode=False, color=False, processor_options={"filter_threshold": 0.02}
    )
    return text.splitlines()


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


def summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows ``make bench`` shows: measure, value, unit, goal, ok."""
    g = report["goals"]
    batched = report.get("batched") or {}
    rows: list[dict[str, Any]] = []

    def add(measure: str, value: Any, unit: str, goal: float | None) -> None:
        ok = None if goal is None or not isinstance(value, int | float) else value <= goal
        goal_text = "" if goal is None else f"<= {goal:g} {unit}"
        rows.append({"measure": measure, "value": value, "unit": unit, "goal": goal_text, "ok": ok})

    if batched:
        add(
            "escalation sweep: 10,000 overdue state-changed (last chunk committed)",
            batched["state_changed_s"],
            "s",
            g["state_changed_s"],
        )
        value = batched["followups_dispatched_s"]
        add(
            "escalation follow-ups dispatched (mails rendered, delivery queued)",
            "timed out" if value is None else value,
            "s",
            g["followups_queued_s"],
        )
        if value is None:
            rows[-1]["ok"] = False
        add(
            "escalation sweep rows/s (state)",
            round(batched["acted_on"] / max(batched["state_changed_s"], 1e-9)),
            "rows/s",
            None,
        )
    per_row = report.get("per_row_sweep")
    if per_row:
        add(
            f"per-row sweep (comparison, {per_row['acted_on']:,} rows): per row",
            per_row["per_row_ms"],
            "ms",
            None,
        )
    for name, result in report["empty_sweeps"].items():
        add(f"empty sweep p50: {name}", result["p50_ms"], "ms", g["empty_sweep_ms"])
    return rows


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Signoff sweeper benchmark  {report['finished_at']}  ({report['environment']['cpus']} "
        "cores shared with other work: noisy)",
        f"load average (1, 5, 15 min): start {report['load']['start']}, "
        f"end {report['load']['end']}",
        "data: " + ", ".join(f"{k} {v:,}" for k, v in report["counts"].items()),
        "",
        f"{'measure':82} {'value':>12}  {'goal':>10}  ok",
    ]
    for row in report["summary"]:
        value = row["value"]
        shown = f"{value:,.3f} {row['unit']}" if isinstance(value, float) else f"{value}"
        if isinstance(value, int):
            shown = f"{value:,} {row['unit']}"
        ok = {True: "met", False: "MISSED", None: ""}[row["ok"]]
        lines.append(f"{row['measure']:82} {shown:>12}  {row['goal']:>10}  {ok}")
    batched = report.get("batched")
    if batched:
        out = batched["outcome"]
        cpu = batched["cpu_sweep"]
        lines += [
            "",
            f"batched sweep (chunks of {batched['chunk']:,}, render tasks of "
            f"{batched['render_slice']}): chunk commits at {batched['chunk_commits_s']} s, "
            f"returned at {batched['sweep_returned_s']} s (announcements included); sweep CPU: "
            f"Python {cpu['python_s']} s, PostgreSQL backend {cpu['postgres_backend_s']} s; "
            f"load {batched['load_before']} -> {batched['load_after']}",
            f"  left: {out['requests_escalated']:,} escalated, {out['still_due']:,} still due, "
            f"{out['events']:,} events, {out['outbox_rows_rendered_and_queued']:,} of "
            f"{out['outbox_rows']:,} mails rendered and queued, {out['tokens']:,} tokens, "
            f"{out['admin_assignments']:,} admin assignments, {out['broker_messages']:,} "
            f"delivery tasks in the broker, {out['instances_last_seq_mismatch']} last_seq "
            f"mismatches, {batched['failed_rows']} failed rows; same event and mail as the "
            f"per-row sweeper's: {report.get('batched_matches_per_row')}",
        ]
    chunk = report.get("explain_chunk")
    if chunk:
        lines.append(
            f"  one chunk, EXPLAIN ANALYZE: lock {chunk['lock']['execution_ms']} ms, escalate "
            f"{chunk['escalate']['execution_ms']} ms: "
            + ", ".join(
                f"{c['cte']} {c['ms']} ms ({c['buffers_hit'] + c['buffers_read']} buffers)"
                for c in chunk["escalate"]["ctes"]
            )
        )
    per_row = report.get("per_row_sweep")
    if per_row:
        cpu = per_row["cpu_per_row_ms"]
        lines += [
            "",
            f"per-row sweep over {per_row['acted_on']:,} rows: {per_row['seconds']} s, "
            f"{per_row['per_row_ms']} ms a row (Python {cpu['python']} ms, PostgreSQL "
            f"{cpu['postgres_backend']} ms, waiting {cpu['waiting']} ms); 10,000 rows would "
            f"take about {per_row.get('extrapolated_10k_s', per_row['seconds'])} s",
        ]
    lines += ["", "EXPLAIN (ANALYZE, BUFFERS) of the due-ids queries, as the sweepers build them:"]
    for plans in report["explain"].values():
        lines += [_plan_line(p) for p in plans]
    if report.get("pyinstrument_batched"):
        lines += ["", "pyinstrument (batched sweep, frames under 2 % hidden):"]
        lines += ["  " + line for line in report["pyinstrument_batched"] if line.strip()][:50]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("sweepers", __doc__, log)
    parser = bench.parser
    parser.add_argument("--reseed", action="store_true", help="seed even if the seed matches")
    parser.add_argument(
        "--per-row-rows",
        type=int,
        default=200,
        help="due rows the per-row sweep (the comparison) handles; 0 skips it",
    )
    parser.add_argument(
        "--profile", action="store_true", help="pyinstrument tree of one more batched sweep"
    )
    args = bench.parse(argv)
    rows = max(0, min(args.per_row_rows, LAYOUT["overdue"]))

    ensure_database(DB_URL, log)
    log("migrate")
    manage("migrate", "--noinput", "-v", "0")
    setup_django()

    from django.conf import settings

    from approvals.sweepers import sweep_escalations, sweep_expiry, sweep_reminders
    from integrations.mail import sweep_outbox
    from orchestration.sweepers import sweep_doorbells, sweep_step_timeouts

    if args.reseed or not seed_matches():
        log("seeding (about 1 to 5 minutes)")
        seeded = {"reused": False, **seed()}
        log(f"seeded in {seeded['seconds']} s")
    else:
        seeded = {"reused": True}
        log("seed present, reused")
    info = seed_info()
    server = sql("SHOW server_version")[0][0]
    notes: list[str] = []
    log("reset: " + json.dumps(reset()))
    data = counts()
    log("data: " + ", ".join(f"{k} {v:,}" for k, v in data.items()))
    if data["escalation_due"] != LAYOUT["overdue"]:
        raise SystemExit(f"expected {LAYOUT['overdue']} due, found {data['escalation_due']}")
    probe = LAYOUT["overdue"]  # the oldest due request: the first any sweep handles

    plans: dict[str, list[dict[str, Any]]] = {}
    report: dict[str, Any] = {}
    worker = RenderWorker()
    try:
        plans["escalations_due"] = explain_sweeper("escalations, 10,000 due", sweep_escalations)
        per_row_sample = None
        if rows:
            log(f"per-row sweep (comparison) over {rows:,} due rows")
            settings.SIGNOFF_ESCALATION_BATCHED = False
            try:
                report["per_row_sweep"] = measure_escalation(info, rows)
            finally:
                del settings.SIGNOFF_ESCALATION_BATCHED
            per_row_sample = sample(probe)
            log(f"  {report['per_row_sweep']['per_row_ms']} ms a row")
            log("reset: " + json.dumps(reset()))
        log(f"render worker started in {worker.start()} s")
        log("batched sweep over 10,000 due rows, the worker rendering")
        report["batched"] = measure_batched(info)
        log(
            f"  state {report['batched']['state_changed_s']} s, follow-ups "
            f"{report['batched']['followups_dispatched_s']} s"
        )
        if per_row_sample is not None:
            batched_sample = sample(probe)
            report["batched_matches_per_row"] = batched_sample == per_row_sample
            if not report["batched_matches_per_row"]:
                report["samples"] = {"per_row": per_row_sample, "batched": batched_sample}
        worker.stop()
        broker_purge()
        log("reset: " + json.dumps(reset()))
        log("EXPLAIN ANALYZE of one chunk (rolled back)")
        from approvals import sweepers as production

        report["explain_chunk"] = explain_chunk(production.ESCALATION_CHUNK)
        if args.profile:
            log("pyinstrument over one more batched sweep")
            report["pyinstrument_batched"] = profile_batched()
        notes.append(f"{clear_due():,} still due rows moved a day ahead for the empty sweeps")

        log(f"empty sweeps ({EMPTY_RUNS} runs each)")
        empty = {
            "escalations": repeat(lambda: sweep_escalations(batch=LAYOUT["overdue"])),
            "reminders": repeat(sweep_reminders),
            "expiry": repeat(sweep_expiry),
            "doorbells": repeat(sweep_doorbells),
            "step_timeouts": repeat(sweep_step_timeouts),
            "outbox": repeat(sweep_outbox),
        }
        plans["escalations_empty"] = explain_sweeper("escalations, 0 due", sweep_escalations)
        plans["doorbells"] = explain_sweeper("doorbells, 0 due", sweep_doorbells)
        plans["step_timeouts"] = explain_sweeper("step_timeouts, 0 due", sweep_step_timeouts)
    finally:
        worker.stop()
        broker_purge()

    report = {
        "finished_at": finished_at(),
        "layout": LAYOUT,
        "goals": GOALS,
        "seed": seeded,
        "counts": data,
        "empty_sweeps": empty,
        "explain": plans,
        **report,
        "notes": notes,
        "load": {"start": bench.load_before, "end": loadavg()},
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server,
            "database": db_name(DB_URL),
            "broker": BROKER_URL,
        },
        "duration_s": bench.seconds(),
    }
    bench.finish(report, render, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
