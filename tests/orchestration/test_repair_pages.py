"""The repair actions on the status page and in the admin: the buttons, the confirmation
forms (a reason, JSON, the current value with sealed fields masked), the "undo failed" state
and its own wording, and refusals that change nothing."""

from __future__ import annotations

import json
from html import unescape
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import sealing
from orchestration.models import Event, WorkflowInstance
from tests.orchestration.test_api import start_as
from tests.orchestration.test_engine import refresh, run_ready, steps_of
from tests.orchestration.test_saga import play

pytestmark = pytest.mark.django_db

SECRET = "4111-secret"


def failed_repair(user: Any) -> WorkflowInstance:
    instance = start_as(user, "t_repair", input={"amount": -1, "card": SECRET})
    run_ready(instance)
    assert refresh(instance).state == "failed"
    return refresh(instance)


def undo_failed(user: Any) -> WorkflowInstance:
    instance = start_as(user, "t_repair_saga", input={"behave": {"pay": "doom"}})
    play(instance)
    assert refresh(instance).error["phase"] == "compensation"
    return refresh(instance)


def status(instance: WorkflowInstance) -> str:
    return reverse("instances:detail", args=[instance.pk])


def action(instance: WorkflowInstance, name: str) -> str:
    return reverse("instances:action", args=[instance.pk, name])


def step_action(instance: WorkflowInstance, step: str, name: str) -> str:
    return reverse("instances:step-action", args=[instance.pk, steps_of(instance)[step].pk, name])


def test_status_page_offers_the_repairs_of_a_failed_instance(
    client: Client, operator: Any, user: Any
) -> None:
    instance = failed_repair(user)
    client.force_login(operator)
    html = client.get(status(instance)).content.decode()
    assert action(instance, "edit-input") in html
    assert step_action(instance, "check", "skip") in html
    assert step_action(instance, "check", "reset") in html
    assert step_action(instance, "load", "edit-output") in html
    assert step_action(instance, "load", "skip") not in html  # it succeeded
    assert action(instance, "retry-undo") not in html


def test_edit_input_on_the_status_page_masks_sealed_fields_and_checks_the_schema(
    client: Client, operator: Any, user: Any
) -> None:
    instance = failed_repair(user)
    client.force_login(operator)
    url = action(instance, "edit-input")
    form = unescape(client.post(url).content.decode())  # the button: the confirmation
    assert sealing.MASK in form and SECRET not in form and '"amount": -1' in form
    bad = client.post(url, {"confirm": "1", "value": '{"amount": "x"}', "reason": "r"})
    assert bad.status_code == 400 and b"invalid input" in bad.content
    no_reason = client.post(url, {"confirm": "1", "value": '{"amount": 5}', "reason": ""})
    assert no_reason.status_code == 400
    broken = client.post(url, {"confirm": "1", "value": "{nope", "reason": "r"})
    assert broken.status_code == 400
    assert refresh(instance).input["amount"] == -1
    value = json.dumps({"amount": 5, "card": sealing.MASK})
    ok = client.post(url, {"confirm": "1", "value": value, "reason": "typo"}, follow=True)
    assert b"input edited" in ok.content
    assert refresh(instance).input["amount"] == 5
    page = client.get(status(instance)).content.decode()
    assert "Input edited" in page and "amount -1 → 5" in page and SECRET not in page
    again = client.post(url, {"confirm": "1", "value": value, "reason": "typo"}, follow=True)
    assert b"the input is unchanged" in again.content  # a repeated submit changes nothing
    assert Event.objects.filter(instance=instance, type="instance_input_edited").count() == 1


def test_skip_and_reset_on_the_status_page(client: Client, operator: Any, user: Any) -> None:
    instance = failed_repair(user)
    client.force_login(operator)
    url = step_action(instance, "check", "skip")
    value = '{"ok": "waived", "api_token": "tok-hush"}'
    response = client.post(url, {"confirm": "1", "value": value, "reason": "waived"}, follow=True)
    assert b"skipped." in response.content
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    page = client.get(status(instance)).content.decode()
    assert "Skipped by an operator" in page
    assert "tok-hush" not in page  # a secret-looking key stays masked in the timeline

    other = failed_repair(user)
    url = step_action(other, "load", "reset")
    assert b"Re-run from here" in client.post(url).content
    client.post(url, {"confirm": "1", "reason": "re-read the data"})
    event = Event.objects.get(instance=other, type="instance_reset")
    assert (event.actor, event.data["reset"]) == ("user:oper", ["load", "check"])
    assert "Reset to load" in client.get(status(other)).content.decode()


