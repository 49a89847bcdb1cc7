"""Fan-out benchmark: items/s of a map step (1,000 and 5,000 items at concurrency 10 and 50),
and where its transactions wait for locks.

Run it with ``.venv/bin/python bench/fanout.py`` (``--quick``: 1,000 items only). It needs
PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379, database 10 as the broker (override
with ``SIGNOFF_BENCH_FANOUT_DATABASE_URL`` / ``SIGNOFF_BENCH_FANOUT_REDIS_URL``). It creates the
database ``signoff_bench_fanout`` when missing, migrates it, starts a Celery worker (prefork,
``--processes`` 4) with ``bench.fanout_workflows``, prints one table and writes
``bench/results/fanout.json``.

What is measured, per case (items N, concurrency C): one instance of ``bench_map_c<C>`` over
``range(N)`` (the item function returns its item: no work of its own). *Items/s* is N over the
map step's own time (``started_at`` to ``finished_at``); *ms per item* its inverse. While it
runs, a sampler reads ``pg_stat_activity`` every 5 ms: of the samples in which a worker's
statement was active, the share that waited on a lock (``wait_event_type = 'Lock'``), split by
the table the waiting statement touches: the instance row (``orchestration_workflowinstance``),
the step's run row (``orchestration_maprun``), item rows (``orchestration_mapitem``). The
design's claim is that no shared row is locked per item (the instance row is locked to start
and to settle the step): those shares should be ~0, whatever N. Also counted: the worker's CPU
per item (main + pool processes) and the events the step wrote.

Noise: 2 cores shared with PostgreSQL, Redis, the worker and whatever else runs. The load
average is recorded; compare runs taken under similar load.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BenchRun,
    ServiceProcess,
    cpu_seconds,
    db_name,
    empty_workflow_tables,
    make_log,
    root_pythonpath,
    row,
    setup_bench_django,
    wait_until,
    with_secrets,
    worker_answers,
)
from orchestration.worker import worker_command  # noqa: E402

DB_URL = os.environ.get(
    "SIGNOFF_BENCH_FANOUT_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signoff_bench_fanout"
)
REDIS_URL = os.environ.get("SIGNOFF_BENCH_FANOUT_REDIS_URL", "redis://127.0.0.1:6379/10")
WORKFLOW_MODULES = "bench.fanout_workflows"
log = make_log("fanout")
TABLES = {
    "orchestration_workflowinstance": "instance row",
    "orchestration_maprun": "run row",
    "orchestration_mapitem": "item rows",
}


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": DB_URL,
            "CELERY_BROKER_URL": REDIS_URL,
            "SIGNOFF_WORKFLOW_MODULES": WORKFLOW_MODULES,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONPATH": root_pythonpath(env),
        }
    )
    env.setdefault("LOG_LEVEL", "WARNING")
    return with_secrets(env)


class Worker(ServiceProcess):
    what = "the worker"

    def __init__(self, env: dict[str, str], processes: int, log_path: Path) -> None:
        super().__init__(env, log_path)
        self.processes = processes
        self.name = f"fanout-{os.getpid()}-{time.monotonic_ns()}@localhost"

    def command(self) -> list[str]:
        return worker_command(
            queues="signoff", concurrency=self.processes, hostname=self.name, loglevel="WARNING"
        )

    def start(self) -> None:
        self.spawn(lambda: worker_answers(self.name))


class LockSampler(threading.Thread):
    """Samples ``pg_stat_activity`` of the bench database every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_flag = threading.Event()
        self.active = 0
        self.waits: Counter[str] = Counter()
        self.samples = 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(DB_URL, autocommit=True) as conn:
            while not self.stop_flag.is_set():
                rows = conn.execute(
                    "SELECT wait_event_type, query FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid() AND state = 'active'",
                    (db_name(DB_URL),),
                ).fetchall()
                self.samples += 1
                for wait_type, query in rows:
                    self.active += 1
                    if wait_type == "Lock":
                        table = next((t for t in TABLES if t in (query or "")), "other")
                        self.waits[TABLES.get(table, "other")] += 1
                time.sleep(self.interval)

    def stop(self) -> dict[str, Any]:
        self.stop_flag.set()
        self.join()
        share = {
            name: round(100 * self.waits.get(name, 0) / self.active, 2) if self.active else 0.0
            for name in [*TABLES.values(), "other"]
        }
        return {"samples": self.samples, "active": self.active, "lock_wait_pct": share}


