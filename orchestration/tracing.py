"""Traces (OpenTelemetry): a span per API call, per start, per step attempt and per sweeper run;
one workflow is one trace.

Off unless configured: :func:`setup_from_settings` (called by the app's ``ready()``) turns
tracing on when ``SIGNOFF_TRACING`` is set, which defaults to on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is. Off, nothing is imported from OpenTelemetry and every hook
here returns at its first line (:func:`step_span` hands back one shared ``nullcontext``).

How a workflow stays one trace: :func:`start_span` wraps a start (inside the API request's span
when it came through the API), and the instance stores that span's W3C ``traceparent``
(``WorkflowInstance.trace_context``). A worker running any attempt of any of its steps opens
the attempt's span as a child of that stored context, whichever message brought it: the
start's doorbell, the previous step's, a sweeper's second ring after a lost one, an operator's
retry. The delivering Celery span, when it is in another trace (a sweeper's), is a link.

Spans carry ids, names, numbers and outcomes, never inputs, outputs or error messages (they may
carry personal or sealed data): an error is its type only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .definitions import StepContext
    from .models import WorkflowInstance

log = logging.getLogger("signoff.tracing")

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
# Paths whose URL is a live credential (email action and mail-preference links) or a scraper's
# poll (/metrics): no request span.
EXCLUDED_URLS = r"^https?://[^/]+/(a|mail)/,^https?://[^/]+/metrics$"

_OFF = contextlib.nullcontext()
_tracer: Any = None  # None: tracing is off in this process
_provider: Any = None
_instrumentors: list[Any] = []
_role = "web"
_sweepers: frozenset[str] | None = None
_sweeps: dict[str, tuple[Any, Any]] = {}


def enabled() -> bool:
    """Whether this process traces."""
    return _tracer is not None


def set_role(role: str) -> None:
    """Name this process's part (``web``, ``worker``, ``beat``) before :func:`setup`: the
    service is ``signoff-<role>`` unless ``OTEL_SERVICE_NAME`` names it."""
    global _role
    _role = role


def service_name() -> str:
    return os.environ.get("OTEL_SERVICE_NAME") or f"signoff-{_role}"


def setup_from_settings() -> None:
    """Turn tracing on when ``settings.SIGNOFF_TRACING`` says so (the app's ``ready()``)."""
    from django.conf import settings

    if getattr(settings, "SIGNOFF_TRACING", False) and _tracer is None:
        setup()


def setup(
    *,
    exporter: Any = None,
    service: str | None = None,
    set_global: bool = True,
    instrument: bool = True,
) -> Any:
    """Turn tracing on in this process; returns the SDK's ``TracerProvider``.

    Without ``exporter``, spans go in batches to the OTLP/HTTP endpoint of the standard
    ``OTEL_EXPORTER_OTLP_*`` variables (``OTEL_BSP_*`` tune the batches); with one (tests: the
    SDK's ``InMemorySpanExporter``), each span is exported as it ends. ``instrument`` also
    instruments Django (a span per request) and Celery (a span per message sent and run, the
    context in the message's headers), and opens a span per sweeper run. ``set_global`` makes
    the provider OpenTelemetry's global one, so spans that step code opens join the trace.
    Calling it again while on returns the provider in place."""
    global _tracer, _provider
    if _provider is not None:
        return _provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service or service_name()}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("signoff")
    if instrument:
        _instrument(provider)
    log.info("tracing on as %s", service or service_name())
    return provider


def shutdown() -> None:
    """Turn tracing off in this process: undo the instrumentation, flush and close the
    exporter (tests turn it on and off around each test)."""
    global _tracer, _provider, _sweepers
    from celery.signals import task_postrun, task_prerun

    for instrumentor in _instrumentors:
        instrumentor.uninstrument()
    _instrumentors.clear()
    task_prerun.disconnect(_sweep_began)
    task_postrun.disconnect(_sweep_ended)
    _sweeps.clear()
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = _sweepers = None


def _instrument(provider: Any) -> None:
    from celery.signals import task_postrun, task_prerun
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    excluded = EXCLUDED_URLS
    if os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS"):
        excluded += "," + os.environ["OTEL_PYTHON_DJANGO_EXCLUDED_URLS"]
    django = DjangoInstrumentor()
    django.instrument(tracer_provider=provider, excluded_urls=excluded)
    # A sweeper's span opens after the message's span (its child) and closes before it (the
    # contexts detach in reverse order): receivers run in the order they were connected.
    task_postrun.connect(_sweep_ended, weak=False)
    celery = CeleryInstrumentor()
    celery.instrument(tracer_provider=provider)
    task_prerun.connect(_sweep_began, weak=False)
    _instrumentors.extend([django, celery])


# -- the trace context an instance keeps ----------------------------------------------------------


def traceparent() -> str:
    """The W3C ``traceparent`` of the active span ("" when off or no span is active)."""
    if _tracer is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    value = carrier.get("traceparent", "")
    return value if TRACEPARENT.match(value) else ""


def trace_id_of(value: str) -> str:
    """The trace id (32 hex digits) of a stored ``traceparent``; "" when there is none."""
    return value.split("-")[1] if TRACEPARENT.match(value or "") else ""


def _context_of(value: str) -> Any:
    """The OpenTelemetry context a stored ``traceparent`` names, or None (empty, malformed)."""
    if not value or not TRACEPARENT.match(value):
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": value})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


