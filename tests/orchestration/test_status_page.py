"""The status page: the graph as SVG, the timeline, actions for operators, live refresh and
the history downloads."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from orchestration import engine, graph
from orchestration.definitions import registry
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.orchestration.test_engine import refresh, run_ready, steps_of
from tests.workflows import ledger

pytestmark = pytest.mark.django_db

NODE = re.compile(r'<g class="step state-([a-z_]+)( current| active)?" data-step="([a-z0-9_]+)"')


def nodes(html: str) -> dict[str, str]:
    """Step name -> the state class of its box in the page's SVG."""
    svg = html[html.index("<svg") : html.index("</svg>")]
    return {name: state for state, _, name in NODE.findall(svg)}


def page(client: Client, instance: WorkflowInstance) -> str:
    response = client.get(reverse("instances:detail", args=[instance.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_graph_has_a_node_per_step_with_its_state_class(client: Client, staff: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_parallel")
    steps = steps_of(instance)
    engine.step_execute(step_run_id=steps["start"].pk, attempt=1)
    branch = steps_of(instance)["branch_0"]
    assert engine.step_claim(step_run_id=branch.pk, attempt=1) is not None
    client.force_login(staff)
    html = page(client, instance)
    found = nodes(html)
    expected = {s.name: s.state for s in StepRun.objects.filter(instance=instance)}
    assert found == expected
    assert found["start"] == "succeeded"
    assert found["branch_0"] == "running"
    assert found["branch_1"] == "scheduled"
    assert found["join"] == "pending"
    # the running step is highlighted; arrows follow the dependencies
    assert '<g class="step state-running current" data-step="branch_0"' in html
    assert html.count('class="edge') == 8
    assert 'data-from="start" data-to="branch_2"' in html
    assert 'class="edge done" data-from="start"' in html


def test_layout_puts_each_step_one_column_after_its_deepest_dependency() -> None:
    definition = registry.get("t_parallel")
    instance, _ = engine.instance_start(workflow="t_parallel")
    plan = graph.layout(definition, StepRun.objects.filter(instance=instance))
    level = {n.name: n.level for n in plan.nodes}
    assert level == {"start": 0, **{f"branch_{i}": 1 for i in range(4)}, "join": 2}
    xs = {n.name: n.x for n in plan.nodes}
    assert xs["start"] < xs["branch_0"] == xs["branch_3"] < xs["join"]
    ys = sorted(n.y for n in plan.nodes if n.level == 1)
    assert len(set(ys)) == 4  # the branches stack in their column


def test_a_failed_instance_shows_its_error_and_traceback_collapsed(
    client: Client, staff: Any
) -> None:
    instance, _ = engine.instance_start(workflow="t_fixable", business_key="ORDER-7")
    run_ready(instance)
    client.force_login(staff)
    html = page(client, instance)
    assert nodes(html)["fragile"] == "failed"
    assert nodes(html)["last"] == "cancelled" or nodes(html)["last"] == "pending"
    assert "broken until an operator fixes it" in html
    assert re.search(r"<details class=\"st-error\"><summary>NonRetryableError: broken", html)
    assert "Traceback (most recent call last)" in html
    assert "ORDER-7" in html


def test_who_may_see_the_status_page(client: Client, django_user_model: Any, staff: Any) -> None:
    starter = django_user_model.objects.create_user("starter", password="pw-starter-1")
    other = django_user_model.objects.create_user("other", password="pw-other-12")
    instance, _ = engine.instance_start(workflow="t_sequence", started_by=starter)
    url = reverse("instances:detail", args=[instance.pk])
    assert client.get(url).status_code == 302  # to the login page
    client.force_login(other)
    assert client.get(url).status_code == 404
    assert client.get(reverse("instances:history-json", args=[instance.pk])).status_code == 404
    assert client.get(reverse("instances:live", args=[instance.pk])).status_code == 404
    client.force_login(starter)
    assert client.get(url).status_code == 200
    client.force_login(staff)
    assert client.get(url).status_code == 200
    assert client.get("/instances/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_buttons_only_for_operators_and_403_for_the_others(
    client: Client, django_user_model: Any, viewer: Any, operator: Any
) -> None:
    starter = django_user_model.objects.create_user("starter", password="pw-starter-1")
    instance, _ = engine.instance_start(workflow="t_fixable", started_by=starter)
    run_ready(instance)
    fragile = steps_of(instance)["fragile"]
    action = reverse("instances:action", args=[instance.pk, "retry"])
    step_action = reverse("instances:step-action", args=[instance.pk, fragile.pk, "complete"])
    for user in (starter, viewer):
        client.force_login(user)
        html = page(client, instance)
        assert action not in html and step_action not in html
        assert client.post(action, {"confirm": "1"}).status_code == 403
        assert (
            client.post(step_action, {"confirm": "1", "output": "{}", "reason": "x"}).status_code
            == 403
        )
    assert refresh(instance).state == "failed"
    client.force_login(operator)
    html = page(client, instance)
    assert action in html and step_action in html
    assert reverse("instances:action", args=[instance.pk, "pause"]) not in html  # not running


def test_an_operator_retries_from_the_status_page_after_confirming(
    client: Client, operator: Any
) -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    run_ready(instance)
    client.force_login(operator)
    url = reverse("instances:action", args=[instance.pk, "retry"])
    # the button's POST (without confirm) only shows the confirmation page
    response = client.post(url)
    assert response.status_code == 200
    assert b"Yes, retry failed steps" in response.content
    assert refresh(instance).state == "failed"
    ledger().set(f"fixed:{instance.pk}", 1)
    response = client.post(url, {"confirm": "1"}, follow=True)
    assert b"retried." in response.content
    assert refresh(instance).state == "running"
    retried = Event.objects.get(instance=instance, type="instance_retried")
    assert retried.actor == "user:oper"
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    # refused: the service's reason becomes a message, nothing changes
    response = client.post(url, {"confirm": "1"}, follow=True)
    assert b"only failed instances can be retried" in response.content


def test_skip_a_step_with_output_needs_json_and_a_reason(client: Client, operator: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    run_ready(instance)
    fragile = steps_of(instance)["fragile"]
    client.force_login(operator)
    url = reverse("instances:step-action", args=[instance.pk, fragile.pk, "complete"])
    bad = client.post(url, {"confirm": "1", "output": "{nope", "reason": "fixed by hand"})
    assert bad.status_code == 400 and b"not valid JSON" in bad.content
    missing = client.post(url, {"confirm": "1", "output": "{}", "reason": "  "})
    assert missing.status_code == 400 and b"This field is required" in missing.content
    assert steps_of(instance)["fragile"].state == "failed"
    ok = client.post(
        url, {"confirm": "1", "output": '{"fixed": "by hand"}', "reason": "ran the SQL myself"}
    )
    assert ok.status_code == 302
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    assert steps_of(instance)["fragile"].output == {"fixed": "by hand"}
    manual = Event.objects.get(instance=instance, type="step_completed_manually")
    assert (manual.actor, manual.data["reason"]) == ("user:oper", "ran the SQL myself")


def test_the_timeline_shows_durations_retries_and_decisions(
    client: Client, django_user_model: Any, staff: Any
) -> None:
    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 1})
    call = steps_of(instance)["call"]
    engine.step_execute(step_run_id=call.pk, attempt=1)
    engine.step_retry_now(step_run_id=call.pk, actor="user:ops")
    run_ready(instance)
    client.force_login(staff)
    html = page(client, instance)
    assert "Attempt 1 failed" in html
    assert "Flaky: transient failure on attempt 1" in html
    assert "Scheduled now by an operator" in html
    assert "Instance succeeded" in html
    assert re.search(r'class="st-took" title="duration">\d+(\.\d)? (ms|s)<', html)

    managers, _ = Group.objects.get_or_create(name="managers")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-1234")
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    managers.user_set.add(bob)
    expense, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 12, "currency": "EUR", "description": "Taxi", "requester": "alice"},
    )
    validate = steps_of(expense)["validate"]
    engine.step_execute(step_run_id=validate.pk, attempt=1)
    request = ApprovalRequest.objects.get(instance=expense, step_name="manager_approval")
    approval_services.approval_decide(
        request_id=request.pk, user=bob, outcome="approve", comment="fine"
    )
    html = page(client, expense)
    assert "Approval requested" in html
    assert "Approved by bob via web" in html
    assert "fine" in html


def test_operators_get_links_to_act_on_a_waiting_approval(
    client: Client, django_user_model: Any, operator: Any, settings: Any
) -> None:
    managers, _ = Group.objects.get_or_create(name="managers")
    managers.user_set.add(django_user_model.objects.create_user("bob", password="pw-bob-1234"))
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    expense, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 12, "currency": "EUR", "description": "Taxi", "requester": "alice"},
    )
    engine.step_execute(step_run_id=steps_of(expense)["validate"].pk, attempt=1)
    request = ApprovalRequest.objects.get(instance=expense)
    client.force_login(operator)
    html = page(client, expense)
    assert nodes(html)["manager_approval"] == "waiting"
    reassign = reverse("admin:approvals_approvalrequest_reassign", args=[request.pk])
    decide = reverse("admin:approvals_approvalrequest_decide", args=[request.pk])
    complete = reverse("instances:step-action", args=[expense.pk, request.step_run_id, "complete"])
    # Only what the decision policy could allow is offered: by default no deciding on
    # behalf and no completing an approval step by hand.
    assert reassign in html and decide not in html and complete not in html
    settings.SIGNOFF_DECIDE_ON_BEHALF = True
    settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS = True
    html = page(client, expense)
    assert reassign in html and decide in html and complete in html
    # Never on the operator's own request.
    mine, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 12, "currency": "EUR", "description": "Pens"},
        started_by=operator,
    )
    engine.step_execute(step_run_id=steps_of(mine)["validate"].pk, attempt=1)
    own = ApprovalRequest.objects.get(instance=mine)
    html = page(client, mine)
    assert reverse("admin:approvals_approvalrequest_reassign", args=[own.pk]) not in html
    assert reverse("admin:approvals_approvalrequest_decide", args=[own.pk]) not in html


