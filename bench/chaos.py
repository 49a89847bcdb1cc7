"""Chaos run: workflows keep their promises while workers die, Redis forgets and PostgreSQL
restarts.

``make chaos`` runs 1,000 workflows; CI runs ``--workflows 100 --pg-restart=terminate``
(tests/test_chaos.py). ``--help`` lists the knobs. It needs PostgreSQL on 127.0.0.1:5432 and
Redis on 127.0.0.1:6379 (override with ``SIGNOFF_CHAOS_DATABASE_URL`` /
``SIGNOFF_CHAOS_REDIS_URL``) and uses only the database ``signoff_chaos`` and Redis db 7.

What it does
------------
1. Creates (``--fresh-db``: drops first) and migrates ``signoff_chaos``, empties its tables
   and Redis db 7, creates the ledger tables (``bench/chaos_workflows.py``), the users
   ``chaos_starter``, ``chaos_a`` and ``chaos_b`` and their API tokens.
2. Starts gunicorn on a free port and 2 Celery workers (prefork, 2 processes each), every
   process with ``SIGNOFF_WORKFLOW_MODULES=bench.chaos_workflows`` and a doorbell grace of 2 s
   (``--doorbell-grace``). They boot while the database is migrated.
3. Drives N workflows, a seeded mix of ``chaos_sequence``, ``chaos_parallel``, ``chaos_approval``,
   ``chaos_saga`` (half of the sagas doomed to unwind) and ``chaos_family`` (a map over tasks,
   a child workflow and a map over child workflows), started through
   ``POST /api/v1/instances/`` with an ``Idempotency-Key`` (retried on errors) by
   ``--starters`` client threads, spread over ``--ramp`` seconds (default 0.1 s per workflow,
   at least 25 s). Every step attempt fails transiently with probability 0.2 (a seeded hash,
   see chaos_workflows.py). Meanwhile, in threads of this process:

   - two scripted approvers (``chaos_a``, ``chaos_b``) poll ``GET /api/v1/approvals/?state=
     pending`` and ``POST .../approve/`` everything, racing each other on the same requests,
     and post every approval a second time (a double click) expecting 409;
   - the engine sweepers (``orchestration.sweepers.sweep_all``) every 0.5 s, standing in for
     beat;
   - the chaos monkey, during the ramp: every ``--kill-every`` seconds it SIGKILLs a worker
     (its whole process group, and starts a new one; every third time, or when the other
     worker is still booting, only one pool process); once, at 35 % of the ramp, it flushes
     Redis db 7 (queued and unacked messages and kombu's bindings are lost); once, at 65 %,
     it restarts PostgreSQL (``--pg-restart=restart``: ``pg_ctlcluster ... restart``, falling
     back to ``terminate`` if that fails) or terminates every backend of ``signoff_chaos``
     (``terminate``).
4. Waits (``--timeout`` after the ramp: 3 min up to 100 workflows, 10 min for 1,000) until
   every instance is terminal, stops everything and checks the invariants below from the
   database; prints the counts, writes ``bench/results/chaos.json`` (``--output``; the web
   and worker logs go to ``bench/results/chaos-logs/``) and exits 1 on any violation.
   One run at a time per database: a second one waits for the first (a lock file).

Invariants checked
------------------
- ``instances_started``: exactly N top-level instances, one per business key (API retries were
  idempotent); child instances (which carry their parent's business key) are counted apart.
- ``children_once``: every child step and every map item run as a child workflow started at
  most one child per attempt; a succeeded one's last child succeeded and its output is the
  step's (or item's); a succeeded family's map over children has every item succeeded with
  its child.
- ``all_terminal``: no instance (children included) pending, running or compensating.
- ``expected_outcome``: doomed sagas ``compensated``, everything else (children included)
  ``succeeded``.
- ``events_gap_free``: per instance, event ``seq`` runs 1..n without gaps, n = ``last_seq``.
- ``one_start_one_end``: one ``instance_started`` and one terminal event per instance, the
  terminal event matching the state.
- ``steps_settled``: every step of a finished instance in the state its outcome implies (all
  succeeded; in an unwound saga reserve and hold compensated, charge compensated or — only if
  no attempt of it was ever claimed — cancelled, ship cancelled), and its attempt counter
  equal to its last claimed attempt.
- ``step_scheduled_once``: every task step (the joins included) scheduled at most once.
- ``claimed_once_per_attempt``: at most one ``step_started`` per step and attempt.
- ``executed_once_per_attempt``: in the ledger, each function (forward or compensation)
  started and completed at most once per (idempotency key, attempt).
- ``effects_exactly_once``: each succeeded step's side effect applied exactly once, each
  compensated step's undo applied exactly once, none for a step that never succeeded unless
  the saga undid it for its attempts (``compensate_attempted``), and the attempt the engine
  recorded as successful completed in the ledger. The same for each item of a map step run as
  tasks (its key ``<instance>:<step>:<index>``); a child's steps are task steps of the child.
- ``unwound_effects_undone``: in a saga that unwound, every side effect applied by a step with
  a compensation is undone — also when the step never succeeded: an attempt applied the effect
  and then failed (a lost response) or timed out, and the step failed, timed out or was
  cancelled before a retry succeeded. The engine compensates such steps because the saga's
  steps declare ``compensate_attempted=True``; without it they would be left behind (11-14 per
  1,000 doomed sagas before that option existed).
- ``approvals_decided_once``: per approval request one ``approval_resolved`` event, one
  decision per assignee (policy any: one decision in all; all: one from each), decision events
  matching decision rows; no repeated API approval accepted.

Counts also show ``attempted_compensations`` (steps undone for their attempts only) and, of
those, ``lost_response_effects_undone`` (their attempts had applied the effect).

RabbitMQ: ``--broker amqp`` (``make chaos BROKER=amqp``) runs the same on RabbitMQ
(``SIGNOFF_CHAOS_AMQP_URL``, default vhost ``signoff_chaos`` for the user guest, quorum queues,
publisher confirms), started by ``scripts/rabbitmq.sh`` when down; instead of the flush, at
35 % of the ramp it restarts the whole RabbitMQ server (``scripts/rabbitmq.sh restart``, about
6 s down here), with every invariant checked the same way.

Also: ``--calm`` runs the same workload without kills, flush or PostgreSQL hit (a baseline);
``--check-only`` checks the database the last run left.

PostgreSQL restart: a full restart disconnects every client of the server, other people's
test runs included. With ``--pg-restart=restart`` the run first looks for client sessions on
other databases and, if it finds any, terminates its own database's backends instead (and says
so) unless ``--force-restart`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script: import from the project root, and never shadow modules from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS,
    BenchRun,
    admin_url,
    create_database,
    db_name,
    finished_at,
    free_port,
    loadavg,
    migrate,
    root_pythonpath,
    wait_until,
    with_secrets,
    worker_answers,
)
from orchestration.worker import worker_command  # noqa: E402

DB_URL = os.environ.get(
    "SIGNOFF_CHAOS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signoff_chaos"
)
REDIS_URL = os.environ.get("SIGNOFF_CHAOS_REDIS_URL", "redis://127.0.0.1:6379/7")
# --broker amqp (or SIGNOFF_CHAOS_BROKER=amqp, what `make chaos BROKER=amqp` sets): RabbitMQ,
# its own virtual host; the flush becomes a restart of the whole RabbitMQ server.
AMQP_URL = os.environ.get(
    "SIGNOFF_CHAOS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/signoff_chaos"
)
BROKER_URL = REDIS_URL  # main() switches it to AMQP_URL for --broker amqp
WORKFLOW_MODULES = "bench.chaos_workflows"
QUEUE = "signoff"
MIX = {
    "chaos_sequence": 25,
    "chaos_parallel": 20,
    "chaos_approval": 20,
    "chaos_saga": 20,
    "chaos_family": 15,
}
TERMINAL = ("succeeded", "failed", "cancelled", "compensated")
# Tables a reset keeps: the schema's own bookkeeping and beat's schedule (set by migrations).
KEEP_TABLES = ("django_migrations", "django_content_type", "auth_permission")
KEEP_PREFIXES = ("django_celery_beat_",)

_started = time.monotonic()


def log(message: str) -> None:
    print(f"[chaos {time.monotonic() - _started:7.1f}s] {message}", flush=True)


class Stats:
    """Counters shared by the threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counts[name] += value

    def note(self, text: str) -> None:
        log(text)
        with self._lock:
            self.notes.append(f"{time.monotonic() - _started:.1f}s {text}")


