"""The operators' admin: lists that stay cheap, read-only history, actions through the
services with confirmation and reports, and permissions."""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest, Decision
from orchestration import engine
from orchestration.admin.instances import WorkflowInstanceAdmin
from orchestration.models import Event, StepRun, WorkflowInstance
from orchestration.operator_actions import INSTANCE_OPERATIONS, STEP_OPERATIONS
from tests.conftest import wait_for
from tests.orchestration.test_engine import refresh, run_ready, steps_of
from tests.workflows import ledger

CHANGELIST = "admin:orchestration_workflowinstance_changelist"


def changelist() -> str:
    return reverse(CHANGELIST)


def change(instance: WorkflowInstance) -> str:
    return reverse("admin:orchestration_workflowinstance_change", args=[instance.pk])


def bulk(client: Client, action: str, pks: list[Any], query: str = "", **extra: Any) -> Any:
    return client.post(
        changelist() + query,
        {"action": action, "_selected_action": [str(pk) for pk in pks], **extra},
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def fake_instances(n: int, *, state: str = "running") -> list[WorkflowInstance]:
    """Rows straight into the tables (no engine): many instances, each with two steps."""
    now = timezone.now()
    rows = [
        WorkflowInstance(
            workflow="t_sequence",
            version=1,
            input={"n": i},
            business_key=f"BULK-{i:05d}",
            created_at=now - timedelta(minutes=i),
            updated_at=now,
            state=state,
        )
        for i in range(n)
    ]
    WorkflowInstance.objects.bulk_create(rows)
    steps = []
    for row in rows:
        for position, name in enumerate(["a", "b"]):
            state = "running" if position == 0 else "pending"
            steps.append(
                StepRun(instance=row, name=name, position=position, attempt=1, state=state)
            )
    StepRun.objects.bulk_create(steps)
    return rows


# -- the list ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_changelist_query_count_is_constant_from_10_to_1000_instances(
    client: Client, superuser: Any
) -> None:
    client.force_login(superuser)
    urls = [
        changelist(),
        changelist() + "?state__exact=running",
        changelist() + "?stuck=yes",
        changelist() + "?failed_within=24h",
        changelist() + "?q=BULK-0",
    ]

    def counts() -> list[int]:
        found = []
        for url in urls:
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url)
            assert response.status_code == 200
            found.append(len(queries))
        return found

    fake_instances(10)
    small = counts()
    fake_instances(990)
    assert WorkflowInstance.objects.count() == 1000
    large = counts()
    assert small == large, (small, large)
    response = client.get(changelist())
    assert response.context["cl"].result_count == 1000
    html = response.content.decode()
    assert html.count('class="action-select"') == WorkflowInstanceAdmin.list_per_page
    assert "<code>a</code>" in html  # the current step column


@pytest.mark.django_db
def test_list_columns_filters_and_search(client: Client, superuser: Any) -> None:
    now = timezone.now()
    failed_recently, _ = engine.instance_start(workflow="t_fixable", business_key="ORDER-1")
    run_ready(failed_recently)
    failed_long_ago, _ = engine.instance_start(workflow="t_fixable", business_key="ORDER-2")
    run_ready(failed_long_ago)
    WorkflowInstance.objects.filter(pk=failed_long_ago.pk).update(
        finished_at=now - timedelta(days=3)
    )
    healthy, _ = engine.instance_start(workflow="t_sequence", business_key="ORDER-3")
    stuck, _ = engine.instance_start(workflow="t_sequence", business_key="ORDER-4")
    a = steps_of(stuck)["a"]
    engine.step_claim(step_run_id=a.pk, attempt=1)
    StepRun.objects.filter(pk=a.pk).update(timeout_at=now - timedelta(minutes=5))
    client.force_login(superuser)

    def listed(query: str) -> set[str]:
        response = client.get(changelist() + query)
        assert response.status_code == 200
        return {i.business_key for i in response.context["cl"].result_list}

    assert listed("") == {"ORDER-1", "ORDER-2", "ORDER-3", "ORDER-4"}
    assert listed("?stuck=yes") == {"ORDER-4"}
    assert listed("?failed_within=24h") == {"ORDER-1"}
    assert listed("?failed_within=7d") == {"ORDER-1", "ORDER-2"}
    assert listed("?state__exact=failed") == {"ORDER-1", "ORDER-2"}
    assert listed("?workflow__exact=t_sequence") == {"ORDER-3", "ORDER-4"}
    assert listed(f"?q={stuck.pk}") == {"ORDER-4"}
    assert listed(f"?q={str(healthy.pk)[:8]}") == {"ORDER-3"}
    assert listed("?q=ORDER-2") == {"ORDER-2"}
    assert listed("?q=nothing-like-it") == set()
    html = client.get(changelist()).content.decode()
    assert reverse("instances:detail", args=[stuck.pk]) in html  # status page links
    assert "Current step" in html


