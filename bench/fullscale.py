"""Full-scale benchmark: the engine and start figures on full tables beside empty ones.

Run it with ``.venv/bin/python bench/fullscale.py`` (``--help`` for the knobs). Two databases:
``signoff_bench_full`` (seeded once inside PostgreSQL and reused; ``--reseed`` rebuilds it) and
``signoff_bench_empty`` (its workflow tables emptied by each run). Override them with
``SIGNOFF_BENCH_FULL_URL`` / ``SIGNOFF_BENCH_EMPTY_URL``; the broker (Redis db 12, flushed by
each run) with ``SIGNOFF_BENCH_FULL_REDIS_URL``.

The seed (``INSERT ... SELECT generate_series``, like bench/history.py): ``--instances``
(default 1,000,000) finished three-step instances (business key ``fullseed-N``), their three
succeeded steps, and ``--events`` (default 20,000,000) events spread evenly over them, created
over the last two years so the events land in the monthly partitions that
:mod:`orchestration.history_partitions` creates first. ``bench_fullscale_seed`` records the seed;
a run finding it complete (same sizes) skips the seeding. bench/common.py's
``empty_workflow_tables`` keeps the seed there and deletes only what runs added.

Then bench/engine.py and bench/api.py run unchanged, each against the empty database and then
the full one (``SIGNOFF_BENCH_DATABASE_URL``), and a side-by-side table shows the engine figures
(completed three-step workflows/s, step gap p50, worker CPU per step) and the start figures
(in-process start p50, API start p50 at 1 client) with the difference in % (goal: within 10 %).
Report: ``bench/results/fullscale.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import BenchRun, make_log, root_pythonpath, with_secrets  # noqa: E402

FULL_URL = os.environ.get(
    "SIGNOFF_BENCH_FULL_URL", "postgres://postgres@127.0.0.1:5432/signoff_bench_full"
)
EMPTY_URL = os.environ.get(
    "SIGNOFF_BENCH_EMPTY_URL", "postgres://postgres@127.0.0.1:5432/signoff_bench_empty"
)
REDIS_URL = os.environ.get("SIGNOFF_BENCH_FULL_REDIS_URL", "redis://127.0.0.1:6379/12")
RESULTS = ROOT / "bench" / "results"
CHUNK = 50_000
SPAN_DAYS = 730
GOAL_PCT = 10.0
log = make_log("fullscale")

# (label, script, path in its JSON report, True when higher is better)
FIGURES: list[tuple[str, str, tuple[str, ...], bool]] = [
    ("completed 3-step workflows/s", "engine", ("throughput", "workflows_per_s"), True),
    ("step gap p50 (ms)", "engine", ("latency", "step_gap_ms", "p50"), False),
    ("worker CPU per step (ms)", "engine", ("throughput", "worker_cpu_ms_per_step"), False),
    ("start in-process p50 (ms)", "engine", ("inprocess", "start_ms", "p50"), False),
    ("API start, 1 client p50 (ms)", "api", ("single", "latency_ms", "p50"), False),
    ("API start in-process p50 (ms)", "api", ("inprocess", "ms", "p50"), False),
    ("API start, 50 clients: starts/s", "api", ("clients", "requests_per_s"), True),
    ("batch start, 2 clients: inst/s", "api", ("batch", "two_clients", "instances_per_s"), True),
]


def figure(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The number at ``path`` of a report (a dict of numbers is summed: CPU per process)."""
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, dict):
        value = sum(v for v in value.values() if isinstance(v, (int, float)))
    return float(value) if isinstance(value, (int, float)) else None


