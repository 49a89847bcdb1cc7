"""Business hours: durations that count only working time.

A duration counted in business time reads its ``days`` as working days (each as long as one
working day) and the rest as working hours, so ``timedelta(days=2)`` set on Friday at 15:00
with a 09:00–17:00 Monday–Friday calendar falls on Tuesday at 15:00.

The calendar comes from settings (``SIGNOFF_BUSINESS_*``, see ``config/settings.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@dataclass(frozen=True)
class BusinessCalendar:
    timezone: ZoneInfo
    weekdays: frozenset[int]  # 0 = Monday
    start: time
    end: time
    holidays: frozenset[date]

    @property
    def day_length(self) -> timedelta:
        return datetime.combine(date.min, self.end) - datetime.combine(date.min, self.start)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() in self.weekdays and day not in self.holidays

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
            days.add(DAY_NAMES.index(part[:3]))
    return frozenset(days)


def business_calendar() -> BusinessCalendar:
    start, end = settings.SIGNOFF_BUSINESS_HOURS.split("-")
    return BusinessCalendar(
        timezone=ZoneInfo(settings.SIGNOFF_BUSINESS_TIMEZONE),
        weekdays=_parse_days(settings.SIGNOFF_BUSINESS_DAYS),
        start=_parse_time(start),
        end=_parse_time(end),
        holidays=frozenset(date.fromisoformat(d) for d in settings.SIGNOFF_HOLIDAYS),
    )


def add_duration(moment: datetime, duration: timedelta, *, business: bool = False) -> datetime:
    """``moment + duration``, in business time when ``business``."""
    if not business:
        return moment + duration
    return business_calendar().add(moment, duration)
