"""The PostgreSQL floor: what one commit costs on this server, measured with ``pgbench``.

Run it with ``.venv/bin/python bench/floor.py`` (``make bench`` runs it first). It needs
``pgbench`` (Debian's ``postgresql-client``; it ships with the server package here) and
PostgreSQL on 127.0.0.1:5432 (override with ``SIGNOFF_BENCH_FLOOR_DATABASE_URL``). It creates
the database ``signoff_bench_floor`` when missing and initialises pgbench's tables in it
(scale 1: 100,000 accounts) on every run, prints one table and writes
``bench/results/floor.json``.

Every figure of the other benchmarks is a sum of round trips and commits to this server, so
this is the physical limit to read them against:

- **round trip**: ``SELECT 1`` from one client, no transaction: the network and protocol cost
  of one statement (``-M prepared``, as psycopg's prepared statements would).
- **single-row commit**: one client, one ``UPDATE pgbench_accounts ... WHERE aid = random``
  per transaction in autocommit, so each statement is its own transaction and waits for its
  WAL flush. Its p50 is the least time any durable state change can take here; the engine's
  steps take two of them (claim, complete) at least.
- **single-row insert commit**: the same with an ``INSERT`` of a row shaped like an event
  (bigint, int, text, jsonb, timestamptz) into an unlogged-free, indexed table.
- **commits/s at 8 clients**: the same UPDATE from 8 connections (pgbench ``-c 8 -j 2``):
  the most single-row transactions per second this server takes, which caps every
  throughput figure (the engine writes about 2 commits per step).

Latencies are per transaction, from pgbench's own log (``-l``: the time from sending to the
reply in microseconds), so p50 and p99 are exact order statistics, not averages. Each phase
runs ``--seconds`` (default 10, ``--quick`` 3).

The server's durability settings (``fsync``, ``synchronous_commit``, ``wal_sync_method``,
``full_page_writes``) are recorded: a floor measured with ``synchronous_commit=off`` is not a
floor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BenchRun,
    admin_url,
    create_database,
    db_name,
    make_log,
    pct,
    row,
)

DB_URL = os.environ.get(
    "SIGNOFF_BENCH_FLOOR_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signoff_bench_floor"
)

SCRIPTS = {
    "round_trip": "SELECT 1;\n",
    "update_commit": (
        "\\set aid random(1, 100000)\n"
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n"
    ),
    "insert_commit": (
        "\\set n random(1, 1000000000)\n"
        "INSERT INTO bench_floor_event (instance, seq, type, data, at) "
        "VALUES (:n, :client_id, 'step_succeeded', '{\"output\": 1}', now());\n"
    ),
}


log = make_log("floor")


def conninfo() -> list[str]:
    parts = urlsplit(DB_URL)
    return [
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 5432),
        "-U",
        parts.username or "postgres",
        db_name(DB_URL),
    ]


def ensure_database() -> dict[str, str]:
    """Create the database when missing; return the server's durability settings."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url(DB_URL), autocommit=True, connect_timeout=5) as conn:
        create_database(conn, db_name(DB_URL), log)
        settings = {}
        for setting in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "full_page_writes",
            "shared_buffers",
        ):
            settings[setting] = conn.execute(
                sql.SQL("SHOW {}").format(sql.Identifier(setting))
            ).fetchone()[0]
    with psycopg.connect(DB_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_floor_event")
        conn.execute(
            "CREATE TABLE bench_floor_event (id bigserial PRIMARY KEY, instance bigint NOT NULL,"
            " seq int NOT NULL, type text NOT NULL, data jsonb NOT NULL,"
            " at timestamptz NOT NULL)"
        )
        conn.execute("CREATE INDEX ON bench_floor_event (instance, seq)")
    return settings


def pgbench(*args: str) -> str:
    found = subprocess.run(
        ["pgbench", *args], capture_output=True, text=True, timeout=600, check=False
    )
    if found.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{found.stderr[-2000:]}")
    return found.stdout + found.stderr


def run_script(name: str, clients: int, seconds: float) -> dict[str, Any]:
    """Run one script; latencies from pgbench's per-transaction log."""
    with tempfile.TemporaryDirectory(prefix="signoff-floor-") as tmp:
        script = Path(tmp) / f"{name}.sql"
        script.write_text(SCRIPTS[name])
        prefix = str(Path(tmp) / "log")
        output = pgbench(
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(max(1, round(seconds))),
            "-f",
            str(script),
            "-l",
            f"--log-prefix={prefix}",
            *conninfo(),
        )
        latencies_us: list[int] = []
        for path in Path(tmp).glob("log.*"):
            for line in path.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies_us.append(int(fields[2]))
    tps = next(
        (
            float(line.split("=")[1].split()[0])
            for line in output.splitlines()
            if line.startswith("tps =")
        ),
        float("nan"),
    )
    ms_ = [v / 1000 for v in latencies_us]
    points = pct(ms_, 50, 95, 99)
    return {
        "clients": clients,
        "seconds": seconds,
        "transactions": len(latencies_us),
        "tps": round(tps, 1),
        "latency_ms": {k: round(v, 3) for k, v in points.items()},
    }


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    rt, up, ins, many = (
        results["round_trip"],
        results["update_commit"],
        results["insert_commit"],
        results["update_commit_8"],
    )
    settings = results["settings"]
    durable = settings["fsync"] == "on" and settings["synchronous_commit"] in ("on", "remote_apply")
    return [
        row(
            "PostgreSQL round trip (SELECT 1) p50 / p99",
            f"{rt['latency_ms']['p50']:.3f} / {rt['latency_ms']['p99']:.3f}",
            "ms",
            note="1 client",
        ),
        row(
            "single-row commit (UPDATE) p50 / p99",
            f"{up['latency_ms']['p50']:.3f} / {up['latency_ms']['p99']:.3f}",
            "ms",
            note=f"fsync {settings['fsync']}, synchronous_commit {settings['synchronous_commit']}",
        ),
        row(
            "single-row commit (INSERT event-shaped) p50 / p99",
            f"{ins['latency_ms']['p50']:.3f} / {ins['latency_ms']['p99']:.3f}",
            "ms",
        ),
        row("single-row commits/s, 1 client", up["tps"], "tx/s"),
        row("single-row commits/s, 8 clients", many["tps"], "tx/s", note="caps every throughput"),
        row(
            "durable commits (fsync on, synchronous_commit on)",
            "yes" if durable else "NO",
            goal="yes",
            ok=durable,
            note="else the floor is not a floor",
        ),
    ]


def render(results: dict[str, Any]) -> str:
    lines = [
        f"PostgreSQL floor  {results['finished_at']}  "
        f"server {results['settings']['server_version']}"
        f"  load {results['loadavg_before']} -> {results['loadavg_after']}",
    ]
    for r in results["summary"]:
        lines.append(f"  {r['measure']:<52} {r['value']!s:>18} {r['unit']:<5} {r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    run = BenchRun("floor", __doc__, log)
    run.parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    run.parser.add_argument("--quick", action="store_true", help="3 s per phase")
    args = run.parse(argv)
    if args.quick:
        args.seconds = 3.0
    if shutil.which("pgbench") is None:
        print("pgbench is not installed (apt-get install -y postgresql-client)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"loadavg_before": run.load_before}
    results["settings"] = ensure_database()
    log("pgbench -i (scale 1)")
    pgbench("-i", "-q", "-s", "1", *conninfo())
    for name, clients in (
        ("round_trip", 1),
        ("update_commit", 1),
        ("insert_commit", 1),
        ("update_commit_8", 8),
    ):
        log(f"{name}: {clients} client(s), {args.seconds:g} s")
        results[name] = run_script(name.removesuffix("_8"), clients, args.seconds)
    results.update(run.machine_report())
    run.stamp(results)
    run.finish(results, render, summarise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
