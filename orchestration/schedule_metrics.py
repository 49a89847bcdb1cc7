"""Schedule families on ``/metrics`` (registered with
:func:`orchestration.metrics.register_collector` when the app starts).

- ``signoff_schedules{state}``: schedules, active or paused;
- ``signoff_schedule_overdue_seconds``: how long the most overdue active schedule has been due
  (0 when none is): above a minute, the schedule sweeper is not running;
- ``signoff_schedule_fires_last_day{outcome}``: fire records of the last 24 hours by outcome
  (``missed`` and ``skipped_overlap`` are the ones to alert on).

Three queries per scrape, on the ``schedule_due`` and ``schedule_fire_at`` indexes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from .schedule_models import FireOutcome, Schedule, ScheduleFire


def schedule_metrics() -> Iterator[Metric]:
    now = timezone.now()
    schedules = GaugeMetricFamily(
        "signoff_schedules", "Workflow schedules, active or paused.", labels=["state"]
    )
    counts = dict(Schedule.objects.values_list("paused").annotate(n=Count("pk")).order_by())
    schedules.add_metric(["active"], float(counts.get(False, 0)))
    schedules.add_metric(["paused"], float(counts.get(True, 0)))
    yield schedules
    oldest = Schedule.objects.filter(
        paused=False, fire_due_at__isnull=False, fire_due_at__lte=now
    ).aggregate(at=Min("fire_due_at"))["at"]
    yield GaugeMetricFamily(
        "signoff_schedule_overdue_seconds",
        "How long the most overdue active schedule has been due (0: none is).",
        value=(now - oldest).total_seconds() if oldest else 0.0,
    )
    fires = GaugeMetricFamily(
        "signoff_schedule_fires_last_day",
        "Schedule fires recorded in the last 24 hours, by outcome.",
        labels=["outcome"],
    )
    by_outcome = dict(
        ScheduleFire.objects.filter(at__gte=now - timedelta(days=1))
        .values_list("outcome")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for outcome in FireOutcome.values:
        fires.add_metric([outcome], float(by_outcome.get(outcome, 0)))
    yield fires
