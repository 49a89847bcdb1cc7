"""Every write of the human side. The inbox, the API, email links and the admin all decide
through :func:`approval_decide`, and send back for changes through
:func:`approval_request_changes`; the requester answers with :func:`approval_resubmit` (the
next round) or :func:`approval_withdraw`.

Lock order is the engine's: the instance row first (it guards the instance, its steps and
their approval requests), then the request row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Max, Prefetch
from django.utils import timezone

from orchestration import attachments, engine, kinds
from orchestration.actors import actor_of
from orchestration.calendar import add_duration
from orchestration.definitions import StepSpec
from orchestration.errors import Conflict, InvalidInput, NotAllowed, NotFound
from orchestration.journal import Journal
from orchestration.jsonsafe import string_problem
from orchestration.models import StepRun

from . import notifications, policy
from .context import step_label
from .definitions import ApprovalStep
from .models import (
    DECISIONS,
    ApprovalRequest,
    Channel,
    Decision,
    Delegation,
    Outcome,
    PastAssignee,
    Policy,
    RequestState,
)

User = get_user_model()
MAX_COMMENT = 5000


def timer_at(spec: ApprovalStep, start: datetime, duration: timedelta | None) -> datetime | None:
    """When a timer of ``spec`` set at ``start`` fires (business time if the step says so).
    ``SIGNOFF_DEMO_TIME_FACTOR`` compresses wall-clock timers for demos."""
    if duration is None:
        return None
    if not spec.business_hours and settings.SIGNOFF_DEMO_TIME_FACTOR > 1:
        duration = duration / settings.SIGNOFF_DEMO_TIME_FACTOR
    return add_duration(start, duration, business=spec.business_hours)


def _before_due(request: ApprovalRequest, moment: datetime | None) -> datetime | None:
    if moment is None or (request.due_at is not None and moment >= request.due_at):
        return None
    return moment


def _requester(spec: ApprovalStep, ctx: Any, instance: Any) -> Any:
    """Who asked: for an instance a person started, that person — or, when the workflow
    declares ``requester_input``, the person that input field names (checked at start: only
    holders of ``orchestration.start_on_behalf`` name someone else). The step's
    ``requester=`` function is asked only for instances the system started, so an input
    cannot make someone else the requester."""
    if instance.started_by_id is not None:
        definition = engine.definition_of(instance)
        field_name = definition.requester_input if definition is not None else None
        named = ctx.input.get(field_name) if field_name else None
        if isinstance(named, str) and named != instance.started_by.get_username():
            return User.objects.filter(username=named).first()
        return instance.started_by
    name = spec.requester(ctx) if spec.requester else None
    return User.objects.filter(username=name).first() if isinstance(name, str) else None


# -- the approval kind: what the engine calls ---------------------------------------------------


class ApprovalKind:
    name = "approval"

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        assert isinstance(spec, ApprovalStep)
        # A retried step (its request rejected or expired, the instance retried) asks again
        # in the next round: a fresh request beside the earlier ones.
        earlier = (
            ApprovalRequest.objects.filter(step_run_id=step_run.pk).aggregate(n=Max("round"))["n"]
            if step_run.pk
            else None
        )
        step_run.wait()
        step_run.started_at = now
        journal.record("step_waiting", step=step_run)
        open_round(journal, step_run, spec, now, round_no=(earlier or 0) + 1)

    def cancelled(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        request = (
            ApprovalRequest.objects.select_for_update(no_key=True)
            .filter(
                step_run_id=step_run.pk,
                state__in=[RequestState.PENDING, RequestState.CHANGES_REQUESTED],
            )
            .first()
        )
        if request is None:
            return
        request.cancel()
        request.resolved_at = now
        request.save(update_fields=["state", "resolved_at"])
        journal.record("approval_cancelled", step=step_run)

    def offers_operator(self, action: str) -> bool:
        return action != "complete" or settings.SIGNOFF_OPERATORS_COMPLETE_APPROVALS

    def authorize_operator(
        self, *, action: str, step_run: StepRun, spec: StepSpec, instance: Any, user: Any
    ) -> None:
        """The engine asks before completing (``complete``) or retrying (``retry``) an
        approval step by hand: the decision policy answers (a retry by the system — no user,
        e.g. ``manage.py signoff retry`` — asks the assignees again and is allowed)."""
        if action == "retry" and user is None:
            return
        request = ApprovalRequest.objects.filter(step_run_id=step_run.pk).order_by("-pk").first()
        if request is not None:
            request.instance = instance
        act = policy.Act.COMPLETE_STEP if action == "complete" else policy.Act.RETRY_STEP
        policy.authorize(act, user=user, request=request, instance=instance)


kinds.register_kind(ApprovalKind())


def open_round(
    journal: Journal, step_run: StepRun, spec: ApprovalStep, now: datetime, *, round_no: int
) -> ApprovalRequest:
    """A new request for a waiting approval step: round ``round_no``, assignees resolved from
    the context as it is now (the input may have been revised), timers counted from ``now``.
    Writes ``approval_requested``; the row is saved once the journal has written the step."""
    ctx = engine.step_context(journal, step_run)
    usernames, group_names = spec.resolve_assignees(ctx)
    users = list(User.objects.filter(username__in=usernames, is_active=True))
    groups = list(Group.objects.filter(name__in=group_names))
    instance = journal.instance
    requester = _requester(spec, ctx, instance)
    request = ApprovalRequest(
        instance=instance,
        workflow=instance.workflow,
        business_key=instance.business_key,
        step_name=step_run.name,
        round=round_no,
        title=spec.render_title(ctx),
        fields=engine._jsonable(spec.render_fields(ctx)),
        policy=spec.policy,
        quorum=spec.quorum if spec.policy == Policy.QUORUM else 1,
        veto=spec.veto,
        reject_requires_comment=spec.reject_requires_comment,
        allow_self_approval=spec.allow_self_approval,
        revisable=list(spec.revisable),
        max_rounds=spec.max_rounds,
        claim_mode=spec.claim_mode,
        requester=requester,
        created_at=now,
        due_at=timer_at(spec, now, spec.due),
    )
    request.refresh_search(requester.get_username() if requester else "")
    request.next_reminder_at = _before_due(request, timer_at(spec, now, spec.remind_every))
    request.next_escalation_at = (
        timer_at(spec, now, spec.escalate[0].after) if spec.escalate else None
    )
    missing = sorted(set(usernames) - {u.username for u in users}) + sorted(
        set(group_names) - {g.name for g in groups}
    )
    journal.record(
        "approval_requested",
        step=step_run,
        data={
            "title": request.title,
            "users": [u.username for u in users],
            "groups": [g.name for g in groups],
            "policy": spec.policy,
            "due_at": request.due_at.isoformat() if request.due_at else None,
            **({"round": round_no} if round_no > 1 else {}),
            **({"unknown_assignees": missing} if missing else {}),
        },
    )

    def create() -> None:
        request.step_run = step_run
        request.save(force_insert=True)
        request.assignee_users.set(users)
        request.assignee_groups.set(groups)
        notifications.notify_assignees(
            request, notifications.current_assignee_users(request), now, kind="assigned"
        )

    journal.after_write(create)
    return request


# -- deciding -----------------------------------------------------------------------------------


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


def _decision_item(d: Decision) -> dict[str, Any]:
    return {
        "user": d.decided_by.get_username(),
        "for": d.assignee.get_username() if d.assignee_id != d.decided_by_id else None,
        "outcome": d.outcome,
        "comment": d.comment,
        "channel": d.channel,
        "at": d.at.isoformat(),
    }


def earlier_rounds(request: ApprovalRequest) -> list[ApprovalRequest]:
    """The step's rounds before ``request``, oldest first, each with its decisions (two
    queries however many; none in round 1)."""
    if request.round <= 1:
        return []
    return list(
        ApprovalRequest.objects.filter(step_run_id=request.step_run_id, round__lt=request.round)
        .select_related("answered_by")
        .prefetch_related(
            Prefetch(
                "decisions",
                queryset=Decision.objects.select_related("decided_by", "assignee", "via_group"),
            )
        )
        .order_by("round")
    )


def round_summary(request: ApprovalRequest) -> dict[str, Any]:
    """One earlier round, for the step's output (``rounds``)."""
    decisions = list(request.decisions.all())
    sent_back = next((d for d in decisions if d.outcome == Outcome.REQUEST_CHANGES), None)
    return {
        "round": request.round,
        "state": request.state,
        "requested_at": request.created_at.isoformat(),
        "changes_requested_by": sent_back.decided_by.get_username() if sent_back else None,
        "comment": sent_back.comment if sent_back else "",
        "answered_by": request.answered_by.get_username() if request.answered_by_id else None,
        "answered_at": request.answered_at.isoformat() if request.answered_at else None,
        "decisions": [_decision_item(d) for d in decisions],
    }