@pytest.mark.django_db
def test_detail_is_read_only_with_pretty_masked_json_and_collapsed_tracebacks(
    client: Client, operator: Any
) -> None:
    instance, _ = engine.instance_start(
        workflow="t_fixable", input={"customer": "ACME", "password": "hunter2"}
    )
    run_ready(instance)
    client.force_login(operator)
    response = client.get(change(instance))
    assert response.status_code == 200
    html = response.content.decode()
    assert "hunter2" not in html
    assert "{\n  &quot;customer&quot;: &quot;ACME&quot;" in html  # indented JSON
    assert re.search(r'<details class="so-tb"><summary>NonRetryableError: broken', html)
    assert 'name="_save"' not in html  # nothing to save
    assert 'name="events-0-DELETE"' not in html and "events-0-DELETE" not in html
    assert "instance_failed" in html  # the history inline
    assert reverse("instances:detail", args=[instance.pk]) in html
    fragile = steps_of(instance)["fragile"]
    assert (
        reverse(
            "admin:orchestration_workflowinstance_step_operate",
            args=[instance.pk, fragile.pk, "complete"],
        )
        in html
    )
    assert (
        reverse("admin:orchestration_workflowinstance_operate", args=[instance.pk, "retry"]) in html
    )


# -- events are immutable ------------------------------------------------------------------------


