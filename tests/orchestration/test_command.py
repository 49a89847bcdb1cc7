"""`manage.py signoff`: output and exit codes, as a script sees them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from orchestration import engine
from orchestration.models import WorkflowInstance
from tests.orchestration.test_engine import run_ready

pytestmark = pytest.mark.django_db


def signoff(*args: str) -> str:
    out = StringIO()
    call_command("signoff", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_start_prints_the_instance_as_json() -> None:
    data = json.loads(
        signoff("start", "t_sequence", "--input", '{"a": 1}', "--business-key", "K-1")
    )
    assert data["workflow"] == "t_sequence" and data["state"] == "running"
    assert data["business_key"] == "K-1" and data["created"] is True
    assert [s["name"] for s in data["steps"]] == ["a", "b", "c"]


def test_status_history_retry_and_cancel() -> None:
    instance, _ = engine.instance_start(workflow="t_nonretryable")
    run_ready(instance)
    status = json.loads(signoff("status", str(instance.pk)))
    assert status["state"] == "failed"
    assert status["steps"][0]["error"] == "this input can never work"
    assert "instance_failed" in signoff("history", str(instance.pk))
    assert signoff("retry", str(instance.pk)).strip().endswith("running")
    assert signoff("cancel", str(instance.pk)).strip().endswith("cancelled")
    assert WorkflowInstance.objects.get(pk=instance.pk).state == "cancelled"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("start", "nope"), "unknown_workflow"),
        (("start", "t_sequence", "--input", "{bad"), "invalid_json"),
        (("start", "t_sequence", "--input", "[" * 2000 + "]" * 2000), "nested deeper"),
        (("start", "customer_onboarding", "--input", "[]"), "invalid_input"),
        (("status", "not-a-uuid"), "not_found"),
        (("status", "00000000-0000-0000-0000-000000000000"), "not_found"),
    ],
)
def test_bad_input_is_refused_with_exit_code_1(args, message) -> None:
    with pytest.raises(CommandError, match=message) as caught:
        signoff(*args)
    assert caught.value.returncode == 1
    assert WorkflowInstance.objects.count() == 0


def test_retry_of_a_running_instance_is_refused() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    with pytest.raises(CommandError, match="invalid_state") as caught:
        signoff("retry", str(instance.pk))
    assert caught.value.returncode == 1


def test_stuck_lists_instances_with_overdue_doorbells(settings) -> None:
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    instance, _ = engine.instance_start(workflow="t_sequence")
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        out = StringIO()
        call_command("signoff", "stuck", stdout=out, stderr=StringIO())
    assert str(instance.pk) in out.getvalue()
    assert signoff("stuck") == ""


def test_exit_codes_from_a_real_process() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "SIGNOFF_TEST_DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(
            **settings.DATABASES["default"]
        ),
    }
    usage = subprocess.run(
        [sys.executable, "manage.py", "signoff"],
        env=env,
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
    )
    assert usage.returncode == 2
    refused = subprocess.run(
        [sys.executable, "manage.py", "signoff", "start", "nope"],
        env=env,
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
    )
    assert refused.returncode == 1
    assert "unknown_workflow" in refused.stderr