def request_outcome(request: ApprovalRequest, decisions: list[Decision]) -> dict[str, Any]:
    """The step's output: the decision, who, when, and every decision with its comment; the
    round it was decided in and the earlier rounds (sent back for changes, resubmitted)."""
    deciding = [
        d
        for d in decisions
        if d.outcome
        == (Outcome.APPROVE if request.state == RequestState.APPROVED else Outcome.REJECT)
    ]
    return {
        "decision": request.state,
        "decided_by": [d.decided_by.get_username() for d in deciding],
        "at": request.resolved_at.isoformat() if request.resolved_at else None,
        "comments": [d.comment for d in decisions if d.comment],
        "decisions": [_decision_item(d) for d in decisions],
        "round": request.round,
        "rounds": [round_summary(r) for r in earlier_rounds(request)],
    }


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
    _check_outcome(outcome)
    _check_channel(channel)
    comment = _clean_comment(comment)
    if not getattr(user, "is_authenticated", False):
        raise NotAllowed("log in to decide", code="not_authenticated")
    step_run_id = _step_run_of(request_id)
    with transaction.atomic():
        locked, request = _lock(request_id, step_run_id, user)
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


def _check_outcome(outcome: Any) -> None:
    if outcome == Outcome.REQUEST_CHANGES:
        raise InvalidInput(
            "request changes with its own action (a comment for the requester is required)",
            code="invalid_outcome",
        )
    if outcome not in DECISIONS:
        raise InvalidInput("outcome must be one of approve, reject", code="invalid_outcome")


