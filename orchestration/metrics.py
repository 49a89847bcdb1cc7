"""``/metrics`` in the Prometheus text format, computed from the database at scrape time.

Why from the database and not from in-process counters fed by ``event_committed``: steps run
in Celery worker processes (several per host, on several hosts), sweepers run wherever beat
sends them, and the web process that answers the scrape sees none of it. In-process counters
would need prometheus-client's multiprocess mode (a shared directory per host, wiped on
deploy) and would still lose history on restart. The event table is the engine's complete,
append-only history and is shared by every process, so every number here is exact,
survives restarts, and counters never go backwards (events are never updated or deleted).

Each metric family is one aggregate query (GROUP BY with a conditional count per histogram
bucket), so a scrape costs a handful of queries whatever the data size; the event scans grow
with the history, so ``SIGNOFF_METRICS_CACHE_SECONDS`` can keep a result for a few seconds
when several Prometheus servers scrape.

Other apps add their own families through :func:`register_collector` (approvals: the
approval waits; integrations: the outbox), from their ``AppConfig.ready()``: the engine
never reads their tables.

Access: a bearer token (``SIGNOFF_METRICS_TOKEN``) or a client address in
``SIGNOFF_METRICS_ALLOWED_IPS`` (addresses or networks; loopback by default).
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    Case,
    CharField,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .definitions import registry as definitions
from .models import Event, InstanceState, StepRun, WorkflowInstance
from .selectors import stuck_q

STEP_END = ["step_succeeded", "step_failed", "step_retrying", "step_timed_out"]
OUTCOME = {
    "step_succeeded": "succeeded",
    "step_failed": "failed",
    "step_retrying": "failed",
    "step_timed_out": "timed_out",
}
ACTIVE_STEP_STATES = ["scheduled", "running", "retrying", "waiting"]

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 7, 10, 15, 20)

# -- other apps' families ----------------------------------------------------------------------

# A collector yields metric families computed from its own app's tables at scrape time.
MetricsCollector = Callable[[], Iterable[Metric]]
_collectors: dict[str, MetricsCollector] = {}


def register_collector(name: str, collector: MetricsCollector) -> MetricsCollector:
    """Add ``collector``'s families to ``/metrics`` (after the engine's, in the order of the
    names, so the output does not depend on the order the apps start in). Registering one
    name twice keeps the last."""
    _collectors[name] = collector
    return collector


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str],
    qs: QuerySet,
    buckets: Sequence[float],
    *,
    seconds: bool,
) -> HistogramMetricFamily:
    """A histogram from ``qs`` annotated with ``value`` (a duration, or a number when
    ``seconds`` is false), grouped by ``labels``: one query, one count per bucket."""
    aggregates: dict[str, Any] = {"_n": Count("pk"), "_sum": Sum("value")}
    for i, bound in enumerate(buckets):
        limit = timedelta(seconds=bound) if seconds else bound
        aggregates[f"_b{i}"] = Count("pk", filter=Q(value__lte=limit))
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for row in qs.values(*labels).annotate(**aggregates).order_by(*labels):
        total = row["_sum"]
        if isinstance(total, timedelta):
            total = total.total_seconds()
        family.add_metric(
            [str(row[label]) for label in labels],
            buckets=[(_le(b), row[f"_b{i}"]) for i, b in enumerate(buckets)]
            + [("+Inf", row["_n"])],
            sum_value=float(total or 0),
        )
    return family


def _le(bound: float) -> str:
    return str(float(bound))


def _outcome(column: str) -> Case:
    """An attempt's end event type as an outcome label (a retry is a failed attempt)."""
    return Case(
        *[When(**{column: type_}, then=Value(outcome)) for type_, outcome in OUTCOME.items()],
        default=Value("other"),
        output_field=CharField(),
    )


def duration(later: str, earlier: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(later) - F(earlier), output_field=DurationField())


