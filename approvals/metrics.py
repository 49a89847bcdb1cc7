"""The approvals' families on ``/metrics``: how long requests wait for people, and how many
wait now. Registered with :func:`orchestration.metrics.register_collector` from
``ApprovalsConfig.ready()``; computed from the database at scrape time, one query each."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from orchestration.metrics import duration, histogram

from .models import ApprovalRequest, RequestState

WAIT_BUCKETS = (
    60,
    300,
    900,
    1800,
    3600,
    4 * 3600,
    8 * 3600,
    86400,
    2 * 86400,
    3 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
)


def approval_metrics() -> Iterator[Metric]:
    """Time to resolution by workflow and result; pending requests and the oldest one's age."""
    qs = ApprovalRequest.objects.filter(resolved_at__isnull=False).annotate(
        value=duration("resolved_at", "created_at")
    )
    yield histogram(
        "signoff_approval_wait_seconds",
        "Time from an approval request to its resolution, by workflow and result.",
        ["workflow", "state"],
        qs,
        WAIT_BUCKETS,
        seconds=True,
    )
    pending = GaugeMetricFamily(
        "signoff_approvals_pending",
        "Approval requests waiting for people.",
        labels=["workflow"],
    )
    oldest = GaugeMetricFamily(
        "signoff_approval_oldest_pending_seconds",
        "Age of the oldest pending approval request.",
        labels=["workflow"],
    )
    now = timezone.now()
    for row in (
        ApprovalRequest.objects.filter(state=RequestState.PENDING)
        .values("workflow")
        .annotate(n=Count("pk"), first=Min("created_at"))
        .order_by("workflow")
    ):
        pending.add_metric([row["workflow"]], row["n"])
        oldest.add_metric([row["workflow"]], (now - row["first"]).total_seconds())
    yield pending
    yield oldest
