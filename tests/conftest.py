from __future__ import annotations

import email
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from django.conf import settings

from config.backends import is_amqp
from orchestration.worker import worker_command

ROOT = Path(__file__).resolve().parent.parent

# The workflow test kit's fixtures (signoff_kit, signoff_approvals): also pytest11 entry points
# of the same names, which an install made before they existed does not have yet.
pytest_plugins = ["orchestration.pytest_plugin", "approvals.pytest_plugin"]

# Playwright's sync API runs an event loop in the test thread; Django would then refuse ORM
# calls from that thread.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class WorkerProcess:
    """A real Celery worker (prefork, 2 processes) in its own process group, on the test
    database (through PgBouncer when the test process goes through it) and the test broker.

    ``database_url`` and ``extra_env`` point one worker elsewhere (a test's own PgBouncer,
    a collector for its traces); ``extra_env`` is read at each start: set it, then restart."""

    def __init__(
        self,
        db_name: str,
        concurrency: int = 2,
        *,
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.db_name = db_name
        self.concurrency = concurrency
        self.database_url = database_url
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen | None = None
        # One log per pytest-xdist worker (gw0, gw1), "test-worker.log" without xdist.
        suffix = os.environ.get("PYTEST_XDIST_WORKER", "")
        self.log = ROOT / "var" / f"test-worker{'-' + suffix if suffix else ''}.log"

    def env(self) -> dict[str, str]:
        db = settings.DATABASES["default"]
        url = self.database_url or (
            f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{self.db_name}"
        )
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "SIGNOFF_TEST_DATABASE_URL": url,
                "SIGNOFF_TEST_REDIS_URL": settings.SIGNOFF_TEST_REDIS_URL,
                "SIGNOFF_TEST_BROKER_URL": settings.CELERY_BROKER_URL,
                "SIGNOFF_WORKFLOW_MODULES": ",".join(settings.SIGNOFF_WORKFLOW_MODULES),
                **self.extra_env,
            }
        )
        # The worker's database is chosen here: it never re-applies the test process's switch.
        env.pop("SIGNOFF_TEST_DB_POOLER_URL", None)
        return env

    def start(self) -> None:
        self.name = f"test-{time.monotonic_ns()}@localhost"
        self.log.parent.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            worker_command(queues="signoff", concurrency=self.concurrency, hostname=self.name),
            cwd=ROOT,
            env=self.env(),
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"test worker exited; see {self.log}")
            if self._ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"test worker did not become ready; see {self.log}")

    def _ready(self) -> bool:
        from config.celery import app

        replies = app.control.ping(destination=[self.name], timeout=0.5)
        return any(self.name in reply for reply in replies)

    def quiesce(self, timeout: float = 15.0) -> None:
        """Drop queued messages and wait until no task runs, so the test database can be
        flushed without racing the worker (TRUNCATE against a running step deadlocks)."""
        from config.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            Broker().purge("signoff")
            inspect = app.control.inspect(destination=[self.name], timeout=1.0, limit=1)
            active = (inspect.active() or {}).get(self.name)
            if active == []:
                return
            time.sleep(0.1)
        self.kill()  # a task that will not end: start clean instead
        self.start()

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: no cleanup, no acks."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


class Broker:
    """The test broker, Redis or RabbitMQ alike, through kombu: how many messages wait in a
    queue, emptying one, and forgetting every queued message (the broker "restarted empty")."""

    def depth(self, queue: str) -> int:
        from config.celery import app

        with app.connection_for_write() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count

    def purge(self, queue: str) -> None:
        from config.celery import app

        with app.connection_for_write() as conn:
            try:
                conn.default_channel.queue_purge(queue)
            except conn.channel_errors:  # RabbitMQ: the queue was never declared
                pass

    def flush(self) -> None:
        """Redis: FLUSHDB (the ledger of tests/workflows.py goes too when it shares the
        database); RabbitMQ: purge the task queue and the delayed-delivery queues."""
        from config.celery import app

        if not is_amqp(app.conf.broker_url):
            redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
            return
        from kombu.transport.native_delayed_delivery import level_name

        for queue in ["signoff", *(level_name(level) for level in range(28))]:
            self.purge(queue)