def _check_channel(channel: Any) -> None:
    if channel not in Channel.values or channel == Channel.ADMIN:
        raise InvalidInput("channel must be one of web, email, api")


def _clean_comment(comment: Any) -> str:
    if not isinstance(comment, str):
        raise InvalidInput("comment must be a string")
    comment = comment.strip()
    if len(comment) > MAX_COMMENT:
        raise InvalidInput(f"comment is longer than {MAX_COMMENT} characters")
    if string_problem(comment):
        raise InvalidInput(f"comment: {string_problem(comment)}")
    return comment


def _step_run_of(request_id: Any) -> int:
    try:
        step_run_id = (
            ApprovalRequest.objects.filter(pk=int(request_id))
            .values_list("step_run_id", flat=True)
            .first()
        )
    except (TypeError, ValueError, OverflowError):
        step_run_id = None
    if step_run_id is None:
        raise NotFound("approval request not found")
    return step_run_id


def _lock(
    request_id: Any, step_run_id: int, user: Any
) -> tuple[engine.LockedInstance, ApprovalRequest]:
    """The instance (the lock for its steps and requests), then the request row. Whether the
    request is still pending is the policy's question (after whether the user may see it)."""
    locked = engine.lock_instance(step_run_id=step_run_id, actor=actor_of(user))
    if locked is None:
        raise NotFound("approval request not found")
    # NO KEY UPDATE: rows that only refer to the request (a token minted while a mail is
    # delivered holds KEY SHARE for that delivery) never make a decision wait.
    request = ApprovalRequest.objects.select_for_update(no_key=True).get(pk=int(request_id))
    request.instance = locked.instance
    return locked, request


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
        raise InvalidInput("a comment is required to reject", code="comment_required")
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


