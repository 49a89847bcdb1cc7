"""Out of office (``/inbox/delegation/``): who may decide my requests while I am away, and
ending that early, through ``approvals.services.delegation_create`` and ``delegation_end``."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from orchestration.errors import SignoffError

from . import services
from .forms import DelegationForm
from .locale import why
from .models import Delegation
from .navigation import pending_count


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
                messages.error(request, _("Not saved: %(why)s.") % {"why": why(exc)})
                status = exc.status
            else:
                messages.success(
                    request,
                    _("%(name)s can decide your requests from %(start)s to %(end)s.")
                    % {
                        "name": created.delegate.get_username(),
                        "start": f"{timezone.localtime(created.starts_at):%Y-%m-%d %H:%M}",
                        "end": f"{timezone.localtime(created.ends_at):%Y-%m-%d %H:%M}",
                    },
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
        messages.error(request, _("Not ended: %(why)s.") % {"why": why(exc)})
    else:
        messages.success(request, _("Delegation ended."))
    return redirect("inbox:delegation")
