"""Nobody waits forever: reminders, escalations and expiry of approval requests.

Same rules as the engine's sweepers: due ids from partial indexes (cost grows with due rows
only), then one transaction per request that locks its instance with ``skip_locked`` (an
instance another sweep or a decision holds is left for the next run) and re-checks the request
under the lock. The ``next_*`` / ``level`` columns move *before* any mail is queued, and the
mail is an outbox row in the same transaction: two sweeps at once, or a sweep repeated after a
crash, never remind or escalate twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from orchestration import engine

from . import notifications
from .definitions import ApprovalStep
from .models import ApprovalRequest, RequestState
from .services import _before_due, request_outcome, timer_at

log = logging.getLogger("signoff.sweepers")
User = get_user_model()


def _due(column: str, now: datetime, batch: int | None) -> list[tuple[int, int]]:
    return list(
        ApprovalRequest.objects.filter(state=RequestState.PENDING, **{f"{column}__lte": now})
        .order_by(column)
        .values_list("pk", "step_run_id")[: batch or settings.SIGNOFF_SWEEP_BATCH]
    )


def _each(
    name: str,
    rows: list[tuple[int, int]],
    act: Callable[[engine.LockedInstance, ApprovalRequest, ApprovalStep | None], bool],
    column: str,
    now: datetime,
) -> int:
    done = 0
    for request_id, step_run_id in rows:
        try:
            with transaction.atomic():
                locked = engine.lock_instance(
                    step_run_id=step_run_id, actor="sweeper", skip_locked=True
                )
                if locked is None:
                    continue
                request = (
                    ApprovalRequest.objects.select_for_update(of=("self",))
                    .select_related("requester")
                    .get(pk=request_id)
                )
                due = getattr(request, column)
                if request.state != RequestState.PENDING or due is None or due > now:
                    continue  # decided or handled since we looked
                step = locked.step_by_id(step_run_id)
                spec = locked.definition.steps.get(step.name) if locked.definition else None
                if act(locked, request, spec if isinstance(spec, ApprovalStep) else None):
                    done += 1
                locked.journal.flush()
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("sweeper %s failed on approval request %s", name, request_id)
    if done:
        log.info("sweeper %s acted on %d approval requests", name, done)
    return done


def sweep_reminders(*, now: datetime | None = None, batch: int | None = None) -> int:
    now = now or timezone.now()

    def remind(
        locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
    ) -> bool:
        step = locked.step_by_id(request.step_run_id)
        request.reminders_sent += 1
        request.last_reminded_at = now
        request.next_reminder_at = (
            _before_due(request, timer_at(spec, now, spec.remind_every)) if spec else None
        )
        request.save(update_fields=["reminders_sent", "last_reminded_at", "next_reminder_at"])
        locked.record("approval_reminded", step=step, data={"reminder": request.reminders_sent})
        notifications.notify_assignees(
            request,
            notifications.current_assignee_users(request),
            now,
            kind="reminder",
            serial=request.reminders_sent,
        )
        return True

    return _each("reminders", _due("next_reminder_at", now, batch), remind, "next_reminder_at", now)


def sweep_escalations(*, now: datetime | None = None, batch: int | None = None) -> int:
    now = now or timezone.now()

    def escalate(
        locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
    ) -> bool:
        step = locked.step_by_id(request.step_run_id)
        if spec is None or request.level >= len(spec.escalate):
            request.next_escalation_at = None
            request.save(update_fields=["next_escalation_at"])
            return False
        level = spec.escalate[request.level]
        usernames, group_names = level.resolve(engine.step_context(locked.journal, step))
        users = list(User.objects.filter(username__in=usernames, is_active=True))
        groups = list(Group.objects.filter(name__in=group_names))
        before = {u.pk for u in notifications.current_assignee_users(request)}
        if level.replace:
            request.assignee_users.set(users)
            request.assignee_groups.set(groups)
        else:
            request.assignee_users.add(*users)
            request.assignee_groups.add(*groups)
        after = notifications.current_assignee_users(request)
        removed = before - {u.pk for u in after}
        notifications.tokens_supersede(request, removed, now)
        request.level += 1
        request.next_escalation_at = (
            timer_at(spec, request.created_at, spec.escalate[request.level].after)
            if request.level < len(spec.escalate)
            else None
        )
        request.save(update_fields=["level", "next_escalation_at"])
        locked.record(
            "approval_escalated",
            step=step,
            data={
                "level": request.level,
                "users": [u.username for u in users],
                "groups": [g.name for g in groups],
                "replace": level.replace,
                "removed": sorted(
                    User.objects.filter(pk__in=removed).values_list("username", flat=True)
                ),
            },
        )
        newcomers = [u for u in after if u.pk not in before] if not level.replace else after
        notifications.notify_assignees(
            request,
            newcomers,
            now,
            kind="escalated",
            serial=request.level,
            extra={"level": request.level},
        )
        return True

    return _each(
        "escalations", _due("next_escalation_at", now, batch), escalate, "next_escalation_at", now
    )


def sweep_expiry(*, now: datetime | None = None, batch: int | None = None) -> int:
    now = now or timezone.now()

    def expire(
        locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
    ) -> bool:
        step = locked.step_by_id(request.step_run_id)
        action = spec.on_expire if spec else "reject"
        request.expire()
        request.resolved_at = now
        request.next_reminder_at = None
        request.next_escalation_at = None
        request.save(
            update_fields=["state", "resolved_at", "next_reminder_at", "next_escalation_at"]
        )
        locked.record("approval_expired", step=step, data={"on_expire": action})
        notifications.tokens_supersede(
            request, set(request.tokens.values_list("user_id", flat=True)), now
        )
        _expire_action(locked, request, step, spec, action)
        notifications.notify_requester(request, kind="expired", extra={"action": action})
        return True

    return _each("expiry", _due("due_at", now, batch), expire, "due_at", now)


def _expire_action(
    locked: engine.LockedInstance,
    request: ApprovalRequest,
    step: Any,
    spec: ApprovalStep | None,
    action: str,
) -> None:
    if step is None or step.state != "waiting" or locked.instance.state != "running":
        return
    output = request_outcome(
        request, list(request.decisions.select_related("decided_by", "assignee"))
    )
    output["expired"] = True
    error = {
        "type": "signoff.ApprovalExpired",
        "message": f"no decision by {request.due_at.isoformat()}",
        "traceback": "",
    }
    if action == "approve":
        output["decision"] = "approved"
        locked.resolve_step(step, output)
    elif action == "cancel_instance":
        locked.cancel_instance("approval expired")
    elif action == "reject" and spec is not None and spec.on_reject == "continue":
        output["decision"] = "rejected"
        locked.resolve_step(step, output)
    else:  # reject (fails by default) or fail
        step.output = output
        locked.fail_step(step, error, reason="expired")


def sweep_all(*, now: datetime | None = None) -> dict[str, int]:
    return {
        "reminders": sweep_reminders(now=now),
        "escalations": sweep_escalations(now=now),
        "expiry": sweep_expiry(now=now),
    }
