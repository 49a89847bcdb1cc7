"""Send back for changes end to end, over the REST API, with a real worker: an expense sent
back, revised (the amount changed; the history shows the diff), approved in round 2, and the
flow goes on and pays the revised amount; withdrawn instead, and the worker undoes what ran."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from orchestration.models import StepRun, WorkflowInstance
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def post(client: APIClient, path: str, body: Any) -> Any:
    return client.generic("POST", path, json.dumps(body), content_type="application/json")


def start(alice: APIClient) -> tuple[str, int]:
    response = post(
        alice,
        "/api/v1/instances/",
        {
            "workflow": "t_revisable",
            "input": {"amount": 120, "description": "Taxi to the airport", "category": "travel"},
        },
    )
    assert response.status_code == 201, response.content
    instance_id = response.json()["id"]
    request = wait_for(
        lambda: ApprovalRequest.objects.filter(instance_id=instance_id).first(),
        message="the manager's request",
    )
    return instance_id, request.pk


def finished(instance_id: str) -> str:
    def done() -> str | None:
        state = WorkflowInstance.objects.get(pk=instance_id).state
        return state if state not in ("pending", "running", "compensating") else None

    return wait_for(done, message="the instance to finish")


def test_an_expense_sent_back_revised_and_approved_in_round_2_is_paid(worker, people) -> None:
    alice, bob = client_for(people["alice"]), client_for(people["bob"])
    instance_id, first = start(alice)

    sent = post(bob, f"/api/v1/approvals/{first}/request-changes/", {"comment": "Receipt?"})
    assert sent.status_code == 200, sent.content
    assert sent.json()["state"] == "changes_requested"
    waiting = alice.get("/api/v1/approvals/", {"state": "revise"}).json()["results"]
    assert [item["id"] for item in waiting] == [first]

    resubmitted = post(
        alice,
        f"/api/v1/approvals/{first}/resubmit/",
        {"input": {"amount": 95, "receipt": "R-2026-17"}},
    )
    assert resubmitted.status_code == 201, resubmitted.content
    second = resubmitted.json()
    assert second["round"] == 2 and second["title"] == "Expense 95 for Taxi to the airport"
    assert second["rounds"][0]["comment"] == "Receipt?"

    history = alice.get(f"/api/v1/instances/{instance_id}/history/").json()
    items = history["results"] if isinstance(history, dict) else history
    types = [e["type"] for e in items]
    assert types[types.index("approval_changes_requested") :] == [
        "approval_changes_requested",
        "instance_input_revised",
        "approval_resubmitted",
        "approval_requested",
    ]
    revised = next(e for e in items if e["type"] == "instance_input_revised")
    assert revised["data"]["changes"] == {
        "amount": {"from": 120, "to": 95},
        "receipt": {"from": None, "to": "R-2026-17", "added": True},
    }

    approved = post(bob, f"/api/v1/approvals/{second['id']}/approve/", {"comment": "thanks"})
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert finished(instance_id) == "succeeded"
    steps = {s.name: s for s in StepRun.objects.filter(instance_id=instance_id)}
    assert steps["pay"].output == {"paid": 95, "for": "Taxi to the airport"}
    output = steps["manager_approval"].output
    assert output["round"] == 2 and output["decided_by"] == ["bob"]
    assert output["rounds"][0]["changes_requested_by"] == "bob"
    assert output["rounds"][0]["answered_by"] == "alice"
    instance = alice.get(f"/api/v1/instances/{instance_id}/").json()
    assert instance["input"]["amount"] == 95


def test_a_withdrawn_expense_is_cancelled_and_its_reservation_released(worker, people) -> None:
    alice, bob = client_for(people["alice"]), client_for(people["bob"])
    instance_id, first = start(alice)
    post(bob, f"/api/v1/approvals/{first}/request-changes/", {"comment": "Too expensive."})
    withdrawn = post(alice, f"/api/v1/approvals/{first}/withdraw/", {"reason": "fair enough"})
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"
    assert finished(instance_id) == "compensated"
    reserve = StepRun.objects.get(instance_id=instance_id, name="reserve")
    assert reserve.state == "compensated"
