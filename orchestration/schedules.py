"""Schedules: create, update, pause, resume, trigger now and delete, with their checks.

Each service validates everything first and raises :class:`~orchestration.errors.InvalidInput`
(400), :class:`~orchestration.errors.Conflict` (409) or
:class:`~orchestration.errors.NotFound` (404) with nothing written; writes happen in one
transaction with the schedule row locked. The fixed input is validated against the workflow's
``input_schema`` as a start would validate it, its sensitive fields sealed as a start seals
them, and its requester field checked against the person saving the schedule (the fires start
as the system, so naming someone else needs ``orchestration.start_on_behalf`` now).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from . import actors, engine, sealing
from .definitions import registry
from .errors import Conflict, InvalidInput, Message, NotFound, invalid_input, unknown_workflow
from .jsonsafe import storable_json_problem, string_problem
from .schedule_firing import fire, render_business_key
from .schedule_models import OverlapPolicy, Schedule, ScheduleFire
from .schedule_timing import Timing, cron_problem, due_at, next_fire_after, zone

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\- ]{0,99}$")
MAX_INTERVAL_SECONDS = 366 * 86400
MAX_JITTER_SECONDS = 86400
MAX_CATCHUP_SECONDS = 366 * 86400
FIELDS = (
    "name",
    "workflow",
    "version",
    "input",
    "business_key_template",
    "cron",
    "interval_seconds",
    "time_zone",
    "jitter_seconds",
    "overlap",
    "catchup_window_seconds",
)
CREATE_DEFAULTS: dict[str, Any] = {
    "version": None,
    "input": {},
    "business_key_template": "",
    "cron": "",
    "interval_seconds": None,
    "time_zone": "UTC",
    "jitter_seconds": 0,
    "overlap": OverlapPolicy.SKIP,
    "catchup_window_seconds": 3600,
}
TIMING_FIELDS = ("cron", "interval_seconds", "time_zone", "jitter_seconds", "name")


def _bad(message: str, code: str, field: str) -> InvalidInput:
    return InvalidInput(message, code=code, errors={field: [message]})


def _int(values: dict[str, Any], field: str, low: int, high: int, *, allow_none: bool) -> None:
    value = values.get(field)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(
            Message(
                gettext_noop("%(field)s must be an integer from %(low)s to %(high)s"),
                field=field,
                low=low,
                high=high,
            ),
            f"invalid_{field}",
            field,
        )


def _checked(values: dict[str, Any], user: Any) -> dict[str, Any]:
    """``values`` (every field of :data:`FIELDS`) checked; returns them as stored (input
    sealed). Raises :class:`InvalidInput` naming the first problem."""
    name = values.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or string_problem(name):
        raise _bad(
            gettext_noop(
                "name must be 1 to 100 characters: letters, digits, space, _ . : - "
                "(starting with a letter or digit)"
            ),
            "invalid_name",
            "name",
        )
    workflow, version = values.get("workflow"), values.get("version")
    if not isinstance(workflow, str) or not workflow:
        raise _bad(
            gettext_noop("workflow must be a non-empty string"), "unknown_workflow", "workflow"
        )
    _int(values, "version", 1, 2**31 - 1, allow_none=True)
    definition = registry.get(workflow, version)
    if definition is None:
        known = registry.get(workflow) is not None
        raise _bad(
            unknown_workflow(workflow, version if known else None),
            "unknown_workflow",
            "workflow",
        )
    cron, interval = values.get("cron") or "", values.get("interval_seconds")
    if not isinstance(cron, str):
        raise _bad(gettext_noop("cron must be a string"), "invalid_cron", "cron")
    if bool(cron) == (interval is not None):
        raise _bad(
            gettext_noop("give exactly one of cron and interval_seconds"),
            "invalid_timing",
            "interval_seconds",
        )
    if cron and (problem := cron_problem(cron)):
        raise _bad(problem, "invalid_cron", "cron")
    _int(values, "interval_seconds", 1, MAX_INTERVAL_SECONDS, allow_none=True)
    tz = values.get("time_zone")
    if zone(tz) is None:
        raise _bad(
            Message(
                gettext_noop(
                    "time_zone %(zone)s is not a known IANA time zone (such as Europe/Berlin)"
                ),
                zone=repr(tz),
            ),
            "invalid_time_zone",
            "time_zone",
        )
    _int(values, "jitter_seconds", 0, MAX_JITTER_SECONDS, allow_none=False)
    if interval is not None and values["jitter_seconds"] >= interval:
        raise _bad(
            gettext_noop("jitter_seconds must be smaller than interval_seconds"),
            "invalid_jitter_seconds",
            "jitter_seconds",
        )
    _int(values, "catchup_window_seconds", 0, MAX_CATCHUP_SECONDS, allow_none=False)
    if values.get("overlap") not in OverlapPolicy.values:
        raise _bad(
            Message(
                gettext_noop("overlap must be one of %(choices)s"),
                choices=", ".join(OverlapPolicy.values),
            ),
            "invalid_overlap",
            "overlap",
        )
    template = values.get("business_key_template") or ""
    if not isinstance(template, str) or len(template) > 200 or string_problem(template):
        raise _bad(
            gettext_noop("business_key_template must be a string of at most 200 characters"),
            "invalid_business_key_template",
            "business_key_template",
        )
    sample = render_business_key(template, schedule_name=name, fire_time=timezone.now(), tz=tz)
    if len(sample) > 200:
        raise _bad(
            gettext_noop("business_key_template makes keys longer than 200 characters"),
            "invalid_business_key_template",
            "business_key_template",
        )
    input = _checked_input(values.get("input"), definition, user)
    return {
        **{field: values.get(field) for field in FIELDS},
        "cron": cron,
        "business_key_template": template,
        "input": sealing.seal_fields(input, sealing.input_fields(definition.sensitive)),
    }


def _checked_input(input: Any, definition: Any, user: Any) -> dict[str, Any]:
    if input is None:
        input = {}
    if not isinstance(input, dict):
        raise _bad(gettext_noop("input must be a JSON object"), "invalid_input", "input")
    problem = storable_json_problem(input)
    if problem:
        raise _bad(
            Message(gettext_noop("input: %(problem)s"), problem=problem), "invalid_input", "input"
        )
    size = len(json.dumps(input, separators=(",", ":")).encode())
    limit = settings.SIGNOFF_SCHEDULE_MAX_INPUT_BYTES
    if size > limit:
        raise _bad(
            Message(
                gettext_noop(
                    "input is %(size)s bytes; a schedule's input may have at most %(max)s"
                ),
                size=size,
                max=limit,
            ),
            "input_too_large",
            "input",
        )
    input = engine.requester_input(definition, input, user)
    checked = input
    if definition.attachments is not None:
        # Scheduled starts carry no files: the engine lists none in that field.
        checked = {**input, definition.attachments: []}
    problems = definition.validate_input(checked)
    if problems:
        raise InvalidInput(
            invalid_input(problems),
            code="invalid_input",
            errors={"input": problems},
        )
    return engine.jsonable(input)


def _plan(schedule: Schedule, now: datetime) -> None:
    """Set the next fire time from ``now`` (nothing while paused)."""
    if schedule.paused:
        schedule.next_fire_at = schedule.fire_due_at = None
        return
    timing = Timing.of(schedule)
    schedule.next_fire_at = next_fire_after(timing, now)
    schedule.fire_due_at = due_at(timing, schedule.next_fire_at)


def schedule_create(*, values: dict[str, Any], created_by: Any = None) -> Schedule:
    """Create a schedule from ``values`` (:data:`FIELDS`; ``paused``/``paused_note`` too);
    its first fire is the first fire time after now. A taken name is a :class:`Conflict`."""
    unknown = set(values) - set(FIELDS) - {"paused", "paused_note"}
    if unknown:
        raise InvalidInput(
            Message(gettext_noop("unknown fields: %(fields)s"), fields=", ".join(sorted(unknown))),
            code="invalid",
        )
    checked = schedule_check(
        values={k: v for k, v in values.items() if k in FIELDS}, user=created_by
    )
    paused, note = _pause_values(values)
    now = timezone.now()
    schedule = Schedule(
        **checked,
        paused=paused,
        paused_note=note,
        created_by=created_by if getattr(created_by, "pk", None) else None,
        created_at=now,
        updated_at=now,
    )
    _plan(schedule, now)
    if Schedule.objects.filter(name=schedule.name).exists():
        raise _taken(schedule.name)
    try:
        with transaction.atomic():
            schedule.save(force_insert=True)
    except IntegrityError as exc:
        raise _taken(schedule.name) from exc
    return schedule


def _taken(name: str) -> Conflict:
    return Conflict(
        Message(gettext_noop("a schedule named %(name)s exists already"), name=repr(name)),
        code="name_taken",
        errors={"name": [gettext_noop("A schedule with this name exists already.")]},
    )


def _pause_values(values: dict[str, Any]) -> tuple[bool, str]:
    paused, note = values.get("paused", False), values.get("paused_note", "")
    if not isinstance(paused, bool):
        raise _bad(gettext_noop("paused must be true or false"), "invalid_paused", "paused")
    if not isinstance(note, str) or len(note) > 500 or string_problem(note):
        raise _bad(
            gettext_noop("paused_note must be at most 500 characters"),
            "invalid_note",
            "paused_note",
        )
    return paused, note


def _locked(schedule_id: Any) -> Schedule:
    schedule = Schedule.objects.select_for_update().filter(pk=_pk(schedule_id)).first()
    if schedule is None:
        raise NotFound(gettext_noop("no such schedule"), code="not_found")
    return schedule


def _pk(schedule_id: Any) -> int:
    if isinstance(schedule_id, bool):
        return 0
    try:
        pk = int(schedule_id)
    except (TypeError, ValueError):
        return 0
    return pk if 0 < pk < 2**63 else 0  # never a value the database cannot compare


def schedule_check(
    *, values: dict[str, Any], user: Any = None, schedule: Schedule | None = None
) -> dict[str, Any]:
    """Check ``values`` as :func:`schedule_create` (no ``schedule``) or
    :func:`schedule_update` would, writing nothing (the admin's form asks this); returns the
    values as they would be stored. Raises :class:`InvalidInput`."""
    if schedule is None:
        return _checked({**CREATE_DEFAULTS, **values}, user)
    current = {field: getattr(schedule, field) for field in FIELDS}
    if "input" not in values:
        try:
            current["input"] = sealing.open_fields(schedule.input, where="input")
        except sealing.SealError as exc:
            raise _bad(
                Message(
                    gettext_noop(
                        "the stored input cannot be opened (%(error)s); give the input again"
                    ),
                    error=exc,
                ),
                "input_unreadable",
                "input",
            ) from exc
    merged = {**current, **values}
    # Switching between cron and interval: giving one clears the other.
    if values.get("cron") and "interval_seconds" not in values:
        merged["interval_seconds"] = None
    if values.get("interval_seconds") is not None and "cron" not in values:
        merged["cron"] = ""
    # The requester field is checked against the person changing the input (or the
    # workflow); an edit of the timing keeps the input as its creator saved it.
    changes_input = "input" in values or "workflow" in values
    return _checked(merged, user if changes_input else None)


def schedule_update(*, schedule_id: Any, values: dict[str, Any], user: Any = None) -> Schedule:
    """Change the given fields (a partial update). Everything is checked again as on create;
    ``input`` left out keeps the stored (sealed) input. A change of the timing (cron,
    interval, time zone, jitter, name) plans the next fire from now; other changes keep it."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise InvalidInput(
            Message(gettext_noop("unknown fields: %(fields)s"), fields=", ".join(sorted(unknown))),
            code="invalid",
        )
    with transaction.atomic():
        schedule = _locked(schedule_id)
        checked = schedule_check(values=values, user=user, schedule=schedule)
        if checked["name"] != schedule.name and (
            Schedule.objects.filter(name=checked["name"]).exclude(pk=schedule.pk).exists()
        ):
            raise _taken(checked["name"])
        retime = any(checked[f] != getattr(schedule, f) for f in TIMING_FIELDS)
        for field, value in checked.items():
            setattr(schedule, field, value)
        now = timezone.now()
        if retime:
            _plan(schedule, now)
        schedule.updated_at = now
        try:
            with transaction.atomic():
                schedule.save()
        except IntegrityError as exc:
            raise _taken(schedule.name) from exc
        return schedule


