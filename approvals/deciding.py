"""Deciding a request: a person's own decision (:func:`approval_decide` — the inbox, bulk,
the API and email links all come here), an operator's decision on an assignee's behalf
(:func:`approval_decide_on_behalf`), and resolving the request once its policy (any, all,
quorum, veto) is met, which completes or fails the approval step.

Each is one transaction: the instance locked, then the request (:mod:`approvals.locking`),
the decision policy asked (:func:`approvals.policy.authorize`), the decision and its events
written.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils.translation import gettext_noop

from orchestration import engine
from orchestration.errors import InvalidInput, NotAllowed
from orchestration.models import StepRun

from . import notifications, policy
from .context import step_label
from .definitions import ApprovalStep
from .inputs import check_channel, check_outcome, clean_comment, clean_reason
from .locking import lock_request, step_run_of
from .models import ApprovalRequest, Channel, Decision, Outcome, Policy, RequestState
from .outcomes import request_outcome


def approval_decide(
    *,
    request_id: Any,
    user: Any,
    outcome: str,
    comment: str = "",
    channel: str = Channel.WEB,
) -> Decision:
    """Record ``user``'s decision and resolve the request when its policy is met.

    Who may decide is :func:`approvals.policy.authorize` (act ``decide``), asked under the
    instance lock: an active current assignee (directly, through a group, or as the delegate
    of an active assignee), not on their own request unless the step allows it, one decision
    per person, and not while someone else holds a claim on it (:class:`Conflict`, code
    ``claimed``: "claimed by X since T"); a request the user may not see is
    :class:`NotFound`. Two people deciding at
    once get one resolution (the instance row is locked) and the second a :class:`Conflict`
    saying who decided and when. Writes ``approval_decided`` and, on resolution,
    ``approval_resolved`` plus the step's own event, in one transaction.
    """
    check_outcome(outcome)
    check_channel(channel)
    comment = clean_comment(comment)
    if not getattr(user, "is_authenticated", False):
        raise NotAllowed(gettext_noop("log in to decide"), code="not_authenticated")
    step_run_id = step_run_of(request_id)
    with transaction.atomic():
        locked, request = lock_request(request_id, step_run_id, user)
        grant = policy.authorize(
            policy.Act.DECIDE,
            user=user,
            request=request,
            instance=locked.instance,
            now=locked.journal.now,
        )
        decision = _record_decision(locked, request, grant, outcome, comment, channel)
        locked.journal.flush()
        return decision


def approval_decide_on_behalf(
    *,
    request_id: Any,
    operator: Any,
    assignee: Any,
    outcome: str,
    comment: str = "",
    reason: str,
) -> Decision:
    """An operator records ``assignee``'s decision (e.g. given by phone), where
    ``SIGNOFF_DECIDE_ON_BEHALF`` allows it. :func:`approvals.policy.authorize` (act
    ``decide_on_behalf``) decides: the operator holds ``orchestration.operate_instance`` and is
    neither the requester nor the starter; ``assignee`` is an active current assignee who may
    decide and has not. The decision counts as the assignee's, is recorded as on behalf
    (``decided_by`` the operator, channel ``admin``, event data ``on_behalf``) with the
    mandatory reason."""
    reason = clean_reason(reason)
    check_outcome(outcome)
    comment = clean_comment(comment)
    step_run_id = step_run_of(request_id)
    with transaction.atomic():
        locked, request = lock_request(request_id, step_run_id, operator)
        grant = policy.authorize(
            policy.Act.DECIDE_ON_BEHALF,
            user=operator,
            request=request,
            instance=locked.instance,
            assignee=assignee,
            now=locked.journal.now,
        )
        decision = _record_decision(locked, request, grant, outcome, comment, Channel.ADMIN, reason)
        locked.journal.flush()
        return decision


def _record_decision(
    locked: engine.LockedInstance,
    request: ApprovalRequest,
    grant: policy.Grant,
    outcome: str,
    comment: str,
    channel: str,
    reason: str = "",
) -> Decision:
    if outcome == Outcome.REJECT and request.reject_requires_comment and not comment:
        raise InvalidInput(gettext_noop("a comment is required to reject"), code="comment_required")
    user, principal = grant.actor, grant.principal
    decision = Decision.objects.create(
        request=request,
        assignee=principal,
        decided_by=user,
        via_group=grant.via_group,
        outcome=outcome,
        comment=comment,
        channel=channel,
        reason=reason,
        at=locked.journal.now,
    )
    step = locked.step_by_id(request.step_run_id)
    locked.record(
        "approval_decided",
        step=step,
        data={
            "outcome": outcome,
            "user": user.get_username(),
            "for": principal.get_username() if principal.pk != user.pk else None,
            "comment": comment,
            "channel": channel,
            **({"on_behalf": True} if grant.on_behalf else {}),
            **({"reason": reason} if reason else {}),
        },
    )
    decisions = list(request.decisions.select_related("decided_by", "assignee"))
    resolution = _resolution(request, decisions)
    if resolution is not None:
        _resolve(locked, request, step, resolution, decisions)
    return decision


def _resolve(
    locked: engine.LockedInstance,
    request: ApprovalRequest,
    step: StepRun | None,
    resolution: str,
    decisions: list[Decision],
) -> None:
    if resolution == RequestState.APPROVED:
        request.approve()
    else:
        request.reject()
    request.resolved_at = locked.journal.now
    request.save(update_fields=["state", "resolved_at"])
    output = request_outcome(request, decisions)
    locked.record("approval_resolved", step=step, data={"outcome": resolution})
    # This step's decision, said as that (the instance's end is told once, by lifecycle).
    notifications.notify_requester(
        request, kind="decided", extra={"outcome": output, "step": step_label(request.step_name)}
    )
    if step is None or step.state != "waiting" or locked.instance.state != "running":
        return
    spec = locked.definition.steps.get(step.name) if locked.definition else None
    continue_on_reject = isinstance(spec, ApprovalStep) and spec.on_reject == "continue"
    if resolution == RequestState.APPROVED or continue_on_reject:
        locked.resolve_step(step, output)
    else:
        step.output = engine._jsonable(output)
        last = output["decisions"][-1] if output["decisions"] else {}
        message = f"rejected by {last.get('user', '?')}"
        if last.get("comment"):
            message += f": {last['comment']}"
        locked.fail_step(
            step,
            {"type": "signoff.ApprovalRejected", "message": message, "traceback": ""},
            reason="rejected",
        )


def _resolution(request: ApprovalRequest, decisions: list[Decision]) -> str | None:
    approvals = [d for d in decisions if d.outcome == Outcome.APPROVE]
    rejections = [d for d in decisions if d.outcome == Outcome.REJECT]
    if request.policy == Policy.ANY:
        return RequestState.APPROVED if approvals else RequestState.REJECTED if rejections else None
    if rejections and (request.veto or request.policy == Policy.ALL):
        return RequestState.REJECTED
    if request.policy == Policy.QUORUM:
        if len(approvals) >= request.quorum:
            return RequestState.APPROVED
        if len(rejections) >= request.quorum:
            return RequestState.REJECTED
        return None
    # all: every assigned user, and one member of every assigned group, approved
    approved_users = {d.assignee_id for d in approvals}
    approved_groups = {d.via_group_id for d in approvals if d.via_group_id}
    users_done = set(request.assignee_users.values_list("pk", flat=True)) <= approved_users
    groups_done = set(request.assignee_groups.values_list("pk", flat=True)) <= approved_groups
    return RequestState.APPROVED if users_done and groups_done else None
