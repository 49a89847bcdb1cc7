"""Firing schedules: the per-row services the schedule sweeper and trigger-now call.

Every fire happens under the schedule's row lock, inside one transaction that writes its
:class:`~orchestration.schedule_models.ScheduleFire` row and starts its instance (through
:func:`orchestration.engine.instance_start`). The row is unique per ``(schedule, fire_time)``,
so a fire is acted on once whoever gets there: two beat processes, a sweeper restarted
halfway, or a sweep overlapping the previous one. The instance's doorbells ring after commit.

Fires recorded ``missed`` or ``skipped_overlap`` (and starts the engine refused, ``failed``)
are announced with :data:`orchestration.signals.schedule_missed` after commit.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.translation import gettext_noop

from . import engine, sealing
from .errors import Conflict, InvalidInput, Message, SignoffError
from .models import InstanceState, WorkflowInstance
from .schedule_models import FireOutcome, OverlapPolicy, Schedule, ScheduleFire
from .schedule_timing import Timing, due_at, fire_at_or_before, next_fire_after, zone
from .signals import schedule_missed

log = logging.getLogger("signoff.schedules")

# An instance in one of these is still running as far as the overlap policy is concerned.
RUNNING_STATES = [InstanceState.PENDING, InstanceState.RUNNING, InstanceState.COMPENSATING]
# How many missed fire times one sweep counts one by one before jumping ahead.
MAX_COUNTED_MISSES = 10_000

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("schedule", "fire_time", "date", "time")


def render_business_key(template: str, *, schedule_name: str, fire_time: datetime, tz: str) -> str:
    """The business key of the run at ``fire_time``: ``template`` with ``{schedule}``,
    ``{fire_time}`` (ISO 8601), ``{date}`` (YYYY-MM-DD) and ``{time}`` (HH:MM) filled in, the
    times in the schedule's zone. Only these placeholders exist (no attribute access, unlike
    ``str.format``); another one raises :class:`InvalidInput`."""
    local = fire_time.astimezone(zone(tz) or zone("UTC"))
    values = {
        "schedule": schedule_name,
        "fire_time": local.isoformat(),
        "date": local.date().isoformat(),
        "time": local.strftime("%H:%M"),
    }

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise InvalidInput(
                Message(
                    gettext_noop(
                        "business_key_template: unknown placeholder %(key)s; use %(known)s"
                    ),
                    key="{" + key + "}",
                    known=", ".join("{" + p + "}" for p in PLACEHOLDERS),
                ),
                code="invalid_business_key_template",
            )
        return values[key]

    return PLACEHOLDER.sub(fill, template)


def grace() -> timedelta:
    """How late any fire may run beyond its catch-up window: the sweeper's own lag."""
    return timedelta(seconds=settings.SIGNOFF_SCHEDULE_GRACE_SECONDS)


def running_q() -> Exists:
    """Whether the schedule (the outer row) has an instance still running."""
    return Exists(
        WorkflowInstance.objects.filter(schedule=OuterRef("pk"), state__in=RUNNING_STATES)
    )


def has_running(schedule: Schedule) -> bool:
    return WorkflowInstance.objects.filter(schedule=schedule, state__in=RUNNING_STATES).exists()


def _announce(schedule: Schedule, fire_time: datetime, reason: str) -> None:
    schedule_id, name = schedule.pk, schedule.name

    def send() -> None:
        for receiver, result in schedule_missed.send_robust(
            sender=Schedule,
            schedule_id=schedule_id,
            schedule_name=name,
            fire_time=fire_time,
            reason=reason,
        ):
            if isinstance(result, Exception):
                log.error("schedule_missed receiver %r failed: %r", receiver, result)

    transaction.on_commit(send)


def _record(
    schedule: Schedule,
    fire_time: datetime,
    outcome: str,
    *,
    now: datetime,
    instance: WorkflowInstance | None = None,
    count: int = 1,
    note: str = "",
    triggered_by: str = "",
) -> ScheduleFire:
    fire = ScheduleFire.objects.create(
        schedule=schedule,
        fire_time=fire_time,
        outcome=outcome,
        instance=instance,
        count=count,
        note=note[:500],
        triggered_by=triggered_by,
        at=now,
    )
    if outcome in (FireOutcome.MISSED, FireOutcome.SKIPPED_OVERLAP, FireOutcome.FAILED):
        _announce(schedule, fire_time, outcome)
    return fire


