"""The approval side of the workflow test kit (approvals.testing): deciding as a given person
through the real decision policy, pending requests, and approval timers passed by skipping
time; with its refusals, each changing nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from approvals.models import ApprovalRequest, Decision
from approvals.testing import DecisionRefused, decide, pending_requests, request_of
from integrations.models import OutboundEmail
from orchestration.errors import InvalidInput
from orchestration.testing import KitError
from tests.approvals.conftest import expense_input

DAY = timedelta(days=1)


@pytest.fixture
def admin(django_user_model: Any) -> Any:
    """The demo's escalation target."""
    return django_user_model.objects.create_user("admin", email="admin@example.com")


def start_expense(kit, people, amount: float = 120):  # noqa: ANN001, ANN201
    return kit.start("expense_approval", expense_input(amount), user=people["alice"])


def test_a_manager_approves_and_the_expense_is_paid(signoff_kit, people) -> None:
    handle = start_expense(signoff_kit, people).run_until_idle()
    assert [r.step_name for r in pending_requests(handle)] == ["manager_approval"]
    assert pending_requests(user=people["bob"]) == pending_requests(handle, "manager_approval")
    assert pending_requests(user=people["carol"]) == []  # finance is not asked under 1,000
    decision = decide(handle, "manager_approval", as_user=people["bob"], comment="fine")
    assert (decision.outcome, decision.decided_by) == ("approve", people["bob"])
    assert handle.state == "succeeded"
    assert handle.step("finance_approval").state == "skipped"
    assert handle.output["book"]["amount"] == 120
    handle.assert_history(
        "approval_requested:manager_approval",
        "approval_decided:manager_approval",
        "step_succeeded:manager_approval",
        "step_succeeded:pay",
        "instance_succeeded",
    )


def test_two_approvals_by_username_with_the_fixture(signoff_kit, signoff_approvals, people) -> None:
    handle = start_expense(signoff_kit, people, amount=5000).run_until_idle()
    signoff_approvals.decide(handle.instance, "manager_approval", as_user="dave")
    assert [r.step_name for r in signoff_approvals.pending_requests(user="carol")] == [
        "finance_approval"
    ]
    signoff_approvals.decide(handle, "finance_approval", as_user="carol")
    assert handle.state == "succeeded"


def test_a_rejection_fails_the_expense(signoff_kit, people) -> None:
    handle = start_expense(signoff_kit, people).run_until_idle()
    decide(handle, "manager_approval", as_user="bob", outcome="reject", comment="no receipt")
    assert handle.state == "failed"
    assert handle.step("pay").state in ("pending", "cancelled")
    handle.assert_history("approval_decided:manager_approval", "instance_failed")


def test_a_three_day_approval_expiry_passes_by_skipping_time(signoff_kit, people, admin) -> None:
    """expense_approval's manager step: reminders daily, the admin after two days, rejected
    (so the expense fails) after three: hour by hour, as beat would sweep."""
    handle = start_expense(signoff_kit, people).run_until_idle()
    signoff_kit.skip(2 * DAY + timedelta(hours=1), every=timedelta(hours=1))
    assert handle.state == "running"
    request = request_of(handle, "manager_approval")
    assert request.reminders_sent == 2 and request.level == 1
    assert [r.pk for r in pending_requests(user=admin)] == [request.pk]
    signoff_kit.skip(DAY, every=timedelta(hours=1))
    assert handle.state == "failed"
    assert ApprovalRequest.objects.get(pk=request.pk).state == "expired"
    handle.assert_history(
        "approval_reminded",
        "approval_reminded",
        "approval_escalated",
        "approval_expired:manager_approval",
        "step_failed:manager_approval",
        "instance_failed",
    )
    kinds = set(OutboundEmail.objects.values_list("kind", flat=True))
    assert {"approval_reminder", "approval_escalated", "approval_expired"} <= kinds


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "requester", "code"),
    [
        ("eve", "alice", "not_found"),  # no part in it: the request is not even visible
        ("alice", "alice", "not_assignee"),  # she sees her own request, but is no manager
        ("bob", "bob", "self_approval"),  # a manager's own expense
    ],
)
def test_people_who_may_not_decide_are_refused(signoff_kit, people, who, requester, code) -> None:
    handle = signoff_kit.start(
        "expense_approval", {**expense_input(), "requester": requester}, user=people[requester]
    ).run_until_idle()
    with pytest.raises(DecisionRefused) as refused:
        decide(handle, "manager_approval", as_user=who)
    assert refused.value.code == code
    assert f"{who} may not approve 'manager_approval'" in str(refused.value)
    assert Decision.objects.count() == 0 and handle.step("manager_approval").state == "waiting"


def test_deciding_twice_is_refused(signoff_kit, people) -> None:
    handle = start_expense(signoff_kit, people, amount=5000).run_until_idle()
    decide(handle, "manager_approval", as_user="bob")
    with pytest.raises(KitError, match=r"'manager_approval' has no pending request \(step "):
        decide(handle, "manager_approval", as_user="dave")
    assert Decision.objects.count() == 1


def test_bad_decisions_are_refused(signoff_kit, people) -> None:
    handle = start_expense(signoff_kit, people, amount=5000)
    with pytest.raises(KitError, match="requests: none opened yet"):
        decide(handle, "manager_approval", as_user="bob")  # not reached: nothing ran
    handle.run_until_idle()
    with pytest.raises(KitError, match="'validate' is a task step of expense_approval v1"):
        decide(handle, "validate", as_user="bob")
    with pytest.raises(KitError, match="'nope' is no step"):
        pending_requests(handle, "nope")
    with pytest.raises(KitError, match="no user 'zed'"):
        decide(handle, "manager_approval", as_user="zed")
    with pytest.raises(InvalidInput):
        decide(handle, "manager_approval", as_user="bob", outcome="maybe")
    with pytest.raises(InvalidInput):  # a rejection needs its reason
        decide(handle, "manager_approval", as_user="bob", outcome="reject")
    assert Decision.objects.count() == 0 and handle.state == "running"
