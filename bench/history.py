"""History benchmark: the partitioned event table with 50,000,000 events against an empty one.

Run it with ``.venv/bin/python bench/history.py`` (``--help`` for the knobs). It needs
PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (db 11 as the doorbells' broker; the
in-process run sends its doorbells to a queue no worker reads, then deletes it). Two databases:
``signoff_bench_history`` (seeded once, reused: the seed is recorded in ``bench_history_seed``
and resumed chunk by chunk if interrupted) and ``signoff_bench_history_empty`` (migrated, its
workflow tables emptied before each run). Override them with ``SIGNOFF_BENCH_HISTORY_URL`` /
``SIGNOFF_BENCH_HISTORY_EMPTY_URL``.

The seed (inside PostgreSQL, ``generate_series``): ``--events`` events (default 50,000,000) of
``--events-per-instance`` (50) each, so 1,000,000 finished ``bench_noop3_local`` instances
created evenly over the last two years, their events one second apart from the instance's
creation, in the partitions :mod:`orchestration.history_partitions` creates for those months
(25 monthly partitions of about 2,000,000 events). The foreign-key checks are skipped for the
load (``session_replication_role = replica``); the ids come from the table's own identity.
Time here: see README ("History that scales"); disk about 12 GB.

What is measured, the same way on both databases, each in its own process, in ``--rounds`` (3)
alternating rounds (empty, seeded, empty, ...); the figures are the medians of the rounds':

- start: ``engine.instance_start`` of ``bench_noop3_local`` (three task steps), ``--count``
  times one after another, in this process (no worker): wall ms per start.
- step: the claim and the completion transactions of each of its steps, run in this process as
  ``bench/engine.py`` does: wall ms per step (claim + complete).
- history page: ``GET /api/v1/instances/{id}/history/`` through Django's test client as a
  superuser, for the instances just run (about 10 events each: the same shape on both tables),
  and, on the seeded table, for random seeded instances (50 events each, spread over two years:
  mostly cold pages).
- the history query's plan (``EXPLAIN``): every partition read through an index, no Seq Scan.

Noise: 2 cores shared with PostgreSQL and whatever else runs; the load average is recorded.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ROOT,
    BenchRun,
    make_log,
    pct,
    root_pythonpath,
    row,
    with_secrets,
)

log = make_log("history")
SEEDED_URL = os.environ.get(
    "SIGNOFF_BENCH_HISTORY_URL", "postgres://postgres@127.0.0.1:5432/signoff_bench_history"
)
EMPTY_URL = os.environ.get(
    "SIGNOFF_BENCH_HISTORY_EMPTY_URL",
    "postgres://postgres@127.0.0.1:5432/signoff_bench_history_empty",
)
REDIS_URL = os.environ.get("SIGNOFF_BENCH_HISTORY_REDIS_URL", "redis://127.0.0.1:6379/11")
WORKFLOW = "bench_noop3_local"
CHUNK_INSTANCES = 20_000
SPAN_DAYS = 730


def bench_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": REDIS_URL,
            "SIGNOFF_WORKFLOW_MODULES": "demo.workflows,bench.workflows",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONPATH": root_pythonpath(env),
            "LOG_LEVEL": "WARNING",
        }
    )
    return with_secrets(env)


def setup(url: str) -> None:
    from bench.common import setup_bench_django

    setup_bench_django(bench_env(url), url, log)


# -- the seed ------------------------------------------------------------------------------------


def seed(events: int, per_instance: int) -> dict[str, Any]:
    """Seed the history database (resumable); returns what is there."""
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from orchestration import history_partitions

    instances = events // per_instance
    chunks = (instances + CHUNK_INSTANCES - 1) // CHUNK_INSTANCES
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS bench_history_seed (chunk int PRIMARY KEY, "
            "instances int, per_instance int, anchor timestamptz, seconds float)"
        )
        cursor.execute(
            "SELECT min(anchor), max(instances), max(per_instance) FROM bench_history_seed"
        )
        anchor, had_instances, had_per = cursor.fetchone()
        if anchor is not None and (had_instances, had_per) != (instances, per_instance):
            raise SystemExit(
                f"the seed there is {had_instances} x {had_per}: drop the database to re-seed"
            )
        anchor = anchor or timezone.now()
        cursor.execute("SELECT chunk FROM bench_history_seed")
        done = {r[0] for r in cursor.fetchall()}
    history_partitions.create_partitions(anchor - timedelta(days=SPAN_DAYS + 1), anchor)
    history_partitions.ensure_partitions_ahead(now=anchor)
    for chunk in range(chunks):
        if chunk in done:
            continue
        lo = chunk * CHUNK_INSTANCES + 1
        hi = min(instances, (chunk + 1) * CHUNK_INSTANCES)
        began = time.monotonic()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute(
                """
                INSERT INTO orchestration_workflowinstance (id, workflow, version, state, input,
                    output, business_key, request_hash, created_at, started_at, finished_at,
                    updated_at, last_seq, trace_context)
                SELECT md5('h' || i)::uuid, %(wf)s, 1, 'succeeded', '{"seeded": true}',
                    '{}', 'seed-' || i, '', t, t, t + interval '1 minute',
                    t + interval '1 minute', %(per)s, ''
                FROM (SELECT i, %(anchor)s::timestamptz - %(span)s * interval '1 day'
                             * (1 - i::float8 / %(n)s) AS t
                      FROM generate_series(%(lo)s, %(hi)s) i) s
                """,
                {
                    "wf": WORKFLOW,
                    "per": per_instance,
                    "anchor": anchor,
                    "span": SPAN_DAYS,
                    "n": instances,
                    "lo": lo,
                    "hi": hi,
                },
            )
            cursor.execute(
                """
                INSERT INTO orchestration_event (seq, type, step, attempt, actor, data, at,
                    instance_id)
                SELECT s, CASE WHEN s = 1 THEN 'instance_started' WHEN s = %(per)s
                    THEN 'instance_succeeded' ELSE 'step_succeeded' END,
                    CASE WHEN s IN (1, %(per)s) THEN NULL ELSE 'step' || (s %% 7) END,
                    CASE WHEN s IN (1, %(per)s) THEN NULL ELSE 1 END, 'system',
                    jsonb_build_object('n', s), t + s * interval '1 second', md5('h' || i)::uuid
                FROM (SELECT i, %(anchor)s::timestamptz - %(span)s * interval '1 day'
                             * (1 - i::float8 / %(n)s) AS t
                      FROM generate_series(%(lo)s, %(hi)s) i) s0,
                     generate_series(1, %(per)s) s
                ORDER BY i, s
                """,
                {
                    "per": per_instance,
                    "anchor": anchor,
                    "span": SPAN_DAYS,
                    "n": instances,
                    "lo": lo,
                    "hi": hi,
                },
            )
            cursor.execute(
                "INSERT INTO bench_history_seed VALUES (%s, %s, %s, %s, %s)",
                [chunk, instances, per_instance, anchor, time.monotonic() - began],
            )
        log(f"seed chunk {chunk + 1}/{chunks}: {hi} instances, {time.monotonic() - began:.1f} s")
    with connection.cursor() as cursor:
        if len(done) < chunks:
            log("VACUUM ANALYZE")
            cursor.execute("VACUUM ANALYZE orchestration_event")
            cursor.execute("VACUUM ANALYZE orchestration_workflowinstance")
        cursor.execute("SELECT sum(seconds), count(*) FROM bench_history_seed")
        seconds, n = cursor.fetchone()
        cursor.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'orchestration_event'::regclass"
        )
        parts = cursor.fetchone()[0]
        cursor.execute(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'orchestration_event'::regclass"
        )
        size = cursor.fetchone()[0]
    return {
        "events": n * CHUNK_INSTANCES * per_instance if n < chunks else instances * per_instance,
        "instances": instances,
        "per_instance": per_instance,
        "seed_seconds": round(seconds or 0, 1),
        "partitions": parts,
        "event_table_gb": round(float(size or 0) / 1e9, 2),
    }


# -- the measurement ---------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in pct(values, 50, 90, 99).items()}


def retention_check() -> dict[str, float]:
    """Seconds the partition sweeper's check takes on the oldest seeded partition: when every
    instance in it may go (the whole partition is read) and when the first one read blocks it.
    Nothing is dropped (the check only; the seed is kept)."""
    from datetime import timedelta

    from django.utils import timezone

    from orchestration import history_partitions

    oldest = history_partitions.partitions()[0]
    figures = {}
    for label, cutoff in (
        ("all_may_go", timezone.now()),
        ("blocked", oldest.lo - timedelta(days=1)),
    ):
        began = time.perf_counter()
        blocker = history_partitions._blocking_instance(oldest.name, [(WORKFLOW, 1, cutoff)])
        figures[label] = round(time.perf_counter() - began, 3)
        assert (blocker is None) == (label == "all_may_go")
    return figures


def measure(count: int, seeded: int) -> dict[str, Any]:
    """Start, step and history-page costs on the database this process is set up on."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from bench.workflows import LOCAL_QUEUE, bench_redis
    from orchestration import engine
    from orchestration.models import Event, StepRun, WorkflowInstance

    WorkflowInstance.objects.filter(input__contains={"bench_history_run": True}).delete()
    warmup = 5
    starts, steps, instances = [], [], []
    for i in range(warmup + count):
        began = time.perf_counter()
        instance, _ = engine.instance_start(workflow=WORKFLOW, input={"bench_history_run": True})
        if i >= warmup:
            starts.append(time.perf_counter() - began)
        instances.append(instance)
    for i, instance in enumerate(instances):
        for name in ("one", "two", "three"):
            step = StepRun.objects.only("id", "attempt").get(instance=instance, name=name)
            began = time.perf_counter()
            claimed = engine.step_claim(step_run_id=step.pk, attempt=step.attempt)
            assert claimed is not None
            output = claimed.spec.fn(claimed.context)
            engine.step_complete(step_run_id=step.pk, attempt=step.attempt, output=output)
            if i >= warmup:
                steps.append(time.perf_counter() - began)
    bench_redis().delete(LOCAL_QUEUE)

    user, _ = get_user_model().objects.get_or_create(
        username="bench_history", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)

    def page(pk: Any) -> float:
        began = time.perf_counter()
        response = client.get(f"/api/v1/instances/{pk}/history/")
        took = time.perf_counter() - began
        assert response.status_code == 200, response.status_code
        return took

    for instance in instances[:warmup]:
        page(instance.pk)
    fresh = [page(instance.pk) for instance in instances[warmup:]]
    report: dict[str, Any] = {
        "start_ms": _ms(starts),
        "step_ms": _ms(steps),
        "history_fresh_ms": _ms(fresh),
        "events_per_fresh_instance": Event.objects.filter(instance=instances[-1]).count(),
    }
    if seeded:
        import uuid
        from hashlib import md5

        rng = random.Random(7)
        picks = [
            uuid.UUID(md5(f"h{rng.randint(1, seeded)}".encode()).hexdigest()) for _ in range(count)
        ]
        report["history_seeded_ms"] = _ms([page(pk) for pk in picks])
        sql, params = (
            Event.objects.filter(instance_id=picks[0]).order_by("seq").query.sql_with_params()
        )
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
            plan = [r[0] for r in cursor.fetchall()]
        report["history_plan"] = plan
        report["seq_scans_in_plan"] = sum("Seq Scan" in line for line in plan)
        # PostgreSQL reads an empty partition (the periods ahead, the default one) with a Seq
        # Scan of no page; what must never happen is a Seq Scan of a partition with rows.
        seq_scanned = [
            line.split("Seq Scan on ")[1].split()[0] for line in plan if "Seq Scan on " in line
        ]
        with connection.cursor() as cursor:
            with_rows = []
            for name in seq_scanned:
                cursor.execute(
                    f"SELECT EXISTS (SELECT 1 FROM ONLY {connection.ops.quote_name(name)})"
                )
                if cursor.fetchone()[0]:
                    with_rows.append(name)
        report["seq_scans_of_partitions_with_rows"] = len(with_rows)
        report["planning_ms"] = next(
            float(x.split()[2]) for x in plan if x.startswith("Planning Time")
        )
        report["execution_ms"] = next(
            float(x.split()[2]) for x in plan if x.startswith("Execution")
        )
        report["retention_check_s"] = retention_check()
        report["index_scans_in_plan"] = sum(
            ("Index Scan" in line or "Index Only Scan" in line) for line in plan
        )
    WorkflowInstance.objects.filter(input__contains={"bench_history_run": True}).delete()
    return report


