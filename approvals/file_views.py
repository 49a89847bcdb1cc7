"""The request page's "Add a file" form (``/inbox/<pk>/files/``): a thin view over
:func:`approvals.files.request_attach`."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from orchestration.errors import SignoffError
from orchestration.middleware import accepts_uploads

from .files import request_attach
from .locale import why


@accepts_uploads
@login_required
@require_POST
def inbox_attach(request: HttpRequest, pk: int) -> HttpResponse:
    """Add files to a request from its page; back to the page with a message. A refusal says
    why, with the service's status (400, 403, 409); nothing is stored."""
    files = request.FILES.getlist("files")
    try:
        saved = request_attach(request_id=pk, user=request.user, files=files)
    except SignoffError as exc:
        if exc.status == 404:
            raise Http404("No such request in your inbox.") from None
        return render(
            request,
            "inbox/refused.html",
            {"message": _("Your file was not added: %(why)s.") % {"why": why(exc)}},
            status=exc.status,
        )
    names = ", ".join(f"“{a.name}”" for a in saved)
    messages.success(request, _("Added %(names)s.") % {"names": names})
    return redirect("inbox:detail", pk=pk)
