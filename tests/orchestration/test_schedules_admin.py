"""The schedule admin: the list with the next fire in words, add and change through the
service's checks (bad input is a form error and writes nothing), pause and resume actions that
need orchestration.change_schedule, and the read-only fire records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from orchestration import schedules, sealing, sweepers
from orchestration.models import Schedule, ScheduleFire

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:orchestration_schedule_changelist")
ADD = reverse("admin:orchestration_schedule_add")
FIRES = reverse("admin:orchestration_schedulefire_changelist")
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
FORM = {
    "name": "nightly",
    "workflow": "t_scheduled",
    "version": "",
    "business_key_template": "",
    "cron": "0 2 * * *",
    "interval_seconds": "",
    "time_zone": "Europe/Berlin",
    "jitter_seconds": "0",
    "overlap": "skip",
    "catchup_window_seconds": "3600",
    "new_input": '{"report": "nightly", "token": "s3cret"}',
}


def staff_with(django_user_model: Any, name: str, *codenames: str) -> Client:
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="orchestration", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def editor(django_user_model: Any) -> Client:
    return staff_with(
        django_user_model,
        "ed",
        "view_schedule",
        "add_schedule",
        "change_schedule",
        "delete_schedule",
        "view_schedulefire",
    )


@pytest.fixture
def looker(django_user_model: Any) -> Client:
    return staff_with(django_user_model, "lou", "view_schedule", "view_schedulefire")


def make(name: str = "hourly", **values: Any) -> Schedule:
    return schedules.schedule_create(
        values={
            "name": name,
            "workflow": "t_scheduled",
            "input": {"report": "x"},
            "interval_seconds": 3600,
            **values,
        }
    )


def rows() -> tuple:
    return (
        sorted(Schedule.objects.values_list("name", "paused", "cron", "updated_at")),
        ScheduleFire.objects.count(),
    )


def test_add_through_the_form_seals_the_input(editor: Client) -> None:
    response = editor.post(ADD, FORM)
    assert response.status_code == 302, response.content.decode()[:2000]
    schedule = Schedule.objects.get(name="nightly")
    assert "s3cret" not in str(schedule.input)
    assert sealing.open_fields(schedule.input, where="input")["token"] == "s3cret"
    assert schedule.created_by.username == "ed"
    page = editor.get(reverse("admin:orchestration_schedule_change", args=[schedule.pk]))
    assert "s3cret" not in page.content.decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cron": "not a cron"}, "must have 5 fields"),
        ({"cron": "", "interval_seconds": ""}, "exactly one of cron and interval_seconds"),
        ({"time_zone": "Atlantis/Deep"}, "not a known IANA time zone"),
        ({"workflow": "nope"}, "unknown workflow"),
        ({"new_input": '{"report": 3}'}, "invalid input"),
    ],
)
def test_add_refuses_bad_input_with_a_form_error(
    editor: Client, change: dict[str, str], message: str
) -> None:
    before = rows()
    response = editor.post(ADD, {**FORM, **change})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert rows() == before


def test_change_keeps_the_stored_input_when_none_is_given(editor: Client) -> None:
    schedule = make(input={"report": "kept", "token": "t0k"})
    url = reverse("admin:orchestration_schedule_change", args=[schedule.pk])
    form = {**FORM, "name": "hourly", "cron": "", "interval_seconds": "1800", "new_input": ""}
    response = editor.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    schedule.refresh_from_db()
    assert schedule.interval_seconds == 1800 and schedule.cron == ""
    assert sealing.open_fields(schedule.input, where="input") == {"report": "kept", "token": "t0k"}


def test_list_shows_the_next_fire_in_words_with_constant_queries(editor: Client) -> None:
    with time_machine.travel(T0, tick=False):
        make()
        with CaptureQueriesContext(connection) as few:
            page = editor.get(CHANGELIST)
        body = page.content.decode()
        assert "every hour" in body and "in 1\xa0hour" in body
        for n in range(15):
            make(f"s{n}", cron="*/5 * * * *", interval_seconds=None)
        with CaptureQueriesContext(connection) as many:
            assert "Every 5 minutes (UTC)" in editor.get(CHANGELIST).content.decode()
    assert len(many) == len(few)


def test_pause_and_resume_actions(editor: Client) -> None:
    schedule = make()
    data = {"action": "pause_schedules", "_selected_action": [schedule.pk], "index": "0"}
    assert editor.post(CHANGELIST, data).status_code == 302
    schedule.refresh_from_db()
    assert schedule.paused and schedule.next_fire_at is None
    data["action"] = "resume_schedules"
    assert editor.post(CHANGELIST, data).status_code == 302
    schedule.refresh_from_db()
    assert not schedule.paused and schedule.next_fire_at is not None


def test_view_only_staff_cannot_pause_add_or_change(looker: Client) -> None:
    schedule = make()
    assert looker.get(CHANGELIST).status_code == 200
    before = rows()
    data = {"action": "pause_schedules", "_selected_action": [schedule.pk], "index": "0"}
    assert looker.post(CHANGELIST, data).status_code == 403
    assert looker.post(ADD, FORM).status_code == 403
    url = reverse("admin:orchestration_schedule_change", args=[schedule.pk])
    assert looker.post(url, {**FORM, "name": "hourly"}).status_code == 403
    delete = reverse("admin:orchestration_schedule_delete", args=[schedule.pk])
    assert looker.post(delete, {"post": "yes"}).status_code == 403
    assert rows() == before


def test_fire_records_are_read_only(editor: Client, rung: list) -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make()
    with time_machine.travel(T0, tick=False):
        sweepers.sweep_schedules()
    fire = ScheduleFire.objects.get(schedule=schedule)
    page = editor.get(f"{FIRES}?schedule__id__exact={schedule.pk}")
    assert page.status_code == 200 and "started" in page.content.decode()
    change = reverse("admin:orchestration_schedulefire_change", args=[fire.pk])
    before = rows()
    assert editor.post(change, {"outcome": "missed"}).status_code == 403
    delete = reverse("admin:orchestration_schedulefire_delete", args=[fire.pk])
    assert editor.post(delete, {"post": "yes"}).status_code == 403
    assert rows() == before


def test_fire_now_action_reports_each_outcome_once_per_second(editor: Client, rung: list) -> None:
    schedule = make()
    data = {"action": "trigger_schedules", "_selected_action": [schedule.pk], "index": "0"}
    with time_machine.travel(T0, tick=False):
        first = editor.post(CHANGELIST, data, follow=True)
        assert [str(m) for m in first.context["messages"]] == ["hourly: started"]
        again = editor.post(CHANGELIST, data, follow=True)
    assert [str(m) for m in again.context["messages"]] == [
        "hourly: schedule 'hourly' already fired at 2026-06-01T08:00:00+00:00"
    ]
    assert list(ScheduleFire.objects.values_list("fire_time", "outcome")) == [(T0, "started")]


def test_view_only_staff_cannot_fire_now(looker: Client) -> None:
    schedule = make()
    before = rows()
    data = {"action": "trigger_schedules", "_selected_action": [schedule.pk], "index": "0"}
    assert looker.post(CHANGELIST, data).status_code == 403
    assert rows() == before
