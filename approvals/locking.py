"""The one door to a request for every write: find its step run, then lock the instance (the
engine's lock for its steps and their requests) and then the request row — the engine's lock
order. Deciding, sending back, reassigning, claims, comments and files all come in here."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_noop

from orchestration import engine
from orchestration.actors import actor_of
from orchestration.errors import NotFound

from .models import ApprovalRequest


def step_run_of(request_id: Any) -> int:
    """The step run of request ``request_id`` (read before the locks: the instance lock is
    taken through it); :class:`NotFound` for anything that names no request."""
    try:
        step_run_id = (
            ApprovalRequest.objects.filter(pk=int(request_id))
            .values_list("step_run_id", flat=True)
            .first()
        )
    except (TypeError, ValueError, OverflowError):
        step_run_id = None
    if step_run_id is None:
        raise NotFound(gettext_noop("approval request not found"))
    return step_run_id


def lock_request(
    request_id: Any, step_run_id: int, user: Any
) -> tuple[engine.LockedInstance, ApprovalRequest]:
    """The instance (the lock for its steps and requests), then the request row. Whether the
    request is still pending is the policy's question (after whether the user may see it).
    The caller's transaction is open."""
    locked = engine.lock_instance(step_run_id=step_run_id, actor=actor_of(user))
    if locked is None:
        raise NotFound(gettext_noop("approval request not found"))
    # NO KEY UPDATE: rows that only refer to the request (a token minted while a mail is
    # delivered holds KEY SHARE for that delivery) never make a decision wait.
    request = ApprovalRequest.objects.select_for_update(no_key=True).get(pk=int(request_id))
    request.instance = locked.instance
    return locked, request
