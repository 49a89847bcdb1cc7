"""The rules of acts that produce or steer an outcome: ``decide_on_behalf``, ``reassign``,
``request_changes``, ``resubmit`` and ``withdraw``, and an operator's ``complete_step`` or
``retry_step``; and which operator buttons a page offers (:func:`operator_actions`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db.models import Q
from django.utils.translation import gettext_noop

from orchestration.errors import Conflict, Message, NotAllowed, NotFound, state_word
from orchestration.models import WorkflowInstance

from ..models import ApprovalRequest, Decision, RequestState
from .claims import check_claim
from .grants import Act, Grant, already_decided, stamp
from .roles import (
    assigned_groups,
    assignment,
    can_see,
    decide_grant,
    is_operator,
    requester_ids,
    via,
)


def operator_actions(user: Any, request: ApprovalRequest) -> set[str]:
    """Which operator actions to offer on ``request`` (``reassign``, ``decide``): the buttons
    only; :func:`authorize` answers again, under the lock, when one is used."""
    if (
        request.state != RequestState.PENDING
        or not is_operator(user)
        or user.pk in requester_ids(request, request.instance)
    ):
        return set()
    return {"reassign", "decide"} if settings.SIGNOFF_DECIDE_ON_BEHALF else {"reassign"}


def authorize_request_changes(
    user: Any, request: ApprovalRequest, requesters: set[int], now: datetime
) -> Grant:
    """Who may decide, claims included (someone else's claim holds it back too), while the
    request is not in its last round and someone could revise it."""
    grant = decide_grant(user, request, requesters, now)
    check_claim(request, grant.actor, now)
    if request.last_round:
        raise Conflict(
            Message(
                gettext_noop(
                    "this is round %(round)s of %(max)s, the last: changes can no longer be "
                    "requested; approve or reject"
                ),
                round=request.round,
                max=request.max_rounds,
            ),
            code="max_rounds",
        )
    if not request.has_reviser:
        raise Conflict(
            gettext_noop(
                "nobody could revise this request (it has no requester); approve or reject"
            ),
            code="no_requester",
        )
    return replace(grant, act=Act.REQUEST_CHANGES)


def authorize_on_behalf(
    user: Any, request: ApprovalRequest, assignee: Any, requesters: set[int], now: datetime
) -> Grant:
    if not settings.SIGNOFF_DECIDE_ON_BEHALF:
        raise NotAllowed(
            gettext_noop(
                "decisions on behalf of an assignee are turned off (SIGNOFF_DECIDE_ON_BEHALF)"
            ),
            code="on_behalf_disabled",
        )
    if assignee is None:
        raise NotAllowed(gettext_noop("name the assignee you decide for"), code="not_assignee")
    name = assignee.get_username()
    if assignee.pk == user.pk:
        raise NotAllowed(
            gettext_noop("decide your own requests in your inbox"), code="self_assignment"
        )
    if not assignee.is_active:
        raise NotAllowed(
            Message(gettext_noop("%(name)s's account is deactivated"), name=name), code="inactive"
        )
    direct, member_of = assignment(request, assignee, assigned_groups(request))
    if not direct and not member_of:
        raise NotAllowed(
            Message(gettext_noop("%(name)s is not an assignee of this request"), name=name),
            code="not_assignee",
        )
    if not request.allow_self_approval and assignee.pk in requesters:
        raise NotAllowed(
            Message(gettext_noop("%(name)s cannot decide their own request"), name=name),
            code="self_approval",
        )
    if request.decisions.filter(assignee=assignee).exists():
        raise Conflict(
            Message(gettext_noop("%(name)s has already decided"), name=name),
            code="already_decided",
        )
    # The vote is the assignee's: only their own claim (or none) lets it through.
    check_claim(request, assignee, now)
    return Grant(Act.DECIDE_ON_BEHALF, user, assignee, via(member_of), on_behalf=True)


def authorize_reassign(
    user: Any,
    request: ApprovalRequest,
    requesters: set[int],
    new_users: list[Any] | tuple[Any, ...] | None,
    new_groups: list[Group] | tuple[Group, ...] | None,
) -> Grant:
    if new_users is None and new_groups is None:
        return Grant(Act.REASSIGN, user)
    new_users, new_groups = new_users or (), new_groups or ()
    if any(u.pk == user.pk for u in new_users):
        raise NotAllowed(
            gettext_noop("you cannot assign a request to yourself"), code="self_assignment"
        )
    group_ids = {g.pk for g in new_groups}
    if group_ids and user.groups.filter(pk__in=group_ids).exists():
        raise NotAllowed(
            gettext_noop("you cannot assign a request to a group you belong to"),
            code="self_assignment",
        )
    if not request.allow_self_approval:
        deciders = [u for u in new_users if u.pk not in requesters]
        if not deciders and not new_groups:
            raise NotAllowed(
                gettext_noop("nobody you named may decide this request (the requester cannot)"),
                code="self_approval",
            )
    return Grant(Act.REASSIGN, user)


def authorize_answer(
    act: Act, user: Any, request: ApprovalRequest, instance: WorkflowInstance, now: datetime
) -> Grant:
    """Resubmit or withdraw a request sent back for changes: its requester or starter."""
    owners = {request.requester_id, instance.started_by_id} - {None}
    if user.pk not in owners:
        if can_see(user, request, now):
            if act is Act.RESUBMIT:
                message = gettext_noop("only the requester may resubmit this request")
            else:
                message = gettext_noop("only the requester may withdraw this request")
            raise NotAllowed(message, code="not_requester")
        raise NotFound(gettext_noop("approval request not found"))
    if request.state == RequestState.RESUBMITTED or request.state == RequestState.WITHDRAWN:
        if request.answered_by_id:
            who: str = request.answered_by.get_username()
        else:
            who = Message(gettext_noop("someone"))
        raise Conflict(
            Message(
                gettext_noop("already %(state)s by %(name)s at %(when)s"),
                state=state_word(request.state),
                name=who,
                when=stamp(request.answered_at),
            ),
            code=f"already_{request.state}",
        )
    if request.state == RequestState.PENDING:
        raise Conflict(
            gettext_noop("the request is waiting for a decision, not for your changes"),
            code="not_changes_requested",
        )
    if request.state != RequestState.CHANGES_REQUESTED:
        raise already_decided(request)
    if instance.state != "running":
        raise Conflict(
            Message(
                gettext_noop("the workflow instance is %(state)s; it can no longer be revised"),
                state=state_word(instance.state),
            ),
            code="invalid_state",
        )
    return Grant(act, user)


def authorize_step(
    act: Act, user: Any, request: ApprovalRequest | None, instance: WorkflowInstance
) -> Grant:
    if act is Act.RETRY_STEP:
        # Asks the assignees again (a fresh request); the engine checked who may retry.
        return Grant(act, user)
    if act in (Act.EDIT_STEP, Act.EDIT_INPUT, Act.SKIP_STEP, Act.RESET_STEP):
        return _authorize_repair(act, user, request, instance)
    if not settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS:
        raise NotAllowed(
            gettext_noop(
                "an approval step is decided by its assignees, not completed by hand "
                "(SIGNOFF_OPERATORS_COMPLETE_APPROVALS is off)"
            ),
            code="approval_step",
        )
    if not is_operator(user):
        raise NotAllowed(
            gettext_noop("you may not operate workflow instances"), code="permission_denied"
        )
    if user.pk in requester_ids(request, instance):
        raise NotAllowed(
            gettext_noop("you cannot complete an approval of your own request"), code="own_request"
        )
    return Grant(act, user, on_behalf=True)


def _authorize_repair(
    act: Act, user: Any, request: ApprovalRequest | None, instance: WorkflowInstance
) -> Grant:
    """An operator's repair over an approval step (``skip_step``, ``edit_step``, ``edit_input``,
    ``reset_step``: see the package docstring). ``request``: the step's latest request (None
    before one was opened); a decider of any of the step's requests counts."""
    if not is_operator(user):
        raise NotAllowed(
            gettext_noop("you may not operate workflow instances"), code="permission_denied"
        )
    if user.pk in requester_ids(request, instance):
        raise NotAllowed(
            gettext_noop(
                "you cannot skip, edit or reset your way through an approval of your own request"
            ),
            code="own_request",
        )
    if request is not None and (
        Decision.objects.filter(
            request__step_run_id=request.step_run_id, request__instance_id=instance.pk
        )
        .filter(Q(decided_by=user) | Q(assignee=user))
        .exists()
    ):
        raise NotAllowed(
            gettext_noop(
                "you decided this approval: another operator must skip, edit or reset over it"
            ),
            code="own_decision",
        )
    steers = act in (Act.EDIT_STEP, Act.SKIP_STEP)  # the step's outcome itself
    if steers and not settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS:
        raise NotAllowed(
            gettext_noop(
                "an approval step is decided by its assignees, not skipped or edited by hand "
                "(SIGNOFF_OPERATORS_COMPLETE_APPROVALS is off)"
            ),
            code="approval_step",
        )
    return Grant(act, user, on_behalf=steers)
