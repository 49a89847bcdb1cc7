"""The outbox's family on ``/metrics``: outbound mails by delivery status. Registered with
:func:`orchestration.metrics.register_collector` from ``IntegrationsConfig.ready()``."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric

from .models import OutboundEmail


def email_metrics() -> Iterator[Metric]:
    """Outbound mails by status (zero for the usual statuses when there are none)."""
    family = GaugeMetricFamily(
        "signoff_outbound_emails", "Outbound emails by delivery status.", labels=["status"]
    )
    counts = dict.fromkeys(["queued", "sent", "failed"], 0)
    for row in OutboundEmail.objects.values("status").annotate(n=Count("pk")).order_by():
        counts[row["status"]] = row["n"]
    for status, n in sorted(counts.items()):
        family.add_metric([status], n)
    yield family
