"""What escalating an approval request does, defined once, and its per-row execution.

:func:`escalation_plan` reads a request's next level into an :class:`EscalationPlan`: the
level reached, the people and groups it assigns (and whether they take over), when the level
after it is due, the event written (``approval_escalated`` and its data), and who is mailed
(kind ``escalated``: the newcomers, or everyone assigned when the level takes over; those who
lost the request are remembered as past assignees). Two executors carry a plan out:

- :func:`escalate_row`, for one request under its instance's lock, through the ORM (SQLite,
  levels the batch cannot express, and the batch's fallback);
- :func:`approvals.escalation_sql.escalate_set`, for many requests in one statement
  (PostgreSQL, the levels :func:`set_based` admits).

Both write the same rows (``tests/approvals/test_escalation_batch.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from orchestration import engine
from orchestration.definitions import StepContext

from . import escalation_timers, notifications
from .definitions import ApprovalStep, Escalation
from .models import ApprovalRequest, PastAssignee
from .services import past_assignees_record, timer_at

User = get_user_model()

EVENT = "approval_escalated"
# The mail's purpose: its kind (``approval_escalated``), template and link purpose.
MAIL = "escalated"


def next_level(spec: ApprovalStep | None, reached: int) -> Escalation | None:
    """The level after ``reached`` levels, or None when the step has no level left (the
    request's ``next_escalation_at`` is then cleared)."""
    if spec is None or reached >= len(spec.escalate):
        return None
    return spec.escalate[reached]


def set_based(level: Escalation) -> bool:
    """Whether the batch can escalate to ``level`` for many requests at once: it names its
    people (no assignees function, which needs each request's context) and adds them (no
    ``replace``, whose removals differ per request)."""
    return level.assignees is None and not level.replace


@dataclass(frozen=True)
class EscalationPlan:
    """One escalation level as it applies to the requests reaching it."""

    spec: ApprovalStep
    level: int  # the level reached (1 for the first)
    users: tuple[Any, ...]  # the active people the level names, as the database lists them
    groups: tuple[Group, ...]
    replace: bool  # they take over: everyone else loses the request
    following: timedelta | None  # the next level's delay from the request's creation

    def next_escalation_at(self, created_at: datetime) -> datetime | None:
        """When a request created at ``created_at`` escalates again (None: this was the last)."""
        return timer_at(self.spec, created_at, self.following)

    def event_data(self, removed: Iterable[str] = ()) -> dict[str, Any]:
        """The ``approval_escalated`` event's data; ``removed``: the usernames that lost the
        request (only a level that takes over removes anyone)."""
        return {
            "level": self.level,
            "users": [u.get_username() for u in self.users],
            "groups": [g.name for g in self.groups],
            "replace": self.replace,
            "removed": sorted(removed),
        }

    @property
    def mail_extra(self) -> dict[str, Any]:
        """The escalation mail's extra template context (its serial is :attr:`level`)."""
        return {"level": self.level}

    def mailed(self, before: set[Any], after: list[Any]) -> list[Any]:
        """Who is mailed, of the people assigned ``after`` it (``before``: their ids before):
        everyone when the level takes over, else the newcomers. (The mail then skips those
        without an address, and the requester unless the step allows self-approval.)"""
        return list(after) if self.replace else [u for u in after if u.pk not in before]


def escalation_plan(
    spec: ApprovalStep, reached: int, context: StepContext | None = None
) -> EscalationPlan:
    """The plan for requests of ``spec`` that reached ``reached`` levels (a level must be
    left: :func:`next_level`). ``context``, the step's context, is asked only by a level with
    an assignees function (never :func:`set_based`)."""
    level = spec.escalate[reached]
    usernames, group_names = level.resolve(context)  # type: ignore[arg-type]
    after = reached + 1
    return EscalationPlan(
        spec=spec,
        level=after,
        users=tuple(User.objects.filter(username__in=usernames, is_active=True)),
        groups=tuple(Group.objects.filter(name__in=group_names)),
        replace=level.replace,
        following=spec.escalate[after].after if after < len(spec.escalate) else None,
    )


def escalate_row(
    locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
) -> bool:
    """One request's next escalation level, under its instance's lock, through the ORM.
    Returns False (and clears its timer) when no level is left."""
    now = locked.journal.now
    step = locked.step_by_id(request.step_run_id)
    if next_level(spec, request.level) is None:
        request.next_escalation_at = None
        request.save(update_fields=["next_escalation_at"])
        escalation_timers.timer_follow(request)
        return False
    plan = escalation_plan(spec, request.level, engine.step_context(locked.journal, step))
    before = {u.pk for u in notifications.current_assignee_users(request)}
    if plan.replace:
        request.assignee_users.set(plan.users)
        request.assignee_groups.set(plan.groups)
    else:
        request.assignee_users.add(*plan.users)
        request.assignee_groups.add(*plan.groups)
    after = notifications.current_assignee_users(request)
    removed = before - {u.pk for u in after}
    notifications.tokens_supersede(request, removed, now)
    past_assignees_record(request, removed, now, cause=PastAssignee.Cause.ESCALATED)
    request.level = plan.level
    request.next_escalation_at = plan.next_escalation_at(request.created_at)
    request.save(update_fields=["level", "next_escalation_at"])
    escalation_timers.timer_follow(request)
    removed_names = User.objects.filter(pk__in=removed).values_list(User.USERNAME_FIELD, flat=True)
    locked.record(EVENT, step=step, data=plan.event_data(removed_names))
    notifications.notify_assignees(
        request,
        plan.mailed(before, after),
        now,
        kind=MAIL,
        serial=plan.level,
        extra=plan.mail_extra,
    )
    return True