# -- environment: database, Redis, processes ----------------------------------------------------


def chaos_env(doorbell_grace: int) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = dict(os.environ)
    for name in (
        "SIGNOFF_TEST_DATABASE_URL",
        "SIGNOFF_TEST_REDIS_URL",
        "SIGNOFF_TEST_BROKER_URL",
        "SIGNOFF_TEST_DB_POOLER_URL",
        "SIGNOFF_DB_POOLER",
    ):
        env.pop(name, None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": DB_URL,
            "CELERY_BROKER_URL": BROKER_URL,
            "SIGNOFF_WORKFLOW_MODULES": WORKFLOW_MODULES,
            "SIGNOFF_DOORBELL_GRACE_SECONDS": str(doorbell_grace),
            "SIGNOFF_ENCRYPTION_KEYS": os.environ.get("SIGNOFF_CHAOS_ENCRYPTION_KEYS")
            or Fernet.generate_key().decode(),
            "EMAIL_URL": "locmem://",
            "LOG_LEVEL": os.environ.get("SIGNOFF_CHAOS_LOG_LEVEL", "WARNING"),
            "PYTHONPATH": root_pythonpath(env),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return with_secrets(env)


def ensure_database(fresh: bool) -> None:
    import psycopg
    from psycopg import sql

    name = db_name(DB_URL)
    with psycopg.connect(admin_url(DB_URL), autocommit=True, connect_timeout=5) as conn:
        if fresh:
            log(f"dropping database {name}")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if not create_database(conn, name, log):
            # leftovers of an interrupted run must not write while we reset
            terminate_backends(conn)


def terminate_backends(conn: Any) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        (db_name(DB_URL),),
    ).fetchall()
    return sum(1 for (done,) in rows if done)


def reset_data() -> dict[str, str]:
    """Empty every table but the schema's bookkeeping, recreate the ledger, create the users
    and their tokens; return the tokens by username."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from bench.chaos_workflows import APPROVERS, LEDGER_DDL

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS chaos_ledger, chaos_executions")
        tables = [
            t
            for t in connection.introspection.table_names(cursor)
            if t not in KEEP_TABLES and not t.startswith(KEEP_PREFIXES)
        ]
        quoted = ", ".join(connection.ops.quote_name(t) for t in tables)
        cursor.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")
        for statement in LEDGER_DDL:
            cursor.execute(statement)
    User = get_user_model()
    tokens = {}
    for username in ("chaos_starter", *APPROVERS):
        user = User.objects.create_user(username, f"{username}@chaos.example", "chaos-password")
        tokens[username] = Token.objects.create(user=user).key
    connection.close()
    return tokens


class Process:
    """A child in its own process group (so a kill takes its children too)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_at: float | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== {datetime.now(UTC).isoformat()} start {self.name}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        if _pid_file is not None:  # for the next run, should this one be SIGKILLed
            with open(_pid_file, "a") as pids:
                pids.write(f"{self.process.pid}\n")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """A worker counts as ready a second after its pool processes exist (it connects to
        the broker right after forking them); a ping would not do, the Redis flush drops the
        control bindings of running workers."""
        if not self.alive():
            return False
        if self.ready_at is None and len(self.children()) >= 2:
            self.ready_at = time.monotonic() + 1.0
        return self.ready_at is not None and time.monotonic() >= self.ready_at

    def children(self) -> list[int]:
        if self.process is None:
            return []
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []
        return [pid for pid in pids if _running(pid)]

    def kill(self) -> None:
        """SIGKILL the whole process group, no goodbye."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def terminate(self) -> None:
        """SIGTERM the process group (a warm shutdown), without waiting."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed pool process its worker has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def worker_process(slot: int, env: dict[str, str], generation: int, logs: Path) -> Process:
    name = f"chaos-{slot}-{generation}-{os.getpid()}@localhost"
    command = worker_command(
        queues=QUEUE, concurrency=2, hostname=name, loglevel="WARNING", pool="prefork"
    )
    return Process(name, command, env, logs / f"worker-{slot}.log")


def web_process(env: dict[str, str], port: int, logs: Path) -> Process:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--threads",
        "4",
        "--worker-class",
        "gthread",
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
    ]
    return Process("web", command, env, logs / "web.log")


# -- the API client -----------------------------------------------------------------------------


class Api:
    """A tiny JSON client with one keep-alive connection (one per thread)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.conn: http.client.HTTPConnection | None = None

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, JSON body); raises OSError / HTTPException when the server is unreachable."""
        for tries in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(
                    method,
                    path,
                    body=None if body is None else json.dumps(body),
                    headers={
                        "Authorization": f"Token {self.token}",
                        "Content-Type": "application/json",
                        "Accept": "application/json",
                        **(headers or {}),
                    },
                )
                response = self.conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if tries:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw[:300].decode(errors="replace")
            return response.status, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _json(value: Any) -> Any:
    """A JSON column as read by a raw query (text or already parsed)."""
    return json.loads(value) if isinstance(value, str) else value


