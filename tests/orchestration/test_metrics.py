"""``/metrics``: Prometheus text computed from the database, behind a token or an IP
allow-list."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from approvals import services as approval_services
from approvals.models import ApprovalRequest
from orchestration import engine, sweepers
from orchestration.periodic import install_periodic_tasks
from tests.conftest import wait_for
from tests.orchestration.test_engine import refresh, run_ready, steps_of

URL = "/metrics"


def scrape(client: Client, **extra: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels), parsed by prometheus-client's own parser."""
    response = client.get(URL, **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# -- access ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_are_open_to_the_allow_list_and_to_the_token_only(
    client: Client, settings: Any
) -> None:
    assert client.get(URL).status_code == 200  # loopback by default
    settings.SIGNOFF_METRICS_ALLOWED_IPS = "10.0.0.0/8, 192.168.1.7"
    assert client.get(URL).status_code == 403
    assert client.get(URL, REMOTE_ADDR="10.20.30.40").status_code == 200
    assert client.get(URL, REMOTE_ADDR="192.168.1.7").status_code == 200
    assert client.get(URL, REMOTE_ADDR="192.168.1.8").status_code == 403
    settings.SIGNOFF_METRICS_TOKEN = "s3cret-token"
    denied = client.get(URL)
    assert denied.status_code == 401 and denied["WWW-Authenticate"].startswith("Bearer")
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION="Token s3cret-token").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    settings.SIGNOFF_METRICS_ALLOWED_IPS = []
    assert client.get(URL, REMOTE_ADDR="10.20.30.40").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    assert client.post(URL, HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 405


# -- values ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_show_instances_steps_approvals_and_sweepers(
    client: Client, django_user_model: Any
) -> None:
    install_periodic_tasks()
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.filter(task="orchestration.sweep_doorbells").update(total_run_count=7)

    flaky, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 1})
    call = steps_of(flaky)["call"]
    engine.step_execute(step_run_id=call.pk, attempt=1)  # fails, retrying
    engine.step_retry_now(step_run_id=call.pk, actor="user:ops")
    run_ready(flaky)
    assert refresh(flaky).state == "succeeded"
    sequence, _ = engine.instance_start(workflow="t_sequence")
    run_ready(sequence)
    broken, _ = engine.instance_start(workflow="t_fixable")
    run_ready(broken)
    assert refresh(broken).state == "failed"
    # a step left running past its deadline: the sweeper times it out
    hung, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(hung)["a"]
    engine.step_claim(step_run_id=a.pk, attempt=1)
    with time_machine.travel(timezone.now() + timedelta(minutes=10), tick=False):
        assert sweepers.sweep_step_timeouts() == 1
    # an approval decided, and one still pending
    managers, _ = Group.objects.get_or_create(name="managers")
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-1234")
    managers.user_set.add(bob)
    requests = []
    for amount in (40, 50):
        expense, _ = engine.instance_start(
            workflow="expense_approval",
            input={"amount": amount, "currency": "EUR", "description": "x", "requester": "alice"},
        )
        engine.step_execute(step_run_id=steps_of(expense)["validate"].pk, attempt=1)
        requests.append(ApprovalRequest.objects.get(instance=expense))
    approval_services.approval_decide(request_id=requests[0].pk, user=bob, outcome="approve")

    m = scrape(client)
    # instances by workflow and state (zero for known workflows and states)
    assert value(m, "signoff_instances", workflow="t_flaky", state="succeeded") == 1
    assert value(m, "signoff_instances", workflow="t_fixable", state="failed") == 1
    assert value(m, "signoff_instances", workflow="t_sequence", state="succeeded") == 1
    assert value(m, "signoff_instances", workflow="t_sequence", state="running") == 1
    assert value(m, "signoff_instances", workflow="customer_onboarding", state="running") == 0
    assert value(m, "signoff_instances_paused", workflow="t_flaky") == 0
    # step durations: one failed and one successful attempt of `call`
    duration = "signoff_step_duration_seconds"
    labels = {"workflow": "t_flaky", "step": "call"}
    assert value(m, f"{duration}_count", **labels, outcome="failed") == 1
    assert value(m, f"{duration}_count", **labels, outcome="succeeded") == 1
    assert value(m, f"{duration}_bucket", **labels, outcome="succeeded", le="+Inf") == 1
    assert value(m, f"{duration}_bucket", **labels, outcome="succeeded", le="60.0") == 1
    assert 0 <= value(m, f"{duration}_sum", **labels, outcome="succeeded") < 60
    assert value(m, f"{duration}_count", workflow="t_sequence", step="a", outcome="timed_out") == 1
    # attempts: `call` succeeded at its second attempt
    attempts = "signoff_step_attempts"
    assert value(m, f"{attempts}_bucket", **labels, outcome="succeeded", le="1.0") == 0
    assert value(m, f"{attempts}_bucket", **labels, outcome="succeeded", le="2.0") == 1
    assert value(m, f"{attempts}_sum", **labels, outcome="succeeded") == 2
    assert (
        value(m, f"{attempts}_count", workflow="t_fixable", step="fragile", outcome="failed") == 1
    )
    # doorbell lag: every claimed attempt that was scheduled (the retry-now one included)
    assert value(m, "signoff_doorbell_lag_seconds_count", workflow="t_sequence") == 4
    assert value(m, "signoff_doorbell_lag_seconds_count", workflow="t_flaky") == 3
    # events and sweepers
    assert value(m, "signoff_events_total", type="instance_started") == 6
    # call's first attempt, and the timed-out attempt of `a` (which the policy retries)
    assert value(m, "signoff_events_total", type="step_retrying") == 2
    assert value(m, "signoff_sweeper_items_total", type="step_timed_out") == 1
    runs = "signoff_sweeper_runs_total"
    assert value(m, runs, task="orchestration.sweep_doorbells") == 7
    assert value(m, runs, task="orchestration.sweep_step_timeouts") == 0
    # approvals: one waited and was approved, one still waits
    wait = "signoff_approval_wait_seconds"
    assert value(m, f"{wait}_count", workflow="expense_approval", state="approved") == 1
    assert value(m, f"{wait}_bucket", workflow="expense_approval", state="approved", le="60.0") == 1
    assert value(m, "signoff_approvals_pending", workflow="expense_approval") == 1
    assert value(m, "signoff_approval_oldest_pending_seconds", workflow="expense_approval") >= 0
    assert value(m, "signoff_steps_active", workflow="expense_approval", state="waiting") == 1


