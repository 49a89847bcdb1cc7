"""End to end, with a real worker: an operator repairs through the API — corrects the input
and retries, skips a failed step, re-runs from a middle step, resolves a failed undo by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestration import engine
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import wait_for
from tests.orchestration.test_api import token_client
from tests.workflows import ledger

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

INSTANCES = "/api/v1/instances/"


def state(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.get(pk=instance.pk).state


def settled(instance: WorkflowInstance, *states: str) -> bool:
    return state(instance) in states


def steps(instance: WorkflowInstance) -> dict[str, StepRun]:
    return {s.name: s for s in StepRun.objects.filter(instance=instance)}


def runs(instance: WorkflowInstance) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in ledger().hgetall(f"ledger:{instance.pk}").items()}


def post(client: Any, url: str, body: Any) -> Any:
    response = client.post(url, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def failed_on_bad_input(**input: Any) -> WorkflowInstance:
    instance, _ = engine.instance_start(
        workflow="t_repair", input={"amount": -5, "card": "4111-secret", **input}
    )
    wait_for(lambda: settled(instance, "failed", "succeeded"), message="t_repair to fail")
    assert state(instance) == "failed"
    assert steps(instance)["check"].state == "failed"
    return instance


def test_bad_input_corrected_then_retried_succeeds(worker, operator) -> None:
    instance = failed_on_bad_input()
    api = token_client(operator)
    post(api, f"{INSTANCES}{instance.pk}/retry/", None)  # a plain retry fails again
    wait_for(lambda: settled(instance, "failed") and runs(instance).get("check:2"))
    assert state(instance) == "failed"
    post(
        api,
        f"{INSTANCES}{instance.pk}/edit-input/",
        {"input": {"amount": 50, "card": "••••••"}, "reason": "customer typed a minus"},
    )
    post(api, f"{INSTANCES}{instance.pk}/retry/", None)
    wait_for(lambda: settled(instance, "succeeded", "failed"), message="retry after the edit")
    assert state(instance) == "succeeded"
    assert steps(instance)["report"].output["check"] == {"ok": True, "amount": 50}
    edited = Event.objects.get(instance=instance, type="instance_input_edited")
    assert edited.actor == "user:oper"
    assert "4111" not in json.dumps(edited.data)


def test_skip_with_an_output_then_the_instance_finishes(worker, operator) -> None:
    instance = failed_on_bad_input()
    post(
        token_client(operator),
        f"{INSTANCES}{instance.pk}/steps/check/skip/",
        {"output": {"ok": "waived", "amount": 0}, "reason": "finance waived the check"},
    )
    wait_for(lambda: settled(instance, "succeeded", "failed"), message="the rest to run")
    assert state(instance) == "succeeded"
    assert steps(instance)["check"].state == "skipped"
    assert steps(instance)["report"].output["check"] == {"ok": "waived", "amount": 0}
    assert "check:2" not in runs(instance)  # skipped, never run again


def test_reset_from_a_middle_step_reruns_it_and_its_dependents(worker, operator) -> None:
    instance, _ = engine.instance_start(
        workflow="t_repair", input={"amount": 3, "break_report": True}
    )
    wait_for(lambda: settled(instance, "failed", "succeeded"), message="report to fail")
    assert steps(instance)["report"].state == "failed"
    ledger().set(f"fixed:{instance.pk}", 1)  # the bug fix is deployed
    post(
        token_client(operator),
        f"{INSTANCES}{instance.pk}/reset/",
        {"step": "check", "reason": "re-check after the fix"},
    )
    wait_for(lambda: settled(instance, "succeeded", "failed"), message="the reset run")
    assert state(instance) == "succeeded"
    assert runs(instance) == {"load:1": 1, "check:1": 1, "check:2": 1, "report:1": 1, "report:2": 1}
    reset = Event.objects.get(instance=instance, type="instance_reset")
    assert reset.data["reset"] == ["check", "report"] and reset.actor == "user:oper"


def test_a_failed_undo_resolved_by_hand_ends_compensated(worker, operator) -> None:
    instance, _ = engine.instance_start(workflow="t_repair_saga", input={"behave": {"pay": "doom"}})
    wait_for(
        lambda: settled(instance, "failed") and steps(instance)["book"].comp_phase == "failed",
        timeout=30,
        message="book's undo to fail for good",
    )
    assert steps(instance)["book"].shown_state == "undo_failed"
    assert steps(instance)["reserve"].state == "succeeded"  # waits for book's undo
    post(
        token_client(operator),
        f"{INSTANCES}{instance.pk}/steps/book/resolve-compensation/",
        {"reason": "cancelled the booking with the partner by phone"},
    )
    wait_for(lambda: settled(instance, "compensated", "failed"), message="the rest of the undo")
    assert state(instance) == "compensated"
    assert steps(instance)["reserve"].state == "compensated"
    order = [v.decode() for v in ledger().lrange(f"undo_order:{instance.pk}", 0, -1)]
    assert order == ["book:failed", "reserve"]
