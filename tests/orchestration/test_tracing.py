"""Traces (orchestration.tracing) with the SDK's in-memory exporter: what each span carries,
who is whose parent, and that tracing off does nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from config.celery import celery_role
from orchestration import engine, tasks, tracing
from orchestration.errors import InvalidInput
from orchestration.models import StepRun, WorkflowInstance
from tests.orchestration.test_engine import run_ready
from tests.orchestration.test_saga import run_compensations

from .test_api import INSTANCES, token_client

ADMIN_CHANGE = "admin:orchestration_workflowinstance_change"
DJANGO_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware"


def traceparent_of(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def named(exporter: InMemorySpanExporter, prefix: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def step_of(instance: WorkflowInstance, name: str) -> StepRun:
    return StepRun.objects.get(instance=instance, name=name)


@pytest.mark.django_db
def test_tracing_is_off_by_default_and_then_does_nothing(rung) -> None:
    assert settings.SIGNOFF_TRACING is False
    assert not tracing.enabled()
    assert not any(DJANGO_MIDDLEWARE in m for m in settings.MIDDLEWARE)
    instance, _ = engine.instance_start(workflow="t_sequence")
    assert instance.trace_context == ""
    assert WorkflowInstance.objects.get(pk=instance.pk).trace_context == ""
    assert tracing.traceparent() == "" and tracing.clock() is None
    claimed = engine.step_claim(step_run_id=step_of(instance, "a").pk, attempt=1)
    # The step path's whole cost when off: one shared null context, nothing recorded.
    span = tracing.step_span(claimed.context, claimed.trace_context)
    assert span is tracing.step_span(claimed.context, "") and span.__enter__() is None
    assert engine.step_complete(step_run_id=claimed.step_run_id, attempt=1, output={})
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.django_db
def test_start_is_a_span_whose_context_the_instance_keeps(traces, rung) -> None:
    instance, created = engine.instance_start(workflow="t_sequence", business_key="k")
    [start] = traces.get_finished_spans()
    assert start.name == "start t_sequence" and start.parent is None
    assert dict(start.attributes) == {
        "signoff.workflow": "t_sequence",
        "signoff.instance_id": str(instance.pk),
        "signoff.version": 1,
        "signoff.created": True,
    }
    assert start.resource.attributes["service.name"] == "signoff-test"
    stored = WorkflowInstance.objects.get(pk=instance.pk).trace_context
    assert stored == traceparent_of(start)


@pytest.mark.django_db
def test_the_admin_shows_an_instances_trace_id(traces, rung, admin_client) -> None:
    traced, _ = engine.instance_start(workflow="t_sequence")
    [start] = traces.get_finished_spans()
    tracing.shutdown()
    untraced, _ = engine.instance_start(workflow="t_sequence")
    page = admin_client.get(reverse(ADMIN_CHANGE, args=[traced.pk]))
    assert f"{start.context.trace_id:032x}" in page.content.decode()
    page = admin_client.get(reverse(ADMIN_CHANGE, args=[untraced.pk]))
    assert "Trace id" in page.content.decode() and untraced.trace_context == ""
    tracing.setup(exporter=traces, set_global=False)  # the fixture turns it off again


@pytest.mark.django_db
def test_step_attempt_span_is_a_child_of_the_start_with_its_ids(traces, rung) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    [start] = traces.get_finished_spans()
    traces.clear()
    assert engine.step_execute(step_run_id=step_of(instance, "a").pk, attempt=1) == "succeeded"
    [step] = traces.get_finished_spans()
    assert step.name == "step t_sequence.a"
    assert step.parent.span_id == start.context.span_id
    assert step.context.trace_id == start.context.trace_id
    assert step.kind == SpanKind.INTERNAL and step.status.status_code == StatusCode.UNSET
    assert dict(step.attributes) == {
        "signoff.instance_id": str(instance.pk),
        "signoff.workflow": "t_sequence",
        "signoff.version": 1,
        "signoff.step": "a",
        "signoff.attempt": 1,
        "signoff.outcome": "succeeded",
    }
    assert step.links == ()


@pytest.mark.django_db
def test_a_step_delivered_from_another_trace_stays_in_the_workflows_and_links_it(
    traces, rung
) -> None:
    """A sweeper's second ring (or an operator's retry) brings the attempt from another trace:
    the attempt's parent is still the start's span; the delivery is a link."""
    instance, _ = engine.instance_start(workflow="t_sequence")
    [start] = traces.get_finished_spans()
    tracer = tracing._provider.get_tracer("test")
    with tracer.start_as_current_span("delivery") as delivery:
        engine.step_execute(step_run_id=step_of(instance, "a").pk, attempt=1)
    [step] = named(traces, "step ")
    assert step.parent.span_id == start.context.span_id
    assert step.context.trace_id == start.context.trace_id != delivery.get_span_context().trace_id
    [link] = step.links
    assert link.context.span_id == delivery.get_span_context().span_id
    assert link.attributes["signoff.link"] == "delivered_by"


@pytest.mark.django_db
def test_an_instance_started_while_tracing_was_off_traces_under_the_delivery(rung) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    exporter = InMemorySpanExporter()
    tracing.setup(exporter=exporter, set_global=False)
    try:
        tracer = tracing._provider.get_tracer("test")
        with tracer.start_as_current_span("delivery") as delivery:
            engine.step_execute(step_run_id=step_of(instance, "a").pk, attempt=1)
    finally:
        tracing.shutdown()
    [step] = named(exporter, "step ")
    assert step.parent.span_id == delivery.get_span_context().span_id and step.links == ()


@pytest.mark.django_db
def test_a_failed_attempt_records_the_error_type_never_its_message(traces, rung) -> None:
    instance, _ = engine.instance_start(workflow="t_nonretryable")
    assert engine.step_execute(step_run_id=step_of(instance, "validate").pk, attempt=1) == (
        "failed"
    )
    [step] = named(traces, "step ")
    assert step.attributes["signoff.outcome"] == "failed"
    assert step.attributes["signoff.error.type"] == "builtins.ValueError"
    assert step.status.status_code == StatusCode.ERROR
    assert step.status.description == "builtins.ValueError"
    assert step.events == ()  # no exception event: its message may carry input data
    assert "never work" not in repr(step.to_json())
    assert step_of(instance, "validate").state == "failed"


@pytest.mark.django_db
def test_each_attempt_is_its_own_span_with_its_number(traces, rung) -> None:
    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 1})
    step = step_of(instance, "call")
    assert engine.step_execute(step_run_id=step.pk, attempt=1) == "failed"
    retry_at = step_of(instance, "call").next_attempt_at
    with time_machine.travel(retry_at + timedelta(seconds=1), tick=False):
        assert engine.step_execute(step_run_id=step.pk, attempt=2) == "succeeded"
    first, second = named(traces, "step ")
    assert (first.attributes["signoff.attempt"], first.attributes["signoff.outcome"]) == (
        1,
        "failed",
    )
    assert (second.attributes["signoff.attempt"], second.attributes["signoff.outcome"]) == (
        2,
        "succeeded",
    )
    assert first.parent.span_id == second.parent.span_id


@pytest.mark.django_db
def test_a_saga_in_one_trace_with_a_span_per_compensation_attempt(traces, rung) -> None:
    instance, _ = engine.instance_start(
        workflow="trip_booking", input={"traveller": "Ada", "fail_at": "book_car"}
    )
    run_ready(instance)
    run_compensations(instance)
    assert WorkflowInstance.objects.get(pk=instance.pk).state == "compensated"
    [start] = named(traces, "start ")
    undone = named(traces, "compensate ")
    assert [s.name for s in undone] == [
        "compensate trip_booking.book_hotel",
        "compensate trip_booking.book_flight",
    ]
    for span in undone + named(traces, "step "):
        assert span.parent.span_id == start.context.span_id
    assert {s.attributes["signoff.action"] for s in undone} == {"compensate"}
    assert {s.attributes["signoff.outcome"] for s in undone} == {"compensated"}
    [failed] = [s for s in named(traces, "step ") if s.status.status_code == StatusCode.ERROR]
    assert failed.name == "step trip_booking.book_car"


@pytest.mark.django_db
def test_a_stale_message_opens_no_span(traces, rung) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    traces.clear()
    assert engine.step_execute(step_run_id=step_of(instance, "a").pk, attempt=7) == "stale"
    assert traces.get_finished_spans() == ()


@pytest.mark.django_db
def test_a_refused_start_records_the_error_type_and_writes_nothing(traces) -> None:
    with pytest.raises(InvalidInput):
        engine.instance_start(workflow="t_nonexistent")
    [start] = traces.get_finished_spans()
    assert start.status.status_code == StatusCode.ERROR
    assert start.attributes["signoff.error.type"] == "orchestration.errors.InvalidInput"
    assert start.events == ()
    assert not WorkflowInstance.objects.exists()


@pytest.mark.django_db
def test_an_api_start_is_a_child_of_the_request_span(traces, user, rung) -> None:
    client = token_client(user)
    body = {"workflow": "t_sequence", "input": {}}
    response = client.post(INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 201, response.content
    again = client.post(INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert again.status_code == 200
    request, repeat = [s for s in traces.get_finished_spans() if s.kind == SpanKind.SERVER]
    first, second = named(traces, "start ")
    assert request.parent is None and request.name == "POST api/v1/instances/"
    assert first.parent.span_id == request.context.span_id
    assert first.context.trace_id == request.context.trace_id
    instance = WorkflowInstance.objects.get(pk=response.json()["id"])
    assert instance.trace_context == traceparent_of(first)
    # The repeat (same Idempotency-Key) finds the instance; its trace stays the first one's.
    assert second.parent.span_id == repeat.context.span_id
    assert second.attributes["signoff.created"] is False
    assert second.attributes["signoff.instance_id"] == str(instance.pk)


@pytest.mark.django_db
def test_links_that_carry_a_token_are_not_traced(traces, client) -> None:
    client.get("/a/some-signed-token/")
    client.get("/mail/another-token/")
    client.get("/api/v1/workflows/")
    [span] = traces.get_finished_spans()
    assert span.attributes["http.url"] == "http://testserver/api/v1/workflows/"
    assert span.attributes["http.route"] == "api/v1/workflows/"


@pytest.mark.django_db(transaction=True)
def test_a_sweeper_run_is_a_span_with_the_rows_it_handled(traces, rung) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        engine.instance_start(workflow="t_sequence")
        engine.instance_start(workflow="t_sequence")
    traces.clear()
    grace = settings.SIGNOFF_DOORBELL_GRACE_SECONDS
    with time_machine.travel(start + timedelta(seconds=grace + 1), tick=False):
        tasks.sweep_doorbells.apply()
        tasks.sweep_step_timeouts.apply()
    run, sweep = named(traces, "run/orchestration.sweep_doorbells") + named(
        traces, "sweep orchestration.sweep_doorbells"
    )
    assert sweep.attributes["signoff.sweeper"] == "orchestration.sweep_doorbells"
    assert sweep.attributes["signoff.sweeper.rows"] == 2
    assert sweep.parent.span_id == run.context.span_id
    [timeouts] = named(traces, "sweep orchestration.sweep_step_timeouts")
    assert timeouts.attributes["signoff.sweeper.rows"] == 0
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached
    # Not a sweeper: a task no app lists in periodic_tasks opens no sweep span.
    assert not named(traces, "sweep orchestration.run_step")


def test_celery_processes_are_told_apart_for_their_service_name() -> None:
    assert celery_role(["/venv/bin/celery", "-A", "config", "worker", "-Q", "signoff"]) == "worker"
    assert celery_role(["/venv/lib/celery/__main__.py", "-A", "config", "beat"]) == "beat"
    assert celery_role(["celery", "-A", "config", "inspect", "ping"]) is None
    assert celery_role(["manage.py", "runserver"]) is None
    assert celery_role(["/venv/bin/gunicorn", "config.wsgi"]) is None
    assert celery_role([]) is None


def test_rows_of_a_sweepers_result() -> None:
    assert tracing._rows(3) == 3
    assert tracing._rows({"reminders": 2, "escalations": 1}) == 3
    assert tracing._rows({"x": "y"}) is None
    assert tracing._rows(None) is None and tracing._rows(True) is None


def test_a_malformed_stored_context_is_ignored() -> None:
    for value in ("", "00-xyz", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "x" * 55):
        assert tracing._context_of(value) is None
    good = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert tracing._context_of(good) is not None
