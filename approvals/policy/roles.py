"""Who someone is to a request, as the rules ask it: an operator, the requester (or the
instance's starter), someone who may see it, an assignee (directly or through a group), the
delegate of one — and so whose vote they may cast (:func:`decide_grant`, the ``decide``
rules without claims)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Exists, OuterRef
from django.utils.translation import gettext_noop

from orchestration.errors import Conflict, NotAllowed
from orchestration.models import WorkflowInstance

from ..models import ApprovalRequest, Delegation
from ..selectors import sees_all_requests, sees_request
from .grants import OPERATE_PERMISSION, OVERRIDE_CLAIM_PERMISSION, Act, Grant

User = get_user_model()


def is_operator(user: Any) -> bool:
    return bool(
        getattr(user, "is_authenticated", False)
        and user.is_active
        and user.has_perm(OPERATE_PERMISSION)
    )


def requester_ids(request: ApprovalRequest | None, instance: WorkflowInstance) -> set[int]:
    """Who counts as the requester: the request's requester and, with
    ``SIGNOFF_STARTER_IS_REQUESTER`` (default), whoever started the instance."""
    ids = {request.requester_id} if request is not None else set()
    if settings.SIGNOFF_STARTER_IS_REQUESTER:
        ids.add(instance.started_by_id)
    return ids - {None}


def can_see(user: Any, request: ApprovalRequest, now: datetime | None = None) -> bool:
    """Staff and operators see every request; others the ones they are or were (or a
    delegator is or was) assigned, decided, requested or whose instance they started. One
    query."""
    if sees_all_requests(user):
        return True
    return sees_request(user, request.pk, now)


def assigned_groups(request: ApprovalRequest) -> set[int]:
    return set(request.assignee_groups.values_list("pk", flat=True))


def assignment(request: ApprovalRequest, person: Any, groups: set[int]) -> tuple[bool, set[int]]:
    """Whether ``person`` is assigned directly, and the assigned groups they belong to."""
    direct = request.assignee_users.filter(pk=person.pk).exists()
    member_of = set(person.groups.filter(pk__in=groups).values_list("pk", flat=True))
    return direct, member_of


def delegators(user: Any, now: datetime) -> list[Any]:
    """Active users who delegated to ``user`` for ``now``."""
    return list(
        User.objects.filter(
            Exists(
                Delegation.objects.filter(
                    user=OuterRef("pk"), delegate=user, starts_at__lte=now, ends_at__gt=now
                )
            ),
            is_active=True,
        ).order_by("pk")
    )


def via(member_of: set[int]) -> Group | None:
    return Group.objects.get(pk=min(member_of)) if member_of else None


def may_override_claims(user: Any) -> bool:
    return bool(
        getattr(user, "is_authenticated", False)
        and user.is_active
        and user.has_perm(OVERRIDE_CLAIM_PERMISSION)
    )


def decide_grant(user: Any, request: ApprovalRequest, requesters: set[int], now: datetime) -> Grant:
    """The ``decide`` rules without the claim: whose vote ``user`` may cast."""
    groups = assigned_groups(request)
    decided = set(request.decisions.values_list("assignee_id", flat=True))
    self_blocked = already = False
    for principal in [user, *delegators(user, now)]:
        direct, member_of = assignment(request, principal, groups)
        if not direct and not member_of:
            continue
        if not request.allow_self_approval and requesters & {principal.pk, user.pk}:
            self_blocked = True
            continue
        if principal.pk in decided:
            already = True
            continue
        return Grant(Act.DECIDE, user, principal, via(member_of))
    if self_blocked:
        raise NotAllowed(gettext_noop("you cannot decide your own request"), code="self_approval")
    if already:
        raise Conflict(
            gettext_noop("you have already decided this request"), code="already_decided"
        )
    raise NotAllowed(gettext_noop("you are not an assignee of this request"), code="not_assignee")
