"""Fixtures of the inbox tests: demo people, expenses waiting for a manager, and Debian's
Chromium for the browser tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group

from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.models import StepRun

PASSWORD = "signoff-demo"


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    """alice asks; bob and dave are managers; carol is finance; eve has no role."""
    managers, _ = Group.objects.get_or_create(name="managers")
    finance, _ = Group.objects.get_or_create(name="finance")
    users = {
        name: django_user_model.objects.create_user(
            name, email=f"{name}@example.com", password=PASSWORD
        )
        for name in ("alice", "bob", "carol", "dave", "eve")
    }
    managers.user_set.add(users["bob"], users["dave"])
    finance.user_set.add(users["carol"])
    return users


def expense_input(amount: float = 120, description: str = "Taxi to the airport") -> dict[str, Any]:
    return {"amount": amount, "currency": "EUR", "description": description, "requester": "alice"}


@pytest.fixture
def expense(people: dict[str, Any]) -> Callable[..., ApprovalRequest]:
    """Start an ``expense_approval`` and run its ``validate`` step in-process; returns the
    manager's request."""

    def make(
        amount: float = 120, description: str = "Taxi to the airport", business_key: str = ""
    ) -> ApprovalRequest:
        instance, _ = engine.instance_start(
            workflow="expense_approval",
            input=expense_input(amount, description),
            business_key=business_key,
            started_by=people["alice"],
        )
        validate = StepRun.objects.get(instance=instance, name="validate")
        assert engine.step_execute(step_run_id=validate.pk, attempt=1) == "succeeded"
        return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")

    return make