# -- send back for changes ----------------------------------------------------------------------


def approval_request_changes(
    *, request_id: Any, user: Any, comment: str, channel: str = Channel.WEB
) -> Decision:
    """Send a pending request back to its requester for changes, with a comment (required).

    Who may is :func:`approvals.policy.authorize` (act ``request_changes``): exactly who may
    decide, and not in the request's last round (``Conflict``, code ``max_rounds``). Under
    every policy one request for changes ends the round at once (like a veto); decisions
    others made in it stay recorded. The request becomes ``changes_requested`` (its timers
    stop), the step keeps waiting, the requester gets one mail. Records the person's decision
    (outcome ``request_changes``) and writes ``approval_changes_requested``, in one
    transaction under the instance lock; two people acting at once get one outcome and the
    second a :class:`Conflict` saying who was first."""
    _check_channel(channel)
    comment = _clean_comment(comment)
    if not comment:
        raise InvalidInput(
            "a comment is required to request changes: tell the requester what to change",
            code="comment_required",
        )
    if not getattr(user, "is_authenticated", False):
        raise NotAllowed("log in to decide", code="not_authenticated")
    step_run_id = _step_run_of(request_id)
    with transaction.atomic():
        locked, request = _lock(request_id, step_run_id, user)
        now = locked.journal.now
        grant = policy.authorize(
            policy.Act.REQUEST_CHANGES,
            user=user,
            request=request,
            instance=locked.instance,
            now=now,
        )
        principal = grant.principal
        decision = Decision.objects.create(
            request=request,
            assignee=principal,
            decided_by=user,
            via_group=grant.via_group,
            outcome=Outcome.REQUEST_CHANGES,
            comment=comment,
            channel=channel,
            at=now,
        )
        request.request_changes()
        request.resolved_at = now
        request.next_reminder_at = None
        request.next_escalation_at = None
        request.save(
            update_fields=["state", "resolved_at", "next_reminder_at", "next_escalation_at"]
        )
        locked.record(
            "approval_changes_requested",
            step=locked.step_by_id(step_run_id),
            data={
                "user": user.get_username(),
                "for": principal.get_username() if principal.pk != user.pk else None,
                "comment": comment,
                "channel": channel,
                "round": request.round,
            },
        )
        notifications.notify_requester(
            request,
            kind="changes_requested",
            extra={
                "by": user.get_username(),
                "comment": comment,
                "revise_url": notifications.revise_url(request.pk),
            },
        )
        locked.journal.flush()
        return decision


def _clean_changes(changes: Any, request: ApprovalRequest) -> dict[str, Any]:
    if not isinstance(changes, dict):
        raise InvalidInput("input must be a JSON object of the fields to change", code="invalid")
    refused = sorted(str(name) for name in changes if name not in request.revisable)
    if refused:
        allowed = ", ".join(request.revisable) or "none"
        raise InvalidInput(
            f"not revisable in this step: {', '.join(refused)} (revisable: {allowed})",
            code="not_revisable",
            errors={"input": [f"{name}: not revisable" for name in refused]},
        )
    return changes


