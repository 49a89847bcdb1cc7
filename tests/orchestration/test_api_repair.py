"""The repair endpoints: edit-input, edit-output, skip, reset, resolve-compensation — the
operator permission, the errors (400/403/404/409 with detail and code, nothing changed), the
answer, and the schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from orchestration import sealing
from orchestration.models import Event, WorkflowInstance
from tests.orchestration.test_api import assert_error, snapshot, start_as, token_client
from tests.orchestration.test_engine import refresh, run_ready, steps_of
from tests.orchestration.test_saga import play

pytestmark = pytest.mark.django_db

INSTANCES = "/api/v1/instances/"


@pytest.fixture
def ops_api(operator: Any) -> APIClient:
    return token_client(operator)


def failed_repair(starter: Any) -> WorkflowInstance:
    instance = start_as(starter, "t_repair", input={"amount": -1, "card": "4111-secret"})
    run_ready(instance)
    assert refresh(instance).state == "failed"
    return refresh(instance)


def post(client: APIClient, url: str, body: Any) -> Any:
    return client.post(url, data=json.dumps(body), content_type="application/json")


def test_edit_input_then_retry_through_the_api(ops_api, user) -> None:
    instance = failed_repair(user)
    response = post(
        ops_api,
        f"{INSTANCES}{instance.pk}/edit-input/",
        {"input": {"amount": 5, "card": sealing.MASK}, "reason": "typo"},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["input"]["amount"] == 5 and body["state"] == "failed"
    history = ops_api.get(f"{INSTANCES}{instance.pk}/history/").json()["results"]
    edited = [e for e in history if e["type"] == "instance_input_edited"]
    assert edited[0]["actor"] == "user:oper"
    assert edited[0]["data"] == {"reason": "typo", "changes": {"amount": {"from": -1, "to": 5}}}
    assert post(ops_api, f"{INSTANCES}{instance.pk}/retry/", None).status_code == 200
    run_ready(instance)
    assert refresh(instance).state == "succeeded"


def test_skip_and_edit_output_through_the_api(ops_api, user) -> None:
    instance = failed_repair(user)
    response = post(
        ops_api,
        f"{INSTANCES}{instance.pk}/steps/load/edit-output/",
        {"output": {"amount": 2, "token": sealing.MASK}, "reason": "reloaded"},
    )
    assert response.status_code == 200, response.content
    response = post(
        ops_api,
        f"{INSTANCES}{instance.pk}/steps/check/skip/",
        {"output": {"ok": "waived"}, "reason": "waived"},
    )
    assert response.status_code == 200, response.content
    steps = {s["name"]: s for s in response.json()["steps"]}
    assert steps["check"]["state"] == "skipped" and response.json()["state"] == "running"
    run_ready(instance)
    assert steps_of(instance)["report"].output == {"check": {"ok": "waived"}, "loaded": 2}


def test_reset_through_the_api(ops_api, user) -> None:
    instance = failed_repair(user)
    response = post(ops_api, f"{INSTANCES}{instance.pk}/reset/", {"step": "load", "reason": "x"})
    assert response.status_code == 200, response.content
    event = Event.objects.get(instance=instance, type="instance_reset")
    assert event.data["reset"] == ["load", "check"]


def test_resolve_compensation_through_the_api(ops_api, user) -> None:
    instance = start_as(user, "t_repair_saga", input={"behave": {"pay": "doom"}})
    play(instance)
    detail = ops_api.get(f"{INSTANCES}{instance.pk}/").json()
    assert detail["state"] == "failed"
    book = next(s for s in detail["steps"] if s["name"] == "book")
    assert (book["state"], book["undo_failed"]) == ("compensating", True)
    response = post(
        ops_api,
        f"{INSTANCES}{instance.pk}/steps/book/resolve-compensation/",
        {"reason": "cancelled by phone"},
    )
    assert response.status_code == 200, response.content
    play(instance)
    assert refresh(instance).state == "compensated"


BAD = [
    # (path, body, status, code)
    ("edit-input/", {"input": {"amount": "x"}, "reason": "r"}, 400, "invalid_input"),
    ("edit-input/", {"input": {"amount": 5}}, 400, "invalid"),  # no reason
    ("edit-input/", {"input": {"amount": 5}, "reason": ""}, 400, "invalid"),
    ("edit-input/", {"input": {"amount": 5}, "reason": "r", "extra": 1}, 400, "invalid"),
    ("edit-input/", {"input": {"amount": -1, "card": sealing.MASK}, "reason": "r"}, 409, None),
    ("steps/load/skip/", {"output": {}, "reason": "r"}, 409, "invalid_state"),  # succeeded
    ("steps/nope/skip/", {"output": {}, "reason": "r"}, 404, "not_found"),
    ("steps/check/edit-output/", {"output": {}, "reason": "r"}, 409, "invalid_state"),
    ("reset/", {"step": "nope", "reason": "r"}, 400, "unknown_step"),
    ("reset/", {"step": "report", "reason": "r"}, 409, "dependency_not_done"),
    ("reset/", {"reason": "r"}, 400, "invalid"),
    ("steps/check/resolve-compensation/", {"reason": "r"}, 409, "invalid_state"),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), BAD)
def test_bad_requests_are_clear_errors_and_change_nothing(
    ops_api, user, path, body, status, code
) -> None:
    instance = failed_repair(user)
    before = snapshot()
    inputs = json.dumps(refresh(instance).input, sort_keys=True)
    response = post(ops_api, f"{INSTANCES}{instance.pk}/{path}", body)
    assert_error(response, status, code)
    assert snapshot() == before
    assert json.dumps(refresh(instance).input, sort_keys=True) == inputs


def test_oversized_and_deep_json_is_refused(ops_api, user, settings) -> None:
    instance = failed_repair(user)
    before = snapshot()
    big = {"input": {"amount": 5, "card": "x" * 150_000}, "reason": "r"}
    response = post(ops_api, f"{INSTANCES}{instance.pk}/edit-input/", big)
    assert response.status_code in (400, 413)
    assert_error(response, response.status_code)
    deep: Any = {}
    for _ in range(40):
        deep = {"d": deep}
    response = post(
        ops_api, f"{INSTANCES}{instance.pk}/steps/check/skip/", {"output": deep, "reason": "r"}
    )
    assert_error(response, 400)
    assert snapshot() == before


def test_the_starter_without_the_permission_is_refused(user) -> None:
    """Unlike cancel and retry, the repairs are for operators only."""
    instance = failed_repair(user)
    before = snapshot()
    response = post(
        token_client(user), f"{INSTANCES}{instance.pk}/reset/", {"step": "load", "reason": "r"}
    )
    assert_error(response, 403, "permission_denied")
    assert snapshot() == before


def test_the_endpoints_are_in_the_schema(ops_api) -> None:
    schema = ops_api.get("/api/schema/?format=json").json()
    for path in (
        "/api/v1/instances/{id}/edit-input/",
        "/api/v1/instances/{id}/reset/",
        "/api/v1/instances/{id}/steps/{step}/edit-output/",
        "/api/v1/instances/{id}/steps/{step}/skip/",
        "/api/v1/instances/{id}/steps/{step}/resolve-compensation/",
    ):
        assert "post" in schema["paths"][path], path
