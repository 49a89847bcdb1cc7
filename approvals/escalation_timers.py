"""Keeping each pending request's :class:`~approvals.models.EscalationTimer` equal to its
``next_escalation_at``: every write of that column calls one of these in the same
transaction, and the escalation sweepers find due requests here.

A request that leaves ``pending`` without touching its timer (decided, cancelled, withdrawn,
reassigned away) keeps its timer row until it falls due; the next escalation sweep then
removes it (:func:`timers_remove_stale`), so stale rows cost one delete each, once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db.models import Exists, OuterRef

from .models import ApprovalRequest, EscalationTimer, RequestState


def timer_follow(request: ApprovalRequest) -> None:
    """Make ``request``'s timer row say what its ``next_escalation_at`` says (no row when it
    has none or is no longer pending). One statement, two when the row is new."""
    due = request.next_escalation_at if request.state == RequestState.PENDING else None
    if due is None:
        EscalationTimer.objects.filter(request_id=request.pk).delete()
    elif not EscalationTimer.objects.filter(request_id=request.pk).update(due_at=due):
        EscalationTimer.objects.create(request_id=request.pk, due_at=due)


def timer_start(request: ApprovalRequest) -> None:
    """The timer of a request just created (pending), if it escalates."""
    if request.next_escalation_at is not None:
        EscalationTimer.objects.create(request_id=request.pk, due_at=request.next_escalation_at)


def timers_clear(request_ids: Iterable[int]) -> None:
    EscalationTimer.objects.filter(request_id__in=list(request_ids)).delete()


def timers_remove_stale(now: datetime) -> int:
    """Remove the due timers of requests no longer pending; returns how many."""
    # NOT EXISTS per due timer (through the requests' primary key); an exclude() across the
    # relation would compare with every pending request.
    pending = ApprovalRequest.objects.filter(pk=OuterRef("request_id"), state=RequestState.PENDING)
    stale = EscalationTimer.objects.filter(due_at__lte=now).filter(~Exists(pending))
    return stale.delete()[0]


def due_rows(now: datetime, limit: int, excluded: Iterable[int] = ()) -> list[tuple[int, int]]:
    """``(request id, step run id)`` of pending requests whose escalation is due, soonest
    first, at most ``limit``, leaving out ``excluded``: a walk of the timers' index."""
    qs = EscalationTimer.objects.filter(due_at__lte=now, request__state=RequestState.PENDING)
    excluded = list(excluded)
    if excluded:
        qs = qs.exclude(request_id__in=excluded)
    return list(qs.order_by("due_at").values_list("request_id", "request__step_run_id")[:limit])