@pytest.mark.django_db
def test_scrape_cost_does_not_grow_with_the_data(client: Client) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(URL).status_code == 200
        return len(captured)

    first, _ = engine.instance_start(workflow="t_sequence")
    run_ready(first)
    few = queries()
    for _ in range(5):
        instance, _ = engine.instance_start(workflow="t_parallel")
        run_ready(instance)
    assert queries() == few


@pytest.mark.e2e
def test_metrics_after_a_run_with_the_real_worker(worker: Any, client: Client) -> None:
    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 2})
    wait_for(lambda: refresh(instance).state == "succeeded", message="the flaky instance")
    m = scrape(client)
    assert value(m, "signoff_instances", workflow="t_flaky", state="succeeded") == 1
    labels = {"workflow": "t_flaky", "step": "call"}
    assert value(m, "signoff_step_duration_seconds_count", **labels, outcome="failed") == 2
    assert value(m, "signoff_step_duration_seconds_count", **labels, outcome="succeeded") == 1
    assert value(m, "signoff_step_attempts_bucket", **labels, outcome="succeeded", le="2.0") == 0
    assert value(m, "signoff_step_attempts_bucket", **labels, outcome="succeeded", le="3.0") == 1
    assert value(m, "signoff_events_total", type="step_retrying") == 2
    # the worker claimed the first attempt of each step within seconds of its scheduling
    lag = "signoff_doorbell_lag_seconds"
    assert value(m, f"{lag}_count", workflow="t_flaky") == 2
    assert 0 < value(m, f"{lag}_sum", workflow="t_flaky") < 10


# -- structured logs ---------------------------------------------------------------------------


def test_json_logs_carry_the_ids_of_the_instance_and_step() -> None:
    import json
    import logging

    from celery.signals import task_postrun, task_prerun

    from orchestration.logging import JsonFormatter, log_context

    formatter = JsonFormatter(static={"service": "worker"})

    def line(message: str, **extra: Any) -> dict[str, Any]:
        record = logging.LogRecord("signoff.engine", logging.INFO, __file__, 1, message, (), None)
        record.__dict__.update(extra)
        return json.loads(formatter.format(record))

    out = line("result ignored", instance_id="i-1", step_run_id=5, attempt=2)
    assert out["message"] == "result ignored" and out["level"] == "INFO"
    assert (out["instance_id"], out["step_run_id"], out["attempt"]) == ("i-1", 5, 2)
    assert out["service"] == "worker" and out["logger"] == "signoff.engine"
    with log_context(instance_id="i-2", workflow="t_flaky"):
        out = line("inside")
    assert (out["instance_id"], out["workflow"]) == ("i-2", "t_flaky")
    assert "instance_id" not in line("outside")

    class RunStep:
        name = "orchestration.run_step"

    task_prerun.send(sender=RunStep, task_id="t-1", task=RunStep, args=(42, 3), kwargs={})
    try:
        out = line("in a task")
    finally:
        task_postrun.send(sender=RunStep, task_id="t-1", task=RunStep, args=(42, 3), kwargs={})
    assert (out["task"], out["task_id"], out["step_run_id"], out["attempt"]) == (
        "orchestration.run_step",
        "t-1",
        42,
        3,
    )
    assert "step_run_id" not in line("after the task")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(formatter.format(record))
    assert out["exc_type"] == "ValueError" and "Traceback" in out["traceback"]
