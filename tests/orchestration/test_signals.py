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
    assert send(sign("wrong", body, path=url)).json()["code"] == "bad_signature"
    stale = sign("s3cret", body, path=url, stamp=int(time.time()) - 301)
    assert send(stale).json()["code"] == "stale_signature"
    assert send("garbage").json()["code"] == "bad_signature"
    assert send(sign("s3cret", body, path=url), payload=b'{"ok": false}').status_code == 403
    assert snapshot() == before
    ok = send(sign("s3cret", body, path=url))
    assert ok.status_code == 202, ok.content
    assert Signal.objects.get().actor == "webhook:t_signal"


def test_signatures_are_off_for_workflows_without_a_secret(settings) -> None:
    settings.SIGNOFF_SIGNAL_SECRETS = {}
    instance, _ = engine.instance_start(workflow="t_signal")
    body = b'{"ok": true}'
    url = f"/api/v1/instances/{instance.pk}/signals/go/"
    response = APIClient().post(
        url,
        data=body,
        content_type="application/json",
        HTTP_X_SIGNOFF_SIGNATURE=sign("x", body, path=url),
    )
    assert response.status_code == 403
    assert response.json()["code"] == "signatures_disabled"


# -- signed signals are bound to their target ---------------------------------------------------

SECRET = "s3cret-for-signals"


def signal_url(instance: WorkflowInstance, name: str) -> str:
    return f"/api/v1/instances/{instance.pk}/signals/{name}/"


def send_signed(url: str, body: bytes, signature: str, **headers: str) -> Any:
    return APIClient().post(
        url,
        data=body,
        content_type="application/json",
        HTTP_X_SIGNOFF_SIGNATURE=signature,
        **headers,
    )


def state_of(instance: WorkflowInstance) -> tuple:
    """Everything a delivered signal would change on one instance."""
    row = refresh(instance)
    return (
        row.state,
        row.last_seq,
        row.updated_at,
        sorted((s.name, s.state, s.attempt) for s in steps_of(row).values()),
        Event.objects.filter(instance=row).count(),
        Signal.objects.filter(instance=row).count(),
    )


@pytest.fixture
def signed(settings) -> None:
    settings.SIGNOFF_SIGNAL_SECRETS = {"t_signal": SECRET, "t_two_signals": SECRET}


@pytest.fixture
def two_signals():
    """A workflow waiting for two different signals at once."""
    from orchestration.definitions import Workflow, registry
    from orchestration.waits import signal_step

    wf = Workflow("t_two_signals")
    signal_step(wf, "approved", timeout=timedelta(hours=1))
    signal_step(wf, "cancelled", timeout=timedelta(hours=1))
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)


def waiting_instance(workflow: str = "t_signal") -> WorkflowInstance:
    instance, _ = engine.instance_start(workflow=workflow)
    run_ready(instance)
    assert "waiting" in {s.state for s in steps_of(instance).values()}
    return instance


def test_a_signal_signed_for_one_instance_is_refused_by_another(signed) -> None:
    a, b = waiting_instance(), waiting_instance()
    body = b'{"ok": true}'
    signature = sign(SECRET, body, path=signal_url(a, "go"))
    before_a, before_b = state_of(a), state_of(b)
    replayed = send_signed(signal_url(b, "go"), body, signature)
    assert replayed.status_code == 403, replayed.content
    assert replayed.json()["code"] == "bad_signature"
    assert state_of(b) == before_b and state_of(a) == before_a
    assert Signal.objects.count() == 0
    # The same headers at the instance they were made for are accepted.
    assert send_signed(signal_url(a, "go"), body, signature).status_code == 202
    assert steps_of(a)["go"].state == "succeeded"
    assert state_of(b) == before_b


def test_a_signal_signed_for_one_name_is_refused_for_another(signed, two_signals) -> None:
    instance = waiting_instance("t_two_signals")
    body = b"{}"
    signature = sign(SECRET, body, path=signal_url(instance, "approved"))
    before = state_of(instance)
    refused = send_signed(signal_url(instance, "cancelled"), body, signature)
    assert refused.status_code == 403, refused.content
    assert refused.json()["code"] == "bad_signature"
    assert state_of(instance) == before
    accepted = send_signed(signal_url(instance, "approved"), body, signature)
    assert accepted.status_code == 202, accepted.content
    assert steps_of(instance)["approved"].state == "succeeded"
    assert steps_of(instance)["cancelled"].state == "waiting"


