"""When an approval's timers fire: due, reminders and escalations, counted in business time
(of the step's named calendar, or the default one) when the step says so. Reads only; the
kind (:mod:`approvals.kind`), the sweepers and the request page's "what happens next" all
count the same way."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from orchestration.calendar import add_duration

from .definitions import ApprovalStep
from .models import ApprovalRequest


def timer_at(spec: ApprovalStep, start: datetime, duration: timedelta | None) -> datetime | None:
    """When a timer of ``spec`` set at ``start`` fires (business time if the step says so).
    ``SIGNOFF_DEMO_TIME_FACTOR`` compresses wall-clock timers for demos."""
    if duration is None:
        return None
    if not spec.in_business_time and settings.SIGNOFF_DEMO_TIME_FACTOR > 1:
        duration = duration / settings.SIGNOFF_DEMO_TIME_FACTOR
    return add_duration(
        start, duration, business=spec.in_business_time, calendar=getattr(spec, "calendar", None)
    )


def before_due(request: ApprovalRequest, moment: datetime | None) -> datetime | None:
    """``moment``, unless the request is due by then (a reminder after the due time is none)."""
    if moment is None or (request.due_at is not None and moment >= request.due_at):
        return None
    return moment