def test_a_failed_undo_reads_undo_failed_with_its_own_actions(
    client: Client, operator: Any, user: Any
) -> None:
    instance = undo_failed(user)
    client.force_login(operator)
    html = client.get(status(instance)).content.decode()
    assert "Failed: undo failed" in html
    assert 'data-state="undo_failed">Undo failed</span>' in html
    assert 'class="step state-undo_failed' in html  # the graph's box too
    assert action(instance, "retry") not in html  # it would not retry steps
    assert step_action(instance, "pay", "retry-now") not in html  # nor a forward step
    assert step_action(instance, "pay", "complete") not in html
    assert action(instance, "retry-undo") in html
    confirm = client.post(action(instance, "retry-undo")).content.decode()
    assert "compensations" in confirm and "No forward step runs again" in confirm
    url = step_action(instance, "book", "resolve-undo")
    assert url in html
    assert client.post(url, {"confirm": "1", "reason": ""}).status_code == 400
    assert refresh(instance).state == "failed"
    client.post(url, {"confirm": "1", "reason": "cancelled the booking by phone"})
    assert steps_of(instance)["book"].state == "compensated"
    play(instance)
    assert refresh(instance).state == "compensated"
    assert "Undone by hand" in client.get(status(instance)).content.decode()


def test_retry_the_undo_runs_the_compensation_again(
    client: Client, operator: Any, user: Any
) -> None:
    instance = undo_failed(user)
    client.force_login(operator)
    client.post(action(instance, "retry-undo"), {"confirm": "1"})
    assert refresh(instance).state == "compensating"
    assert steps_of(instance)["book"].comp_phase == "scheduled"


def test_viewers_get_403_and_nothing_changes(client: Client, viewer: Any, user: Any) -> None:
    instance = failed_repair(user)
    client.force_login(viewer)
    seq = refresh(instance).last_seq
    for url, data in (
        (action(instance, "edit-input"), {"value": '{"amount": 5}'}),
        (step_action(instance, "check", "skip"), {"value": "{}"}),
        (step_action(instance, "check", "reset"), {}),
    ):
        assert client.post(url, {"confirm": "1", "reason": "r", **data}).status_code == 403
    assert refresh(instance).last_seq == seq


# -- the admin ---------------------------------------------------------------------------------


def admin_step(instance: WorkflowInstance, step: str, name: str) -> str:
    return reverse(
        "admin:orchestration_workflowinstance_step_operate",
        args=[instance.pk, steps_of(instance)[step].pk, name],
    )


def test_admin_repairs_go_through_the_same_confirmation(
    client: Client, operator: Any, user: Any
) -> None:
    instance = failed_repair(user)
    client.force_login(operator)
    change = reverse("admin:orchestration_workflowinstance_change", args=[instance.pk])
    html = client.get(change).content.decode()
    assert admin_step(instance, "check", "skip") in html
    assert (
        reverse("admin:orchestration_workflowinstance_operate", args=[instance.pk, "edit-input"])
        in html
    )
    url = admin_step(instance, "load", "edit-output")
    form = unescape(client.get(url).content.decode())
    assert sealing.MASK in form and "tok-" not in form
    response = client.post(
        url,
        {"confirm": "1", "value": json.dumps({"amount": 3, "token": sealing.MASK}), "reason": "r"},
    )
    assert response.status_code == 302 and response["Location"] == change
    assert steps_of(instance)["load"].output["amount"] == 3
    response = client.post(
        admin_step(instance, "check", "skip"), {"confirm": "1", "value": "{}", "reason": "r"}
    )
    assert response.status_code == 302
    assert steps_of(instance)["check"].state == "skipped"


def test_admin_shows_undo_failed_and_resolves_it(client: Client, operator: Any, user: Any) -> None:
    instance = undo_failed(user)
    client.force_login(operator)
    change = reverse("admin:orchestration_workflowinstance_change", args=[instance.pk])
    html = client.get(change).content.decode()
    assert "Failed: undo failed" in html and "Undo failed" in html
    url = admin_step(instance, "book", "resolve-undo")
    assert url in html
    response = client.post(url, {"confirm": "1", "reason": "by phone"})
    assert response.status_code == 302
    assert steps_of(instance)["book"].state == "compensated"


def test_edit_input_is_not_a_bulk_action(client: Client, operator: Any) -> None:
    client.force_login(operator)
    html = client.get(reverse("admin:orchestration_workflowinstance_changelist")).content
    assert b"op_edit-input" not in html and b"op_retry" in html
