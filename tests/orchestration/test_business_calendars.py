"""Business calendars with public holidays from the ``holidays`` library: a country and
subdivision for the default calendar, named calendars a step picks, and clear refusals of
unknown codes (a system check at start-up, an error at registration)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from orchestration.calendar import add_duration, business_calendar, calendar_problems
from orchestration.checks import check_business_calendars

UTC_DEFAULT = {
    "SIGNOFF_BUSINESS_TIMEZONE": "UTC",
    "SIGNOFF_BUSINESS_DAYS": "mon-fri",
    "SIGNOFF_BUSINESS_HOURS": "09:00-17:00",
    "SIGNOFF_HOLIDAYS": [],
    "SIGNOFF_BUSINESS_COUNTRY": "",
    "SIGNOFF_BUSINESS_SUBDIVISION": "",
    "SIGNOFF_BUSINESS_CALENDARS": {},
}
FRIDAY = datetime(2031, 1, 3, 15, 0, tzinfo=UTC)  # Monday 6 January is Epiphany in Bavaria


def calendar(**overrides: object) -> override_settings:
    return override_settings(**{**UTC_DEFAULT, **overrides})


def test_without_a_country_only_weekends_and_explicit_dates_are_off() -> None:
    with calendar():
        assert add_duration(FRIDAY, timedelta(days=1), business=True) == datetime(
            2031, 1, 6, 15, 0, tzinfo=UTC
        )
    with calendar(SIGNOFF_HOLIDAYS=["2031-01-06"]):
        assert add_duration(FRIDAY, timedelta(days=1), business=True) == datetime(
            2031, 1, 7, 15, 0, tzinfo=UTC
        )


def test_a_subdivision_adds_its_own_public_holidays() -> None:
    with calendar(SIGNOFF_BUSINESS_COUNTRY="DE"):  # Epiphany is not a holiday everywhere
        assert add_duration(FRIDAY, timedelta(days=1), business=True) == datetime(
            2031, 1, 6, 15, 0, tzinfo=UTC
        )
    with calendar(SIGNOFF_BUSINESS_COUNTRY="DE", SIGNOFF_BUSINESS_SUBDIVISION="BY"):
        assert add_duration(FRIDAY, timedelta(days=1), business=True) == datetime(
            2031, 1, 7, 15, 0, tzinfo=UTC
        )
        # Explicit dates still count beside the country's.
    with calendar(
        SIGNOFF_BUSINESS_COUNTRY="de",
        SIGNOFF_BUSINESS_SUBDIVISION="by",
        SIGNOFF_HOLIDAYS=["2031-01-07"],
    ):
        assert add_duration(FRIDAY, timedelta(days=1), business=True) == datetime(
            2031, 1, 8, 15, 0, tzinfo=UTC
        )


def test_a_country_gives_public_holidays_for_any_year() -> None:
    with calendar(SIGNOFF_BUSINESS_COUNTRY="DE"):
        germany = business_calendar()
        # German Unity Day on a Friday: a day from Thursday afternoon lands on Monday.
        assert add_duration(
            datetime(2031, 10, 2, 15, 0, tzinfo=UTC), timedelta(days=1), business=True
        ) == datetime(2031, 10, 6, 15, 0, tzinfo=UTC)
        for year in (1999, 2026, 2057, 2099):
            assert not germany.is_working_day(date(year, 12, 25))
            assert not germany.is_working_day(date(year, 10, 3))
        assert date(2099, 12, 25).weekday() == 4  # a Friday: off only as a holiday
    with calendar():
        assert business_calendar().is_working_day(date(2099, 12, 25))


def test_a_named_calendar_has_its_own_country_zone_and_hours() -> None:
    named = {
        "fr": {"country": "FR", "timezone": "Europe/Paris", "hours": "09:00-18:00"},
        "bavaria": {"country": "DE", "subdivision": "BY"},
    }
    with calendar(SIGNOFF_BUSINESS_CALENDARS=named):
        # Friday 17:00 in Paris, two working hours: one on Friday, Monday is Bastille Day.
        friday = datetime(2031, 7, 11, 17, 0, tzinfo=ZoneInfo("Europe/Paris"))
        assert add_duration(friday, timedelta(hours=2), calendar="fr") == datetime(
            2031, 7, 15, 10, 0, tzinfo=ZoneInfo("Europe/Paris")
        )
        # The default calendar (UTC, 09-17) has the two hours on Friday (15:00-17:00 UTC).
        assert add_duration(friday, timedelta(hours=2), business=True) == datetime(
            2031, 7, 11, 19, 0, tzinfo=ZoneInfo("Europe/Paris")
        )
        # A named calendar takes the default's keys it leaves out (UTC, 09-17).
        assert add_duration(FRIDAY, timedelta(days=1), calendar="bavaria") == datetime(
            2031, 1, 7, 15, 0, tzinfo=UTC
        )
        with pytest.raises(ValueError, match="unknown business calendar 'nowhere'"):
            add_duration(FRIDAY, timedelta(days=1), calendar="nowhere")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"SIGNOFF_BUSINESS_COUNTRY": "XX"}, "default calendar: unknown country code 'XX'"),
        ({"SIGNOFF_BUSINESS_COUNTRY": "D" * 500}, "unknown country code 'DDDD"),
        (
            {"SIGNOFF_BUSINESS_COUNTRY": "DE", "SIGNOFF_BUSINESS_SUBDIVISION": "ZZ"},
            "unknown subdivision 'ZZ' of DE (known: BB, BE, BW, BY",
        ),
        ({"SIGNOFF_BUSINESS_SUBDIVISION": "BY"}, "a subdivision needs a country"),
        ({"SIGNOFF_BUSINESS_TIMEZONE": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"SIGNOFF_BUSINESS_HOURS": "17:00-09:00"}, "the day must end after it starts"),
        ({"SIGNOFF_BUSINESS_HOURS": "nine to five"}, "use HH:MM-HH:MM"),
        ({"SIGNOFF_BUSINESS_DAYS": "mon-funday"}, "use names like mon-fri"),
        ({"SIGNOFF_HOLIDAYS": ["2031-02-30"]}, "holiday '2031-02-30' is not an ISO date"),
        (
            {"SIGNOFF_BUSINESS_CALENDARS": {"fr": {"country": "FX"}}},
            "calendar 'fr': unknown country code 'FX'",
        ),
        (
            {"SIGNOFF_BUSINESS_CALENDARS": {"fr": {"country": "FR", "hollidays": []}}},
            "calendar 'fr': unknown keys hollidays",
        ),
        ({"SIGNOFF_BUSINESS_CALENDARS": {"fr": "FR"}}, "calendar 'fr': must be an object"),
        ({"SIGNOFF_BUSINESS_CALENDARS": ["FR"]}, "must be a JSON object of calendars"),
        (
            {"SIGNOFF_BUSINESS_CALENDARS": {"x": {"holidays": "2031-01-01"}}},
            "holidays must be a list of ISO dates",
        ),
    ],
)
def test_bad_calendar_settings_stop_start_up_with_a_clear_error(
    overrides: dict, message: str
) -> None:
    with calendar(**overrides):
        problems = calendar_problems()
        assert any(message in p for p in problems), problems
        errors = check_business_calendars()
        assert errors and all(e.id == "signoff.E031" for e in errors)
        with pytest.raises(SystemCheckError, match="signoff.E031"):
            call_command("check")


def test_valid_calendars_pass_the_check() -> None:
    with calendar(
        SIGNOFF_BUSINESS_COUNTRY="DE",
        SIGNOFF_BUSINESS_SUBDIVISION="BY",
        SIGNOFF_BUSINESS_CALENDARS={"fr": {"country": "FR", "holidays": ["2031-05-02"]}},
    ):
        assert calendar_problems() == []
        assert check_business_calendars() == []
