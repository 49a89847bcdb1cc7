"""The inbox: a thin HTML layer over ``approvals.selectors`` and ``approvals.services``.

Every decision goes through :func:`approvals.services.approval_decide`; business errors become
messages here, once (STYLE trait 7). Lists use keyset pagination and a capped count so the
number and cost of queries do not grow with the data.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from orchestration import sealing
from orchestration.definitions import registry
from orchestration.errors import InvalidInput, SignoffError
from orchestration.middleware import accepts_uploads
from orchestration.models import Event

from . import comments, context, policy, search, selectors, services
from .forms import (
    BULK_LIMIT,
    PAGE_SIZE,
    SORT_CHOICES,
    STATE_CHOICES,
    BulkDecisionForm,
    CommentForm,
    DecisionForm,
    DelegationForm,
    InboxFilterForm,
    ReviseForm,
    WithdrawForm,
)
from .models import ApprovalRequest, Delegation, Outcome, RequestState

User = get_user_model()
COUNT_CAP = 99  # the navigation shows "99+" beyond this: counting stops at 100 rows
HISTORY_LIMIT = 200  # events shown on the detail page (the latest ones)
REVISE_LIMIT = 20  # requests listed under "Revise and resubmit" at the top of the inbox

LISTS = {
    "pending": selectors.decidable_by,
    "decided": selectors.decided_by,
    "all": selectors.visible_to,
}


# -- counts -------------------------------------------------------------------------------------


def pending_count(request: HttpRequest, pending: QuerySet[ApprovalRequest] | None = None) -> str:
    """The user's pending count for the navigation, capped ("99+"); one cheap query, cached
    on the request. ``pending`` reuses a ``decidable_by`` query the view already built."""
    cached = getattr(request, "_inbox_pending_count", None)
    if cached is None:
        if pending is None:
            pending = selectors.decidable_by(request.user)
        found = pending.values("pk")[: COUNT_CAP + 1].count()
        cached = f"{COUNT_CAP}+" if found > COUNT_CAP else str(found)
        request._inbox_pending_count = cached
    return cached


# -- helpers ------------------------------------------------------------------------------------


def _list_url(filters: dict[str, str], **changes: str) -> str:
    params = {**filters, "after": "", "before": "", **changes}
    defaults = {"state": "pending", "sort": "newest"}
    query = {k: v for k, v in params.items() if v and defaults.get(k) != v}
    url = reverse("inbox:list")
    return f"{url}?{urlencode(query)}" if query else url


def _safe_next(request: HttpRequest, candidate: str | None) -> str:
    """``candidate`` if it is a URL of the inbox on this site (the list with its query string,
    as the bulk form and the keyboard's decision dialog post it), else the list. Django's
    check also refuses URLs over 2048 characters."""
    fallback = reverse("inbox:list")
    if (
        candidate
        and candidate.startswith(fallback)
        and not _climbs(candidate)
        and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
    ):
        return candidate
    return fallback


def _climbs(url: str) -> bool:
    """Whether the path has a dot segment ("/inbox/../admin/"; browsers also read "%2e" as a
    dot and a backslash as a slash), which would lead out of the inbox."""
    path = unquote(urlsplit(url).path).replace("\\", "/")
    return any(segment in (".", "..") for segment in path.split("/"))


def _refusal(exc: SignoffError) -> str:
    return f"Your decision was not recorded: {exc.message}."


def _label(pk: int, title: str | None) -> str:
    return f"#{pk} “{title}”" if title else f"#{pk}"


def _sent_back_by(decisions: list[Any]) -> str:
    sent = [d for d in decisions if d.outcome == Outcome.REQUEST_CHANGES]
    return sent[-1].decided_by.get_username() if sent else "an approver"


def _why_not(
    approval: ApprovalRequest,
    user: Any,
    decisions: list[Any],
    claim: selectors.ClaimSummary | None = None,
) -> str:
    """Why the user sees no decision buttons on a request."""
    if claim is not None and claim.blocks and approval.state == RequestState.PENDING:
        return f"{claim.message}: you can decide once it is released, taken over or expired."
    by = _sent_back_by(decisions)
    answered = approval.answered_by.get_username() if approval.answered_by_id else "the requester"
    if approval.state == RequestState.CHANGES_REQUESTED:
        return f"Changes were requested by {by}; waiting for the requester to revise and resubmit."
    if approval.state == RequestState.RESUBMITTED:
        return (
            f"Round {approval.round} was sent back for changes by {by}; {answered} revised and "
            f"resubmitted it as round {approval.round + 1}."
        )
    if approval.state == RequestState.WITHDRAWN:
        return f"Sent back for changes by {by}; {answered} withdrew the request."
    if approval.state != RequestState.PENDING:
        deciders = ", ".join(
            d.decided_by.get_username() for d in decisions if approval.state.startswith(d.outcome)
        )
        by = f" by {deciders}" if deciders else ""
        return f"This request was {approval.state}{by}."
    mine = [d for d in decisions if d.decided_by_id == user.pk]
    if mine:
        verb = "approved" if mine[-1].outcome == Outcome.APPROVE else "rejected"
        return f"You {verb} this request; it is waiting for other decisions."
    if approval.requester_id == user.pk and not approval.allow_self_approval:
        return "This is your own request: someone else decides it."
    return "You are not an assignee of this request."


# -- the list -----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "HEAD"])
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
            "filter_error": exc.message,
        }
        return render(request, "inbox/list.html", context, status=400)
    qs = pending if filters["state"] == "pending" else LISTS[filters["state"]](request.user)
    now = timezone.now()
    qs = search.apply(qs, found, now)
    qs = qs.select_related("requester", "claimed_by").prefetch_related(
        "assignee_groups", Prefetch("assignee_users", queryset=User.objects.only("username"))
    )
    columns = search.columns_for(registry.all(), found.workflow, found.step)
    sort = search.sort_for(filters["sort"], columns)
    filters["sort"] = sort.name
    page = search.paginate(qs, sort, filters["after"], filters["before"], PAGE_SIZE)
    for row in page.rows:
        row.overdue = bool(row.state == RequestState.PENDING and row.due_at and row.due_at < now)
        row.claim_holder = selectors.claim_holder_name(row, now)
        row.claim_mine = row.claim_holder is not None and row.claimed_by_id == request.user.pk
        # A request someone else claimed is not offered for a bulk decision.
        row.selectable = row.state == RequestState.PENDING and (
            row.claim_holder is None or row.claim_mine
        )
        values = row.columns if isinstance(row.columns, dict) else {}
        row.column_values = [(c.label, values.get(c.column_key)) for c in columns]
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
            (up, f"{column.label}, low to high", _list_url(filters, sort=up)),
            (f"-{up}", f"{column.label}, high to low", _list_url(filters, sort=f"-{up}")),
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


# -- one request --------------------------------------------------------------------------------


def _render_detail(
    request: HttpRequest,
    approval: ApprovalRequest,
    form: DecisionForm,
    *,
    status: int = 200,
    comment_form: CommentForm | None = None,
) -> HttpResponse:
    # An assignee sees what the step shows (``show=`` fields, masked where sealed or secret-
    # looking) and the decisions on the whole instance; of the instance only its steps and
    # the history's outline (what happened, when, by whom), never its input or event data
    # (the instance's status page shows more, read-only and masked).
    instance = approval.instance
    decisions = list(approval.decisions.select_related("decided_by", "assignee", "via_group"))
    events = list(
        Event.objects.filter(instance_id=instance.pk)
        .order_by("-seq")
        .only("seq", "type", "step", "actor", "at")[:HISTORY_LIMIT]
    )
    events.reverse()
    fields = [
        {"label": item.get("label"), "value": sealing.masked(item.get("value"))}
        for item in approval.fields or []
        if isinstance(item, dict)
    ]
    pending = selectors.decidable_by(request.user)
    may_decide = approval.state == RequestState.PENDING and pending.filter(pk=approval.pk).exists()
    claim = selectors.claim_summary(request.user, approval, may_decide=may_decide)
    can_decide = may_decide and not claim.blocks
    now = timezone.now()
    user = request.user
    context = {
        # send back for changes: the earlier rounds (two queries however many), whether to
        # offer "Request changes" (the policy answers again when it is used) and the
        # requester's way to revise
        "rounds": _rounds(approval),
        "can_request_changes": can_decide and approval.can_be_sent_back,
        "can_revise": approval.state == RequestState.CHANGES_REQUESTED
        and instance.state == "running"
        and user.pk in (approval.requester_id, instance.started_by_id),
        "next_round": _next_round(approval),
        "approval": approval,
        "fields": fields,
        "instance": instance,
        "steps": list(instance.steps.order_by("position")),
        "assignee_users": [u.get_username() for u in approval.assignee_users.all()],
        "assignee_groups": [g.name for g in approval.assignee_groups.all()],
        "decisions": decisions,
        "events": events,
        "events_hidden": max(instance.last_seq - len(events), 0),
        "can_decide": can_decide,
        "why_not": ""
        if can_decide
        else _why_not(approval, request.user, decisions, claim if may_decide else None),
        "claim": claim,
        "overdue": bool(
            approval.state == RequestState.PENDING and approval.due_at and approval.due_at < now
        ),
        "form": form,
        "now": now,
        "instance_url": f"/instances/{instance.pk}/",
        "pending_count": pending_count(request, pending),
        "timers": selectors.upcoming_timers(approval),
        **_context_and_comments(request, approval, comment_form),
    }
    return render(request, "inbox/detail.html", context, status=status)


def _rounds(approval: ApprovalRequest) -> list[dict[str, Any]]:
    rounds = []
    for earlier in services.earlier_rounds(approval):
        decisions = list(earlier.decisions.all())
        sent = [d for d in decisions if d.outcome == Outcome.REQUEST_CHANGES]
        rounds.append(
            {"request": earlier, "decisions": decisions, "sent_back": sent[-1] if sent else None}
        )
    return rounds


def _next_round(approval: ApprovalRequest) -> int | None:
    if approval.state != RequestState.RESUBMITTED:
        return None
    return (
        ApprovalRequest.objects.filter(step_run_id=approval.step_run_id, round=approval.round + 1)
        .values_list("pk", flat=True)
        .first()
    )


def _context_and_comments(
    request: HttpRequest, approval: ApprovalRequest, comment_form: CommentForm | None
) -> dict[str, Any]:
    """The earlier decisions on the instance and the step's thread (issue 12): four queries
    whatever their number."""
    thread, thread_more = comments.thread_for_page(approval)
    try:
        policy.authorize(
            policy.Act.COMMENT, user=request.user, request=approval, instance=approval.instance
        )
        can_comment, why_no_comment = True, ""
    except SignoffError as exc:
        can_comment, why_no_comment = False, exc.message
    return {
        "decision_lines": context.decision_lines(approval),
        "thread": thread,
        "thread_more": thread_more,
        "can_comment": can_comment,
        "why_no_comment": why_no_comment,
        "comment_form": comment_form or CommentForm(),
        "comment_max": comments.MAX_BODY,
    }


def _visible_or_404(request: HttpRequest, pk: int) -> ApprovalRequest:
    approval = selectors.request_for(request.user, pk) if pk < 2**63 else None
    if approval is None:
        raise Http404("No such request in your inbox.")
    return approval


@login_required
@require_http_methods(["GET", "HEAD"])
def inbox_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _render_detail(request, _visible_or_404(request, pk), DecisionForm())


@login_required
@require_POST
def inbox_decide(request: HttpRequest, pk: int) -> HttpResponse:
    """Decide one request. Success: back to the list with a message, or to the inbox URL
    posted as ``next`` (the filtered page a keyboard decision came from; anything else falls
    back to the list). A refusal re-renders the page with the reason and the service's status
    (403, 409, 400); nothing is written."""
    form = DecisionForm(request.POST)
    if not form.is_valid():
        approval = _visible_or_404(request, pk)
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"Your decision was not recorded: {error}")
        return _render_detail(request, approval, form, status=400)
    outcome = form.cleaned_data["outcome"]
    try:
        if outcome == Outcome.REQUEST_CHANGES:
            decision = services.approval_request_changes(
                request_id=pk, user=request.user, comment=form.cleaned_data["comment"]
            )
        else:
            decision = services.approval_decide(
                request_id=pk,
                user=request.user,
                outcome=outcome,
                comment=form.cleaned_data["comment"],
                channel="web",
            )
    except SignoffError as exc:
        approval = selectors.request_for(request.user, pk) if pk < 2**63 else None
        if approval is None:
            if exc.status == 404:
                raise Http404("No such request in your inbox.") from None
            return render(
                request,
                "inbox/refused.html",
                {"message": _refusal(exc), "pending_count": pending_count(request)},
                status=exc.status,
            )
        messages.error(request, _refusal(exc))
        return _render_detail(request, approval, form, status=exc.status)
    approval = decision.request
    verb = "Approved" if outcome == Outcome.APPROVE else "Rejected"
    if outcome == Outcome.REQUEST_CHANGES:
        who = approval.requester.get_username() if approval.requester_id else "the requester"
        messages.success(request, f"Sent “{approval.title}” back to {who} for changes.")
    elif approval.state == RequestState.PENDING:
        noun = "approval" if outcome == Outcome.APPROVE else "rejection"
        messages.success(
            request,
            f"Your {noun} of “{approval.title}” was recorded; "
            "the request is waiting for other decisions.",
        )
    else:
        messages.success(request, f"{verb} “{approval.title}”.")
    return redirect(_safe_next(request, request.POST.get("next")))


@accepts_uploads
@login_required
@require_POST
def inbox_comment(request: HttpRequest, pk: int) -> HttpResponse:
    """Post a comment on a request's thread. Success: back to the request's page, at the
    comment. A refusal re-renders the page with the reason and the service's status (400,
    403, 409); a request the user cannot see is a 404. Nothing is written on a refusal."""
    form = CommentForm(request.POST, request.FILES)
    approval = _visible_or_404(request, pk)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"Your comment was not posted: {error}")
        return _render_detail(request, approval, DecisionForm(), status=400, comment_form=form)
    try:
        posted = comments.comment_post(
            request_id=pk,
            user=request.user,
            body=form.cleaned_data["body"],
            channel="web",
            idempotency_key=form.cleaned_data["key"],
            files=request.FILES.getlist("files"),
        )
    except SignoffError as exc:
        if exc.status == 404:
            raise Http404("No such request in your inbox.") from None
        messages.error(request, f"Your comment was not posted: {exc.message}.")
        return _render_detail(
            request, approval, DecisionForm(), status=exc.status, comment_form=form
        )
    if posted.created:
        messages.success(request, "Your comment was posted.")
    else:
        messages.info(request, "Your comment was already posted.")
    return redirect(f"{reverse('inbox:detail', args=[pk])}#comment-{posted.comment.pk}")


@login_required
@require_POST
def inbox_bulk(request: HttpRequest) -> HttpResponse:
    """Decide several requests with one comment, each through ``approval_decide`` in its own
    transaction; the messages say which succeeded and which were refused and why."""
    form = BulkDecisionForm(request.POST)
    next_url = _safe_next(request, request.POST.get("next"))
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
            refused.append(f"{label}: {exc.message}")
            kept.append(pk)
        else:
            done.append(label)
    verb = "Approved" if outcome == Outcome.APPROVE else "Rejected"
    if done:
        messages.success(request, f"{verb} {len(done)}: {'; '.join(done)}.")
    if refused:
        messages.error(request, f"Refused {len(refused)}: {'; '.join(refused)}.")
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


# -- revise and resubmit ------------------------------------------------------------------------


def _answer_refused(request: HttpRequest, exc: SignoffError) -> HttpResponse:
    if exc.status == 404:
        raise Http404("No such request in your inbox.")
    return render(
        request,
        "inbox/refused.html",
        {
            "message": f"Nothing was changed: {exc.message}.",
            "pending_count": pending_count(request),
        },
        status=exc.status,
    )


def _field_errors(form: ReviseForm, exc: SignoffError) -> None:
    """Put the service's input errors ("amount: -5 is less than the minimum of 0") on the
    fields they name, the rest on the form."""
    problems = (exc.errors or {}).get("input") if isinstance(exc.errors, dict) else None
    for problem in problems or [exc.message]:
        name, _, rest = str(problem).partition(": ")
        field = name.split("/", 1)[0]
        if rest and field in form.fields:
            form.add_error(field, rest)
        else:
            form.add_error(None, str(problem))


@accepts_uploads
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def inbox_revise(request: HttpRequest, pk: int) -> HttpResponse:
    """The requester's "Revise and resubmit" page of a request sent back for changes: the
    revisable fields prefilled with the current input; POST resubmits (the next round) through
    :func:`approvals.services.approval_resubmit`. Refused (the policy's act ``resubmit``, asked
    here to show the page and again under the lock): a page saying why, nothing changed."""
    approval = _visible_or_404(request, pk)
    try:
        policy.authorize(policy.Act.RESUBMIT, user=request.user, request=approval)
    except SignoffError as exc:
        return _answer_refused(request, exc)
    status = 200
    if request.method == "POST":
        form = ReviseForm(approval, request.POST)
        if form.is_valid():
            try:
                new = services.approval_resubmit(
                    request_id=pk,
                    user=request.user,
                    changes=form.changes(),
                    channel="web",
                    files=request.FILES.getlist("files"),
                )
            except SignoffError as exc:
                if exc.status != 400:
                    return _answer_refused(request, exc)
                _field_errors(form, exc)
                status = 400
            else:
                messages.success(
                    request, f"Resubmitted “{new.title}”: round {new.round} waits for a decision."
                )
                return redirect("inbox:detail", pk=new.pk)
        else:
            status = 400
    else:
        form = ReviseForm(approval)
    decisions = list(approval.decisions.select_related("decided_by"))
    sent = [d for d in decisions if d.outcome == Outcome.REQUEST_CHANGES]
    context = {
        "approval": approval,
        "form": form,
        "sent_back": sent[-1] if sent else None,
        "withdraw_form": WithdrawForm(),
        "pending_count": pending_count(request),
    }
    return render(request, "inbox/revise.html", context, status=status)


@login_required
@require_POST
def inbox_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    """Withdraw a request sent back for changes: the workflow instance is cancelled."""
    form = WithdrawForm(request.POST)
    if not form.is_valid():
        approval = _visible_or_404(request, pk)
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"Not withdrawn: {error}")
        return redirect("inbox:revise", pk=approval.pk)
    try:
        approval = services.approval_withdraw(
            request_id=pk, user=request.user, reason=form.cleaned_data["reason"], channel="web"
        )
    except SignoffError as exc:
        return _answer_refused(request, exc)
    messages.success(request, f"Withdrew “{approval.title}”; the workflow was cancelled.")
    return redirect("inbox:list")


# -- out of office ------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def delegation_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    status = 200
    if request.method == "POST":
        form = DelegationForm(request.POST)
        if form.is_valid():
            try:
                created = services.delegation_create(
                    user=user,
                    delegate=form.cleaned_data["delegate"],
                    starts_at=form.cleaned_data["starts_at"],
                    ends_at=form.cleaned_data["ends_at"],
                )
            except SignoffError as exc:
                messages.error(request, f"Not saved: {exc.message}.")
                status = exc.status
            else:
                messages.success(
                    request,
                    f"{created.delegate.get_username()} can decide your requests from "
                    f"{timezone.localtime(created.starts_at):%Y-%m-%d %H:%M} to "
                    f"{timezone.localtime(created.ends_at):%Y-%m-%d %H:%M}.",
                )
                return redirect("inbox:delegation")
        else:
            status = 400
    else:
        form = DelegationForm()
    now = timezone.now()
    given = list(
        Delegation.objects.filter(user=user, ends_at__gt=now).select_related("delegate")[:50]
    )
    past = list(
        Delegation.objects.filter(user=user, ends_at__lte=now)
        .select_related("delegate")
        .order_by("-ends_at")[:10]
    )
    received = list(
        Delegation.objects.filter(delegate=user, ends_at__gt=now).select_related("user")[:50]
    )
    context = {
        "form": form,
        "given": given,
        "past": past,
        "received": received,
        "now": now,
        "tz": timezone.get_current_timezone_name(),
        "pending_count": pending_count(request),
    }
    return render(request, "inbox/delegation.html", context, status=status)


@login_required
@require_POST
def delegation_stop(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        services.delegation_end(delegation_id=pk, user=request.user)
    except SignoffError as exc:
        if exc.status == 404:
            raise Http404("No such delegation.") from None
        messages.error(request, f"Not ended: {exc.message}.")
    else:
        messages.success(request, "Delegation ended.")
    return redirect("inbox:delegation")