def _start(schedule: Schedule, fire_time: datetime) -> tuple[WorkflowInstance | None, str]:
    """Start the run of ``fire_time`` in a savepoint; ``(instance, "")`` or ``(None, why)``
    when the engine refused it (nothing of the attempt is left)."""
    try:
        with transaction.atomic():
            instance, _ = engine.instance_start(
                workflow=schedule.workflow,
                version=schedule.version,
                input=sealing.open_fields(schedule.input, where="input"),
                business_key=render_business_key(
                    schedule.business_key_template,
                    schedule_name=schedule.name,
                    fire_time=fire_time,
                    tz=schedule.time_zone,
                ),
                actor=f"schedule:{schedule.name}",
                schedule=schedule,
                scheduled_for=fire_time,
            )
    except (SignoffError, sealing.SealError) as exc:
        why = getattr(exc, "message", None) or str(exc)
        # A refusal may quote the input (a schema error names the bad value): sealed values
        # are masked before the reason is logged or stored.
        why = sealing.scrubber_for(schedule.input).text(why)[0]
        log.warning("schedule %s: the fire at %s was refused: %s", schedule.name, fire_time, why)
        return None, why
    return instance, ""


def fire(
    schedule: Schedule, fire_time: datetime, *, now: datetime, triggered_by: str = ""
) -> ScheduleFire:
    """Act on one fire time under the schedule's lock (the caller holds it, in its
    transaction): start an instance, or skip or buffer it by the overlap policy. Raises
    :class:`Conflict` for a fire time that already has its row."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("fire() runs inside the transaction that locked the schedule")
    if ScheduleFire.objects.filter(schedule=schedule, fire_time=fire_time).exists():
        raise Conflict(
            Message(
                gettext_noop("schedule %(name)s already fired at %(at)s"),
                name=repr(schedule.name),
                at=fire_time.isoformat(),
            ),
            code="already_fired",
        )
    schedule.last_fire_at = max(filter(None, [schedule.last_fire_at, fire_time]))
    policy = schedule.overlap
    if policy != OverlapPolicy.ALLOW_ALL and has_running(schedule):
        if policy == OverlapPolicy.BUFFER_ONE and schedule.buffered_fire_at is None:
            schedule.buffered_fire_at = fire_time
            return _record(
                schedule, fire_time, FireOutcome.BUFFERED, now=now, triggered_by=triggered_by
            )
        return _record(
            schedule,
            fire_time,
            FireOutcome.SKIPPED_OVERLAP,
            now=now,
            triggered_by=triggered_by,
            note="an instance of this schedule was still running",
        )
    instance, why = _start(schedule, fire_time)
    if instance is None:
        return _record(
            schedule, fire_time, FireOutcome.FAILED, now=now, note=why, triggered_by=triggered_by
        )
    return _record(
        schedule,
        fire_time,
        FireOutcome.STARTED,
        now=now,
        instance=instance,
        triggered_by=triggered_by,
    )


def schedule_fire_due(*, schedule_id: int, now: datetime | None = None) -> int:
    """Act on the due fires of one schedule; returns how many fire times it handled.

    Locks the schedule with ``skip_locked`` (a schedule another sweeper holds is left to it)
    and re-checks that it is active and due. Fire times older than the catch-up window (plus
    SIGNOFF_SCHEDULE_GRACE_SECONDS) are recorded as one ``missed`` row standing for all of
    them (``count``); the others fire in order, each under the overlap policy, at most
    SIGNOFF_SCHEDULE_MAX_FIRES_PER_SWEEP per call (the rest on the next sweep). Then the next
    fire time is stored. All in one transaction.
    """
    now = now or timezone.now()
    with transaction.atomic():
        schedule = (
            Schedule.objects.select_for_update(skip_locked=True)
            .filter(pk=schedule_id, paused=False, fire_due_at__lte=now)
            .first()
        )
        if schedule is None or schedule.next_fire_at is None:
            return 0
        timing = Timing.of(schedule)
        tolerance = timedelta(seconds=schedule.catchup_window_seconds) + grace()
        moment = schedule.next_fire_at
        missed, newest_missed, first_missed = 0, None, None
        while now - due_at(timing, moment) > tolerance:
            missed += 1
            first_missed = first_missed or moment
            newest_missed = moment
            if missed >= MAX_COUNTED_MISSES:
                # Jump ahead instead of walking on; the count is then a floor. Any fire time
                # at or before `edge` is missed whatever its jitter, and every one after it
                # is looked at below, so none that may still run is skipped.
                jitter = timedelta(seconds=timing.jitter_seconds)
                edge = now - tolerance - jitter - timedelta(microseconds=1)
                newest_missed = max(newest_missed, fire_at_or_before(timing, edge))
                moment = next_fire_after(timing, newest_missed)
                while now - due_at(timing, moment) > tolerance:
                    newest_missed, moment = moment, next_fire_after(timing, moment)
                break
            moment = next_fire_after(timing, moment)
        if (
            newest_missed is not None
            and not ScheduleFire.objects.filter(schedule=schedule, fire_time=newest_missed).exists()
        ):
            more = "at least " if missed >= MAX_COUNTED_MISSES else ""
            _record(
                schedule,
                newest_missed,
                FireOutcome.MISSED,
                now=now,
                count=missed,
                note=f"{more}{missed} fire time(s) from {first_missed.isoformat()} "
                f"to {newest_missed.isoformat()} were past the catch-up window",
            )
            schedule.last_fire_at = max(filter(None, [schedule.last_fire_at, newest_missed]))
        handled = missed
        limit = settings.SIGNOFF_SCHEDULE_MAX_FIRES_PER_SWEEP
        fired = 0
        while due_at(timing, moment) <= now and fired < limit:
            if not ScheduleFire.objects.filter(schedule=schedule, fire_time=moment).exists():
                fire(schedule, moment, now=now)
            fired += 1
            moment = next_fire_after(timing, moment)
        schedule.next_fire_at = moment
        schedule.fire_due_at = due_at(timing, moment)
        schedule.updated_at = now
        schedule.save(
            update_fields=[
                "next_fire_at",
                "fire_due_at",
                "last_fire_at",
                "buffered_fire_at",
                "updated_at",
            ]
        )
        return handled + fired


def schedule_start_buffered(*, schedule_id: int, now: datetime | None = None) -> bool:
    """Start the fire the buffer_one policy kept back, once the schedule's running instance
    has ended. Locks the schedule with ``skip_locked`` and re-checks; the buffered fire's row
    becomes ``started`` (or ``failed``) with the new instance."""
    now = now or timezone.now()
    with transaction.atomic():
        schedule = (
            Schedule.objects.select_for_update(skip_locked=True)
            .filter(pk=schedule_id, paused=False, buffered_fire_at__isnull=False)
            .first()
        )
        if schedule is None or has_running(schedule):
            return False
        fire_time = schedule.buffered_fire_at
        row = ScheduleFire.objects.filter(schedule=schedule, fire_time=fire_time).first()
        schedule.buffered_fire_at = None
        schedule.updated_at = now
        schedule.save(update_fields=["buffered_fire_at", "updated_at"])
        if row is None or row.outcome != FireOutcome.BUFFERED:
            return False
        instance, why = _start(schedule, fire_time)
        row.instance = instance
        row.outcome = FireOutcome.STARTED if instance is not None else FireOutcome.FAILED
        row.note = "started when the running instance ended" if instance else why[:500]
        row.at = now
        row.save(update_fields=["instance", "outcome", "note", "at"])
        if instance is None:
            _announce(schedule, fire_time, FireOutcome.FAILED)
        return True


def due_schedule_ids(now: datetime, batch: int) -> list[int]:
    """Active schedules whose next fire is due, oldest first (the ``schedule_due`` index)."""
    return list(
        Schedule.objects.filter(paused=False, fire_due_at__isnull=False, fire_due_at__lte=now)
        .order_by("fire_due_at")
        .values_list("pk", flat=True)[:batch]
    )


def buffered_schedule_ids(batch: int) -> list[int]:
    """Active schedules with a buffered fire and nothing running any more."""
    return list(
        Schedule.objects.filter(paused=False, buffered_fire_at__isnull=False)
        .filter(~running_q())
        .order_by("buffered_fire_at")
        .values_list("pk", flat=True)[:batch]
    )


def prune_fires(*, now: datetime, batch: int) -> int:
    """Delete up to ``batch`` fire records recorded longer ago than
    SIGNOFF_SCHEDULE_FIRE_RETENTION_DAYS (never under 2 days: the record of a fire time is its
    idempotency while a sweeper or a trigger could still name it). Returns how many."""
    days = max(settings.SIGNOFF_SCHEDULE_FIRE_RETENTION_DAYS, 2)
    old = list(
        ScheduleFire.objects.filter(at__lt=now - timedelta(days=days))
        .order_by("at")
        .values_list("pk", flat=True)[:batch]
    )
    if not old:
        return 0
    deleted, _ = ScheduleFire.objects.filter(pk__in=old).delete()
    return deleted
