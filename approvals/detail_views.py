"""One request's page (``/inbox/<pk>/``): what the step shows, its decisions, rounds, claim,
timers, the instance's outline and the step's comment thread — and the page's POSTs: decide
(approve, reject, or send back for changes) and comment. Every decision goes through
``approvals.services``; a refusal re-renders the page with the reason and the service's
status (STYLE trait 7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from orchestration import sealing
from orchestration import selectors as orchestration_selectors
from orchestration.errors import SignoffError
from orchestration.middleware import accepts_uploads

from . import comments, context, policy, selectors, services
from .forms import CommentForm, DecisionForm
from .locale import why
from .models import ApprovalRequest, Outcome, RequestState
from .navigation import pending_count, safe_next

HISTORY_LIMIT = 200  # events shown on the detail page (the latest ones)


@dataclass(frozen=True)
class ClaimSummary:
    """The claim on a request as one person's page shows it: who holds it (a live claim:
    pending, not idle past its expiry), since and until when, and which claim buttons to
    offer (:func:`approvals.policy.claim_actions`; the policy answers again on POST)."""

    mode: str
    holder: str | None = None
    since: datetime | None = None
    expires_at: datetime | None = None
    mine: bool = False
    actions: frozenset[str] = field(default_factory=frozenset)

    @property
    def blocks(self) -> bool:
        """Someone else holds it: the viewer cannot decide."""
        return self.holder is not None and not self.mine

    @property
    def message(self) -> str:
        if self.holder is None:
            return ""
        stamp = timezone.localtime(self.since).strftime("%Y-%m-%d %H:%M %Z") if self.since else ""
        if self.mine:
            return _("Claimed by you since %(when)s") % {"when": stamp}
        return _("Claimed by %(name)s since %(when)s") % {"name": self.holder, "when": stamp}


def claim_summary(user: Any, approval: ApprovalRequest, *, may_decide: bool) -> ClaimSummary:
    now = timezone.now()
    holder = selectors.claim_holder_name(approval, now)
    actions = frozenset(policy.claim_actions(user, approval, may_decide=may_decide))
    if holder is None:
        return ClaimSummary(mode=approval.claim_mode, actions=actions)
    return ClaimSummary(
        mode=approval.claim_mode,
        holder=holder,
        since=approval.claimed_at,
        expires_at=approval.claim_expires_at,
        mine=approval.claimed_by_id == user.pk,
        actions=actions,
    )


def _refusal(exc: SignoffError) -> str:
    return _("Your decision was not recorded: %(why)s.") % {"why": why(exc)}


def _sent_back_by(decisions: list[Any]) -> str:
    sent = [d for d in decisions if d.outcome == Outcome.REQUEST_CHANGES]
    return sent[-1].decided_by.get_username() if sent else _("an approver")


def _why_not(
    approval: ApprovalRequest,
    user: Any,
    decisions: list[Any],
    claim: selectors.ClaimSummary | None = None,
) -> str:
    """Why the user sees no decision buttons on a request."""
    if claim is not None and claim.blocks and approval.state == RequestState.PENDING:
        return _("%(claim)s: you can decide once it is released, taken over or expired.") % {
            "claim": claim.message
        }
    by = _sent_back_by(decisions)
    answered = (
        approval.answered_by.get_username() if approval.answered_by_id else _("the requester")
    )
    if approval.state == RequestState.CHANGES_REQUESTED:
        return _(
            "Changes were requested by %(by)s; waiting for the requester to revise and resubmit."
        ) % {"by": by}
    if approval.state == RequestState.RESUBMITTED:
        return _(
            "Round %(round)s was sent back for changes by %(by)s; %(who)s revised and "
            "resubmitted it as round %(next)s."
        ) % {"round": approval.round, "by": by, "who": answered, "next": approval.round + 1}
    if approval.state == RequestState.WITHDRAWN:
        return _("Sent back for changes by %(by)s; %(who)s withdrew the request.") % {
            "by": by,
            "who": answered,
        }
    if approval.state != RequestState.PENDING:
        deciders = ", ".join(
            d.decided_by.get_username() for d in decisions if approval.state.startswith(d.outcome)
        )
        state = RequestState(approval.state).label.lower()
        if deciders:
            return _("This request was %(state)s by %(names)s.") % {
                "state": state,
                "names": deciders,
            }
        return _("This request was %(state)s.") % {"state": state}
    mine = [d for d in decisions if d.decided_by_id == user.pk]
    if mine:
        if mine[-1].outcome == Outcome.APPROVE:
            return _("You approved this request; it is waiting for other decisions.")
        return _("You rejected this request; it is waiting for other decisions.")
    if approval.requester_id == user.pk and not approval.allow_self_approval:
        return _("This is your own request: someone else decides it.")
    return _("You are not an assignee of this request.")


def render_detail(
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
        orchestration_selectors.events_of(instance)
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
    claim = claim_summary(request.user, approval, may_decide=may_decide)
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
        can_comment, why_no_comment = False, why(exc)
    return {
        "decision_lines": context.decision_lines(approval),
        "thread": thread,
        "thread_more": thread_more,
        "can_comment": can_comment,
        "why_no_comment": why_no_comment,
        "comment_form": comment_form or CommentForm(),
        "comment_max": comments.MAX_BODY,
    }


def visible_or_404(request: HttpRequest, pk: int) -> ApprovalRequest:
    approval = selectors.request_for(request.user, pk) if pk < 2**63 else None
    if approval is None:
        raise Http404("No such request in your inbox.")
    return approval


@login_required
@require_http_methods(["GET", "HEAD"])
def inbox_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render_detail(request, visible_or_404(request, pk), DecisionForm())


@login_required
@require_POST
def inbox_decide(request: HttpRequest, pk: int) -> HttpResponse:
    """Decide one request. Success: back to the list with a message, or to the inbox URL
    posted as ``next`` (the filtered page a keyboard decision came from; anything else falls
    back to the list). A refusal re-renders the page with the reason and the service's status
    (403, 409, 400); nothing is written."""
    form = DecisionForm(request.POST)
    if not form.is_valid():
        approval = visible_or_404(request, pk)
        for errors in form.errors.values():
            for error in errors:
                messages.error(
                    request, _("Your decision was not recorded: %(why)s") % {"why": error}
                )
        return render_detail(request, approval, form, status=400)
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
        return render_detail(request, approval, form, status=exc.status)
    approval = decision.request
    if outcome == Outcome.REQUEST_CHANGES:
        who = approval.requester.get_username() if approval.requester_id else _("the requester")
        messages.success(
            request,
            _("Sent “%(title)s” back to %(who)s for changes.")
            % {"title": approval.title, "who": who},
        )
    elif approval.state == RequestState.PENDING:
        if outcome == Outcome.APPROVE:
            text = _(
                "Your approval of “%(title)s” was recorded; the request is waiting for other "
                "decisions."
            )
        else:
            text = _(
                "Your rejection of “%(title)s” was recorded; the request is waiting for other "
                "decisions."
            )
        messages.success(request, text % {"title": approval.title})
    elif outcome == Outcome.APPROVE:
        messages.success(request, _("Approved “%(title)s”.") % {"title": approval.title})
    else:
        messages.success(request, _("Rejected “%(title)s”.") % {"title": approval.title})
    return redirect(safe_next(request, request.POST.get("next")))


@accepts_uploads
@login_required
@require_POST
def inbox_comment(request: HttpRequest, pk: int) -> HttpResponse:
    """Post a comment on a request's thread. Success: back to the request's page, at the
    comment. A refusal re-renders the page with the reason and the service's status (400,
    403, 409); a request the user cannot see is a 404. Nothing is written on a refusal."""
    form = CommentForm(request.POST, request.FILES)
    approval = visible_or_404(request, pk)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, _("Your comment was not posted: %(why)s") % {"why": error})
        return render_detail(request, approval, DecisionForm(), status=400, comment_form=form)
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
        messages.error(request, _("Your comment was not posted: %(why)s.") % {"why": why(exc)})
        return render_detail(
            request, approval, DecisionForm(), status=exc.status, comment_form=form
        )
    if posted.created:
        messages.success(request, _("Your comment was posted."))
    else:
        messages.info(request, _("Your comment was already posted."))
    return redirect(f"{reverse('inbox:detail', args=[pk])}#comment-{posted.comment.pk}")
