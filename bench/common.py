"""Small helpers the benchmark scripts share: logging, percentiles, load, the commit, waiting,
the bench databases (create, migrate, empty), free ports, summary rows, child processes and
their environment, and :class:`BenchRun`, the part of every script's ``main()`` that is not its
own (the command line, the clock, the printed table and the JSON report).

Every script in ``bench/`` writes a JSON report whose ``"summary"`` key is a list of rows
(:func:`row`); ``bench/run.py`` (``make bench``) runs the scripts and prints those rows as one
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Outside the embedded default the settings refuse to start without real secrets. The
# benchmarks run on local throwaway databases: fixed bench-only values, the same in every
# process of a run and in every run (the seeds are reused). Never deploy them.
BENCH_SECRETS = {
    "SECRET_KEY": "bench-only-secret-key-for-local-throwaway-databases-0123456789",
    "SIGNOFF_ENCRYPTION_KEYS": "eLbhHaikOK-nDWwKzn2EI6Y9SCue32iRrGwken28_O8=",
}


def with_secrets(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the bench secrets where it has none of its own; returns ``env``."""
    for name, value in BENCH_SECRETS.items():
        if not env.get(name):
            env[name] = value
    return env


def root_pythonpath(env: dict[str, str]) -> str:
    """``env``'s ``PYTHONPATH`` with the project root first, for child processes (a worker,
    gunicorn) that import ``config`` and ``bench``."""
    return os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))


