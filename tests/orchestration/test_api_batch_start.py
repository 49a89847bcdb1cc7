"""Batch start, ``POST /api/v1/instances/batch/``: per-item results, idempotency, bad input,
one transaction, sealing, the doorbells, the OpenAPI schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestration import engine, sealing
from orchestration.errors import InvalidInput
from orchestration.journal import Doorbell
from orchestration.models import Event, StepRun, WorkflowInstance

from .test_api import row_counts, snapshot, token_client

pytestmark = pytest.mark.django_db

BATCH = "/api/v1/instances/batch/"


def post(client: Any, body: Any) -> Any:
    return client.post(BATCH, body, format="json")


def item(n: int, **extra: Any) -> dict[str, Any]:
    return {"workflow": "t_sequence", "input": {"n": n}, "idempotency_key": f"k-{n}", **extra}


def test_batch_starts_every_item_in_one_transaction_with_its_first_step_rung(
    user: Any, rung: list, django_capture_on_commit_callbacks: Any
) -> None:
    client = token_client(user)
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        CaptureQueriesContext(connection) as queries,
    ):
        response = post(client, {"items": [item(n, business_key=f"b{n}") for n in range(250)]})
    assert response.status_code == 207, response.content
    body = response.json()
    assert body["started"] == 250
    assert [r["index"] for r in body["results"]] == list(range(250))
    assert {r["status"] for r in body["results"]} == {201}
    first = body["results"][0]["instance"]
    assert first["workflow"] == "t_sequence" and first["state"] == "running"
    assert first["business_key"] == "b0"
    # Constant in the batch's size: auth, the keys' lookup, the savepoint and the INSERTs.
    assert len(queries) <= 8, [q["sql"][:80] for q in queries]
    assert row_counts() == (250, 750, 500)
    instance = WorkflowInstance.objects.get(pk=first["id"])
    assert instance.started_by == user and instance.idempotency_key == "k-0"
    history = list(Event.objects.filter(instance=instance).order_by("seq"))
    assert [(e.seq, e.type, e.step) for e in history] == [
        (1, "instance_started", None),
        (2, "step_scheduled", "a"),
    ]
    assert instance.last_seq == 2
    a = StepRun.objects.get(instance=instance, name="a")
    assert a.state == "scheduled"
    # One doorbell call and one announcement for the whole batch.
    assert len(callbacks) == 2
    assert len(rung) == 250
    assert [b for b in rung if b.step_run_id == a.pk] == [
        Doorbell(a.pk, 1, None, None, 300.0, "run_step")
    ]


def test_one_bad_item_among_good_ones_fails_alone(user: Any, rung: list) -> None:
    client = token_client(user)
    items = [
        item(0),
        {"workflow": "nope"},
        item(2, input={"customer": ""}, workflow="customer_onboarding"),
        "not an object",
        item(4, extra_field=1),
        item(5, version="2"),
        item(6),
    ]
    response = post(client, {"items": items})
    assert response.status_code == 207
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 400, 400, 400, 400, 400, 201]
    assert results[1]["error"]["code"] == "unknown_workflow" and results[1]["instance"] is None
    assert (
        results[2]["error"]["code"] == "invalid_input" and "input" in results[2]["error"]["fields"]
    )
    assert "unknown fields: extra_field" in results[4]["error"]["detail"]
    assert WorkflowInstance.objects.count() == 2


def test_repeat_answers_200_and_another_body_409_per_item(user: Any, rung: list) -> None:
    client = token_client(user)
    assert post(client, {"items": [item(0), item(1)]}).json()["started"] == 2
    before = snapshot()
    again = post(client, {"items": [item(0), item(1, input={"n": 99})]}).json()["results"]
    assert [r["status"] for r in again] == [200, 409]
    assert again[0]["instance"]["id"] == str(WorkflowInstance.objects.get(idempotency_key="k-0").pk)
    assert again[1]["error"]["code"] == "idempotency_conflict"
    assert snapshot() == before
    # The single start and the batch share the keys: one caller, one workflow, one key.
    single = client.post(
        "/api/v1/instances/",
        {"workflow": "t_sequence", "input": {"n": 0}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-0",
    )
    assert single.status_code == 200 and single.json()["id"] == again[0]["instance"]["id"]


def test_keys_are_per_caller(user: Any, staff: Any, rung: list) -> None:
    assert post(token_client(user), {"items": [item(0)]}).json()["started"] == 1
    assert post(token_client(staff), {"items": [item(0)]}).json()["started"] == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"items": {"workflow": "t_sequence"}}, "invalid"),
        ([item(0)], "invalid"),
        ({"items": []}, "invalid"),
        ({"items": [item(0)], "extra": 1}, "invalid"),
        ({"items": [{"workflow": "t_sequence"}] * 1001}, "batch_too_large"),
        ({"items": [item(0), item(1), item(0, input={"n": 2})]}, "duplicate_idempotency_key"),
    ],
    ids=["not a list", "bare list", "empty", "unknown field", "1001 items", "duplicate keys"],
)
def test_bad_batch_is_refused_whole_and_changes_nothing(
    user: Any, rung: list, body: Any, code: str
) -> None:
    client = token_client(user)
    post(client, {"items": [item(7)]})
    before = snapshot()
    response = post(client, body)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == code
    assert snapshot() == before


def test_same_key_for_two_workflows_is_not_a_duplicate(user: Any, rung: list) -> None:
    items = [item(0), {"workflow": "t_parallel", "idempotency_key": "k-0"}]
    response = post(token_client(user), {"items": items})
    assert [r["status"] for r in response.json()["results"]] == [201, 201]


def test_oversized_body_is_refused_with_413(user: Any, rung: list, settings: Any) -> None:
    settings.SIGNOFF_MAX_REQUEST_BYTES = 4096
    body = {"items": [item(n, business_key="x" * 100) for n in range(40)]}
    assert len(json.dumps(body)) > 4096
    before = snapshot()
    response = post(token_client(user), body)
    assert response.status_code == 413
    assert snapshot() == before


def test_on_behalf_item_without_permission_is_403_alone(user: Any, rung: list) -> None:
    expense = {"amount": 10, "currency": "EUR", "description": "Taxi"}
    items = [
        {"workflow": "expense_approval", "input": {**expense, "requester": "bob"}},
        {"workflow": "expense_approval", "input": expense},
    ]
    results = post(token_client(user), {"items": items}).json()["results"]
    assert [r["status"] for r in results] == [403, 201]
    assert results[0]["error"]["code"] == "on_behalf_not_allowed"
    started = WorkflowInstance.objects.get()
    assert started.input["requester"] == "alice"


def test_sensitive_input_is_sealed_as_a_single_start_seals_it(user: Any, rung: list) -> None:
    items = [{"workflow": "t_sentinel", "input": {"secret": "s3cret-value"}}]
    assert post(token_client(user), {"items": items}).json()["started"] == 1
    stored = WorkflowInstance.objects.get().input
    assert sealing.is_sealed(stored["secret"])
    assert "s3cret-value" not in json.dumps(list(Event.objects.values_list("data", flat=True)))


def test_service_refuses_a_batch_that_is_not_a_list() -> None:
    with pytest.raises(InvalidInput):
        engine.instances_start_batch(items="abc")
    assert row_counts() == (0, 0, 0)


def test_batch_start_is_in_the_openapi_schema(user: Any) -> None:
    schema = (
        token_client(user)
        .get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
        .json()
    )
    operation = schema["paths"]["/api/v1/instances/batch/"]["post"]
    assert "207" in operation["responses"] and "400" in operation["responses"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchStartRequest"
    }
    request = schema["components"]["schemas"]["BatchStartRequest"]
    assert request["required"] == ["items"] and request["additionalProperties"] is False
    item = schema["components"]["schemas"]["BatchStartItemRequest"]["properties"]
    assert {"workflow", "input", "idempotency_key"} <= set(item)


def test_batch_writes_the_rows_a_single_start_writes(user: Any, rung: list) -> None:
    """The batch's column-array INSERT (plain values sent as they are) stores what the single
    start's ORM path stores, column for column."""
    body = {"workflow": "t_parallel", "input": {"n": 1, "when": "x"}, "business_key": "bk"}
    single, _ = engine.instance_start(**body, started_by=user, actor="api:alice")
    engine.instances_start_batch(items=[body], started_by=user, actor="api:alice")
    batch = WorkflowInstance.objects.exclude(pk=single.pk).get()

    def rows(instance: WorkflowInstance) -> dict[str, Any]:
        skip = {"id", "instance", "instance_id"}
        return {
            "instance": {
                k: v
                for k, v in WorkflowInstance.objects.filter(pk=instance.pk).values().get().items()
                if k not in skip
            },
            "steps": [
                {k: v for k, v in row.items() if k not in skip}
                for row in StepRun.objects.filter(instance=instance).order_by("position").values()
            ],
            "events": [
                {k: v for k, v in row.items() if k not in skip}
                for row in Event.objects.filter(instance=instance).order_by("seq").values()
            ],
        }

    ours, theirs = rows(batch), rows(single)
    for part in (ours, theirs):
        for key in ("created_at", "updated_at", "started_at"):
            part["instance"].pop(key)
        for step in part["steps"]:
            for key in ("scheduled_at", "next_attempt_at", "rung_at"):
                step.pop(key)
        for event in part["events"]:
            event.pop("at")
    assert ours == theirs
