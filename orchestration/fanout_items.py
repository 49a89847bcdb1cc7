"""Running the items of ``map`` steps (:mod:`orchestration.fanout`): claim, complete, fail,
time out, settle the step, and the sweepers' backstops.

Locks, in one order everywhere, so nothing waits in a circle:

- an item's transaction locks *its* item row, then (SKIP LOCKED) the next pending item to
  take its place in the concurrency window, then updates its step's counter row
  (:class:`~.fanout_models.MapRun`) as its last statement, and commits. It never locks the
  instance row: thousands of items run without queueing on it.
- the item whose counter update leaves nothing open (or one failure too many) settles the
  step in a *second* transaction (:func:`map_step_settle`) that locks the instance, the way
  every engine service does; if its worker dies in between, the sweeper settles it.
- services holding the instance lock (cancel, fail, retry) lock the counter row and touch
  items only with SKIP LOCKED.

Item state changes are recorded on the item rows (attempt, times, error), not as events: the
history of a 5,000-item step stays readable (``step_started``, then ``step_succeeded`` or
``step_failed`` with counts and the failing item).

**Runner seam.** How an item runs is an :class:`ItemRunner`, registered by name; a map step
names one (``runner="task"``, the default: a Celery task per item). A runner's ``start`` is
called in the transaction that scheduled the items; it arranges for each to run and to report
through :func:`item_claim` (``scheduled`` → ``running``), then :func:`item_complete` or
:func:`item_fail` with the item's id and attempt. A child-workflow runner would start one
child instance per item in ``start`` (claiming each at once) and call ``item_complete`` /
``item_fail`` from the child's end; everything else (window, retries, settling, cancel) is
the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from . import journal as journal_module
from . import sealing
from .definitions import StepContext, registry
from .engine import definition_of, lock_instance, stored_output
from .engine.context import context_of, error_info, jsonable, scrubbed_error
from .fanout_models import (
    ITEM_CANCELLABLE,
    ITEM_CLAIMABLE,
    ITEM_IN_FLIGHT,
    MapItem,
    MapItemState,
    MapRun,
    MapRunState,
)
from .journal import Doorbell, Journal
from .models import InstanceState, StepRun, StepState

# A map step's spec (orchestration.fanout.MapStep; that module imports this one).
MapStep = Any

log = logging.getLogger("signoff.engine")
M = MapItemState
S = StepState


@dataclass(frozen=True)
class ItemContext(StepContext):
    """What a map step's function sees for one item: the step's context plus the item's
    index; the idempotency key names the item, so an external call made for it is applied
    once whatever its attempts."""

    item_index: int = 0

    @property
    def idempotency_key(self) -> str:
        return f"{self.instance_id}:{self.step}:{self.item_index}"


# -- runners -----------------------------------------------------------------------------------


class ItemRunner:
    """How the items of a map step run (see the module docstring)."""

    name = ""

    def start(self, items: list[MapItem], spec: MapStep) -> None:
        """``items`` were just scheduled (ids known, transaction open): make them run."""
        raise NotImplementedError


class TaskItemRunner(ItemRunner):
    """A Celery message (``orchestration.run_map_item``) per item, sent after commit."""

    name = "task"

    def start(self, items: list[MapItem], spec: MapStep) -> None:
        ring_items([(item.pk, item.attempt, None) for item in items], spec)


_RUNNERS: dict[str, ItemRunner] = {}


def register_item_runner(runner: ItemRunner) -> ItemRunner:
    if not isinstance(runner, ItemRunner) or not runner.name:
        raise TypeError(f"{runner!r} is not a named ItemRunner")
    _RUNNERS[runner.name] = runner
    return runner


def get_item_runner(name: str) -> ItemRunner:
    try:
        return _RUNNERS[name]
    except KeyError:
        raise LookupError(f"no item runner {name!r} is registered") from None


register_item_runner(TaskItemRunner())


def ring_items(bells: list[tuple[int, int, datetime | None]], spec: Any) -> None:
    """Send ``run_map_item(item_id, attempt)`` for each after the commit."""
    queue = getattr(spec, "queue", None)
    limit = spec.start_to_close.total_seconds() if spec is not None else None
    doorbells = [
        Doorbell(pk, attempt, eta, queue, limit, "run_map_item") for pk, attempt, eta in bells
    ]
    if doorbells:
        transaction.on_commit(lambda: journal_module.ring_doorbells(doorbells))


# -- counters and the window (called with the right rows locked) -------------------------------


def schedule_pending(run: MapRun, spec: MapStep, *, now: datetime, limit: int) -> int:
    """Schedule up to ``limit`` pending items (index order, SKIP LOCKED) and start them through
    the step's runner; counts them in ``run.in_flight`` (the caller saves ``run``)."""
    if limit <= 0:
        return 0
    picked = list(
        MapItem.objects.select_for_update(skip_locked=True)
        .filter(step_run_id=run.step_run_id, state=M.PENDING)
        .order_by("index")[:limit]
    )
    for item in picked:
        _schedule(item, now)
        item.save(update_fields=["state", "attempt", "error", "next_attempt_at", "rung_at"])
    run.in_flight += len(picked)
    if picked:
        get_item_runner(spec.runner).start(picked, spec)
    return len(picked)