def make_log(prefix: str) -> Callable[[str], None]:
    """A ``log(message)`` that prints ``[prefix HH:MM:SS] message`` and flushes."""

    def log(message: str) -> None:
        print(f"[{prefix} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    return log


def _interpolate(data: list[float], p: float) -> float:
    """Percentile ``p`` of sorted ``data`` (NaN when empty)."""
    if not data:
        return float("nan")
    rank = (len(data) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def percentile(values: list[float], p: float) -> float:
    """One percentile (linear interpolation between closest ranks) in the values' unit; NaN when
    there are no values."""
    return _interpolate(sorted(values), p)


def pct(values: list[float], *points: float) -> dict[str, float]:
    """Percentiles (as :func:`percentile`) keyed ``p50``, ``p99``... in the values' unit."""
    data = sorted(values)
    return {f"p{p:g}": _interpolate(data, p) for p in points}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def git_head() -> str:
    """The commit the tree is at (the tree may hold uncommitted changes)."""
    try:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return found.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.1,
    *,
    quiet: bool = False,
) -> Any:
    """Call ``condition`` every ``interval`` seconds until it returns something true, and return
    that; RuntimeError after ``timeout`` seconds. ``quiet``: an exception from ``condition``
    counts as not yet (a server still starting) instead of propagating."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except Exception:
            if not quiet:
                raise
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the bench databases ------------------------------------------------------------------------


def admin_url(url: str) -> str:
    """``url`` with its database replaced by ``postgres`` (to create or drop the database)."""
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def db_name(url: str) -> str:
    """The database name in a ``postgres://`` URL."""
    return urlsplit(url).path.lstrip("/")


def create_database(conn: Any, name: str, log: Callable[[str], None]) -> bool:
    """Create database ``name`` when missing, over ``conn`` (autocommit, to another database);
    True when it was created."""
    from psycopg import sql

    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        return False
    log(f"creating database {name}")
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def ensure_database(url: str, log: Callable[[str], None]) -> None:
    """Create the database of ``url`` when missing (``log`` says so)."""
    import psycopg

    with psycopg.connect(admin_url(url), autocommit=True, connect_timeout=5) as conn:
        create_database(conn, db_name(url), log)


def migrate() -> None:
    """``manage.py migrate`` in this process (Django is set up already, on the bench database)."""
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def setup_bench_django(env: dict[str, str], url: str, log: Callable[[str], None]) -> None:
    """Put ``env`` (the bench database ``url``, its broker, settings) into this process's
    environment, create the database when missing, set Django up and migrate."""
    os.environ.update(env)
    ensure_database(url, log)
    import django

    django.setup()
    log(f"migrating {db_name(url)}")
    migrate()


def empty_workflow_tables() -> None:
    """TRUNCATE the engine's tables (instances, steps, events) of the bench database this
    process is set up on (a dedicated one), then close the connection. On a database seeded by
    ``bench/fullscale.py`` (table ``bench_fullscale_seed``) only the rows that are not part of
    the seed are deleted."""
    from django.db import connection

    from orchestration.models import Event, StepRun, WorkflowInstance

    tables = ", ".join(
        connection.ops.quote_name(m._meta.db_table) for m in (Event, StepRun, WorkflowInstance)
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('bench_fullscale_seed') IS NOT NULL")
        if cursor.fetchone()[0]:
            # bench/fullscale.py's seeded database: keep the seed, drop what runs added.
            keep = "business_key LIKE 'fullseed-%'"
            cursor.execute(
                "DELETE FROM orchestration_event WHERE instance_id IN (SELECT id FROM "
                f"orchestration_workflowinstance WHERE NOT ({keep}))"
            )
            cursor.execute(
                "DELETE FROM orchestration_steprun WHERE instance_id IN (SELECT id FROM "
                f"orchestration_workflowinstance WHERE NOT ({keep}))"
            )
            cursor.execute(f"DELETE FROM orchestration_workflowinstance WHERE NOT ({keep})")
        else:
            cursor.execute(f"TRUNCATE {tables} CASCADE")
    connection.close()


@contextmanager
def counting_queries(into: list[int]) -> Iterator[None]:
    """Add to ``into[0]`` one per SQL statement the default connection runs inside."""
    from django.db import connection

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        into[0] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git_head": git_head(),
    }


def row(
    measure: str,
    value: float | int | str,
    unit: str = "",
    *,
    goal: str = "",
    ok: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of a benchmark's summary (``ok`` None: no goal)."""
    if isinstance(value, float):
        value = round(value, 3)
    return {"measure": measure, "value": value, "unit": unit, "goal": goal, "ok": ok, "note": note}


def goal_row(
    measure: str, value: float, unit: str, op: str, goal: float, *, note: str = ""
) -> dict[str, Any]:
    """A summary row checked against ``op`` (``<=`` or ``>=``) ``goal``."""
    ok = value <= goal if op == "<=" else value >= goal
    return row(measure, value, unit, goal=f"{op} {goal:g}", ok=ok, note=note)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (0 for any that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used += (int(fields[11]) + int(fields[12])) / tick
    return used


def worker_answers(name: str) -> bool:
    """Whether the Celery worker named ``name`` answers a ping (it is consuming)."""
    from config.celery import app

    replies = app.control.ping(destination=[name], timeout=0.5)
    return any(name in reply for reply in replies)


class ServiceProcess:
    """A server the benchmark starts (a Celery worker, gunicorn) in its own process group,
    its output in ``log_path``; :meth:`stop` ends the whole group."""

    what = "the process"

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The whole command line (the interpreter first)."""
        raise NotImplementedError

    def spawn(self, ready: Callable[[], bool], timeout: float = 60) -> None:
        """Start :meth:`command` and wait until ``ready()`` (failing if the process exits)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def check() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.what} exited; see {self.log_path}")
            return ready()

        wait_until(check, timeout, f"{self.what} to answer", interval=0.2)

    def children(self) -> list[int]:
        """The main process's direct children (pool processes, gunicorn workers)."""
        if self.process is None:
            return []
        try:
            path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def pids(self) -> list[int]:
        """The main process, then its children."""
        return ([self.process.pid] if self.process else []) + self.children()

    def stop(self, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# -- a benchmark script's main() ----------------------------------------------------------------


def finished_at() -> str:
    """Now, as every report writes it: UTC, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class BenchRun:
    """What every benchmark script's ``main()`` shares; the rest of ``main()`` is its own::

        run = BenchRun("floor", __doc__, log)
        run.parser.add_argument("--seconds", ...)  # the script's own arguments
        args = run.parse(argv)  # adds --output, starts the clock, notes the load average
        results = {...}  # measured
        run.stamp(results)  # finished_at, duration_s
        run.finish(results, render, summarise)  # summary rows, the table, the JSON report

    The parser is described by the first paragraph of the script's docstring; ``--output``
    defaults to ``bench/results/<name>.json`` (``bench/run.py`` reads its ``"summary"``).
    """

    def __init__(self, name: str, doc: str | None, log: Callable[[str], None]) -> None:
        self.log = log
        self.parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
        self.output = RESULTS / f"{name}.json"
        self.began = time.monotonic()
        self.load_before: list[float] = []

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        """Parse the command line (``--output`` last in ``--help``), start the clock and note
        the load average."""
        self.parser.add_argument(
            "--output", type=Path, default=self.output, help="where the JSON report goes"
        )
        args = self.parser.parse_args(argv)
        self.output = args.output
        self.began = time.monotonic()
        self.load_before = loadavg()
        return args

    def seconds(self) -> float:
        """Seconds since :meth:`parse`, to a tenth."""
        return round(time.monotonic() - self.began, 1)

    def machine_report(self) -> dict[str, Any]:
        """The load average before and now, and :func:`machine`."""
        return {
            "loadavg_before": self.load_before,
            "loadavg_after": loadavg(),
            "machine": machine(),
        }

    def stamp(self, report: dict[str, Any]) -> dict[str, Any]:
        """Add ``finished_at`` and ``duration_s`` to ``report``; returns it."""
        report["finished_at"] = finished_at()
        report["duration_s"] = self.seconds()
        return report

    def finish(
        self,
        report: dict[str, Any],
        render: Callable[[dict[str, Any]], str],
        summarise: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    ) -> None:
        """Add the ``"summary"`` rows (``summarise``), print ``render(report)`` and write the
        report as JSON to ``--output``."""
        if summarise is not None:
            report["summary"] = summarise(report)
        print(render(report), flush=True)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        shown = self.output.relative_to(ROOT) if self.output.is_relative_to(ROOT) else self.output
        self.log(f"wrote {shown} in {self.seconds()} s")
