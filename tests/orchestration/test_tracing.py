"""Traces (orchestration.tracing) with the SDK's in-memory exporter: what each span carries,
who is whose parent, and that tracing off does nothing."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from config.celery import celery_role
from orchestration import engine, tasks, tracing
from orchestration.errors import InvalidInput
from orchestration.models import StepRun, WorkflowInstance
from tests.conftest import WorkerProcess, wait_for
from tests.orchestration.test_engine import run_ready
from tests.orchestration.test_saga import run_compensations

from .test_api import INSTANCES, token_client

ADMIN_CHANGE = "admin:orchestration_workflowinstance_change"
DJANGO_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware"


@pytest.fixture
def traces() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (Django and Celery instrumented), spans kept in memory."""
    assert not tracing.enabled()
    exporter = InMemorySpanExporter()
    tracing.setup(exporter=exporter, service="signoff-test", set_global=False)
    yield exporter
    tracing.shutdown()
    assert not any(DJANGO_MIDDLEWARE in m for m in settings.MIDDLEWARE)


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


# -- end to end: the worker process exports over OTLP/HTTP to a collector the test runs ---------


class Collector:
    """A tiny OTLP/HTTP trace collector on a local port: records every export request
    (protobuf, decoded with opentelemetry-proto) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.requests.append(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[dict[str, Any]]:
        """Every span received, as a dict: name, ids (hex), parent, service, attributes, links."""
        found = []
        for request in list(self.requests):
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex() or None,
                                "service": resource.get("service.name"),
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "links": [(k.trace_id.hex(), k.span_id.hex()) for k in span.links],
                            }
                        )
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def local(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    """The test process's spans, in the collector's shape."""
    return [
        {
            "name": s.name,
            "trace_id": f"{s.context.trace_id:032x}",
            "span_id": f"{s.context.span_id:016x}",
            "parent": f"{s.parent.span_id:016x}" if s.parent else None,
            "service": s.resource.attributes["service.name"],
            "attributes": dict(s.attributes),
            "links": [(f"{k.context.trace_id:032x}", f"{k.context.span_id:016x}") for k in s.links],
        }
        for s in exporter.get_finished_spans()
    ]


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.close()


@pytest.fixture
def traced_worker(
    celery_worker_process: WorkerProcess, collector: Collector, redis_client: Any, transactional_db
) -> Iterator[WorkerProcess]:
    """The suite's worker, restarted to export its traces to ``collector`` (batches every
    100 ms; doorbells rung again as soon as they are overdue), then restarted as it was."""
    worker = celery_worker_process
    worker.extra_env = {
        "SIGNOFF_TEST_TRACING": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SIGNOFF_DOORBELL_GRACE_SECONDS": "0",
    }
    worker.restart()
    redis_client.delete("signoff")
    try:
        yield worker
    finally:
        worker.quiesce()
        worker.extra_env = {}
        worker.restart()


def worker_steps(collector: Collector, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (
            (s := [x for x in collector.spans() if x["name"].startswith("step ")])
            and len(s) >= count
            and s
        ),
        timeout=20,
        message=f"{count} step spans from the worker",
    )


def closed(spans: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``spans()`` once every parent they name is among them: each worker process exports its
    own batches, so a child may arrive before its parent from the other process."""

    def every_parent_present() -> list[dict[str, Any]] | None:
        found = spans()
        ids = {s["span_id"] for s in found}
        return found if all(s["parent"] in ids for s in found if s["parent"]) else None

    return wait_for(every_parent_present, message="every parent span exported")


def assert_one_trace_one_root(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Every span in one trace, exactly one root; returns the root."""
    assert len({s["trace_id"] for s in spans}) == 1, {(s["name"], s["trace_id"]) for s in spans}
    [root] = [s for s in spans if s["parent"] is None]
    return root


@pytest.mark.e2e
def test_a_workflow_started_through_the_api_is_one_trace_with_a_span_per_step(
    traced_worker, collector, traces, user
) -> None:
    client = token_client(user)
    response = client.post(INSTANCES, {"workflow": "t_parallel", "input": {}}, format="json")
    assert response.status_code == 201, response.content
    instance_id = response.json()["id"]
    wait_for(
        lambda: WorkflowInstance.objects.get(pk=instance_id).state == "succeeded",
        message="t_parallel to succeed",
    )
    steps = worker_steps(collector, 6)
    ours = local(traces)
    root = assert_one_trace_one_root(closed(lambda: ours + collector.spans()))
    assert root["name"] == "POST api/v1/instances/" and root["service"] == "signoff-test"
    [start] = [s for s in ours if s["name"] == "start t_parallel"]
    assert start["parent"] == root["span_id"]
    names = ["start", "branch_0", "branch_1", "branch_2", "branch_3", "join"]
    assert sorted(s["name"] for s in steps) == sorted(f"step t_parallel.{n}" for n in names)
    for span in steps:
        assert span["parent"] == start["span_id"]  # whatever message brought it
        assert span["service"] == "signoff-worker"
        assert span["attributes"] == {
            "signoff.instance_id": instance_id,
            "signoff.workflow": "t_parallel",
            "signoff.version": 1,
            "signoff.step": span["name"].removeprefix("step t_parallel."),
            "signoff.attempt": 1,
            "signoff.outcome": "succeeded",
        }
    # The doorbells' messages carry the context too: the worker's task spans are in the trace.
    wait_for(
        lambda: any(s["name"] == "run/orchestration.run_step" for s in collector.spans()),
        message="the worker's task spans",
    )


@pytest.mark.e2e
def test_a_lost_doorbell_rung_again_by_the_sweeper_stays_in_the_workflows_trace(
    traced_worker, collector, traces, monkeypatch
) -> None:
    with monkeypatch.context() as lost:
        lost.setattr("orchestration.journal.ring_doorbells", lambda bells: None)
        instance, _ = engine.instance_start(workflow="t_sequence")
    assert step_of(instance, "a").state == "scheduled"
    tasks.sweep_doorbells.delay()  # as beat sends it; the worker rings "a" again
    wait_for(lambda: WorkflowInstance.objects.get(pk=instance.pk).state == "succeeded")
    steps = worker_steps(collector, 3)
    [start] = [s for s in local(traces) if s["name"] == "start t_sequence"]
    assert start["parent"] is None  # started in-process: the start is the root
    workflow_trace = closed(
        lambda: [s for s in local(traces) + collector.spans() if s["trace_id"] == start["trace_id"]]
    )
    assert assert_one_trace_one_root(workflow_trace) == start
    by_step = {s["attributes"]["signoff.step"]: s for s in steps}
    assert sorted(by_step) == ["a", "b", "c"]
    assert all(s["parent"] == start["span_id"] for s in steps)
    # "a" came through the sweeper's trace: a link to the message's span there.
    [(linked_trace, linked_span)] = by_step["a"]["links"]
    assert linked_trace != start["trace_id"]
    # The delivering task's span ends after the steps it ran (chained): wait for its export.
    wait_for(lambda: linked_span in {s["span_id"] for s in collector.spans()})
    sweeper_trace = {s["span_id"]: s for s in collector.spans() if s["trace_id"] == linked_trace}
    assert sweeper_trace[linked_span]["name"] == "run/orchestration.run_step"
    [sweep] = [s for s in sweeper_trace.values() if s["name"].startswith("sweep ")]
    assert sweep["attributes"]["signoff.sweeper"] == "orchestration.sweep_doorbells"
    assert sweep["attributes"]["signoff.sweeper.rows"] == 1
    assert sweep["service"] == "signoff-worker"
