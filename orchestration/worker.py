"""The command lines that start this project's Celery worker and beat.

``runall`` (web + worker + beat), the test suite's worker process and the benchmarks all start
workers as child processes; they build the command here, so the flags every one of them needs
are chosen in one place. Only strings: nothing here imports the Celery app (``-A config``
names the project's app module, which this app must not import).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CELERY_APP = "config"  # the module that holds the Celery app (config/celery.py)


def celery_command(*args: str) -> list[str]:
    """``python -m celery -A config <args>`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


def worker_command(
    *,
    queues: str | Sequence[str],
    concurrency: int,
    hostname: str,
    loglevel: str = "INFO",
    pool: str | None = None,
    include: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """A worker consuming ``queues`` (a comma-separated string or a list) with ``concurrency``
    pool processes, named ``hostname`` (callers ping it by that name to know it is ready).

    ``pool`` None leaves Celery's default (prefork); ``include`` adds task modules (``-I``);
    ``extra`` goes last. Gossip and mingle are always off: the workers started this way need
    nothing from their peers, and mingle would delay start-up.
    """
    if not isinstance(queues, str):
        queues = ",".join(queues)
    command = celery_command("worker", "-l", loglevel)
    if pool:
        command += ["-P", pool]
    command += ["-c", str(concurrency), "-Q", queues]
    if include:
        command += ["-I", ",".join(include)]
    command += ["-n", hostname, "--without-gossip", "--without-mingle", *extra]
    return command


def beat_command(*, loglevel: str = "INFO") -> list[str]:
    """Beat with its schedule in the database (django-celery-beat, set in settings) and no
    pidfile, so a beat killed outright never blocks the next start."""
    return celery_command("beat", "-l", loglevel, "--pidfile=")
