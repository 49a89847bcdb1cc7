"""An alert's notices: one ``fired`` and one ``resolved`` notice per channel.

Mail goes through the outbox (:func:`integrations.mail.email_queue`, in the alert's
transaction, sent by the ``send_email`` task after commit and retried there); its Message-ID
is fixed per (alert, notice), so a notice is mailed once. The webhook is a signed POST to the
rule's URL (the signature of :mod:`integrations.webhooks`, under the rule's own secret), sent
by the ``deliver_alert_webhook`` task after commit; the task retries with backoff. Both carry
masked data only (the condition masked what it copied) and links, never a sealed value.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orchestration import sealing

from .. import mail, webhook_signing, webhooks
from ..models import Alert, AlertRule
from .conditions import get_condition

log = logging.getLogger("signoff.alerts")

DELIVER_ALERT_WEBHOOK = "integrations.deliver_alert_webhook"
NOTICES = ("fired", "resolved")


def _base_url() -> str:
    return settings.SIGNOFF_BASE_URL.rstrip("/")


def _domain() -> str:
    host = _base_url().split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return host or "signoff.local"


def alert_admin_path(alert: Alert) -> str:
    return f"/admin/integrations/alert/{alert.pk}/change/"


def recipients(rule: AlertRule) -> list[str]:
    """The rule's addresses and the addresses of its group's active members."""
    to = list(rule.mail_addresses)
    if rule.mail_group_id is not None:
        to += [
            address
            for address in get_user_model()
            .objects.filter(groups=rule.mail_group_id, is_active=True)
            .exclude(email="")
            .values_list("email", flat=True)
        ]
    return sorted(set(to))


def _facts(alert: Alert) -> list[tuple[str, str]]:
    """Masked details, flattened for people: ("error message", "..."), ..."""
    details = sealing.masked(alert.details or {})
    facts: list[tuple[str, str]] = []
    for key, value in details.items():
        if isinstance(value, dict):
            facts += [(f"{key} {k}", str(v)[:300]) for k, v in value.items()]
        else:
            facts.append((key, str(value)[:300]))
    return facts[:12]


def notice_payload(alert: Alert, rule: AlertRule, notice: str) -> dict[str, Any]:
    """The JSON a webhook receives (the mail says the same in words)."""
    link = (alert.details or {}).get("link") or ""
    return {
        "event": f"alert_{notice}",
        "alert": {
            "id": alert.pk,
            "rule": rule.name,
            "condition": alert.condition,
            "subject": alert.subject,
            "title": alert.title,
            "state": str(alert.state),
            "instance_id": str(alert.instance_id) if alert.instance_id else None,
            "first_fired_at": alert.first_fired_at,
            "last_seen_at": alert.last_seen_at,
            "times_seen": alert.times_seen,
            "resolved_at": alert.resolved_at,
            "details": sealing.masked({k: v for k, v in (alert.details or {}).items()}),
            "links": {
                "subject": f"{_base_url()}{link}" if link else None,
                "admin": f"{_base_url()}{alert_admin_path(alert)}",
            },
        },
    }


def notice_queue(*, alert: Alert, rule: AlertRule, notice: str) -> None:
    """Queue ``notice`` on each of the rule's channels; call inside the transaction that holds
    the alert's row lock, then save ``deliveries``. The mail is an outbox row written now;
    the webhook task is sent after the commit. A notice already queued is not queued again."""
    assert notice in NOTICES
    if notice in (alert.deliveries or {}):
        return
    entry: dict[str, Any] = {}
    to = recipients(rule)
    if to:
        condition = get_condition(alert.condition)
        link = (alert.details or {}).get("link") or ""
        email = mail.email_queue(
            message_id=f"<signoff.alert.{alert.pk}.{notice}@{_domain()}>",
            kind=f"alert_{notice}",
            to=to,
            template="alert",
            context={
                "alert": alert,
                "rule": rule,
                "notice": notice,
                "notice_label": "Resolved" if notice == "resolved" else "Alert",
                "condition_label": condition.label if condition else alert.condition,
                "facts": _facts(alert),
                "subject_url": f"{_base_url()}{link}" if link else "",
                "alert_url": f"{_base_url()}{alert_admin_path(alert)}",
                "base_url": _base_url(),
            },
            instance_id=alert.instance_id,
        )
        entry["mail"] = {"email_id": email.pk if email else None, "to": len(to)}
    elif rule.mail_addresses or rule.mail_group_id:
        entry["mail"] = {"status": "no recipients"}
    if rule.webhook_url:
        # ``due``: when the next attempt may start (the sweeper's clock for a lost message).
        entry["webhook"] = {"status": "pending", "attempts": 0, "due": timezone.now().isoformat()}
        alert_id = alert.pk
        transaction.on_commit(lambda: enqueue_webhook(alert_id, notice))
    alert.deliveries = {**(alert.deliveries or {}), notice: entry}


def enqueue_webhook(alert_id: int, notice: str, countdown: float | None = None) -> None:
    """Send the webhook task's message; a broker failure is logged (the sweeper rings
    again for a notice left pending)."""
    options: dict[str, Any] = {}
    if countdown:
        options["countdown"] = countdown
    try:
        current_app.tasks[DELIVER_ALERT_WEBHOOK].apply_async((alert_id, notice), **options)
    except Exception:  # noqa: BLE001 - the sweeper is the fallback
        log.warning("alert %s %s webhook not enqueued", alert_id, notice, exc_info=True)


def _record(alert_id: int, notice: str, **changes: Any) -> dict[str, Any] | None:
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(pk=alert_id).first()
        if alert is None:
            return None
        deliveries = dict(alert.deliveries or {})
        entry = dict(deliveries.get(notice, {}))
        webhook = {**entry.get("webhook", {}), **changes}
        deliveries[notice] = {**entry, "webhook": webhook}
        Alert.objects.filter(pk=alert_id).update(deliveries=deliveries)
        return webhook


def alert_webhook_deliver(*, alert_id: int, notice: str) -> str:
    """POST one notice of an alert to its rule's URL, signed. Returns ``delivered``,
    ``retrying`` (the task sends it again later), ``failed`` (after
    ``SIGNOFF_WEBHOOK_MAX_ATTEMPTS``), ``not_due`` (an attempt is claimed and in flight, or
    the next one is not due yet) or ``skipped`` (not pending: already delivered, a duplicate
    message). The attempt is claimed under the row lock (skip_locked) before the
    POST, which runs outside any transaction; receivers dedupe on ``X-Signoff-Delivery``
    (``alert-<id>-<notice>``)."""
    with transaction.atomic():
        alert = (
            Alert.objects.select_for_update(skip_locked=True)
            .select_related("rule")
            .filter(pk=alert_id)
            .first()
        )
        webhook = ((alert.deliveries or {}).get(notice) or {}).get("webhook") if alert else None
        if alert is None or not webhook or webhook.get("status") != "pending":
            return "skipped"
        started = timezone.now()
        if _due(webhook) > started + webhooks.EARLY_SLACK:
            return "not_due"  # a duplicate message, or another worker's attempt in flight
        rule = alert.rule
        attempt = int(webhook.get("attempts", 0)) + 1
        deliveries = dict(alert.deliveries)
        # Claimed for a lease past the task's time limit, as webhook deliveries are.
        claim = {"attempts": attempt, "due": (started + webhooks.lease()).isoformat()}
        deliveries[notice] = {**deliveries[notice], "webhook": {**webhook, **claim}}
        Alert.objects.filter(pk=alert_id).update(deliveries=deliveries)
    if not rule.webhook_url:
        _record(alert_id, notice, status="failed", error="the rule has no webhook URL any more")
        return "failed"
    body = json.dumps(
        {"id": f"alert-{alert_id}-{notice}", **notice_payload(alert, rule, notice)},
        cls=DjangoJSONEncoder,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    signing = rule.signing_secrets()  # unsealed here only, never stored or logged
    headers = {
        "Content-Type": "application/json",
        "User-Agent": webhooks.USER_AGENT,
        # Standard Webhooks, as subscriptions' deliveries (README "Outbound webhooks").
        **webhook_signing.standard_headers(
            signing, f"alert-{alert_id}-{notice}", int(started.timestamp()), body
        ),
        "X-Signoff-Event": f"alert_{notice}",
        "X-Signoff-Delivery": f"alert-{alert_id}-{notice}",
        webhooks.SIGNATURE_HEADER: webhooks.signature_header(
            signing, body, timestamp=int(started.timestamp())
        ),
    }
    code, error = webhooks.post(rule.webhook_url, body, headers)
    now = timezone.now().isoformat()
    if not error:
        _record(alert_id, notice, status="delivered", status_code=code, at=now, error="")
        return "delivered"
    if attempt >= webhooks.max_attempts():
        _record(alert_id, notice, status="failed", status_code=code, at=now, error=error[:300])
        log.warning("alert %s %s webhook failed after %d attempts", alert_id, notice, attempt)
        return "failed"
    wait = webhooks.backoff(attempt)
    due = (timezone.now() + wait).isoformat()
    _record(alert_id, notice, status_code=code, at=now, error=error[:300], due=due)
    enqueue_webhook(alert_id, notice, countdown=wait.total_seconds())
    return "retrying"


def _due(webhook: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(webhook["due"])
    except (KeyError, TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)


def ring_lost_webhooks(*, now: datetime, grace: timedelta, batch: int) -> int:
    """Send again the webhook task of notices still pending past their due time plus
    ``grace`` (the message was lost: broker down at commit, Redis flushed). Locks each alert
    with ``skip_locked`` and re-checks under the lock. Returns how many were rung."""
    pending = Q()
    for notice in NOTICES:
        pending |= Q(**{f"deliveries__{notice}__webhook__status": "pending"})
    ids = list(Alert.objects.filter(pending).order_by("pk").values_list("pk", flat=True)[:batch])
    rung = 0
    for pk in ids:
        with transaction.atomic():
            alert = Alert.objects.select_for_update(skip_locked=True).filter(pk=pk).first()
            if alert is None:
                continue
            deliveries = dict(alert.deliveries or {})
            for notice in NOTICES:
                webhook = (deliveries.get(notice) or {}).get("webhook")
                if not webhook or webhook.get("status") != "pending":
                    continue
                if _due(webhook) > now - grace:
                    continue
                deliveries[notice] = {
                    **deliveries[notice],
                    "webhook": {**webhook, "due": now.isoformat()},
                }
                transaction.on_commit(lambda a=pk, n=notice: enqueue_webhook(a, n))
                rung += 1
            Alert.objects.filter(pk=pk).update(deliveries=deliveries)
    return rung
