"""Taking part without deciding: reading an instance (``view_instance``) and its files
(``download``), reading and posting comments (``read_comments``, ``comment``), and adding files
to a request (``attach``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils.translation import gettext_noop

from orchestration.errors import Conflict, Message, NotAllowed, NotFound, state_word
from orchestration.models import WorkflowInstance

from ..models import ApprovalRequest, Comment, Decision
from ..selectors import assigned_filter, seeing_filter, sees_all_requests
from .grants import Act, CommentGrant, Grant
from .roles import assigned_groups, assignment, can_see, delegators, is_operator, requester_ids, via

OPEN_INSTANCE_STATES = ("pending", "running")


def authorize_attach(
    user: Any, request: ApprovalRequest, requesters: set[int], now: datetime
) -> Grant:
    if user.pk in requesters or is_operator(user):
        return Grant(Act.ATTACH, user)
    groups = assigned_groups(request)
    for principal in [user, *delegators(user, now)]:
        direct, member_of = assignment(request, principal, groups)
        if direct or member_of:
            return Grant(Act.ATTACH, user, principal, via(member_of))
    raise NotAllowed(
        gettext_noop(
            "only the requester, the assignees (or their delegates) and operators may add files "
            "to this request"
        ),
        code="not_participant",
    )


def authorize_download(user: Any, instance: WorkflowInstance, now: datetime) -> Grant:
    """Whoever may read the instance (``view_instance``: current and past assignees, their
    delegates, deciders, the requester) may read its files; nobody else learns they exist."""
    try:
        authorize_view_instance(user, instance, now)
    except NotFound:
        raise NotFound(gettext_noop("file not found")) from None
    return Grant(Act.DOWNLOAD, user)


def authorize_context(
    act: Act,
    user: Any,
    request: ApprovalRequest | None,
    instance: WorkflowInstance,
    now: datetime,
) -> Grant:
    if act is Act.VIEW_INSTANCE:
        return authorize_view_instance(user, instance, now)
    if request is None or not can_see(user, request, now):
        raise NotFound(gettext_noop("approval request not found"))
    if act is Act.READ_COMMENTS:
        return Grant(act, user)
    return authorize_comment(user, request, instance, now)


def authorize_view_instance(user: Any, instance: WorkflowInstance, now: datetime) -> Grant:
    if sees_all_requests(user) or (
        instance.started_by_id is not None and instance.started_by_id == user.pk
    ):
        return Grant(Act.VIEW_INSTANCE, user)
    seen = ApprovalRequest.objects.filter(instance_id=instance.pk).filter(seeing_filter(user, now))
    if not seen.exists():
        raise NotFound(gettext_noop("instance not found"))
    return Grant(Act.VIEW_INSTANCE, user)


def authorize_comment(
    user: Any, request: ApprovalRequest, instance: WorkflowInstance, now: datetime
) -> CommentGrant:
    if instance.state not in OPEN_INSTANCE_STATES:
        raise Conflict(
            Message(
                gettext_noop("the workflow has %(state)s: its requests take no more comments"),
                state=state_word(instance.state),
            ),
            code="comments_closed",
        )
    Role = Comment.Role  # noqa: N806
    if user.pk in requester_ids(request, instance):
        return CommentGrant(Act.COMMENT, user, role=Role.REQUESTER)
    this = ApprovalRequest.objects.filter(pk=request.pk)
    # One query each: assigned now (directly or through a group), or decided it.
    if this.filter(assigned_filter([user.pk])).exists():
        return CommentGrant(Act.COMMENT, user, user, role=Role.ASSIGNEE)
    decided_for = (
        Decision.objects.filter(request=request, decided_by=user)
        .values_list("assignee_id", flat=True)
        .first()
    )
    if decided_for is not None:
        role = Role.ASSIGNEE if decided_for == user.pk else Role.DELEGATE
        return CommentGrant(Act.COMMENT, user, role=role)
    for principal in delegators(user, now):
        if this.filter(assigned_filter([principal.pk])).exists():
            return CommentGrant(Act.COMMENT, user, principal, role=Role.DELEGATE)
    if is_operator(user):
        return CommentGrant(Act.COMMENT, user, role=Role.OPERATOR)
    raise NotAllowed(
        gettext_noop(
            "only the request's assignees, their delegates, its requester and operators "
            "comment on it"
        ),
        code="not_participant",
    )
