"""The alert conditions: a registry, and the conditions the engine's own data answers.

A condition says, for a rule, which subjects are in trouble now (``find``, called by the
sweeper), which of the subjects it fired for have recovered (``recovered``), and optionally
which subjects a committed engine event puts in trouble at once (``on_event``). Subjects are
strings such as ``instance:<uuid>``, ``approval:<id>``, ``schedule:<id>``: the firing alert of a
rule is unique per subject.

Another app registers its own with :func:`register_condition` from its ``AppConfig.ready()``
(``approvals`` registers ``approval_overdue``): integrations never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestration import sealing, selectors

INSTANCE_PREFIX = "instance:"


@dataclass(frozen=True)
class Finding:
    """One subject in trouble: what an alert is made of. ``details`` must hold no sealed
    value (conditions mask what they copy)."""

    subject: str
    title: str
    instance_id: str | None = None
    workflow: str = ""
    link: str = ""  # a path on the site: the status page or an admin page
    details: dict[str, Any] = field(default_factory=dict)
    # When this trouble began: the sweeper does not fire again for a subject whose alert was
    # resolved (by hand) after that.
    since: datetime | None = None


Find = Callable[[Any, datetime, int], Iterable[Finding]]
Recovered = Callable[[Any, list[str], datetime], set[str]]
OnEvent = Callable[[Any], Iterable[Finding]]


@dataclass(frozen=True)
class Condition:
    name: str
    label: str
    find: Find | None = None
    recovered: Recovered | None = None
    on_event: OnEvent | None = None
    # Rule fields a rule of this condition must set (AlertRule attribute names).
    requires: tuple[str, ...] = ()


_conditions: dict[str, Condition] = {}


def register_condition(
    name: str,
    *,
    label: str,
    find: Find | None = None,
    recovered: Recovered | None = None,
    on_event: OnEvent | None = None,
    requires: tuple[str, ...] = (),
) -> Condition:
    """Register (or replace) the condition ``name``.

    ``find(rule, now, limit)``: the subjects in trouble now (the sweeper fires for each);
    ``recovered(rule, subjects, now)``: which of ``subjects`` (firing alerts) recovered;
    ``on_event(event)``: subjects an ``orchestration.signals.event_committed`` event puts in
    trouble at once (the rule's workflow filter is applied by the caller)."""
    condition = Condition(name, label, find, recovered, on_event, tuple(requires))
    _conditions[name] = condition
    return condition


def get_condition(name: str) -> Condition | None:
    return _conditions.get(name)


def registered_conditions() -> dict[str, Condition]:
    return dict(_conditions)


# -- the engine's conditions -----------------------------------------------------------------------


def instance_subject(instance_id: Any) -> str:
    return f"{INSTANCE_PREFIX}{instance_id}"


def instance_link(instance_id: Any) -> str:
    return f"/instances/{instance_id}/"


def _error_summary(error: Any) -> dict[str, Any]:
    """Type, message, step and phase of an instance's error: no traceback; masked."""
    if not isinstance(error, dict):
        return {}
    keep = {k: error[k] for k in ("type", "message", "step", "phase") if k in error}
    if isinstance(keep.get("message"), str):
        keep["message"] = keep["message"][:500]
    return sealing.masked(keep)


def _failed_finding(instance: Any, error: Any, *, compensation: bool) -> Finding:
    what = "compensation failed" if compensation else "failed"
    summary = _error_summary(error)
    return Finding(
        subject=instance_subject(instance.pk),
        title=f"{instance.workflow} {what}"
        + (f" ({instance.business_key})" if instance.business_key else ""),
        instance_id=str(instance.pk),
        workflow=instance.workflow,
        link=instance_link(instance.pk),
        details={"state": str(instance.state), "error": summary},
        since=instance.finished_at,
    )


def _is_compensation(error: Any) -> bool:
    return isinstance(error, dict) and error.get("phase") == "compensation"


def _ids(subjects: list[str]) -> dict[str, str]:
    return {s.removeprefix(INSTANCE_PREFIX): s for s in subjects if s.startswith(INSTANCE_PREFIX)}


def _failed_since(rule: Any, now: datetime) -> datetime:
    # Failures older than the rule (or than a day) are history, not news.
    return max(rule.created_at, now - timedelta(days=1))


def _find_failed(compensation: bool) -> Find:
    def find(rule: Any, now: datetime, limit: int) -> list[Finding]:
        found = selectors.failed_instances(
            since=_failed_since(rule, now), workflow=rule.workflow, limit=limit
        )
        return [
            _failed_finding(i, i.error, compensation=compensation)
            for i in found
            if not compensation or _is_compensation(i.error)
        ]

    return find


def _on_failed_event(compensation: bool) -> OnEvent:
    def on_event(event: Any) -> list[Finding]:
        if event.type != "instance_failed":
            return []
        error = (event.data or {}).get("error")
        if compensation and not _is_compensation(error):
            return []
        return [_failed_finding(event.instance, error, compensation=compensation)]

    return on_event


def _recovered_unless_failed(rule: Any, subjects: list[str], now: datetime) -> set[str]:
    """Recovered: no longer failed (retried and running or done, cancelled) or gone."""
    ids = _ids(subjects)
    found = selectors.instances_by_id(list(ids))
    return {s for pk, s in ids.items() if pk not in found or found[pk].state != "failed"}


def _find_stuck(rule: Any, now: datetime, limit: int) -> list[Finding]:
    if not rule.stuck_after:
        return []
    found = selectors.quiet_instances(
        before=now - rule.stuck_after, workflow=rule.workflow, limit=limit
    )
    return [
        Finding(
            subject=instance_subject(i.pk),
            title=f"{i.workflow} has made no progress since {i.updated_at:%Y-%m-%d %H:%M} UTC"
            + (f" ({i.business_key})" if i.business_key else ""),
            instance_id=str(i.pk),
            workflow=i.workflow,
            link=instance_link(i.pk),
            details={"state": str(i.state), "quiet_since": i.updated_at.isoformat()},
            since=i.updated_at,
        )
        for i in found
    ]


def _recovered_stuck(rule: Any, subjects: list[str], now: datetime) -> set[str]:
    """Recovered: it progressed within the threshold, finished, was paused, or is gone."""
    ids = _ids(subjects)
    found = selectors.instances_by_id(list(ids))
    quiet_before = now - (rule.stuck_after or timedelta(0))
    recovered = set()
    for pk, subject in ids.items():
        i = found.get(pk)
        if (
            i is None
            or i.state not in ("pending", "running")
            or i.paused_at is not None
            or i.updated_at >= quiet_before
        ):
            recovered.add(subject)
    return recovered


def schedule_subject(schedule_id: Any) -> str:
    return f"schedule:{schedule_id}"


register_condition(
    "instance_failed",
    label="instance failed",
    find=_find_failed(False),
    recovered=_recovered_unless_failed,
    on_event=_on_failed_event(False),
)
register_condition(
    "compensation_failed",
    label="compensation failed",
    find=_find_failed(True),
    recovered=_recovered_unless_failed,
    on_event=_on_failed_event(True),
)
register_condition(
    "instance_stuck",
    label="instance stuck",
    find=_find_stuck,
    recovered=_recovered_stuck,
    requires=("stuck_after",),
)


def _recovered_schedules(rule: Any, subjects: list[str], now: datetime) -> set[str]:
    """A schedule whose newest fire started on time again has recovered from its miss."""
    ids = {s.removeprefix("schedule:") for s in subjects if s.startswith("schedule:")}
    on_time = {str(pk) for pk in selectors.schedules_on_time_again(ids)}
    return {s for s in subjects if s.removeprefix("schedule:") in on_time}


# Fired by orchestration.signals.schedule_missed (see services.on_schedule_missed); resolved
# by the sweeper once the schedule fires on time again (or by an operator).
register_condition("schedule_missed", label="schedule missed", recovered=_recovered_schedules)
