"""Reads of alerts for the API (the admin reads its own querysets)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from orchestration.errors import InvalidInput, NotAllowed

from ..models import Alert, AlertCondition, AlertState

VIEW_PERMISSION = "integrations.view_alert"


def may_see_alerts(user: Any) -> bool:
    """Alerts are operators' business: holders of ``integrations.view_alert`` (superusers)."""
    return bool(user.is_authenticated and user.is_active and user.has_perm(VIEW_PERMISSION))


def alert_list(
    *, user: Any, state: str | None = None, rule: str | None = None, condition: str | None = None
) -> QuerySet[Alert]:
    """Alerts, newest first, filtered; raises ``NotAllowed`` for a caller without the view
    permission and ``InvalidInput`` for a filter that names nothing."""
    if not may_see_alerts(user):
        raise NotAllowed("you may not read alerts (integrations.view_alert)")
    qs = Alert.objects.select_related("rule")
    if state:
        if state not in AlertState.values:
            raise InvalidInput(f"state must be one of {', '.join(AlertState.values)}")
        qs = qs.filter(state=state)
    if condition:
        if condition not in AlertCondition.values:
            raise InvalidInput(f"condition must be one of {', '.join(AlertCondition.values)}")
        qs = qs.filter(condition=condition)
    if rule:
        if not rule.isdigit() or len(rule) > 18:
            raise InvalidInput("rule must be a rule id (an integer)")
        qs = qs.filter(rule_id=int(rule))
    return qs