# -- the run ------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.tokens: dict[str, str] = {}
        self.stats = Stats()
        self.stop = threading.Event()
        self.starts_done = threading.Event()
        self.chaos_done = threading.Event()
        self.port = free_port()
        self.web = web_process(env, self.port, args.logs)
        self.workers: list[Process] = []
        self.generation = 0
        self.workers_lock = threading.Lock()
        self.plan = self.make_plan()
        self.t0 = 0.0
        self.finished = 0  # terminal instances, as the progress loop last counted them
        self.starters_left = 0
        self.pg_mode = args.pg_restart
        self.errors: list[str] = []
        # API bookkeeping for the approvals invariant.
        self.approved_by: dict[int, list[str]] = defaultdict(list)
        self.repeat_accepted: list[str] = []

    def make_plan(self) -> list[dict[str, Any]]:
        rng = random.Random(self.args.seed)
        names, weights = zip(*MIX.items(), strict=True)
        plan = []
        for n in range(self.args.workflows):
            workflow = rng.choices(names, weights)[0]
            body = {
                "workflow": workflow,
                "input": {"seed": self.args.seed, "n": n, "fail_rate": self.args.fail_rate},
                "business_key": f"chaos-{self.args.seed}-{n}",
            }
            if workflow == "chaos_saga":
                body["input"]["doom"] = rng.random() < 0.5
            plan.append(body)
        return plan

    # -- processes ------------------------------------------------------------------------------
    def start_worker(self, slot: int) -> Process:
        self.generation += 1
        worker = worker_process(slot, self.env, self.generation, self.args.logs)
        worker.start()
        self.stats.add("worker_starts")
        return worker

    def start_processes(self) -> None:
        self.web.start()
        self.workers = [self.start_worker(slot) for slot in range(2)]

    def wait_ready(self) -> None:
        api = Api(self.port, self.tokens["chaos_starter"])
        wait_until(
            lambda: api.call("GET", "/api/v1/workflows/")[0] == 200,
            60,
            "the web server",
            interval=0.2,
            quiet=True,
        )
        api.close()
        for worker in self.workers:
            wait_until(
                lambda w=worker: worker_answers(w.name),
                60,
                f"worker {worker.name}",
                interval=0.2,
                quiet=True,
            )
        log(f"web on port {self.port}, workers {[w.process.pid for w in self.workers]}")

    def stop_processes(self) -> None:
        with self.workers_lock:
            processes = [*self.workers, self.web]
            for process in processes:
                process.terminate()
            for process in processes:
                process.stop()

    # -- threads --------------------------------------------------------------------------------
    def starter(self, index: int) -> None:
        """Start every ``--starters``-th instance of the plan at its time on the ramp."""
        api = Api(self.port, self.tokens["chaos_starter"])
        spacing = self.args.ramp / max(1, len(self.plan))
        cap = self.args.max_in_flight
        try:
            for n in range(index, len(self.plan), self.args.starters):
                due = self.t0 + n * spacing
                # Open loop (the ramp), optionally with a cap on unfinished instances.
                while not self.stop.is_set() and (
                    time.monotonic() < due or (cap and n - self.finished >= cap)
                ):
                    time.sleep(0.02)
                if self.stop.is_set():
                    return
                self.start_one(api, self.plan[n])
        finally:
            api.close()
            with self.workers_lock:
                self.starters_left -= 1
                if self.starters_left == 0:
                    self.starts_done.set()

    def start_one(self, api: Api, body: dict[str, Any]) -> None:
        key = body["business_key"]
        tries = 0
        while not self.stop.is_set():
            tries += 1
            try:
                status, data = api.call(
                    "POST", "/api/v1/instances/", body, {"Idempotency-Key": key}
                )
            except (OSError, http.client.HTTPException):
                status, data = 0, None
            if status == 201:
                self.stats.add("api_starts_created")
                return
            if status == 200:
                # A retry whose first try committed: the key answered with the same instance.
                self.stats.add("api_starts_replayed")
                return
            if status >= 500 or status == 0:
                self.stats.add("api_start_retries")
                time.sleep(min(2.0, 0.2 * tries))
                continue
            self.errors.append(f"start {key}: HTTP {status} {data}")
            self.stats.add("api_starts_rejected")
            return

    def approver(self, username: str) -> None:
        api = Api(self.port, self.tokens[username])
        path = "/api/v1/approvals/?state=pending&workflow=chaos_approval&page_size=200"
        try:
            while not self.stop.is_set():
                try:
                    status, data = api.call("GET", path)
                except (OSError, http.client.HTTPException):
                    status, data = 0, None
                self.stats.add("api_pending_polls")
                if status != 200:
                    self.stats.add("api_poll_errors")
                    time.sleep(0.5)
                    continue
                items = data.get("results", [])
                for item in items:
                    if self.stop.is_set():
                        return
                    self.approve(api, username, item["id"])
                if not items:
                    time.sleep(0.5)
        finally:
            api.close()

    def approve(self, api: Api, username: str, request_id: int) -> None:
        path = f"/api/v1/approvals/{request_id}/approve/"
        body = {"comment": f"chaos approval by {username}"}
        try:
            status, data = api.call("POST", path, body)
        except (OSError, http.client.HTTPException):
            self.stats.add("api_approve_errors")
            return
        if status == 200:
            self.stats.add("api_approved")
            self.approved_by[request_id].append(username)
            # A double click: must be refused, the first decision stands.
            try:
                again, _ = api.call("POST", path, body)
            except (OSError, http.client.HTTPException):
                return
            self.stats.add("api_repeat_posts")
            if again == 200:
                self.repeat_accepted.append(f"{request_id} by {username}")
            else:
                self.stats.add(f"api_repeat_refused_{again}")
        elif status == 409:
            self.stats.add("api_approve_conflict_409")  # the other approver was first
        elif status >= 500:
            self.stats.add("api_approve_errors")
        else:
            self.stats.add(f"api_approve_http_{status}")

    def sweeper(self) -> None:
        from django.db import connection

        from orchestration.sweepers import sweep_all

        while not self.stop.is_set():
            try:
                acted = sweep_all()
                self.stats.add("sweeps")
                for name, count in acted.items():
                    self.stats.add(f"sweep_{name}", count)
            except Exception as exc:  # noqa: BLE001 - the database may be restarting
                self.stats.add("sweep_errors")
                log(f"sweep failed: {type(exc).__name__}: {str(exc).strip()[:120]}")
                connection.close()
                time.sleep(0.5)
            self.stop.wait(self.args.sweep_every)
        connection.close()

    def monkey(self) -> None:
        """Kill a worker every ``--kill-every`` seconds (once a victim and, for a whole-worker
        kill, another worker are ready, so the run always has some capacity) until the ramp
        is over; flush Redis and hit PostgreSQL once each, at 35 % and 65 % of the ramp. What
        is still in flight then finishes without chaos."""
        window = max(self.args.ramp, 3 * self.args.kill_every)
        pending = {"flush": self.t0 + 0.35 * window, "pg": self.t0 + 0.65 * window}
        if self.args.calm:
            pending, window = {}, 0.0

        def chaos_time() -> bool:
            return time.monotonic() < self.t0 + window

        next_kill = self.t0 + self.args.kill_every
        kills = 0
        while not self.stop.is_set() and (pending or chaos_time()):
            now = time.monotonic()
            for what, due in list(pending.items()):
                if now >= due:
                    del pending[what]
                    self.chaos_event(self.hit_broker if what == "flush" else self.hit_postgres)
            if now >= next_kill and chaos_time():
                child_only = (kills + 1) % 3 == 0
                if self.chaos_event(partial(self.kill_worker, child_only=child_only)):
                    kills += 1
                    next_kill = time.monotonic() + self.args.kill_every
            time.sleep(0.1)
        self.chaos_done.set()
        # After the chaos window: keep two workers alive until the end.
        while not self.stop.wait(1.0):
            with self.workers_lock:
                if self.stop.is_set():
                    break
                for slot, worker in enumerate(self.workers):
                    if not worker.alive():
                        self.stats.note(f"worker {worker.name} exited; starting a new one")
                        self.workers[slot] = self.start_worker(slot)

    def chaos_event(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - report, keep the run going
            self.stats.note(f"chaos event failed: {type(exc).__name__}: {exc}")
            self.stats.add("chaos_event_errors")
            return None

    def kill_worker(self, *, child_only: bool) -> bool:
        """SIGKILL the oldest ready worker (its whole process group) and start another; or,
        every third time and whenever that would leave no ready worker, SIGKILL one pool
        process of it (its worker starts a new one). False (nothing done) with no ready
        worker."""
        with self.workers_lock:
            if self.stop.is_set():
                return False
            ready = sorted((w.started_at, slot) for slot, w in enumerate(self.workers) if w.ready())
            if not ready:
                return False
            slot = ready[0][1]
            worker = self.workers[slot]
            if child_only or len(ready) < 2:
                children = worker.children()
                if not children:
                    return False
                victim = random.choice(children)
                os.kill(victim, signal.SIGKILL)
                self.stats.add("kills_pool_process")
                log(f"SIGKILL pool process {victim} of {worker.name}")
                return True
            worker.kill()
            self.stats.add("kills_worker")
            log(f"SIGKILL worker {worker.name} (group {worker.process.pid}); starting another")
            self.workers[slot] = self.start_worker(slot)
            return True

    def hit_broker(self) -> None:
        """Redis: FLUSHDB. RabbitMQ: restart the whole server (scripts/rabbitmq.sh restart)."""
        if BROKER_URL == AMQP_URL:
            self.restart_rabbitmq()
        else:
            self.flush_redis()

    def restart_rabbitmq(self) -> None:
        began = time.monotonic()
        subprocess.run(
            [str(ROOT / "scripts" / "rabbitmq.sh"), "restart", amqp_vhost()],
            check=True,
            timeout=180,
            stdout=subprocess.DEVNULL,
        )
        self.stats.add("rabbitmq_restarts")
        self.stats.note(f"RabbitMQ restarted in {time.monotonic() - began:.1f}s")

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        queued = client.llen(QUEUE)
        unacked = client.hlen("unacked")
        client.flushdb()
        self.stats.add("redis_flushes")
        self.stats.add("messages_lost_queued", queued)
        self.stats.add("messages_lost_unacked", unacked)
        self.stats.note(f"FLUSHDB on {REDIS_URL}: {queued} queued and {unacked} unacked lost")

    def hit_postgres(self) -> None:
        import psycopg

        mode = self.pg_mode
        if mode == "none":
            return
        if mode == "restart" and not self.args.force_restart:
            others = other_database_clients()  # again: someone may have started since
            if others:
                self.stats.note(
                    f"other databases have clients now ({', '.join(others)}); terminating "
                    f"{db_name(DB_URL)}'s backends instead of restarting PostgreSQL"
                )
                mode = self.pg_mode = "terminate (others connected)"
        if mode == "restart":
            began = time.monotonic()
            version = sorted(os.listdir("/etc/postgresql"))[-1]
            result = subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if result.returncode == 0:
                wait_until(
                    lambda: psycopg.connect(admin_url(DB_URL), connect_timeout=2).close() or True,
                    60,
                    "PostgreSQL after its restart",
                    interval=0.2,
                    quiet=True,
                )
                took = time.monotonic() - began
                self.stats.add("pg_restarts")
                self.stats.note(f"PostgreSQL restarted ({version} main), back after {took:.1f}s")
                return
            self.stats.note(
                f"pg_ctlcluster restart failed ({result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[:200]}); terminating backends instead"
            )
            self.pg_mode = "terminate (restart failed)"
        with psycopg.connect(admin_url(DB_URL), autocommit=True, connect_timeout=5) as conn:
            count = terminate_backends(conn)
        self.stats.add("pg_terminations")
        self.stats.add("pg_backends_terminated", count)
        self.stats.note(f"pg_terminate_backend: {count} backends of {db_name(DB_URL)} terminated")

    # -- driving --------------------------------------------------------------------------------
    def progress(self) -> dict[str, int]:
        from orchestration.models import WorkflowInstance

        rows = WorkflowInstance.objects.values_list("state").order_by()
        return dict(Counter(state for (state,) in rows))

    def drive(self) -> dict[str, float]:
        from django.db import connection

        self.t0 = time.monotonic()
        self.starters_left = self.args.starters
        threads = [
            *(
                threading.Thread(target=self.starter, args=(i,), name=f"starter-{i}", daemon=True)
                for i in range(self.args.starters)
            ),
            threading.Thread(target=self.sweeper, name="sweeper", daemon=True),
            threading.Thread(target=self.monkey, name="monkey", daemon=True),
            *(
                threading.Thread(target=self.approver, args=(name,), name=name, daemon=True)
                for name in ("chaos_a", "chaos_b")
            ),
        ]
        for thread in threads:
            thread.start()
        last_log = 0.0
        states: dict[str, int] = {}
        finished_at = None
        starts_done_at = None
        while True:
            if starts_done_at is None and self.starts_done.is_set():
                starts_done_at = time.monotonic()
            # The timeout runs from the end of the ramp, or from the last start if later.
            limit = max(self.t0 + self.args.ramp, starts_done_at or time.monotonic())
            if time.monotonic() > limit + self.args.timeout:
                break
            time.sleep(1.0)
            try:
                states = self.progress()
            except Exception as exc:  # noqa: BLE001 - the database may be restarting
                log(f"progress query failed: {type(exc).__name__}")
                connection.close()
                continue
            done = sum(states.get(s, 0) for s in TERMINAL)
            self.finished = done
            total = sum(states.values())
            if time.monotonic() - last_log >= 5:
                last_log = time.monotonic()
                log(f"{total} started, {done} terminal {dict(sorted(states.items()))}")
            if (
                self.starts_done.is_set()
                and self.chaos_done.is_set()
                and total >= len(self.plan)
                and done == total
            ):
                finished_at = time.monotonic()
                break
        if finished_at is None:
            self.stats.note(f"timed out: {dict(sorted(states.items()))}")
        self.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        connection.close()
        end = finished_at or time.monotonic()
        return {"run_s": round(end - self.t0, 1), "timed_out": finished_at is None}


# -- the checks ---------------------------------------------------------------------------------


class Checker:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.results: dict[str, dict[str, Any]] = {}
        self.findings: dict[str, dict[str, Any]] = {}

    def verdict(self, name: str, problems: list[str], detail: str) -> None:
        self.results[name] = {
            "ok": not problems,
            "violations": len(problems),
            "detail": detail,
            "examples": problems[:10],
        }

    def sql(self, query: str, params: list[Any] | None = None) -> list[tuple]:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(query, params or [])
            return cursor.fetchall()

    def check_all(self) -> dict[str, Any]:
        from approvals.models import ApprovalRequest, Decision
        from orchestration.models import Event, StepRun, WorkflowInstance

        self.t_instance = WorkflowInstance._meta.db_table
        self.t_step = StepRun._meta.db_table
        self.t_event = Event._meta.db_table
        self.t_request = ApprovalRequest._meta.db_table
        self.t_decision = Decision._meta.db_table
        counts = self.check_instances()
        counts.update(self.check_children())
        self.check_events()
        self.check_step_states()
        counts.update(self.check_steps_and_ledger())
        counts.update(self.check_approvals())
        return counts

    def check_instances(self) -> dict[str, Any]:
        from orchestration.models import WorkflowInstance

        plan = {body["business_key"]: body for body in self.run.plan}
        rows = list(
            WorkflowInstance.objects.values_list(
                "id", "workflow", "state", "business_key", "input", "parent_step", "parent_item"
            )
        )
        # The plan's instances are the top-level ones; children (of chaos_family's child and
        # map steps) carry their parent's business key and are checked by children_once.
        top = [row for row in rows if row[5] is None and row[6] is None]
        kids = [row for row in rows if row[5] is not None or row[6] is not None]
        keys = Counter(row[3] for row in top)
        problems = [f"{k}: {n} instances" for k, n in keys.items() if n > 1]
        problems += [f"{k}: never started" for k in plan if k not in keys]
        problems += [f"{k}: not in the plan" for k in keys if k not in plan]
        self.verdict(
            "instances_started",
            problems,
            f"{len(top)} instances for {len(plan)} planned (and {len(kids)} children)",
        )
        open_ = [f"{r[0]} {r[1]} {r[2]}" for r in rows if r[2] not in TERMINAL]
        self.verdict("all_terminal", open_, f"{len(rows) - len(open_)} of {len(rows)} terminal")
        wrong = []
        expected_counts: Counter[str] = Counter()
        for pk, workflow, state, _, data, *_ in rows:
            expected = (
                "compensated" if workflow == "chaos_saga" and data.get("doom") else "succeeded"
            )
            expected_counts[expected] += 1
            if state != expected and state in TERMINAL:
                wrong.append(f"{pk} {workflow}: {state}, expected {expected}")
        self.verdict(
            "expected_outcome",
            wrong,
            ", ".join(f"{n} expected {s}" for s, n in sorted(expected_counts.items())),
        )
        return {
            "instances_by_state": dict(Counter(row[2] for row in top)),
            "instances_by_workflow": dict(Counter(row[1] for row in top)),
            "child_instances_by_state": dict(Counter(row[2] for row in kids)),
            "doomed_sagas": sum(1 for row in top if row[4].get("doom")),
        }

    def check_children(self) -> dict[str, Any]:
        """Children are started once per attempt of their child step or map item, linked to
        it, and their parent took the output of the one that counted."""
        from orchestration.fanout_models import MapItem

        t_item = MapItem._meta.db_table
        problems = []
        # child steps: one child per attempt; a succeeded step holds its last child's output
        rows = self.sql(
            f"""
            SELECT s.instance_id::text || ':' || s.name, s.state, s.attempt, s.output,
                   array_agg(c.parent_attempt ORDER BY c.parent_attempt),
                   array_agg(c.state ORDER BY c.parent_attempt),
                   (array_agg(c.output ORDER BY c.parent_attempt DESC))[1]
            FROM {self.t_step} s
            LEFT JOIN {self.t_instance} c ON c.parent_step_id = s.id
            WHERE s.kind = 'child'
            GROUP BY s.id
            """
        )
        child_steps = len(rows)
        # map items run as children: one child per item attempt, the item holds its output
        rows += self.sql(
            f"""
            SELECT s.instance_id::text || ':' || s.name || ':' || m.index, m.state, m.attempt,
                   m.output, array_agg(c.parent_attempt ORDER BY c.parent_attempt),
                   array_agg(c.state ORDER BY c.parent_attempt),
                   (array_agg(c.output ORDER BY c.parent_attempt DESC))[1]
            FROM {t_item} m JOIN {self.t_step} s ON s.id = m.step_run_id
            JOIN {self.t_instance} c ON c.parent_item_id = m.id
            GROUP BY s.instance_id, s.name, m.id
            """
        )
        for key, state, attempt, output, attempts, states, last_output in rows:
            attempts = [a for a in attempts if a is not None]
            if len(attempts) != len(set(attempts)):
                problems.append(f"{key}: children per attempt {attempts}")
            if state == "succeeded":
                if not attempts or attempts[-1] != attempt or states[-1] != "succeeded":
                    problems.append(f"{key}: succeeded at attempt {attempt}, children {states}")
                elif _json(output) != _json(last_output):
                    problems.append(f"{key}: output is not its child's")
        child_items = len(rows) - child_steps
        # a map step over children that succeeded: every item succeeded and has its child
        missing = self.sql(
            f"""
            SELECT s.instance_id::text || ':' || s.name || ':' || m.index, m.state
            FROM {t_item} m JOIN {self.t_step} s ON s.id = m.step_run_id
            JOIN {self.t_instance} i ON i.id = s.instance_id
            WHERE i.workflow = 'chaos_family' AND s.name = 'brood'
              AND i.state = 'succeeded' AND (m.state <> 'succeeded' OR NOT EXISTS (
                SELECT 1 FROM {self.t_instance} c WHERE c.parent_item_id = m.id))
            """
        )
        problems += [f"{key}: {state} in a succeeded family, or no child" for key, state in missing]
        self.verdict(
            "children_once",
            problems,
            f"{child_steps} child steps and {child_items} child items, one child per attempt",
        )
        return {"child_steps": child_steps, "child_items": child_items}

    def check_events(self) -> None:
        rows = self.sql(
            f"""
            SELECT i.id, i.last_seq, count(e.id), coalesce(min(e.seq), 0),
                   coalesce(max(e.seq), 0)
            FROM {self.t_instance} i LEFT JOIN {self.t_event} e ON e.instance_id = i.id
            GROUP BY i.id, i.last_seq
            """
        )
        gaps = [
            f"{pk}: {n} events, seq {lo}..{hi}, last_seq {last}"
            for pk, last, n, lo, hi in rows
            if not (n > 0 and lo == 1 and n == hi == last)
        ]
        total = sum(row[2] for row in rows)
        self.verdict("events_gap_free", gaps, f"{total} events in {len(rows)} instances")
        terminal_types = {
            "succeeded": "instance_succeeded",
            "failed": "instance_failed",
            "cancelled": "instance_cancelled",
            "compensated": "instance_compensated",
        }
        rows = self.sql(
            f"""
            SELECT i.id, i.state,
                   count(*) FILTER (WHERE e.type = 'instance_started'),
                   count(*) FILTER (WHERE e.type = ANY(%s)),
                   (array_agg(e.type ORDER BY e.seq DESC))[1]
            FROM {self.t_instance} i JOIN {self.t_event} e ON e.instance_id = i.id
            GROUP BY i.id, i.state
            """,
            [list(terminal_types.values())],
        )
        problems = []
        for pk, state, starts, ends, last in rows:
            if starts != 1:
                problems.append(f"{pk}: {starts} instance_started events")
            if state in terminal_types and (ends != 1 or last != terminal_types[state]):
                problems.append(f"{pk}: {state} with {ends} terminal events, last {last}")
        self.verdict("one_start_one_end", problems, f"{len(rows)} instances")

    def check_step_states(self) -> None:
        """Every step of a finished instance is settled the way its outcome says, and its
        attempt counter agrees with the claims in its history."""
        rows = self.sql(
            f"""
            SELECT i.id, i.workflow, i.state, s.name, s.kind, s.state, s.attempt,
                   (SELECT array_agg(DISTINCT e.attempt ORDER BY e.attempt)
                    FROM {self.t_event} e WHERE e.instance_id = i.id AND e.step = s.name
                    AND e.type = 'step_started')
            FROM {self.t_instance} i JOIN {self.t_step} s ON s.instance_id = i.id
            WHERE i.state = ANY(%s)
            """,
            [list(TERMINAL)],
        )
        # A doomed saga: reserve undone; hold (failed for good) and charge undone for their
        # claimed attempts even when they never succeeded (compensate_attempted); charge
        # cancelled only if it never got a claim; ship never started.
        doomed = {
            "reserve": {"compensated"},
            "charge": {"compensated", "cancelled"},
            "hold": {"compensated"},
            "ship": {"cancelled"},
        }
        problems = []
        for pk, workflow, state, name, kind, step_state, attempt, claimed in rows:
            where = f"{pk} {workflow} ({state}) step {name}"
            if state == "succeeded":
                wanted = {"succeeded"}
            elif state == "compensated" and workflow == "chaos_saga":
                wanted = doomed[name]
            else:
                wanted = {step_state}  # an unexpected outcome is reported elsewhere
            if step_state not in wanted:
                problems.append(f"{where}: {step_state}, expected {' or '.join(sorted(wanted))}")
            unwound = state == "compensated" and workflow == "chaos_saga"
            if unwound and step_state == "cancelled" and claimed and name != "ship":
                problems.append(f"{where}: cancelled after claims {claimed}, not undone")
            # A step cancelled while waiting to retry is one attempt past its last claim (and
            # stays so when the saga then undoes it for that claim).
            allowed = (
                {claimed[-1], claimed[-1] + 1}
                if claimed and step_state in ("cancelled", "compensated")
                else {claimed[-1] if claimed else None}
            )
            if kind == "task" and claimed and (attempt not in allowed or claimed[0] < 1):
                problems.append(f"{where}: at attempt {attempt}, claims of attempts {claimed}")
        self.verdict("steps_settled", problems, f"{len(rows)} steps of finished instances")

    def check_steps_and_ledger(self) -> dict[str, Any]:
        scheduled = self.sql(
            f"""
            SELECT e.instance_id, e.step, count(*) FROM {self.t_event} e
            WHERE e.type = 'step_scheduled' GROUP BY 1, 2 HAVING count(*) > 1
            """
        )
        task_steps = self.sql(
            f"SELECT count(*) FROM {self.t_step} WHERE kind = 'task' AND attempt > 0"
        )[0][0]
        self.verdict(
            "step_scheduled_once",
            [f"{i}:{s} scheduled {n} times" for i, s, n in scheduled],
            f"{task_steps} task steps scheduled",
        )
        claimed = self.sql(
            f"""
            SELECT e.instance_id, e.step, e.attempt, count(*) FROM {self.t_event} e
            WHERE e.type = 'step_started' GROUP BY 1, 2, 3 HAVING count(*) > 1
            """
        )
        claims = self.sql(f"SELECT count(*) FROM {self.t_event} WHERE type = 'step_started'")[0][0]
        self.verdict(
            "claimed_once_per_attempt",
            [f"{i}:{s} attempt {a} claimed {n} times" for i, s, a, n in claimed],
            f"{claims} claims",
        )
        # The ledger: executions per (key, phase, attempt).
        twice = self.sql(
            """
            SELECT key, phase, attempt, event, count(*) FROM chaos_executions
            WHERE event IN ('started', 'completed')
            GROUP BY 1, 2, 3, 4 HAVING count(*) > 1
            """
        )
        executions = dict(
            (f"{phase}_{event}", n)
            for phase, event, n in self.sql(
                "SELECT phase, event, count(*) FROM chaos_executions GROUP BY 1, 2"
            )
        )
        self.verdict(
            "executed_once_per_attempt",
            [f"{k} {p} attempt {a}: {e} {n} times" for k, p, a, e, n in twice],
            f"{executions.get('forward_started', 0)} step and "
            f"{executions.get('compensate_started', 0)} compensation executions",
        )
        # Effects against the engine's view of each task step.
        steps = self.sql(
            f"""
            SELECT s.instance_id::text || ':' || s.name, s.state, s.attempt, s.comp_attempt,
                   s.output, i.workflow = 'chaos_saga' AND i.state = 'compensated',
                   i.state = ANY(%s), s.comp_attempted
            FROM {self.t_step} s JOIN {self.t_instance} i ON i.id = s.instance_id
            WHERE s.kind = 'task'
            """,
            [list(TERMINAL)],
        )
        effects = {
            (key, phase): attempt
            for key, phase, attempt in self.sql("SELECT key, phase, attempt FROM chaos_ledger")
        }
        completed = {
            (key, phase, attempt)
            for key, phase, attempt in self.sql(
                "SELECT key, phase, attempt FROM chaos_executions WHERE event = 'completed'"
            )
        }
        problems = []
        partial: list[str] = []
        orphans = 0
        attempted_undone = attempted_with_effect = 0
        succeeded_states = ("succeeded", "compensating", "compensated")
        for key, state, attempt, comp_attempt, output, unwound, finished, attempted in steps:
            forward = (key, "forward") in effects
            if not finished and state not in succeeded_states + ("compensated",):
                continue  # still in flight (a timed-out run): all_terminal reports it
            if attempted:
                # Undone for its claimed attempts although it never succeeded: the effect may
                # or may not have been applied; the undo must run either way (checked below).
                attempted_undone += 1
                attempted_with_effect += forward
                if output is not None:
                    problems.append(f"{key}: undone for its attempts, yet has an output")
            elif state in succeeded_states:
                if not forward:
                    problems.append(f"{key}: {state} but its effect was never applied")
                recorded = (json.loads(output) if isinstance(output, str) else output or {}).get(
                    "attempt"
                )
                if state == "succeeded" and recorded != attempt:
                    problems.append(f"{key}: output of attempt {recorded}, step at {attempt}")
                if (key, "forward", recorded) not in completed:
                    problems.append(f"{key}: attempt {recorded} succeeded, not completed in ledger")
            elif forward and unwound:
                # In a saga that unwound: an attempt applied the effect and then failed (a lost
                # response), and the step ended cancelled, failed or timed out before a retry
                # succeeded — and the saga did not undo it for that attempt.
                partial.append(
                    f"{key}: {state} after attempt {effects[key, 'forward']} applied its "
                    "effect; never compensated"
                )
            elif forward:
                orphans += 1
                problems.append(f"{key}: {state}, yet its effect was applied")
            undo = (key, "compensate") in effects
            if state == "compensated":
                if not undo:
                    problems.append(f"{key}: compensated but its undo was never applied")
                if (key, "compensate", comp_attempt) not in completed:
                    problems.append(f"{key}: compensation {comp_attempt} not completed in ledger")
            elif undo and finished:
                problems.append(f"{key}: {state}, yet its undo was applied")
        # Map items run as tasks (not as children): each succeeded item's effect applied once,
        # by the attempt the engine recorded; none for an item that never succeeded.
        from orchestration.fanout_models import MapItem

        items = self.sql(
            f"""
            SELECT s.instance_id::text || ':' || s.name || ':' || m.index, m.state, m.attempt,
                   m.output, i.state = ANY(%s)
            FROM {MapItem._meta.db_table} m JOIN {self.t_step} s ON s.id = m.step_run_id
            JOIN {self.t_instance} i ON i.id = s.instance_id
            WHERE NOT EXISTS (
                SELECT 1 FROM {self.t_instance} c WHERE c.parent_item_id = m.id)
            """,
            [list(TERMINAL)],
        )
        for key, state, attempt, output, finished in items:
            forward = (key, "forward") in effects
            if state == "succeeded":
                recorded = (_json(output) or {}).get("attempt")
                if not forward:
                    problems.append(f"item {key}: succeeded but its effect was never applied")
                if recorded != attempt:
                    problems.append(f"item {key}: output of attempt {recorded}, item at {attempt}")
                if (key, "forward", recorded) not in completed:
                    problems.append(f"item {key}: attempt {recorded} not completed in ledger")
            elif forward and finished:
                problems.append(f"item {key}: {state}, yet its effect was applied")
        known = {row[0] for row in steps} | {row[0] for row in items}
        problems += [f"{k} ({p}): effect of an unknown step" for k, p in effects if k not in known]
        dupes = self.sql(
            "SELECT count(*) FROM chaos_executions WHERE event IN ('completed', 'failed') "
            "AND applied = false"
        )[0][0]
        forward_effects = sum(1 for (_, p) in effects if p == "forward")
        undo_effects = len(effects) - forward_effects
        self.verdict(
            "unwound_effects_undone",
            partial,
            f"{attempted_undone} saga steps undone for their attempts only, "
            f"{attempted_with_effect} of them had applied their effect (a lost response)",
        )
        self.verdict(
            "effects_exactly_once",
            problems,
            f"{forward_effects} effects ({len(items)} of map items) and {undo_effects} undos "
            "applied once; "
            f"{dupes} repeated applications absorbed by the idempotency key",
        )
        events = dict(
            self.sql(
                f"""
                SELECT type, count(*) FROM {self.t_event}
                WHERE type IN ('step_retrying', 'step_timed_out', 'step_failed',
                               'step_compensation_retrying', 'step_compensated')
                GROUP BY type
                """
            )
        )
        return {
            "executions": executions,
            "attempts": executions.get("forward_started", 0),
            "compensation_attempts": executions.get("compensate_started", 0),
            "injected_failures": executions.get("forward_failed", 0)
            + executions.get("compensate_failed", 0),
            "retries": events.get("step_retrying", 0),
            "step_timeouts": events.get("step_timed_out", 0),
            "compensation_retries": events.get("step_compensation_retrying", 0),
            "compensated_steps": events.get("step_compensated", 0),
            "effects_applied": forward_effects,
            "undos_applied": undo_effects,
            "repeat_effects_absorbed": dupes,
            "orphan_effects": orphans,
            "uncompensated_partial_effects": len(partial),
            "attempted_compensations": attempted_undone,
            "lost_response_effects_undone": attempted_with_effect,
            "claims": claims,
        }

    def check_approvals(self) -> dict[str, Any]:
        rows = self.sql(
            f"""
            SELECT r.id, r.policy, r.state, r.step_name, r.instance_id,
                   (SELECT count(*) FROM {self.t_decision} d WHERE d.request_id = r.id),
                   (SELECT count(DISTINCT d.assignee_id) FROM {self.t_decision} d
                    WHERE d.request_id = r.id),
                   (SELECT count(*) FROM {self.t_event} e WHERE e.instance_id = r.instance_id
                    AND e.step = r.step_name AND e.type = 'approval_resolved'),
                   (SELECT count(*) FROM {self.t_event} e WHERE e.instance_id = r.instance_id
                    AND e.step = r.step_name AND e.type = 'approval_decided')
            FROM {self.t_request} r
            """
        )
        problems = []
        for pk, policy, state, step, instance, decisions, people, resolved, decided in rows:
            where = f"request {pk} ({instance}:{step}, {policy})"
            if decisions != people:
                problems.append(f"{where}: {decisions} decisions by {people} assignees")
            if decided != decisions:
                problems.append(f"{where}: {decided} approval_decided events, {decisions} rows")
            if state != "pending" and resolved != 1:
                problems.append(f"{where}: {state} with {resolved} approval_resolved events")
            if state == "approved":
                wanted = 1 if policy == "any" else 2
                if decisions != wanted:
                    problems.append(f"{where}: approved with {decisions} decisions")
        problems += [f"repeated approval accepted: {x}" for x in self.run.repeat_accepted]
        for request_id, users in self.run.approved_by.items():
            if len(users) != len(set(users)):
                problems.append(f"request {request_id}: approved twice by one user {users}")
        states = Counter(row[2] for row in rows)
        decisions = sum(row[5] for row in rows)
        self.verdict(
            "approvals_decided_once",
            problems,
            f"{len(rows)} requests {dict(states)}, {decisions} decisions",
        )
        return {"approval_requests": dict(states), "decisions": decisions}


# -- main ---------------------------------------------------------------------------------------


_lock_file: Any = None
_pid_file: Path | None = None


def hold_run_lock() -> None:
    """One chaos run at a time per database and Redis database on this machine (two would
    truncate and flush each other's state): wait for the other one to finish."""
    import fcntl
    import hashlib
    import tempfile

    global _lock_file, _pid_file, _started
    tag = hashlib.sha256(f"{DB_URL}|{BROKER_URL}".encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"signoff-chaos-{tag}.lock"
    _lock_file = open(path, "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another chaos run holds {path}; waiting for it to finish")
        fcntl.flock(_lock_file, fcntl.LOCK_EX)
        log("lock acquired; the clock starts again")
        _started = time.monotonic()
    _pid_file = path.with_suffix(".pids")
    reap_orphans(_pid_file)


def reap_orphans(pid_file: Path) -> None:
    """SIGKILL the web server and workers a previous run started and could not stop (it was
    SIGKILLed itself): process groups listed in ``pid_file`` that still run with this run's
    database in their environment."""
    try:
        pids = [int(line) for line in pid_file.read_text().split()]
    except (OSError, ValueError):
        pids = []
    marker = f"DATABASE_URL={DB_URL}".encode()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and os.getpgid(pid) == pid:
            log(f"killing process group {pid}, left running by an earlier chaos run")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pid_file.write_text("")


def other_database_clients() -> list[str]:
    import psycopg

    with psycopg.connect(admin_url(DB_URL), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND datname IS NOT NULL AND datname <> %s "
            "GROUP BY datname ORDER BY datname",
            (db_name(DB_URL),),
        ).fetchall()
    return [f"{name} ({n})" for name, n in rows]


def render(summary: dict[str, Any]) -> str:
    lines = ["", "chaos run summary", "================="]
    c = summary["counts"]
    calm = " (calm: no kills, flush or PostgreSQL hit)" if summary["calm"] else ""
    lines.append(
        f"workflows {summary['workflows']} (seed {summary['seed']}), fail rate "
        f"{summary['fail_rate']:g}, broker: {summary['broker']}, PostgreSQL: "
        f"{summary['pg_restart']}, doorbell grace "
        f"{summary['doorbell_grace_s']}s{calm}"
    )
    lines.append(f"instances by state:    {c.get('instances_by_state')}")
    lines.append(f"instances by workflow: {c.get('instances_by_workflow')}")
    lines.append(
        f"attempts {c.get('attempts')} (claims {c.get('claims')}), retries {c.get('retries')}, "
        f"step timeouts {c.get('step_timeouts')}, injected failures "
        f"{c.get('injected_failures')}, compensation attempts {c.get('compensation_attempts')} "
        f"(retries {c.get('compensation_retries')})"
    )
    lines.append(
        f"effects {c.get('effects_applied')}, undos {c.get('undos_applied')}, repeats absorbed "
        f"{c.get('repeat_effects_absorbed')}; approval requests {c.get('approval_requests')}, "
        f"decisions {c.get('decisions')}"
    )
    chaos = summary["chaos"]
    lines.append(
        f"kills: {chaos.get('kills_worker', 0)} workers + {chaos.get('kills_pool_process', 0)} "
        f"pool processes, worker starts {chaos.get('worker_starts', 0)}; redis flushes "
        f"{chaos.get('redis_flushes', 0)} ({chaos.get('messages_lost_queued', 0)} queued + "
        f"{chaos.get('messages_lost_unacked', 0)} unacked messages lost); rabbitmq restarts "
        f"{chaos.get('rabbitmq_restarts', 0)}; pg restarts "
        f"{chaos.get('pg_restarts', 0)}, pg terminations {chaos.get('pg_terminations', 0)} "
        f"({chaos.get('pg_backends_terminated', 0)} backends)"
    )
    lines.append(
        "api: "
        + ", ".join(f"{k[4:]} {v}" for k, v in sorted(chaos.items()) if k.startswith("api_"))
    )
    lines.append(
        "sweeps: "
        + ", ".join(f"{k} {v}" for k, v in sorted(chaos.items()) if k.startswith("sweep"))
    )
    e = summary["elapsed"]
    lines.append(
        f"elapsed: setup {e['setup_s']}s, run {e['run_s']}s (ramp {summary['ramp_s']}s), "
        f"checks {e['checks_s']}s, total {e['total_s']}s"
    )
    lines.append("")
    for name, result in summary["invariants"].items():
        state = "ok" if result["ok"] else f"VIOLATED ({result['violations']})"
        lines.append(f"invariant {name}: {state} - {result['detail']}")
        for example in result["examples"] if not result["ok"] else []:
            lines.append(f"    {example}")
    for name, finding in summary["findings"].items():
        lines.append(f"finding {name}: {finding['count']} - {finding['detail']}")
        for example in finding["examples"][:3]:
            lines.append(f"    {example}")
    lines.append("")
    lines.append(f"chaos: {'PASS' if summary['passed'] else 'FAIL'}")
    return "\n".join(lines)


def amqp_vhost() -> str:
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(AMQP_URL).path.lstrip("/")) or "/"


def empty_broker() -> None:
    """Redis: FLUSHDB of its database. RabbitMQ: start it when down and give the run a fresh
    virtual host (its queues, the delayed-delivery ones too, are deleted with the old one)."""
    if BROKER_URL != AMQP_URL:
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        return
    script = str(ROOT / "scripts" / "rabbitmq.sh")
    subprocess.run([script, "start", amqp_vhost()], check=True, timeout=300)
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", amqp_vhost()], check=True, timeout=60)
    subprocess.run([script, "vhost", amqp_vhost()], check=True, timeout=60)


def setup_and_drive(
    args: argparse.Namespace, env: dict[str, str]
) -> tuple[float, Run, dict[str, Any]]:
    ensure_database(args.fresh_db)
    empty_broker()  # before the workers declare their queues

    import django

    django.setup()
    import config.celery  # noqa: F401 - binds the shared tasks to the configured app

    run = Run(args, env)
    try:
        # The web server and the workers boot (slow on a busy machine) while we migrate: none
        # of them touches the database before the first request or message.
        run.start_processes()
        log(f"migrating {db_name(DB_URL)}")
        migrate()
        run.tokens = reset_data()
        run.wait_ready()
        setup_s = time.monotonic() - _started
        log(f"setup done in {setup_s:.1f}s; driving {args.workflows} workflows over {args.ramp:g}s")
        timing = run.drive()
    finally:
        log("stopping web and workers")
        run.stop.set()
        run.stop_processes()
    return setup_s, run, timing


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("chaos", __doc__, log)
    parser = bench.parser
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fail-rate", type=float, default=0.2, help="transient failures")
    parser.add_argument(
        "--ramp",
        type=float,
        help="seconds over which starts are spread (default 0.1 s each, "
        "at least 25 s); the chaos events happen within it",
    )
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument(
        "--starters", type=int, default=4, help="API client threads starting instances"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="unfinished instances at most (0: no cap); the starter waits beyond, so the "
        "ramp stretches and starts may come after the chaos window",
    )
    parser.add_argument(
        "--pg-restart",
        choices=["restart", "terminate", "none"],
        default="restart",
        help="restart: pg_ctlcluster restart (falls back to terminate); terminate: "
        "pg_terminate_backend on the chaos database's backends only",
    )
    parser.add_argument(
        "--broker",
        choices=["redis", "amqp"],
        default=os.environ.get("SIGNOFF_CHAOS_BROKER", "redis"),
        help="redis: flush its database once; amqp: RabbitMQ (quorum queues), restarted once "
        "(default: SIGNOFF_CHAOS_BROKER or redis)",
    )
    parser.add_argument(
        "--force-restart",
        action="store_true",
        help="restart PostgreSQL even while other databases have clients",
    )
    parser.add_argument("--sweep-every", type=float, default=0.5)
    parser.add_argument(
        "--doorbell-grace",
        type=int,
        default=2,
        help="SIGNOFF_DOORBELL_GRACE_SECONDS for every process: a scheduled step whose message "
        "was not consumed for this long is rung again",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds after the ramp (or the last start) to wait for every instance to "
        "finish (default 3 min for up to 100 workflows, 10 min for 1,000)",
    )
    parser.add_argument("--fresh-db", action="store_true", help="drop and recreate the database")
    parser.add_argument(
        "--calm",
        action="store_true",
        help="a baseline: no kills, no flush, no PostgreSQL hit (transient failures still)",
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="only check the invariants on the database as the last run left it (same "
        "--workflows and --seed)",
    )
    parser.add_argument(
        "--logs", type=Path, default=RESULTS / "chaos-logs", help="web and worker logs"
    )
    args = bench.parse(argv)
    global BROKER_URL
    BROKER_URL = AMQP_URL if args.broker == "amqp" else REDIS_URL
    if args.ramp is None:
        args.ramp = max(25.0, 0.1 * args.workflows)
    if args.timeout is None:
        args.timeout = 180.0 if args.workflows <= 100 else max(180.0, 0.6 * args.workflows)

    # SIGTERM (a CI timeout) unwinds like Ctrl-C: the web server and workers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.check_only:
        hold_run_lock()
    for old in args.logs.glob("*.log") if not args.check_only else []:
        old.unlink()
    env = chaos_env(args.doorbell_grace)
    os.environ.update(env)
    if args.calm or args.check_only:
        args.pg_restart = "none"
    if args.pg_restart == "restart" and not args.force_restart:
        others = other_database_clients()
        if others:
            print(
                "NOTE: other databases have clients that a PostgreSQL restart would disconnect: "
                f"{', '.join(others)}. Terminating {db_name(DB_URL)}'s backends instead "
                "(--force-restart to restart anyway).",
                flush=True,
            )
            args.pg_restart = "terminate"
    log(f"{args.workflows} workflows, seed {args.seed}, pg: {args.pg_restart}")
    if args.check_only:
        import django

        django.setup()
        run = Run(args, env)
        setup_s, timing = 0.0, {"run_s": 0.0, "timed_out": False}
    else:
        setup_s, run, timing = setup_and_drive(args, env)
    began = time.monotonic()
    checker = Checker(run)
    counts = checker.check_all()
    if run.errors:
        checker.results["api_errors"] = {
            "ok": False,
            "violations": len(run.errors),
            "detail": "unexpected API answers",
            "examples": run.errors[:10],
        }
    summary = {
        "workflows": args.workflows,
        "seed": args.seed,
        "fail_rate": args.fail_rate,
        "ramp_s": args.ramp,
        "kill_every_s": args.kill_every,
        "calm": args.calm,
        "doorbell_grace_s": args.doorbell_grace,
        "pg_restart": run.pg_mode,
        "broker": args.broker,
        "timed_out": timing["timed_out"],
        "counts": counts,
        "chaos": dict(sorted(run.stats.counts.items())),
        "notes": run.stats.notes,
        "elapsed": {
            "setup_s": round(setup_s, 1),
            "run_s": timing["run_s"],
            "checks_s": round(time.monotonic() - began, 1),
            "total_s": round(time.monotonic() - _started, 1),
        },
        "invariants": checker.results,
        "findings": checker.findings,
        "passed": all(r["ok"] for r in checker.results.values()),
        "environment": {
            "database": db_name(DB_URL),
            "broker": BROKER_URL,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": loadavg(),
            "finished_at": finished_at(),
        },
    }
    bench.finish(summary, render)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
