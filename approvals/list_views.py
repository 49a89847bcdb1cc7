"""The inbox list (``/inbox/``): a tab (pending, decided, all), text search and filters, an
order, one keyset page — and the bulk decision posted from it. A thin HTML layer over
``approvals.selectors``, ``approvals.search`` and ``approvals.services``; business errors
become messages here, once (STYLE trait 7). Keyset pagination and a capped count keep the
number and cost of queries flat whatever the data."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import dateformat, timezone
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from orchestration.definitions import registry
from orchestration.errors import InvalidInput, SignoffError
from orchestration.replica import replica_reads

from . import search, selectors, services
from .forms import (
    BULK_LIMIT,
    PAGE_SIZE,
    SORT_CHOICES,
    STATE_CHOICES,
    BulkDecisionForm,
    InboxFilterForm,
)
from .locale import why
from .models import ApprovalRequest, Outcome, RequestState
from .navigation import COUNT_CAP, pending_count, remember_pending_count, safe_next
from .templatetags.inbox import ago

User = get_user_model()
REVISE_LIMIT = 20  # requests listed under "Revise and resubmit" at the top of the inbox

LISTS = {
    "pending": selectors.decidable_by,
    "decided": selectors.decided_by,
    "all": selectors.visible_to,
}


def _list_url(filters: dict[str, str], **changes: str) -> str:
    params = {**filters, "after": "", "before": "", **changes}
    defaults = {"state": "pending", "sort": "newest"}
    query = {k: v for k, v in params.items() if v and defaults.get(k) != v}
    url = reverse("inbox:list")
    return f"{url}?{urlencode(query)}" if query else url


def _label(pk: int, title: str | None) -> str:
    return f"#{pk} “{title}”" if title else f"#{pk}"


@login_required
@require_http_methods(["GET", "HEAD"])
@replica_reads
def inbox_list(request: HttpRequest) -> HttpResponse:
    """The list: a tab (pending, decided, all), text search and filters, an order (newest,
    due, or a column), one keyset page. Wrong filters answer 400 with the reason and the form
    as typed; a wrong tab, order or cursor falls back to the default."""
    form = InboxFilterForm(request.GET)
    filters = form.values()
    pending = selectors.decidable_by(request.user)
    try:
        params = request.GET.copy()
        params["workflow"] = filters["workflow"]  # an unknown workflow means every workflow
        found = search.parse_filters(params, search="q")
    except InvalidInput as exc:
        context = {
            **_list_context(request, form, filters, pending, rows=[], columns=[]),
            "filter_error": why(exc),
        }
        return render(request, "inbox/list.html", context, status=400)
    qs = pending if filters["state"] == "pending" else LISTS[filters["state"]](request.user)
    now = timezone.now()
    qs = search.apply(qs, found, now).select_related("requester", "claimed_by")
    columns = search.columns_for(registry.all(), found.workflow, found.step)
    sort = search.sort_for(filters["sort"], columns)
    filters["sort"] = sort.name
    if (
        filters["state"] == "pending"
        and not found.any
        and sort.name == "newest"
        and not (filters["after"] or filters["before"])
    ):
        page = _first_pending_page(request, pending, qs)
    else:
        page = search.paginate(qs, sort, filters["after"], filters["before"], PAGE_SIZE)
    # The assignees' names for the whole page: one query, no model instances.
    selectors.attach_assignees(page.rows)
    list_url = reverse("inbox:list")
    for row in page.rows:
        names = getattr(row, selectors.ASSIGNEES)
        row.assigned_to = ", ".join([*names["groups"], *names["users"]])
        row.detail_url = f"{list_url}{row.pk}/"
        row.decide_url = f"{list_url}{row.pk}/decide/"
        row.overdue = bool(row.state == RequestState.PENDING and row.due_at and row.due_at < now)
        row.claim_holder = selectors.claim_holder_name(row, now)
        row.claim_mine = row.claim_holder is not None and row.claimed_by_id == request.user.pk
        # A request someone else claimed is not offered for a bulk decision.
        row.selectable = row.state == RequestState.PENDING and (
            row.claim_holder is None or row.claim_mine
        )
        values = row.columns if isinstance(row.columns, dict) else {}
        row.column_values = [(c.label, values.get(c.column_key)) for c in columns]
        _row_times(row, now)
    kept = request.session.pop(KEPT_SELECTION, None) or {"ids": [], "comment": ""}
    for row in page.rows:
        row.picked = row.selectable and str(row.pk) in kept["ids"]
    context = {
        **_list_context(request, form, filters, pending, rows=page.rows, columns=columns),
        "kept_comment": kept["comment"],
        "now": now,
        "next_url": _list_url(filters, after=page.next_cursor) if page.next_cursor else None,
        "prev_url": _list_url(filters, before=page.prev_cursor) if page.prev_cursor else None,
        "first_url": _list_url(filters) if page.prev_cursor else None,
        "filtered": found.any,
        "any_selectable": any(row.selectable for row in page.rows),
    }
    return render(request, "inbox/list.html", context)


STAMP = "Y-m-d H:i T"


def _row_times(row: ApprovalRequest, now: Any) -> None:
    """A row's times as the page shows them, formatted here once rather than through
    template filters (the same functions the ``date``, ``ago``, ``timesince`` and
    ``timeuntil`` filters call; the template escapes them as it did the filters' output)."""
    created = timezone.localtime(row.created_at)
    row.created_title = dateformat.format(created, STAMP)
    row.created_ago = ago(row.created_at, now)
    row.due_text = ""
    if row.due_at and (row.overdue or row.state == RequestState.PENDING):
        due = timezone.localtime(row.due_at)
        row.due_iso = dateformat.format(due, "c")
        row.due_title = dateformat.format(due, STAMP)
        if row.overdue:
            row.due_text = _("due %(ago)s ago") % {"ago": timesince(row.due_at, now)}
        else:
            row.due_text = _("due in %(left)s") % {"left": timeuntil(row.due_at, now)}


def _first_pending_page(
    request: HttpRequest, pending: QuerySet[ApprovalRequest], qs: QuerySet[ApprovalRequest]
) -> search.Page:
    """The first page of the pending tab, unfiltered, newest first, with the navigation's
    capped count from the same walk: the ids of the first ``COUNT_CAP + 1`` decidable
    requests in the list's order (one walk of the pending index, which the count needed
    anyway) give both the count and the page, whose rows are then read by primary key. The
    same rows and cursors as :func:`approvals.search.paginate`, one index walk instead of
    two (bench/inbox.py: README, "Benchmarks")."""
    sort = search.Sort("newest")
    ids = list(pending.order_by(*sort.forward()).values_list("pk", flat=True)[: COUNT_CAP + 1])
    remember_pending_count(request, len(ids))
    shown = ids[:PAGE_SIZE]
    place = {pk: n for n, pk in enumerate(shown)}
    rows = sorted(qs.filter(pk__in=shown), key=lambda row: place[row.pk]) if shown else []
    more = len(ids) > PAGE_SIZE
    return search.Page(rows, sort.key(rows[-1]) if more and rows else None, None)


def _list_context(
    request: HttpRequest,
    form: InboxFilterForm,
    filters: dict[str, str],
    pending: QuerySet[ApprovalRequest],
    *,
    rows: list[ApprovalRequest],
    columns: list[Any],
) -> dict[str, Any]:
    """What the list page shows around its rows: the tabs, the filter form as typed, the
    orders (a column header sorts by it, a second click the other way)."""
    sorts = [(value, label, _list_url(filters, sort=value)) for value, label in SORT_CHOICES]
    headers = []
    for column in columns:
        up = f"col.{column.column_key}"
        flip = f"-{up}" if filters["sort"] == up else up
        direction = {up: "ascending", f"-{up}": "descending"}.get(filters["sort"], "")
        headers.append(
            {"label": column.label, "url": _list_url(filters, sort=flip), "sorted": direction}
        )
        sorts += [
            (
                up,
                _("%(label)s, low to high") % {"label": column.label},
                _list_url(filters, sort=up),
            ),
            (
                f"-{up}",
                _("%(label)s, high to low") % {"label": column.label},
                _list_url(filters, sort=f"-{up}"),
            ),
        ]
    return {
        "filters": filters,
        "workflows": form.fields["workflow"].choices,
        "steps": search.step_names(registry.all(), filters["workflow"]),
        "to_revise": selectors.to_revise(request.user, limit=REVISE_LIMIT),
        "rows": rows,
        "columns": headers,
        "pending_count": pending_count(request, pending),
        "tabs": [(value, label, _list_url(filters, state=value)) for value, label in STATE_CHOICES],
        "sorts": sorts,
        "current_url": _list_url(filters, after=filters["after"], before=filters["before"]),
    }


@login_required
@require_POST
def inbox_bulk(request: HttpRequest) -> HttpResponse:
    """Decide several requests with one comment, each through ``approval_decide`` in its own
    transaction; the messages say which succeeded and which were refused and why."""
    form = BulkDecisionForm(request.POST)
    next_url = safe_next(request, request.POST.get("next"))
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        _keep_selection(request, request.POST.getlist("ids"), request.POST.get("comment", ""))
        return redirect(next_url)
    ids = form.cleaned_data["ids"]
    outcome = form.cleaned_data["outcome"]
    titles = dict(selectors.visible_to(request.user).filter(pk__in=ids).values_list("pk", "title"))
    done: list[str] = []
    refused: list[str] = []
    kept: list[int] = []
    for pk in ids:
        label = _label(pk, titles.get(pk))
        try:
            services.approval_decide(
                request_id=pk,
                user=request.user,
                outcome=outcome,
                comment=form.cleaned_data["comment"],
                channel="web",
            )
        except SignoffError as exc:
            refused.append(f"{label}: {why(exc)}")
            kept.append(pk)
        else:
            done.append(label)
    if done:
        values = {"count": len(done), "items": "; ".join(done)}
        if outcome == Outcome.APPROVE:
            messages.success(request, _("Approved %(count)d: %(items)s.") % values)
        else:
            messages.success(request, _("Rejected %(count)d: %(items)s.") % values)
    if refused:
        values = {"count": len(refused), "items": "; ".join(refused)}
        messages.error(request, _("Refused %(count)d: %(items)s.") % values)
        _keep_selection(request, kept, form.cleaned_data["comment"])
    return redirect(next_url)


KEPT_SELECTION = "inbox_kept_selection"


def _keep_selection(request: HttpRequest, ids: list[Any], comment: str) -> None:
    """After a refusal the list comes back with the refused requests still ticked and the
    comment still typed (read once by ``inbox_list``), so adding the missing comment is all
    it takes to try again."""
    picked = [str(pk) for pk in ids if str(pk).isdigit()][:BULK_LIMIT]
    request.session[KEPT_SELECTION] = {
        "ids": picked,
        "comment": str(comment)[: services.MAX_COMMENT],
    }
