"""The frame every approval-request sweeper runs its rows through (reminders, per-row
escalations, expiry, claims).

Due ids come from partial indexes (cost grows with due rows only); then one transaction per
request locks its instance with ``skip_locked`` (an instance another sweep or a decision holds
is left for the next run), locks the request, re-checks it under the lock (decided or handled
since we looked: left alone), acts, and flushes the journal. A failing row is logged and
isolated; the count of rows acted on is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import transaction

from orchestration import engine

from .definitions import ApprovalStep
from .models import ApprovalRequest, RequestState

log = logging.getLogger("signoff.sweepers")

# What a sweeper does to one locked, re-checked request; True when it acted.
RowAction = Callable[[engine.LockedInstance, ApprovalRequest, ApprovalStep | None], bool]


def due_rows(column: str, now: datetime, batch: int | None) -> list[tuple[int, int]]:
    """``(request id, step run id)`` of pending requests whose ``column`` is due, soonest
    first, at most ``batch`` (``SIGNOFF_SWEEP_BATCH`` by default)."""
    return list(
        ApprovalRequest.objects.filter(state=RequestState.PENDING, **{f"{column}__lte": now})
        .order_by(column)
        .values_list("pk", "step_run_id")[: batch or settings.SIGNOFF_SWEEP_BATCH]
    )


def each_row(
    name: str, rows: list[tuple[int, int]], act: RowAction, column: str, now: datetime
) -> int:
    """Run ``act`` on each of ``rows`` still pending with ``column`` due, one transaction
    each (module doc); returns how many it acted on."""
    done = 0
    for request_id, step_run_id in rows:
        try:
            with transaction.atomic():
                locked = engine.lock_instance(
                    step_run_id=step_run_id, actor="sweeper", skip_locked=True
                )
                if locked is None:
                    continue
                request = (
                    ApprovalRequest.objects.select_for_update(of=("self",), no_key=True)
                    .select_related("requester")
                    .get(pk=request_id)
                )
                due = getattr(request, column)
                if request.state != RequestState.PENDING or due is None or due > now:
                    continue  # decided or handled since we looked
                step = locked.step_by_id(step_run_id)
                spec = locked.definition.steps.get(step.name) if locked.definition else None
                if act(locked, request, spec if isinstance(spec, ApprovalStep) else None):
                    done += 1
                locked.journal.flush()
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("sweeper %s failed on approval request %s", name, request_id)
    if done:
        log.info("sweeper %s acted on %d approval requests", name, done)
    return done
