"""The integrations' families on ``/metrics``: outbound mails by delivery status, firing
alerts by condition. Registered with
:func:`orchestration.metrics.register_collector` from ``IntegrationsConfig.ready()``."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric

from .models import Alert, AlertCondition, OutboundEmail


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


def alert_metrics() -> Iterator[Metric]:
    """Firing alerts by condition (zero for each condition with none)."""
    family = GaugeMetricFamily(
        "signoff_alerts_firing", "Alerts firing now, by condition.", labels=["condition"]
    )
    counts = dict.fromkeys(AlertCondition.values, 0)
    for row in (
        Alert.objects.filter(state="firing").values("condition").annotate(n=Count("pk")).order_by()
    ):
        counts[row["condition"]] = row["n"]
    for condition, n in sorted(counts.items()):
        family.add_metric([condition], n)
    yield family
