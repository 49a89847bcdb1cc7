"""What a decided approval step returns (its output): the decision, who, when, every decision
with its comment, and the earlier rounds of the step (sent back for changes, resubmitted).
Reads only; the deciding services, the expiry sweeper and the request pages build on it."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch

from .models import ApprovalRequest, Decision, Outcome, RequestState


def decision_item(d: Decision) -> dict[str, Any]:
    return {
        "user": d.decided_by.get_username(),
        "for": d.assignee.get_username() if d.assignee_id != d.decided_by_id else None,
        "outcome": d.outcome,
        "comment": d.comment,
        "channel": d.channel,
        "at": d.at.isoformat(),
    }


def earlier_rounds(request: ApprovalRequest) -> list[ApprovalRequest]:
    """The step's rounds before ``request``, oldest first, each with its decisions (two
    queries however many; none in round 1)."""
    if request.round <= 1:
        return []
    return list(
        ApprovalRequest.objects.filter(step_run_id=request.step_run_id, round__lt=request.round)
        .select_related("answered_by")
        .prefetch_related(
            Prefetch(
                "decisions",
                queryset=Decision.objects.select_related("decided_by", "assignee", "via_group"),
            )
        )
        .order_by("round")
    )


def round_summary(request: ApprovalRequest) -> dict[str, Any]:
    """One earlier round, for the step's output (``rounds``)."""
    decisions = list(request.decisions.all())
    sent_back = next((d for d in decisions if d.outcome == Outcome.REQUEST_CHANGES), None)
    return {
        "round": request.round,
        "state": request.state,
        "requested_at": request.created_at.isoformat(),
        "changes_requested_by": sent_back.decided_by.get_username() if sent_back else None,
        "comment": sent_back.comment if sent_back else "",
        "answered_by": request.answered_by.get_username() if request.answered_by_id else None,
        "answered_at": request.answered_at.isoformat() if request.answered_at else None,
        "decisions": [decision_item(d) for d in decisions],
    }


def request_outcome(request: ApprovalRequest, decisions: list[Decision]) -> dict[str, Any]:
    """The step's output: the decision, who, when, and every decision with its comment; the
    round it was decided in and the earlier rounds (sent back for changes, resubmitted)."""
    deciding = [
        d
        for d in decisions
        if d.outcome
        == (Outcome.APPROVE if request.state == RequestState.APPROVED else Outcome.REJECT)
    ]
    return {
        "decision": request.state,
        "decided_by": [d.decided_by.get_username() for d in deciding],
        "at": request.resolved_at.isoformat() if request.resolved_at else None,
        "comments": [d.comment for d in decisions if d.comment],
        "decisions": [decision_item(d) for d in decisions],
        "round": request.round,
        "rounds": [round_summary(r) for r in earlier_rounds(request)],
    }
