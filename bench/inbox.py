"""Inbox benchmark: the approvals API list and the HTML inbox on 1,000,000 approval rows.

Run it with ``.venv/bin/python bench/inbox.py`` (``--help`` for the knobs). It needs
PostgreSQL on 127.0.0.1:5432 (override with ``SIGNOFF_BENCH_INBOX_DATABASE_URL``). It creates
the database ``signoff_bench_inbox`` when missing, migrates it (``manage.py migrate`` with
``DATABASE_URL``), seeds it unless the same seed is already there, times the pages in this
process, prints one table and writes ``bench/results/inbox.json``. No worker, no Redis.

The data
--------
1,000,000 approval requests (each with its workflow instance and its ``approve`` step run),
of which 100,000 are pending (every tenth, so they are spread over the whole year of
``created_at``), across 20 workflows (``bench_wf_00`` .. ``bench_wf_19``, registered in this
process so the pages can find their definitions) and 500 users (``bench_u000`` ..
``bench_u499``) in 20 groups of 25 (``bench_u<i>`` is in ``bench_g<i % 20>``). Every request
is assigned to one group; every fifth also to one member of that group directly. The pending
ones go round the groups, so each group (and each of its members) may decide exactly 5,000.
The requester is always from another group. Of the 900,000 resolved requests 70 % are
approved, 20 % rejected (each with one decision by a member of the group), 5 % expired and
5 % cancelled. Pending instances carry six history events each, so the detail page has a
history to show.

The seed is generated inside PostgreSQL (``INSERT ... SELECT`` over ``generate_series``, foreign
key triggers off for the session), with every column this script does not set taken from the
model's default, so new columns with defaults need no change here. A table
``bench_inbox_seed`` records the layout; the next run reuses the rows when it matches.

What is timed
-------------
For ``bench_u000`` (5,000 pending requests through ``bench_g00``): 50 requests each, after 5
for warm-up, through Django's test ``Client`` in this process, so the full middleware stack,
authentication (an API token, or the session for HTML pages), the view, serialization or
template rendering, and the database round trips are in; the HTTP server and the network are
not. The query count of every request is recorded (through ``connection.execute_wrapper``).
Detail pages cycle through 50 different pending requests. p99 of 50 samples is the largest
but one (linear interpolation between closest ranks).

Then ``EXPLAIN (ANALYZE, BUFFERS)`` of each list's main query, exactly as the view builds it,
to check that the pending list walks the partial index ``approval_pending_created``, and of
``request_for``'s query (the detail pages).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script: import from the project root, and never shadow modules from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BenchRun,
    counting_queries,
    db_name,
    ensure_database,
    finished_at,
    goal_row,
    loadavg,
    make_log,
    percentile,
    row,
    with_secrets,
)

DB_URL = os.environ.get(
    "SIGNOFF_BENCH_INBOX_DATABASE_URL",
    "postgres://postgres@127.0.0.1:5432/signoff_bench_inbox",
)

# The layout; a change here reseeds.
LAYOUT = {
    "requests": 1_000_000,
    "pending_every": 10,  # 100,000 pending
    "workflows": 20,
    "users": 500,
    "groups": 20,
    "direct_every": 5,  # every fifth request is also assigned to one user directly
    "events_per_pending": 6,
    "version": 3,  # 2: search text and the amount column; 3: words by hash
}
# Words of the titles (request g has one by a hash of g); a search for one matches 1 in 8,
# of bench_u000's requests too.
WORDS = ["taxi", "hotel", "train", "laptop", "conference", "books", "lunch", "flight"]
# A pending request bench_u000 may decide (g a multiple of 200 goes to bench_g00).
RARE_KEY = "BK-0123400"
TARGET = "bench_u000"
log = make_log("inbox")

AIMS = {
    "api_list": 15.0,
    "api_search_word": 30.0,
    "api_search_key": 30.0,
    "html_list": 50.0,
    "html_detail": 50.0,
}


# -- database -----------------------------------------------------------------------------------


def migrate() -> None:
    env = with_secrets(
        dict(os.environ, DATABASE_URL=DB_URL, DJANGO_SETTINGS_MODULE="config.settings")
    )
    # --skip-checks: the start-up check for unregistered definitions in use would count the
    # open instances of every bench workflow (registered only in this process) and fail.
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--skip-checks", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def setup_django() -> None:
    os.environ["DATABASE_URL"] = DB_URL
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    with_secrets(os.environ)
    import django

    django.setup()
    from django.test.utils import setup_test_environment

    # ALLOWED_HOSTS gets "testserver", DEBUG stays off (no query log), mail stays in memory.
    setup_test_environment(debug=False)


def register_workflows() -> None:
    """The 20 bench workflows: one approval step ``approve`` for a group."""
    from approvals.definitions import Show, approval
    from orchestration.definitions import Workflow, registry

    for i in range(LAYOUT["workflows"]):
        name = f"bench_wf_{i:02d}"
        if registry.get(name, 1) is not None:
            continue
        wf = Workflow(name, version=1, description="inbox benchmark")
        approval(
            wf,
            "approve",
            groups=[f"bench_g{i:02d}"],
            title="Expense {input[n]}",
            show=[Show("Amount", "input.amount", column=True)],
        )
        registry.register(wf)


# -- seed ---------------------------------------------------------------------------------------


def _other_columns(model: Any, explicit: list[str]) -> tuple[list[str], list[str], list[Any]]:
    """Every concrete column of ``model`` that the seed does not set, as SQL placeholders
    with the model's default (cast to the column type) and their parameters."""
    from django.db import connection
    from django.db.models import NOT_PROVIDED
    from django.db.models.fields import AutoFieldMixin

    columns, placeholders, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.column in explicit or isinstance(field, AutoFieldMixin):
            continue
        if getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED:
            continue  # the database fills it
        value = field.get_default()
        if value is None and not field.null:
            raise SystemExit(
                f"{model.__name__}.{field.name} is required and has no default: "
                "teach bench/inbox.py a value for it"
            )
        columns.append(connection.ops.quote_name(field.column))
        placeholders.append(f"%s::{field.db_type(connection)}")
        params.append(field.get_db_prep_save(value, connection))
    return columns, placeholders, params