# -- the run -----------------------------------------------------------------------------------


def child(args: list[str], url: str) -> dict[str, Any]:
    """Run this script with ``args`` in its own process on ``url``; its last line is JSON."""
    out = subprocess.run(
        [sys.executable, __file__, *args],
        env=bench_env(url),
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    for line in lines[:-1]:
        print(line, flush=True)
    return json.loads(lines[-1])


def render(report: dict[str, Any]) -> str:
    lines = ["", f"History benchmark ({report['finished_at']}, load {report['loadavg_before']})"]
    seed_info = report["seed"]
    lines.append(
        f"seed: {seed_info['events']:,} events, {seed_info['instances']:,} instances, "
        f"{seed_info['partitions']} partitions, {seed_info['event_table_gb']} GB, "
        f"seeded in {seed_info['seed_seconds']} s"
    )
    lines.append(f"{'measure':40} {'empty p50':>10} {'seeded p50':>11} {'seeded p90':>11}")
    for key, label in (
        ("start_ms", "start (ms)"),
        ("step_ms", "step: claim + complete (ms)"),
        ("history_fresh_ms", "history page, just-run instance (ms)"),
    ):
        lines.append(
            f"{label:40} {report['empty'][key]['p50']:>10} {report['seeded'][key]['p50']:>11} "
            f"{report['seeded'][key]['p90']:>11}   rounds: {report['empty'][key]['rounds_p50']} "
            f"vs {report['seeded'][key]['rounds_p50']}"
        )
    seeded = report["seeded"]
    lines.append(
        f"{'history page, random seeded (ms)':40} {'-':>10} "
        f"{seeded['history_seeded_ms']['p50']:>11} {seeded['history_seeded_ms']['p90']:>11}"
    )
    lines.append(
        f"history plan: {seeded['index_scans_in_plan']} index scans, "
        f"{seeded['seq_scans_in_plan']} seq scans ("
        f"{seeded['seq_scans_of_partitions_with_rows']} of partitions with rows); planning "
        f"{seeded['planning_ms']} ms, execution {seeded['execution_ms']} ms"
    )
    lines.append(
        "retention check of one partition (s): every instance may go "
        f"{seeded['retention_check_s']['all_may_go']}, blocked "
        f"{seeded['retention_check_s']['blocked']}"
    )
    lines.extend("  " + line for line in seeded["history_plan"][:16])
    return "\n".join(lines)


def summarise(report: dict[str, Any]) -> list[dict[str, Any]]:
    empty, seeded = report["empty"], report["seeded"]
    rows = []
    for key, label in (
        ("start_ms", "start"),
        ("step_ms", "step"),
        ("history_fresh_ms", "history page"),
    ):
        a, b = empty[key]["p50"], seeded[key]["p50"]
        rows.append(
            row(
                f"{label} p50, 50M events vs empty",
                f"{b} vs {a}",
                "ms",
                goal="within 25 % (noise)",
                ok=b <= a * 1.25 + 0.5,
            )
        )
    rows.append(
        row(
            "history plan: seq scans of partitions with rows",
            seeded["seq_scans_of_partitions_with_rows"],
            "",
            goal="0",
            ok=seeded["seq_scans_of_partitions_with_rows"] == 0,
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--child-seed", "--child-measure"):
        url = os.environ["DATABASE_URL"]
        setup(url)
        if argv[0] == "--child-seed":
            print(json.dumps(seed(int(argv[1]), int(argv[2]))))
        else:
            print(json.dumps(measure(int(argv[1]), int(argv[2]))))
        return 0
    run = BenchRun("history", __doc__, log)
    run.parser.add_argument("--events", type=int, default=50_000_000)
    run.parser.add_argument("--events-per-instance", type=int, default=50)
    run.parser.add_argument("--count", type=int, default=200, help="starts and pages measured")
    run.parser.add_argument("--rounds", type=int, default=3, help="alternating measurements")
    run.parser.add_argument("--seed-only", action="store_true", help="seed, measure nothing")
    args = run.parse(argv)
    log(f"seeding {SEEDED_URL.rsplit('/', 1)[1]} (once; resumed if interrupted)")
    seed_info = child(["--child-seed", str(args.events), str(args.events_per_instance)], SEEDED_URL)
    report: dict[str, Any] = {"seed": seed_info, **run.machine_report()}
    if args.seed_only:
        print(json.dumps(seed_info, indent=2))
        return 0
    # Alternating rounds (empty, seeded, empty, seeded...): the load other processes put on
    # the 2 cores moves; the figures are the median of the rounds' p50s (each round listed).
    rounds: dict[str, list[dict[str, Any]]] = {"empty": [], "seeded": []}
    for n in range(args.rounds):
        log(f"round {n + 1}/{args.rounds}: the empty table")
        rounds["empty"].append(child(["--child-measure", str(args.count), "0"], EMPTY_URL))
        log(f"round {n + 1}/{args.rounds}: the seeded table")
        rounds["seeded"].append(
            child(["--child-measure", str(args.count), str(seed_info["instances"])], SEEDED_URL)
        )
    report["rounds"] = rounds
    for side, results in rounds.items():
        merged = dict(results[-1])
        for key in ("start_ms", "step_ms", "history_fresh_ms", "history_seeded_ms"):
            if key in merged:
                merged[key] = {
                    p: round(statistics.median(r[key][p] for r in results), 3) for p in merged[key]
                }
                merged[key]["rounds_p50"] = [r[key]["p50"] for r in results]
        report[side] = merged
    report.update(run.machine_report())
    run.stamp(report)
    run.finish(report, render, summarise)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