class SignoffCollector(Collector):
    """Collects every Signoff metric from the database when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        yield from self.instances()
        yield from self.steps()
        yield self.step_durations()
        yield self.step_attempts()
        yield self.doorbell_lag()
        yield from self.events()
        yield from self.sweepers()
        for name in sorted(_collectors):
            yield from _collectors[name]()

    # -- instances and steps ----------------------------------------------------------------
    def instances(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "signoff_instances",
            "Workflow instances by workflow and state.",
            labels=["workflow", "state"],
        )
        paused = GaugeMetricFamily(
            "signoff_instances_paused", "Instances paused by an operator.", labels=["workflow"]
        )
        counts: dict[tuple[str, str], int] = {
            (wf.name, state): 0 for wf in definitions.all() for state in InstanceState.values
        }
        paused_counts: dict[str, int] = {wf.name: 0 for wf in definitions.all()}
        rows = (
            WorkflowInstance.objects.values("workflow", "state")
            .annotate(n=Count("pk"), p=Count("pk", filter=Q(paused_at__isnull=False)))
            .order_by()
        )
        for row in rows:
            counts[(row["workflow"], row["state"])] = row["n"]
            paused_counts[row["workflow"]] = paused_counts.get(row["workflow"], 0) + row["p"]
        for (workflow, state), n in sorted(counts.items()):
            by_state.add_metric([workflow, state], n)
        for workflow, n in sorted(paused_counts.items()):
            paused.add_metric([workflow], n)
        yield by_state
        yield paused
        stuck = GaugeMetricFamily(
            "signoff_instances_stuck",
            "Running instances that need an operator's look (the admin's stuck filter).",
            labels=["workflow"],
        )
        found = dict.fromkeys(paused_counts, 0)
        for row in (
            WorkflowInstance.objects.filter(stuck_q(timezone.now()))
            .values("workflow")
            .annotate(n=Count("pk"))
            .order_by()
        ):
            found[row["workflow"]] = row["n"]
        for workflow, n in sorted(found.items()):
            stuck.add_metric([workflow], n)
        yield stuck

    def steps(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "signoff_steps_active",
            "Steps with work in flight, by workflow and state.",
            labels=["workflow", "state"],
        )
        for row in (
            StepRun.objects.filter(state__in=ACTIVE_STEP_STATES)
            .values("instance__workflow", "state")
            .annotate(n=Count("pk"))
            .order_by("instance__workflow", "state")
        ):
            family.add_metric([row["instance__workflow"], row["state"]], row["n"])
        yield family

    def step_durations(self) -> Metric:
        """Each attempt from ``step_started`` to the event that ended it."""
        ends = Event.objects.filter(
            instance_id=OuterRef("instance_id"),
            step=OuterRef("step"),
            attempt=OuterRef("attempt"),
            seq__gt=OuterRef("seq"),
            type__in=STEP_END,
        ).order_by("seq")
        qs = (
            Event.objects.filter(type="step_started")
            .annotate(
                end_at=Subquery(ends.values("at")[:1]),
                end_type=Subquery(ends.values("type")[:1]),
                workflow=F("instance__workflow"),
            )
            .filter(end_at__isnull=False)
            .annotate(value=duration("end_at", "at"))
        )
        return histogram(
            "signoff_step_duration_seconds",
            "Duration of step attempts (started to succeeded, failed or timed out).",
            ["workflow", "step", "outcome"],
            qs.annotate(outcome=_outcome("end_type")),
            DURATION_BUCKETS,
            seconds=True,
        )

    def step_attempts(self) -> Metric:
        """The attempt number at which a step succeeded or failed for good."""
        qs = Event.objects.filter(
            type__in=["step_succeeded", "step_failed"], attempt__gte=1
        ).annotate(workflow=F("instance__workflow"), value=F("attempt"))
        return histogram(
            "signoff_step_attempts",
            "Attempts a step took until it succeeded or failed for good.",
            ["workflow", "step", "outcome"],
            qs.annotate(outcome=_outcome("type")),
            ATTEMPT_BUCKETS,
            seconds=False,
        )

    def doorbell_lag(self) -> Metric:
        """From ``step_scheduled`` (the doorbell rings after that commit) to ``step_started``
        (a worker claimed the attempt): broker and worker latency, and lost doorbells."""
        scheduled = Event.objects.filter(
            instance_id=OuterRef("instance_id"),
            step=OuterRef("step"),
            attempt=OuterRef("attempt"),
            seq__lt=OuterRef("seq"),
            type="step_scheduled",
        ).order_by("-seq")
        qs = (
            Event.objects.filter(type="step_started")
            .annotate(
                scheduled_at=Subquery(scheduled.values("at")[:1]),
                workflow=F("instance__workflow"),
            )
            .filter(scheduled_at__isnull=False)
            .annotate(value=duration("at", "scheduled_at"))
        )
        return histogram(
            "signoff_doorbell_lag_seconds",
            "Time from a step being scheduled to a worker claiming it.",
            ["workflow"],
            qs,
            LAG_BUCKETS,
            seconds=True,
        )

    def events(self) -> Iterator[Metric]:
        events = CounterMetricFamily("signoff_events", "Events written, by type.", labels=["type"])
        swept = CounterMetricFamily(
            "signoff_sweeper_items",
            "State changes made by sweepers (timeouts, deadlines, reminders, escalations, "
            "expiry), by event type. Doorbells rung again write no event.",
            labels=["type"],
        )
        rows = (
            Event.objects.values("type")
            .annotate(n=Count("pk"), s=Count("pk", filter=Q(actor="sweeper")))
            .order_by("type")
        )
        for row in rows:
            events.add_metric([row["type"]], row["n"])
            if row["s"]:
                swept.add_metric([row["type"]], row["s"])
        yield events
        yield swept

    def sweepers(self) -> Iterator[Metric]:
        from django_celery_beat.models import PeriodicTask

        from .periodic import wanted_periodic_tasks

        runs = CounterMetricFamily(
            "signoff_sweeper_runs",
            "Sweeper runs sent by beat (django-celery-beat's total_run_count).",
            labels=["task"],
        )
        last = GaugeMetricFamily(
            "signoff_sweeper_last_run_timestamp_seconds",
            "When beat last sent each sweeper (Unix time).",
            labels=["task"],
        )
        wanted = [task for task, _ in wanted_periodic_tasks()]
        found = {
            row["task"]: row
            for row in PeriodicTask.objects.filter(task__in=wanted)
            .values("task")
            .annotate(n=Sum("total_run_count"), at=Max("last_run_at"), first=Min("id"))
            .order_by()
        }
        for task in sorted(wanted):
            row = found.get(task)
            runs.add_metric([task], float(row["n"] or 0) if row else 0.0)
            if row and row["at"]:
                last.add_metric([task], row["at"].timestamp())
        yield runs
        yield last


collector_registry = CollectorRegistry(auto_describe=False)
collector_registry.register(SignoffCollector())

_cache_lock = threading.Lock()
_cache: dict[str, Any] = {"at": 0.0, "body": b""}


def render_metrics() -> bytes:
    """The exposition text; kept for ``SIGNOFF_METRICS_CACHE_SECONDS`` (0: never)."""
    ttl = float(getattr(settings, "SIGNOFF_METRICS_CACHE_SECONDS", 0) or 0)
    if ttl <= 0:
        return generate_latest(collector_registry)
    with _cache_lock:
        if time.monotonic() - _cache["at"] > ttl:
            _cache["body"] = generate_latest(collector_registry)
            _cache["at"] = time.monotonic()
        return _cache["body"]


# -- access ------------------------------------------------------------------------------------


def _networks(value: str | Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        item = item.strip()
        if item:
            networks.append(ipaddress.ip_network(item, strict=False))
    return networks


def metrics_allowed(request: HttpRequest) -> bool:
    """A valid ``Authorization: Bearer <SIGNOFF_METRICS_TOKEN>``, or a client address in
    ``SIGNOFF_METRICS_ALLOWED_IPS`` (REMOTE_ADDR: behind a proxy, use the token)."""
    token = getattr(settings, "SIGNOFF_METRICS_TOKEN", "") or ""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, given = header.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
        return True
    allowed = getattr(settings, "SIGNOFF_METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in _networks(allowed))


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not metrics_allowed(request):
        if getattr(settings, "SIGNOFF_METRICS_TOKEN", ""):
            response = HttpResponse("A bearer token is required.\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="signoff-metrics"'
            return response
        return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
    response = HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