@pytest.mark.django_db
def test_events_cannot_be_added_changed_or_deleted_even_by_a_superuser(
    client: Client, superuser: Any
) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    run_ready(instance)
    event = Event.objects.filter(instance=instance).first()
    before = list(Event.objects.values_list("pk", "type", "data").order_by("pk"))
    client.force_login(superuser)
    base = "admin:orchestration_event"
    assert client.get(reverse(f"{base}_changelist")).status_code == 200
    assert client.get(reverse(f"{base}_change", args=[event.pk])).status_code == 200  # view
    assert client.get(reverse(f"{base}_add")).status_code == 403
    assert client.post(reverse(f"{base}_add"), {"type": "forged"}).status_code == 403
    assert (
        client.post(reverse(f"{base}_change", args=[event.pk]), {"type": "forged"}).status_code
        == 403
    )
    assert client.get(reverse(f"{base}_delete", args=[event.pk])).status_code == 403
    assert (
        client.post(reverse(f"{base}_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    )
    response = client.post(
        reverse(f"{base}_changelist"),
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert response.status_code == 403
    # nor through the instance page (its inline) or by deleting the instance
    assert client.post(change(instance), {"events-TOTAL_FORMS": "1"}).status_code == 403
    assert (
        client.post(
            reverse("admin:orchestration_workflowinstance_delete", args=[instance.pk]),
            {"post": "yes"},
        ).status_code
        == 403
    )
    assert bulk(client, "delete_selected", [instance.pk], post="yes").status_code == 403
    assert list(Event.objects.values_list("pk", "type", "data").order_by("pk")) == before
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()


# -- permissions -------------------------------------------------------------------------------


@pytest.fixture
def expense_request(django_user_model: Any) -> ApprovalRequest:
    managers, _ = Group.objects.get_or_create(name="managers")
    Group.objects.get_or_create(name="finance")
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-1234")
    django_user_model.objects.create_user("carol", password="pw-carol-123")
    managers.user_set.add(bob)
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 80, "currency": "EUR", "description": "Taxi", "requester": "alice"},
        business_key="EXP-1",
    )
    engine.step_execute(step_run_id=steps_of(instance)["validate"].pk, attempt=1)
    return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")


@pytest.mark.django_db
def test_view_only_staff_see_everything_but_get_403_on_every_action(
    client: Client, viewer: Any, expense_request: ApprovalRequest
) -> None:
    failed, _ = engine.instance_start(workflow="t_fixable")
    run_ready(failed)
    running, _ = engine.instance_start(workflow="t_sequence")
    fragile = steps_of(failed)["fragile"]
    client.force_login(viewer)
    # they see
    response = client.get(changelist())
    assert response.status_code == 200
    assert response.context["action_form"] is None  # no action offered
    assert client.get(change(failed)).status_code == 200
    assert "Retry failed steps" not in client.get(change(failed)).content.decode()
    approvals = reverse("admin:approvals_approvalrequest_change", args=[expense_request.pk])
    assert client.get(approvals).status_code == 200
    for name in ("approvals_delegation", "integrations_outboundemail", "orchestration_event"):
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200
    before = Event.objects.count()
    # they cannot act: bulk actions, per-instance and per-step pages, approval actions
    for name in INSTANCE_OPERATIONS:
        for extra in ({}, {"confirm": "1"}):
            response = bulk(client, f"op_{name}", [failed.pk, running.pk], index="0", **extra)
            assert response.status_code == 403, name
        url = reverse("admin:orchestration_workflowinstance_operate", args=[failed.pk, name])
        assert client.get(url).status_code == 403
        assert client.post(url, {"confirm": "1"}).status_code == 403
        url = reverse("instances:action", args=[failed.pk, name])
        assert client.post(url, {"confirm": "1"}).status_code == 403
    for name in STEP_OPERATIONS:
        data = {"confirm": "1", "output": "{}", "reason": "x"}
        url = reverse(
            "admin:orchestration_workflowinstance_step_operate", args=[failed.pk, fragile.pk, name]
        )
        assert client.get(url).status_code == 403
        assert client.post(url, data).status_code == 403
        url = reverse("instances:step-action", args=[failed.pk, fragile.pk, name])
        assert client.post(url, data).status_code == 403
    for name in ("reassign", "decide"):
        url = reverse(f"admin:approvals_approvalrequest_{name}", args=[expense_request.pk])
        assert client.get(url).status_code == 403
        assert (
            client.post(url, {"confirm": "1", "users": "carol", "reason": "x"}).status_code == 403
        )
    response = client.post(
        reverse("admin:approvals_approvalrequest_changelist"),
        {
            "action": "reassign_selected",
            "_selected_action": [expense_request.pk],
            "confirm": "1",
            "users": "carol",
            "reason": "x",
        },
    )
    assert response.status_code == 403
    assert Event.objects.count() == before
    assert refresh(failed).state == "failed"


@pytest.mark.django_db
def test_operate_permission_is_what_allows_acting(
    client: Client, operator: Any, superuser: Any
) -> None:
    failed, _ = engine.instance_start(workflow="t_fixable")
    run_ready(failed)
    for user in (operator, superuser):
        client.force_login(user)
        response = client.get(changelist())
        choices = dict(response.context["action_form"].fields["action"].choices)
        bulk = {f"op_{name}" for name, op in INSTANCE_OPERATIONS.items() if op.bulk}
        assert bulk <= set(choices)
        url = reverse("admin:orchestration_workflowinstance_operate", args=[failed.pk, "retry"])
        assert client.get(url).status_code == 200


# -- actions -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_bulk_retry_confirms_then_reports_successes_and_refusals(
    client: Client, operator: Any
) -> None:
    failed, _ = engine.instance_start(workflow="t_fixable", business_key="BROKEN")
    run_ready(failed)
    done = []
    for key in ("DONE-1", "DONE-2"):
        instance, _ = engine.instance_start(workflow="t_sequence", business_key=key)
        run_ready(instance)
        done.append(instance)
    pks = [failed.pk, *(i.pk for i in done)]
    client.force_login(operator)
    response = bulk(client, "op_retry", pks, index="0")
    assert response.status_code == 200  # the confirmation page
    html = response.content.decode()
    assert "This applies to <strong>3</strong>" in html
    assert 'name="confirm"' in html and html.count('name="_selected_action"') == 3
    assert refresh(failed).state == "failed"
    ledger().set(f"fixed:{failed.pk}", 1)
    response = bulk(client, "op_retry", pks, confirm="1")
    assert response.status_code == 302
    response = client.get(response["Location"])
    lines = messages_of(response)
    assert "1 instance retried." in lines
    refusal = next(line for line in lines if "refused" in line)
    assert refusal.startswith("2 instances refused")
    assert refusal.count("only failed instances can be retried") == 2
    assert "DONE-1" in refusal and "DONE-2" in refusal
    assert refresh(failed).state == "running"
    assert Event.objects.get(instance=failed, type="instance_retried").actor == "user:oper"


@pytest.mark.django_db
def test_bulk_action_on_a_filtered_list_with_select_across(client: Client, operator: Any) -> None:
    running = [engine.instance_start(workflow="t_sequence")[0] for _ in range(3)]
    finished, _ = engine.instance_start(workflow="t_sequence")
    run_ready(finished)
    client.force_login(operator)
    query = "?state__exact=running"
    response = bulk(client, "op_pause", [running[0].pk], query=query, index="0", select_across="1")
    assert response.status_code == 200
    assert "This applies to <strong>3</strong>" in response.content.decode()
    response = bulk(
        client, "op_pause", [running[0].pk], query=query, select_across="1", confirm="1"
    )
    assert response.status_code == 302 and query in response["Location"]
    assert all(refresh(i).paused_at is not None for i in running)
    assert refresh(finished).paused_at is None
    assert "3 instances paused." in messages_of(client.get(response["Location"]))


@pytest.mark.django_db
def test_cancel_asks_a_reason_and_records_the_operator(client: Client, operator: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    client.force_login(operator)
    url = reverse("admin:orchestration_workflowinstance_operate", args=[instance.pk, "cancel"])
    response = client.get(url)
    assert response.status_code == 200 and b'name="reason"' in response.content
    response = client.post(url, {"confirm": "1", "reason": "customer withdrew"})
    assert response.status_code == 302 and response["Location"] == change(instance)
    assert refresh(instance).state == "cancelled"
    event = Event.objects.get(instance=instance, type="instance_cancelled")
    assert (event.actor, event.data) == ("user:oper", {"reason": "customer withdrew"})
    response = client.post(url, {"confirm": "1"}, follow=True)
    assert any("it cannot be cancelled" in line for line in messages_of(response))


@pytest.mark.django_db
def test_step_actions_in_the_admin(client: Client, operator: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 1})
    call = steps_of(instance)["call"]
    engine.step_execute(step_run_id=call.pk, attempt=1)
    assert steps_of(instance)["call"].state == "retrying"
    client.force_login(operator)
    url = reverse(
        "admin:orchestration_workflowinstance_step_operate",
        args=[instance.pk, call.pk, "retry-now"],
    )
    assert client.get(url).status_code == 200
    assert client.post(url, {"confirm": "1"}).status_code == 302
    scheduled = Event.objects.filter(instance=instance, type="step_scheduled").last()
    assert scheduled.actor == "user:oper" and scheduled.data["operator"] is True
    other, _ = engine.instance_start(workflow="t_sequence")
    wrong = reverse(
        "admin:orchestration_workflowinstance_step_operate",
        args=[other.pk, call.pk, "retry-now"],
    )
    assert client.get(wrong).status_code == 404  # the step is not the instance's


@pytest.mark.django_db
def test_reassign_and_decide_on_behalf_from_the_admin(
    client: Client, operator: Any, expense_request: ApprovalRequest, settings: Any
) -> None:
    client.force_login(operator)
    request = expense_request
    change = reverse("admin:approvals_approvalrequest_change", args=[request.pk])
    decide = reverse("admin:approvals_approvalrequest_decide", args=[request.pk])
    # Off by default (SIGNOFF_DECIDE_ON_BEHALF): no button, and the form refuses.
    assert decide not in client.get(change).content.decode()
    off = client.post(
        decide,
        {"confirm": "1", "assignee": "bob", "outcome": "approve", "reason": "by phone"},
    )
    assert off.status_code == 403 and not Decision.objects.exists()
    assert "SIGNOFF_DECIDE_ON_BEHALF" in off.content.decode()
    settings.SIGNOFF_DECIDE_ON_BEHALF = True
    page = client.get(change)
    assert page.status_code == 200
    assert (
        reverse("admin:approvals_approvalrequest_decide", args=[request.pk])
        in page.content.decode()
    )
    url = reverse("admin:approvals_approvalrequest_decide", args=[request.pk])
    form = client.get(url)
    assert b'<option value="bob">bob</option>' in form.content
    missing = client.post(url, {"confirm": "1", "assignee": "bob", "outcome": "approve"})
    assert missing.status_code == 400 and not Decision.objects.exists()
    response = client.post(
        url,
        {
            "confirm": "1",
            "assignee": "bob",
            "outcome": "approve",
            "comment": "ok by phone",
            "reason": "bob is traveling, approved by phone",
        },
    )
    assert response.status_code == 302
    decision = Decision.objects.get(request=request)
    assert (decision.assignee.username, decision.decided_by.username, decision.channel) == (
        "bob",
        "oper",
        "admin",
    )
    assert decision.reason == "bob is traveling, approved by phone"
    event = Event.objects.get(instance=request.instance, type="approval_decided")
    assert event.actor == "user:oper" and event.data["for"] == "bob"
    # the next request of a bigger expense: reassign it
    request.refresh_from_db()
    assert request.state == "approved"
    response = client.post(
        reverse("admin:approvals_approvalrequest_reassign", args=[request.pk]),
        {"confirm": "1", "users": "carol", "reason": "bob left"},
        follow=True,
    )
    assert any("Refused" in line for line in messages_of(response))


@pytest.mark.django_db
def test_reassign_in_bulk_reports_refusals(
    client: Client, operator: Any, expense_request: ApprovalRequest
) -> None:
    decided, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 5, "currency": "EUR", "description": "Coffee", "requester": "alice"},
    )
    engine.step_execute(step_run_id=steps_of(decided)["validate"].pk, attempt=1)
    other = ApprovalRequest.objects.get(instance=decided)
    engine.instance_cancel(instance_id=decided.pk, actor="user:x")
    client.force_login(operator)
    changelist_url = reverse("admin:approvals_approvalrequest_changelist")
    data = {"action": "reassign_selected", "_selected_action": [expense_request.pk, other.pk]}
    confirm = client.post(changelist_url, {**data, "index": "0"})
    assert confirm.status_code == 200 and b'name="reason"' in confirm.content
    response = client.post(
        changelist_url, {**data, "confirm": "1", "users": "carol", "reason": "bob left"}
    )
    assert response.status_code == 302
    lines = messages_of(client.get(response["Location"]))
    assert "1 request reassigned." in lines
    assert any(line.startswith("1 refused") for line in lines)
    expense_request.refresh_from_db()
    assert [u.username for u in expense_request.assignee_users.all()] == ["carol"]
    assert list(expense_request.assignee_groups.all()) == []
    event = Event.objects.get(instance=expense_request.instance, type="approval_reassigned")
    assert event.actor == "user:oper" and event.data["reason"] == "bob left"


