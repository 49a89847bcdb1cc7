"""Replacing a pending request's assignees (:func:`approval_reassign`, an operator's act from
the admin or the API) and remembering who was ever asked (:func:`past_assignees_record`: a
person replaced by a reassignment or an escalation keeps reading the request)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils.translation import gettext_noop

from orchestration.errors import InvalidInput, Message

from . import notifications, policy
from .claims import claim_drop_if_ineligible
from .inputs import clean_reason
from .locking import lock_request, step_run_of
from .models import ApprovalRequest, Channel, PastAssignee

User = get_user_model()


def past_assignees_record(
    request: ApprovalRequest, user_ids: set[int] | list[int], now: datetime, *, cause: str
) -> int:
    """Remember that ``user_ids`` were assignees of ``request`` and are no longer (call it
    where assignees are replaced, in the transaction that replaces them, with everyone who
    could decide before and cannot now). They keep reading the request and its instance;
    someone assigned again and removed again keeps the first record. Returns how many
    people were given."""
    if not user_ids:
        return 0
    rows = PastAssignee.objects.bulk_create(
        [
            PastAssignee(request=request, user_id=pk, cause=cause, removed_at=now)
            for pk in sorted(user_ids)
        ],
        ignore_conflicts=True,
    )
    return len(rows)


def approval_reassign(
    *,
    request_id: Any,
    operator: Any,
    users: list[str],
    groups: list[str],
    reason: str,
    channel: str = Channel.ADMIN,
) -> ApprovalRequest:
    """Replace a pending request's assignees. People no longer assigned lose their email
    links; newcomers get mail; a claim held by someone who may no longer decide it is
    released (``approval_released``, reason ``reassigned``). Writes ``approval_reassigned``
    (with the channel: ``admin`` or ``api``). Asks :func:`approvals.policy.authorize` (act
    ``reassign``): an operator, not on their own request, not to themself or a group of
    theirs — whether the caller may reassign at all is asked before the names are looked
    up, so nobody else learns which usernames exist."""
    reason = clean_reason(reason)
    step_run_id = step_run_of(request_id)
    with transaction.atomic():
        locked, request = lock_request(request_id, step_run_id, operator)
        now = locked.journal.now
        policy.authorize(
            policy.Act.REASSIGN,
            user=operator,
            request=request,
            instance=locked.instance,
            now=now,
        )
        user_rows, group_rows = _named_assignees(users, groups)
        policy.authorize(
            policy.Act.REASSIGN,
            user=operator,
            request=request,
            instance=locked.instance,
            new_users=user_rows,
            new_groups=group_rows,
            now=now,
        )
        before = {u.pk for u in notifications.current_assignee_users(request)}
        request.assignee_users.set(user_rows)
        request.assignee_groups.set(group_rows)
        after = notifications.current_assignee_users(request)
        removed = before - {u.pk for u in after}
        notifications.tokens_supersede(request, removed, now)
        past_assignees_record(request, removed, now, cause=PastAssignee.Cause.REASSIGNED)
        step = locked.step_by_id(step_run_id)
        locked.record(
            "approval_reassigned",
            step=step,
            data={
                "users": [u.username for u in user_rows],
                "groups": [g.name for g in group_rows],
                "reason": reason,
                **({"channel": channel} if channel != Channel.ADMIN else {}),
            },
        )
        claim_drop_if_ineligible(locked, request, step, reason="reassigned")
        notifications.notify_assignees(
            request,
            [u for u in after if u.pk not in before],
            now,
            kind="assigned",
            serial=int(now.timestamp()),
        )
        locked.journal.flush()
        return request


def _named_assignees(users: list[str], groups: list[str]) -> tuple[list[Any], list[Group]]:
    user_rows = list(User.objects.filter(username__in=users, is_active=True))
    group_rows = list(Group.objects.filter(name__in=groups))
    unknown = sorted(set(users) - {u.username for u in user_rows}) + sorted(
        set(groups) - {g.name for g in group_rows}
    )
    if unknown:
        raise InvalidInput(
            Message(gettext_noop("unknown users or groups: %(names)s"), names=", ".join(unknown)),
            code="unknown_assignee",
        )
    if not user_rows and not group_rows:
        raise InvalidInput(gettext_noop("name at least one user or group"), code="no_assignee")
    return user_rows, group_rows
