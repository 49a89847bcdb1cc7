"""Child workflows (the ``child`` step kind): registration checks, starting and linking a
child, one child per attempt, outcomes and retries, cancellation cascading, the sweeper's
backstop, bad input, sealed fields. Services called directly; the worker is played by hand
(end-to-end tests with a real worker: test_children_e2e.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.checks import run_checks
from django.db import transaction
from django.utils import timezone

from orchestration import children, engine, sealing, sweepers
from orchestration.children import ChildStep, child_step, child_step_sync
from orchestration.definitions import DefinitionError, RetryPolicy, Workflow, registry
from orchestration.models import Event, StepRun, WorkflowInstance
from orchestration.waits import signal_send
from tests.orchestration.test_engine import event_types, refresh, run_ready, steps_of
from tests.orchestration.test_saga import run_compensations
from tests.workflows import ledger

pytestmark = pytest.mark.django_db


def children_of(instance: WorkflowInstance) -> list[WorkflowInstance]:
    return list(
        WorkflowInstance.objects.filter(parent_step__instance=instance).order_by("parent_attempt")
    )


def tree(root: WorkflowInstance) -> list[WorkflowInstance]:
    found, todo = [], [root]
    while todo:
        instance = todo.pop()
        found.append(instance)
        todo.extend(children_of(instance))
    return found


def play(root: WorkflowInstance, rounds: int = 15) -> None:
    """Play the worker and the child_sync doorbells for a parent and its descendants."""
    for _ in range(rounds):
        for instance in tree(root):
            run_ready(instance)
            run_compensations(instance)
        for step in StepRun.objects.filter(kind="child", state="waiting"):
            if step.next_attempt_at and step.next_attempt_at > timezone.now():
                # the retry's backoff is over (the clock, played)
                StepRun.objects.filter(pk=step.pk).update(next_attempt_at=timezone.now())
            child_step_sync(step_run_id=step.pk, attempt=step.attempt)


def snapshot() -> tuple:
    return (
        WorkflowInstance.objects.count(),
        Event.objects.count(),
        sorted(StepRun.objects.values_list("state", flat=True)),
    )


@pytest.fixture
def scratch():
    """Workflows registered for one test, then removed."""
    added: list[Workflow] = []

    def register(wf: Workflow) -> Workflow:
        registry.register(wf)
        added.append(wf)
        return wf

    yield register
    for wf in added:
        registry.unregister(wf.name, wf.version)


# -- registration ----------------------------------------------------------------------------------


def test_unknown_child_workflow_is_refused_at_registration() -> None:
    wf = Workflow("t_child_unknown")
    child_step(wf, "sub", workflow="no_such_workflow")
    with pytest.raises(DefinitionError, match="unknown child workflow no_such_workflow"):
        registry.register(wf)
    assert registry.get("t_child_unknown") is None


def test_unknown_child_version_is_refused_at_registration() -> None:
    wf = Workflow("t_child_unknown_version")
    child_step(wf, "sub", workflow="child_kyc", version=99)
    with pytest.raises(DefinitionError, match="unknown child workflow child_kyc v99"):
        registry.register(wf)


def test_a_workflow_starting_itself_is_refused() -> None:
    wf = Workflow("t_child_self")
    child_step(wf, "again", workflow="t_child_self")
    with pytest.raises(DefinitionError, match="cannot start itself"):
        registry.register(wf)


def test_a_cycle_through_children_is_refused(scratch) -> None:
    first = Workflow("t_child_cycle_a")
    first.task(lambda ctx: {}, name="work")
    scratch(first)
    middle = Workflow("t_child_cycle_b")
    child_step(middle, "sub", workflow="t_child_cycle_a")
    scratch(middle)
    again = Workflow("t_child_cycle_a", version=2)
    child_step(again, "sub", workflow="t_child_cycle_b")
    with pytest.raises(DefinitionError, match="cycle: t_child_cycle_a → t_child_cycle_b"):
        registry.register(again)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"version": 0}, "version must be an integer"),
        ({"input": {"not": "callable"}}, "input must be callable"),
        ({"business_key": "fixed"}, "business_key must be callable"),
        ({"retry": RetryPolicy(max_attempts=0)}, "max_attempts"),
        ({"timeout": timedelta(0)}, "timeout must be a positive timedelta"),
    ],
)
def test_bad_child_step_options_are_refused(options: dict[str, Any], message: str) -> None:
    wf = Workflow("t_child_bad_options")
    child_step(wf, "sub", workflow="child_kyc", **options)
    with pytest.raises(DefinitionError, match=message):
        registry.register(wf)


def test_a_child_that_takes_files_is_refused(scratch) -> None:
    files = Workflow("t_child_files", attachments="files")
    files.task(lambda ctx: {}, name="work")
    scratch(files)
    wf = Workflow("t_child_files_parent")
    child_step(wf, "sub", workflow="t_child_files")
    with pytest.raises(DefinitionError, match="takes files"):
        registry.register(wf)


def test_system_check_names_a_child_workflow_unregistered_later(scratch) -> None:
    target = Workflow("t_child_gone")
    target.task(lambda ctx: {}, name="work")
    scratch(target)
    parent = Workflow("t_child_gone_parent")
    child_step(parent, "sub", workflow="t_child_gone")
    scratch(parent)
    assert not [e for e in run_checks() if e.id == "signoff.E010"]
    registry.unregister("t_child_gone", 1)
    errors = [e for e in run_checks() if e.id == "signoff.E010"]
    assert len(errors) == 1 and "t_child_gone" in errors[0].msg


def test_describe_lists_the_child_workflow() -> None:
    described = registry.get("child_parent").describe()["steps"]
    verify = next(s for s in described if s["name"] == "verify")
    assert verify["kind"] == "child" and verify["workflow"] == "child_kyc"
    assert verify["retry"]["max_attempts"] == 2


# -- starting and linking --------------------------------------------------------------------------


def test_ready_child_step_starts_a_linked_child_in_the_same_transaction() -> None:
    parent, _ = engine.instance_start(workflow="child_parent", input={"customer": "acme"})
    run_ready(parent)  # prepare
    step = steps_of(parent)["verify"]
    assert step.state == "waiting" and step.attempt == 1
    (child,) = children_of(parent)
    assert child.parent_step_id == step.pk and child.parent_attempt == 1
    assert child.workflow == "child_kyc" and child.state == "running"
    assert child.input == {"customer": "ACME", "fail": False}
    started = Event.objects.get(instance=parent, type="child_started")
    assert started.data == {"child": str(child.pk), "workflow": "child_kyc", "version": 1}
    assert "instance_started" in event_types(child)


def test_a_first_step_child_is_linked_to_its_new_step() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait", business_key="order-7")
    (child,) = children_of(parent)
    assert child.parent_step_id == steps_of(parent)["hold"].pk
    assert child.business_key == "order-7"  # inherited


def test_the_step_may_give_the_child_its_own_business_key(scratch) -> None:
    wf = Workflow("t_child_own_key")
    child_step(
        wf,
        "sub",
        workflow="child_wait",
        input=lambda ctx: {"customer": "c"},
        business_key=lambda ctx: f"child-of-{ctx.business_key}",
    )
    scratch(wf)
    parent, _ = engine.instance_start(workflow="t_child_own_key", business_key="order-8")
    assert children_of(parent)[0].business_key == "child-of-order-8"


def test_the_child_is_started_by_the_parents_starter(user) -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait", started_by=user)
    assert children_of(parent)[0].started_by_id == user.pk


def test_a_repeated_sync_never_starts_a_second_child() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    step = steps_of(parent)["hold"]
    for _ in range(3):
        assert child_step_sync(step_run_id=step.pk, attempt=step.attempt) == "running"
    assert len(children_of(parent)) == 1


def test_one_child_per_step_attempt_is_enforced_by_the_database() -> None:
    from django.db import IntegrityError

    parent, _ = engine.instance_start(workflow="child_parent_wait")
    (child,) = children_of(parent)
    twin = WorkflowInstance(
        workflow="child_wait",
        version=1,
        parent_step_id=child.parent_step_id,
        parent_attempt=child.parent_attempt,
        created_at=timezone.now(),
        updated_at=timezone.now(),
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        twin.save()


# -- bad input -------------------------------------------------------------------------------------


def test_invalid_child_input_fails_the_step_and_writes_no_child(scratch) -> None:
    wf = Workflow("t_child_bad_input")
    child_step(wf, "sub", workflow="child_kyc", input=lambda ctx: {"customer": ""})
    scratch(wf)
    before = WorkflowInstance.objects.count()
    parent, _ = engine.instance_start(workflow="t_child_bad_input")
    assert WorkflowInstance.objects.count() == before + 1  # the parent only
    step = steps_of(parent)["sub"]
    assert step.state == "failed"
    assert step.error["type"] == "signoff.ChildInputInvalid"
    assert "child_kyc v1" in step.error["message"] and "customer" in step.error["message"]
    assert refresh(parent).state == "failed"
    assert "child_started" not in event_types(parent)


def test_a_raising_input_mapping_fails_the_step_clearly(scratch) -> None:
    wf = Workflow("t_child_raising_input")
    child_step(wf, "sub", workflow="child_kyc", input=lambda ctx: {"customer": ctx.input["x"]})
    scratch(wf)
    parent, _ = engine.instance_start(workflow="t_child_raising_input")
    step = steps_of(parent)["sub"]
    assert step.state == "failed" and step.error["type"] == "signoff.ChildInputFailed"
    assert "KeyError" in step.error["message"]
    assert children_of(parent) == []


def test_a_child_unregistered_at_run_time_fails_the_step(scratch) -> None:
    target = Workflow("t_child_vanishing")
    target.task(lambda ctx: {}, name="work")
    scratch(target)
    wf = Workflow("t_child_vanishing_parent")
    child_step(wf, "sub", workflow="t_child_vanishing")
    scratch(wf)
    registry.unregister("t_child_vanishing", 1)
    parent, _ = engine.instance_start(workflow="t_child_vanishing_parent")
    step = steps_of(parent)["sub"]
    assert step.state == "failed" and step.error["type"] == "signoff.ChildWorkflowUnknown"
    assert children_of(parent) == []


def test_a_failing_child_step_stops_its_siblings_from_starting(scratch) -> None:
    wf = Workflow("t_child_bad_sibling")
    child_step(wf, "sub", workflow="child_kyc", input=lambda ctx: {})
    wf.task(lambda ctx: {}, name="side")
    scratch(wf)
    parent, _ = engine.instance_start(workflow="t_child_bad_sibling")
    assert refresh(parent).state == "failed"
    assert steps_of(parent)["side"].state in ("pending", "cancelled")


# -- outcomes --------------------------------------------------------------------------------------


def test_the_step_succeeds_with_the_childs_output() -> None:
    parent, _ = engine.instance_start(workflow="child_parent", input={"customer": "acme"})
    play(parent)
    assert refresh(parent).state == "succeeded"
    (child,) = children_of(parent)
    assert child.state == "succeeded"
    verify = steps_of(parent)["verify"]
    assert verify.output == child.output
    assert verify.output["check"]["verified"] == "ACME"
    assert steps_of(parent)["finish"].output == {"from_child": "ACME"}
    succeeded = Event.objects.get(instance=parent, type="step_succeeded", step="verify")
    assert succeeded.data == {"child": str(child.pk)}


def test_a_failed_child_is_retried_with_a_new_child() -> None:
    parent, _ = engine.instance_start(
        workflow="child_parent", input={"customer": "acme", "fail_first": True}
    )
    play(parent)
    assert refresh(parent).state == "succeeded"
    first, second = children_of(parent)
    # the child's saga undid its reserve step when it failed
    assert (first.parent_attempt, first.state) == (1, "compensated")
    assert (second.parent_attempt, second.state) == (2, "succeeded")
    retrying = Event.objects.get(instance=parent, type="step_retrying")
    assert retrying.attempt == 1 and retrying.data["next_attempt"] == 2
    assert retrying.data["error"]["type"] == "signoff.ChildWorkflowFailed"
    assert str(first.pk) in retrying.data["error"]["message"]
    assert "ended compensated: customer ACME refused" in retrying.data["error"]["message"]
    assert steps_of(parent)["verify"].attempt == 2


def test_a_child_failing_every_attempt_fails_the_step_and_the_parent() -> None:
    parent, _ = engine.instance_start(
        workflow="child_parent", input={"customer": "acme", "fail_always": True}
    )
    play(parent)
    assert refresh(parent).state == "failed"
    assert [c.state for c in children_of(parent)] == ["compensated", "compensated"]
    verify = steps_of(parent)["verify"]
    assert verify.state == "failed" and verify.error["type"] == "signoff.ChildWorkflowFailed"
    failed = Event.objects.get(instance=parent, type="step_failed", step="verify")
    assert failed.data["reason"] == "attempts_exhausted"


def test_a_cancelled_child_fails_the_step() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    (child,) = children_of(parent)
    engine.instance_cancel(instance_id=child.pk, reason="by hand")
    play(parent)
    step = steps_of(parent)["hold"]
    assert step.state == "failed"
    assert f"child child_wait {child.pk} ended" in step.error["message"]
    assert refresh(parent).state == "failed"


def test_child_ending_rings_the_parents_doorbell_after_commit(
    rung, django_capture_on_commit_callbacks
) -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    (child,) = children_of(parent)
    rung.clear()
    with django_capture_on_commit_callbacks(execute=True):
        engine.instance_cancel(instance_id=child.pk)
    bells = [b for b in rung if b.task == "child_sync"]
    assert [(b.step_run_id, b.attempt) for b in bells] == [(child.parent_step_id, 1)]


def test_a_stale_doorbell_does_nothing() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    step = steps_of(parent)["hold"]
    before = snapshot()
    assert child_step_sync(step_run_id=step.pk, attempt=7) == "stale"
    assert child_step_sync(step_run_id=999_999, attempt=1) == "not_waiting"
    assert snapshot() == before


# -- cancellation ----------------------------------------------------------------------------------


def test_cancelling_the_parent_cancels_the_child_and_unwinds_its_saga() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    (child,) = children_of(parent)
    run_ready(child)  # reserve succeeded; go waits
    assert steps_of(child)["go"].state == "waiting"
    engine.instance_cancel(instance_id=parent.pk, reason="customer withdrew")
    assert refresh(parent).state == "cancelled"
    child = refresh(child)
    assert child.state == "compensating"
    run_compensations(child)
    assert refresh(child).state == "compensated"
    assert ledger().hget(f"ledger:{child.pk}", "released") == b"1"
    cancelled = Event.objects.get(instance=parent, type="child_cancelled")
    assert cancelled.data["child"] == str(child.pk)


def test_a_parent_failing_elsewhere_cancels_its_child(scratch) -> None:
    wf = Workflow("t_child_sibling_fails")
    child_step(wf, "sub", workflow="child_wait", input=lambda ctx: {"customer": "x"})

    def boom(ctx):  # noqa: ANN001, ANN202
        from orchestration.definitions import NonRetryableError

        raise NonRetryableError("no")

    wf.task(boom, name="side")
    scratch(wf)
    parent, _ = engine.instance_start(workflow="t_child_sibling_fails")
    (child,) = children_of(parent)
    run_ready(parent)
    assert refresh(parent).state == "failed"
    assert refresh(child).state == "cancelled"  # nothing of it had succeeded yet


def test_completing_the_child_step_by_hand_cancels_the_running_child() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    (child,) = children_of(parent)
    step = steps_of(parent)["hold"]
    engine.step_complete_manually(
        step_run_id=step.pk, output={"by": "hand"}, actor="oper", reason="done offline"
    )
    assert refresh(child).state == "cancelled"
    assert steps_of(parent)["hold"].output == {"by": "hand"}
    run_ready(parent)
    assert refresh(parent).state == "succeeded"


def test_operator_retry_of_the_failed_parent_starts_a_new_child() -> None:
    parent, _ = engine.instance_start(
        workflow="child_parent", input={"customer": "acme", "fail_always": True}
    )
    play(parent)
    assert refresh(parent).state == "failed"
    engine.instance_retry(instance_id=parent.pk, actor="oper")
    kids = children_of(parent)
    assert len(kids) == 3 and kids[-1].parent_attempt == 3 and kids[-1].state == "running"


# -- timeouts and the sweeper ----------------------------------------------------------------------


def test_step_timeout_cancels_the_child_and_fails_the_step() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_timeout")
    (child,) = children_of(parent)
    with time_machine.travel(timezone.now() + timedelta(minutes=2)):
        sweepers.sweep_waiting_deadlines()
    assert refresh(child).state in ("cancelled", "compensating")
    step = steps_of(parent)["hold"]
    assert step.state == "failed" and "timeout" in step.error["message"]
    assert "step_timed_out" in event_types(parent)


def test_sweeper_applies_the_outcome_when_the_doorbell_was_lost() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    (child,) = children_of(parent)
    run_ready(child)
    signal_send(instance_id=child.pk, name="go", payload={"ok": 1})  # doorbell not delivered
    assert refresh(child).state == "succeeded"
    assert steps_of(parent)["hold"].state == "waiting"
    assert sweepers.sweep_waiting_deadlines() == 0  # within the grace: the doorbell may come
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        assert sweepers.sweep_waiting_deadlines() == 1
        assert sweepers.sweep_waiting_deadlines() == 0
    hold = steps_of(parent)["hold"]
    assert hold.state == "succeeded" and hold.output["go"] == {"ok": 1}


def test_sweeper_starts_the_next_child_when_the_retry_doorbell_was_lost() -> None:
    parent, _ = engine.instance_start(
        workflow="child_parent", input={"customer": "acme", "fail_first": True}
    )
    for _ in range(5):
        for instance in tree(parent):
            run_ready(instance)
            run_compensations(instance)
    first = children_of(parent)[0]
    assert first.state == "compensated"
    child_step_sync(step_run_id=first.parent_step_id, attempt=1)
    assert len(children_of(parent)) == 1  # backing off
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        assert sweepers.sweep_waiting_deadlines() >= 1
    assert [c.parent_attempt for c in children_of(parent)] == [1, 2]


# -- sealed fields ---------------------------------------------------------------------------------


def test_a_sealed_parent_value_stays_sealed_in_a_child_field_not_declared_sealed() -> None:
    parent, _ = engine.instance_start(workflow="child_parent_sealed", input={"ssn": "123-45-6789"})
    (child,) = children_of(parent)
    assert sealing.is_sealed(child.input["tax_id"])
    assert child.input["note"] == "plain"
    assert "123-45-6789" not in str(child.input)
    play(parent)
    assert refresh(child).state == "succeeded"
    use = steps_of(child)["use"].output
    assert (use["seen"], use["len"]) == ("6789", 11)
    assert sealing.is_sealed(use["echo"])  # the child echoed it: still sealed
    assert refresh(parent).state == "succeeded"
    hand_over = steps_of(parent)["hand_over"].output
    assert sealing.is_sealed(hand_over["use"])  # the child's output, holding it, in the parent
    assert sealing.open_value(hand_over["use"])["echo"] == {"tax_id": "123-45-6789"}
    stored = [
        *Event.objects.filter(instance__in=[parent, child]).values_list("data", flat=True),
        *StepRun.objects.filter(instance__in=[parent, child]).values_list("output", flat=True),
        *WorkflowInstance.objects.filter(pk__in=[parent.pk, child.pk]).values_list(
            "input", "output"
        ),
    ]
    assert "123-45-6789" not in str(stored)


def test_a_business_key_carrying_a_sealed_value_is_refused(scratch) -> None:
    wf = Workflow("t_child_sealed_key", sensitive=["input.ssn"])
    child_step(
        wf,
        "sub",
        workflow="child_kyc",
        input=lambda ctx: {"customer": "c"},
        business_key=lambda ctx: ctx.input["ssn"],
    )
    scratch(wf)
    parent, _ = engine.instance_start(workflow="t_child_sealed_key", input={"ssn": "999-88-7777"})
    step = steps_of(parent)["sub"]
    assert step.state == "failed" and "sealed value" in step.error["message"]
    assert children_of(parent) == []


def test_child_output_holding_a_sealed_child_value_is_sealed_in_the_parent() -> None:
    child = WorkflowInstance(
        input={"secret": sealing.seal_value("s3cr3t-value")},
        output={"echo": "s3cr3t-value", "other": 1},
    )
    output = children.child_output(child)
    assert sealing.is_sealed(output["echo"]) and output["other"] == 1


def test_child_step_spec_is_a_stepspec() -> None:
    assert isinstance(registry.get("child_parent").steps["verify"], ChildStep)


def test_a_retry_rings_its_doorbell_at_the_backoff_and_waits_while_paused(
    rung, django_capture_on_commit_callbacks
) -> None:
    parent, _ = engine.instance_start(
        workflow="child_parent", input={"customer": "acme", "fail_first": True}
    )
    for _ in range(5):
        for instance in tree(parent):
            run_ready(instance)
            run_compensations(instance)
    step = steps_of(parent)["verify"]
    rung.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert child_step_sync(step_run_id=step.pk, attempt=1) == "child_compensated"
    (bell,) = [b for b in rung if b.task == "child_sync"]
    step = steps_of(parent)["verify"]
    assert (bell.step_run_id, bell.attempt, bell.eta) == (step.pk, 2, step.next_attempt_at)
    engine.instance_pause(instance_id=parent.pk, actor="oper")
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        assert child_step_sync(step_run_id=step.pk, attempt=2) == "not_due"
        sweepers.sweep_waiting_deadlines()
        assert len(children_of(parent)) == 1  # paused: no new child
        engine.instance_unpause(instance_id=parent.pk, actor="oper")
        assert child_step_sync(step_run_id=step.pk, attempt=2) == "started"
    assert [c.parent_attempt for c in children_of(parent)] == [1, 2]


def test_readme_example_declares_a_child_step() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Child workflows") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    onboarding = Workflow("t_readme_onboarding")
    onboarding.task(lambda ctx: {"account": "a-1"}, name="create_account")
    namespace = {"onboarding": onboarding, "RetryPolicy": RetryPolicy, "timedelta": timedelta}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    spec = onboarding.steps["verify"]
    assert isinstance(spec, ChildStep) and spec.workflow == "kyc_check"
    assert spec.retry.max_attempts == 3 and spec.timeout == timedelta(days=2)
    with pytest.raises(DefinitionError, match="unknown child workflow kyc_check"):
        registry.register(onboarding)  # kyc_check is the README's, not registered here
