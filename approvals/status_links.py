"""Operator links on a status page's approval steps (reassign, decide on behalf), registered
with :func:`orchestration.operator_actions.register_step_links`: only the actions the decision
policy could allow this operator (it is asked again when one is used)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import reverse

from . import policy
from .models import ApprovalRequest, RequestState

LABELS = {"reassign": "Reassign…", "decide": "Decide on behalf…"}


def approval_step_links(request: HttpRequest, instance: Any) -> dict[int, list[tuple[str, str]]]:
    if not request.user.is_staff:
        return {}
    pending = ApprovalRequest.objects.filter(
        instance_id=instance.pk, state=RequestState.PENDING
    ).only("pk", "step_run_id", "state", "requester_id", "instance_id")
    links: dict[int, list[tuple[str, str]]] = {}
    for approval in pending:
        approval.instance = instance
        offered = policy.operator_actions(request.user, approval)
        links[approval.step_run_id] = [
            (label, reverse(f"admin:approvals_approvalrequest_{name}", args=[approval.pk]))
            for name, label in LABELS.items()
            if name in offered
        ]
    return links
