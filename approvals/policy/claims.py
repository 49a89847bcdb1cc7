"""The claim rules ("I'm on it"; :mod:`approvals.claims`): who may ``claim``, ``release``
or ``take_over``, what a claim holds back (:func:`check_claim`), and which claim buttons a
page offers (:func:`claim_actions`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext_noop

from orchestration.errors import Conflict, Message, NotAllowed

from ..models import ApprovalRequest, ClaimMode, ClaimState, RequestState
from .grants import Act, Grant, stamp
from .roles import decide_grant, may_override_claims, requester_ids


def claimant_name(request: ApprovalRequest) -> str:
    claimant = request.claimed_by
    return (
        claimant.get_username() if claimant is not None else Message(gettext_noop("a removed user"))
    )


def claimed_message(request: ApprovalRequest) -> Message:
    """ "claimed by bob since 2026-03-02 10:15:00 UTC" (in English; a page localizes it)"""
    return Message(
        gettext_noop("claimed by %(name)s since %(when)s"),
        name=claimant_name(request),
        when=stamp(request.claimed_at),
    )


def claimed(request: ApprovalRequest) -> Conflict:
    return Conflict(claimed_message(request), code="claimed")


def check_claim(request: ApprovalRequest, person: Any, now: datetime) -> None:
    """Refuse while someone other than ``person`` holds a live claim on ``request``."""
    holder = request.claim_holder_id(now)
    if holder is not None and holder != person.pk:
        raise claimed(request)


def claimable_problem(request: ApprovalRequest) -> str | None:
    """Why ``request`` takes no claims, or None. Reads the assignees (two small queries)."""
    if request.claim_mode == ClaimMode.NONE:
        return gettext_noop(
            "this request takes no claims (its step says claim=None, or several must decide)"
        )
    if not request.assignee_groups.exists() and request.assignee_users.count() < 2:
        return gettext_noop("this request is assigned to one person alone; it needs no claim")
    return None


def authorize_claim_act(
    act: Act, user: Any, request: ApprovalRequest, requesters: set[int], now: datetime
) -> Grant:
    claimed = request.claim_state == ClaimState.CLAIMED
    own = claimed and request.claimed_by_id == user.pk
    if act is Act.RELEASE:
        if not claimed:
            raise Conflict(gettext_noop("this request is not claimed"), code="not_claimed")
        if own:
            return Grant(act, user)
        if not may_override_claims(user):
            if request.claim_mode == ClaimMode.SOFT:
                template = gettext_noop(
                    "%(claimed)s: only they may release it; take it over instead"
                )
            else:
                template = gettext_noop("%(claimed)s: only they may release it")
            raise NotAllowed(
                Message(template, claimed=claimed_message(request)), code="not_claimant"
            )
        if user.pk in requesters:
            raise NotAllowed(
                gettext_noop("you cannot release a claim on your own request"), code="own_request"
            )
        return Grant(act, user, on_behalf=True)
    if act is Act.TAKE_OVER:
        if not claimed:
            raise Conflict(
                gettext_noop("this request is not claimed; claim it instead"), code="not_claimed"
            )
        if own:
            raise Conflict(
                gettext_noop("you already hold the claim on this request"), code="own_claim"
            )
    # claim, or take over: the claimant-to-be must be someone who may decide it now.
    grant = decide_grant(user, request, requesters, now)
    problem = claimable_problem(request)
    if problem is not None:
        raise Conflict(problem, code="not_claimable")
    if act is Act.CLAIM:
        check_claim(request, user, now)
        return Grant(act, user, grant.principal, grant.via_group)
    if (
        request.claim_mode == ClaimMode.HARD
        and request.claim_holder_id(now) is not None
        and not may_override_claims(user)
    ):
        raise NotAllowed(
            Message(
                gettext_noop(
                    "%(claimed)s: a hard claim is released by its claimant or taken over by "
                    "someone allowed to override claims"
                ),
                claimed=claimed_message(request),
            ),
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
