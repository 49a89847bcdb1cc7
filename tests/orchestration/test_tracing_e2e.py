"""Traces end to end: the test worker (a real Celery process) exports over OTLP/HTTP to a
small collector this module runs, and the test process's own spans (the API request, the
start) are in the in-memory exporter; together they must form one trace per workflow."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestration import engine, tasks
from orchestration.models import WorkflowInstance
from tests.conftest import WorkerProcess, wait_for

from .test_api import INSTANCES, token_client
from .test_tracing import step_of

pytestmark = pytest.mark.e2e


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

    # The delivering task's span (it ends after the steps it chained) and the sweeper's come in
    # later batches, from either pool process: wait for both.
    def sweeper_trace_exported() -> dict[str, dict[str, Any]] | None:
        found = {s["span_id"]: s for s in collector.spans() if s["trace_id"] == linked_trace}
        swept = any(s["name"].startswith("sweep ") for s in found.values())
        return found if linked_span in found and swept else None

    sweeper_trace = wait_for(sweeper_trace_exported, message="the sweeper's trace")
    assert sweeper_trace[linked_span]["name"] == "run/orchestration.run_step"
    [sweep] = [s for s in sweeper_trace.values() if s["name"].startswith("sweep ")]
    assert sweep["attributes"]["signoff.sweeper"] == "orchestration.sweep_doorbells"
    assert sweep["attributes"]["signoff.sweeper.rows"] == 1
    assert sweep["service"] == "signoff-worker"