def test_sensitive_input_is_masked_on_the_page_and_in_downloads(client: Client, staff: Any) -> None:
    instance, _ = engine.instance_start(
        workflow="t_sequence",
        input={"customer": "ACME", "api_key": "sk-live-123", "nested": {"password": "hunter2"}},
    )
    client.force_login(staff)
    html = page(client, instance)
    assert "ACME" in html and "sk-live-123" not in html and "hunter2" not in html
    body = b"".join(
        client.get(reverse("instances:history-json", args=[instance.pk])).streaming_content
    )
    assert b"sk-live-123" not in body and b"hunter2" not in body


@pytest.fixture
def sealed_flow(settings: Any) -> Any:
    from cryptography.fernet import Fernet

    from orchestration import sealing
    from orchestration.definitions import Workflow

    settings.SIGNOFF_ENCRYPTION_KEYS = Fernet.generate_key().decode()
    sealing._keys_from.cache_clear()
    wf = Workflow("t_status_sealed", sensitive=["input.iban"])
    wf.task(lambda ctx: {"tail": ctx.input["iban"][-4:]}, name="use")
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)
    sealing._keys_from.cache_clear()


def test_sealed_fields_show_only_to_those_allowed(
    client: Client, staff: Any, sealed_flow: Any
) -> None:
    from django.contrib.auth.models import Permission

    instance, _ = engine.instance_start(
        workflow="t_status_sealed", input={"iban": "DE89370400440532013000", "name": "Ada"}
    )
    run_ready(instance)
    client.force_login(staff)
    html = page(client, instance)
    assert "DE89370400440532013000" not in html and "$sealed" not in html
    assert "••••••" in html and "Ada" in html
    body = b"".join(
        client.get(reverse("instances:history-json", args=[instance.pk])).streaming_content
    )
    assert b"DE89370400440532013000" not in body and b"$sealed" not in body
    staff.user_permissions.add(Permission.objects.get(codename="view_sensitive"))
    client.force_login(type(staff).objects.get(pk=staff.pk))
    assert "DE89370400440532013000" in page(client, instance)


