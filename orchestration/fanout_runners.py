"""The items of ``map`` steps (:mod:`orchestration.fanout`): what an item's function sees, how
items run (the runner seam), and the concurrency window — scheduling pending items, cancelling
open ones, counting them. Called with the right rows locked; nothing here commits.

**Runner seam.** How an item runs is an :class:`ItemRunner`, registered by name; a map step
names one (``runner="task"``, the default: a Celery message per item, run by
:func:`orchestration.fanout_items.item_execute`). A runner's :meth:`ItemRunner.start` is
called in the transaction that scheduled the items (their rows written, ids known); it
arranges for each to run and to report through :func:`~orchestration.fanout_items.item_claim`
(``scheduled`` → ``running``), then :func:`~orchestration.fanout_items.item_complete` or
:func:`~orchestration.fanout_items.item_fail` with the item's id and attempt. A
child-workflow runner (issue 15, item 2, built apart) would, in ``start``, start one child
instance per item (on commit) and claim the item at once, then call ``item_complete`` /
``item_fail`` when the child ends (from the child's lifecycle announcement); the window,
retries, settling and cancellation stay as they are. It would also cancel its children when
the step's items are cancelled: :meth:`ItemRunner.cancelled` is that hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count

from . import journal as journal_module
from .definitions import StepContext
from .fanout_models import ITEM_CANCELLABLE, ITEM_IN_FLIGHT, ITEM_OPEN, MapItem, MapItemState

# A map step's spec (orchestration.fanout.MapStep; that module imports this one).
MapStep = Any
M = MapItemState


@dataclass(frozen=True)
class ItemContext(StepContext):
    """What a map step's function sees for one item: the step's context plus the item's
    index (``attempt`` is the item's); the idempotency key names the item, so an external call
    made for it is applied once whatever its attempts."""

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

    def cancelled(self, item_ids: list[int], spec: MapStep) -> None:
        """These items were cancelled (the step failed or was cancelled). Default: nothing
        (a task item's message finds its item cancelled and does nothing)."""

    def begin(
        self,
        item: MapItem,
        spec: MapStep,
        context: ItemContext,
        value: Any,
        steps: dict[str, Any],
    ) -> bool:
        """Called in the claim's transaction (the item row locked, now ``running``): True
        when the runner started the item's work itself and will report its outcome later;
        False (the default) to have ``spec.fn`` called after the commit. Raise
        :class:`ItemNotStarted` to fail the item for good."""
        return False

    def cancel_running(self, step_run_id: int, spec: MapStep, *, now: datetime) -> int:
        """The step is being cancelled or failed (its instance locked): stop the items still
        running, if this runner can. Default: nothing (a task item finishes on its own)."""
        return 0


class ItemNotStarted(Exception):
    """An item's work cannot start; ``error`` is stored on the item, which fails for good."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.error = error


class TaskItemRunner(ItemRunner):
    """A Celery message (``orchestration.run_map_item``) per item, sent after commit."""

    name = "task"

    def start(self, items: list[MapItem], spec: MapStep) -> None:
        ring_items([(item.pk, item.attempt, None) for item in items], spec)


_RUNNERS: dict[str, ItemRunner] = {}


def register_item_runner(runner: ItemRunner) -> ItemRunner:
    """Register ``runner`` under its ``name`` (a map step's ``runner=``); returns it."""
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
    """Send ``run_map_item(item_id, attempt)`` (at ``eta``) for each, after the commit."""
    queue = getattr(spec, "queue", None)
    limit = spec.start_to_close.total_seconds() if spec is not None else None
    doorbells = [
        journal_module.Doorbell(pk, attempt, eta, queue, limit, "run_map_item")
        for pk, attempt, eta in bells
    ]
    if doorbells:
        transaction.on_commit(lambda: journal_module.ring_doorbells(doorbells))


# -- the window --------------------------------------------------------------------------------


def schedule(item: MapItem, now: datetime) -> None:
    """``pending`` → ``scheduled`` (the caller saves with :data:`SCHEDULED_FIELDS`)."""
    item.schedule()
    item.next_attempt_at = now
    item.rung_at = now


SCHEDULED_FIELDS = ["state", "attempt", "error", "next_attempt_at", "rung_at"]


def schedule_pending(step_run_id: int, spec: MapStep, *, now: datetime, limit: int) -> int:
    """Schedule up to ``limit`` pending items (index order, SKIP LOCKED) and start them
    through the step's runner; returns how many."""
    if limit <= 0:
        return 0
    picked = list(
        MapItem.objects.select_for_update(skip_locked=True)
        .filter(step_run_id=step_run_id, state=M.PENDING)
        .order_by("index")[:limit]
    )
    for item in picked:
        schedule(item, now)
        item.save(update_fields=SCHEDULED_FIELDS)
    if picked:
        get_item_runner(spec.runner).start(picked, spec)
    return len(picked)


def cancel_open_items(step_run_id: int, spec: MapStep | None, *, now: datetime) -> int:
    """Cancel the step's pending, scheduled and retrying items; returns how many. SKIP
    LOCKED: an item its own transaction holds finds its step no longer waiting when it next
    looks (its claim cancels it; a finishing item schedules nothing)."""
    ids = list(
        MapItem.objects.select_for_update(skip_locked=True)
        .filter(step_run_id=step_run_id, state__in=ITEM_CANCELLABLE)
        .values_list("pk", flat=True)
    )
    stopped = spec and get_item_runner(spec.runner).cancel_running(step_run_id, spec, now=now)
    if not ids:
        return stopped or 0
    # A set-based transition (pending/scheduled/retrying → cancelled) over what may be
    # thousands of rows, instead of one UPDATE per item.
    MapItem.objects.filter(pk__in=ids).update(
        state=M.CANCELLED, finished_at=now, next_attempt_at=None, timeout_at=None
    )
    if spec is not None:
        get_item_runner(spec.runner).cancelled(ids, spec)
    return len(ids) + (stopped or 0)


def in_flight(step_run_id: int) -> int:
    """How many of the step's items are scheduled, running or retrying (committed, and this
    transaction's own changes)."""
    return MapItem.objects.filter(step_run_id=step_run_id, state__in=ITEM_IN_FLIGHT).count()


def open_and_failed(step_run_id: int) -> tuple[int, int]:
    """``(items not finished, items failed)`` of a step, read through the index of items not
    succeeded (a handful of rows at a step's tail)."""
    counts = item_states(step_run_id, unfinished_only=True)
    return sum(counts.get(s, 0) for s in ITEM_OPEN), counts.get(M.FAILED, 0)


def item_states(step_run_id: int, *, unfinished_only: bool = False) -> dict[str, int]:
    """The step's items by state (one grouped count)."""
    items = MapItem.objects.filter(step_run_id=step_run_id)
    if unfinished_only:
        items = items.filter(state__in=[*ITEM_OPEN, M.FAILED, M.CANCELLED])
    return dict(
        items.order_by().values_list("state").annotate(n=Count("pk")).values_list("state", "n")
    )


def summary(counts: dict[str, int]) -> dict[str, int]:
    """What the API and the status page show of a map step's items (never a row each)."""
    result = {"total": sum(counts.values())}
    result.update({state: counts.get(state, 0) for state in M.values})
    result["in_flight"] = sum(counts.get(state, 0) for state in ITEM_IN_FLIGHT)
    return result
