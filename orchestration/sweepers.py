"""Beat-scheduled sweepers: the engine's timers and its second doorbell.

Each picks due ids from a partial index (cost grows with due rows, not all rows), then handles
each row in its own transaction through an engine service that locks the instance with
``skip_locked`` and re-checks under the lock, so overlapping sweeps or two beat processes never
act twice. A failing row is logged and skipped; the count of rows acted on is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import DateTimeField, F, Q, Value
from django.utils import timezone

from . import (
    children,
    engine,
    fanout_children,
    fanout_items,
    fanout_settle,
    saga,
    schedule_firing,
    waits,
)
from .models import CompensationPhase, InstanceState, StepRun, StepState, WorkflowInstance

log = logging.getLogger("signoff.sweepers")


def _each(name: str, ids: Iterable, act: Callable[[object], bool]) -> int:
    done = 0
    for pk in ids:
        try:
            if act(pk):
                done += 1
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("sweeper %s failed on %s", name, pk)
    if done:
        log.info("sweeper %s acted on %d rows", name, done)
    return done


def _batch(batch: int | None) -> int:
    return batch or settings.SIGNOFF_SWEEP_BATCH


def ring_again_q(*, now: datetime, grace: timedelta, max_backoff: timedelta) -> Q:
    """Steps (due at ``next_attempt_at``, last rung at ``rung_at``) whose doorbell should ring
    again at ``now``: the message was lost, or is only queued behind a backlog.

    The first re-ring comes ``grace`` after both the due time and the last ring (a lost message
    is rung again promptly). Each later one waits as long as the step had been overdue when it
    was last rung (``rung_at - next_attempt_at``), at least ``grace`` and at most
    ``max_backoff``, so the waits double — grace, grace, 2 grace, 4 grace, ... — and a message
    queued behind a long backlog is rung a handful of times, not on every sweep. Every fresh
    ring (scheduling, a retry, an operator's resume) sets ``rung_at`` to its due time or
    before, which starts over. No extra column: the gap between the two timestamps is the
    back-off's state. The caller's filter on ``next_attempt_at`` keeps the query on the
    partial due-time index; the rest is a row filter over the overdue rows.
    """
    older_than = now - grace
    # rung_at + (rung_at - next_attempt_at) <= now, written with the column on the left
    backed_off = Q(
        next_attempt_at__gte=F("rung_at")
        - (Value(now, output_field=DateTimeField()) - F("rung_at"))
    )
    return Q(next_attempt_at__lte=older_than) & (
        Q(rung_at__isnull=True)
        | (Q(rung_at__lte=older_than) & (Q(rung_at__lte=now - max_backoff) | backed_off))
    )


def sweep_doorbells(
    *,
    now: datetime | None = None,
    grace: timedelta | None = None,
    batch: int | None = None,
    max_backoff: timedelta | None = None,
) -> int:
    """Ring again for steps ``scheduled``/``retrying`` past their due time whose message seems
    lost (Redis flushed, broker down at commit, worker killed), backing off for messages that
    are only queued (:func:`ring_again_q`).

    The per-row services re-check only that the row was not rung since ``now - grace``: every
    ring sets ``rung_at`` to its own now, so a row that moved on since it was picked is
    skipped, and one that did not still meets the back-off (time only moves forward)."""
    now = now or timezone.now()
    grace = (
        grace if grace is not None else timedelta(seconds=settings.SIGNOFF_DOORBELL_GRACE_SECONDS)
    )
    max_backoff = (
        max_backoff
        if max_backoff is not None
        else timedelta(seconds=settings.SIGNOFF_DOORBELL_MAX_BACKOFF_SECONDS)
    )
    older_than = now - grace
    due = ring_again_q(now=now, grace=grace, max_backoff=max_backoff)
    ids = list(
        StepRun.objects.filter(state__in=[StepState.SCHEDULED, StepState.RETRYING])
        .filter(due)
        .filter(instance__paused_at__isnull=True)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[: _batch(batch)]
    )
    done = _each(
        "doorbells", ids, lambda pk: engine.step_ring_again(step_run_id=pk, older_than=older_than)
    )
    compensations = list(
        StepRun.objects.filter(
            state=StepState.COMPENSATING,
            comp_phase__in=[CompensationPhase.SCHEDULED, CompensationPhase.RETRYING],
        )
        .filter(due)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[: _batch(batch)]
    )
    done += _each(
        "compensation_doorbells",
        compensations,
        lambda pk: saga.ring_compensation_again(step_run_id=pk, older_than=older_than),
    )
    # Map steps: lost item doorbells (one bounded SKIP LOCKED batch), and steps whose items
    # all finished but whose settling transaction never ran (its worker died in between).
    done += fanout_settle.ring_lost_items(due=due, batch=_batch(batch), now=now)
    return done + _each(
        "map_settle",
        fanout_settle.unsettled_runs(batch=_batch(batch)),
        lambda pk: fanout_settle.map_step_settle(step_run_id=pk, skip_locked=True),
    )


def sweep_step_timeouts(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Time out running steps past start-to-close (a SIGKILLed worker leaves such a step) and
    apply their retry policy."""
    now = now or timezone.now()
    ids = list(
        StepRun.objects.filter(state=StepState.RUNNING, timeout_at__lte=now)
        .order_by("timeout_at")
        .values_list("pk", flat=True)[: _batch(batch)]
    )
    done = _each("step_timeouts", ids, lambda pk: engine.step_time_out(step_run_id=pk))
    compensations = list(
        StepRun.objects.filter(
            state=StepState.COMPENSATING, comp_phase=CompensationPhase.RUNNING, timeout_at__lte=now
        )
        .order_by("timeout_at")
        .values_list("pk", flat=True)[: _batch(batch)]
    )
    done += _each(
        "compensation_timeouts",
        compensations,
        lambda pk: saga.time_out_compensation(step_run_id=pk),
    )
    return done + _each(
        "map_item_timeouts",
        fanout_items.due_item_timeouts(now=now, batch=_batch(batch)),
        lambda pk: fanout_items.item_time_out(item_id=pk),
    )


def sweep_instance_deadlines(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Fail running instances past their workflow deadline."""
    now = now or timezone.now()
    ids = list(
        WorkflowInstance.objects.filter(
            state=InstanceState.RUNNING, deadline_at__isnull=False, deadline_at__lte=now
        )
        .order_by("deadline_at")
        .values_list("pk", flat=True)[: _batch(batch)]
    )
    return _each("instance_deadlines", ids, lambda pk: engine.instance_expire(instance_id=pk))


def sweep_waiting_deadlines(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Fire timer steps, time out signal waits and child steps, and start a child step's next
    child, whose deadline passed; and, the backstop of the ``child_sync`` doorbell, bring up
    to date the child steps whose child ended (its doorbell was lost)."""
    now = now or timezone.now()
    ids = waits.due_waiting_steps(now, _batch(batch))
    done = _each("waiting_deadlines", ids, lambda pk: engine.waiting_step_deadline(step_run_id=pk))
    grace = timedelta(seconds=settings.SIGNOFF_DOORBELL_GRACE_SECONDS)
    ended = children.due_child_steps(now, _batch(batch), grace)
    done += _each(
        "child_steps",
        ended,
        lambda pk: children.child_step_sync(step_run_id=pk, skip_locked=True).startswith("child_"),
    )
    # Map steps over child workflows: items whose child ended and whose doorbell was lost.
    items = fanout_children.due_child_items(now, _batch(batch), grace)
    return done + _each(
        "child_items",
        items,
        lambda row: fanout_children.child_item_sync(item_id=row[0], attempt=row[1]).startswith(
            "child_"
        ),
    )


def sweep_schedules(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Fire due schedules (each under its own lock, ``skip_locked``; see
    :func:`orchestration.schedule_firing.schedule_fire_due`) and start buffered fires whose
    running instance has ended; deletes a batch of fire records past their retention. Returns
    the fire times handled plus buffered fires started."""
    now = now or timezone.now()
    ids = schedule_firing.due_schedule_ids(now, _batch(batch))
    done = 0
    for pk in ids:
        try:
            done += schedule_firing.schedule_fire_due(schedule_id=pk, now=now)
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("sweeper schedules failed on %s", pk)
    if done:
        log.info("sweeper schedules handled %d fire times", done)
    buffered = schedule_firing.buffered_schedule_ids(_batch(batch))
    done += _each(
        "schedule_buffers",
        buffered,
        lambda pk: schedule_firing.schedule_start_buffered(schedule_id=pk, now=now),
    )
    pruned = schedule_firing.prune_fires(now=now, batch=_batch(batch))
    if pruned:
        log.info("sweeper schedules deleted %d old fire records", pruned)
    return done


def sweep_all(*, now: datetime | None = None) -> dict[str, int]:
    """Run every engine sweeper once (tests, `manage.py signoff sweep`)."""
    return {
        "doorbells": sweep_doorbells(now=now),
        "step_timeouts": sweep_step_timeouts(now=now),
        "instance_deadlines": sweep_instance_deadlines(now=now),
        "waiting_deadlines": sweep_waiting_deadlines(now=now),
        "schedules": sweep_schedules(now=now),
    }
