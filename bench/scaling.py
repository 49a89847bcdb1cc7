"""What one start and one step cost the primary: WAL bytes, commits, PostgreSQL backend CPU
and this process's CPU (the web or worker side), measured in-process on the bench database
(README, "Scaling out"). Prints its figures.

    .venv/bin/python bench/scaling.py [--count 100]

PostgreSQL CPU is the CPU time of this connection's own backend process (``/proc/<pid>/stat``
of ``pg_backend_pid()``: the server is on this machine), so other clients of the server do not
count. WAL bytes are ``pg_current_wal_insert_lsn()`` deltas around each operation: they are
cluster-wide, so concurrent writers elsewhere add to some samples; the median and the minimum
are printed (the minimum is the operation alone). Commits come from ``pg_stat_database`` of
the bench database around the whole batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.engine import DB_URL, bench_env, log, reset_state, setup_bench_django  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(count: int) -> dict[str, Any]:
    from django.db import connection

    from bench.workflows import NOOP3_LOCAL
    from orchestration import engine
    from orchestration.models import StepRun

    def lsn() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
            return int(cursor.fetchone()[0])

    def commits() -> int:
        # A backend reports its counters at most once a second: read them from a fresh
        # connection after this one has gone.
        connection.close()
        time.sleep(1.5)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
            return int(cursor.fetchone()[0])

    def backend() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    for _ in range(5):  # warm-up
        engine.instance_start(workflow=NOOP3_LOCAL, input={})
    wal: dict[str, list[int]] = {"start": [], "step": []}
    totals: dict[str, dict[str, float]] = {}

    def timed(op: str, fn: Any) -> Any:
        w0 = lsn()
        result = fn()
        wal[op].append(lsn() - w0)
        return result

    def batch(op: str, work: Any) -> Any:
        c0 = commits()
        pid = backend()
        a0, p0 = time.process_time(), backend_cpu(pid)
        result = work()
        a1, p1 = time.process_time(), backend_cpu(pid)
        c1 = commits()
        totals[op] = {"commits": c1 - c0 - 2, "cpu_app": a1 - a0, "cpu_pg": p1 - p0}
        return result

    instances = batch(
        "start",
        lambda: [
            timed("start", lambda: engine.instance_start(workflow=NOOP3_LOCAL, input={})[0])
            for _ in range(count)
        ],
    )

    def run_steps() -> int:
        ran = 0
        for instance in instances:
            for name in ("one", "two", "three"):
                step = StepRun.objects.only("id", "attempt").get(instance=instance, name=name)

                def run(step: StepRun = step) -> None:
                    claimed = engine.step_claim(step_run_id=step.pk, attempt=step.attempt)
                    output = claimed.spec.fn(claimed.context)
                    engine.step_complete(step_run_id=step.pk, attempt=step.attempt, output=output)

                timed("step", run)
                ran += 1
        return ran

    steps = batch("step", run_steps)
    # Measuring statements are transactions too: two LSN reads per operation, one step lookup
    # per step, the backend pid per batch. CPU includes them (small: a SELECT of a function).
    summary: dict[str, Any] = {
        "count": count,
        "commits_per_start": (totals["start"]["commits"] - 2 * count - 1) / count,
        "commits_per_step_unchained": (totals["step"]["commits"] - 3 * steps - 1) / steps,
    }
    for op, n in (("start", count), ("step", steps)):
        summary[f"{op}_wal_median"] = statistics.median(wal[op])
        summary[f"{op}_wal_min"] = min(wal[op])
        summary[f"{op}_cpu_app_median"] = totals[op]["cpu_app"] * 1000 / n
        summary[f"{op}_cpu_pg_median"] = totals[op]["cpu_pg"] * 1000 / n
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="instances started and run")
    args = parser.parse_args(argv)
    env = bench_env("config.settings")
    setup_bench_django(env, DB_URL, log)
    reset_state()
    figures = measure(args.count)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} (1 min)")
    print(f"{figures['count']} starts, {figures['count'] * 3} steps (claim + complete, unchained)")
    print(
        f"commits: {figures['commits_per_start']:.2f} a start, "
        f"{figures['commits_per_step_unchained']:.2f} a step when not chained"
    )
    for op in ("start", "step"):
        print(
            f"{op}: WAL {figures[f'{op}_wal_median']:,.0f} B median "
            f"({figures[f'{op}_wal_min']:,.0f} B min); "
            f"CPU this process {figures[f'{op}_cpu_app_median']:.2f} ms, "
            f"PostgreSQL backend {figures[f'{op}_cpu_pg_median']:.2f} ms (means over the batch)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
