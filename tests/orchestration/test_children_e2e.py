"""Child workflows end to end: a real Celery worker process on Redis and PostgreSQL runs the
parent's and the child's steps, the ``child_sync`` doorbell tells the parent, the saga of a
cancelled child runs. Nothing here plays the worker or the doorbells by hand."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from orchestration import engine
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import wait_for
from tests.workflows import ledger

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def state(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.get(pk=instance.pk).state


def step(instance: WorkflowInstance, name: str) -> StepRun:
    return StepRun.objects.get(instance=instance, name=name)


def children_of(instance: WorkflowInstance) -> list[WorkflowInstance]:
    return list(
        WorkflowInstance.objects.filter(parent_step__instance=instance).order_by("parent_attempt")
    )


def test_parent_succeeds_with_the_output_of_a_child_run_by_the_worker(worker) -> None:
    parent, _ = engine.instance_start(
        workflow="child_parent", input={"customer": "acme"}, business_key="deal-1"
    )
    wait_for(lambda: state(parent) == "succeeded", message="the parent to succeed")
    (child,) = children_of(parent)
    assert child.state == "succeeded" and child.business_key == "deal-1"
    assert step(parent, "verify").output["check"] == {"verified": "ACME", "business_key": "deal-1"}
    assert step(parent, "finish").output == {"from_child": "ACME"}
    parent_types = list(
        Event.objects.filter(instance=parent).order_by("seq").values_list("type", flat=True)
    )
    assert parent_types.index("child_started") < parent_types.index("instance_succeeded")


def test_a_failed_child_is_retried_by_the_parent_step_with_a_new_child(worker) -> None:
    parent, _ = engine.instance_start(
        workflow="child_parent", input={"customer": "acme", "fail_first": True}
    )
    wait_for(lambda: state(parent) == "succeeded", message="the parent to succeed on retry")
    first, second = children_of(parent)
    assert (first.parent_attempt, first.state) == (1, "compensated")
    assert (second.parent_attempt, second.state) == (2, "succeeded")
    # the first child's saga undid its reserve step; the second's was kept
    assert ledger().hget(f"ledger:{first.pk}", "released") == b"1"
    assert ledger().hget(f"ledger:{second.pk}", "released") is None
    verify = step(parent, "verify")
    assert verify.attempt == 2 and verify.output["check"]["verified"] == "ACME"


def test_cancelling_a_parent_while_its_child_runs_cancels_the_child_and_runs_its_saga(
    worker, staff
) -> None:
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="operate_instance"))
    parent, _ = engine.instance_start(workflow="child_parent_wait", input={"customer": "c-9"})
    (child,) = children_of(parent)
    wait_for(
        lambda: step(child, "go").state == "waiting",
        message="the child to reserve and wait for its signal",
    )
    assert step(child, "reserve").state == "succeeded"
    client = APIClient()
    client.force_authenticate(type(staff).objects.get(pk=staff.pk))
    response = client.post(
        f"/api/v1/instances/{parent.pk}/cancel/",
        data=json.dumps({"reason": "order withdrawn"}),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert state(parent) == "cancelled"
    wait_for(lambda: state(child) == "compensated", message="the child's saga to unwind")
    assert step(child, "reserve").state == "compensated"
    assert ledger().hget(f"ledger:{child.pk}", "released") == b"1"
    assert step(child, "go").state == "cancelled"
    assert step(parent, "hold").state == "cancelled"
    assert step(parent, "after").state == "cancelled"
    # the child's end rang the parent's doorbell; the parent, cancelled, stays as it is
    assert state(parent) == "cancelled"
    reason = Event.objects.get(instance=child, type="instance_compensating").data
    assert str(parent.pk) in json.dumps(reason)