# -- spans ----------------------------------------------------------------------------------------


def start_span(*, workflow: Any, version: Any) -> contextlib.AbstractContextManager[Any]:
    """The span of one start (``start <workflow>``), current while the instance is created, so
    the instance stores its context. Yields the span (None when off)."""
    if _tracer is None:
        return _OFF
    return _start_span(str(workflow)[:100], version)


@contextlib.contextmanager
def _start_span(workflow: str, version: Any) -> Iterator[Any]:
    attributes: dict[str, Any] = {"signoff.workflow": workflow}
    if isinstance(version, int):
        attributes["signoff.version"] = version
    with _tracer.start_as_current_span(
        f"start {workflow}",
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            _error(span, exc)  # a refused start: the error's type, not its message
            raise


def note_started(span: Any, instance: WorkflowInstance, created: bool) -> None:
    """Put the started (or, for a repeated Idempotency-Key, the found) instance on ``span``."""
    if span is None:
        return
    span.set_attribute("signoff.instance_id", str(instance.pk))
    span.set_attribute("signoff.version", instance.version)
    span.set_attribute("signoff.created", created)


def step_span(
    context: StepContext,
    trace_context: str,
    start_time: int | None = None,
    *,
    action: str = "step",
) -> contextlib.AbstractContextManager[Any]:
    """The span of one step attempt (``step <workflow>.<step>``; a compensation attempt's with
    ``action="compensate"``), current while its function runs and its outcome is recorded.
    Its parent is the instance's stored ``trace_context`` (the start's span); the message that
    delivered it, when in another trace, is a link. ``start_time`` (ns since the epoch,
    :func:`clock`) lets it cover the claim. Yields the span; off, the one shared
    ``nullcontext``: the step path pays one call."""
    if _tracer is None:
        return _OFF
    return _step_span(context, trace_context, start_time, action)


def clock() -> int | None:
    """Now, for a span's start time (None when off)."""
    if _tracer is None:
        return None
    import time

    return time.time_ns()


@contextlib.contextmanager
def _step_span(
    context: StepContext, trace_context: str, start_time: int | None, action: str
) -> Iterator[Any]:
    from opentelemetry import trace

    parent = _context_of(trace_context)
    links = []
    delivering = trace.get_current_span().get_span_context()
    if parent is not None and delivering.is_valid:
        stored = trace.get_current_span(parent).get_span_context()
        if delivering.trace_id != stored.trace_id:
            links.append(trace.Link(delivering, {"signoff.link": "delivered_by"}))
    attributes: dict[str, Any] = {
        "signoff.instance_id": str(context.instance_id),
        "signoff.workflow": context.workflow,
        "signoff.version": context.version,
        "signoff.step": context.step,
        "signoff.attempt": context.attempt,
    }
    if action != "step":
        attributes["signoff.action"] = action
    span = _tracer.start_span(
        f"{action} {context.workflow}.{context.step}",
        context=parent,  # None: the current context (an instance started with tracing off)
        links=links,
        start_time=start_time,
        attributes=attributes,
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False):
        yield span


def step_outcome(span: Any, outcome: str, error: BaseException | None = None) -> None:
    """Record an attempt's outcome (``succeeded``, ``compensated``, ``failed``, ``timed_out``)
    on its span; a failure's error by type only (its message may carry input data)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("signoff.outcome", outcome)
    if error is not None:
        _error(span, error)
    elif outcome not in ("succeeded", "compensated"):
        span.set_status(Status(StatusCode.ERROR, outcome))


def _error(span: Any, error: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    kind = f"{type(error).__module__}.{type(error).__qualname__}"
    span.set_attribute("signoff.error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))


# -- sweeper runs (the tasks the apps' AppConfig.periodic_tasks name) -----------------------------


def _is_sweeper(name: str) -> bool:
    global _sweepers
    if _sweepers is None:
        from .periodic import wanted_periodic_tasks

        _sweepers = frozenset(task for task, _seconds in wanted_periodic_tasks())
    return name in _sweepers


def _sweep_began(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if _tracer is None or task is None or task_id is None or not _is_sweeper(task.name):
        return
    from opentelemetry import context, trace

    span = _tracer.start_span(f"sweep {task.name}", attributes={"signoff.sweeper": task.name})
    token = context.attach(trace.set_span_in_context(span))
    _sweeps[task_id] = (span, token)


def _sweep_ended(
    task_id: str | None = None, retval: Any = None, state: str | None = None, **kwargs: Any
) -> None:
    begun = _sweeps.pop(task_id, None) if task_id is not None else None
    if begun is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    span, token = begun
    rows = _rows(retval)
    if rows is not None:
        span.set_attribute("signoff.sweeper.rows", rows)
    if state == "FAILURE":
        span.set_status(Status(StatusCode.ERROR, type(retval).__name__))
    context.detach(token)
    span.end()


def _rows(retval: Any) -> int | None:
    """Rows a sweeper handled: its count, or the sum of its counts by kind."""
    if isinstance(retval, bool):
        return None
    if isinstance(retval, int):
        return retval
    if isinstance(retval, dict):
        counts = [v for v in retval.values() if isinstance(v, int) and not isinstance(v, bool)]
        return sum(counts) if counts else None
    return None