@pytest.mark.django_db
def test_other_admins_are_read_only(client: Client, superuser: Any, expense_request: Any) -> None:
    client.force_login(superuser)
    for name in (
        "approvals_approvalrequest",
        "approvals_delegation",
        "integrations_outboundemail",
    ):
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200
        assert client.get(reverse(f"admin:{name}_add")).status_code == 403
    assert (
        client.get(
            reverse("admin:approvals_approvalrequest_change", args=[expense_request.pk])
        ).status_code
        == 200
    )
    assert (
        client.post(
            reverse("admin:approvals_approvalrequest_delete", args=[expense_request.pk]),
            {"post": "yes"},
        ).status_code
        == 403
    )


# -- end to end with a real worker ---------------------------------------------------------------


def _state(instance: WorkflowInstance) -> str:
    return refresh(instance).state


@pytest.mark.e2e
def test_retry_in_the_admin_fixes_a_permanently_failed_step(
    worker: Any, client: Client, operator: Any
) -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    wait_for(lambda: _state(instance) == "failed", message="the instance to fail")
    ledger().set(f"fixed:{instance.pk}", 1)
    client.force_login(operator)
    response = bulk(client, "op_retry", [instance.pk], confirm="1")
    assert response.status_code == 302
    wait_for(lambda: _state(instance) == "succeeded", message="the retried instance to succeed")
    steps = steps_of(instance)
    assert steps["fragile"].output == {"fixed": True}
    assert steps["fragile"].attempt == 2


