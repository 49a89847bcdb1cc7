"""Business hours: durations that count only working time.

A duration counted in business time reads its ``days`` as working days (each as long as one
working day) and the rest as working hours, so ``timedelta(days=2)`` set on Friday at 15:00
with a 09:00–17:00 Monday–Friday calendar falls on Tuesday at 15:00.

The default calendar comes from settings (``SIGNOFF_BUSINESS_*``, see ``config/settings.py``):
time zone, working days and hours, explicit holidays (``SIGNOFF_HOLIDAYS``) and, with
``SIGNOFF_BUSINESS_COUNTRY`` (and ``SIGNOFF_BUSINESS_SUBDIVISION``), the public holidays of
that country for any year, from the ``holidays`` library. ``SIGNOFF_BUSINESS_CALENDARS`` names
more calendars (each key it leaves out is the default's, but for the subdivision of a calendar
that names its own country); a step picks one by name
(``approval(..., calendar="fr")``). :func:`calendar_problems` says what is wrong with them; the
system check ``signoff.E031`` refuses to start with an unknown country, subdivision, time zone
or calendar entry, and a step naming an unknown calendar is refused at registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holiday_data
from django.conf import settings

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@dataclass(frozen=True)
class BusinessCalendar:
    timezone: ZoneInfo
    weekdays: frozenset[int]  # 0 = Monday
    start: time
    end: time
    holidays: frozenset[date]
    # A country's public holidays (``holidays`` library; it fills in each year when asked).
    public: Any = field(default=None, compare=False, hash=False)

    @property
    def day_length(self) -> timedelta:
        return datetime.combine(date.min, self.end) - datetime.combine(date.min, self.start)

    def is_working_day(self, day: date) -> bool:
        if day.weekday() not in self.weekdays or day in self.holidays:
            return False
        return self.public is None or day not in self.public

    def add(self, moment: datetime, duration: timedelta) -> datetime:
        """``moment`` plus ``duration`` of working time (days as working days)."""
        if duration < timedelta(0):
            raise ValueError("business durations must not be negative")
        remaining = duration.days * self.day_length + timedelta(
            seconds=duration.seconds, microseconds=duration.microseconds
        )
        local = moment.astimezone(self.timezone)
        for _ in range(3660):  # ten years of days: a calendar with no working day stops here
            day = local.date()
            if self.is_working_day(day):
                opens = datetime.combine(day, self.start, self.timezone)
                closes = datetime.combine(day, self.end, self.timezone)
                begin = max(local, opens)
                if begin < closes:
                    available = closes - begin
                    if remaining <= available:
                        return (begin + remaining).astimezone(moment.tzinfo)
                    remaining -= available
            local = datetime.combine(day + timedelta(days=1), time(0), self.timezone)
        raise ValueError("the business calendar has no working time")


def _parse_time(value: str) -> time:
    hours, minutes = value.strip().split(":")
    return time(int(hours), int(minutes))


def _parse_days(value: str) -> frozenset[int]:
    days: set[int] = set()
    for part in value.lower().split(","):
        part = part.strip()
        if "-" in part:
            first, last = (DAY_NAMES.index(p.strip()[:3]) for p in part.split("-"))
            days.update(range(first, last + 1))
        elif part:
            days.add(DAY_NAMES.index(part[:3]))  # ValueError for an unknown day
    return frozenset(days)


KEYS = ("country", "subdivision", "timezone", "days", "hours", "holidays")


def _default_spec() -> dict[str, Any]:
    return {
        "country": settings.SIGNOFF_BUSINESS_COUNTRY,
        "subdivision": settings.SIGNOFF_BUSINESS_SUBDIVISION,
        "timezone": settings.SIGNOFF_BUSINESS_TIMEZONE,
        "days": settings.SIGNOFF_BUSINESS_DAYS,
        "hours": settings.SIGNOFF_BUSINESS_HOURS,
        "holidays": list(settings.SIGNOFF_HOLIDAYS),
    }


def calendar_names() -> list[str]:
    named = settings.SIGNOFF_BUSINESS_CALENDARS
    return sorted(named) if isinstance(named, dict) else []


def _spec(name: str | None) -> dict[str, Any]:
    spec = _default_spec()
    if name is not None:
        named = settings.SIGNOFF_BUSINESS_CALENDARS
        if not isinstance(named, dict) or name not in named:
            raise ValueError(f"unknown business calendar {name!r}")
        entry = named[name]
        if isinstance(entry, dict) and "country" in entry:
            spec["subdivision"] = ""  # the default's subdivision is of the default's country
        spec.update(entry)
    return spec


@lru_cache(maxsize=32)
def public_holidays(country: str, subdivision: str = "") -> Any:
    """The public holidays of ``country`` (ISO 3166 code) and ``subdivision``; raises
    ``ValueError`` for a code the ``holidays`` library does not know."""
    code = country.strip().upper()
    supported = holiday_data.list_supported_countries()
    if code not in supported:
        raise ValueError(f"unknown country code {country!r} (holidays knows {len(supported)})")
    subdiv = None
    if subdivision.strip():
        known = {s.upper(): s for s in supported[code]}
        subdiv = known.get(subdivision.strip().upper())
        if subdiv is None:
            shown = ", ".join(supported[code][:40]) or "none"
            raise ValueError(f"unknown subdivision {subdivision!r} of {code} (known: {shown})")
    return holiday_data.country_holidays(code, subdiv=subdiv)


def _spec_problems(spec: dict[str, Any]) -> list[str]:
    found = []
    if unknown := sorted(set(spec) - set(KEYS)):
        found.append(f"unknown keys {', '.join(unknown)} (known: {', '.join(KEYS)})")
    if spec.get("country"):
        try:
            public_holidays(str(spec["country"]), str(spec.get("subdivision") or ""))
        except ValueError as exc:
            found.append(str(exc))
    elif spec.get("subdivision"):
        found.append("a subdivision needs a country")
    try:
        ZoneInfo(str(spec.get("timezone")))
    except (ZoneInfoNotFoundError, ValueError):
        found.append(f"unknown time zone {spec.get('timezone')!r}")
    try:
        if not _parse_days(str(spec.get("days"))):
            found.append("no working day")
    except ValueError:
        found.append(f"days {spec.get('days')!r}: use names like mon-fri or mon,wed,fri")
    try:
        start, end = (_parse_time(t) for t in str(spec.get("hours")).split("-"))
        if start >= end:
            found.append(f"hours {spec.get('hours')!r}: the day must end after it starts")
    except ValueError:
        found.append(f"hours {spec.get('hours')!r}: use HH:MM-HH:MM")
    dates = spec.get("holidays") or []
    if not isinstance(dates, list):
        found.append("holidays must be a list of ISO dates")
    else:
        for value in dates:
            try:
                date.fromisoformat(str(value))
            except ValueError:
                found.append(f"holiday {value!r} is not an ISO date (YYYY-MM-DD)")
    return found


def calendar_problems() -> list[str]:
    """What is wrong with the default calendar and the named ones (empty when all are valid)."""
    found = [f"default calendar: {p}" for p in _spec_problems(_default_spec())]
    named = settings.SIGNOFF_BUSINESS_CALENDARS
    if not isinstance(named, dict):
        return [*found, "SIGNOFF_BUSINESS_CALENDARS must be a JSON object of calendars"]
    for name, entry in named.items():
        if not isinstance(entry, dict):
            found.append(f"calendar {name!r}: must be an object")
            continue
        found.extend(f"calendar {name!r}: {p}" for p in _spec_problems(_spec(name)))
    return found


def calendar_name_problem(name: Any) -> str | None:
    """Why a step may not name ``name`` as its calendar, or None."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in calendar_names():
        known = ", ".join(calendar_names()) or "none (SIGNOFF_BUSINESS_CALENDARS is empty)"
        return f"calendar {name!r} is not a named business calendar (known: {known})"
    return None


def business_calendar(name: str | None = None) -> BusinessCalendar:
    """The default calendar, or the one named ``name``; ``ValueError`` for an unknown name."""
    spec = _spec(name)
    start, end = str(spec["hours"]).split("-")
    country = str(spec.get("country") or "")
    return BusinessCalendar(
        timezone=ZoneInfo(str(spec["timezone"])),
        weekdays=_parse_days(str(spec["days"])),
        start=_parse_time(start),
        end=_parse_time(end),
        holidays=frozenset(date.fromisoformat(str(d)) for d in spec.get("holidays") or []),
        public=public_holidays(country, str(spec.get("subdivision") or "")) if country else None,
    )


def add_duration(
    moment: datetime, duration: timedelta, *, business: bool = False, calendar: str | None = None
) -> datetime:
    """``moment + duration``, in business time when ``business`` (of the calendar named
    ``calendar``, else the default one)."""
    if not business and calendar is None:
        return moment + duration
    return business_calendar(calendar).add(moment, duration)