def test_history_downloads_hold_every_event_in_order(client: Client, staff: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    run_ready(instance)
    Event.objects.bulk_create(
        [
            Event(
                instance=instance,
                seq=100 + i,
                type="note",
                actor="=cmd|' /C calc'!A0",
                at=instance.created_at,
            )
            for i in range(2)
        ]
    )
    client.force_login(staff)
    response = client.get(reverse("instances:history-json", args=[instance.pk]))
    assert response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    data = json.loads(b"".join(response.streaming_content))
    assert data["instance"]["id"] == str(instance.pk)
    seqs = [e["seq"] for e in data["events"]]
    assert seqs == sorted(seqs) and len(seqs) == Event.objects.filter(instance=instance).count()
    assert data["events"][0]["type"] == "instance_started"

    response = client.get(reverse("instances:history-csv", args=[instance.pk]))
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["seq", "at", "type", "step", "attempt", "actor", "data"]
    assert [int(r[0]) for r in rows[1:]] == seqs
    assert rows[-1][5].startswith("'=")  # a spreadsheet will not run it as a formula


def test_the_live_endpoint_renders_only_when_the_history_moved(client: Client, staff: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    client.force_login(staff)
    url = reverse("instances:live", args=[instance.pk])
    first = client.get(url).json()
    assert first["changed"] and first["open"] and first["state"] == "running"
    assert 'data-step="a"' in first["html"]
    same = client.get(url, {"seq": first["seq"]}).json()
    assert same == {"seq": first["seq"], "state": "running", "open": True, "changed": False}
    run_ready(instance)
    moved = client.get(url, {"seq": first["seq"]}).json()
    assert moved["changed"] and not moved["open"] and moved["state"] == "succeeded"
    assert nodes(moved["html"]) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}


def test_the_page_polls_only_while_the_instance_runs(client: Client, staff: Any) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    client.force_login(staff)
    assert 'data-open="1"' in page(client, instance)
    run_ready(instance)
    html = page(client, instance)
    assert 'data-open="0"' in html
    assert reverse("instances:live", args=[instance.pk]) in html
