"""Firing and resolving alerts, the receivers of the engine's announcements, and the sweeper.

- :func:`alert_fire`: one firing alert per (rule, subject) — a second finding only counts as
  seen again. Two processes firing at once are kept apart by the partial unique index
  ``alert_firing_once``: the second insert waits for the first and then gives up.
- :func:`alert_resolve`: ``firing → resolved`` (a django-fsm transition) under the row lock;
  a second resolve does nothing. Each transition queues its notices in its transaction.
- :func:`on_event_committed` (``orchestration.signals.event_committed``): fires the rules whose
  condition reacts to the event (a failed instance) and rechecks the instance's firing alerts
  after progress events (retried, succeeded, a step done, an approval decided).
- :func:`on_schedule_missed` (``orchestration.signals.schedule_missed``).
- :func:`sweep_alerts` (beat, ``integrations.sweep_alerts``): per enabled rule, in bounded
  batches, resolves what recovered (rows locked with ``skip_locked``) and fires what its
  condition finds.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone
from django_fsm import can_proceed

from orchestration import sealing

from .. import webhooks
from ..models import Alert, AlertRule, AlertState
from .conditions import Finding, get_condition, schedule_subject
from .delivery import notice_queue, ring_lost_webhooks

log = logging.getLogger("signoff.alerts")

# Events after which an instance's firing alerts may have recovered.
RECHECK_EVENTS = frozenset(
    {
        "instance_retried",
        "instance_resumed",
        "instance_unpaused",
        "instance_succeeded",
        "instance_cancelled",
        "instance_compensated",
        "step_succeeded",
        "approval_resolved",
        "approval_cancelled",
        "approval_expired",
    }
)

# Enabled rules, cached per process for SIGNOFF_ALERT_RULE_CACHE_SECONDS: the receiver runs
# after every event. A change saved in this process clears the cache at once.
_rules_cache: tuple[float, list[AlertRule]] | None = None


def enabled_rules() -> list[AlertRule]:
    global _rules_cache
    now = time.monotonic()
    ttl = getattr(settings, "SIGNOFF_ALERT_RULE_CACHE_SECONDS", 5.0)
    if _rules_cache is None or now - _rules_cache[0] >= ttl:
        _rules_cache = (now, list(AlertRule.objects.filter(enabled=True)))
    return _rules_cache[1]


def forget_rules(**kwargs: Any) -> None:
    global _rules_cache
    _rules_cache = None


def _matches(rule: AlertRule, workflow: str | None) -> bool:
    return not rule.workflow or workflow is None or rule.workflow == workflow


# -- fire and resolve ------------------------------------------------------------------------------


def alert_fire(*, rule: AlertRule, finding: Finding, now: datetime | None = None) -> Alert | None:
    """Fire ``rule`` for ``finding.subject``. A new alert is created and its ``fired``
    notices queued (mail in this transaction, webhook after commit): returns it. When the rule
    already fires for the subject, only ``last_seen_at`` and ``times_seen`` change: returns
    None (also when a concurrent caller fired it a moment earlier)."""
    now = now or timezone.now()
    with transaction.atomic():
        existing = (
            Alert.objects.select_for_update()
            .filter(rule=rule, subject=finding.subject, state=AlertState.FIRING)
            .values_list("pk", flat=True)
            .first()
        )
        if existing is not None:
            Alert.objects.filter(pk=existing).update(
                last_seen_at=now, times_seen=F("times_seen") + 1
            )
            return None
        # Masked when written (sealing at the source): what is stored is what may be sent.
        details = sealing.masked(dict(finding.details))
        if finding.link:
            details["link"] = finding.link
        try:
            with transaction.atomic():  # a savepoint: the unique index may refuse it
                alert = Alert.objects.create(
                    rule=rule,
                    condition=rule.condition,
                    subject=finding.subject[:200],
                    instance_id=finding.instance_id,
                    title=finding.title[:300],
                    details=details,
                    first_fired_at=now,
                    last_seen_at=now,
                )
        except IntegrityError:
            return None  # fired by another process meanwhile
        notice_queue(alert=alert, rule=rule, notice="fired")
        alert.save(update_fields=["deliveries"])
    log.info("alert %s fired: %s (%s)", alert.pk, alert.title, rule.name)
    return alert


def alert_resolve(
    *,
    alert_id: int,
    actor: str = "system",
    now: datetime | None = None,
    skip_locked: bool = False,
) -> bool:
    """Resolve a firing alert and queue its ``resolved`` notices. Returns False, changing
    nothing, when it is not firing (resolved already, unknown) or, with ``skip_locked``, when
    another process holds it."""
    with transaction.atomic():
        alert = (
            Alert.objects.select_for_update(skip_locked=skip_locked, of=("self",))
            .select_related("rule")
            .filter(pk=alert_id)
            .first()
        )
        if alert is None or not can_proceed(alert.resolve):
            return False
        alert.resolve()
        alert.resolved_at = now or timezone.now()
        alert.resolved_by = actor[:200]
        notice_queue(alert=alert, rule=alert.rule, notice="resolved")
        alert.save(update_fields=["state", "resolved_at", "resolved_by", "deliveries"])
    log.info("alert %s resolved by %s", alert_id, actor)
    return True


def alerts_recheck(*, instance_id: Any, now: datetime | None = None) -> int:
    """Ask the conditions whether the instance's firing alerts recovered; resolve those that
    did. Returns how many were resolved."""
    now = now or timezone.now()
    firing = list(
        Alert.objects.filter(instance_id=instance_id, state=AlertState.FIRING).select_related(
            "rule"
        )
    )
    resolved = 0
    for alert in firing:
        condition = get_condition(alert.condition)
        if condition is None or condition.recovered is None:
            continue
        if alert.subject in condition.recovered(alert.rule, [alert.subject], now):
            resolved += alert_resolve(alert_id=alert.pk, now=now, skip_locked=True)
    return resolved


# -- receivers -------------------------------------------------------------------------------------


def on_event_committed(sender: Any, event: Any, **kwargs: Any) -> None:
    """``event_committed`` receiver. Never raises: an alert never breaks the engine."""
    try:
        rules = enabled_rules()
        if not rules:
            return
        workflow = event.instance.workflow
        findings: dict[str, list[Finding]] = {}
        for rule in rules:
            condition = get_condition(rule.condition)
            if condition is None or condition.on_event is None or not _matches(rule, workflow):
                continue
            if rule.condition not in findings:
                findings[rule.condition] = list(condition.on_event(event))
            for finding in findings[rule.condition]:
                alert_fire(rule=rule, finding=finding)
        if event.type in RECHECK_EVENTS:
            alerts_recheck(instance_id=event.instance_id)
    except Exception:  # noqa: BLE001
        log.exception("alerts not checked for event %s", getattr(event, "pk", None))


def on_schedule_missed(
    sender: Any,
    *,
    schedule_id: Any,
    schedule_name: str = "",
    fire_time: Any = None,
    reason: str = "",
    **kwargs: Any,
) -> None:
    """``schedule_missed`` receiver: fire every enabled ``schedule_missed`` rule (whose
    workflow filter matches, when the signal names a ``workflow``) for the schedule. Later
    misses of a schedule whose alert still fires count as seen again."""
    try:
        when = fire_time.isoformat() if hasattr(fire_time, "isoformat") else str(fire_time)
        name = str(schedule_name or schedule_id)
        finding = Finding(
            subject=schedule_subject(schedule_id),
            title=f"Schedule {name} missed its fire at {when}"[:300],
            link=str(kwargs.get("link") or ""),
            details={"schedule": name, "fire_time": when, "reason": str(reason)[:300]},
        )
        for rule in enabled_rules():
            if rule.condition == "schedule_missed" and _matches(rule, kwargs.get("workflow")):
                alert_fire(rule=rule, finding=finding)
    except Exception:  # noqa: BLE001
        log.exception("alerts not fired for missed schedule %s", schedule_id)


# -- the sweeper -----------------------------------------------------------------------------------


def _fresh(rule: AlertRule, findings: list[Finding]) -> list[Finding]:
    """Findings whose trouble began after the last time an alert for the subject resolved
    (an operator's "resolve now" is not undone by the next sweep)."""
    dated = [f.subject for f in findings if f.since is not None]
    if not dated:
        return findings
    resolved = dict(
        Alert.objects.filter(rule=rule, subject__in=dated, state=AlertState.RESOLVED)
        .values("subject")
        .annotate(last=Max("resolved_at"))
        .values_list("subject", "last")
    )
    return [
        f
        for f in findings
        if f.since is None or f.subject not in resolved or resolved[f.subject] < f.since
    ]


def _sweep_rule(rule: AlertRule, now: datetime, batch: int) -> int:
    condition = get_condition(rule.condition)
    if condition is None:
        log.warning("alert rule %s: condition %s is not registered", rule.pk, rule.condition)
        return 0
    acted = 0
    if condition.recovered is not None:
        firing = list(
            Alert.objects.filter(rule=rule, state=AlertState.FIRING)
            .order_by("last_seen_at", "pk")
            .values_list("pk", "subject")[:batch]
        )
        if firing:
            recovered = condition.recovered(rule, [s for _, s in firing], now)
            for pk, subject in firing:
                if subject in recovered:
                    acted += alert_resolve(alert_id=pk, now=now, skip_locked=True)
    if condition.find is not None:
        findings = _fresh(rule, list(condition.find(rule, now, batch)))
        # Still firing: seen again, counted in one statement (no row locks, no notice).
        firing = Alert.objects.filter(
            rule=rule, state=AlertState.FIRING, subject__in=[f.subject for f in findings]
        )
        seen = set(firing.values_list("subject", flat=True))
        if seen:
            firing.update(last_seen_at=now, times_seen=F("times_seen") + 1)
        for finding in findings:
            if finding.subject not in seen:
                acted += alert_fire(rule=rule, finding=finding, now=now) is not None
    return acted


def sweep_alerts(*, now: datetime | None = None, batch: int | None = None) -> int:
    """For each enabled rule: resolve its firing alerts whose subject recovered, then fire for
    what its condition finds now, at most ``SIGNOFF_ALERT_BATCH`` of each per rule; then ring
    again for webhook notices whose message was lost. Safe to run concurrently (skip-locked
    resolves and rings, the unique firing index). A failing rule is logged and the others go
    on. Returns how many alerts fired or resolved."""
    now = now or timezone.now()
    batch = batch or getattr(settings, "SIGNOFF_ALERT_BATCH", 200)
    acted = 0
    for rule in AlertRule.objects.filter(enabled=True).order_by("pk"):
        try:
            acted += _sweep_rule(rule, now, batch)
        except Exception:  # noqa: BLE001 - isolate a failing rule
            log.exception("alert sweeper failed on rule %s", rule.pk)
    grace = timedelta(seconds=getattr(settings, "SIGNOFF_WEBHOOK_GRACE_SECONDS", 60))
    try:
        rung = ring_lost_webhooks(now=now, grace=grace, batch=batch)
    except Exception:  # noqa: BLE001 - the next run tries again
        log.exception("alert sweeper could not ring lost webhook notices")
        rung = 0
    if acted or rung:
        log.info("alert sweeper: %d fired or resolved, %d webhook notices rung", acted, rung)
    return acted


def alert_rule_secret_rotate(
    *, rule_id: int, now: datetime | None = None, overlap_for: timedelta | None = None
) -> str:
    """Give an alert rule a new webhook secret and return it (the only time it is readable
    whole); the previous one keeps signing for the overlap, as for webhook subscriptions
    (:func:`integrations.webhooks.webhook_secret_rotate`)."""
    return webhooks.rotate_sealed_secret(
        AlertRule,
        rule_id,
        ("webhook_secret", "webhook_previous_secret", "webhook_previous_secret_expires_at"),
        now=now,
        overlap_for=overlap_for,
    )