BODY = b'{"ok": true}'


@pytest.mark.parametrize(
    ("signed_as", "headers", "code"),
    [
        pytest.param({"method": "PUT"}, {}, "bad_signature", id="other_method"),
        pytest.param(
            {"path": "/api/v1/instances/{other}/signals/go/"}, {}, "bad_signature", id="other_path"
        ),
        pytest.param(
            {"path": "/api/v1/instances/{id}/signals/go"},
            {},
            "bad_signature",
            id="path_without_trailing_slash",
        ),
        pytest.param({"body": b'{"ok": false}'}, {}, "bad_signature", id="other_body"),
        pytest.param({"stamp": -301}, {}, "stale_signature", id="older_than_the_window"),
        pytest.param({"stamp": +301}, {}, "stale_signature", id="from_the_future"),
        pytest.param({"secret": "not-the-secret"}, {}, "bad_signature", id="other_secret"),
        pytest.param(
            {"idempotency_key": "k1"},
            {"HTTP_IDEMPOTENCY_KEY": "k2"},
            "bad_signature",
            id="other_idempotency_key",
        ),
        pytest.param({"idempotency_key": "k1"}, {}, "bad_signature", id="idempotency_key_dropped"),
        pytest.param(
            {}, {"HTTP_IDEMPOTENCY_KEY": "k2"}, "bad_signature", id="idempotency_key_added"
        ),
        pytest.param({"scheme": "v1"}, {}, "unsupported_signature", id="v1_scheme"),
        pytest.param({"header": "t={t}"}, {}, "bad_signature", id="no_signature"),
        pytest.param({"header": "t={t},t={t},v2=00"}, {}, "bad_signature", id="two_timestamps"),
        pytest.param({"header": "t=soon,v2=00"}, {}, "bad_signature", id="timestamp_not_a_number"),
        pytest.param({"header": "v2"}, {}, "bad_signature", id="garbage"),
    ],
)
def test_a_signature_covers_method_path_key_body_and_time(signed, signed_as, headers, code) -> None:
    instance, other = waiting_instance(), waiting_instance()
    url = signal_url(instance, "go")
    now = int(time.time())
    spec = dict(signed_as)
    if "header" in spec:
        signature = spec["header"].format(t=now)
    elif spec.get("scheme") == "v1":
        import hashlib
        import hmac

        v1 = hmac.new(SECRET.encode(), f"{now}.".encode() + BODY, hashlib.sha256).hexdigest()
        signature = f"t={now},v1={v1}"
    else:
        signature = sign(
            spec.get("secret", SECRET),
            spec.get("body", BODY),
            path=spec.get("path", url).format(id=instance.pk, other=other.pk),
            method=spec.get("method", "POST"),
            idempotency_key=spec.get("idempotency_key", ""),
            stamp=now + spec.get("stamp", 0),
        )
    before = state_of(instance), state_of(other)
    # The clock stands still on the whole second the stamps were made from, so a stamp 301 s
    # away is 301 s away when the server checks it (a slow machine crossing into the next
    # second made "+301" a 300.x-second difference, inside the window).
    with time_machine.travel(float(now), tick=False):
        response = send_signed(url, BODY, signature, **headers)
    assert response.status_code == 403, response.content
    assert response.json()["code"] == code
    assert (state_of(instance), state_of(other)) == before


def test_the_right_signature_is_accepted_also_next_to_an_old_v1_one(signed) -> None:
    instance = waiting_instance()
    url = signal_url(instance, "go")
    v2 = sign(SECRET, BODY, path=url, idempotency_key="cb-1")
    both = f"{v2},v1=0123456789abcdef"  # a sender moving from v1 may send both
    response = send_signed(url, BODY, both, HTTP_IDEMPOTENCY_KEY="cb-1")
    assert response.status_code == 202, response.content
    assert Signal.objects.get().idempotency_key == "cb-1"