def _sent_back(
    request_id: Any, user: Any, act: policy.Act
) -> tuple[engine.LockedInstance, ApprovalRequest, StepRun, ApprovalStep]:
    """Lock and authorize an answer (resubmit, withdraw) to a request sent back for changes;
    the caller's transaction is open."""
    if not getattr(user, "is_authenticated", False):
        raise NotAllowed("log in to act on approval requests", code="not_authenticated")
    step_run_id = _step_run_of(request_id)
    locked, request = _lock(request_id, step_run_id, user)
    policy.authorize(act, user=user, request=request, instance=locked.instance)
    step = locked.step_by_id(step_run_id)
    spec = locked.definition.steps.get(step.name) if locked.definition and step else None
    if step is None or step.state != "waiting" or not isinstance(spec, ApprovalStep):
        raise Conflict("the approval step is no longer waiting", code="invalid_state")
    return locked, request, step, spec


def approval_resubmit(
    *,
    request_id: Any,
    user: Any,
    changes: dict[str, Any] | None = None,
    channel: str = "web",
    files: Sequence[Any] = (),
) -> ApprovalRequest:
    """The requester revises and resubmits a request sent back for changes; returns the next
    round's request.

    :func:`approvals.policy.authorize` (act ``resubmit``): the requester or the instance's
    starter, while the request is ``changes_requested`` and the instance running. ``changes``
    holds only the step's ``revisable`` top-level input fields (others: ``InvalidInput``,
    code ``not_revisable``); merged into the input they must pass the workflow's
    ``input_schema`` (``invalid_input``). In one transaction under the instance lock: the
    input change (:meth:`engine.LockedInstance.revise_input`: ``instance_input_revised`` with
    a diff, sealed fields masked and sealed again), the request ``resubmitted``
    (``approval_resubmitted``), and round N+1 of the same step: a fresh request, assignees
    resolved again, reminders, escalations and due counted from now (``approval_requested``,
    mail to the assignees). A second resubmit (a double click) finds the request resubmitted:
    :class:`Conflict` naming who and when; one round.

    Files: when the step's ``revisable`` names the workflow's files field
    (``Workflow(attachments=...)``), ``files`` are checked and attached (context
    ``revision:<round>``) and added to that field; ``changes`` may set the field to the ids
    of the instance's files to keep (leaving one out takes it off the input; the file itself
    stays on the instance). Refused files change nothing and leave no bytes behind."""
    changes = {} if changes is None else changes
    _check_channel(channel)
    with attachments.guard(), transaction.atomic():
        locked, request, step, spec = _sent_back(request_id, user, policy.Act.RESUBMIT)
        changes = _clean_changes(changes, request)
        now = locked.journal.now
        next_round = request.round + 1
        added = _revision_files(locked, request, user, changes, files, next_round)
        diff = locked.revise_input(
            changes,
            reason=f"resubmitted for round {next_round} of {step.name}",
            added_files=added,
        )
        request.resubmit()
        request.answered_by = user
        request.answered_at = now
        request.save(update_fields=["state", "answered_by", "answered_at"])
        locked.record(
            "approval_resubmitted",
            step=step,
            data={
                "user": user.get_username(),
                "round": next_round,
                "changed": sorted(diff),
                "channel": channel,
            },
        )
        new = open_round(locked.journal, step, spec, now, round_no=next_round)
        locked.journal.flush()
        return new


def _revision_files(
    locked: engine.LockedInstance,
    request: ApprovalRequest,
    user: Any,
    changes: dict[str, Any],
    files: Sequence[Any],
    round_no: int,
) -> list[Any]:
    """Attach a resubmission's files and list them in the files' field of ``changes`` (after
    the kept ones: the field as sent, else as it is). Returns the new attachment rows."""
    if not files:
        return []
    field = getattr(locked.definition, "attachments", None)
    if field is None or field not in request.revisable:
        raise InvalidInput(
            "this step takes no files on a resubmission"
            + (f" ({field} is not revisable here)" if field else ""),
            code="not_revisable",
            errors={"files": ["not revisable in this step"]},
        )
    saved = attachments.attachments_save(
        instance=locked.instance,
        files=files,
        user=user,
        context=f"revision:{round_no}",
        journal=locked.journal,
    )
    if field in changes:
        kept = changes[field]
    else:
        kept = (locked.instance.input or {}).get(field) or []
    if isinstance(kept, list):  # anything else: the engine's check refuses it, naming it
        changes[field] = [*kept, *(str(row.pk) for row in saved)]
    return saved


