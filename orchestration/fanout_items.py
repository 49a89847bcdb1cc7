"""An item's attempt of a ``map`` step (:mod:`orchestration.fanout`): claim, run, complete,
fail, time out — what the ``orchestration.run_map_item`` task and the item sweepers call.

Locks: an item's transaction locks *its* item row (``select_for_update``, a django-fsm
transition, a save) and, when the item leaves the concurrency window, the next pending item
(SKIP LOCKED) to schedule in its place. It locks no shared row: neither the instance nor a
counter, so thousands of items run side by side. Services holding the instance lock (cancel,
fail, an operator's retry) touch items only with SKIP LOCKED, so nothing waits in a circle.
An item whose transaction may have been the step's last asks, after its commit, whether the
step is done (:func:`~orchestration.fanout_settle.maybe_settle`).

Item changes are recorded on the item rows (attempt, times, error), not as events: the history
of a 5,000-item step stays readable (``step_started``, then ``step_succeeded`` or
``step_failed`` with the counts and the failing item).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.utils import timezone

from . import fanout_sql, sealing
from .definitions import StepContext
from .engine import definition_of, stored_output
from .engine.context import context_of, error_info, jsonable, scrubbed_error
from .fanout_models import ITEM_CLAIMABLE, MapItem, MapItemState
from .fanout_runners import (
    SCHEDULED_FIELDS,
    ItemContext,
    ItemNotStarted,
    MapStep,
    get_item_runner,
    ring_items,
    schedule,
)
from .fanout_settle import maybe_settle
from .models import InstanceState, StepRun, StepState

M = MapItemState
S = StepState


@dataclass(frozen=True)
class ClaimedItem:
    item_id: int
    attempt: int
    step_run_id: int
    spec: MapStep
    context: StepContext
    value: Any


def _locked_item(item_id: int, *, states: list[str], skip_locked: bool = False) -> MapItem | None:
    """The item row, locked (with its step and instance, read as of now, not locked)."""
    return fanout_sql.locked_item(item_id, states=states, skip_locked=skip_locked)


def _spec_of(item: MapItem) -> MapStep | None:
    definition = definition_of(item.step_run.instance)
    spec = definition.steps.get(item.step_run.name) if definition else None
    return spec if spec is not None and spec.kind == "map" else None


def _take_next(item: MapItem, spec: MapStep | None, now: datetime) -> bool:
    """``item`` left the window: schedule the next pending item (index order, SKIP LOCKED)
    in its place, if the step still waits. Returns whether one was."""
    if spec is None or item.step_run.state != S.WAITING:
        return False
    candidate = fanout_sql.next_pending(item.step_run_id)
    if candidate is None:
        return False
    schedule(candidate, now)
    fanout_sql.save_item(candidate, SCHEDULED_FIELDS)
    get_item_runner(spec.runner).start([candidate], spec)
    return True


def item_claim(*, item_id: int, attempt: int) -> ClaimedItem | None:
    """Claim attempt ``attempt`` of an item: ``scheduled``/``retrying`` → ``running``, on the
    item's row lock only. None, changing nothing, for a duplicate, stale or early message or
    a paused instance; an item whose step no longer waits (cancelled, failed) is cancelled."""
    settle = False
    with transaction.atomic():
        item = _locked_item(item_id, states=ITEM_CLAIMABLE)
        if item is None or item.attempt != attempt:
            return None
        step, instance = item.step_run, item.step_run.instance
        now = timezone.now()
        if instance.paused_at is not None:
            return None  # the doorbell sweeper rings again after the pause
        if step.state != S.WAITING or instance.state != InstanceState.RUNNING:
            item.cancel()
            item.finished_at = now
            fanout_sql.save_item(item, ["state", "finished_at"])
            return None
        if item.next_attempt_at is not None and item.next_attempt_at > now + timedelta(seconds=1):
            return None  # early: its own doorbell or the sweeper comes back
        spec = _spec_of(item)
        error = None
        if spec is None:
            error = {
                "type": "signoff.DefinitionMissing",
                "message": f"map step {step.name!r} is not registered in this worker",
                "traceback": "",
            }
        item.claim()
        item.started_at = now
        item.timeout_at = spec.item_deadline(now) if spec else None
        fanout_sql.save_item(item, ["state", "started_at", "timeout_at"])
        retryable = spec is not None
        if error is None:
            try:
                steps = fanout_sql.steps_of(instance)
                base = context_of(instance, steps, step)
                value = sealing.open_value(item.item, where=f"item {item.index}")
            except sealing.SealError as exc:  # a key is missing: retryable (a deploy fixes it)
                error = {"type": "signoff.SealError", "message": str(exc), "traceback": ""}
        if error is None:
            context = ItemContext(
                **{**base.__dict__, "attempt": item.attempt}, item_index=item.index
            )
            try:
                # A runner may run the item itself in this transaction (a child workflow
                # started with the claim); the item then stays running until it reports.
                if get_item_runner(spec.runner).begin(item, spec, context, value, steps):
                    return None
            except ItemNotStarted as exc:
                error, retryable = exc.error, False
        if error is not None:
            settle = _failed_locked(item, spec, now, error, retryable=retryable)
        else:
            return ClaimedItem(item.pk, item.attempt, step.pk, spec, context, value)
    if settle:
        maybe_settle(step_run_id=item.step_run_id)
    return None


def item_complete(*, item_id: int, attempt: int, output: Any) -> bool:
    """Record a successful attempt on the item row and schedule the next pending item; the
    step's tail asks, after the commit, whether the step is done. False (nothing changed) for
    an attempt that is no longer running."""
    output = jsonable(output)
    with transaction.atomic():
        item = _locked_item(item_id, states=[M.RUNNING])
        if item is None or item.attempt != attempt:
            return False
        now = timezone.now()
        item.succeed(stored_output(item.step_run.instance, item.step_run.name, output))
        item.finished_at = now
        item.timeout_at = None
        fanout_sql.save_item(item, ["state", "output", "error", "finished_at", "timeout_at"])
        took = _take_next(item, _spec_of(item), now)
    if not took:
        maybe_settle(step_run_id=item.step_run_id)
    return True


def item_fail(*, item_id: int, attempt: int, error: dict[str, Any], retryable: bool) -> bool:
    """Record a failed attempt and apply the step's retry policy to the item: ``retrying``
    with a backoff, or ``failed`` for good (which fails the step when it is one failure past
    ``tolerate_failures``)."""
    with transaction.atomic():
        item = _locked_item(item_id, states=[M.RUNNING])
        if item is None or item.attempt != attempt:
            return False
        settle = _failed_locked(item, _spec_of(item), timezone.now(), error, retryable=retryable)
    if settle:
        maybe_settle(step_run_id=item.step_run_id)
    return True


def _failed_locked(
    item: MapItem, spec: MapStep | None, now: datetime, error: dict[str, Any], *, retryable: bool
) -> bool:
    """Apply the retry policy to the locked, running ``item``; True when the step should be
    asked whether it is done (the item failed for good, or no item took its place)."""
    instance = item.step_run.instance
    definition = definition_of(instance)
    if definition is not None and definition.sensitive:
        steps = {s.name: s for s in StepRun.objects.filter(instance=instance)}
        error = scrubbed_error(instance, steps, error)
    item.error = error
    item.timeout_at = None
    policy = spec.retry if spec is not None else None
    used = item.attempt - item.attempt_base
    if retryable and policy is not None and used < policy.max_attempts:
        next_at = now + policy.delay(used)
        item.retry_later()
        item.next_attempt_at = next_at
        item.rung_at = now
        item.started_at = None
        fanout_sql.save_item(
            item,
            ["state", "attempt", "error", "timeout_at", "next_attempt_at", "rung_at", "started_at"],
        )
        ring_items([(item.pk, item.attempt, next_at)], spec)
        return False
    item.fail()
    item.finished_at = now
    fanout_sql.save_item(item, ["state", "error", "timeout_at", "finished_at"])
    failed = MapItem.objects.filter(step_run_id=item.step_run_id, state=M.FAILED).count()
    tolerate = spec.tolerate_failures if spec is not None else 0
    if failed <= tolerate:
        _take_next(item, spec, now)  # fail fast schedules nothing more
    return True


def item_execute(*, item_id: int, attempt: int) -> str:
    """Run one attempt of an item: claim, call the step's function outside any transaction,
    record the outcome. Safe to call twice: the second claim finds the item running."""
    claimed = item_claim(item_id=item_id, attempt=attempt)
    if claimed is None:
        return "stale"
    fn = claimed.spec.fn
    assert fn is not None
    try:
        output = jsonable(fn(claimed.context, claimed.value))
    except SoftTimeLimitExceeded:
        item_fail(
            item_id=item_id,
            attempt=attempt,
            error={
                "type": "signoff.StepTimeout",
                "message": f"item attempt {attempt} exceeded start_to_close",
                "traceback": "",
            },
            retryable=True,
        )
        return "timed_out"
    except Exception as exc:  # noqa: BLE001 - every item error is the engine's to handle
        item_fail(
            item_id=item_id,
            attempt=attempt,
            error=error_info(exc),
            retryable=claimed.spec.retry.is_retryable(exc),
        )
        return "failed"
    item_complete(item_id=item_id, attempt=attempt, output=output)
    return "succeeded"


# -- the timeout sweeper's part ----------------------------------------------------------------


def due_item_timeouts(*, now: datetime, batch: int) -> list[int]:
    """Ids of running items past their attempt's start-to-close (a killed worker's)."""
    return list(
        MapItem.objects.filter(state=M.RUNNING, timeout_at__lte=now)
        .order_by("timeout_at")
        .values_list("pk", flat=True)[:batch]
    )


def item_time_out(*, item_id: int) -> bool:
    """Time out a running item past its deadline (skipping a locked one): its retry policy
    runs it again, or it fails for good."""
    with transaction.atomic():
        item = _locked_item(item_id, states=[M.RUNNING], skip_locked=True)
        now = timezone.now()
        if item is None or item.timeout_at is None or item.timeout_at > now:
            return False
        error = {
            "type": "signoff.StepTimeout",
            "message": f"item attempt {item.attempt} exceeded start_to_close",
            "traceback": "",
        }
        settle = _failed_locked(item, _spec_of(item), now, error, retryable=True)
    if settle:
        maybe_settle(step_run_id=item.step_run_id)
    return True