def schedule_pause(*, schedule_id: Any, note: str = "", user: Any = None) -> Schedule:
    """Pause: no fire starts until it is resumed (a buffered fire waits too). Pausing a
    paused schedule changes only its note."""
    _pause_values({"paused": True, "paused_note": note})
    with transaction.atomic():
        schedule = _locked(schedule_id)
        schedule.paused, schedule.paused_note = True, note
        _plan(schedule, timezone.now())
        schedule.updated_at = timezone.now()
        schedule.save(
            update_fields=["paused", "paused_note", "next_fire_at", "fire_due_at", "updated_at"]
        )
        return schedule


def schedule_resume(*, schedule_id: Any, user: Any = None) -> Schedule:
    """Resume: the next fire is the first fire time after now; fire times that passed while
    paused are not caught up. Resuming an active schedule changes nothing."""
    with transaction.atomic():
        schedule = _locked(schedule_id)
        if not schedule.paused:
            return schedule
        schedule.paused, schedule.paused_note = False, ""
        now = timezone.now()
        _plan(schedule, now)
        schedule.updated_at = now
        schedule.save(
            update_fields=["paused", "paused_note", "next_fire_at", "fire_due_at", "updated_at"]
        )
        return schedule


def schedule_trigger(
    *, schedule_id: Any, fire_time: datetime | None = None, user: Any = None
) -> ScheduleFire:
    """Fire now (or at the given ``fire_time``, which names the run), paused or not, under the
    overlap policy; the regular fire times are unchanged. The fire time is the idempotency of
    the run: a second trigger with the same one (by default, within the same second) is a
    :class:`Conflict` and starts nothing."""
    now = timezone.now()
    if fire_time is None:
        fire_time = now.replace(microsecond=0)
    elif not isinstance(fire_time, datetime) or timezone.is_naive(fire_time):
        raise _bad(
            gettext_noop("fire_time must be an aware date-time"), "invalid_fire_time", "fire_time"
        )
    elif abs(fire_time - now) > timedelta(days=1):
        raise _bad(
            gettext_noop("fire_time must be within a day of now"), "invalid_fire_time", "fire_time"
        )
    with transaction.atomic():
        schedule = _locked(schedule_id)
        result = fire(schedule, fire_time, now=now, triggered_by=actors.actor_of(user))
        schedule.updated_at = now
        schedule.save(update_fields=["last_fire_at", "buffered_fire_at", "updated_at"])
        return result


def schedule_delete(*, schedule_id: Any, user: Any = None) -> None:
    """Delete a schedule and its fire records; its instances stay (their ``schedule`` becomes
    null, ``scheduled_for`` is kept)."""
    with transaction.atomic():
        _locked(schedule_id).delete()
