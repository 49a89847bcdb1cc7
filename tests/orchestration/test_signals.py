"""Signal and timer steps, and the signal endpoint's refusals (each changing no row)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from orchestration import engine, sweepers
from orchestration.errors import Conflict, InvalidInput
from orchestration.models import Event, Signal, StepRun, WorkflowInstance
from orchestration.waits import sign, signal_send
from tests.orchestration.test_engine import refresh, run_ready, steps_of

pytestmark = pytest.mark.django_db


def snapshot() -> tuple:
    return (
        Signal.objects.count(),
        Event.objects.count(),
        sorted(StepRun.objects.values_list("state", flat=True)),
        sorted(WorkflowInstance.objects.values_list("state", flat=True)),
    )


@pytest.fixture
def staff_api(staff) -> APIClient:
    """An operator: staff with orchestration.operate_instance."""
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="operate_instance"))
    staff = type(staff).objects.get(pk=staff.pk)
    client = APIClient()
    client.force_authenticate(staff)
    return client


def post_signal(
    client: APIClient, instance: WorkflowInstance, name: str, body: Any, **headers: str
) -> Any:
    return client.post(
        f"/api/v1/instances/{instance.pk}/signals/{name}/",
        data=json.dumps(body),
        content_type="application/json",
        **headers,
    )


def test_signal_completes_the_waiting_step_and_the_flow_goes_on(staff_api) -> None:
    instance, _ = engine.instance_start(workflow="t_signal")
    run_ready(instance)
    assert steps_of(instance)["go"].state == "waiting"
    response = post_signal(staff_api, instance, "go", {"ok": True})
    assert response.status_code == 202, response.content
    assert response.json()["consumed"] is True
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    assert steps_of(instance)["go"].output == {"ok": True}
    assert "signal_received" in Event.objects.filter(instance=instance).values_list(
        "type", flat=True
    )


def test_early_signal_is_kept_and_consumed_when_the_step_is_reached(staff_api) -> None:
    instance, _ = engine.instance_start(workflow="t_signal")
    assert steps_of(instance)["go"].state == "pending"
    response = post_signal(staff_api, instance, "go", {"ok": True})
    assert response.status_code == 202 and response.json()["consumed"] is False
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    assert Signal.objects.get().consumed_at is not None
    types = list(Event.objects.filter(instance=instance).values_list("type", flat=True))
    assert "signal_consumed" in types


def test_duplicate_signal_is_applied_once(staff_api) -> None:
    instance, _ = engine.instance_start(workflow="t_signal")
    run_ready(instance)
    first = post_signal(staff_api, instance, "go", {"ok": True}, HTTP_IDEMPOTENCY_KEY="cb-1")
    before = snapshot()
    again = post_signal(staff_api, instance, "go", {"ok": True}, HTTP_IDEMPOTENCY_KEY="cb-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert snapshot() == before
    other = post_signal(staff_api, instance, "go", {"ok": False}, HTTP_IDEMPOTENCY_KEY="cb-1")
    assert other.status_code == 409
    assert snapshot() == before


@pytest.mark.parametrize(
    ("name", "body", "status", "code"),
    [
        ("nope", {"ok": True}, 400, "unknown_signal"),
        ("go", {"ok": "yes"}, 400, "invalid_payload"),
        ("go", {}, 400, "invalid_payload"),
        ("go", [1, 2], 400, "invalid_payload"),
    ],
)
def test_bad_signals_are_refused_and_change_nothing(staff_api, name, body, status, code) -> None:
    instance, _ = engine.instance_start(workflow="t_signal")
    run_ready(instance)
    before = snapshot()
    response = post_signal(staff_api, instance, name, body)
    assert response.status_code == status, response.content
    assert response.json()["code"] == code
    assert snapshot() == before


def test_late_signal_after_timeout_is_refused(staff_api) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_signal")
        run_ready(instance)
    with time_machine.travel(start + timedelta(hours=1, seconds=1), tick=False):
        assert sweepers.sweep_waiting_deadlines() == 1
        instance = refresh(instance)
        assert instance.state == "failed" and instance.error["reason"] == "signal_timeout"
        before = snapshot()
        response = post_signal(staff_api, instance, "go", {"ok": True})
    assert response.status_code == 409 and response.json()["code"] == "invalid_state"
    assert snapshot() == before
    unknown = post_signal(staff_api, instance, "go", {"ok": True})
    assert unknown.status_code == 409


def test_signal_for_unknown_or_foreign_instance_is_404(staff_api, user) -> None:
    instance, _ = engine.instance_start(workflow="t_signal")
    response = staff_api.post(
        "/api/v1/instances/00000000-0000-0000-0000-000000000000/signals/go/",
        data="{}",
        content_type="application/json",
    )
    assert response.status_code == 404
    stranger = APIClient()
    stranger.force_authenticate(user)
    assert post_signal(stranger, instance, "go", {"ok": True}).status_code == 404
    assert post_signal(APIClient(), instance, "go", {"ok": True}).status_code == 401
    assert Signal.objects.count() == 0


def test_signed_callbacks_without_a_user_token(settings) -> None:
    settings.SIGNOFF_SIGNAL_SECRETS = {"t_signal": "s3cret"}
    instance, _ = engine.instance_start(workflow="t_signal")
    run_ready(instance)
    client = APIClient()
    body = json.dumps({"ok": True}).encode()
    url = f"/api/v1/instances/{instance.pk}/signals/go/"

    def send(signature: str, payload: bytes = body) -> Any:
        return client.post(
            url, data=payload, content_type="application/json", HTTP_X_SIGNOFF_SIGNATURE=signature
        )

    before = snapshot()
    assert send(sign("wrong", body)).json()["code"] == "bad_signature"
    assert send(sign("s3cret", body, stamp=int(time.time()) - 301)).json()["code"] == (
        "stale_signature"
    )
    assert send("garbage").json()["code"] == "bad_signature"
    assert send(sign("s3cret", body), payload=b'{"ok": false}').status_code == 403
    assert snapshot() == before
    ok = send(sign("s3cret", body))
    assert ok.status_code == 202, ok.content
    assert Signal.objects.get().actor == "webhook:t_signal"


def test_signatures_are_off_for_workflows_without_a_secret(settings) -> None:
    settings.SIGNOFF_SIGNAL_SECRETS = {}
    instance, _ = engine.instance_start(workflow="t_signal")
    body = b'{"ok": true}'
    response = APIClient().post(
        f"/api/v1/instances/{instance.pk}/signals/go/",
        data=body,
        content_type="application/json",
        HTTP_X_SIGNOFF_SIGNATURE=sign("x", body),
    )
    assert response.status_code == 403
    assert response.json()["code"] == "signatures_disabled"


@pytest.mark.parametrize(
    ("workflow", "instance_state", "b_state"),
    [
        ("t_signal_continue", "succeeded", "succeeded"),
        ("t_signal_cancel", "cancelled", "cancelled"),
    ],
)
def test_on_timeout_actions(workflow, instance_state, b_state) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow=workflow)
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        assert sweepers.sweep_waiting_deadlines() == 1
        run_ready(instance)
    assert refresh(instance).state == instance_state
    assert steps_of(instance)["b"].state == b_state
    if workflow == "t_signal_continue":
        assert steps_of(instance)["go"].output == {"ok": False, "timed_out": True}


def test_timer_sleeps_for_a_duration_then_until_a_time_from_the_input() -> None:
    start = timezone.now()
    wake = start + timedelta(hours=5)
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_timer", input={"wake_at": wake.isoformat()})
        run_ready(instance)
        assert steps_of(instance)["nap"].timeout_at == start + timedelta(hours=2)
    with time_machine.travel(start + timedelta(hours=1), tick=False):
        assert sweepers.sweep_waiting_deadlines() == 0
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        assert sweepers.sweep_waiting_deadlines() == 1
        assert steps_of(instance)["until"].timeout_at == wake
    with time_machine.travel(wake, tick=False):
        assert sweepers.sweep_waiting_deadlines() == 1
        run_ready(instance)
    assert refresh(instance).state == "succeeded"


def test_service_refuses_unstorable_payloads() -> None:
    instance, _ = engine.instance_start(workflow="t_signal")
    with pytest.raises(InvalidInput):
        signal_send(instance_id=instance.pk, name="go", payload={"ok": "\x00"})
    with pytest.raises(InvalidInput):
        signal_send(instance_id=instance.pk, name="go\x00", payload={})
    engine.instance_cancel(instance_id=instance.pk)
    with pytest.raises(Conflict):
        signal_send(instance_id=instance.pk, name="go", payload={"ok": True})


def test_versions_old_instances_finish_on_their_version() -> None:
    v1, _ = engine.instance_start(
        workflow="customer_onboarding", version=1, input={"customer": "Old"}
    )
    v2, _ = engine.instance_start(workflow="customer_onboarding", input={"customer": "New"})
    assert (v1.version, v2.version) == (1, 2)
    run_ready(v1)
    run_ready(v2)
    assert refresh(v1).state == "succeeded"
    assert "setup_completed" not in steps_of(v1)
    assert steps_of(v2)["setup_completed"].state == "waiting"
    signal_send(instance_id=v2.pk, name="setup_completed", payload={"seats": 3})
    run_ready(v2)
    assert refresh(v2).state == "succeeded"


def test_unregistering_a_version_in_use_is_a_clear_startup_error() -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    from orchestration.checks import check_definitions_in_use
    from orchestration.definitions import registry

    for name in ("Old", "Older", "Oldest"):
        engine.instance_start(workflow="customer_onboarding", version=1, input={"customer": name})
    v1 = registry.get("customer_onboarding", 1)
    registry.unregister("customer_onboarding", 1)
    try:
        with pytest.raises(SystemCheckError, match="customer_onboarding version 1 is used by 3"):
            call_command("check", databases=["default"])
        # One error per version, not one per instance.
        assert len(check_definitions_in_use(databases=["default"])) == 1
    finally:
        registry.register(v1)
    call_command("check", databases=["default"])
