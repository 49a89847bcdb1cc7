"""The peer inside the bench: DBOS Transact doing bench/engine.py's workload on the same machine.

Run it with ``make bench`` (phase ``peers``) or ``.venv/bin/python bench/peers.py``
(``--quick``: a fifth of every count, as engine's). It needs the bench-only extra:
``.venv/bin/pip install '.[bench]'`` (or just ``'dbos>=3.4,<3.5'``); without it, this script
says so in its one summary row and exits 0, so the rest of ``make bench`` still runs. It uses
PostgreSQL on 127.0.0.1:5432 (override with ``SIGNOFF_BENCH_DBOS_URL``), in its own database
``signoff_bench_dbos``, dropped and recreated at every run; DBOS creates its system tables
there on launch. No Celery, no Redis: DBOS runs workflows in this process's threads,
checkpointing each step to PostgreSQL.

Workflow: ``noop3``, three no-op ``@DBOS.step`` functions one after another, as Signoff's
``bench_noop3``. Each step notes ``time.time()`` at its first and last statement in a dict of
this process (nothing is written by the step itself besides DBOS's own checkpoint).

(a) sequential: ``--sequential`` workflows (after 10 for warm-up) called one after another in
    this thread (a direct call runs the workflow to completion). Workflows/s (first call to
    last return) and the **step gap** (first statement of step N+1 − last statement of step N,
    steps two and three), Signoff's "step gap p50 (fn end -> next fn start)".
(b) queued: ``--queued`` workflows enqueued at once on a DBOS queue (no concurrency limit,
    polled every ``--polling`` s, 0.01 s; DBOS's default, 1 s, held it to about 40 wf/s
    here) and waited for; completed workflows/s from the first enqueue to the last result,
    Signoff's "completed 3-step workflows/s (1000 at once)".
(c) enqueue: ``--enqueues`` single enqueues one after another, in this process, each timed
    (p50, p99): the peer's figure beside Signoff's "start in-process, no HTTP: p50"
    (bench/api.py).

``bench/run.py`` prints, for each comparable row, Signoff's figure, this one and the ratio.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import os  # noqa: E402

from bench.common import (  # noqa: E402
    BenchRun,
    admin_url,
    db_name,
    make_log,
    pct,
    row,
)

log = make_log("peers")

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/signoff_bench_dbos"
INSTALL_HINT = "pip install '.[bench]' (dbos>=3.4,<3.5)"

# Measures bench/run.py matches (by prefix) against Signoff's rows; keep them in step.
SEQUENTIAL_WFS = "peer: sequential 3-step workflows/s"
STEP_GAP_P50 = "peer: step gap p50 (fn end -> next fn start)"
QUEUED_WFS = "peer: completed 3-step workflows/s"
ENQUEUE_P50 = "peer: enqueue one workflow in-process p50"


def dbos_version() -> str | None:
    """The installed DBOS Transact version, or None when the extra is not installed."""
    try:
        import importlib.metadata

        import dbos  # noqa: F401

        return importlib.metadata.version("dbos")
    except ImportError:
        return None


def recreate_database(url: str) -> None:
    """Drop and recreate the peer's database (its connections ended first)."""
    import psycopg
    from psycopg import sql

    name = db_name(url)
    with psycopg.connect(
        admin_url(url).replace("postgresql://", "postgres://", 1), autocommit=True
    ) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log(f"database {name} recreated")