def test_a_signed_request_replayed_as_is_is_applied_once(signed) -> None:
    # Before its step is reached the signal is kept: a replay must not keep a second one.
    instance, _ = engine.instance_start(workflow="t_signal")
    url = signal_url(instance, "go")
    signature = sign(SECRET, BODY, path=url)
    first = send_signed(url, BODY, signature)
    assert first.status_code == 202, first.content
    before = state_of(instance)
    again = send_signed(url, BODY, signature)
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert state_of(instance) == before
    run_ready(instance)
    assert steps_of(instance)["go"].state == "succeeded"


def test_other_methods_are_not_signal_deliveries(signed) -> None:
    instance = waiting_instance()
    url = signal_url(instance, "go")
    before = state_of(instance)
    for method in ("put", "patch", "delete"):
        signature = sign(SECRET, BODY, path=url, method=method.upper())
        response = getattr(APIClient(), method)(
            url, data=BODY, content_type="application/json", HTTP_X_SIGNOFF_SIGNATURE=signature
        )
        assert response.status_code == 405, response.content
    assert state_of(instance) == before


def test_the_readme_shell_recipe_signs_like_the_server(signed) -> None:
    """The openssl pipeline in README ("Signals") computes the signature the server expects."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to check the README's shell recipe")
    instance = waiting_instance()
    path = signal_url(instance, "go")
    body, key, stamp = '{"ok": true, "note": "100% done\\n"}', "cb-7", int(time.time())
    script = (
        'SIG=$(printf \'%s\\nPOST\\n%s\\n%s\\n%s\' "$T" "$P" "$KEY" "$BODY" '
        '| openssl dgst -sha256 -hmac "$SECRET" | sed \'s/^.*= //\'); echo "t=$T,v2=$SIG"'
    )
    env = {
        "T": str(stamp),
        "P": path,
        "KEY": key,
        "BODY": body,
        "SECRET": SECRET,
        "PATH": "/usr/bin:/bin",
    }
    header = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert header == sign(SECRET, body.encode(), path=path, idempotency_key=key, stamp=stamp)
    response = send_signed(path, body.encode(), header, HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 202, response.content


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


def test_timer_sleeps_for_a_duration_then_until_a_time_from_the_input(signoff_kit) -> None:
    start = timezone.now()
    wake = start + timedelta(hours=5)
    handle = signoff_kit.start("t_timer", {"wake_at": wake.isoformat()}).run_until_idle()
    nap = handle.step("nap")
    assert start + timedelta(hours=2) <= nap.timeout_at <= timezone.now() + timedelta(hours=2)
    signoff_kit.skip(timedelta(hours=1))
    assert handle.steps()["nap"] == "waiting"
    signoff_kit.advance_to(nap.timeout_at)
    assert handle.step("until").timeout_at == wake
    signoff_kit.advance_to(wake)
    assert handle.state == "succeeded"
    handle.assert_history("step_waiting:nap", "step_succeeded:nap", "step_succeeded:until")


def test_service_refuses_unstorable_payloads() -> None:
    instance, _ = engine.instance_start(workflow="t_signal")
    with pytest.raises(InvalidInput):
        signal_send(instance_id=instance.pk, name="go", payload={"ok": "\x00"})
    with pytest.raises(InvalidInput):
        signal_send(instance_id=instance.pk, name="go\x00", payload={})
    engine.instance_cancel(instance_id=instance.pk)
    with pytest.raises(Conflict):
        signal_send(instance_id=instance.pk, name="go", payload={"ok": True})


def test_versions_old_instances_finish_on_their_version(signoff_kit) -> None:
    v1 = signoff_kit.start("customer_onboarding", {"customer": "Old"}, version=1)
    v2 = signoff_kit.start("customer_onboarding", {"customer": "New"})
    assert (v1.instance.version, v2.instance.version) == (1, 2)
    signoff_kit.run_until_idle()
    assert v1.state == "succeeded"
    assert "setup_completed" not in v1.steps()
    assert v2.step("setup_completed").state == "waiting"
    v2.signal("setup_completed", {"seats": 3})
    assert v2.state == "succeeded"


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
