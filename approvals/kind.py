"""The ``approval`` step kind: what the engine calls when an approval step becomes ready, is
cancelled, or is completed or retried by an operator, and opening a round — a request with
its assignees, timers and first mail (:func:`open_round`; round N+1 when the requester
resubmits). Importing this module registers the kind with :mod:`orchestration.kinds`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Max

from orchestration import engine, kinds
from orchestration.definitions import StepSpec
from orchestration.journal import Journal
from orchestration.models import StepRun

from . import escalation_timers, notifications, policy
from .definitions import ApprovalStep
from .models import ApprovalRequest, Policy, RequestState
from .timing import before_due, timer_at

User = get_user_model()


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


class ApprovalKind(kinds.StepKind):
    name = "approval"

    def state_label(self, state: str) -> str:
        if state == "waiting":
            return "waiting for a decision"
        return super().state_label(state)

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
        """The engine asks before completing (``complete``), retrying (``retry``), skipping
        (``skip``), editing (``edit``: its output; ``edit_input``: the instance's input once
        the step started) or resetting (``reset``) an approval step by hand: the decision
        policy answers. The system — no user, e.g. ``manage.py signoff retry`` — may retry,
        reset (both ask the assignees again) and edit the input (it is nobody's own request);
        it never skips an approval step or edits its outcome."""
        if action in ("retry", "reset", "edit_input") and user is None:
            return
        request = ApprovalRequest.objects.filter(step_run_id=step_run.pk).order_by("-pk").first()
        if request is not None:
            request.instance = instance
        act = _ACTS.get(action)
        if act is None:
            return  # resolving a compensation: approval steps have none
        policy.authorize(act, user=user, request=request, instance=instance)


_ACTS = {
    "complete": policy.Act.COMPLETE_STEP,
    "retry": policy.Act.RETRY_STEP,
    "edit": policy.Act.EDIT_STEP,
    "edit_input": policy.Act.EDIT_INPUT,
    "skip": policy.Act.SKIP_STEP,
    "reset": policy.Act.RESET_STEP,
}

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
    request.next_reminder_at = before_due(request, timer_at(spec, now, spec.remind_every))
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
        escalation_timers.timer_start(request)
        request.assignee_users.set(users)
        request.assignee_groups.set(groups)
        notifications.notify_assignees(
            request, notifications.current_assignee_users(request), now, kind="assigned"
        )

    journal.after_write(create)
    return request