def measure(args: Any, url: str) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    stamps: dict[tuple[str, int], tuple[float, float]] = {}
    lock = threading.Lock()

    def note(step: int, t0: float) -> None:
        t1 = time.time()
        workflow_id = DBOS.workflow_id or ""
        with lock:
            stamps[(workflow_id, step)] = (t0, t1)

    @DBOS.step()
    def one() -> None:
        note(1, time.time())

    @DBOS.step()
    def two() -> None:
        note(2, time.time())

    @DBOS.step()
    def three() -> None:
        note(3, time.time())

    @DBOS.workflow()
    def noop3(n: int) -> int:
        one()
        two()
        three()
        return n

    config: DBOSConfig = {
        "name": "signoff-bench-peer",
        "system_database_url": url,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        queue = DBOS.register_queue("bench", polling_interval_sec=args.polling)

        # (a) sequential
        for i in range(10):
            with SetWorkflowID(f"warm-{i}"):
                noop3(i)
        ids = [f"seq-{i}" for i in range(args.sequential)]
        began = time.perf_counter()
        for i, workflow_id in enumerate(ids):
            with SetWorkflowID(workflow_id):
                noop3(i)
        sequential_s = time.perf_counter() - began
        gaps = [(stamps[(w, s + 1)][0] - stamps[(w, s)][1]) * 1000 for w in ids for s in (1, 2)]
        log(f"sequential: {args.sequential} in {sequential_s:.2f} s")

        # (b) queued, all at once
        began = time.perf_counter()
        handles = [queue.enqueue(noop3, i) for i in range(args.queued)]
        enqueued_s = time.perf_counter() - began
        for handle in handles:
            handle.get_result()
        queued_s = time.perf_counter() - began
        log(f"queued: {args.queued} in {queued_s:.2f} s (enqueued in {enqueued_s:.2f} s)")

        # (c) single enqueues, each timed, then waited for
        times: list[float] = []
        handles = []
        for i in range(args.enqueues):
            t = time.perf_counter()
            handles.append(queue.enqueue(noop3, i))
            times.append((time.perf_counter() - t) * 1000)
            time.sleep(0.002)
        for handle in handles:
            handle.get_result()
    finally:
        DBOS.destroy(destroy_registry=True)
    return {
        "sequential": {
            "workflows": args.sequential,
            "seconds": round(sequential_s, 3),
            "workflows_per_s": args.sequential / sequential_s,
            "step_gap_ms": pct(gaps, 50, 95, 99),
        },
        "queued": {
            "workflows": args.queued,
            "seconds": round(queued_s, 3),
            "enqueue_phase_s": round(enqueued_s, 3),
            "workflows_per_s": args.queued / queued_s,
            "polling_interval_s": args.polling,
        },
        "enqueue_ms": pct(times, 50, 95, 99),
    }


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows ``make bench`` shows (bench/run.py pairs them with Signoff's)."""
    version = results.get("dbos_version")
    if not version:
        return [row("DBOS Transact", "not installed", note=f"skipped; {INSTALL_HINT}")]
    seq, queued = results["sequential"], results["queued"]
    return [
        row("peer: DBOS Transact", version, note="same machine and PostgreSQL, in-process"),
        row(
            f"{SEQUENTIAL_WFS} ({seq['workflows']} one by one)",
            seq["workflows_per_s"],
            "wf/s",
        ),
        row(STEP_GAP_P50, seq["step_gap_ms"]["p50"], "ms"),
        row("peer: step gap p99", seq["step_gap_ms"]["p99"], "ms"),
        row(
            f"{QUEUED_WFS} ({queued['workflows']} at once)",
            queued["workflows_per_s"],
            "wf/s",
            note=f"queue polled every {queued['polling_interval_s']:g} s",
        ),
        row(ENQUEUE_P50, results["enqueue_ms"]["p50"], "ms"),
    ]


def render(results: dict[str, Any]) -> str:
    lines = ["", f"DBOS Transact {results.get('dbos_version') or '(not installed)'}"]
    for r in results["summary"]:
        lines.append(f"  {r['measure']:<55} {r['value']!s:>12} {r['unit']}  {r['note']}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("peers", __doc__, log)
    parser = bench.parser
    parser.add_argument("--sequential", type=int, default=200, help="workflows one by one")
    parser.add_argument("--queued", type=int, default=1000, help="workflows enqueued at once")
    parser.add_argument("--enqueues", type=int, default=200, help="single enqueues timed")
    parser.add_argument("--polling", type=float, default=0.01, help="queue polling interval, s")
    parser.add_argument("--quick", action="store_true", help="a fifth of every count (as engine)")
    args = bench.parse(argv)
    if args.quick:
        args.sequential, args.queued, args.enqueues = (
            max(n // 5, 10) for n in (args.sequential, args.queued, args.enqueues)
        )
    results: dict[str, Any] = {"dbos_version": dbos_version()}
    if results["dbos_version"] is None:
        log(f"DBOS Transact is not installed: the peers phase is skipped ({INSTALL_HINT})")
    else:
        url = os.environ.get("SIGNOFF_BENCH_DBOS_URL", DEFAULT_URL)
        recreate_database(url)
        results.update(measure(args, url))
    results.update(bench.machine_report())
    bench.stamp(results)
    bench.finish(results, render, summarise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