def run_case(n: int, concurrency: int, worker: Worker) -> dict[str, Any]:
    from orchestration import engine
    from orchestration.fanout_models import MapItem
    from orchestration.models import Event, StepRun, WorkflowInstance

    sampler = LockSampler()
    sampler.start()
    cpu_before = cpu_seconds(worker.pids())
    began = time.monotonic()
    instance, _ = engine.instance_start(workflow=f"bench_map_c{concurrency}", input={"n": n})
    wait_until(
        lambda: WorkflowInstance.objects.filter(pk=instance.pk, state="succeeded").exists(),
        timeout=600,
        what=f"{n} items at concurrency {concurrency}",
        interval=0.1,
    )
    wall = time.monotonic() - began
    cpu = cpu_seconds(worker.pids()) - cpu_before
    locks = sampler.stop()
    step = StepRun.objects.get(instance=instance, name="each")
    seconds = (step.finished_at - step.started_at).total_seconds()
    assert step.output == list(range(n)), "outputs out of order"
    retried = MapItem.objects.filter(step_run=step, attempt__gt=1).count()
    events = Event.objects.filter(instance=instance).count()
    result = {
        "items": n,
        "concurrency": concurrency,
        "map_seconds": round(seconds, 3),
        "wall_seconds": round(wall, 3),
        "items_per_s": round(n / seconds, 1),
        "ms_per_item": round(1000 * seconds / n, 3),
        "items_retried": retried,
        "worker_cpu_ms_per_item": round(1000 * cpu / n, 2),
        "events": events,
        **locks,
    }
    log(
        f"{n} items, concurrency {concurrency}: {result['items_per_s']} items/s, "
        f"lock waits {locks['lock_wait_pct']} % of active samples, {events} events"
    )
    return result


def render(report: dict[str, Any]) -> str:
    lines = [
        "",
        f"Fan-out (map steps)  {report['finished_at']}  worker processes {report['processes']}",
        "items  conc  items/s  ms/item  worker CPU ms/item  events  "
        "lock waits (% of active DB samples): instance / run / items / other",
    ]
    for case in report["cases"]:
        w = case["lock_wait_pct"]
        lines.append(
            f"{case['items']:>5}  {case['concurrency']:>4}  {case['items_per_s']:>7}  "
            f"{case['ms_per_item']:>7}  {case['worker_cpu_ms_per_item']:>18}  "
            f"{case['events']:>6}  "
            f"{w['instance row']} / {w['run row']} / {w['item rows']} / {w['other']}"
        )
    return "\n".join(lines) + "\n"


def summarise(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for case in report["cases"]:
        label = f"{case['items']:,} items at concurrency {case['concurrency']}"
        rows.append(row(f"map: {label}", case["items_per_s"], "items/s"))
        instance_share = case["lock_wait_pct"]["instance row"]
        rows.append(
            row(
                f"map: {label}, instance-row lock waits",
                instance_share,
                "% of DB samples",
                goal="<= 1",
                ok=instance_share <= 1,
                note=f"run row {case['lock_wait_pct']['run row']} %",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("fanout", __doc__, log)
    bench.parser.add_argument("--quick", action="store_true", help="1,000 items only")
    bench.parser.add_argument("--processes", type=int, default=4, help="worker processes")
    args = bench.parse(argv)
    env = bench_env()
    setup_bench_django(env, DB_URL, log)
    empty_workflow_tables()
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    worker = Worker(env, args.processes, ROOT / "var" / "bench-fanout-worker.log")
    worker.start()
    cases = []
    try:
        for n in (1000,) if args.quick else (1000, 5000):
            for concurrency in (10, 50):
                cases.append(run_case(n, concurrency, worker))
    finally:
        worker.stop()
    report = {"processes": args.processes, "cases": cases, **bench.machine_report()}
    bench.stamp(report)
    bench.finish(report, render, summarise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
