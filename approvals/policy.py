"""The one decision policy: may this person, now, produce this outcome on this request, and for
whom (DESIGN.md, "Trust").

Every path that can bring about an approval's outcome asks :func:`authorize` — the inbox (one
request and bulk), the API, email links, an operator's decision on behalf of an assignee,
reassignment, and the engine's manual completion or retry of an approval step (through the
approval kind's hook). Nothing else decides who may act; views only turn its answer into a
status code or a message.

The rules, in the order they are checked (the first that fails answers):

1. The actor is a logged-in, active user.
2. The actor may see the request (an assignee, a delegate of one, someone who decided it, its
   requester, or staff); otherwise the request does not exist for them (``NotFound``), so a
   refusal never tells them who decided what.
3. The request is still pending (``Conflict``: "already approved by X at T").
4. Per act:

   - ``decide`` (own vote, or a delegator's): a current assignee, directly or through a group,
     or the active delegate of one who is active; never the requester or the instance's
     starter (``SIGNOFF_STARTER_IS_REQUESTER``, on by default) unless the step allows self
     approval; one decision per person.
   - ``decide_on_behalf``: only where ``SIGNOFF_DECIDE_ON_BEHALF`` allows it (off by default),
     by a holder of ``orchestration.operate_instance`` who is neither the requester nor the
     starter (whatever the step allows), for an active current assignee who could decide
     themself and has not. Recorded as on behalf (decision ``decided_by`` the operator,
     ``assignee`` the person, channel ``admin``, a mandatory reason).
   - ``reassign``: an operator who is neither requester nor starter, naming neither themself
     nor a group they belong to, nor only people who may not decide it.
   - ``complete_step``: an operator completing an approval step by hand decides it in
     everyone's place; refused unless ``SIGNOFF_OPERATORS_COMPLETE_APPROVALS`` is on, and then
     never on their own request.
   - ``retry_step``: a retry asks the assignees again with a fresh request; it decides
     nothing, so anyone the engine lets retry the instance may.

Context and comments (issue 12) — these read, or add to the conversation, and decide nothing,
so rule 3 does not apply to them:

   - ``view_instance`` (no request; the instance): whoever may see one of the instance's
     requests (rule 2: current and past assignees — replaced by an escalation or a
     reassignment — directly or through a group, the active delegates of either, whoever
     decided one, the requester, the starter) may read the instance read-only; staff,
     operators and the starter as before. Otherwise ``NotFound``, as if it did not exist.
   - ``read_comments``: whoever may see the request (rule 2).
   - ``comment``: while the instance runs (``Conflict``, code ``comments_closed``, once it
     has finished); the requester or starter (role ``requester``), a current assignee or
     whoever decided the request (``assignee``), the active delegate of a current assignee
     (``delegate``), or an operator (``operator``), in that order. Anyone else who may only
     see the request — staff without the permission, a past assignee who never decided it —
     is refused (``NotAllowed``, code ``not_participant``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Exists, OuterRef
from django.utils import timezone

from orchestration.errors import Conflict, NotAllowed, NotFound
from orchestration.models import WorkflowInstance

from .models import ApprovalRequest, Delegation, RequestState

User = get_user_model()
OPERATE_PERMISSION = "orchestration.operate_instance"


class Act(StrEnum):
    DECIDE = "decide"
    DECIDE_ON_BEHALF = "decide_on_behalf"
    REASSIGN = "reassign"
    COMPLETE_STEP = "complete_step"
    RETRY_STEP = "retry_step"
    # context and comments (issue 12)
    VIEW_INSTANCE = "view_instance"
    READ_COMMENTS = "read_comments"
    COMMENT = "comment"


@dataclass(frozen=True)
class Grant:
    """What the policy allowed: whose vote is cast (``principal``; None for acts that cast
    none), through which assigned group, and whether the actor acts for someone else."""

    act: Act
    actor: Any
    principal: Any = None
    via_group: Group | None = None
    on_behalf: bool = False

    @property
    def for_someone_else(self) -> bool:
        return self.principal is not None and self.principal.pk != self.actor.pk


# -- the rules' building blocks ------------------------------------------------------------------


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
    from .selectors import seeing_filter, sees_all_requests  # selectors import models only

    if sees_all_requests(user):
        return True
    return ApprovalRequest.objects.filter(pk=request.pk).filter(seeing_filter(user, now)).exists()


def _assigned_groups(request: ApprovalRequest) -> set[int]:
    return set(request.assignee_groups.values_list("pk", flat=True))


def _assignment(request: ApprovalRequest, person: Any, groups: set[int]) -> tuple[bool, set[int]]:
    """Whether ``person`` is assigned directly, and the assigned groups they belong to."""
    direct = request.assignee_users.filter(pk=person.pk).exists()
    member_of = set(person.groups.filter(pk__in=groups).values_list("pk", flat=True))
    return direct, member_of


def _delegators(user: Any, now: datetime) -> list[Any]:
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


def _via(member_of: set[int]) -> Group | None:
    return Group.objects.get(pk=min(member_of)) if member_of else None


def _already_decided(request: ApprovalRequest) -> Conflict:
    last = request.decisions.select_related("decided_by").order_by("-at", "-id").first()
    when = request.resolved_at or (last.at if last else None)
    stamp = timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S %Z") if when else "earlier"
    if request.state in (RequestState.APPROVED, RequestState.REJECTED) and last is not None:
        message = f"already {request.state} by {last.decided_by.get_username()} at {stamp}"
    else:
        message = f"already {request.state} at {stamp}"
    return Conflict(message, code="already_decided")


def already_decided_message(request: ApprovalRequest) -> str:
    return _already_decided(request).message


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


# -- the policy ------------------------------------------------------------------------------------


def authorize(
    act: Act | str,
    *,
    user: Any,
    request: ApprovalRequest | None,
    instance: WorkflowInstance | None = None,
    assignee: Any = None,
    new_users: list[Any] | tuple[Any, ...] = (),
    new_groups: list[Group] | tuple[Group, ...] = (),
    now: datetime | None = None,
) -> Grant:
    """Answer whether ``user`` may perform ``act`` on ``request`` now, and for whom.

    Returns a :class:`Grant`; raises :class:`NotFound` (a request the user may not see),
    :class:`Conflict` (already decided) or :class:`NotAllowed` (with a stable ``code``:
    ``inactive``, ``not_assignee``, ``self_approval``, ``already_decided``,
    ``on_behalf_disabled``, ``own_request``, ``permission_denied``, ``self_assignment``,
    ``approval_step``, ``comments_closed``, ``not_participant``); a :class:`CommentGrant`
    for ``comment``. Call it inside the transaction that acts, with the instance (and
    request) locked, so the answer still holds when the write happens. Reads only.
    """
    act = Act(act)
    now = now or timezone.now()
    if not getattr(user, "is_authenticated", False):
        raise NotAllowed("log in to act on approval requests", code="not_authenticated")
    if not user.is_active:
        raise NotAllowed("this account is deactivated", code="inactive")
    if instance is None:
        if request is None:
            raise NotFound("approval request not found")
        instance = request.instance
    if act in (Act.COMPLETE_STEP, Act.RETRY_STEP):
        return _authorize_step(act, user, request, instance)
    if act in CONTEXT_ACTS:
        return _authorize_context(act, user, request, instance, now)
    assert request is not None
    if not can_see(user, request, now):
        raise NotFound("approval request not found")
    if request.state != RequestState.PENDING:
        raise _already_decided(request)
    requesters = requester_ids(request, instance)
    if act is Act.DECIDE:
        return _authorize_decide(user, request, requesters, now)
    if not is_operator(user):
        raise NotAllowed("you may not operate approval requests", code="permission_denied")
    if user.pk in requesters:
        raise NotAllowed(
            "you cannot act on your own request, not even as an operator", code="own_request"
        )
    if act is Act.DECIDE_ON_BEHALF:
        return _authorize_on_behalf(user, request, assignee, requesters)
    return _authorize_reassign(user, request, requesters, new_users, new_groups)


def _authorize_decide(
    user: Any, request: ApprovalRequest, requesters: set[int], now: datetime
) -> Grant:
    groups = _assigned_groups(request)
    decided = set(request.decisions.values_list("assignee_id", flat=True))
    self_blocked = already = False
    for principal in [user, *_delegators(user, now)]:
        direct, member_of = _assignment(request, principal, groups)
        if not direct and not member_of:
            continue
        if not request.allow_self_approval and requesters & {principal.pk, user.pk}:
            self_blocked = True
            continue
        if principal.pk in decided:
            already = True
            continue
        return Grant(Act.DECIDE, user, principal, _via(member_of))
    if self_blocked:
        raise NotAllowed("you cannot decide your own request", code="self_approval")
    if already:
        raise Conflict("you have already decided this request", code="already_decided")
    raise NotAllowed("you are not an assignee of this request", code="not_assignee")


def _authorize_on_behalf(
    user: Any, request: ApprovalRequest, assignee: Any, requesters: set[int]
) -> Grant:
    if not settings.SIGNOFF_DECIDE_ON_BEHALF:
        raise NotAllowed(
            "decisions on behalf of an assignee are turned off (SIGNOFF_DECIDE_ON_BEHALF)",
            code="on_behalf_disabled",
        )
    if assignee is None:
        raise NotAllowed("name the assignee you decide for", code="not_assignee")
    name = assignee.get_username()
    if assignee.pk == user.pk:
        raise NotAllowed("decide your own requests in your inbox", code="self_assignment")
    if not assignee.is_active:
        raise NotAllowed(f"{name}'s account is deactivated", code="inactive")
    direct, member_of = _assignment(request, assignee, _assigned_groups(request))
    if not direct and not member_of:
        raise NotAllowed(f"{name} is not an assignee of this request", code="not_assignee")
    if not request.allow_self_approval and assignee.pk in requesters:
        raise NotAllowed(f"{name} cannot decide their own request", code="self_approval")
    if request.decisions.filter(assignee=assignee).exists():
        raise Conflict(f"{name} has already decided", code="already_decided")
    return Grant(Act.DECIDE_ON_BEHALF, user, assignee, _via(member_of), on_behalf=True)


def _authorize_reassign(
    user: Any,
    request: ApprovalRequest,
    requesters: set[int],
    new_users: list[Any] | tuple[Any, ...],
    new_groups: list[Group] | tuple[Group, ...],
) -> Grant:
    if any(u.pk == user.pk for u in new_users):
        raise NotAllowed("you cannot assign a request to yourself", code="self_assignment")
    group_ids = {g.pk for g in new_groups}
    if group_ids and user.groups.filter(pk__in=group_ids).exists():
        raise NotAllowed(
            "you cannot assign a request to a group you belong to", code="self_assignment"
        )
    if not request.allow_self_approval:
        deciders = [u for u in new_users if u.pk not in requesters]
        if not deciders and not new_groups:
            raise NotAllowed(
                "nobody you named may decide this request (the requester cannot)",
                code="self_approval",
            )
    return Grant(Act.REASSIGN, user)


def _authorize_step(
    act: Act, user: Any, request: ApprovalRequest | None, instance: WorkflowInstance
) -> Grant:
    if act is Act.RETRY_STEP:
        # Asks the assignees again (a fresh request); the engine checked who may retry.
        return Grant(act, user)
    if not settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS:
        raise NotAllowed(
            "an approval step is decided by its assignees, not completed by hand "
            "(SIGNOFF_OPERATORS_COMPLETE_APPROVALS is off)",
            code="approval_step",
        )
    if not is_operator(user):
        raise NotAllowed("you may not operate workflow instances", code="permission_denied")
    if user.pk in requester_ids(request, instance):
        raise NotAllowed("you cannot complete an approval of your own request", code="own_request")
    return Grant(act, user, on_behalf=True)


# -- context and comments (issue 12) ---------------------------------------------------------------

CONTEXT_ACTS = (Act.VIEW_INSTANCE, Act.READ_COMMENTS, Act.COMMENT)
OPEN_INSTANCE_STATES = ("pending", "running")


@dataclass(frozen=True)
class CommentGrant(Grant):
    """A ``comment`` grant: what the author posts as (a ``Comment.Role`` value), which
    decides who is told; ``principal`` is the assignee a delegate stands in for."""

    role: str = ""


def _authorize_context(
    act: Act,
    user: Any,
    request: ApprovalRequest | None,
    instance: WorkflowInstance,
    now: datetime,
) -> Grant:
    if act is Act.VIEW_INSTANCE:
        return _authorize_view_instance(user, instance, now)
    if request is None or not can_see(user, request, now):
        raise NotFound("approval request not found")
    if act is Act.READ_COMMENTS:
        return Grant(act, user)
    return _authorize_comment(user, request, instance, now)


def _authorize_view_instance(user: Any, instance: WorkflowInstance, now: datetime) -> Grant:
    from .selectors import seeing_filter, sees_all_requests

    if sees_all_requests(user) or (
        instance.started_by_id is not None and instance.started_by_id == user.pk
    ):
        return Grant(Act.VIEW_INSTANCE, user)
    seen = ApprovalRequest.objects.filter(instance_id=instance.pk).filter(seeing_filter(user, now))
    if not seen.exists():
        raise NotFound("instance not found")
    return Grant(Act.VIEW_INSTANCE, user)


def _authorize_comment(
    user: Any, request: ApprovalRequest, instance: WorkflowInstance, now: datetime
) -> CommentGrant:
    from .models import Comment, Decision
    from .selectors import assigned_filter

    if instance.state not in OPEN_INSTANCE_STATES:
        raise Conflict(
            f"the workflow has {instance.state}: its requests take no more comments",
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
    for principal in _delegators(user, now):
        if this.filter(assigned_filter([principal.pk])).exists():
            return CommentGrant(Act.COMMENT, user, principal, role=Role.DELEGATE)
    if is_operator(user):
        return CommentGrant(Act.COMMENT, user, role=Role.OPERATOR)
    raise NotAllowed(
        "only the request's assignees, their delegates, its requester and operators comment on it",
        code="not_participant",
    )
