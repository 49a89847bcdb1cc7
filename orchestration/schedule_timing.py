"""When a schedule fires, and how that reads: pure functions over a schedule's timing fields.

Cron expressions are read by croniter in the schedule's time zone, so "0 2 * * *" in
Europe/Berlin is 02:00 Berlin time in winter and in summer. Across a DST change the rules are
Vixie cron's: a time that does not exist (spring forward) fires at the first moment after the
gap; a time that happens twice (fall back) fires once, at its first occurrence, unless the
expression's hour field is a wildcard (``0 * * * *`` fires in each real hour). Intervals are
anchored at the Unix epoch (every 3600 s fires on the hour, UTC), so the fire times of an
interval schedule do not depend on when it was created or how often the sweeper runs.

Jitter delays each fire by a deterministic amount in ``[0, jitter_seconds]`` computed from the
schedule's name and the fire time: every sweeper (and a restarted one) agrees on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from django.utils.translation import gettext_noop

from .errors import Message

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Timing:
    """What decides a schedule's fire times (a Schedule row has these fields)."""

    name: str
    cron: str = ""
    interval_seconds: int | None = None
    time_zone: str = "UTC"
    jitter_seconds: int = 0

    @classmethod
    def of(cls, schedule: Any) -> Timing:
        return cls(
            name=schedule.name,
            cron=schedule.cron,
            interval_seconds=schedule.interval_seconds,
            time_zone=schedule.time_zone,
            jitter_seconds=schedule.jitter_seconds,
        )


def zone(name: str) -> ZoneInfo | None:
    """The zone named ``name`` (an IANA name such as ``Europe/Berlin``), or None."""
    if not isinstance(name, str) or not name or name not in _zone_names():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


_ZONES: frozenset[str] | None = None


def _zone_names() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones()) | {"UTC"}
    return _ZONES


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a schedule's cron expression (five fields: minute, hour, day
    of month, month, day of week), or None."""
    if not isinstance(expression, str) or not expression.strip():
        return Message(gettext_noop("cron must be a non-empty string"))
    fields = expression.split()
    if len(fields) != 5:
        return Message(
            gettext_noop(
                "cron %(cron)s must have 5 fields (minute hour day-of-month month "
                "day-of-week), not %(count)s"
            ),
            cron=repr(expression),
            count=len(fields),
        )
    if not croniter.is_valid(expression):
        return Message(
            gettext_noop("cron %(cron)s is not a valid cron expression"), cron=repr(expression)
        )
    try:
        croniter(expression, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except Exception as exc:  # noqa: BLE001 - croniter raises several kinds
        return Message(
            gettext_noop("cron %(cron)s never fires: %(error)s"), cron=repr(expression), error=exc
        )
    return None


def _hour_is_wildcard(expression: str) -> bool:
    return expression.split()[1].startswith("*")


def _second_occurrence(moment: datetime, tz: ZoneInfo) -> bool:
    """Whether ``moment`` is the second time its wall-clock time happens (fall back)."""
    local = moment.astimezone(tz)
    naive = local.replace(tzinfo=None)
    first = naive.replace(tzinfo=tz, fold=0).utcoffset()
    second = naive.replace(tzinfo=tz, fold=1).utcoffset()
    return first != second and local.utcoffset() == second


def next_fire_after(timing: Timing, after: datetime) -> datetime:
    """The first nominal fire time strictly after ``after`` (aware, in UTC)."""
    if timing.interval_seconds:
        step = timing.interval_seconds
        elapsed = (after - EPOCH).total_seconds()
        n = int(elapsed // step) + 1
        return EPOCH + timedelta(seconds=n * step)
    tz = zone(timing.time_zone) or ZoneInfo("UTC")
    it = croniter(timing.cron, after.astimezone(tz))
    wildcard_hour = _hour_is_wildcard(timing.cron)
    for _ in range(4):
        candidate = it.get_next(datetime)
        if wildcard_hour or not _second_occurrence(candidate, tz):
            return candidate.astimezone(UTC)
    return candidate.astimezone(UTC)  # pragma: no cover - a wall time repeats at most once


def fire_at_or_before(timing: Timing, moment: datetime) -> datetime:
    """The last nominal fire time at or before ``moment`` (aware, in UTC): where the sweeper
    jumps to after a long downtime instead of walking every missed fire time."""
    if timing.interval_seconds:
        step = timing.interval_seconds
        n = int((moment - EPOCH).total_seconds() // step)
        return EPOCH + timedelta(seconds=n * step)
    tz = zone(timing.time_zone) or ZoneInfo("UTC")
    # get_prev is strictly before its start; cron has no seconds, so a second later includes
    # a fire time at ``moment`` itself.
    it = croniter(timing.cron, (moment + timedelta(seconds=1)).astimezone(tz))
    wildcard_hour = _hour_is_wildcard(timing.cron)
    for _ in range(4):
        candidate = it.get_prev(datetime)
        if candidate <= moment and (wildcard_hour or not _second_occurrence(candidate, tz)):
            return candidate.astimezone(UTC)
    return candidate.astimezone(UTC)  # pragma: no cover - a wall time repeats at most once


def fire_times(timing: Timing, after: datetime) -> Iterator[datetime]:
    """Nominal fire times after ``after``, in order (endless)."""
    moment = after
    while True:
        moment = next_fire_after(timing, moment)
        yield moment


def jitter_of(timing: Timing, fire_time: datetime) -> timedelta:
    """This fire's delay: deterministic in ``[0, jitter_seconds]``."""
    if timing.jitter_seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{timing.name}|{fire_time.isoformat()}".encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % (timing.jitter_seconds + 1))


def due_at(timing: Timing, fire_time: datetime) -> datetime:
    """When the fire at ``fire_time`` starts: the fire time plus its jitter."""
    return fire_time + jitter_of(timing, fire_time)


def next_fire_times(timing: Timing, after: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` nominal fire times after ``after``."""
    times = fire_times(timing, after)
    return [next(times) for _ in range(count)]


# "every {unit}" and "every {n} {unit}s" for each unit, marked for makemessages.
_EVERY = {
    "day": (gettext_noop("every day"), gettext_noop("every %(n)s days")),
    "hour": (gettext_noop("every hour"), gettext_noop("every %(n)s hours")),
    "minute": (gettext_noop("every minute"), gettext_noop("every %(n)s minutes")),
    "second": (gettext_noop("every second"), gettext_noop("every %(n)s seconds")),
}


def _every(seconds: int) -> Message:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            n = seconds // size
            one, many = _EVERY[unit]
            return Message(one) if n == 1 else Message(many, n=n)
    raise AssertionError("unreachable")  # pragma: no cover - every whole number divides by 1


def describe(timing: Timing) -> str:
    """The timing in words: cron-descriptor's reading of the expression ("At 02:00 AM, Monday
    through Friday", in English) or "every N minutes", with the time zone and the jitter; a
    :class:`Message` (English; a page shows it through ``localize``)."""
    if timing.interval_seconds:
        words = _every(timing.interval_seconds)
    else:
        try:
            from cron_descriptor import Options, get_description

            options = Options()
            options.use_24hour_time_format = True
            words = get_description(timing.cron, options)
        except Exception:  # noqa: BLE001 - a description must never break a page
            words = timing.cron
        zone_name = timing.time_zone if timing.time_zone and timing.time_zone != "UTC" else "UTC"
        words = Message("%(words)s (%(zone)s)", words=words, zone=zone_name)
    if timing.jitter_seconds:
        words = Message(
            gettext_noop("%(words)s, up to %(seconds)s s later (jitter)"),
            words=words,
            seconds=timing.jitter_seconds,
        )
    return words
