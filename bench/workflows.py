"""The benchmark's workflow and its instrumentation.

Loaded through ``SIGNOFF_WORKFLOW_MODULES=demo.workflows,bench.workflows`` by the bench worker
and by ``bench/engine.py``; nothing else imports it.

``bench_noop3`` (one → two → three) is three no-op task steps. Its steps and hooks cost nothing
unless the instance input carries ``"bench_run"`` (which run it belongs to); with ``"timed":
true`` as well, each step returns its timestamps as its output and the commits that end its
transactions are stamped:

- ``task_prerun`` (Celery signal, in the worker child): when the task body starts ("p").
- ``Journal.flush`` (every engine transaction ends with it; wrapped here, in the bench
  processes only) registers an ``on_commit`` callback *before* the engine registers its own
  (doorbells, then announcements), so the stamp is taken right after ``COMMIT`` returns and
  before the next doorbell is published ("k" for the claim, "c" for the completion).
- the step function stores ``p``, ``k``, its own start ``t0`` and end ``t1`` in its output.
- ``event_committed`` (the engine's after-commit announcement, which runs after the doorbell was
  sent) pushes the completion stamps to Redis, so no Redis call sits between a commit and the
  next step's start except on the worker that just finished.

``bench_noop3_local`` is the same graph on a queue no worker consumes: ``bench/engine.py`` runs
its steps in-process to count the engine's queries per transaction without Celery.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from celery.signals import task_prerun
from django.conf import settings
from django.db import close_old_connections, transaction
from django.dispatch import receiver

from orchestration.definitions import RetryPolicy, StepContext, Workflow, registry
from orchestration.journal import Journal
from orchestration.models import WorkflowInstance
from orchestration.signals import event_committed

NOOP3 = "bench_noop3"
NOOP4 = "bench_noop4"
NOOP3_LOCAL = "bench_noop3_local"
LOCAL_QUEUE = "bench-inprocess"


class _Clock(threading.local):
    """Stamps of the task and transaction running on this thread (each prefork child and each
    pool thread has its own)."""

    prerun = 0.0
    commit = 0.0


_clock = _Clock()
_redis: redis.Redis | None = None


def bench_redis() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return _redis


def _noop(ctx: StepContext) -> dict[str, float] | None:
    t0 = time.time()
    if not ctx.input.get("timed"):
        return None
    return {"p": _clock.prerun, "k": _clock.commit, "t0": t0, "t1": time.time()}


NO_RETRY = RetryPolicy(max_attempts=1)

noop3 = Workflow(NOOP3, description="benchmark: three no-op steps in a row")
noop3.task(_noop, name="one", retry=NO_RETRY)
noop3.task(_noop, name="two", after=["one"], retry=NO_RETRY)
noop3.task(_noop, name="three", after=["two"], retry=NO_RETRY)
registry.register(noop3)

noop4 = Workflow(NOOP4, description="benchmark: four no-op steps in a row")
noop4.task(_noop, name="one", retry=NO_RETRY)
noop4.task(_noop, name="two", after=["one"], retry=NO_RETRY)
noop4.task(_noop, name="three", after=["two"], retry=NO_RETRY)
noop4.task(_noop, name="four", after=["three"], retry=NO_RETRY)
registry.register(noop4)

noop3_local = Workflow(NOOP3_LOCAL, description="benchmark: bench_noop3 run in-process")
noop3_local.task(_noop, name="one", retry=NO_RETRY, queue=LOCAL_QUEUE)
noop3_local.task(_noop, name="two", after=["one"], retry=NO_RETRY, queue=LOCAL_QUEUE)
noop3_local.task(_noop, name="three", after=["two"], retry=NO_RETRY, queue=LOCAL_QUEUE)
registry.register(noop3_local)


def _timed(instance: WorkflowInstance) -> bool:
    data = instance.input
    return (
        instance.workflow == NOOP3
        and isinstance(data, dict)
        and bool(data.get("bench_run"))
        and bool(data.get("timed"))
    )


def _stamp_commit() -> None:
    _clock.commit = time.time()


@task_prerun.connect
def _stamp_prerun(**kwargs: Any) -> None:
    _clock.prerun = time.time()
    if getattr(settings, "BENCH_CLOSE_OLD_CONNECTIONS", False):
        # Experiment (bench/settings.py): Django's own per-request connection management.
        close_old_connections()


_engine_flush = Journal.flush


def _flush_and_stamp(self: Journal, *args: Any, **kwargs: Any) -> None:
    if _timed(self.instance):
        transaction.on_commit(_stamp_commit)
    _engine_flush(self, *args, **kwargs)


Journal.flush = _flush_and_stamp  # type: ignore[method-assign]


@receiver(event_committed)
def _after_event(sender: Any, event: Any, **kwargs: Any) -> None:
    instance = event.instance
    if instance.workflow not in (NOOP3, NOOP4) or not isinstance(instance.input, dict):
        return
    run = instance.input.get("bench_run")
    if not run:
        return
    timed = bool(instance.input.get("timed"))
    if timed and event.type in ("instance_started", "step_succeeded"):
        bench_redis().rpush(
            f"bench:{run}:commits", f"{instance.pk}|{event.step or ''}|{_clock.commit!r}"
        )
    if event.type == "instance_succeeded":
        if timed:
            bench_redis().rpush(f"bench:{run}:done", f"{instance.pk}|{_clock.commit!r}")
        else:
            pipe = bench_redis().pipeline(transaction=False)
            pipe.incr(f"bench:{run}:count")
            pipe.set(f"bench:{run}:last", repr(time.time()))
            pipe.execute()
