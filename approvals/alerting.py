"""The ``approval_overdue`` alert condition, registered with integrations' alert registry
(integrations never imports approvals): a pending request past its due time plus the rule's
grace fires; it recovers once the request is no longer pending (decided, expired, cancelled,
sent back)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from integrations.alerts.conditions import Finding, register_condition

from .models import ApprovalRequest, RequestState

PREFIX = "approval:"


def _subject(request_id: int) -> str:
    return f"{PREFIX}{request_id}"


def find_overdue(rule: Any, now: datetime, limit: int) -> list[Finding]:
    """Pending requests due before ``now - rule.overdue_grace``, oldest due first."""
    grace = rule.overdue_grace or timedelta(0)
    qs = ApprovalRequest.objects.filter(
        state=RequestState.PENDING, due_at__isnull=False, due_at__lt=now - grace
    )
    if rule.workflow:
        qs = qs.filter(workflow=rule.workflow)
    rows = qs.order_by("due_at").values_list(
        "pk", "instance_id", "workflow", "step_name", "business_key", "due_at"
    )[:limit]
    return [
        Finding(
            subject=_subject(pk),
            # The step's name, not the request's title: a title may quote sealed input.
            title=f"{workflow}: approval {step} overdue since {due:%Y-%m-%d %H:%M} UTC"
            + (f" ({key})" if key else ""),
            instance_id=str(instance_id),
            workflow=workflow,
            link=f"/admin/approvals/approvalrequest/{pk}/change/",
            details={"request": pk, "step": step, "due_at": due.isoformat()},
            since=due,
        )
        for pk, instance_id, workflow, step, key, due in rows
    ]


def recovered_overdue(rule: Any, subjects: list[str], now: datetime) -> set[str]:
    ids = {int(s.removeprefix(PREFIX)): s for s in subjects if s.startswith(PREFIX)}
    pending = set(
        ApprovalRequest.objects.filter(pk__in=list(ids), state=RequestState.PENDING).values_list(
            "pk", flat=True
        )
    )
    return {s for pk, s in ids.items() if pk not in pending}


def register() -> None:
    register_condition(
        "approval_overdue",
        label="approval overdue",
        find=find_overdue,
        recovered=recovered_overdue,
    )
