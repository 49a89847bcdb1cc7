"""“My requests”: every instance the signed-in user asked for, with who has it now.

The page lives in ``approvals`` rather than on the engine's side: most of what it shows — the
title, who has the request now (people, groups, a claim), its due time, the "Revise and
resubmit" block — is approvals data, and ``approvals`` may read the engine's instances while
the engine must not import ``approvals`` (DESIGN.md). An engine page would need a new batch
hook for all of that; here it is one selector per app: the engine's
``instances_started_by`` under ``approvals.selectors.my_requests``.

Query count per page, whatever the number of instances or requests: the page (1), the
current steps of its rows (1), their open approval requests with claimants (1), those
requests' assignees (1, only when there are some), and the revise list (1, +1 when it is not
empty) — besides the session, the user and the navigation's count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from orchestration.models import StepRun, StepState, WorkflowInstance

from . import selectors
from .context import step_label
from .forms import MyRequestsFilterForm
from .list_views import REVISE_LIMIT
from .models import ApprovalRequest, RequestState

PAGE_SIZE = 25
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# The step a row names as "current": in flight first, else where it stopped.
CURRENT_STEP_STATES = [
    StepState.RUNNING,
    StepState.WAITING,
    StepState.RETRYING,
    StepState.SCHEDULED,
    StepState.COMPENSATING,
    StepState.FAILED,
    StepState.TIMED_OUT,
]
# Requests that someone holds now: waiting for a decision, or sent back to the requester.
OPEN_REQUEST_STATES = [RequestState.PENDING, RequestState.CHANGES_REQUESTED]
STEP_WORDS = {
    StepState.RUNNING: "running",
    StepState.WAITING: "waiting",
    StepState.RETRYING: "retrying",
    StepState.SCHEDULED: "about to run",
    StepState.COMPENSATING: "undoing",
    StepState.FAILED: "failed",
    StepState.TIMED_OUT: "timed out",
}
# Columns of the rows: the JSON payloads (input, output, error) stay in the database.
ROW_FIELDS = ("id", "workflow", "version", "state", "business_key", "created_at", "updated_at")


# -- keyset pagination on (created_at, id), newest first -----------------------------------------


def _encode(row: WorkflowInstance) -> str:
    return f"{(row.created_at - EPOCH) // MICROSECOND}_{row.pk.hex}"


def _decode(cursor: str) -> tuple[datetime, uuid.UUID] | None:
    try:
        stamp, pk = cursor.split("_", 1)
        return EPOCH + int(stamp) * MICROSECOND, uuid.UUID(hex=pk)
    except (ValueError, OverflowError):
        return None


@dataclass
class Page:
    rows: list[WorkflowInstance]
    next_cursor: str | None
    prev_cursor: str | None


def paginate(qs: QuerySet[WorkflowInstance], after: str, before: str) -> Page:
    """One page in one query (PAGE_SIZE + 1 rows tell whether there is more); no COUNT. A
    cursor that does not parse, or points past the end, gives the first page."""
    if before and (cursor := _decode(before)):
        moment, pk = cursor
        newer = Q(created_at__gte=moment) & (Q(created_at__gt=moment) | Q(id__gt=pk))
        rows = list(qs.filter(newer).order_by("created_at", "id")[: PAGE_SIZE + 1])
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE][::-1]
        if rows:
            return Page(rows, _encode(rows[-1]), _encode(rows[0]) if more else None)
    elif after and (cursor := _decode(after)):
        moment, pk = cursor
        older = Q(created_at__lte=moment) & (Q(created_at__lt=moment) | Q(id__lt=pk))
        rows = list(qs.filter(older).order_by("-created_at", "-id")[: PAGE_SIZE + 1])
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        if rows:
            return Page(rows, _encode(rows[-1]) if more else None, _encode(rows[0]))
    rows = list(qs.order_by("-created_at", "-id")[: PAGE_SIZE + 1])
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return Page(rows, _encode(rows[-1]) if more else None, None)


# -- what each row shows ------------------------------------------------------------------------


def _annotate(rows: list[WorkflowInstance], user: Any, now: datetime) -> None:
    """Set on each row: ``title``, ``current_step`` (words), ``holders`` (people and groups),
    ``claimed_by``, ``due_at``, ``overdue`` and ``revise_url`` — in three queries for any page
    (steps, open requests, their assignees)."""
    ids = [row.pk for row in rows]
    steps: dict[uuid.UUID, StepRun] = {}
    requests: dict[uuid.UUID, ApprovalRequest] = {}
    titles: dict[uuid.UUID, str] = {}
    if ids:
        rank = {state: i for i, state in enumerate(CURRENT_STEP_STATES)}
        found = StepRun.objects.filter(instance_id__in=ids, state__in=CURRENT_STEP_STATES).only(
            "instance_id", "name", "kind", "state", "position"
        )
        for step in sorted(found, key=lambda s: (rank[s.state], s.position)):
            steps.setdefault(step.instance_id, step)
        # Every request of the page's instances, newest last: the title is the latest one's,
        # the open one (there is at most one per waiting step) says who has it.
        every = (
            ApprovalRequest.objects.filter(instance_id__in=ids)
            .select_related("claimed_by")
            .only(
                "instance_id",
                "title",
                "state",
                "due_at",
                "round",
                "requester_id",
                "claim_state",
                "claimed_by__username",
                "claimed_by__is_active",
                "claimed_at",
                "claim_active_at",
                "claim_expires_at",
                "claim_mode",
                "created_at",
            )
            .order_by("created_at", "id")
        )
        for request in every:
            titles[request.instance_id] = request.title
            if request.state in OPEN_REQUEST_STATES:
                requests[request.instance_id] = request
        waiting = [r for r in requests.values() if r.state == RequestState.PENDING]
        selectors.attach_assignees(waiting)
    for row in rows:
        step = steps.get(row.pk)
        request = requests.get(row.pk) if row.state == "running" else None
        row.title = titles.get(row.pk, "")
        row.current_step = step_label(step.name) if step else ""
        row.step_state = STEP_WORDS.get(step.state, step.state) if step else ""
        row.request = request
        row.holders = []
        row.claimed_by_name = None
        row.due_at = None
        row.overdue = False
        row.revise_url = None
        if request is None:
            continue
        if request.state == RequestState.CHANGES_REQUESTED:
            row.revise_url = reverse("inbox:revise", args=[request.pk])
            continue
        names = getattr(request, selectors.ASSIGNEES, {"users": [], "groups": []})
        row.holders = [*(f"group {g}" for g in names["groups"]), *names["users"]]
        row.claimed_by_name = selectors.claim_holder_name(request, now)
        row.due_at = request.due_at
        row.overdue = bool(request.due_at and request.due_at < now)


# -- the page -----------------------------------------------------------------------------------


def _list_url(filters: dict[str, str], **changes: str) -> str:
    params = {**filters, "after": "", "before": "", **changes}
    query = {k: v for k, v in params.items() if v}
    url = reverse("requests:list")
    return f"{url}?{urlencode(query)}" if query else url


@login_required
@require_http_methods(["GET", "HEAD"])
def my_requests(request: HttpRequest) -> HttpResponse:
    """The user's requests, newest first, with their revise-and-resubmit tasks at the top.
    Invalid filters (a search longer than the limit, NUL characters, an unknown state)
    answer 400 with the form's message and no list."""
    form = MyRequestsFilterForm(request.GET)
    now = timezone.now()
    context: dict[str, Any] = {
        "form": form,
        "now": now,
        "to_revise": selectors.to_revise(request.user, limit=REVISE_LIMIT),
        "rows": [],
        "filters": {"state": "", "q": ""},
        "filtered": bool(request.GET.get("state") or request.GET.get("q")),
        "states": MyRequestsFilterForm.base_fields["state"].choices,
    }
    if not form.is_valid():
        return render(request, "requests/list.html", context, status=400)
    filters = form.values()
    qs = selectors.my_requests(request.user, state=filters["state"], text=filters["q"])
    page = paginate(qs.only(*ROW_FIELDS), filters["after"], filters["before"])
    _annotate(page.rows, request.user, now)
    shown = {"state": filters["state"], "q": filters["q"]}
    context.update(
        {
            "filters": shown,
            "filtered": bool(filters["state"] or filters["q"]),
            "rows": page.rows,
            "next_url": _list_url(shown, after=page.next_cursor) if page.next_cursor else None,
            "prev_url": _list_url(shown, before=page.prev_cursor) if page.prev_cursor else None,
            "first_url": _list_url(shown) if page.prev_cursor else None,
        }
    )
    return render(request, "requests/list.html", context)