def approval_withdraw(
    *, request_id: Any, user: Any, reason: str = "", channel: str = "web"
) -> ApprovalRequest:
    """The requester withdraws a request sent back for changes instead of revising it: the
    request becomes ``withdrawn`` (``approval_withdrawn``) and the instance is cancelled
    (compensations run, then the usual cancellation events), in one transaction under the
    instance lock. Authorized like :func:`approval_resubmit` (act ``withdraw``)."""
    _check_channel(channel)
    if not isinstance(reason, str) or len(reason) > 500 or string_problem(reason):
        raise InvalidInput("reason must be valid text of at most 500 characters")
    reason = reason.strip()
    with transaction.atomic():
        locked, request, step, _spec = _sent_back(request_id, user, policy.Act.WITHDRAW)
        now = locked.journal.now
        request.withdraw()
        request.answered_by = user
        request.answered_at = now
        request.save(update_fields=["state", "answered_by", "answered_at"])
        name = user.get_username()
        locked.record(
            "approval_withdrawn",
            step=step,
            data={
                "user": name,
                "round": request.round,
                "channel": channel,
                **({"reason": reason} if reason else {}),
            },
        )
        locked.cancel_instance(f"withdrawn by {name}" + (f": {reason}" if reason else ""))
        locked.journal.flush()
        return request


# -- who was ever asked ---------------------------------------------------------------------------


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


# -- operators ----------------------------------------------------------------------------------


def _clean_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("a reason is required", code="reason_required")
    if len(reason) > 500:
        raise InvalidInput("the reason is longer than 500 characters")
    return reason.strip()


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
    reason = _clean_reason(reason)
    _check_outcome(outcome)
    comment = _clean_comment(comment)
    step_run_id = _step_run_of(request_id)
    with transaction.atomic():
        locked, request = _lock(request_id, step_run_id, operator)
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
    reason = _clean_reason(reason)
    step_run_id = _step_run_of(request_id)
    with transaction.atomic():
        locked, request = _lock(request_id, step_run_id, operator)
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
        from .claims import claim_drop_if_ineligible  # claims builds on this module

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
            f"unknown users or groups: {', '.join(unknown)}", code="unknown_assignee"
        )
    if not user_rows and not group_rows:
        raise InvalidInput("name at least one user or group", code="no_assignee")
    return user_rows, group_rows


# -- delegation ---------------------------------------------------------------------------------


def delegation_create(
    *, user: Any, delegate: Any, starts_at: datetime, ends_at: datetime
) -> Delegation:
    """Let ``delegate`` decide ``user``'s requests between ``starts_at`` and ``ends_at``."""
    if delegate is None or delegate.pk == user.pk:
        raise InvalidInput("choose someone else as your delegate", code="invalid_delegate")
    if not delegate.is_active:
        raise InvalidInput("that user is not active", code="invalid_delegate")
    if ends_at <= starts_at:
        raise InvalidInput("the end must be after the start", code="invalid_dates")
    if ends_at <= timezone.now():
        raise InvalidInput("the end is in the past", code="invalid_dates")
    return Delegation.objects.create(
        user=user, delegate=delegate, starts_at=starts_at, ends_at=ends_at
    )


def delegation_end(*, delegation_id: Any, user: Any) -> None:
    """End one of ``user``'s delegations now (or delete it if it has not started)."""
    delegation = Delegation.objects.filter(pk=delegation_id, user=user).first()
    if delegation is None:
        raise NotFound("delegation not found")
    now = timezone.now()
    if delegation.starts_at >= now:
        delegation.delete()
    elif delegation.ends_at > now:
        delegation.ends_at = now
        delegation.save(update_fields=["ends_at"])
