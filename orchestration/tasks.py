"""Celery tasks: thin. They take ids, never model instances, and call one service.

``run_step`` is idempotent: its claim is conditional on the step waiting for exactly this
attempt, so a duplicate, stale or redelivered message does nothing. ``acks_late`` with
``reject_on_worker_lost`` brings a killed worker's message back; the claim makes it harmless.
"""

from __future__ import annotations

import time

from celery import shared_task
from celery.signals import task_postrun, task_prerun
from django.conf import settings
from django.db import close_old_connections, connections

from . import (
    batch_runner,
    batches,
    children,
    engine,
    fanout_children,
    fanout_items,
    saga,
    sweepers,
)
from .history_partitions import sweep_history_partitions as sweep_history_partitions_now
from .journal import register_doorbell_task
from .retention import sweep_retention as sweep_retention_now


@shared_task(
    name="orchestration.run_step",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_step(self, step_run_id: int, attempt: int) -> str:  # noqa: ANN001
    soft = (self.request.timelimit or (None, None))[1]
    chain_until = time.monotonic() + soft - 1 if soft and settings.SIGNOFF_CHAIN_SECONDS else None
    return engine.step_execute(step_run_id=step_run_id, attempt=attempt, chain_until=chain_until)


@shared_task(name="orchestration.sweep_doorbells", ignore_result=True)
def sweep_doorbells() -> int:
    return sweepers.sweep_doorbells()


@shared_task(name="orchestration.sweep_step_timeouts", ignore_result=True)
def sweep_step_timeouts() -> int:
    return sweepers.sweep_step_timeouts()


@shared_task(name="orchestration.sweep_instance_deadlines", ignore_result=True)
def sweep_instance_deadlines() -> int:
    return sweepers.sweep_instance_deadlines()


@shared_task(
    name="orchestration.run_compensation",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_compensation(step_run_id: int, attempt: int) -> str:
    return saga.execute_compensation(step_run_id=step_run_id, attempt=attempt)


@shared_task(
    name="orchestration.run_map_item",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_map_item(item_id: int, attempt: int) -> str:
    """One attempt of one item of a map step (idempotent: claimed on the item's row)."""
    return fanout_items.item_execute(item_id=item_id, attempt=attempt)


@shared_task(name="orchestration.sweep_waiting_deadlines", ignore_result=True)
def sweep_waiting_deadlines() -> int:
    return sweepers.sweep_waiting_deadlines()


@shared_task(name="orchestration.sweep_schedules", ignore_result=True)
def sweep_schedules() -> int:
    return sweepers.sweep_schedules()


@shared_task(name="orchestration.sweep_retention", ignore_result=True)
def sweep_retention() -> dict[str, int]:
    return sweep_retention_now()


@shared_task(name="orchestration.sweep_history_partitions", ignore_result=True)
def sweep_history_partitions() -> dict[str, int]:
    return sweep_history_partitions_now()


@shared_task(
    name="orchestration.child_sync",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def child_sync(step_run_id: int, attempt: int) -> str:
    """A child ended, or a child step's retry backoff is over: bring the parent's step up to
    date (idempotent; see orchestration.children.child_step_sync)."""
    return children.child_step_sync(step_run_id=step_run_id, attempt=attempt or None)


@shared_task(
    name="orchestration.child_item_sync",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def child_item_sync(item_id: int, attempt: int) -> str:
    """A map step's child item's child ended: record it on the item (idempotent; see
    orchestration.fanout_children.child_item_sync)."""
    return fanout_children.child_item_sync(item_id=item_id, attempt=attempt)


@shared_task(
    name="orchestration.run_batch",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_batch(batch_id: int) -> str:
    """The next chunk of a batch operation (idempotent; see orchestration.batch_runner)."""
    return batch_runner.batch_run_chunk(batch_id=batch_id)


@shared_task(name="orchestration.sweep_stale_batches", ignore_result=True)
def sweep_stale_batches() -> int:
    return batch_runner.sweep_stale_batches()


# Doorbells (orchestration.journal) send these; the journal does not import this module.
register_doorbell_task("run_step", run_step)
register_doorbell_task("run_compensation", run_compensation)
register_doorbell_task("child_sync", child_sync)
register_doorbell_task("run_map_item", run_map_item)
register_doorbell_task("child_item_sync", child_item_sync)
batches.register_run_task(run_batch)


# When this process last finished a task (time.monotonic()).
_last_task_end = 0.0


@task_prerun.connect
def _reuse_database_connections(**kwargs: object) -> None:
    """Celery's Django fixup closes the connection around every task (CELERY_DB_REUSE_MAX
    turns that off); this closes only connections that are broken or older than CONN_MAX_AGE,
    so a worker keeps one connection instead of opening one per step (measured: 1.01 new
    PostgreSQL connections and 2 extra commits per step before).

    Django then checks a kept connection's health (``SELECT 1``) before its first query. A
    connection that served the previous task less than SIGNOFF_DB_HEALTH_CHECK_IDLE_SECONDS
    ago skips that check: it was alive a moment ago, and the check cost a round trip and, in
    PostgreSQL's count, a commit per message. If the server went away in that moment, the
    claim fails, nothing is written, the connection is closed before the next task, and the
    doorbell sweeper rings the step again."""
    close_old_connections()
    idle = time.monotonic() - _last_task_end
    if idle < settings.SIGNOFF_DB_HEALTH_CHECK_IDLE_SECONDS:
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None and not conn.errors_occurred:
                conn.health_check_done = True


@task_postrun.connect
def _note_task_end(**kwargs: object) -> None:
    global _last_task_end
    _last_task_end = time.monotonic()
