"""API benchmark: ``POST /api/v1/instances/`` (start a workflow) served by gunicorn, under load.

Run it with ``.venv/bin/python bench/api.py`` (``--help`` lists the knobs, ``--quick`` is a
shorter run). It needs PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379 (override with
``SIGNOFF_BENCH_API_DATABASE_URL`` / ``SIGNOFF_BENCH_API_REDIS_URL``) and the load generator
``wrk`` (``apt-get install -y wrk``; a C program, light enough to share 2 cores with the server).
It creates the database ``signoff_bench_api`` when missing, migrates it, empties its workflow
tables and Redis db 11, creates the API user ``bench_api`` with a DRF token, starts gunicorn,
runs the phases below, stops gunicorn, checks the database, flushes Redis db 11, prints one
table and writes ``bench/results/api.json``.

The server, as in production
----------------------------
``gunicorn config.wsgi:application`` (the command of docker-compose.yml's ``web`` service:
sync workers, access log on stdout, which goes to ``bench/results/api-gunicorn.log``) with
``--workers`` processes (default 3, the ``WEB_CONCURRENCY`` of .env.example: on 2 cores that
PostgreSQL shares, more sync workers only queue on the CPU), bound to a free port on
127.0.0.1. The real settings module ``config.settings`` with the environment a deployment
sets: ``DEBUG=0``, ``DATABASE_URL`` (PostgreSQL, ``CONN_MAX_AGE`` 600 and health checks, the
defaults), ``CELERY_BROKER_URL`` (Redis db 11), a random ``SECRET_KEY`` and Fernet key,
``LOG_LEVEL=WARNING`` and ``SIGNOFF_WORKFLOW_MODULES=demo.workflows,bench.workflows``. No
Celery worker runs: each start's doorbell (the first step's Celery message) is published to
Redis after the commit and stays queued until the flush at the end.

What is measured, and how
-------------------------
Each request is ``POST /api/v1/instances/`` with ``Authorization: Token <key>`` (a user
without staff rights or permissions, as an API client would be) and the body
``{"workflow": "bench_noop3", "input": {"bench_api": <run>, "phase": <phase>, "tag":
"<thread>-<n>"}}``: ``bench_noop3`` (bench/workflows.py) has three task steps and no input
schema; ``tag`` is unique per request, so the database check below can match requests to
instances. The answer is 201 with the instance and its three steps (about 1.4 kB of JSON).

``wrk`` sends them from a small Lua script (written to a temporary file): ``request()``
builds each body, ``response()`` counts the status classes and keeps the instance id of
every 2xx answer, and ``done()`` writes the counts, wrk's socket errors and timeouts and the
latency percentiles as JSON, which this script reads. wrk is a closed loop: every connection
sends its next request as soon as the previous answer arrives. Latency runs from the first
byte of a request written to the last byte of its answer read, so it includes the time the
connection waits in gunicorn's listen queue for a free worker. gunicorn's sync workers close
the connection after every answer (as in production); wrk reconnects, and the connect is not
part of the latency.

Phases, in order:

- warm-up: ``--clients`` connections for ``--warmup`` s (3 s): worker imports, database
  connections, caches. Not reported, but checked with the rest.
- 1 client: one connection for ``--single-seconds`` s (10 s): the service time of one start
  without queueing (HTTP parse, middleware, token lookup, the view, the transaction, the
  doorbell publish, rendering).
- ``--clients`` clients (50): ``--clients`` connections from 2 wrk threads for ``--seconds``
  s (30 s): throughput, latency p50 / p90 / p99 / max. Also CPU seconds (from /proc) of the
  gunicorn processes, of the PostgreSQL backends serving them and of wrk, over the phase and
  the cut-off requests it leaves (see below), divided by the instances written: unlike wall
  times these hardly move when other programs load the machine.
- after each phase: wrk stops without waiting for the answers in flight, and the server still
  serves those requests. The script waits until their instances are written (the database
  count of the phase reaches 2xx answers + cut-off requests, or stays put for a second), so
  they do not queue ahead of the next phase's first requests.
- in-process: ``--inprocess`` starts (200) through Django's test ``Client`` in this process
  (same settings, same database), timed and with their queries counted through
  ``connection.execute_wrapper``: the application's own cost without HTTP and gunicorn.
  ``--profile`` also runs them under cProfile and writes ``bench/results/api-profile.txt``.

**The goal and Little's law.** The goal is p50 ≤ 5 ms and p99 ≤ 15 ms at 50 clients. 50
closed-loop clients always keep 50 requests in the system, so by Little's law the mean
latency is 50 / throughput: a mean of 5 ms needs about 10,000 starts/s, on 2 cores shared by
gunicorn, PostgreSQL, Redis and wrk (0.2 ms of CPU per start for all of them together). Once
the server is saturated, latency at 50 clients measures the queue, not the code; the table
therefore shows the throughput needed next to the measured one, 50 / throughput next to the
measured mean, and the 1-client p50 / p99 (the service time with no queue) beside them.

**No start lost or doubled.** After the run, the database is read: every 2xx answer's
instance must exist, once, with the tag its request carried; no two instances may share a
tag; instances whose request got no answer may exist only for requests wrk cut off when it
stopped (at most one per connection and phase: wrk stops with requests in flight, which the
server still completes). So "instances created" = 2xx answers + those cut off. The doorbells
queued in Redis are counted too (one per instance).

Time: gunicorn has 60 s to answer, each wrk phase its duration plus 30 s, the in-process
phase 20 s (it stops early and reports what ran). ``--quick``: warm-up 2 s, 1 client 5 s,
50 clients 10 s, 50 in-process starts.

Exit status: non-zero when the run itself fails (gunicorn does not start, wrk fails, any
non-2xx answer, socket error or timeout, or a start lost or doubled), not when a goal is
missed. The JSON holds ``summary`` (the table's rows: ``measure``, ``value``, ``unit``,
``goal``, ``ok``), the raw figures of each phase, the load average before and after, the
gunicorn worker count and the git HEAD.

Noise: the machine has 2 cores shared by wrk, gunicorn, PostgreSQL, Redis and whatever else
runs (other people's tests). Compare runs taken under similar load; trust the CPU per start
and the query count more than wall times.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import platform
import pstats
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script: import from the project root, and never shadow modules from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BenchRun,
    ServiceProcess,
    admin_url,
    cpu_seconds,
    db_name,
    empty_workflow_tables,
    free_port,
    git_head,
    loadavg,
    make_log,
    pct,
    percentile,
    root_pythonpath,
    setup_bench_django,
)

DB_URL = os.environ.get(
    "SIGNOFF_BENCH_API_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signoff_bench_api"
)
REDIS_URL = os.environ.get("SIGNOFF_BENCH_API_REDIS_URL", "redis://127.0.0.1:6379/11")
WORKFLOW_MODULES = "demo.workflows,bench.workflows"
WORKFLOW = "bench_noop3"
QUEUE = "signoff"
USERNAME = "bench_api"
PATH = "/api/v1/instances/"
log = make_log("api")

GOAL_P50_MS = 5.0
GOAL_P99_MS = 15.0
GOAL_BATCH_PER_S = 5000

# The wrk script. Globals per thread: tid (set by setup), sent, counts and the 2xx ids.
LUA = r"""
local run, phase, workflow, token, out_path = %(args)s
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  sent, s2xx, s3xx, s4xx, s5xx, other = 0, 0, 0, 0, 0, 0
  ids = {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Token " .. token
end

function request()
  sent = sent + 1
  local body = string.format(
    '{"workflow":"%%s","input":{"bench_api":"%%s","phase":"%%s","tag":"%%d-%%d"}}',
    workflow, run, phase, tid, sent)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    s2xx = s2xx + 1
    ids[#ids + 1] = string.match(body, '"id":"([%%x%%-]+)"') or "?"
  elseif status < 400 and status >= 300 then s3xx = s3xx + 1
  elseif status < 500 and status >= 400 then s4xx = s4xx + 1
  elseif status >= 500 and status < 600 then s5xx = s5xx + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local total = {sent = 0, s2xx = 0, s3xx = 0, s4xx = 0, s5xx = 0, other = 0}
  local f = assert(io.open(out_path, "w"))
  f:write('{"ids": [')
  local first = true
  for _, thread in ipairs(threads) do
    for name, _ in pairs(total) do total[name] = total[name] + thread:get(name) end
    for _, id in ipairs(thread:get("ids")) do
      f:write(first and '"' or ',"', id, '"')
      first = false
    end
  end
  f:write('], "counts": {')
  first = true
  for name, value in pairs(total) do
    f:write(first and "" or ",", string.format('"%%s": %%d', name, value))
    first = false
  end
  local e = summary.errors
  f:write(string.format(
    '}, "requests": %%d, "duration_us": %%d, "bytes": %%d, "errors": {"connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d}, "latency_us": {"p50": %%d, ' ..
    '"p90": %%d, "p99": %%d, "p99.9": %%d, "max": %%d, "min": %%d, "mean": %%.1f, ' ..
    '"stdev": %%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.min, latency.mean, latency.stdev))
  f:close()
end
"""


# -- small helpers ------------------------------------------------------------------------------


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have exited and been waited for (wrk)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- environment: database, user, server --------------------------------------------------------


def bench_env() -> dict[str, str]:
    """The environment of gunicorn and of this script: production settings, bench services."""
    from cryptography.fernet import Fernet

    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "0",
            "DATABASE_URL": DB_URL,
            "CELERY_BROKER_URL": REDIS_URL,
            "SIGNOFF_WORKFLOW_MODULES": WORKFLOW_MODULES,
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            "PYTHONPATH": root_pythonpath(env),
        }
    )
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    env.setdefault("SIGNOFF_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    env.setdefault("LOG_LEVEL", "WARNING")
    return env


def broker() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def reset_state() -> None:
    """Empty the workflow tables (a dedicated database) and the bench Redis db."""
    empty_workflow_tables()
    broker().flushdb()


def api_token() -> str:
    """The key of ``bench_api``'s DRF token: an ordinary user (no staff, no permissions)."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(
        username=USERNAME, defaults={"email": "bench_api@example.com"}
    )
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


class Gunicorn(ServiceProcess):
    """gunicorn as docker-compose.yml runs it, in its own process group; stopped at the end."""

    what = "gunicorn"

    def __init__(self, env: dict[str, str], workers: int, port: int, log_path: Path) -> None:
        super().__init__(env, log_path)
        self.workers = workers
        self.port = port

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", *self.arguments()]

    def arguments(self) -> list[str]:
        """gunicorn's arguments (the report records them)."""
        return [
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--access-logfile",
            "-",
            "--graceful-timeout",
            "20",
        ]

    def start(self, token: str) -> None:
        def ready() -> bool:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/api/v1/workflows/",
                headers={"Authorization": f"Token {token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:
                    return answer.status == 200 and len(self.children()) >= self.workers
            except (urllib.error.URLError, OSError):
                return False

        self.spawn(ready)


def backend_pids() -> list[int]:
    """PostgreSQL backends connected to the bench database, other than our own."""
    import psycopg

    with psycopg.connect(admin_url(DB_URL), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = "
            "'client backend' AND pid <> pg_backend_pid()",
            (db_name(DB_URL),),
        ).fetchall()
    return [int(row[0]) for row in rows]


# -- phases --------------------------------------------------------------------------------------


def wrk_path() -> str:
    found = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if found is None:
        raise SystemExit(
            "bench/api.py needs the load generator wrk: apt-get install -y wrk "
            "(make bench installs it)"
        )
    return found


def lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


def run_wrk(
    *,
    run: str,
    phase: str,
    port: int,
    token: str,
    clients: int,
    seconds: float,
    workdir: Path,
) -> dict[str, Any]:
    """One wrk run; its ``done()`` JSON, plus wrk's CPU seconds and the wall time."""
    out_path = workdir / f"{phase}.json"
    script = workdir / f"{phase}.lua"
    args = ", ".join(lua_string(v) for v in (run, phase, WORKFLOW, token, str(out_path)))
    script.write_text(LUA % {"args": args})
    threads = max(1, min(2, clients))
    command = [
        wrk_path(),
        "-t",
        str(threads),
        "-c",
        str(clients),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    cpu_before = children_cpu_seconds()
    began = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"wrk ({phase}) did not finish within {seconds + 30:g} s") from None
    if done.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"wrk ({phase}) failed ({done.returncode}): {done.stderr.strip()}")
    result = json.loads(out_path.read_text())
    result["wall_s"] = round(time.monotonic() - began, 3)
    result["wrk_cpu_s"] = round(children_cpu_seconds() - cpu_before, 3)
    result["clients"] = clients
    result["threads"] = threads
    return result


def drain(run: str, phase: str, result: dict[str, Any], timeout: float = 30.0) -> int:
    """Wait until the server has finished the requests wrk cut off when it stopped (it does
    not wait for their answers), so they do not queue before the next phase's requests.
    Returns the phase's instances: 2xx answers + cut-off requests, once all are written."""
    from django.db import connection

    from orchestration.models import WorkflowInstance

    expected = result["counts"]["s2xx"] + result["counts"]["sent"] - result["requests"]
    rows = WorkflowInstance.objects.filter(workflow=WORKFLOW, input__bench_api=run)
    deadline = time.monotonic() + timeout
    seen, stable_since = -1, time.monotonic()
    while True:
        count = rows.filter(input__phase=phase).count()
        now = time.monotonic()
        if count != seen:
            seen, stable_since = count, now
        # Every cut-off request written, or nothing new for a second (one may never have
        # reached the server), or out of time.
        if count >= expected or now - stable_since > 1.0 or now > deadline:
            connection.close()
            return count
        time.sleep(0.05)


def phase_figures(result: dict[str, Any]) -> dict[str, Any]:
    """Rates and milliseconds from a wrk result (the ids stay out)."""
    seconds = result["duration_us"] / 1e6
    counts = result["counts"]
    lat = {k: round(v / 1000, 3) for k, v in result["latency_us"].items()}
    socket_errors = sum(v for k, v in result["errors"].items() if k != "status")
    return {
        "clients": result["clients"],
        "wrk_threads": result["threads"],
        "duration_s": round(seconds, 3),
        "requests": result["requests"],
        "sent": counts["sent"],
        "status_2xx": counts["s2xx"],
        "status_3xx": counts["s3xx"],
        "status_4xx": counts["s4xx"],
        "status_5xx": counts["s5xx"],
        "status_other": counts["other"],
        "non_2xx": result["requests"] - counts["s2xx"],
        "socket_errors": result["errors"],
        "socket_errors_total": socket_errors,
        "requests_per_s": round(counts["s2xx"] / seconds, 1) if seconds else 0.0,
        "latency_ms": lat,
        "littles_law_mean_ms": round(result["clients"] * seconds * 1000 / result["requests"], 3)
        if result["requests"]
        else float("nan"),
        "bytes_per_answer": round(result["bytes"] / max(result["requests"], 1)),
        "wrk_cpu_s": result["wrk_cpu_s"],
    }


def phase_inprocess(run: str, token: str, count: int, profile_path: Path | None) -> dict[str, Any]:
    """Starts through Django's test Client in this process: time and queries per request."""
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    queries = [0]

    def counting(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries[0] += 1
        return execute(sql, params, many, context)

    def start(n: int) -> int:
        body = {"workflow": WORKFLOW, "input": {"bench_api": run, "phase": "inprocess", "tag": n}}
        answer = client.post(PATH, body, content_type="application/json")
        if answer.status_code != 201:
            raise RuntimeError(
                f"in-process start answered {answer.status_code}: {answer.content!r}"
            )
        return len(answer.content)

    for n in range(10):  # warm-up: this process's imports, connection, caches
        start(-1 - n)
    times: list[float] = []
    per_request: list[int] = []
    stop_at = time.monotonic() + 20
    for n in range(count):
        if time.monotonic() > stop_at and len(times) >= 20:
            log(f"in-process: time budget of 20 s spent after {len(times)} starts")
            break
        queries[0] = 0
        began = time.perf_counter()
        with connection.execute_wrapper(counting):
            size = start(n)
        times.append(time.perf_counter() - began)
        per_request.append(queries[0])
    result: dict[str, Any] = {
        "starts": len(times),
        "partial": len(times) < count,
        "queries_per_start": round(statistics.fmean(per_request), 2) if per_request else None,
        "queries_min_max": [min(per_request), max(per_request)] if per_request else None,
        "ms": {f"p{p:g}": round(percentile([t * 1000 for t in times], p), 3) for p in (50, 90, 99)},
        "answer_bytes": size if times else None,
        "note": "Django test Client in this process: middleware, token auth, view, "
        "transaction, doorbell publish and rendering; no HTTP server. Queries exclude "
        "BEGIN/COMMIT (Django's transaction.atomic sends them outside execute_wrapper).",
    }
    if profile_path is not None:
        profiler = cProfile.Profile()
        n_profiled = min(count, 200)
        profiler.enable()
        for n in range(n_profiled):
            start(100_000 + n)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        text.write(f"cProfile of {n_profiled} in-process starts (cumulative, then own time)\n")
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
        profile_path.write_text(text.getvalue())
        result["profile"] = str(profile_path.relative_to(ROOT))
    return result


BATCH_PATH = "/api/v1/instances/batch/"


def batch_body(run: str, phase: str, batch: int, size: int) -> bytes:
    """One batch start body: ``size`` items of ``bench_noop3``, each with its own key."""
    items = [
        {
            "workflow": WORKFLOW,
            "input": {"bench_api": run, "phase": phase, "tag": f"{batch}-{i}"},
            "idempotency_key": f"{run}-{phase}-{batch}-{i}",
        }
        for i in range(size)
    ]
    return json.dumps({"items": items}).encode()


def post_batch(port: int, token: str, body: bytes) -> tuple[float, dict[str, int]]:
    """POST one batch; its wall time (s) and the count of each item status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{BATCH_PATH}",
        data=body,
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as answer:
        payload = answer.read()
        status = answer.status
    took = time.perf_counter() - began
    if status != 207:
        raise RuntimeError(f"batch start answered {status}: {payload[:300]!r}")
    counts: dict[str, int] = {}
    for result in json.loads(payload)["results"]:
        counts[str(result["status"])] = counts.get(str(result["status"]), 0) + 1
    return took, counts


def phase_batch(
    run: str, port: int, token: str, batches: int, size: int, server_pids: list[int]
) -> dict[str, Any]:
    """Batch starts through gunicorn: ``batches`` bodies of ``size`` items one after another
    (1 client), then the first again (every item a repeat: 200), then two clients at once.
    Instances/s = items started / wall time; CPU of gunicorn and the PostgreSQL backends per
    instance over the 1-client run."""
    import threading

    post_batch(port, token, batch_body(run, "batch-warmup", 0, 50))  # each worker's first
    post_batch(port, token, batch_body(run, "batch-warmup", 1, 50))
    post_batch(port, token, batch_body(run, "batch-warmup", 2, 50))
    bodies = [batch_body(run, "batch", b, size) for b in range(batches)]
    pg_pids = backend_pids()
    web_before, pg_before = cpu_seconds(server_pids), cpu_seconds(pg_pids)
    times: list[float] = []
    counts: dict[str, int] = {}
    began = time.perf_counter()
    for body in bodies:
        took, got = post_batch(port, token, body)
        times.append(took)
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
    wall = time.perf_counter() - began
    web_cpu, pg_cpu = cpu_seconds(server_pids) - web_before, cpu_seconds(pg_pids) - pg_before
    started = counts.get("201", 0)
    _, repeat = post_batch(port, token, bodies[0])
    # Two clients: two gunicorn workers write at once.
    two: list[Any] = []
    pair = [batch_body(run, "batch2", b, size) for b in range(2 * max(batches // 2, 1))]

    def client(mine: list[bytes]) -> None:
        for body in mine:
            two.append(post_batch(port, token, body))

    threads = [threading.Thread(target=client, args=(pair[i::2],)) for i in range(2)]
    began2 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall2 = time.perf_counter() - began2
    started2 = sum(c.get("201", 0) for _, c in two)
    return {
        "batches": batches,
        "items_per_batch": size,
        "statuses": counts,
        "instances_per_s": round(started / wall, 1) if wall else 0.0,
        "batch_ms": {k: round(v * 1000, 1) for k, v in pct(times, 50, 90, 100).items()},
        "cpu_ms_per_instance": {
            "gunicorn": round(web_cpu * 1000 / max(started, 1), 4),
            "postgres": round(pg_cpu * 1000 / max(started, 1), 4),
        },
        "repeat_statuses": repeat,
        "two_clients": {
            "batches": len(two),
            "instances_per_s": round(started2 / wall2, 1) if wall2 else 0.0,
            "statuses": {
                k: sum(c.get(k, 0) for _, c in two) for k in sorted({k for _, c in two for k in c})
            },
        },
        "note": "1 client: batches one after another; instances/s = 201 items / wall time "
        "(HTTP, JSON, checks, the transaction, the doorbells' publish, the answer)",
    }


def check_batches(run: str, batch: dict[str, Any]) -> dict[str, Any]:
    """Every batch item answered 201 is in the database once, with three steps."""
    from django.db.models import Count

    from orchestration.models import StepRun, WorkflowInstance

    rows = WorkflowInstance.objects.filter(
        workflow=WORKFLOW, input__bench_api=run, input__phase__in=["batch", "batch2"]
    )
    created = rows.count()
    expected = batch["statuses"].get("201", 0) + batch["two_clients"]["statuses"].get("201", 0)
    steps = set(
        StepRun.objects.filter(instance__in=rows)
        .values("instance_id")
        .annotate(n=Count("id"))
        .values_list("n", flat=True)
    )
    ok = (
        created == expected
        and steps == {3}
        and batch["repeat_statuses"] == {"200": batch["items_per_batch"]}
    )
    return {
        "instances": created,
        "expected": expected,
        "steps_per_instance": sorted(steps),
        "ok": ok,
    }


def verify(run: str, answered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Match every wrk phase's 2xx answers against the instances in the database."""
    from django.db.models import Count

    from orchestration.models import StepRun, WorkflowInstance

    report: dict[str, Any] = {"phases": {}, "ok": True}
    for phase, result in answered.items():
        rows = WorkflowInstance.objects.filter(
            workflow=WORKFLOW, input__bench_api=run, input__phase=phase
        ).values_list("id", "input__tag")
        db_ids = {str(pk) for pk, _ in rows}
        tags = [tag for _, tag in rows]
        acked = result["ids"]
        counts = result["counts"]
        unanswered = counts["sent"] - result["requests"]
        missing = [i for i in set(acked) if i not in db_ids]
        extra = len(db_ids) - len(set(acked))
        checks = {
            "each 2xx answer names its own instance": len(set(acked))
            == len(acked)
            == counts["s2xx"],
            "each 2xx answer's instance is in the database": not missing,
            "no request started two instances": len(set(tags)) == len(tags),
            "instances without a 2xx answer <= requests cut off at the stop": 0
            <= extra
            <= unanswered,
        }
        ok = all(checks.values())
        report["ok"] &= ok
        report["phases"][phase] = {
            "status_2xx": counts["s2xx"],
            "instances": len(db_ids),
            "cut_off_requests": unanswered,
            "instances_from_cut_off_requests": extra,
            "missing": missing[:10],
            "checks": checks,
            "ok": ok,
        }
    instances = WorkflowInstance.objects.filter(workflow=WORKFLOW, input__bench_api=run)
    report["instances_total"] = instances.count()
    report["steps_per_instance"] = sorted(
        {
            row["n"]
            for row in StepRun.objects.filter(instance__in=instances)
            .values("instance_id")
            .annotate(n=Count("id"))
        }
    )
    report["doorbells_queued"] = int(broker().llen(QUEUE))
    return report


# -- report --------------------------------------------------------------------------------------


def row(measure: str, value: Any, unit: str, goal: str = "", ok: bool | None = None) -> dict:
    return {"measure": measure, "value": value, "unit": unit, "goal": goal, "ok": ok}


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    many, one, cpu = results["clients"], results["single"], results["cpu_ms_per_start"]
    n = many["clients"]
    inproc, check = results["inprocess"], results["verify"]
    needed = n / (GOAL_P50_MS / 1000)
    lat, lat1 = many["latency_ms"], one["latency_ms"]
    errors = sum(results[p]["non_2xx"] for p in ("warmup", "single", "clients"))
    socket_errors = sum(results[p]["socket_errors_total"] for p in ("warmup", "single", "clients"))
    answered = sum(p["status_2xx"] for p in check["phases"].values())
    cut = sum(p["instances_from_cut_off_requests"] for p in check["phases"].values())
    created = sum(p["instances"] for p in check["phases"].values())
    return [
        row(
            f"API start, {n} clients: requests/s",
            many["requests_per_s"],
            "req/s",
            f">= {needed:,.0f} (what p50 <= {GOAL_P50_MS:g} ms needs, Little's law)",
            many["requests_per_s"] >= needed,
        ),
        row(
            f"API start, {n} clients: p50",
            lat["p50"],
            "ms",
            f"<= {GOAL_P50_MS:g} ms",
            lat["p50"] <= GOAL_P50_MS,
        ),
        row(f"API start, {n} clients: p90", lat["p90"], "ms"),
        row(
            f"API start, {n} clients: p99",
            lat["p99"],
            "ms",
            f"<= {GOAL_P99_MS:g} ms",
            lat["p99"] <= GOAL_P99_MS,
        ),
        row(f"API start, {n} clients: max", lat["max"], "ms"),
        row(
            f"API start, {n} clients: mean (Little's law: {n} / req/s)",
            lat["mean"],
            "ms",
            f"{many['littles_law_mean_ms']:.1f} ms predicted",
        ),
        row("API start, 1 client: requests/s", one["requests_per_s"], "req/s"),
        row("API start, 1 client: p50", lat1["p50"], "ms", "service time, no queue"),
        row("API start, 1 client: p99", lat1["p99"], "ms"),
        row("errors (non-2xx)", errors, "responses", "0", errors == 0),
        row("socket errors and timeouts", socket_errors, "", "0", socket_errors == 0),
        row(
            "instances created = 2xx",
            f"{created} = {answered} + {cut}",
            "",
            "= 2xx + cut off at wrk's stop; none lost or doubled",
            bool(check["ok"]),
        ),
        row("doorbells queued (one per instance)", check["doorbells_queued"], "messages"),
        row(f"CPU per start at {n} clients: gunicorn", cpu["gunicorn"], "ms"),
        row(f"CPU per start at {n} clients: PostgreSQL backends", cpu["postgres"], "ms"),
        row(f"CPU per start at {n} clients: wrk", cpu["wrk"], "ms"),
        row("queries per start (in-process)", inproc["queries_per_start"], "queries", "+ 2"),
        row("start in-process, no HTTP: p50", inproc["ms"]["p50"], "ms"),
        row("gunicorn workers (sync)", results["environment"]["gunicorn_workers"], "processes"),
        *(batch_rows(results["batch"]) if "batch" in results else []),
    ]


def batch_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    size = batch["items_per_batch"]
    rate = batch["instances_per_s"]
    return [
        row(
            f"batch start ({size} items), 1 client: instances/s",
            rate,
            "inst/s",
            f">= {GOAL_BATCH_PER_S:,}",
            rate >= GOAL_BATCH_PER_S,
        ),
        row(f"batch start ({size} items), 1 client: p50 per batch", batch["batch_ms"]["p50"], "ms"),
        row(
            f"batch start ({size} items), 2 clients: instances/s",
            batch["two_clients"]["instances_per_s"],
            "inst/s",
        ),
        row(
            "batch start: CPU per instance, gunicorn + PostgreSQL",
            round(sum(batch["cpu_ms_per_instance"].values()), 3),
            "ms",
        ),
        row(
            "batch start: every 201 item in the database once (3 steps); a repeat all 200",
            batch["check"]["ok"],
            "",
            "True",
            bool(batch["check"]["ok"]),
        ),
    ]


def render(results: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    rows = [
        (
            r["measure"],
            f"{shown(r['value'])} {r['unit']}".strip(),
            r["goal"] + ("" if r["ok"] is None else ("  ok" if r["ok"] else "  MISSED")),
        )
        for r in results["summary"]
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    env = results["environment"]
    rule = "-" * (width + value_width + 40)
    lines = [
        "",
        f"Signoff API start benchmark  {results['finished_at']}  gunicorn "
        f"{env['gunicorn_workers']} sync workers, CONN_MAX_AGE {env['conn_max_age']}, "
        f"git {env['git_head']}",
        f"load average before/after: {env['loadavg_before']} / {env['loadavg_after']} "
        f"({env['cpus']} cores; shared machine, wall times are noisy)",
        rule,
        f"{'measure':<{width}}  {'value':>{value_width}}  goal / note",
        rule,
    ]
    lines += [f"{a:<{width}}  {b:>{value_width}}  {c}" for a, b, c in rows]
    lines.append(rule)
    n = results["clients"]["clients"]
    lines.append(
        f"{n} closed-loop clients keep {n} requests in the system: mean latency = {n} / "
        "throughput (Little's law), so the p50 goal needs the throughput in the first row."
    )
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("api", __doc__, log)
    parser = bench.parser
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=30.0, help="the loaded phase's length")
    parser.add_argument("--single-seconds", type=float, default=10.0, help="1-client phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn sync workers")
    parser.add_argument("--port", type=int, default=0, help="gunicorn's port (0: a free one)")
    parser.add_argument("--inprocess", type=int, default=200, help="starts in this process")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process starts too")
    parser.add_argument(
        "--batches",
        type=int,
        default=10,
        help="batch starts of --batch-size (0: no batch phase)",
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="items per batch start")
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    args = bench.parse(argv)
    if args.quick:
        args.seconds = min(args.seconds, 10.0)
        args.single_seconds = min(args.single_seconds, 5.0)
        args.warmup = min(args.warmup, 2.0)
        args.inprocess = min(args.inprocess, 50)
        args.batches = min(args.batches, 4)
    wrk_path()  # fail early and clearly

    env = bench_env()
    setup_bench_django(env, DB_URL, log)
    from django.conf import settings
    from django.db import connections

    reset_state()
    token = api_token()
    connections.close_all()
    run = uuid.uuid4().hex[:8]
    port = args.port or free_port()
    results_dir = ROOT / "bench" / "results"
    server = Gunicorn(env, args.workers, port, results_dir / "api-gunicorn.log")
    results: dict[str, Any] = {"run": run}
    raw: dict[str, dict[str, Any]] = {}
    failure = ""
    try:
        with tempfile.TemporaryDirectory(prefix="signoff-bench-api-") as tmp:
            workdir = Path(tmp)
            log(f"starting gunicorn ({args.workers} workers) on 127.0.0.1:{port}")
            server.start(token)
            common = {"run": run, "port": port, "token": token, "workdir": workdir}
            log(f"warm-up: {args.clients} clients for {args.warmup:g} s")
            raw["warmup"] = run_wrk(
                phase="warmup", clients=args.clients, seconds=args.warmup, **common
            )
            drain(run, "warmup", raw["warmup"])
            log(f"1 client for {args.single_seconds:g} s")
            raw["single"] = run_wrk(
                phase="single", clients=1, seconds=args.single_seconds, **common
            )
            drain(run, "single", raw["single"])
            log(f"{args.clients} clients for {args.seconds:g} s")
            pg_pids = backend_pids()
            web_before, pg_before = cpu_seconds(server.pids()), cpu_seconds(pg_pids)
            raw["clients"] = run_wrk(
                phase="clients", clients=args.clients, seconds=args.seconds, **common
            )
            # The CPU of the cut-off requests counts too: measured once they are written.
            served = drain(run, "clients", raw["clients"])
            web_after, pg_after = cpu_seconds(server.pids()), cpu_seconds(pg_pids)
            results["gunicorn_worker_pids"] = server.children()
            if args.batches > 0:
                log(f"batch start: {args.batches} batches of {args.batch_size}")
                results["batch"] = phase_batch(
                    run, port, token, args.batches, args.batch_size, server.pids()
                )
    except RuntimeError as exc:
        failure = str(exc)
    finally:
        server.stop()
    if failure:
        log(f"FAILED: {failure}")
        broker().flushdb()
        return 1
    for phase in ("warmup", "single", "clients"):
        results[phase] = phase_figures(raw[phase])
    starts = max(served, 1)
    results["cpu_ms_per_start"] = {
        "gunicorn": round((web_after - web_before) * 1000 / starts, 3),
        "postgres": round((pg_after - pg_before) * 1000 / starts, 3),
        "wrk": round(raw["clients"]["wrk_cpu_s"] * 1000 / starts, 3),
        "postgres_backends": len(pg_pids),
        "starts": served,
        "note": "CPU over the loaded phase and the cut-off requests it left, per instance "
        "written (2xx answers + cut-off requests)",
    }
    log("checking the database: every 2xx answer's instance, once")
    results["verify"] = verify(run, raw)
    if "batch" in results:
        results["batch"]["check"] = check_batches(run, results["batch"])
    log(f"in-process: {args.inprocess} starts through Django's test Client")
    results["inprocess"] = phase_inprocess(
        run, token, args.inprocess, results_dir / "api-profile.txt" if args.profile else None
    )
    broker().flushdb()
    db = settings.DATABASES["default"]
    results["goals"] = {
        "p50_ms_at_clients": f"<= {GOAL_P50_MS:g}",
        "p99_ms_at_clients": f"<= {GOAL_P99_MS:g}",
    }
    results["environment"] = {
        "gunicorn_workers": args.workers,
        "gunicorn_command": " ".join(server.arguments()),
        "settings": env["DJANGO_SETTINGS_MODULE"],
        "debug": settings.DEBUG,
        "conn_max_age": db.get("CONN_MAX_AGE"),
        "conn_health_checks": db.get("CONN_HEALTH_CHECKS", False),
        "database": db_name(DB_URL),
        "broker": REDIS_URL,
        "workflow": WORKFLOW,
        "wrk": subprocess.run(
            [wrk_path(), "--version"], capture_output=True, text=True
        ).stdout.split("\n")[0],
        "python": platform.python_version(),
        "git_head": git_head(),
        "cpus": os.cpu_count(),
        "loadavg_before": bench.load_before,
        "loadavg_after": loadavg(),
    }
    bench.stamp(results)
    bench.finish(results, render, summary_rows)
    failed = [
        r["measure"]
        for r in results["summary"]
        if r["ok"] is False
        and r["measure"]
        in ("errors (non-2xx)", "socket errors and timeouts", "instances created = 2xx")
    ]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
