"""Files on approval requests: the reader check that lets the people of an instance's requests
read its files (the policy's ``download`` act), and adding files to a request (``attach``;
the request page's form posts to :func:`approvals.file_views.inbox_attach`).

The files themselves belong to the engine (:mod:`orchestration.attachments`): this module only
says who may read them and attaches them under the context ``request:<id>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction

from orchestration import attachments
from orchestration.errors import SignoffError
from orchestration.models import Attachment

from . import policy
from .locking import lock_request, step_run_of
from .models import ApprovalRequest

attachments.register_reader_check("approvals", policy.may_read_files)


def request_context(request_id: Any) -> str:
    return f"request:{request_id}"


def request_attach(*, request_id: Any, user: Any, files: Sequence[Any]) -> list[Attachment]:
    """Add files to a pending request, for its requester, assignees, their delegates and
    operators (the policy's ``attach``): one ``attachments_added`` event, under the instance's
    lock. Refused files or people change nothing (and leave no bytes behind)."""
    step_run_id = step_run_of(request_id)
    with attachments.guard(), transaction.atomic():
        locked, approval = lock_request(request_id, step_run_id, user)
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