@pytest.mark.e2e
def test_skip_with_output_continues_the_flow(worker: Any, client: Client, operator: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    wait_for(lambda: _state(instance) == "failed", message="the instance to fail")
    fragile = steps_of(instance)["fragile"]
    client.force_login(operator)
    url = reverse(
        "admin:orchestration_workflowinstance_step_operate",
        args=[instance.pk, fragile.pk, "complete"],
    )
    response = client.post(
        url, {"confirm": "1", "output": '{"fixed": "by hand"}', "reason": "patched the row"}
    )
    assert response.status_code == 302
    wait_for(lambda: _state(instance) == "succeeded", message="the flow to go on")
    last = steps_of(instance)["last"]
    assert last.output["saw"] == ["first", "fragile"]
    assert steps_of(instance)["fragile"].output == {"fixed": "by hand"}


@pytest.mark.e2e
def test_resume_stuck_rings_again_after_the_broker_was_flushed(
    worker: Any, broker: Any, client: Client, operator: Any
) -> None:
    worker.kill()  # nobody consumes: the doorbell waits in the broker...
    try:
        instance, _ = engine.instance_start(workflow="t_sequence")
        broker.flush()  # ...and is lost
    finally:
        worker.start()
    time.sleep(1.0)
    assert steps_of(instance)["a"].state == "scheduled"  # stuck: nothing will ring it
    client.force_login(operator)
    response = bulk(client, "op_resume", [instance.pk], confirm="1")
    assert response.status_code == 302
    wait_for(lambda: _state(instance) == "succeeded", message="the resumed instance to finish")
    resumed = Event.objects.get(instance=instance, type="instance_resumed")
    assert resumed.actor == "user:oper" and resumed.data == {"rung": ["a"]}


@pytest.mark.e2e
def test_cancel_from_the_admin_cancels_open_steps_and_their_approval(
    worker: Any, client: Client, operator: Any, expense_request_e2e: ApprovalRequest
) -> None:
    request = expense_request_e2e
    client.force_login(operator)
    url = reverse(
        "admin:orchestration_workflowinstance_operate", args=[request.instance_id, "cancel"]
    )
    assert client.post(url, {"confirm": "1", "reason": "duplicate"}).status_code == 302
    instance = refresh(request.instance)
    assert instance.state == "cancelled"
    request.refresh_from_db()
    assert request.state == "cancelled"
    steps = steps_of(instance)
    assert steps["validate"].state == "succeeded"
    assert {s.state for name, s in steps.items() if name != "validate"} == {"cancelled"}
    time.sleep(0.5)
    assert not StepRun.objects.filter(
        instance=instance, state__in=["scheduled", "running"]
    ).exists()


@pytest.mark.e2e
def test_cancel_from_the_admin_compensates_what_was_done(
    worker: Any, client: Client, operator: Any
) -> None:
    instance, _ = engine.instance_start(
        workflow="trip_booking", input={"traveller": "Ada", "slow": True}, business_key="TRIP-9"
    )
    wait_for(
        lambda: steps_of(instance)["book_flight"].state == "succeeded",
        message="the flight to be booked",
    )
    client.force_login(operator)
    response = bulk(client, "op_cancel", [instance.pk], confirm="1", reason="trip called off")
    assert response.status_code == 302
    assert "1 instance cancelled." in messages_of(client.get(response["Location"]))
    wait_for(lambda: _state(instance) == "compensated", timeout=30, message="the bookings undone")
    steps = steps_of(instance)
    assert steps["book_flight"].state == "compensated"
    assert steps["book_car"].state == "cancelled"
    started = Event.objects.get(instance=instance, type="instance_compensating")
    assert started.actor == "user:oper" and started.data["reason"] == "trip called off"
    page = client.get(reverse("instances:detail", args=[instance.pk])).content.decode()
    assert "Compensated" in page and 'data-step="book_flight" data-state="compensated"' in page


@pytest.fixture
def expense_request_e2e(worker: Any, django_user_model: Any) -> ApprovalRequest:
    """An expense waiting for its manager, its ``validate`` run by the real worker."""
    managers, _ = Group.objects.get_or_create(name="managers")
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    managers.user_set.add(django_user_model.objects.create_user("bob", password="pw-bob-1234"))
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 80, "currency": "EUR", "description": "Taxi", "requester": "alice"},
        business_key=f"EXP-{uuid.uuid4().hex[:6]}",
    )
    return wait_for(
        lambda: ApprovalRequest.objects.filter(instance=instance).first(),
        message="the manager approval request",
    )
