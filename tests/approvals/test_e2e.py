"""Expense approval end to end with a real worker: approve → pay → notify; reject → failed."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from approvals import services
from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.models import StepRun, WorkflowInstance
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def start_expense(amount: float, users) -> WorkflowInstance:  # noqa: ANN001
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": amount, "currency": "EUR", "description": "taxi", "requester": "alice"},
        started_by=users.get(username="alice"),
    )
    return instance


def request_of(instance: WorkflowInstance, step: str) -> ApprovalRequest:
    return wait_for(
        lambda: ApprovalRequest.objects.filter(instance=instance, step_name=step).first(),
        message=f"{step} request",
    )


def final_state(instance: WorkflowInstance) -> str:
    def done() -> str | None:
        state = WorkflowInstance.objects.get(pk=instance.pk).state
        return state if state not in ("pending", "running") else None

    return wait_for(done, message="instance to finish")


def test_small_expense_approved_by_a_manager_is_paid(worker, django_user_model) -> None:
    call_command("seed_demo")
    instance = start_expense(80, django_user_model.objects)
    request = request_of(instance, "manager_approval")
    assert request.assignee_groups.get().name == "managers"
    services.approval_decide(
        request_id=request.pk,
        user=django_user_model.objects.get(username="bob"),
        outcome="approve",
        comment="ok",
    )
    assert final_state(instance) == "succeeded"
    steps = {s.name: s for s in StepRun.objects.filter(instance=instance)}
    assert steps["finance_approval"].state == "skipped"
    assert steps["pay"].output["amount"] == 80
    assert steps["book"].output["payment"] == steps["pay"].output["payment_id"]


def test_large_expense_needs_finance_too(worker, django_user_model) -> None:
    call_command("seed_demo")
    users = django_user_model.objects
    instance = start_expense(5000, users)
    services.approval_decide(
        request_id=request_of(instance, "manager_approval").pk,
        user=users.get(username="bob"),
        outcome="approve",
    )
    finance = request_of(instance, "finance_approval")
    assert finance.fields[-1] == {"label": "Manager decision", "value": ["bob"]}
    services.approval_decide(
        request_id=finance.pk,
        user=users.get(username="carol"),
        outcome="approve",
        comment="budget ok",
    )
    assert final_state(instance) == "succeeded"


def test_rejected_expense_fails_the_instance(worker, django_user_model) -> None:
    call_command("seed_demo")
    users = django_user_model.objects
    instance = start_expense(80, users)
    services.approval_decide(
        request_id=request_of(instance, "manager_approval").pk,
        user=users.get(username="bob"),
        outcome="reject",
        comment="not a business trip",
    )
    assert final_state(instance) == "failed"
    instance.refresh_from_db()
    assert instance.error["message"] == "rejected by bob: not a business trip"
    assert not StepRun.objects.filter(instance=instance, name="pay", state="succeeded").exists()


def test_invalid_expense_fails_at_validation(worker, django_user_model) -> None:
    call_command("seed_demo")
    instance = start_expense(-5, django_user_model.objects)
    assert final_state(instance) == "failed"
    instance.refresh_from_db()
    assert "amount must be positive" in instance.error["message"]