def compare(
    empty: dict[str, dict[str, Any]], full: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per figure: empty, full, the difference in % (positive: full is worse) and
    whether it is within the goal. ``empty``/``full`` map script name to its JSON report."""
    rows = []
    for label, script, path, higher_better in FIGURES:
        a = figure(empty.get(script, {}), path)
        b = figure(full.get(script, {}), path)
        worse = None
        if a is not None and b is not None and a > 0:
            change = (b - a) / a * 100
            worse = round(-change if higher_better else change, 1)
        rows.append(
            {
                "measure": label,
                "empty": a,
                "full": b,
                "worse_pct": worse,
                "ok": None if worse is None else worse <= GOAL_PCT,
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    def shown(v: Any) -> str:
        return "–" if v is None else f"{v:g}"

    lines = [
        "| figure | empty tables | full tables | full worse by | within 10 % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ok = "–" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        worse = "–" if r["worse_pct"] is None else f"{r['worse_pct']:+.1f} %"
        lines.append(
            f"| {r['measure']} | {shown(r['empty'])} | {shown(r['full'])} | {worse} | {ok} |"
        )
    return "\n".join(lines)


# -- the seed ------------------------------------------------------------------------------------


def env_for(url: str) -> dict[str, str]:
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


def seed(instances: int, events: int, reseed: bool) -> dict[str, Any]:
    """Seed the full database (resumable chunk by chunk); returns what is there."""
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from orchestration import history_partitions

    per = max(3, events // instances)
    chunks = (instances + CHUNK - 1) // CHUNK
    with connection.cursor() as cursor:
        if reseed:
            cursor.execute("DROP TABLE IF EXISTS bench_fullscale_seed")
            cursor.execute(
                "TRUNCATE orchestration_event, orchestration_steprun, "
                "orchestration_workflowinstance CASCADE"
            )
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS bench_fullscale_seed (chunk int PRIMARY KEY, "
            "instances int, per_instance int, anchor timestamptz, seconds float)"
        )
        cursor.execute(
            "SELECT min(anchor), max(instances), max(per_instance) FROM bench_fullscale_seed"
        )
        anchor, had_n, had_per = cursor.fetchone()
        if anchor is not None and (had_n, had_per) != (instances, per):
            raise SystemExit(f"the seed there is {had_n} x {had_per}: run with --reseed")
        anchor = anchor or timezone.now() - timedelta(days=1)
        cursor.execute("SELECT chunk FROM bench_fullscale_seed")
        done = {r[0] for r in cursor.fetchall()}
    history_partitions.create_partitions(anchor - timedelta(days=SPAN_DAYS + 1), anchor)
    history_partitions.ensure_partitions_ahead()
    params = {"anchor": anchor, "span": SPAN_DAYS, "n": instances, "per": per}
    times = "SELECT i, %(anchor)s::timestamptz - %(span)s * interval '1 day' * (1 - i::float8 / %(n)s) AS t FROM generate_series(%(lo)s, %(hi)s) i"  # noqa: E501
    for chunk in range(chunks):
        if chunk in done:
            continue
        p = dict(params, lo=chunk * CHUNK + 1, hi=min(instances, (chunk + 1) * CHUNK))
        began = time.monotonic()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute(
                f"""
                INSERT INTO orchestration_workflowinstance (id, workflow, version, state, input,
                    output, business_key, request_hash, created_at, started_at, finished_at,
                    updated_at, last_seq, trace_context)
                SELECT md5('f' || i)::uuid, 'bench_noop3', 1, 'succeeded', '{{"seeded": true}}',
                    '{{}}', 'fullseed-' || i, '', t, t, t + interval '1 minute',
                    t + interval '1 minute', %(per)s, ''
                FROM ({times}) s
                """,
                p,
            )
            cursor.execute(
                f"""
                INSERT INTO orchestration_steprun (instance_id, name, kind, position, state,
                    attempt, attempt_base, started_at, finished_at, comp_attempt, comp_base,
                    comp_phase, comp_attempted, output)
                SELECT md5('f' || i)::uuid, (ARRAY['one', 'two', 'three'])[k], 'task', k - 1,
                    'succeeded', 1, 0, t + k * interval '1 second',
                    t + k * interval '1 second', 0, 0, '', false, '{{}}'
                FROM ({times}) s, generate_series(1, 3) k
                """,
                p,
            )
            cursor.execute(
                f"""
                INSERT INTO orchestration_event (seq, type, step, attempt, actor, data, at,
                    instance_id)
                SELECT s, CASE WHEN s = 1 THEN 'instance_started' WHEN s = %(per)s
                    THEN 'instance_succeeded' ELSE 'step_succeeded' END,
                    CASE WHEN s IN (1, %(per)s) THEN NULL ELSE 'step' || (s %% 3) END,
                    CASE WHEN s IN (1, %(per)s) THEN NULL ELSE 1 END, 'system',
                    jsonb_build_object('n', s), t + s * interval '1 second', md5('f' || i)::uuid
                FROM ({times}) s0, generate_series(1, %(per)s) s
                ORDER BY i, s
                """,
                p,
            )
            cursor.execute(
                "INSERT INTO bench_fullscale_seed VALUES (%s, %s, %s, %s, %s)",
                [chunk, instances, per, anchor, time.monotonic() - began],
            )
        log(
            f"seed chunk {chunk + 1}/{chunks}: {p['hi']} instances, "
            f"{time.monotonic() - began:.1f} s"
        )
    with connection.cursor() as cursor:
        if len(done) < chunks:
            log("VACUUM ANALYZE")
            for table in ("event", "steprun", "workflowinstance"):
                cursor.execute(f"VACUUM ANALYZE orchestration_{table}")
        cursor.execute("SELECT sum(seconds) FROM bench_fullscale_seed")
        seconds = cursor.fetchone()[0]
        cursor.execute("SELECT pg_database_size(current_database())")
        size = cursor.fetchone()[0]
    connection.close()
    return {
        "instances": instances,
        "events": instances * per,
        "steps": instances * 3,
        "seed_seconds": round(seconds or 0, 1),
        "database_gb": round(size / 1e9, 2),
    }


def run_script(script: str, url: str, extra: list[str]) -> dict[str, Any]:
    out = RESULTS / f"fullscale-{script}-{'full' if url == FULL_URL else 'empty'}.json"
    env = dict(
        os.environ,
        SIGNOFF_BENCH_DATABASE_URL=url,
        SIGNOFF_BENCH_REDIS_URL=REDIS_URL,
        SIGNOFF_BENCH_API_DATABASE_URL=url,
        SIGNOFF_BENCH_API_REDIS_URL=REDIS_URL,
    )
    command = [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--output", str(out), *extra]
    log(f"{script} on {url.rsplit('/', 1)[-1]}")
    subprocess.run(command, env=env, cwd=ROOT, check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("fullscale", __doc__, log)
    parser = bench.parser
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--reseed", action="store_true", help="rebuild the seed")
    parser.add_argument("--seed-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="engine.py/api.py --quick")
    args = bench.parse(argv)
    from bench.common import setup_bench_django

    setup_bench_django(env_for(FULL_URL), FULL_URL, log)
    results: dict[str, Any] = {"seed": seed(args.instances, args.events, args.reseed)}
    log(f"seed: {results['seed']}")
    if args.seed_only:
        return 0
    extra = ["--quick"] if args.quick else []
    reports: dict[str, dict[str, dict[str, Any]]] = {"empty": {}, "full": {}}
    for script in ("engine", "api"):
        for which, url in (("empty", EMPTY_URL), ("full", FULL_URL)):
            reports[which][script] = run_script(script, url, extra)
    rows = compare(reports["empty"], reports["full"])
    results["rows"] = rows
    results["table"] = render(rows)
    bench.stamp(results)
    bench.output.parent.mkdir(parents=True, exist_ok=True)
    bench.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(results["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