def _schedule(item: MapItem, now: datetime) -> None:
    item.schedule()
    item.next_attempt_at = now
    item.rung_at = now


def cancel_open_items(run: MapRun, *, now: datetime) -> int:
    """Cancel the step's pending, scheduled and retrying items (SKIP LOCKED: an item locked by
    its own transaction finds its step settled and stops); updates ``run`` in memory."""
    rows = list(
        MapItem.objects.select_for_update(skip_locked=True)
        .filter(step_run_id=run.step_run_id, state__in=ITEM_CANCELLABLE)
        .values_list("pk", "state")
    )
    if not rows:
        return 0
    # A set-based transition (pending/scheduled/retrying → cancelled) over possibly thousands
    # of rows; each row's own transition would be one UPDATE per item.
    MapItem.objects.filter(pk__in=[pk for pk, _ in rows]).update(
        state=M.CANCELLED, finished_at=now, next_attempt_at=None, timeout_at=None
    )
    run.open -= len(rows)
    run.in_flight -= sum(1 for _, state in rows if state != M.PENDING)
    run.cancelled += len(rows)
    return len(rows)


def recount(run: MapRun) -> None:
    """Set ``run``'s counters from the item rows (after an operator's retry)."""
    counts = dict(
        MapItem.objects.filter(step_run_id=run.step_run_id)
        .values_list("state")
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    run.in_flight = sum(counts.get(s, 0) for s in ITEM_IN_FLIGHT)
    run.open = run.in_flight + counts.get(M.PENDING, 0)
    run.succeeded = counts.get(M.SUCCEEDED, 0)
    run.failed = counts.get(M.FAILED, 0)
    run.cancelled = counts.get(M.CANCELLED, 0)


def _left_window(
    item: MapItem, spec: MapStep | None, now: datetime, *, outcome: str
) -> tuple[str, int, int]:
    """``item`` just finished (``outcome``: succeeded, failed, cancelled) under its row lock:
    take the next pending item into its place, update the counters (the counter row is locked
    from here to the commit) and say whether the step must settle now. Returns
    ``(run state, open, failed over tolerance)``."""
    candidate = None
    if spec is not None and outcome != "cancelled":
        candidate = (
            MapItem.objects.select_for_update(skip_locked=True)
            .filter(step_run_id=item.step_run_id, state=M.PENDING)
            .order_by("index")
            .first()
        )
    took = 1 if candidate is not None else 0
    MapRun.objects.filter(pk=item.step_run_id).update(
        open=F("open") - 1,
        in_flight=F("in_flight") - 1 + took,
        succeeded=F("succeeded") + int(outcome == "succeeded"),
        failed=F("failed") + int(outcome == "failed"),
        cancelled=F("cancelled") + int(outcome == "cancelled"),
    )
    state, open_, over = (
        MapRun.objects.filter(pk=item.step_run_id)
        .annotate(over=F("failed") - F("tolerate"))
        .values_list("state", "open", "over")
        .get()
    )
    if candidate is not None:
        if state == MapRunState.RUNNING and over <= 0:
            _schedule(candidate, now)
            candidate.save(
                update_fields=["state", "attempt", "error", "next_attempt_at", "rung_at"]
            )
            get_item_runner(spec.runner).start([candidate], spec)
        else:
            MapRun.objects.filter(pk=item.step_run_id).update(in_flight=F("in_flight") - 1)
    return state, open_, over


# -- an item's attempt -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedItem:
    item_id: int
    attempt: int
    step_run_id: int
    spec: MapStep
    context: StepContext
    value: Any


def _locked_item(item_id: int, *, states: list[str], skip_locked: bool = False) -> MapItem | None:
    return (
        MapItem.objects.select_for_update(of=("self",), skip_locked=skip_locked)
        .select_related("step_run", "step_run__instance")
        .filter(pk=item_id, state__in=states)
        .first()
    )


def _spec_of(item: MapItem) -> MapStep | None:
    definition = definition_of(item.step_run.instance)
    spec = definition.steps.get(item.step_run.name) if definition else None
    return spec if spec is not None and spec.kind == "map" else None


def item_claim(*, item_id: int, attempt: int) -> ClaimedItem | None:
    """Claim attempt ``attempt`` of an item: ``scheduled``/``retrying`` → ``running``, on the
    item's row lock only. None, changing nothing, for a duplicate, stale or early message or
    a paused instance; an item whose step no longer waits (cancelled, failed) is cancelled."""
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
            item.save(update_fields=["state", "finished_at"])
            _left_window(item, None, now, outcome="cancelled")
            return None
        if item.next_attempt_at is not None and item.next_attempt_at > now + timedelta(seconds=1):
            return None  # early: its own doorbell or the sweeper comes back
        spec = _spec_of(item)
        if spec is None:
            _failed_locked(
                item,
                None,
                now,
                {
                    "type": "signoff.DefinitionMissing",
                    "message": "map step not registered",
                    "traceback": "",
                },
                retryable=False,
            )
            return None
        item.claim()
        item.started_at = now
        item.timeout_at = now + spec.start_to_close
        item.save(update_fields=["state", "started_at", "timeout_at"])
        steps = {s.name: s for s in StepRun.objects.filter(instance=instance)}
        try:
            base = context_of(instance, steps, step)
            value = sealing.open_value(item.item, where=f"item {item.index}")
        except sealing.SealError as exc:
            _failed_locked(
                item,
                spec,
                now,
                {"type": "signoff.SealError", "message": str(exc), "traceback": ""},
                retryable=True,
            )
            return None
        context = ItemContext(
            **{**base.__dict__, "attempt": item.attempt},
            item_index=item.index,
        )
        return ClaimedItem(item.pk, item.attempt, step.pk, spec, context, value)


def item_complete(*, item_id: int, attempt: int, output: Any) -> bool:
    """Record a successful attempt (on the item row); the last item settles the step."""
    output = jsonable(output)
    with transaction.atomic():
        item = _locked_item(item_id, states=[M.RUNNING])
        if item is None or item.attempt != attempt:
            return False
        now = timezone.now()
        item.succeed(stored_output(item.step_run.instance, item.step_run.name, output))
        item.finished_at = now
        item.timeout_at = None
        item.save(update_fields=["state", "output", "error", "finished_at", "timeout_at"])
        state, open_, over = _left_window(item, _spec_of(item), now, outcome="succeeded")
        settle = state == MapRunState.RUNNING and (open_ <= 0 or over > 0)
        step_run_id = item.step_run_id
    if settle:
        map_step_settle(step_run_id=step_run_id)
    return True


def item_fail(*, item_id: int, attempt: int, error: dict[str, Any], retryable: bool) -> bool:
    """Record a failed attempt and apply the step's retry
    policy to the item: ``retrying`` with a backoff, or ``failed`` for good (which may fail the
    step: one failure past ``tolerate_failures``)."""
    with transaction.atomic():
        item = _locked_item(item_id, states=[M.RUNNING])
        if item is None or item.attempt != attempt:
            return False
        settle = _failed_locked(item, _spec_of(item), timezone.now(), error, retryable=retryable)
        step_run_id = item.step_run_id
    if settle:
        map_step_settle(step_run_id=step_run_id)
    return True


def _failed_locked(
    item: MapItem, spec: MapStep | None, now: datetime, error: dict[str, Any], *, retryable: bool
) -> bool:
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
        item.save(
            update_fields=[
                "state",
                "attempt",
                "error",
                "timeout_at",
                "next_attempt_at",
                "rung_at",
                "started_at",
            ]
        )
        ring_items([(item.pk, item.attempt, next_at)], spec)
        return False
    if item.state != M.RUNNING:  # failed at the claim (definition missing)
        item.claim()
    item.fail()
    item.finished_at = now
    item.save(update_fields=["state", "error", "timeout_at", "finished_at"])
    state, open_, over = _left_window(item, spec, now, outcome="failed")
    return state == MapRunState.RUNNING and (open_ <= 0 or over > 0)


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


# -- settling the step (under the instance lock) -----------------------------------------------


def map_step_settle(*, step_run_id: int, skip_locked: bool = False) -> bool:
    """The step's items are all finished, or one failed too many: lock the instance and
    succeed the step with the outputs in index order, or fail it (fail fast: open items
    cancelled). Idempotent: a settled run or a step no longer waiting changes nothing."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="worker" if not skip_locked else "sweeper",
            skip_locked=skip_locked,
            step_states=(S.WAITING,),
        )
        if locked is None:
            return False
        run = MapRun.objects.select_for_update().filter(pk=step_run_id).first()
        spec = locked.definition.steps.get(locked.step.name) if locked.definition else None
        if run is None or run.state != MapRunState.RUNNING or spec is None:
            return False
        if not settle_locked(locked.journal, locked.step, spec, run):
            return False
        locked.journal.flush()
        return True


def settle_locked(journal: Journal, step: StepRun, spec: Any, run: MapRun) -> bool:
    """:func:`map_step_settle` with the instance and the counter row locked; records the
    step's outcome (one event) and advances or fails the instance."""
    from .engine.advancing import advance, fail_instance

    now = journal.now
    instance = journal.instance
    if run.failed > run.tolerate:
        cancel_open_items(run, now=now)
        run.settle()
        run.save()
        first = (
            MapItem.objects.filter(step_run_id=step.pk, state=M.FAILED)
            .order_by("finished_at", "index")
            .first()
        )
        cause = (first.error or {}) if first else {}
        index = first.index if first else None
        error = {
            "type": "signoff.MapItemFailed",
            "message": f"item {index} failed: {cause.get('type', '?')}: {cause.get('message', '')}",
            "traceback": cause.get("traceback", ""),
            "item": index,
            "failed_items": run.failed,
        }
        step.reject()
        step.error = error
        step.finished_at = now
        journal.record(
            "step_failed",
            step=step,
            data={"reason": "item_failed", "error": error, "items": run.counts()},
        )
        definition = definition_of(instance)
        if instance.state == InstanceState.RUNNING and definition is not None:
            fail_instance(
                instance,
                journal.steps,
                definition,
                journal,
                {"step": step.name, "reason": "item_failed", **error},
            )
        return True
    if run.open > 0:
        return False
    rows = (
        MapItem.objects.filter(step_run_id=step.pk)
        .order_by("index")
        .values_list("state", "output", "index")
    )
    outputs, failed = [], []
    for state, output, index in rows:
        ok = state == M.SUCCEEDED
        outputs.append(output if ok else None)
        if not ok:
            failed.append(index)
    run.settle()
    run.save()
    step.resolve(stored_output(instance, step.name, outputs))
    step.finished_at = now
    journal.record(
        "step_succeeded",
        step=step,
        data={"items": len(outputs), "failed": len(failed), "failed_indexes": failed[:50]},
    )
    definition = definition_of(instance)
    if definition is not None:
        advance(instance, journal.steps, definition, journal)
    return True


# -- sweeper backstops (called from orchestration.sweepers) ------------------------------------


def ring_lost_items(*, due: Q, batch: int, now: datetime | None = None) -> int:
    """Ring again, in one bounded batch, items ``scheduled``/``retrying`` whose doorbell seems
    lost (``due``: the doorbell sweeper's filter over ``next_attempt_at``/``rung_at``). Rows
    another transaction holds are skipped (SKIP LOCKED); the next sweep comes back."""
    now = now or timezone.now()
    with transaction.atomic():
        rows = list(
            MapItem.objects.select_for_update(of=("self",), skip_locked=True)
            .filter(state__in=ITEM_CLAIMABLE)
            .filter(due)
            .filter(step_run__instance__paused_at__isnull=True, step_run__state=S.WAITING)
            .order_by("next_attempt_at")
            .values_list(
                "pk",
                "attempt",
                "step_run__instance__workflow",
                "step_run__instance__version",
                "step_run__name",
            )[:batch]
        )
        if not rows:
            return 0
        MapItem.objects.filter(pk__in=[r[0] for r in rows]).update(rung_at=now)
        by_spec: dict[tuple[str, int, str], list[tuple[int, int, None]]] = {}
        for pk, attempt, workflow, version, name in rows:
            by_spec.setdefault((workflow, version, name), []).append((pk, attempt, None))
        for (workflow, version, name), bells in by_spec.items():
            definition = registry.get(workflow, version)
            spec = definition.steps.get(name) if definition else None
            ring_items(bells, spec if spec is not None and spec.kind == "map" else None)
    log.info("rang %d lost map item doorbells", len(rows))
    return len(rows)


def due_item_timeouts(*, now: datetime, batch: int) -> list[int]:
    """Ids of running items past their attempt's start-to-close (a killed worker's)."""
    return list(
        MapItem.objects.filter(state=M.RUNNING, timeout_at__lte=now)
        .order_by("timeout_at")
        .values_list("pk", flat=True)[:batch]
    )


def item_time_out(*, item_id: int) -> bool:
    """Time out a running item past its deadline (skipping a locked one) and retry it."""
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
        step_run_id = item.step_run_id
    if settle:
        map_step_settle(step_run_id=step_run_id)
    return True


def unsettled_runs(*, batch: int) -> list[int]:
    """Step ids of map steps whose items are done (or one failed too many) but that were not
    settled: the worker that should have settled them died between its two transactions."""
    return list(
        MapRun.objects.filter(state=MapRunState.RUNNING)
        .filter(Q(open__lte=0) | Q(failed__gt=F("tolerate")))
        .values_list("pk", flat=True)[:batch]
    )
