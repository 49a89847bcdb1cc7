"""Files on approval requests: the reader check that lets the people of an instance's requests
read its files (the policy's ``download`` act), and adding files to a request (``attach``),
from the request page.

The files themselves belong to the engine (:mod:`orchestration.attachments`): this module only
says who may read them and attaches them under the context ``request:<id>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from orchestration import attachments
from orchestration.errors import SignoffError
from orchestration.middleware import accepts_uploads
from orchestration.models import Attachment

from . import policy
from .models import ApprovalRequest
from .services import _lock, _step_run_of

attachments.register_reader_check("approvals", policy.may_read_files)


def request_context(request_id: Any) -> str:
    return f"request:{request_id}"


def request_attach(*, request_id: Any, user: Any, files: Sequence[Any]) -> list[Attachment]:
    """Add files to a pending request, for its requester, assignees, their delegates and
    operators (the policy's ``attach``): one ``attachments_added`` event, under the instance's
    lock. Refused files or people change nothing (and leave no bytes behind)."""
    step_run_id = _step_run_of(request_id)
    with attachments.guard(), transaction.atomic():
        locked, approval = _lock(request_id, step_run_id, user)
        policy.authorize(policy.Act.ATTACH, user=user, request=approval, instance=locked.instance)
        saved = attachments.attachments_save(
            instance=locked.instance,
            files=files,
            user=user,
            context=request_context(approval.pk),
            journal=locked.journal,
        )
        locked.journal.flush()
        return saved


def may_attach(user: Any, approval: ApprovalRequest) -> bool:
    """Whether to offer the "Add a file" form (the service asks the policy again)."""
    try:
        policy.authorize(policy.Act.ATTACH, user=user, request=approval)
    except SignoffError:
        return False
    return True


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
            {"message": f"Your file was not added: {exc.message}."},
            status=exc.status,
        )
    names = ", ".join(f"“{a.name}”" for a in saved)
    messages.success(request, f"Added {names}.")
    return redirect("inbox:detail", pk=pk)
