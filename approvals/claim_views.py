"""The inbox's claim buttons: claim, release, take over (``approvals.claims``).

Thin: each POST calls one service; success goes back to the request page with a message; a
refusal re-renders the page with the reason and the service's status (400, 403, 409), or 404
for a request the user may not see. Nothing is written on a refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from orchestration.errors import SignoffError

from . import claims, selectors
from .detail_views import render_detail, visible_or_404
from .forms import DecisionForm
from .locale import why
from .models import Channel


class TakeOverForm(forms.Form):
    note = forms.CharField(
        max_length=claims.MAX_NOTE,
        strip=True,
        error_messages={"required": "A note is required: tell the claimant why you take it over."},
    )
    # Whom the page showed holding the claim: if that changed, the take-over is refused.
    claimant = forms.CharField(max_length=150, required=False)


def _act(
    request: HttpRequest, pk: int, act: Callable[[], Any], done: str, refused: str
) -> HttpResponse:
    """Run ``act``; ``done`` is the success message, ``refused`` the refusal's (with
    ``%(why)s``), both already translated."""
    try:
        act()
    except SignoffError as exc:
        approval = selectors.request_for(request.user, pk) if pk < 2**63 else None
        if approval is None:
            raise Http404("No such request in your inbox.") from None
        messages.error(request, refused % {"why": why(exc)})
        return render_detail(request, approval, DecisionForm(), status=exc.status)
    messages.success(request, done)
    return redirect("inbox:detail", pk=pk)


@login_required
@require_POST
def inbox_claim(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(
        request,
        pk,
        lambda: claims.approval_claim(request_id=pk, user=request.user, channel=Channel.WEB),
        _("You claimed this request: others see that you are on it."),
        _("Not claimed: %(why)s."),
    )


@login_required
@require_POST
def inbox_release(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(
        request,
        pk,
        lambda: claims.approval_release(request_id=pk, user=request.user, channel=Channel.WEB),
        _("Claim released: any assignee may decide this request again."),
        _("Not released: %(why)s."),
    )


@login_required
@require_POST
def inbox_take_over(request: HttpRequest, pk: int) -> HttpResponse:
    form = TakeOverForm(request.POST)
    if not form.is_valid():
        approval = visible_or_404(request, pk)
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, _("Not taken over: %(why)s") % {"why": error})
        return render_detail(request, approval, DecisionForm(), status=400)
    return _act(
        request,
        pk,
        lambda: claims.approval_take_over(
            request_id=pk,
            user=request.user,
            note=form.cleaned_data["note"],
            expected_claimant=form.cleaned_data["claimant"] or None,
            channel=Channel.WEB,
        ),
        _("You took the claim over: the request is yours to decide."),
        _("Not taken over: %(why)s."),
    )
