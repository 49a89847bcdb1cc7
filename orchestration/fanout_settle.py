"""Settling a ``map`` step (:mod:`orchestration.fanout`) under the instance lock, and the
sweepers' backstops for its items.

Only the item transactions that may be the last ones ask: one that found no pending item to
take its place (the step's tail), or one that failed for good. Each asks *after its own
commit* (:func:`maybe_settle`), counting the items not finished and the failed ones, so the
last item to commit always sees the final count: race-free without a counter row that every
item would queue on. A step to settle locks the instance (:func:`map_step_settle`), the way
every engine service does; settling twice changes nothing. If the worker dies between the
item's commit and the settle, the doorbell sweeper's backstop (:func:`unsettled_runs`)
settles it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .definitions import registry
from .engine import definition_of, lock_instance, stored_output
from .engine.advancing import advance, fail_instance
from .fanout_models import ITEM_CLAIMABLE, ITEM_OPEN, MapItem, MapItemState, MapRun, MapRunState
from .fanout_runners import cancel_open_items, item_states, open_and_failed, ring_items, summary
from .journal import Journal
from .models import InstanceState, StepRun, StepState

log = logging.getLogger("signoff.engine")
M = MapItemState
S = StepState


def maybe_settle(*, step_run_id: int) -> bool:
    """After an item's commit: settle the step if nothing is left open or one item too many
    failed (see the module docstring). Outside any transaction."""
    tolerate = (
        MapRun.objects.filter(pk=step_run_id, state=MapRunState.RUNNING)
        .values_list("tolerate", flat=True)
        .first()
    )
    if tolerate is None:
        return False
    open_, failed = open_and_failed(step_run_id)
    if failed > tolerate or open_ == 0:
        return map_step_settle(step_run_id=step_run_id)
    return False


def map_step_settle(*, step_run_id: int, skip_locked: bool = False) -> bool:
    """Lock the instance and the step's run; succeed the step with its items' outputs in
    index order, or fail it (fail fast: open items cancelled). Changes nothing (False) when
    the run is settled, the step no longer waits, or items are still open."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="sweeper" if skip_locked else "worker",
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
    """:func:`map_step_settle` with the instance and the run locked: records the step's
    outcome (one event, with the items' counts) and advances or fails the instance."""
    now, instance = journal.now, journal.instance
    open_, failed = open_and_failed(step.pk)
    if failed > run.tolerate:
        cancel_open_items(step.pk, spec, now=now)
        run.settle()
        run.save(update_fields=["state"])
        _fail(journal, step, failed)
        return True
    if open_ > 0:
        return False
    outputs, missing = [], []
    rows = (
        MapItem.objects.filter(step_run_id=step.pk)
        .order_by("index")
        .values_list("state", "output", "index")
    )
    for state, output, index in rows.iterator(chunk_size=2000):
        ok = state == M.SUCCEEDED
        outputs.append(output if ok else None)
        if not ok:
            missing.append(index)
    run.settle()
    run.save(update_fields=["state"])
    step.resolve(stored_output(instance, step.name, outputs))
    step.finished_at = now
    journal.record(
        "step_succeeded",
        step=step,
        data={"items": len(outputs), "failed": len(missing), "failed_indexes": missing[:50]},
    )
    definition = definition_of(instance)
    if definition is not None:
        advance(instance, journal.steps, definition, journal)
    return True


def _fail(journal: Journal, step: StepRun, failed: int) -> None:
    """The step fails (one item too many failed): its error names the first item that did."""
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
        "failed_items": failed,
    }
    step.reject()
    step.error = error
    step.finished_at = journal.now
    journal.record(
        "step_failed",
        step=step,
        data={"reason": "item_failed", "error": error, "items": summary(item_states(step.pk))},
    )
    instance = journal.instance
    definition = definition_of(instance)
    if instance.state == InstanceState.RUNNING and definition is not None:
        fail_instance(
            instance,
            journal.steps,
            definition,
            journal,
            {"step": step.name, "reason": "item_failed", **error},
        )


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
            # Whatever the step's state: an item left scheduled when its step was cancelled
            # (its row was locked then) is cancelled by its claim when it rings.
            .filter(step_run__instance__paused_at__isnull=True)
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


def unsettled_runs(*, batch: int) -> list[int]:
    """Step ids of waiting map steps whose items are all finished, or one too many failed,
    that nobody settled (the worker that should have died between its two transactions).
    Reads only unsettled runs, and their items through the index of items not succeeded."""
    items = MapItem.objects.filter(step_run_id=OuterRef("pk"))
    failed = (
        items.filter(state=M.FAILED)
        .order_by()
        .values("step_run_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return list(
        MapRun.objects.filter(state=MapRunState.RUNNING, step_run__state=S.WAITING)
        .annotate(
            anything_open=Exists(items.filter(state__in=ITEM_OPEN)),
            failed=Coalesce(Subquery(failed), Value(0)),
        )
        .filter(Q(anything_open=False) | Q(failed__gt=F("tolerate")))
        .values_list("pk", flat=True)[:batch]
    )
