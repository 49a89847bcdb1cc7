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
   requester, its instance's starter, or staff); otherwise the request does not exist for
   them (``NotFound``), so a refusal never tells them who decided what.
3. The request is still pending (``Conflict``: "already approved by X at T").
4. Per act:

   - ``decide`` (own vote, or a delegator's): a current assignee, directly or through a group,
     or the active delegate of one who is active; never the requester or the instance's
     starter (``SIGNOFF_STARTER_IS_REQUESTER``, on by default) unless the step allows self
     approval; one decision per person; and not while someone else holds a claim on the
     request (``Conflict``, code ``claimed``: "claimed by X since T").
   - ``decide_on_behalf``: only where ``SIGNOFF_DECIDE_ON_BEHALF`` allows it (off by default),
     by a holder of ``orchestration.operate_instance`` who is neither the requester nor the
     starter (whatever the step allows), for an active current assignee who could decide
     themself and has not, and while nobody but that assignee holds a claim (the operator
     does not take the claim over: a claimant's decision given by phone is recorded for
     them; anyone else's waits until the claim is released — by an
     ``approvals.override_claim`` holder if need be — or expires). Recorded as on behalf
     (decision ``decided_by`` the operator, ``assignee`` the person, channel ``admin``, a
     mandatory reason).
   - ``reassign``: an operator who is neither requester nor starter, naming neither themself
     nor a group they belong to, nor only people who may not decide it.
   - ``complete_step``: an operator completing an approval step by hand decides it in
     everyone's place; refused unless ``SIGNOFF_OPERATORS_COMPLETE_APPROVALS`` is on, and then
     never on their own request.
   - ``retry_step``: a retry asks the assignees again with a fresh request; it decides
     nothing, so anyone the engine lets retry the instance may.
   - ``attach`` (add a file to a pending request): its requester (and the instance's starter),
     a current assignee directly or through a group, the active delegate of one, or an
     operator; nobody else (``not_participant``).

Files (``download``, asked with an instance and no request, through the reader check that
approvals registers with :mod:`orchestration.attachments`): besides whom the engine admits
(the instance's starter, staff, operators), anyone who may see one of the instance's requests
— an assignee, current or of an earlier request, directly or through a group, a delegate of
one, someone who decided one, or its requester — may read the instance's files; nobody else
learns they exist (``NotFound``).

Claims ("I'm on it"; ``approvals.claims``). A claim counts while the request is pending and
its claimant was active within the idle time; an idle claim stops counting at once (the
sweeper records its expiry).

   - ``claim``: whoever may ``decide`` it (the rules above, claims aside), on a request that
     takes claims (``Conflict`` ``not_claimable``: the step says ``claim=None``, its policy
     needs several decisions, or it is assigned to one person alone) and that nobody else
     holds (``Conflict`` ``claimed``: "claimed by X since T"). The claimant claiming again
     renews the claim.
   - ``release``: the claimant; or, forcing it, a holder of ``approvals.override_claim`` who
     is not the requester (``NotAllowed`` ``not_claimant`` for anyone else). Only a claimed
     request (``Conflict`` ``not_claimed``).
   - ``take_over``: someone other than the claimant (``Conflict`` ``own_claim``) who may
     ``decide`` it, claims aside; of a ``hard`` claim only a holder of
     ``approvals.override_claim`` (``NotAllowed`` ``hard_claim``). Only a claimed request.

Send back for changes (issue 12), its own acts:

- ``request_changes``: exactly who may ``decide`` (the same rules, one decision per person,
  the same "already approved by X" answer to the slower of two people, refused while someone
  else holds a claim), and only while the
  request is not in its last round (``max_rounds``; ``Conflict``, code ``max_rounds``) and
  someone could answer it (a requester or a starter; code ``no_requester``).
- ``resubmit`` and ``withdraw``: the request's requester or the instance's starter (whatever
  ``SIGNOFF_STARTER_IS_REQUESTER`` says: the input is theirs), active; only while the request
  is ``changes_requested`` and its instance running. Anyone else who may see the request is
  refused (``not_requester``); anyone who may not, answered ``NotFound``. A second answer (a
  double click) is a ``Conflict`` naming who answered first and when.

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

from dataclasses import dataclass, replace
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

from .models import ApprovalRequest, ClaimMode, ClaimState, Delegation, RequestState

User = get_user_model()
OPERATE_PERMISSION = "orchestration.operate_instance"
OVERRIDE_CLAIM_PERMISSION = "approvals.override_claim"


class Act(StrEnum):
    DECIDE = "decide"
    DECIDE_ON_BEHALF = "decide_on_behalf"
    REASSIGN = "reassign"
    COMPLETE_STEP = "complete_step"
    RETRY_STEP = "retry_step"
    # files (see "Files" above)
    ATTACH = "attach"
    DOWNLOAD = "download"
    CLAIM = "claim"
    RELEASE = "release"
    TAKE_OVER = "take_over"
    # send back for changes
    REQUEST_CHANGES = "request_changes"
    RESUBMIT = "resubmit"
    WITHDRAW = "withdraw"
    # context and comments
    VIEW_INSTANCE = "view_instance"
    READ_COMMENTS = "read_comments"
    COMMENT = "comment"


CLAIM_ACTS = (Act.CLAIM, Act.RELEASE, Act.TAKE_OVER)


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


def _stamp(when: datetime | None) -> str:
    return timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S %Z") if when else "earlier"


SENT_BACK = (RequestState.CHANGES_REQUESTED, RequestState.RESUBMITTED, RequestState.WITHDRAWN)


def _already_decided(request: ApprovalRequest) -> Conflict:
    last = request.decisions.select_related("decided_by").order_by("-at", "-id").first()
    when = request.resolved_at or (last.at if last else None)
    stamp = _stamp(when)
    if request.state in (RequestState.APPROVED, RequestState.REJECTED) and last is not None:
        message = f"already {request.state} by {last.decided_by.get_username()} at {stamp}"
    elif request.state in SENT_BACK and last is not None:
        message = f"changes were already requested by {last.decided_by.get_username()} at {stamp}"
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
    new_users: list[Any] | tuple[Any, ...] | None = None,
    new_groups: list[Group] | tuple[Group, ...] | None = None,
    now: datetime | None = None,
) -> Grant:
    """Answer whether ``user`` may perform ``act`` on ``request`` now, and for whom.

    Returns a :class:`Grant`; raises :class:`NotFound` (a request the user may not see),
    :class:`Conflict` (already decided; ``max_rounds``, ``no_requester``,
    ``already_resubmitted``, ``already_withdrawn``, ``not_changes_requested``,
    ``invalid_state``, ``claimed``, ``not_claimable``, ``not_claimed``, ``own_claim``,
    ``comments_closed``) or :class:`NotAllowed` (with a stable ``code``: ``inactive``,
    ``not_assignee``, ``self_approval``, ``already_decided``, ``on_behalf_disabled``,
    ``own_request``, ``permission_denied``, ``self_assignment``, ``approval_step``,
    ``not_requester``, ``not_claimant``, ``hard_claim``, ``not_participant``); a
    :class:`CommentGrant` for ``comment``. Call it inside the transaction that acts, with the
    instance (and request) locked, so the answer still holds when the write happens. Reads
    only. ``reassign`` without ``new_users`` and ``new_groups`` (both None) answers whether
    the user may reassign the request at all, before anything is said about the people named.
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
    if act is Act.DOWNLOAD:
        return _authorize_download(user, instance, now)
    if act in CONTEXT_ACTS:
        return _authorize_context(act, user, request, instance, now)
    assert request is not None
    if act in (Act.RESUBMIT, Act.WITHDRAW):
        return _authorize_answer(act, user, request, instance, now)
    if not can_see(user, request, now):
        raise NotFound("approval request not found")
    if request.state != RequestState.PENDING:
        raise _already_decided(request)
    requesters = requester_ids(request, instance)
    if act is Act.DECIDE:
        grant = _decide_grant(user, request, requesters, now)
        _check_claim(request, grant.actor, now)
        return grant
    if act is Act.REQUEST_CHANGES:
        # Who may decide, claims included (someone else's claim holds it back too).
        grant = _decide_grant(user, request, requesters, now)
        _check_claim(request, grant.actor, now)
        if request.last_round:
            raise Conflict(
                f"this is round {request.round} of {request.max_rounds}, the last: changes can "
                "no longer be requested; approve or reject",
                code="max_rounds",
            )
        if not request.has_reviser:
            raise Conflict(
                "nobody could revise this request (it has no requester); approve or reject",
                code="no_requester",
            )
        return replace(grant, act=Act.REQUEST_CHANGES)
    if act is Act.ATTACH:
        return _authorize_attach(user, request, requesters, now)
    if act in CLAIM_ACTS:
        return _authorize_claim_act(act, user, request, requesters, now)
    if not is_operator(user):
        raise NotAllowed("you may not operate approval requests", code="permission_denied")
    if user.pk in requesters:
        raise NotAllowed(
            "you cannot act on your own request, not even as an operator", code="own_request"
        )
    if act is Act.DECIDE_ON_BEHALF:
        return _authorize_on_behalf(user, request, assignee, requesters, now)
    return _authorize_reassign(user, request, requesters, new_users, new_groups)


def _decide_grant(
    user: Any, request: ApprovalRequest, requesters: set[int], now: datetime
) -> Grant:
    """The ``decide`` rules without the claim: whose vote ``user`` may cast."""
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
    user: Any, request: ApprovalRequest, assignee: Any, requesters: set[int], now: datetime
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
    # The vote is the assignee's: only their own claim (or none) lets it through.
    _check_claim(request, assignee, now)
    return Grant(Act.DECIDE_ON_BEHALF, user, assignee, _via(member_of), on_behalf=True)


def _authorize_reassign(
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


def _authorize_answer(
    act: Act, user: Any, request: ApprovalRequest, instance: WorkflowInstance, now: datetime
) -> Grant:
    """Resubmit or withdraw a request sent back for changes: its requester or starter."""
    owners = {request.requester_id, instance.started_by_id} - {None}
    if user.pk not in owners:
        if can_see(user, request, now):
            verb = "resubmit" if act is Act.RESUBMIT else "withdraw"
            raise NotAllowed(f"only the requester may {verb} this request", code="not_requester")
        raise NotFound("approval request not found")
    if request.state == RequestState.RESUBMITTED or request.state == RequestState.WITHDRAWN:
        who = request.answered_by.get_username() if request.answered_by_id else "someone"
        raise Conflict(
            f"already {request.state} by {who} at {_stamp(request.answered_at)}",
            code=f"already_{request.state}",
        )
    if request.state == RequestState.PENDING:
        raise Conflict(
            "the request is waiting for a decision, not for your changes",
            code="not_changes_requested",
        )
    if request.state != RequestState.CHANGES_REQUESTED:
        raise _already_decided(request)
    if instance.state != "running":
        raise Conflict(
            f"the workflow instance is {instance.state}; it can no longer be revised",
            code="invalid_state",
        )
    return Grant(act, user)


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


# -- files ---------------------------------------------------------------------------------------


def _authorize_attach(
    user: Any, request: ApprovalRequest, requesters: set[int], now: datetime
) -> Grant:
    if user.pk in requesters or is_operator(user):
        return Grant(Act.ATTACH, user)
    groups = _assigned_groups(request)
    for principal in [user, *_delegators(user, now)]:
        direct, member_of = _assignment(request, principal, groups)
        if direct or member_of:
            return Grant(Act.ATTACH, user, principal, _via(member_of))
    raise NotAllowed(
        "only the requester, the assignees (or their delegates) and operators may add files "
        "to this request",
        code="not_participant",
    )


def _authorize_download(user: Any, instance: WorkflowInstance, now: datetime) -> Grant:
    """Whoever may read the instance (``view_instance``: current and past assignees, their
    delegates, deciders, the requester) may read its files; nobody else learns they exist."""
    try:
        _authorize_view_instance(user, instance, now)
    except NotFound:
        raise NotFound("file not found") from None
    return Grant(Act.DOWNLOAD, user)


def may_read_files(user: Any, instance: WorkflowInstance) -> bool:
    """The reader check approvals registers with :mod:`orchestration.attachments`: the
    ``download`` act's answer as a yes or no."""
    try:
        authorize(Act.DOWNLOAD, user=user, request=None, instance=instance)
    except (NotFound, NotAllowed):
        return False
    return True


# -- claims ----------------------------------------------------------------------------------------


def _stamp(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "earlier"


def claimant_name(request: ApprovalRequest) -> str:
    claimant = request.claimed_by
    return claimant.get_username() if claimant is not None else "a removed user"


def claimed_message(request: ApprovalRequest) -> str:
    """ "claimed by bob since 2026-03-02 10:15:00 UTC" """
    return f"claimed by {claimant_name(request)} since {_stamp(request.claimed_at)}"


def _claimed(request: ApprovalRequest) -> Conflict:
    return Conflict(claimed_message(request), code="claimed")


def _check_claim(request: ApprovalRequest, person: Any, now: datetime) -> None:
    """Refuse while someone other than ``person`` holds a live claim on ``request``."""
    holder = request.claim_holder_id(now)
    if holder is not None and holder != person.pk:
        raise _claimed(request)


def claimable_problem(request: ApprovalRequest) -> str | None:
    """Why ``request`` takes no claims, or None. Reads the assignees (two small queries)."""
    if request.claim_mode == ClaimMode.NONE:
        return "this request takes no claims (its step says claim=None, or several must decide)"
    if not request.assignee_groups.exists() and request.assignee_users.count() < 2:
        return "this request is assigned to one person alone; it needs no claim"
    return None


def may_override_claims(user: Any) -> bool:
    return bool(
        getattr(user, "is_authenticated", False)
        and user.is_active
        and user.has_perm(OVERRIDE_CLAIM_PERMISSION)
    )


def _authorize_claim_act(
    act: Act, user: Any, request: ApprovalRequest, requesters: set[int], now: datetime
) -> Grant:
    claimed = request.claim_state == ClaimState.CLAIMED
    own = claimed and request.claimed_by_id == user.pk
    if act is Act.RELEASE:
        if not claimed:
            raise Conflict("this request is not claimed", code="not_claimed")
        if own:
            return Grant(act, user)
        if not may_override_claims(user):
            hint = "; take it over instead" if request.claim_mode == ClaimMode.SOFT else ""
            raise NotAllowed(
                f"{claimed_message(request)}: only they may release it{hint}",
                code="not_claimant",
            )
        if user.pk in requesters:
            raise NotAllowed("you cannot release a claim on your own request", code="own_request")
        return Grant(act, user, on_behalf=True)
    if act is Act.TAKE_OVER:
        if not claimed:
            raise Conflict("this request is not claimed; claim it instead", code="not_claimed")
        if own:
            raise Conflict("you already hold the claim on this request", code="own_claim")
    # claim, or take over: the claimant-to-be must be someone who may decide it now.
    grant = _decide_grant(user, request, requesters, now)
    problem = claimable_problem(request)
    if problem is not None:
        raise Conflict(problem, code="not_claimable")
    if act is Act.CLAIM:
        _check_claim(request, user, now)
        return Grant(act, user, grant.principal, grant.via_group)
    if (
        request.claim_mode == ClaimMode.HARD
        and request.claim_holder_id(now) is not None
        and not may_override_claims(user)
    ):
        raise NotAllowed(
            f"{claimed_message(request)}: a hard claim is released by its claimant or "
            "taken over by someone allowed to override claims",
            code="hard_claim",
        )
    return Grant(act, user, grant.principal, grant.via_group)


def claim_actions(user: Any, request: ApprovalRequest, *, may_decide: bool) -> set[str]:
    """Which claim buttons to offer ``user`` on ``request`` (``claim``, ``release``,
    ``take_over``), from what the page already knows (``may_decide``: the decide rules,
    claims aside) and the row's claim columns; :func:`authorize` answers again, under the
    lock, when one is used. No query unless the request is unclaimed and decidable."""
    if request.state != RequestState.PENDING or request.claim_mode == ClaimMode.NONE:
        return set()
    now = timezone.now()
    holder = request.claim_holder_id(now)
    if holder is None:
        if may_decide and claimable_problem(request) is None:
            return {"claim"}
        return set()
    if holder == user.pk:
        return {"claim", "release"}  # claiming again renews it
    offered = set()
    if may_decide and (request.claim_mode == ClaimMode.SOFT or may_override_claims(user)):
        offered.add("take_over")
    if may_override_claims(user) and user.pk not in requester_ids(request, request.instance):
        offered.add("release")
    return offered


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
