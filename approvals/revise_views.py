"""The requester's answer to a request sent back for changes: the "Revise and resubmit" page
(``/inbox/<pk>/revise/``) and withdrawing (``/inbox/<pk>/withdraw/``), through
``approvals.services.approval_resubmit`` and ``approval_withdraw``."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from orchestration.errors import SignoffError
from orchestration.middleware import accepts_uploads

from . import policy, services
from .detail_views import visible_or_404
from .forms import ReviseForm, WithdrawForm
from .locale import why
from .models import Outcome
from .navigation import pending_count


def _answer_refused(request: HttpRequest, exc: SignoffError) -> HttpResponse:
    if exc.status == 404:
        raise Http404("No such request in your inbox.")
    return render(
        request,
        "inbox/refused.html",
        {
            "message": _("Nothing was changed: %(why)s.") % {"why": why(exc)},
            "pending_count": pending_count(request),
        },
        status=exc.status,
    )


def _field_errors(form: ReviseForm, exc: SignoffError) -> None:
    """Put the service's input errors ("amount: -5 is less than the minimum of 0") on the
    fields they name, the rest on the form."""
    problems = (exc.errors or {}).get("input") if isinstance(exc.errors, dict) else None
    for problem in problems or [why(exc)]:
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
    approval = visible_or_404(request, pk)
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
                    request,
                    _("Resubmitted “%(title)s”: round %(round)s waits for a decision.")
                    % {"title": new.title, "round": new.round},
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
        approval = visible_or_404(request, pk)
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, _("Not withdrawn: %(why)s") % {"why": error})
        return redirect("inbox:revise", pk=approval.pk)
    try:
        approval = services.approval_withdraw(
            request_id=pk, user=request.user, reason=form.cleaned_data["reason"], channel="web"
        )
    except SignoffError as exc:
        return _answer_refused(request, exc)
    messages.success(
        request,
        _("Withdrew “%(title)s”; the workflow was cancelled.") % {"title": approval.title},
    )
    return redirect("inbox:list")