def insert_select(model_or_table: Any, values: dict[str, str], source: str) -> int:
    """``INSERT INTO <table> (<columns>) SELECT <expressions> FROM <source>``; columns not in
    ``values`` get the model's default."""
    from django.db import connection

    if isinstance(model_or_table, str):
        table, extra = model_or_table, ([], [], [])
    else:
        table = model_or_table._meta.db_table
        extra = _other_columns(model_or_table, list(values))
    params = extra[2]
    columns = [connection.ops.quote_name(c) for c in values] + extra[0]
    # With parameters, a literal % (SQL's modulo) must be doubled.
    expressions = [e.replace("%", "%%") if params else e for e in values.values()] + extra[1]
    sql = (
        f"INSERT INTO {connection.ops.quote_name(table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(expressions)} FROM {source}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params or None)
        return cursor.rowcount


def seed_matches() -> bool:
    from django.db import connection

    from approvals.models import ApprovalRequest

    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('bench_inbox_seed') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return False
        cursor.execute("SELECT layout FROM bench_inbox_seed")
        row = cursor.fetchone()
    if row is None:
        return False
    layout = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    if layout != LAYOUT:
        return False
    return ApprovalRequest.objects.count() == LAYOUT["requests"]


def seed() -> dict[str, Any]:
    """Empty the workflow and approval tables and write the layout (see the module doc)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection, transaction

    from approvals.models import ApprovalRequest, Decision
    from orchestration.models import Event, StepRun, WorkflowInstance

    User = get_user_model()  # noqa: N806
    began = time.monotonic()
    n = LAYOUT["requests"]
    groups_n, users_n = LAYOUT["groups"], LAYOUT["users"]
    per_group = users_n // groups_n
    tables = [
        "approvals_decision",
        "approvals_approvalrequest_assignee_users",
        "approvals_approvalrequest_assignee_groups",
        "approvals_actiontoken",
        "approvals_delegation",
        "approvals_approvalrequest",
        "orchestration_event",
        "orchestration_steprun",
        "orchestration_workflowinstance",
        "authtoken_token",
        "django_session",
        "auth_user_groups",
        "auth_user",
        "auth_group",
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        present = {r[0] for r in cursor.fetchall()}
        wipe = [t for t in tables if t in present]
        log("emptying " + ", ".join(wipe))
        cursor.execute(f"TRUNCATE {', '.join(wipe)} RESTART IDENTITY CASCADE")
        cursor.execute("DROP TABLE IF EXISTS bench_inbox_seed")

    groups = Group.objects.bulk_create(Group(name=f"bench_g{i:02d}") for i in range(groups_n))
    users = User.objects.bulk_create(
        User(username=f"bench_u{i:03d}", email=f"bench_u{i:03d}@example.com", password="!")
        for i in range(users_n)
    )
    Membership = User.groups.through  # noqa: N806
    Membership.objects.bulk_create(
        Membership(user_id=u.pk, group_id=groups[i % groups_n].pk) for i, u in enumerate(users)
    )
    user_ids = [u.pk for u in users]
    group_ids = [g.pk for g in groups]

    with transaction.atomic(), connection.cursor() as cursor:
        # Rows are consistent by construction; skip the per-row foreign key triggers.
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("SET LOCAL work_mem = '256MB'")
        log("layout")
        # One row per request: which group, workflow, requester, decider, state, time.
        # Pending requests go round the groups; the rest hash. g counts from 1.
        cursor.execute(
            """
            CREATE UNLOGGED TABLE bench_inbox_layout AS
            SELECT g,
                   pending,
                   grp,
                   abs(hashtext('w' || g)) %% %(workflows)s AS wf,
                   (%(users)s::int[])[
                       (abs(hashtext('r' || g)) %% %(per_group)s) * %(groups)s
                       + (grp + 1) %% %(groups)s + 1] AS requester_id,
                   (%(users)s::int[])[
                       (abs(hashtext('d' || g)) %% %(per_group)s) * %(groups)s + grp + 1
                   ] AS decider_id,
                   (%(group_ids)s::int[])[grp + 1] AS group_id,
                   abs(hashtext('u' || g)) %% %(direct_every)s = 0 AS direct,
                   CASE WHEN pending THEN 'pending'
                        WHEN s < 70 THEN 'approved'
                        WHEN s < 90 THEN 'rejected'
                        WHEN s < 95 THEN 'expired'
                        ELSE 'cancelled' END AS state,
                   now() - interval '366 days' + g * interval '30 seconds' AS created_at,
                   md5('bench-instance-' || g)::uuid AS instance_id
            FROM (
                SELECT g,
                       g %% %(pending_every)s = 0 AS pending,
                       CASE WHEN g %% %(pending_every)s = 0
                            THEN (g / %(pending_every)s) %% %(groups)s
                            ELSE abs(hashtext('g' || g)) %% %(groups)s END AS grp,
                       abs(hashtext('s' || g)) %% 100 AS s
                FROM generate_series(1, %(n)s) AS g
            ) AS base
            """,
            {
                "n": n,
                "pending_every": LAYOUT["pending_every"],
                "groups": groups_n,
                "per_group": per_group,
                "workflows": LAYOUT["workflows"],
                "direct_every": LAYOUT["direct_every"],
                "users": user_ids,
                "group_ids": group_ids,
            },
        )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        source = "bench_inbox_layout"
        log("instances")
        insert_select(
            WorkflowInstance,
            {
                "id": "instance_id",
                "workflow": "'bench_wf_' || lpad(wf::text, 2, '0')",
                "version": "1",
                "state": "CASE state WHEN 'pending' THEN 'running' WHEN 'approved' THEN "
                "'succeeded' WHEN 'cancelled' THEN 'cancelled' ELSE 'failed' END",
                "input": "jsonb_build_object('n', g, 'amount', g % 5000)",
                "business_key": "'BK-' || lpad(g::text, 7, '0')",
                "started_by_id": "requester_id",
                "created_at": "created_at",
                "started_at": "created_at",
                "finished_at": "CASE WHEN pending THEN NULL "
                "ELSE created_at + interval '1 hour' END",
                "updated_at": "created_at + interval '1 hour'",
                "last_seq": f"CASE WHEN pending THEN {LAYOUT['events_per_pending']} ELSE 0 END",
            },
            source,
        )
        log("step runs")
        insert_select(
            StepRun,
            {
                "id": "g",
                "instance_id": "instance_id",
                "name": "'approve'",
                "kind": "'approval'",
                "position": "0",
                "state": "CASE state WHEN 'pending' THEN 'waiting' WHEN 'approved' THEN "
                "'succeeded' WHEN 'cancelled' THEN 'cancelled' ELSE 'failed' END",
                "attempt": "1",
                "scheduled_at": "created_at",
                "started_at": "created_at",
                "finished_at": "CASE WHEN pending THEN NULL "
                "ELSE created_at + interval '1 hour' END",
            },
            source,
        )
        log("approval requests")
        insert_select(
            ApprovalRequest,
            {
                "id": "g",
                "step_run_id": "g",
                "instance_id": "instance_id",
                "workflow": "'bench_wf_' || lpad(wf::text, 2, '0')",
                "business_key": "'BK-' || lpad(g::text, 7, '0')",
                "step_name": "'approve'",
                "title": "'Expense ' || g || ': ' || (g % 5000) || ' EUR for ' || "
                f"(ARRAY{WORDS!r})[abs(hashtext('t' || g)) % {len(WORDS)} + 1]",
                "fields": "jsonb_build_array("
                "jsonb_build_object('label', 'Amount', 'value', g % 5000, 'column', 'amount'), "
                "jsonb_build_object('label', 'Currency', 'value', 'EUR'), "
                "jsonb_build_object('label', 'Description', 'value', 'bench item ' || g))",
                # approvals.models.search_document: title, key, requester, field values.
                "search_text": "lower('Expense ' || g || ': ' || (g % 5000) || ' EUR for ' || "
                f"(ARRAY{WORDS!r})[abs(hashtext('t' || g)) % {len(WORDS)} + 1] "
                "|| ' BK-' || lpad(g::text, 7, '0') "
                "|| ' ' || (SELECT username FROM auth_user WHERE id = requester_id) || ' ' || "
                "(g % 5000) || ' EUR bench item ' || g)",
                "columns": "jsonb_build_object('amount', g % 5000)",
                "policy": "'any'",
                "quorum": "1",
                "state": "state",
                "requester_id": "requester_id",
                "created_at": "created_at",
                "due_at": "created_at + interval '2 days'",
                "resolved_at": "CASE WHEN pending THEN NULL "
                "ELSE created_at + interval '1 hour' END",
            },
            source,
        )
        log("assignments")
        insert_select(
            "approvals_approvalrequest_assignee_groups",
            {"approvalrequest_id": "g", "group_id": "group_id"},
            source,
        )
        insert_select(
            "approvals_approvalrequest_assignee_users",
            {"approvalrequest_id": "g", "user_id": "decider_id"},
            f"{source} WHERE direct",
        )
        log("decisions")
        insert_select(
            Decision,
            {
                "request_id": "g",
                "assignee_id": "decider_id",
                "decided_by_id": "decider_id",
                "via_group_id": "group_id",
                "outcome": "CASE state WHEN 'approved' THEN 'approve' ELSE 'reject' END",
                "comment": "CASE state WHEN 'approved' THEN '' ELSE 'over budget' END",
                "channel": "'web'",
                "at": "created_at + interval '1 hour'",
            },
            f"{source} WHERE state IN ('approved', 'rejected')",
        )
        log("history of pending instances")
        events = [
            ("instance_started", "NULL", "'{}'::jsonb"),
            ("step_scheduled", "'approve'", "'{}'::jsonb"),
            ("step_started", "'approve'", "'{}'::jsonb"),
            ("step_waiting", "'approve'", "'{}'::jsonb"),
            (
                "approval_requested",
                "'approve'",
                "jsonb_build_object('groups', jsonb_build_array('bench_g' || "
                "lpad(grp::text, 2, '0')), 'policy', 'any')",
            ),
            ("instance_running", "NULL", "'{}'::jsonb"),
        ][: LAYOUT["events_per_pending"]]
        for seq, (kind, step, data) in enumerate(events, start=1):
            insert_select(
                Event,
                {
                    "instance_id": "instance_id",
                    "seq": str(seq),
                    "type": f"'{kind}'",
                    "step": step,
                    "attempt": "1",
                    "actor": "'system'",
                    "data": data,
                    "at": f"created_at + interval '{seq} seconds'",
                },
                f"{source} WHERE pending",
            )
        cursor.execute("DROP TABLE bench_inbox_layout")
        # Explicit ids: move the sequences past them.
        for model in (StepRun, ApprovalRequest):
            table = model._meta.db_table
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        cursor.execute("CREATE TABLE bench_inbox_seed (layout jsonb NOT NULL)")
        cursor.execute("INSERT INTO bench_inbox_seed VALUES (%s::jsonb)", [json.dumps(LAYOUT)])
    log("vacuum analyze")
    with connection.cursor() as cursor:
        for table in [
            "orchestration_workflowinstance",
            "orchestration_steprun",
            "orchestration_event",
            "approvals_approvalrequest",
            "approvals_approvalrequest_assignee_groups",
            "approvals_approvalrequest_assignee_users",
            "approvals_decision",
            "auth_user",
            "auth_user_groups",
            "auth_group",
        ]:
            cursor.execute(f"VACUUM ANALYZE {table}")
    return {"seconds": round(time.monotonic() - began, 1)}


def counts() -> dict[str, int]:
    from django.contrib.auth import get_user_model

    from approvals import selectors
    from approvals.models import ApprovalRequest, Decision

    target = get_user_model().objects.get(username=TARGET)
    return {
        "requests": ApprovalRequest.objects.count(),
        "pending": ApprovalRequest.objects.filter(state="pending").count(),
        "workflows": ApprovalRequest.objects.values("workflow").distinct().count(),
        "users": get_user_model().objects.filter(username__startswith="bench_u").count(),
        "decisions": Decision.objects.count(),
        "target_decided": selectors.decided_by(target).count(),
    }


# -- timing -------------------------------------------------------------------------------------


def measure(client: Any, path_for: Callable[[int], str], count: int, warmup: int) -> dict[str, Any]:
    for i in range(warmup):
        response = client.get(path_for(i))
    times, cpu, queries, statuses = [], [], [], set()
    for i in range(count):
        path = path_for(i)
        counted = [0]
        with counting_queries(counted):
            began, began_cpu = time.perf_counter(), time.thread_time()
            response = client.get(path)
            elapsed, elapsed_cpu = time.perf_counter() - began, time.thread_time() - began_cpu
        times.append(elapsed * 1000)
        cpu.append(elapsed_cpu * 1000)
        queries.append(counted[0])
        statuses.add(response.status_code)
    return {
        "n": count,
        "p50_ms": round(percentile(times, 50), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "min_ms": round(min(times), 2),
        "mean_ms": round(statistics.fmean(times), 2),
        "max_ms": round(max(times), 2),
        # This process's CPU only (Python: Django, DRF, templates, psycopg); PostgreSQL's
        # time and waiting for a core are not in it.
        "python_cpu_p50_ms": round(percentile(cpu, 50), 2),
        "queries": sorted(set(queries)),
        "status": sorted(statuses),
        "example": path_for(0),
    }


def explain(name: str, qs: Any) -> dict[str, Any]:
    from django.db import connection

    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", params)
        plan = [row[0] for row in cursor.fetchall()]
    text = "\n".join(plan)
    execution = next(
        (float(line.split(":")[1].split()[0]) for line in plan if "Execution Time" in line),
        None,
    )
    planning = next(
        (float(line.split(":")[1].split()[0]) for line in plan if "Planning Time" in line),
        None,
    )
    return {
        "name": name,
        "uses_pending_index": "approval_pending_created" in text,
        "seq_scans": [line.strip() for line in plan if "Seq Scan" in line],
        "execution_ms": execution,
        "planning_ms": planning,
        "plan": plan,
    }


def run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db.models import Q
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from approvals import selectors
    from approvals.api.views import approval_list
    from approvals.models import ApprovalRequest

    user = get_user_model().objects.get(username=TARGET)
    token, _ = Token.objects.get_or_create(user=user)
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    html = Client()
    html.force_login(user)

    results: dict[str, Any] = {}
    notes: list[str] = []
    counted = {
        "target_may_decide": selectors.decidable_by(user).count(),
        "target_may_see": selectors.visible_to(user).count(),
    }
    log(f"[{mode}] " + ", ".join(f"{k} {v:,}" for k, v in counted.items()))

    first = api.get("/api/v1/approvals/").json()
    pending_ids = [r["id"] for r in first["results"]]
    page2 = first["next"]
    more = api.get("/api/v1/approvals/", {"page_size": 200}).json()["results"]
    detail_ids = [r["id"] for r in more][: args.count]

    def timed(name: str, client: Any, path_for: Callable[[int], str]) -> None:
        log(f"[{mode}] timing {name}")
        results[name] = measure(client, path_for, args.count, args.warmup)

    timed("api_list", api, lambda i: "/api/v1/approvals/")
    timed("api_list_page2", api, lambda i: page2)
    timed("api_list_workflow", api, lambda i: "/api/v1/approvals/?workflow=bench_wf_07")
    timed("api_list_decided", api, lambda i: "/api/v1/approvals/?state=decided")
    timed("api_list_all", api, lambda i: "/api/v1/approvals/?state=all")
    timed("api_detail", api, lambda i: f"/api/v1/approvals/{detail_ids[i % len(detail_ids)]}/")
    timed("api_search_word", api, lambda i: f"/api/v1/approvals/?search={WORDS[i % len(WORDS)]}")
    timed("api_search_key", api, lambda i: f"/api/v1/approvals/?search={RARE_KEY}")
    timed("api_search_miss", api, lambda i: "/api/v1/approvals/?search=zzqx")
    # The worst case: a word in 2,000 requests (bench_u005 asked for them) and in none of the
    # requests bench_u000 may decide, so the walk of the pending index finds no match.
    timed("api_search_elsewhere", api, lambda i: "/api/v1/approvals/?search=bench_u005")
    timed("api_search_all", api, lambda i: "/api/v1/approvals/?state=all&search=hotel")

    probe_list = html.get("/inbox/")
    if probe_list.status_code == 200:
        timed("html_list", html, lambda i: "/inbox/")
    else:
        notes.append(f"HTML list skipped: GET /inbox/ answered {probe_list.status_code}")
    timed("html_search", html, lambda i: f"/inbox/?q={WORDS[i % len(WORDS)]}")
    timed("html_sort_amount", html, lambda i: "/inbox/?sort=-col.amount")
    probe_detail = html.get(f"/inbox/{pending_ids[0]}/")
    if probe_detail.status_code == 200:
        timed("html_detail", html, lambda i: f"/inbox/{detail_ids[i % len(detail_ids)]}/")
    else:
        notes.append(
            f"HTML detail skipped: GET /inbox/{pending_ids[0]}/ answered {probe_detail.status_code}"
        )
    for note in notes:
        log(note)

    log(f"[{mode}] explain")
    ordering = ("-created_at", "-id")
    pending_qs = approval_list(user=user, state="pending", workflow=None, business_key=None)
    last = pending_qs.order_by(*ordering)[49]
    # request_for's query, as it is built (the selector only adds .first()).
    detail_qs = ApprovalRequest.objects.filter(pk=detail_ids[0]).filter(
        selectors._visible(user, selectors.principal_ids(user)) | Q(requester_id=user.pk)
    )
    plans = [
        explain("pending_first_page", pending_qs.order_by(*ordering)[:51]),
        explain(
            "pending_second_page",
            pending_qs.filter(created_at__lt=last.created_at).order_by(*ordering)[:51],
        ),
        explain(
            "pending_workflow_filter",
            approval_list(
                user=user, state="pending", workflow="bench_wf_07", business_key=None
            ).order_by(*ordering)[:51],
        ),
        explain("decided_first_page", selectors.decided_by(user).order_by(*ordering)[:51]),
        # state=all pages by id (CreationOrderPagination).
        explain("all_first_page", selectors.visible_to(user).order_by("-id")[:51]),
        explain("detail_request_for", detail_qs.order_by("pk")[:1]),
    ]
    return {"counts": counted, "timings": results, "explain": plans, "notes": notes}


# -- report -------------------------------------------------------------------------------------


def render_mode(mode: str, measured: dict[str, Any]) -> list[str]:
    lines = [
        f"[{mode}] "
        + ", ".join(f"{k} {v:,}" for k, v in measured["counts"].items())
        + f"  load {measured['load_before']} → {measured['load_after']}",
        f"{'page':20} {'p50 ms':>8} {'p99 ms':>8} {'min':>7} {'max':>8} {'cpu p50':>8} "
        f"{'queries':>8}  aim",
    ]
    for name, t in measured["timings"].items():
        aim = AIMS.get(name)
        verdict = ""
        if aim is not None:
            verdict = f"p50 ≤ {aim:g} ms: {'met' if t['p50_ms'] <= aim else 'MISSED'}"
        queries = ",".join(map(str, t["queries"]))
        status = "" if t["status"] == [200] else f"  status {t['status']}"
        lines.append(
            f"{name:20} {t['p50_ms']:8.2f} {t['p99_ms']:8.2f} {t['min_ms']:7.2f} "
            f"{t['max_ms']:8.2f} {t['python_cpu_p50_ms']:8.2f} {queries:>8}  {verdict}{status}"
        )
    lines.append("EXPLAIN ANALYZE of the main query (execution, planning):")
    for plan in measured["explain"]:
        lines.append(
            f"  {plan['name']:24} {plan['execution_ms']:9.3f} ms {plan['planning_ms']:7.3f} ms"
            f"  pending index: {'yes' if plan['uses_pending_index'] else 'no '}"
            + (f"  seq scans: {len(plan['seq_scans'])}" if plan["seq_scans"] else "")
        )
    lines += [f"  note: {note}" for note in measured["notes"]]
    return lines


def summarise(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows ``make bench`` shows (bench/run.py)."""
    counts = report["counts"]
    measured = report["modes"]["current"]
    timings = measured["timings"]
    rows = [
        row(
            "approval requests / pending",
            f"{counts.get('requests', 0):,} / {counts.get('pending', 0):,}",
            note=f"{report['target_user']} may decide {measured['counts']['target_may_decide']:,}",
        )
    ]
    labels = {
        "api_list": "API list (pending, first page)",
        "api_list_page2": "API list, second page",
        "api_detail": "API detail",
        "api_search_word": "API text search, a word in 1 of 8",
        "api_search_key": "API text search, one business key",
        "api_search_miss": "API text search, no match",
        "api_search_elsewhere": "API text search, matching only others' requests",
        "api_search_all": "API text search, state=all",
        "html_list": "HTML inbox list",
        "html_search": "HTML inbox search",
        "html_sort_amount": "HTML inbox by amount column",
        "html_detail": "HTML inbox detail",
    }
    for name, label in labels.items():
        t = timings.get(name)
        if t is None:
            rows.append(row(f"{label}: not measured", "", ok=False))
            continue
        queries = "/".join(map(str, t["queries"]))
        aim = AIMS.get(name)
        note = f"{queries} queries, p99 {t['p99_ms']:.1f} ms, CPU {t['python_cpu_p50_ms']:.1f} ms"
        if aim is None:
            rows.append(row(f"{label} p50", t["p50_ms"], "ms", note=note))
        else:
            rows.append(goal_row(f"{label} p50", t["p50_ms"], "ms", "<=", aim, note=note))
    plan = measured["explain"][0]
    rows.append(
        row(
            "pending list SQL (EXPLAIN ANALYZE)",
            plan["execution_ms"],
            "ms",
            note="walks approval_pending_created" if plan["uses_pending_index"] else "NO INDEX",
        )
    )
    return rows


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Signoff inbox benchmark  {report['finished_at']}  ({report['environment']['cpus']} "
        "cores shared with other work: noisy)",
        "data: " + ", ".join(f"{k} {v:,}" for k, v in report["counts"].items()),
        "times: server side, in process; cpu = this process's CPU only",
    ]
    for mode, measured in report["modes"].items():
        lines += ["", *render_mode(mode, measured)]
    first_mode = next(iter(report["modes"].values()))
    lines += ["", "pending_first_page plan:"]
    lines += ["  " + line for line in first_mode["explain"][0]["plan"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("inbox", __doc__, log)
    parser = bench.parser
    parser.add_argument("--count", type=int, default=50, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reseed", action="store_true", help="seed even if the seed matches")
    parser.add_argument(
        "--requests",
        type=int,
        default=LAYOUT["requests"],
        help="approval rows to seed (a tenth pending); other sizes reseed",
    )
    args = bench.parse(argv)
    LAYOUT["requests"] = args.requests

    ensure_database(DB_URL, log)
    log("migrate")
    migrate()
    setup_django()
    register_workflows()

    if args.reseed or not seed_matches():
        log("seeding (a few minutes)")
        seeded = {"reused": False, **seed()}
        log(f"seeded in {seeded['seconds']} s")
    else:
        seeded = {"reused": True}
        log("seed present, reused")
    data = counts()
    log("data: " + ", ".join(f"{k} {v:,}" for k, v in data.items()))

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server = cursor.fetchone()[0]
    measured: dict[str, Any] = {}
    load_before = loadavg()
    measured["current"] = run(args, "current")
    measured["current"]["load_before"] = load_before
    measured["current"]["load_after"] = loadavg()
    report = {
        "finished_at": finished_at(),
        "layout": LAYOUT,
        "target_user": TARGET,
        "seed": seeded,
        "counts": data,
        "aims_p50_ms": AIMS,
        "modes": measured,
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server,
            "database": db_name(DB_URL),
            "client": "django.test.Client in process (no HTTP server, no network)",
        },
        "duration_s": bench.seconds(),
    }
    bench.finish(report, render, summarise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
