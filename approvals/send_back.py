"""Send back for changes and the requester's answer: an approver asks for changes
(:func:`approval_request_changes`, ending the round), the requester revises and resubmits
(:func:`approval_resubmit`, which opens the next round) or withdraws (:func:`approval_withdraw`,
which cancels the instance). Each is one transaction under the instance lock, asking the
decision policy (acts ``request_changes``, ``resubmit``, ``withdraw``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils.translation import gettext_noop

from orchestration import attachments, engine
from orchestration.errors import Conflict, InvalidInput, Message, NotAllowed
from orchestration.jsonsafe import string_problem
from orchestration.models import StepRun

from . import escalation_timers, notifications, policy
from .definitions import ApprovalStep
from .inputs import check_channel, clean_comment
from .kind import open_round
from .locking import lock_request, step_run_of
from .models import ApprovalRequest, Channel, Decision, Outcome


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
    check_channel(channel)
    comment = clean_comment(comment)
    if not comment:
        raise InvalidInput(
            gettext_noop(
                "a comment is required to request changes: tell the requester what to change"
            ),
            code="comment_required",
        )
    if not getattr(user, "is_authenticated", False):
        raise NotAllowed(gettext_noop("log in to decide"), code="not_authenticated")
    step_run_id = step_run_of(request_id)
    with transaction.atomic():
        locked, request = lock_request(request_id, step_run_id, user)
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
        escalation_timers.timer_follow(request)
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
        raise InvalidInput(
            gettext_noop("input must be a JSON object of the fields to change"), code="invalid"
        )
    refused = sorted(str(name) for name in changes if name not in request.revisable)
    if refused:
        allowed = ", ".join(request.revisable) or Message(gettext_noop("none"))
        raise InvalidInput(
            Message(
                gettext_noop("not revisable in this step: %(fields)s (revisable: %(allowed)s)"),
                fields=", ".join(refused),
                allowed=allowed,
            ),
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
        raise NotAllowed(
            gettext_noop("log in to act on approval requests"), code="not_authenticated"
        )
    step_run_id = step_run_of(request_id)
    locked, request = lock_request(request_id, step_run_id, user)
    policy.authorize(act, user=user, request=request, instance=locked.instance)
    step = locked.step_by_id(step_run_id)
    spec = locked.definition.steps.get(step.name) if locked.definition and step else None
    if step is None or step.state != "waiting" or not isinstance(spec, ApprovalStep):
        raise Conflict(gettext_noop("the approval step is no longer waiting"), code="invalid_state")
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
    check_channel(channel)
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
            Message(
                gettext_noop(
                    "this step takes no files on a resubmission (%(field)s is not revisable here)"
                ),
                field=field,
            )
            if field
            else gettext_noop("this step takes no files on a resubmission"),
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
    check_channel(channel)
    if not isinstance(reason, str) or len(reason) > 500 or string_problem(reason):
        raise InvalidInput(gettext_noop("reason must be valid text of at most 500 characters"))
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
