"""Running a batch (:mod:`orchestration.batches`) in the background, chunk by chunk.

``orchestration.run_batch`` (the Celery task) calls :func:`batch_run_chunk`: up to
``SIGNOFF_BATCH_CHUNK`` pending items, each in its own small transaction — lock the batch row
(a cancelled batch stops here), lock the item (``skip_locked``: another runner has it), call
the engine service on the instance as the batch's creator (in a savepoint), and write the
item's outcome and the batch's counters in that same transaction. So an instance is acted
on, and counted, exactly once, whatever crashes, redeliveries or sweeper re-rings happen.

Throttling: the next chunk is sent on commit with a countdown so the batch averages at most
its ``rate`` instances a second, and the worker is free between chunks (step tasks run in
between; with ``SIGNOFF_BATCH_QUEUE`` batches get their own workers). Every chunk sets
``heartbeat_at`` to when the next one is due; :func:`sweep_stale_batches` rings batches whose
heartbeat is older than ``SIGNOFF_BATCH_STALE_SECONDS`` (a worker killed, a message lost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from . import batches, engine
from .batch_models import BATCH_ACTIVE, BatchItem, BatchOperation, BatchState, ItemOutcome
from .errors import NotAllowed, SignoffError

log = logging.getLogger("signoff.batches")
B = BatchState

# The engine service per action: (instance id, user, batch) -> anything.
ACTIONS: dict[str, Callable[[Any, Any, BatchOperation], Any]] = {
    "retry": lambda pk, user, b: engine.instance_retry(
        instance_id=pk, actor=b.actor, user=user, reason=b.reason
    ),
    "cancel": lambda pk, user, b: engine.instance_cancel(
        instance_id=pk, actor=b.actor, reason=b.reason
    ),
    "pause": lambda pk, user, b: engine.instance_pause(instance_id=pk, actor=b.actor),
    "resume": lambda pk, user, b: engine.instance_unpause(instance_id=pk, actor=b.actor),
}
COUNTER = {ItemOutcome.DONE: "done", ItemOutcome.SKIPPED: "skipped", ItemOutcome.FAILED: "failed"}


def _start(batch_id: int) -> BatchOperation | None:
    """The batch, ``running`` (started now if it was queued); None when it is not active."""
    with transaction.atomic():
        batch = (
            BatchOperation.objects.select_for_update(of=("self",))
            .select_related("created_by")
            .filter(pk=batch_id)
            .first()
        )
        if batch is None or batch.state not in BATCH_ACTIVE:
            return None
        if batch.state == B.QUEUED:
            now = timezone.now()
            batch.start()
            batch.started_at = now
            batch.heartbeat_at = now
            batch.save(update_fields=["state", "started_at", "heartbeat_at"])
            log.info("batch %s started", batch.pk)
        return batch


def _handle(batch: BatchOperation, item_id: int, user: Any) -> bool:
    """Act on one item's instance and record its outcome, in one transaction. False when the
    batch is no longer running (stop)."""
    with transaction.atomic():
        state = (
            BatchOperation.objects.select_for_update()
            .filter(pk=batch.pk)
            .values_list("state", flat=True)
            .first()
        )
        if state != B.RUNNING:
            return False
        item = (
            BatchItem.objects.select_for_update(skip_locked=True)
            .filter(pk=item_id, outcome=ItemOutcome.PENDING)
            .first()
        )
        if item is None:  # handled already, or another runner has it now
            return True
        outcome, message = ItemOutcome.DONE, ""
        try:
            with transaction.atomic():
                ACTIONS[batch.action](item.instance_id, user, batch)
        except NotAllowed as exc:
            outcome, message = ItemOutcome.FAILED, exc.message
        except SignoffError as exc:  # the instance is not in a state the action applies to
            outcome, message = ItemOutcome.SKIPPED, exc.message
        except Exception as exc:  # noqa: BLE001 - one instance's bug does not stop the batch
            log.exception("batch %s: %s failed on %s", batch.pk, batch.action, item.instance_id)
            outcome, message = ItemOutcome.FAILED, f"error: {type(exc).__name__}"
        now = timezone.now()
        item.outcome, item.message, item.finished_at = outcome, message[:2000], now
        item.save(update_fields=["outcome", "message", "finished_at"])
        counter = COUNTER[outcome]
        BatchOperation.objects.filter(pk=batch.pk).update(
            **{counter: F(counter) + 1},
            cursor=Greatest(F("cursor"), item.position),
            heartbeat_at=now,
        )
        return True


def _fail(batch_id: int, error: str) -> str:
    """The batch stops as ``failed`` with ``error``; its unhandled instances are left alone."""
    with transaction.atomic():
        batch = BatchOperation.objects.select_for_update().get(pk=batch_id)
        if batch.state not in BATCH_ACTIVE:
            return "stopped"
        batch.fail(error)
        batch.finished_at = timezone.now()
        batch.save(update_fields=["state", "error", "finished_at"])
        log.warning("batch %s failed: %s", batch_id, error)
        return "failed"


def batch_run_chunk(*, batch_id: int, chunk: int | None = None) -> str:
    """Run the next chunk of a batch and send the next run (throttled), or finish it.

    Idempotent: a finished or cancelled batch, or an item already handled, is left alone.
    A batch whose creator may no longer operate instances (deactivated, permission withdrawn,
    deleted) fails as a whole. Returns what happened: ``inactive``, ``stopped``, ``failed``,
    ``more`` or ``done``."""
    batch = _start(batch_id)
    if batch is None:
        return "inactive"
    user = batch.created_by
    if not batches.may_operate(user):
        return _fail(batch.pk, "the batch's creator may no longer operate instances")
    size = chunk or settings.SIGNOFF_BATCH_CHUNK
    began = time.monotonic()
    ids = list(
        BatchItem.objects.filter(batch=batch, outcome=ItemOutcome.PENDING)
        .order_by("position")
        .values_list("pk", flat=True)[:size]
    )
    handled = 0
    for item_id in ids:
        if not _handle(batch, item_id, user):
            return "stopped"
        handled += 1
    with transaction.atomic():
        batch = BatchOperation.objects.select_for_update().get(pk=batch.pk)
        if batch.state != B.RUNNING:
            return "stopped"
        now = timezone.now()
        if not BatchItem.objects.filter(batch=batch, outcome=ItemOutcome.PENDING).exists():
            batch.finish()
            batch.finished_at = now
            batch.heartbeat_at = now
            batch.save(update_fields=["state", "finished_at", "heartbeat_at"])
            log.info(
                "batch %s done: %d done, %d skipped, %d failed",
                batch.pk,
                batch.done,
                batch.skipped,
                batch.failed,
            )
            return "done"
        countdown = max(0.0, handled / batch.rate - (time.monotonic() - began))
        batch.heartbeat_at = now + timedelta(seconds=countdown)
        batch.save(update_fields=["heartbeat_at"])
        transaction.on_commit(lambda: batches.ring(batch.pk, countdown=countdown))
        return "more"


def sweep_stale_batches(*, now: datetime | None = None, stale: timedelta | None = None) -> int:
    """Ring again the queued or running batches whose heartbeat is older than ``stale``
    (default ``SIGNOFF_BATCH_STALE_SECONDS``): their worker died or their message was lost.
    The heartbeat is moved to now under the row lock, so a second sweep does not ring again
    before the batch had a chance to run."""
    now = now or timezone.now()
    stale = stale if stale is not None else timedelta(seconds=settings.SIGNOFF_BATCH_STALE_SECONDS)
    ids = list(
        BatchOperation.objects.filter(state__in=BATCH_ACTIVE, heartbeat_at__lt=now - stale)
        .order_by("heartbeat_at")
        .values_list("pk", flat=True)[: settings.SIGNOFF_SWEEP_BATCH]
    )
    rung = 0
    for pk in ids:
        with transaction.atomic():
            batch = (
                BatchOperation.objects.select_for_update(skip_locked=True)
                .filter(pk=pk, state__in=BATCH_ACTIVE, heartbeat_at__lt=now - stale)
                .first()
            )
            if batch is None:
                continue
            batch.heartbeat_at = now
            batch.save(update_fields=["heartbeat_at"])
            transaction.on_commit(lambda pk=pk: batches.ring(pk))
            rung += 1
    if rung:
        log.info("sweeper stale_batches rang %d batches", rung)
    return rung
