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
   - ``skip_step`` and ``edit_step`` (an operator skipping the approval step with an output,
     or editing its output): they decide the step like ``complete_step`` — refused unless
     ``SIGNOFF_OPERATORS_COMPLETE_APPROVALS`` is on (``approval_step``), and then only for an
     operator who is neither the requester nor the starter (``own_request``) nor someone who
     decided one of the step's requests (``own_decision``).
   - ``edit_input`` (the instance's input edited once the step started) and ``reset_step``
     (the instance re-run over the step: its assignees are asked again, the decision made is
     thrown away): an operator who is neither the requester, the starter nor a decider.
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

Why one package and one entry: the rules above are one policy (DESIGN.md, "Trust"); callers
only ever ask :func:`authorize`. The package: :mod:`~approvals.policy.grants` (acts and
answers), :mod:`~approvals.policy.roles` (who someone is to a request, whose vote they may
cast), :mod:`~approvals.policy.deciding`, :mod:`~approvals.policy.claims` and
:mod:`~approvals.policy.participation` (the rules per act), and here :func:`authorize`, which
checks rules 1–3 and hands each act to its rules. Everything a caller needs is importable
from ``approvals.policy``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import Group
from django.utils import timezone
from django.utils.translation import gettext_noop

from orchestration.errors import NotAllowed, NotFound
from orchestration.models import WorkflowInstance

from ..models import ApprovalRequest, RequestState
from .claims import (
    authorize_claim_act,
    check_claim,
    claim_actions,
    claimable_problem,
    claimant_name,
    claimed_message,
)
from .deciding import (
    authorize_answer,
    authorize_on_behalf,
    authorize_reassign,
    authorize_request_changes,
    authorize_step,
    operator_actions,
)
from .grants import (
    CLAIM_ACTS,
    CONTEXT_ACTS,
    OPERATE_PERMISSION,
    OVERRIDE_CLAIM_PERMISSION,
    SENT_BACK,
    STEP_ACTS,
    Act,
    CommentGrant,
    Grant,
    already_decided,
    already_decided_message,
)
from .participation import authorize_attach, authorize_context, authorize_download
from .roles import can_see, decide_grant, is_operator, may_override_claims, requester_ids

__all__ = [
    "CLAIM_ACTS",
    "CONTEXT_ACTS",
    "OPERATE_PERMISSION",
    "OVERRIDE_CLAIM_PERMISSION",
    "SENT_BACK",
    "Act",
    "CommentGrant",
    "Grant",
    "already_decided_message",
    "authorize",
    "can_see",
    "claim_actions",
    "claimable_problem",
    "claimant_name",
    "claimed_message",
    "is_operator",
    "may_override_claims",
    "may_read_files",
    "operator_actions",
    "requester_ids",
]


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
        raise NotAllowed(
            gettext_noop("log in to act on approval requests"), code="not_authenticated"
        )
    if not user.is_active:
        raise NotAllowed(gettext_noop("this account is deactivated"), code="inactive")
    if instance is None:
        if request is None:
            raise NotFound(gettext_noop("approval request not found"))
        instance = request.instance
    if act in STEP_ACTS:
        return authorize_step(act, user, request, instance)
    if act is Act.DOWNLOAD:
        return authorize_download(user, instance, now)
    if act in CONTEXT_ACTS:
        return authorize_context(act, user, request, instance, now)
    assert request is not None
    if act in (Act.RESUBMIT, Act.WITHDRAW):
        return authorize_answer(act, user, request, instance, now)
    if not can_see(user, request, now):
        raise NotFound(gettext_noop("approval request not found"))
    if request.state != RequestState.PENDING:
        raise already_decided(request)
    requesters = requester_ids(request, instance)
    if act is Act.DECIDE:
        grant = decide_grant(user, request, requesters, now)
        check_claim(request, grant.actor, now)
        return grant
    if act is Act.REQUEST_CHANGES:
        return authorize_request_changes(user, request, requesters, now)
    if act is Act.ATTACH:
        return authorize_attach(user, request, requesters, now)
    if act in CLAIM_ACTS:
        return authorize_claim_act(act, user, request, requesters, now)
    if not is_operator(user):
        raise NotAllowed(
            gettext_noop("you may not operate approval requests"), code="permission_denied"
        )
    if user.pk in requesters:
        raise NotAllowed(
            gettext_noop("you cannot act on your own request, not even as an operator"),
            code="own_request",
        )
    if act is Act.DECIDE_ON_BEHALF:
        return authorize_on_behalf(user, request, assignee, requesters, now)
    return authorize_reassign(user, request, requesters, new_users, new_groups)


def may_read_files(user: Any, instance: WorkflowInstance) -> bool:
    """The reader check approvals registers with :mod:`orchestration.attachments`: the
    ``download`` act's answer as a yes or no."""
    try:
        authorize(Act.DOWNLOAD, user=user, request=None, instance=instance)
    except (NotFound, NotAllowed):
        return False
    return True
