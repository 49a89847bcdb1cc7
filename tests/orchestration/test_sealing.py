"""Sealed payloads: encrypted at rest, opened only to run a step or for those allowed."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission
from django.db import connection
from rest_framework.test import APIClient

from orchestration import engine, sealing
from orchestration.definitions import DefinitionError, Registry, Workflow, registry
from orchestration.models import StepRun
from tests.orchestration.test_engine import refresh, run_ready, steps_of

pytestmark = pytest.mark.django_db
SECRET_IBAN = "DE89370400440532013000"
SECRET_TOKEN = "tok_live_very_secret"


def _use(ctx):  # noqa: ANN001, ANN202
    return {"iban_tail": ctx.input["iban"][-4:], "api_token": SECRET_TOKEN}


def _after(ctx):  # noqa: ANN001, ANN202
    return {"token_seen": ctx.outputs["use"]["api_token"] == SECRET_TOKEN}


@pytest.fixture
def keys(settings):
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SIGNOFF_ENCRYPTION_KEYS = first
    sealing._keys_from.cache_clear()
    yield settings, first, second
    sealing._keys_from.cache_clear()


@pytest.fixture
def sealed_flow(keys):
    wf = Workflow("t_sealed", sensitive=["input.iban", "outputs.use.api_token"])
    wf.task(_use, name="use")
    wf.task(_after, name="after", after=["use"])
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)


def raw(sql: str, *params) -> str:  # noqa: ANN002
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return " ".join(str(row) for row in cursor.fetchall())


def test_sensitive_fields_are_encrypted_in_the_raw_columns(sealed_flow) -> None:
    instance, _ = engine.instance_start(
        workflow="t_sealed", input={"iban": SECRET_IBAN, "name": "Ada"}
    )
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    rows = raw("SELECT input::text, request_hash FROM orchestration_workflowinstance")
    rows += raw("SELECT output::text FROM orchestration_steprun")
    rows += raw("SELECT output::text FROM orchestration_workflowinstance")
    assert SECRET_IBAN not in rows and "0532013000" not in rows
    assert SECRET_TOKEN not in rows
    assert "Ada" in rows  # not sensitive: plain
    steps = steps_of(instance)
    assert steps["use"].output["iban_tail"] == "3000"  # the step saw the plain value
    assert steps["after"].output == {"token_seen": True}


def test_api_masks_lists_and_reveals_only_with_permission(sealed_flow, staff) -> None:
    instance, _ = engine.instance_start(workflow="t_sealed", input={"iban": SECRET_IBAN})
    run_ready(instance)
    client = APIClient()
    client.force_authenticate(staff)
    listed = client.get("/api/v1/instances/?workflow=t_sealed").json()["results"][0]
    assert listed["input"]["iban"] == sealing.MASK
    detail = client.get(f"/api/v1/instances/{instance.pk}/").json()
    assert detail["input"]["iban"] == sealing.MASK
    staff.user_permissions.add(Permission.objects.get(codename="view_sensitive"))
    staff = type(staff).objects.get(pk=staff.pk)
    client.force_authenticate(staff)
    detail = client.get(f"/api/v1/instances/{instance.pk}/").json()
    assert detail["input"]["iban"] == SECRET_IBAN
    use = next(s for s in detail["steps"] if s["name"] == "use")
    assert use["output"]["api_token"] == SECRET_TOKEN
    listed = client.get("/api/v1/instances/?workflow=t_sealed").json()["results"][0]
    assert listed["input"]["iban"] == sealing.MASK


def test_rotation_reencrypts_and_old_keys_can_go(sealed_flow, keys) -> None:
    from io import StringIO

    from django.core.management import call_command

    settings, first, second = keys
    instance, _ = engine.instance_start(workflow="t_sealed", input={"iban": SECRET_IBAN})
    run_ready(instance)
    settings.SIGNOFF_ENCRYPTION_KEYS = f"{second},{first}"
    sealing._keys_from.cache_clear()
    out = StringIO()
    call_command("signoff", "rotate-keys", stdout=out)
    assert "re-encrypted" in out.getvalue()
    settings.SIGNOFF_ENCRYPTION_KEYS = second  # the old key is gone
    sealing._keys_from.cache_clear()
    stored = refresh(instance).input["iban"]
    assert sealing.open_value(stored) == SECRET_IBAN
    use = StepRun.objects.get(instance=instance, name="use")
    assert sealing.open_value(use.output["api_token"]) == SECRET_TOKEN


def test_wrong_key_is_a_clear_error_never_an_empty_value(sealed_flow, keys) -> None:
    settings, first, second = keys
    instance, _ = engine.instance_start(workflow="t_sealed", input={"iban": SECRET_IBAN})
    settings.SIGNOFF_ENCRYPTION_KEYS = second
    sealing._keys_from.cache_clear()
    with pytest.raises(sealing.SealError, match="none of the keys"):
        sealing.open_value(refresh(instance).input["iban"], where="input.iban")
    step = steps_of(instance)["use"]
    assert engine.step_execute(step_run_id=step.pk, attempt=1) == "stale"
    step = steps_of(instance)["use"]
    assert step.state == "retrying"
    assert step.error["type"] == "signoff.SealError"
    assert "SIGNOFF_ENCRYPTION_KEYS" in step.error["message"]
    shown = sealing.reveal(refresh(instance).input)
    assert shown["iban"].startswith("[sealed value not readable")


def test_bad_sensitive_paths_are_refused() -> None:
    wf = Workflow("t_sealed_bad", sensitive=["outputs.ghost.x"])
    wf.task(_use, name="use")
    with pytest.raises(DefinitionError, match="sensitive path 'outputs.ghost.x'"):
        Registry().register(wf)


def test_approval_fields_mask_sensitive_values(keys, django_user_model) -> None:
    from approvals.definitions import approval
    from approvals.models import ApprovalRequest

    django_user_model.objects.create_user("ann")
    wf = Workflow("t_sealed_approval", sensitive=["input.salary"])
    approval(wf, "decide", users=["ann"], show=["input.salary", "input.name"])
    registry.register(wf)
    try:
        instance, _ = engine.instance_start(
            workflow="t_sealed_approval", input={"salary": 123456, "name": "Ada"}
        )
        request = ApprovalRequest.objects.get(instance=instance)
        assert request.fields == [
            {"label": "Salary", "value": sealing.MASK},
            {"label": "Name", "value": "Ada"},
        ]
    finally:
        registry.unregister(wf.name, wf.version)


def test_erase_by_business_key_removes_sensitive_values_and_says_so(sealed_flow) -> None:
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from orchestration.models import Event

    instance, _ = engine.instance_start(
        workflow="t_sealed", input={"iban": SECRET_IBAN}, business_key="customer-42"
    )
    run_ready(instance)
    out = StringIO()
    call_command("signoff", "erase", "--business-key", "customer-42", stdout=out)
    assert "erased 2 sensitive field(s) in 1 instance(s)" in out.getvalue()
    instance = refresh(instance)
    assert instance.input["iban"] == "[erased]" and instance.erased_at is not None
    assert steps_of(instance)["use"].output["api_token"] == "[erased]"
    event = Event.objects.get(instance=instance, type="instance_erased")
    assert event.data == {"fields": 2, "reason": "erasure request"}
    assert SECRET_IBAN not in str(event.data)
    with pytest.raises(CommandError, match="not_found"):
        call_command("signoff", "erase", "--business-key", "nobody", stdout=StringIO())


def test_retention_erases_then_deletes_finished_instances(keys) -> None:
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    from orchestration.models import Event, WorkflowInstance
    from orchestration.retention import sweep_retention

    wf = Workflow(
        "t_retained",
        sensitive=["input.iban"],
        retention=timedelta(days=30),
        delete_after=timedelta(days=60),
    )
    wf.task(_use, name="use")
    registry.register(wf)
    try:
        start = timezone.now()
        with time_machine.travel(start, tick=False):
            done, _ = engine.instance_start(workflow="t_retained", input={"iban": SECRET_IBAN})
            run_ready(done)
            running, _ = engine.instance_start(workflow="t_retained", input={"iban": "X"})
        with time_machine.travel(start + timedelta(days=29), tick=False):
            assert sweep_retention() == {"erased": 0, "deleted": 0}
        with time_machine.travel(start + timedelta(days=31), tick=False):
            assert sweep_retention() == {"erased": 1, "deleted": 0}
            assert sweep_retention() == {"erased": 0, "deleted": 0}
        assert refresh(done).input["iban"] == "[erased]"
        assert refresh(running).input["iban"] != "[erased]"  # unfinished: kept
        with time_machine.travel(start + timedelta(days=91), tick=False):
            assert sweep_retention() == {"erased": 0, "deleted": 1}
        assert not WorkflowInstance.objects.filter(pk=done.pk).exists()
        assert not Event.objects.filter(instance_id=done.pk).exists()
        assert WorkflowInstance.objects.filter(pk=running.pk).exists()
    finally:
        registry.unregister(wf.name, wf.version)