@pytest.fixture(scope="session")
def broker() -> Broker:
    return Broker()


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    """The test Redis database (the broker too unless SIGNOFF_TEST_BROKER_URL is amqp)."""
    return redis.Redis.from_url(settings.SIGNOFF_TEST_REDIS_URL)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """With SIGNOFF_TEST_DB_POOLER_URL: once the test database exists (created directly),
    every connection of this process and of the worker goes through PgBouncer; before it is
    dropped, PgBouncer lets go of its server connections to it."""
    pooler = settings.SIGNOFF_TEST_DB_POOLER_URL
    if not pooler:
        yield
        return
    from urllib.parse import urlsplit

    from django.db import connections

    parts = urlsplit(pooler)
    direct = {}
    # Only the primary's alias: the replica (a mirror on its own server) stays direct.
    pooled = [connections["default"]]
    for conn in pooled:
        direct[conn.alias] = (conn.settings_dict["HOST"], conn.settings_dict["PORT"])
        conn.close()
        for target in (conn.settings_dict, settings.DATABASES[conn.alias]):
            target["HOST"], target["PORT"] = parts.hostname, str(parts.port)
    yield
    for conn in pooled:
        conn.close()
        for target in (conn.settings_dict, settings.DATABASES[conn.alias]):
            target["HOST"], target["PORT"] = direct[conn.alias]
        name = conn.settings_dict["NAME"]
        pgbouncer_admin(pooler, f"KILL {name}", f"RESUME {name}")


def pgbouncer_admin(url: str, *commands: str) -> None:
    """Run commands on PgBouncer's admin console (the ``pgbouncer`` database at ``url``)."""
    from urllib.parse import urlsplit

    import psycopg

    parts = urlsplit(url)
    with psycopg.connect(
        host=parts.hostname,
        port=parts.port,
        user=parts.username or "postgres",
        dbname="pgbouncer",
        autocommit=True,
        prepare_threshold=None,
    ) as conn:
        for command in commands:
            try:
                conn.execute(command)
            except psycopg.Error:  # e.g. KILL of a database PgBouncer never saw
                pass


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup: Any, django_db_blocker: Any) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(settings.DATABASES["default"]["NAME"])
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def worker(
    celery_worker_process: WorkerProcess, broker: Broker, transactional_db: Any
) -> Iterator[WorkerProcess]:
    """A running worker, an empty test queue, and committed (transactional) test data."""
    if celery_worker_process.process.poll() is not None:
        celery_worker_process.start()
    broker.purge("signoff")
    yield celery_worker_process
    if celery_worker_process.process.poll() is not None:
        celery_worker_process.start()
    celery_worker_process.quiesce()


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    sweep: bool = False,
    message: str = "condition",
) -> Any:
    """Poll until ``condition()`` is truthy. With ``sweep`` the engine sweepers run each
    round, standing in for beat."""
    from orchestration import sweepers

    deadline = time.monotonic() + timeout
    while True:
        if sweep:
            sweepers.sweep_all()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ops", password="pw-ops-123", is_staff=True)


@pytest.fixture
def rung(monkeypatch) -> list:
    """Doorbells sent after commit (each a Doorbell), instead of Celery messages."""
    sent: list = []
    monkeypatch.setattr("orchestration.journal.ring_doorbells", sent.extend)
    return sent


@pytest.fixture(autouse=True)
def _fresh_subscription_cache() -> None:
    """Rolled-back test data must not linger in the per-process webhook subscription cache."""
    from integrations.webhooks import forget_subscriptions

    forget_subscriptions()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's Chromium, never a downloaded browser build."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (make browser)")
    return {**browser_type_launch_args, "executable_path": executable, "args": CHROMIUM_ARGS}


class Inbox:
    """A real SMTP server's mailbox (aiosmtpd): the messages, and how many SMTP sessions
    (connections) brought them."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.sessions: list[Any] = []  # kept alive, so no two share an identity

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802
        if not any(s is session for s in self.sessions):
            self.sessions.append(session)
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def smtp_server(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    yield handler
    controller.stop()
