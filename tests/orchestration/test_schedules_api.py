"""The schedule REST API (``/api/v1/schedules/``) and the schedule admin: every operation,
permissions, bad input (nothing written), query counts, the resource's next fire times and
words, and the instance resource's link to its schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from orchestration import schedules, sealing, sweepers
from orchestration.models import Schedule, ScheduleFire, WorkflowInstance
from tests.orchestration.test_api import token_client

pytestmark = pytest.mark.django_db

URL = "/api/v1/schedules/"
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
BODY = {
    "name": "sales report",
    "workflow": "t_scheduled",
    "input": {"report": "sales", "token": "s3cret"},
    "cron": "0 9 * * 1-5",
    "time_zone": "Europe/Berlin",
    "business_key_template": "{schedule}-{date}",
}
ALL = ["view_schedule", "add_schedule", "change_schedule", "delete_schedule"]


def grant(user: Any, *codenames: str) -> Any:
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="orchestration", codename__in=codenames)
    )
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def manager(django_user_model: Any) -> Any:
    """May do everything with schedules (the model permissions), not staff."""
    return grant(django_user_model.objects.create_user("mia"), *ALL)


@pytest.fixture
def api(manager: Any) -> Any:
    return token_client(manager)


def state() -> tuple:
    return (
        sorted(
            Schedule.objects.values_list(
                "name", "cron", "interval_seconds", "paused", "overlap", "updated_at"
            )
        ),
        ScheduleFire.objects.count(),
        WorkflowInstance.objects.count(),
    )


def error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["detail"]
    if code:
        assert body["code"] == code, body
    return body


def create(api: Any, **changes: Any) -> dict[str, Any]:
    response = api.post(URL, {**BODY, **changes}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


# -- create, read --------------------------------------------------------------------------


def test_create_answers_the_resource_with_words_and_next_fire_times(api: Any) -> None:
    with time_machine.travel(T0, tick=False):  # a Monday, 10:00 in Berlin
        body = create(api)
    assert body["description"] == "At 09:00, Monday through Friday (Europe/Berlin)"
    assert body["next_fire_times"] == [
        "2026-06-02T07:00:00+00:00",
        "2026-06-03T07:00:00+00:00",
        "2026-06-04T07:00:00+00:00",
        "2026-06-05T07:00:00+00:00",
        "2026-06-08T07:00:00+00:00",
    ]
    assert body["input"]["token"] != "s3cret"  # sealed, shown masked
    assert body["input"]["report"] == "sales"
    assert body["created_by"] == "mia"
    assert body["overlap"] == "skip" and body["paused"] is False
    stored = Schedule.objects.get(name="sales report")
    assert "s3cret" not in str(stored.input)
    assert body["links"]["self"] == f"{URL}{stored.pk}/"


def test_interval_schedules_read_every_n_minutes(api: Any) -> None:
    body = create(api, cron="", interval_seconds=900, name="quarter")
    assert body["description"] == "every 15 minutes"
    times = [datetime.fromisoformat(t) for t in body["next_fire_times"]]
    assert {b - a for a, b in zip(times, times[1:], strict=False)} == {timedelta(minutes=15)}


def test_list_and_detail(api: Any) -> None:
    first = create(api)
    create(api, name="another", cron="*/5 * * * *")
    listed = api.get(URL).json()
    assert [s["name"] for s in listed["results"]] == ["another", "sales report"]
    assert api.get(f"{URL}{first['id']}/").json()["name"] == "sales report"
    error(api.get(f"{URL}999999/"), 404, "not_found")
    error(api.get(f"{URL}not-a-number/"), 404, "not_found")


def test_list_query_count_is_constant(
    api: Any, manager: Any, django_assert_max_num_queries: Any
) -> None:
    create(api)
    with CaptureQueriesContext(connection) as few:
        assert len(api.get(URL).json()["results"]) == 1
    for n in range(20):
        schedules.schedule_create(
            values={**BODY, "name": f"s{n}", "input": {"report": "x"}}, created_by=manager
        )
    with django_assert_max_num_queries(len(few)):
        assert len(api.get(URL).json()["results"]) == 21
    with CaptureQueriesContext(connection) as many:
        api.get(URL)
    assert len(many) == len(few)


# -- update, pause, resume, trigger, delete -----------------------------------------------


def test_patch_put_and_delete(api: Any) -> None:
    body = create(api)
    url = f"{URL}{body['id']}/"
    patched = api.patch(url, {"overlap": "allow_all", "jitter_seconds": 30}, format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["overlap"] == "allow_all"
    assert patched.json()["input"]["report"] == "sales"  # kept
    replaced = api.put(
        url,
        {"name": "sales report", "workflow": "t_scheduled", "interval_seconds": 3600},
        format="json",
    )
    assert replaced.status_code == 200, replaced.content
    assert replaced.json()["cron"] == "" and replaced.json()["interval_seconds"] == 3600
    assert replaced.json()["description"] == "every hour, up to 30 s later (jitter)"
    assert api.delete(url).status_code == 204
    assert not Schedule.objects.exists()
    error(api.delete(url), 404)


def test_pause_resume_and_trigger(api: Any, rung: list) -> None:
    body = create(api, overlap="allow_all")
    url = f"{URL}{body['id']}/"
    paused = api.post(f"{url}pause/", {"note": "quarter close"}, format="json").json()
    assert paused["paused"] is True and paused["paused_note"] == "quarter close"
    assert paused["next_fire_times"] == [] and paused["next_fire_at"] is None
    with time_machine.travel(T0, tick=False):
        fired = api.post(f"{url}trigger/", {}, format="json")
        assert fired.status_code == 201, fired.content
        assert fired.json()["outcome"] == "started"
        instance = WorkflowInstance.objects.get(pk=fired.json()["instance"])
        assert instance.scheduled_for == T0
        before = state()
        error(api.post(f"{url}trigger/", {}, format="json"), 409, "already_fired")
        assert state() == before
    resumed = api.post(f"{url}resume/").json()
    assert resumed["paused"] is False and len(resumed["next_fire_times"]) == 5
    history = api.get(f"{url}fires/").json()
    assert [(f["outcome"], f["triggered_by"]) for f in history] == [("started", "user:mia")]


def test_the_instance_resource_links_its_schedule(api: Any, staff: Any, rung: list) -> None:
    body = create(api)
    with time_machine.travel(T0, tick=False):
        fired = api.post(f"{URL}{body['id']}/trigger/", {}, format="json").json()
    instance = token_client(staff).get(f"/api/v1/instances/{fired['instance']}/").json()
    assert instance["schedule"] == body["id"]
    assert instance["scheduled_for"] == "2026-06-01T08:00:00Z"
    assert instance["business_key"] == "sales report-2026-06-01"
    assert instance["input"]["token"] != "s3cret"


# -- bad input: a clear 400 and nothing written -------------------------------------------

BAD = {
    "invalid cron": ({"cron": "99 * * * *"}, "invalid_cron", "cron"),
    "unknown workflow": ({"workflow": "nope"}, "unknown_workflow", "workflow"),
    "unknown version": ({"version": 42}, "unknown_workflow", "workflow"),
    "bad time zone": ({"time_zone": "Europe/Atlantis"}, "invalid_time_zone", "time_zone"),
    "neither cron nor interval": ({"cron": ""}, "invalid_timing", "interval_seconds"),
    "both": ({"interval_seconds": 60}, "invalid_timing", "interval_seconds"),
    "interval zero": ({"cron": "", "interval_seconds": 0}, "invalid", "interval_seconds"),
    "interval as a string": ({"cron": "", "interval_seconds": "60"}, "invalid", None),
    "negative jitter": ({"jitter_seconds": -1}, "invalid", "jitter_seconds"),
    "input against the schema": ({"input": {"report": 5}}, "invalid_input", "input"),
    "oversized input": ({"input": {"report": "x", "p": "y" * 70_000}}, None, None),
    "unknown field": ({"inputs": {}}, "invalid", "inputs"),
    "unknown placeholder": ({"business_key_template": "{secret}"}, None, None),
    "overlap": ({"overlap": "maybe"}, "invalid", "overlap"),
}


@pytest.mark.parametrize("case", BAD.keys())
def test_create_refuses_bad_input(api: Any, case: str) -> None:
    changes, code, field = BAD[case]
    before = state()
    response = api.post(URL, {**BODY, **changes}, format="json")
    assert response.status_code in (400, 413), response.content
    body = response.json()
    assert body["detail"]
    if code:
        assert body["code"] == code, body
    if field:
        assert field in body.get("fields", {}), body
    assert state() == before


def test_update_refuses_bad_input_and_keeps_the_schedule(api: Any) -> None:
    url = f"{URL}{create(api)['id']}/"
    before = state()
    error(api.patch(url, {"cron": "not cron"}, format="json"), 400, "invalid_cron")
    error(api.patch(url, {"time_zone": "Nowhere"}, format="json"), 400, "invalid_time_zone")
    error(api.put(url, {"cron": "* * * * *"}, format="json"), 400, "invalid")  # no name
    create(api, name="taken")
    before = state()
    error(api.patch(url, {"name": "taken"}, format="json"), 409, "name_taken")
    error(api.post(URL, {**BODY, "name": "taken"}, format="json"), 409, "name_taken")
    assert state() == before


def test_trigger_refuses_a_bad_fire_time(api: Any) -> None:
    url = f"{URL}{create(api)['id']}/trigger/"
    before = state()
    error(api.post(url, {"fire_time": "yesterday"}, format="json"), 400)
    error(api.post(url, {"fire_time": "1999-01-01T00:00:00Z"}, format="json"), 400)
    error(api.post(url, {"when": "now"}, format="json"), 400)
    assert state() == before


# -- permissions -------------------------------------------------------------------------


def test_permissions(django_user_model: Any, api: Any, staff: Any, user: Any) -> None:
    schedule_id = create(api)["id"]
    url = f"{URL}{schedule_id}/"
    reader = token_client(grant(django_user_model.objects.create_user("rita"), "view_schedule"))
    nobody = token_client(user)
    staff_api = token_client(staff)
    before = state()
    error(nobody.get(URL), 403, "permission_denied")
    error(nobody.get(url), 403)
    assert reader.get(URL).status_code == 200 and staff_api.get(url).status_code == 200
    for client in (reader, staff_api, nobody):
        error(client.post(URL, {**BODY, "name": "x"}, format="json"), 403)
        error(client.patch(url, {"overlap": "allow_all"}, format="json"), 403)
        error(client.post(f"{url}pause/", {}, format="json"), 403)
        error(client.post(f"{url}resume/", {}, format="json"), 403)
        error(client.post(f"{url}trigger/", {}, format="json"), 403)
        error(client.delete(url), 403)
    assert Client().get(URL).status_code in (401, 403)
    assert state() == before


# -- OpenAPI -------------------------------------------------------------------------------


def test_schedules_are_in_the_openapi_schema(tmp_path: Path) -> None:
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in [
        "/api/v1/schedules/",
        "/api/v1/schedules/{id}/",
        "/api/v1/schedules/{id}/pause/",
        "/api/v1/schedules/{id}/resume/",
        "/api/v1/schedules/{id}/trigger/",
        "/api/v1/schedules/{id}/fires/",
    ]:
        assert f"  {path}:" in text, path
    assert "PaginatedScheduleList" in text and "next_fire_times" in text


# -- the sweeper, through the API's view of it ------------------------------------------------


def test_a_fire_by_the_sweeper_shows_in_the_fires_list(api: Any, rung: list) -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        body = create(api, cron="", interval_seconds=600)
    with time_machine.travel(T0, tick=False):
        assert sweepers.sweep_schedules() == 1
    fires = api.get(f"{URL}{body['id']}/fires/").json()
    assert [(f["fire_time"], f["outcome"], f["triggered_by"]) for f in fires] == [
        ("2026-06-01T08:00:00Z", "started", "")
    ]
    opened = sealing.open_fields(WorkflowInstance.objects.get().input, where="input")
    assert opened == {"report": "sales", "token": "s3cret"}


def test_the_status_page_shows_the_fire_time(client: Any, staff: Any, rung: list) -> None:
    schedule = schedules.schedule_create(
        values={
            "name": "page",
            "workflow": "t_scheduled",
            "input": {"report": "r"},
            "cron": "0 8 * * *",
        }
    )
    with time_machine.travel(T0, tick=False):
        fired = schedules.schedule_trigger(schedule_id=schedule.pk)
    client.force_login(staff)
    page = client.get(f"/instances/{fired.instance_id}/").content.decode()
    assert "scheduled for 2026-06-01 08:00:00" in page


def test_create_paused_takes_a_json_boolean_only(api: Any) -> None:
    before = state()
    error(api.post(URL, {**BODY, "paused": "true"}, format="json"), 400, "invalid")
    assert state() == before
    body = create(api, paused=True, paused_note="not yet")
    assert body["paused"] is True and body["next_fire_times"] == []


def test_instances_can_be_listed_by_schedule(api: Any, staff: Any, rung: list) -> None:
    first, second = create(api, name="one"), create(api, name="two")
    with time_machine.travel(T0, tick=False):
        mine = api.post(f"{URL}{first['id']}/trigger/", {}, format="json").json()["instance"]
        api.post(f"{URL}{second['id']}/trigger/", {}, format="json")
    listed = token_client(staff).get(f"/api/v1/instances/?schedule={first['id']}").json()
    assert [i["id"] for i in listed["results"]] == [mine]
    bad = token_client(staff).get("/api/v1/instances/?schedule=x1")
    error(bad, 400, "invalid_filter")
