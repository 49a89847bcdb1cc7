"""The one decision policy answers the operator's repairs over an approval step: an operator
never skips, edits or resets their way through an approval of their own request or one they
decided (approvals.policy ``skip_step``, ``edit_step``, ``edit_input``, ``reset_step``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from approvals import services
from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.errors import NotAllowed
from orchestration.models import StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db


def _operator(user: Any) -> Any:
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="orchestration", codename="operate_instance")
    )
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def ops(people: dict[str, Any]) -> dict[str, Any]:
    """alice (the requester), bob (a manager who decides) and eve (no role), all operators."""
    return {name: _operator(people[name]) for name in ("alice", "bob", "eve")}


@pytest.fixture
def rejected(expense, ops) -> WorkflowInstance:
    """alice's expense, rejected by bob: manager_approval failed, the instance failed."""
    request = expense()
    services.approval_decide(
        request_id=request.pk, user=ops["bob"], outcome="reject", comment="no receipt"
    )
    instance = WorkflowInstance.objects.get(pk=request.instance_id)
    assert instance.state == "failed"
    assert StepRun.objects.get(instance=instance, name="manager_approval").state == "failed"
    return instance


def _step(instance: WorkflowInstance, name: str) -> StepRun:
    return StepRun.objects.get(instance=instance, name=name)


def _skip(instance: WorkflowInstance, user: Any) -> StepRun:
    return engine.step_skip(
        step_run_id=_step(instance, "manager_approval").pk,
        output={"decision": "approved"},
        actor=f"user:{user.username}",
        reason="by phone",
        user=user,
    )


def _reset(instance: WorkflowInstance, user: Any, step: str = "manager_approval") -> list[str]:
    return engine.instance_reset(
        instance_id=instance.pk, step=step, actor=f"user:{user.username}", reason="r", user=user
    )


def _snapshot(instance: WorkflowInstance) -> tuple:
    return (
        WorkflowInstance.objects.get(pk=instance.pk).last_seq,
        sorted(StepRun.objects.filter(instance=instance).values_list("name", "state")),
        ApprovalRequest.objects.filter(instance=instance).count(),
    )


@pytest.mark.parametrize(
    ("who", "setting", "code"),
    [
        ("alice", True, "own_request"),  # the requester and starter
        ("bob", True, "own_decision"),  # he rejected it
        ("eve", False, "approval_step"),  # off unless operators may complete approvals
    ],
)
def test_skipping_an_approval_step_asks_the_policy(rejected, ops, settings, who, setting, code):
    settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS = setting
    before = _snapshot(rejected)
    with pytest.raises(NotAllowed) as refused:
        _skip(rejected, ops[who])
    assert refused.value.code == code
    assert _snapshot(rejected) == before


def test_another_operator_may_skip_it_when_the_setting_allows(rejected, ops, settings) -> None:
    settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS = True
    step = _skip(rejected, ops["eve"])
    assert step.state == "skipped"
    assert WorkflowInstance.objects.get(pk=rejected.pk).state == "running"


@pytest.mark.parametrize(("who", "code"), [("alice", "own_request"), ("bob", "own_decision")])
def test_resetting_over_a_decided_approval_asks_the_policy(rejected, ops, who, code) -> None:
    before = _snapshot(rejected)
    for step in ("manager_approval", "validate"):  # over it, from it or from before it
        with pytest.raises(NotAllowed) as refused:
            _reset(rejected, ops[who], step)
        assert refused.value.code == code
    assert _snapshot(rejected) == before


def test_the_system_may_reset_but_never_skips_an_approval(rejected, settings) -> None:
    settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS = True
    step = _step(rejected, "manager_approval")
    with pytest.raises(NotAllowed):
        engine.step_skip(step_run_id=step.pk, output={}, actor="system", reason="r", user=None)
    engine.instance_reset(
        instance_id=rejected.pk, step="manager_approval", actor="system", reason="r", user=None
    )
    assert _step(rejected, "manager_approval").state == "waiting"


def test_another_operator_resets_and_the_assignees_are_asked_again(rejected, ops) -> None:
    assert _reset(rejected, ops["eve"]) == ["manager_approval"]
    assert _step(rejected, "manager_approval").state == "waiting"
    rounds = ApprovalRequest.objects.filter(instance=rejected).order_by("round")
    assert [(r.round, r.state) for r in rounds] == [(1, "rejected"), (2, "pending")]


@pytest.mark.parametrize(("who", "code"), [("alice", "own_request"), ("bob", "own_decision")])
def test_editing_the_input_after_the_approval_started_asks_the_policy(
    rejected, ops, who, code
) -> None:
    before = _snapshot(rejected)
    with pytest.raises(NotAllowed) as refused:
        engine.instance_edit_input(
            instance_id=rejected.pk,
            input={**rejected.input, "amount": 99},
            actor="user:x",
            reason="r",
            user=ops[who],
        )
    assert refused.value.code == code
    assert _snapshot(rejected) == before
    engine.instance_edit_input(
        instance_id=rejected.pk,
        input={**rejected.input, "amount": 99},
        actor="user:eve",
        reason="r",
        user=ops["eve"],
    )


def test_editing_an_approval_steps_output_is_an_outcome_like_completing_it(
    expense, ops, settings
) -> None:
    request = expense()
    services.approval_decide(request_id=request.pk, user=ops["bob"], outcome="approve")
    instance = WorkflowInstance.objects.get(pk=request.instance_id)
    engine.instance_pause(instance_id=instance.pk, actor="user:eve")
    step = _step(instance, "manager_approval")
    assert step.state == "succeeded"

    def edit(user: Any) -> Any:
        return engine.step_edit_output(
            step_run_id=step.pk,
            output={"decision": "rejected"},
            actor="user:x",
            reason="r",
            user=user,
        )

    with pytest.raises(NotAllowed) as refused:
        edit(ops["eve"])
    assert refused.value.code == "approval_step"
    settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS = True
    for who, code in (("alice", "own_request"), ("bob", "own_decision")):
        with pytest.raises(NotAllowed) as refused:
            edit(ops[who])
        assert refused.value.code == code
    assert edit(ops["eve"])
