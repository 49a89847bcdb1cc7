"""Outbound webhooks: signed JSON POSTs of lifecycle events to the subscriptions that ask for them.

The engine announces each committed event (``orchestration.signals.event_committed``, sent after
the commit). :func:`on_event_committed` only writes one delivery row per matching subscription
(one INSERT, its own short transaction) and enqueues a Celery task per row after that commit: no
HTTP runs in the engine's process, so a slow or unreachable endpoint never slows a workflow.

:func:`webhook_deliver` (the task's service) claims an attempt, POSTs outside any transaction
and records the outcome: 2xx marks it delivered; anything else schedules the next attempt with
exponential backoff (``eta`` on the Celery message and ``next_attempt_at`` on the row), until
the last attempt marks it failed. :func:`sweep_webhooks` rings again for pending deliveries
whose message was lost. A delivery may reach an endpoint more than once (a worker killed
mid-request); receivers dedupe on ``webhook-id`` (``X-Signoff-Delivery``).

Deliveries of one event go out as one batch task over one HTTP client (connections reused);
the HTTP client and its guard against internal targets are :mod:`integrations.webhook_http`,
the signatures (Standard Webhooks, and the deprecated ``X-Signoff-Signature``)
:mod:`integrations.webhook_signing`.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
from celery import current_app
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestration import sealing

from . import webhook_http, webhook_signing
from .models import (
    WEBHOOK_EVENTS,
    AlertRule,
    WebhookDelivery,
    WebhookSubscription,
    new_webhook_secret,
    seal_secret,
)
from .webhook_signing import SIGNATURE_HEADER, signature_header, verify_signature

__all__ = ["SIGNATURE_HEADER", "signature_header", "verify_signature"]

log = logging.getLogger("signoff.webhooks")

USER_AGENT = webhook_http.USER_AGENT
HISTORY_KEEP = 20
# The delivery task (:mod:`integrations.tasks`, loaded by the app's ready()), sent by name from
# Celery's registry: the task calls this module, so this module does not import it.
DELIVER_WEBHOOK = "integrations.deliver_webhook"
DELIVER_WEBHOOKS = "integrations.deliver_webhooks"
# A message may arrive a little before the row's due time (clock skew between hosts).
EARLY_SLACK = timedelta(seconds=2)


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def max_attempts() -> int:
    return int(_setting("SIGNOFF_WEBHOOK_MAX_ATTEMPTS", 8))


def backoff(attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failed attempt: 10 s, 20 s, 40 s, ... capped at 1 h."""
    base = float(_setting("SIGNOFF_WEBHOOK_BACKOFF_SECONDS", 10))
    cap = float(_setting("SIGNOFF_WEBHOOK_BACKOFF_MAX_SECONDS", 3600))
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), cap))


# -- receiver: the engine's announcement → delivery rows -----------------------------------------


def on_event_committed(sender: Any, event: Any, **kwargs: Any) -> None:
    """``event_committed`` receiver. Never raises: a failure is logged, the engine goes on."""
    if getattr(event, "type", None) not in WEBHOOK_EVENTS:
        return
    try:
        webhook_deliveries_create(event=event)
    except Exception:  # noqa: BLE001 - a webhook never breaks the engine
        log.exception("webhook deliveries not recorded for event %s", getattr(event, "pk", None))


def _public(value: Any) -> Any:
    """Event data without tracebacks: receivers get an error's type and message, operators
    read the traceback in the admin."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if k != "traceback"}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def event_payload(event: Any) -> dict[str, Any]:
    """The body of a delivery for ``event`` (an ``orchestration.models.Event``), without the
    delivery id. ``instance.state`` is the state when the event's transaction committed."""
    instance = event.instance
    return {
        "event": event.type,
        "instance": {
            "id": str(instance.pk),
            "workflow": instance.workflow,
            "version": instance.version,
            "state": str(instance.state),
            "business_key": instance.business_key,
        },
        "step": event.step,
        "seq": event.seq,
        # Event data holds no sealed value (masked when written); secret-looking keys are
        # masked as for every reader.
        "data": _public(sealing.masked(event.data or {})),
        "at": event.at.isoformat(),
    }


# Active subscriptions, cached per process for a few seconds: the receiver runs after every
# lifecycle event, and most deployments have few or no subscriptions. A change made in this
# process clears the cache at once; other processes see it within
# SIGNOFF_WEBHOOK_SUBSCRIPTION_CACHE_SECONDS (5; 0 reads them for every event).
_active_cache: tuple[float, list[WebhookSubscription]] | None = None


def active_subscriptions() -> list[WebhookSubscription]:
    global _active_cache
    now = time.monotonic()
    ttl = settings.SIGNOFF_WEBHOOK_SUBSCRIPTION_CACHE_SECONDS
    if _active_cache is None or now - _active_cache[0] >= ttl:
        _active_cache = (now, list(WebhookSubscription.objects.filter(active=True)))
    return _active_cache[1]


def forget_subscriptions(**kwargs: Any) -> None:
    global _active_cache
    _active_cache = None


def webhook_deliveries_create(*, event: Any) -> list[WebhookDelivery]:
    """Write a pending delivery for each active subscription that wants ``event`` (one INSERT)
    and enqueue their tasks after the commit. A second call for the same event writes nothing.
    Makes no HTTP request."""
    instance = event.instance
    subscriptions = [s for s in active_subscriptions() if s.wants(event.type, instance.workflow)]
    if not subscriptions:
        return []
    payload = event_payload(event)
    now = timezone.now()
    rows = [
        WebhookDelivery(
            subscription=subscription,
            event_id=event.pk,
            event_seq=event.seq,
            instance_id=instance.pk,
            event_type=event.type,
            payload=payload,
            created_at=now,
            next_attempt_at=now,
        )
        for subscription in subscriptions
    ]
    try:
        with transaction.atomic():
            WebhookDelivery.objects.bulk_create(rows)
            ids = [row.pk for row in rows]
            transaction.on_commit(lambda: _enqueue_all(ids))
    except IntegrityError:
        log.info("webhook deliveries for %s seq %s already recorded", instance.pk, event.seq)
        return []
    return rows


def _enqueue_all(ids: list[int]) -> None:
    if len(ids) == 1:
        _enqueue(ids[0])
    else:
        _enqueue_batch(ids)


def _enqueue_batch(ids: list[int]) -> None:
    """One task for the deliveries of one event: one HTTP client, its connections reused. A
    broker failure is logged; the sweeper rings again for each row."""
    options: dict[str, Any] = {
        "retry": True,
        "retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
    }
    queue = _setting("SIGNOFF_WEBHOOK_QUEUE", "")
    if queue:
        options["queue"] = queue
    try:
        current_app.tasks[DELIVER_WEBHOOKS].apply_async((ids,), **options)
    except Exception:  # noqa: BLE001 - the sweeper is the fallback
        log.warning("webhook deliveries %s not enqueued; the sweeper will send them", ids)


def _enqueue(delivery_id: int, eta: datetime | None = None) -> None:
    """Send the delivery task's message. A broker failure is logged, never raised: the row is
    pending in the database and the sweeper rings again."""
    options: dict[str, Any] = {
        "retry": True,
        "retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
    }
    if eta is not None:
        options["eta"] = eta
    queue = _setting("SIGNOFF_WEBHOOK_QUEUE", "")
    if queue:
        options["queue"] = queue
    try:
        current_app.tasks[DELIVER_WEBHOOK].apply_async((delivery_id,), **options)
    except Exception:  # noqa: BLE001 - the sweeper is the fallback
        log.warning(
            "webhook delivery %s not enqueued; the sweeper will send it", delivery_id, exc_info=True
        )


# -- delivery ------------------------------------------------------------------------------------


def body_of(delivery: WebhookDelivery) -> bytes:
    document = {"id": delivery.pk, **delivery.payload}
    return json.dumps(
        document, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False
    ).encode()


def _post(
    url: str, body: bytes, headers: dict[str, str], *, client: httpx.Client | None = None
) -> webhook_http.Outcome:
    """POST once through ``client`` (or a client of its own)."""
    if client is not None:
        return webhook_http.send(client, url, body, headers)
    with webhook_http.new_client() as own:
        return webhook_http.send(own, url, body, headers)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    """POST once; returns ``(status code or None, error text)`` with an empty error on 2xx."""
    outcome = _post(url, body, headers)
    return outcome.status_code, outcome.error


# Alert notices (:mod:`integrations.alerts.delivery`) POST through :func:`post` and claim their
# attempts for the same lease (``lease`` below).


def _remember(delivery: WebhookDelivery, entry: dict[str, Any]) -> None:
    delivery.history = [*(delivery.history or []), entry][-HISTORY_KEEP:]


def _lease() -> timedelta:
    """How long a claimed attempt keeps others away: past the task's hard time limit, so a
    second attempt starts only when the first is surely over (or its worker died)."""
    return timedelta(seconds=float(_setting("SIGNOFF_WEBHOOK_TIMEOUT", 5)) + 90)


lease = _lease


def webhook_deliver(*, delivery_id: int, client: httpx.Client | None = None) -> str:
    """POST one pending, due delivery and record the attempt. Returns ``delivered``,
    ``retrying``, ``failed``, ``not_due`` or ``skipped``. ``client``: the batch's HTTP client
    (else one of its own).

    No transaction is open during the request (on SQLite an open write transaction would hold
    the database's write lock): a short one claims the attempt under the row lock (``attempts``
    + 1, the row not due again for a lease), the POST runs, another short one records the
    outcome. A duplicate message finds the row claimed (``not_due``) or not pending
    (``skipped``); a worker that dies mid-request leaves a claim the sweeper rings again for
    when the lease ends. On failure the next attempt is scheduled with exponential backoff,
    its message sent after the commit; after ``SIGNOFF_WEBHOOK_MAX_ATTEMPTS`` attempts the
    delivery is ``failed`` (an operator may retry it from the admin). A refused target (a
    private address, ``SIGNOFF_WEBHOOK_ALLOW_PRIVATE`` off) fails at once: no request is made
    and retrying will not help."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
            return "skipped"
        started = timezone.now()
        if delivery.next_attempt_at and delivery.next_attempt_at > started + EARLY_SLACK:
            return "not_due"  # early, duplicate, or another worker's attempt is in flight
        subscription = WebhookSubscription.objects.get(pk=delivery.subscription_id)
        if not subscription.active:
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.last_error = "subscription is not active"
            delivery.next_attempt_at = None
            _remember(delivery, {"at": started.isoformat(), "error": delivery.last_error})
            delivery.save(update_fields=["status", "last_error", "next_attempt_at", "history"])
            return "failed"
        delivery.attempts += 1
        delivery.next_attempt_at = claim = started + _lease()
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    attempt = delivery.attempts

    body = body_of(delivery)
    timestamp = int(started.timestamp())
    signing = subscription.signing_secrets(started)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **webhook_signing.standard_headers(signing, str(delivery.pk), timestamp, body),
        # Deprecated, removed in the next release (README "Webhooks").
        "X-Signoff-Event": delivery.event_type,
        "X-Signoff-Delivery": str(delivery.pk),
        SIGNATURE_HEADER: signature_header(signing, body, timestamp=timestamp),
    }
    clock = time.monotonic()
    outcome = _post(subscription.url, body, headers, client=client)
    code, error = outcome.status_code, outcome.error
    elapsed_ms = int((time.monotonic() - clock) * 1000)

    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if (
            delivery is None
            or delivery.status != WebhookDelivery.Status.PENDING
            or (delivery.attempts, delivery.next_attempt_at) != (attempt, claim)
        ):
            # Retried by an operator, or rung again by the sweeper after the lease, meanwhile:
            # the newer attempt is the one recorded.
            return "skipped"
        now = timezone.now()
        delivery.last_status_code = code
        delivery.last_error = error[:2000]
        _remember(
            delivery,
            {
                "attempt": attempt,
                "at": started.isoformat(),
                "status_code": code,
                "error": error[:300],
                "ms": elapsed_ms,
            },
        )
        if not error:
            delivery.status = WebhookDelivery.Status.DELIVERED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            result = "delivered"
        elif outcome.refused or attempt >= max_attempts():
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.next_attempt_at = None
            result = "failed"
            log.warning(
                "webhook delivery %s to %s failed after %d attempts: %s",
                delivery_id,
                subscription.name,
                attempt,
                error,
            )
        else:
            due = now + backoff(attempt)
            delivery.next_attempt_at = due
            transaction.on_commit(lambda: _enqueue(delivery_id, eta=due))
            result = "retrying"
        delivery.save(
            update_fields=[
                "status",
                "next_attempt_at",
                "last_status_code",
                "last_error",
                "history",
                "delivered_at",
            ]
        )
    return result


def webhook_delivery_retry(*, delivery_id: int, actor: str = "system") -> bool:
    """An operator's retry: a failed (or still pending) delivery becomes pending, due now, with
    a fresh round of attempts; its task is enqueued after the commit. A delivered one is left
    alone (returns False). An attempt in flight at that moment is not recorded."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.status == WebhookDelivery.Status.DELIVERED:
            return False
        now = timezone.now()
        delivery.status = WebhookDelivery.Status.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = now
        _remember(delivery, {"at": now.isoformat(), "retried_by": actor})
        delivery.save(update_fields=["status", "attempts", "next_attempt_at", "history"])
        transaction.on_commit(lambda: _enqueue(delivery_id))
    return True


def webhook_deliver_batch(*, delivery_ids: list[int]) -> dict[str, int]:
    """Deliver several deliveries (those of one event) over one HTTP client, so connections to
    the same host are reused. Each is claimed and recorded as by :func:`webhook_deliver`.
    Returns how many ended in each result."""
    results: dict[str, int] = {}
    with webhook_http.new_client() as client:
        for pk in delivery_ids:
            try:
                result = webhook_deliver(delivery_id=pk, client=client)
            except Exception:  # noqa: BLE001 - isolate a failing row; the sweeper rings again
                log.exception("webhook delivery %s failed in its batch", pk)
                result = "error"
            results[result] = results.get(result, 0) + 1
    return results


def overlap() -> timedelta:
    return timedelta(hours=float(_setting("SIGNOFF_WEBHOOK_SECRET_OVERLAP_HOURS", 24)))


def webhook_secret_rotate(
    *, subscription_id: int, now: datetime | None = None, overlap_for: timedelta | None = None
) -> str:
    """Give a subscription a new secret and return it (the only time it is readable whole).
    The previous secret keeps signing beside it (a second ``v1`` signature) for the overlap
    (``SIGNOFF_WEBHOOK_SECRET_OVERLAP_HOURS``), so the receiver can switch without losing a
    delivery; a secret older than the previous one stops signing at once. Under the row
    lock; raises ``WebhookSubscription.DoesNotExist`` for an unknown id."""
    secret = rotate_sealed_secret(
        WebhookSubscription,
        subscription_id,
        ("secret", "previous_secret", "previous_secret_expires_at"),
        now=now,
        overlap_for=overlap_for,
    )
    transaction.on_commit(forget_subscriptions)
    return secret


def rotate_sealed_secret(
    model: type[Any],
    pk: int,
    fields: tuple[str, str, str],
    *,
    now: datetime | None = None,
    overlap_for: timedelta | None = None,
) -> str:
    """Give the row ``pk`` of ``model`` a new sealed secret and return it unsealed (the only
    time it is readable whole). ``fields`` names the current secret, the previous secret and
    the previous one's expiry: the current one moves to previous, signing for the overlap.
    Under the row lock; raises ``model.DoesNotExist`` for an unknown id."""
    current, previous, expires = fields
    now = now or timezone.now()
    secret = new_webhook_secret()
    with transaction.atomic():
        row = model.objects.select_for_update().get(pk=pk)
        setattr(row, previous, getattr(row, current))
        setattr(row, expires, now + (overlap() if overlap_for is None else overlap_for))
        setattr(row, current, seal_secret(secret))
        row.save(update_fields=[current, previous, expires])
    return secret


# -- sweeper -------------------------------------------------------------------------------------


def _ring_again(delivery_id: int, *, older_than: datetime, now: datetime) -> bool:
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(
                pk=delivery_id,
                status=WebhookDelivery.Status.PENDING,
                next_attempt_at__lte=older_than,
            )
            .first()
        )
        if delivery is None:
            return False  # delivered, being delivered, or rung meanwhile
        # Due again from now: the next sweep leaves it alone for a grace period.
        delivery.next_attempt_at = now
        delivery.save(update_fields=["next_attempt_at"])
        transaction.on_commit(lambda: _enqueue(delivery_id))
    return True


def sweep_webhooks(
    *, now: datetime | None = None, grace_seconds: int | None = None, batch: int | None = None
) -> int:
    """Enqueue again pending deliveries due longer than the grace period ago (their message
    was lost: broker down at commit, Redis flushed). Bounded batch, row locks with
    ``skip_locked``, re-checked under the lock. Also deletes finished deliveries older than
    ``SIGNOFF_WEBHOOK_KEEP_DAYS`` (default 30; 0 keeps them), and previous secrets past their
    overlap. Returns how many were rung."""
    now = now or timezone.now()
    grace = (
        _setting("SIGNOFF_WEBHOOK_GRACE_SECONDS", 60) if grace_seconds is None else grace_seconds
    )
    batch = batch or _setting("SIGNOFF_SWEEP_BATCH", 500)
    older_than = now - timedelta(seconds=grace)
    ids = list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=older_than
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:batch]
    )
    rung = 0
    for pk in ids:
        try:
            rung += _ring_again(pk, older_than=older_than, now=now)
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("webhook sweeper failed on delivery %s", pk)
    if rung:
        log.info("webhook sweeper rang again for %d deliveries", rung)

    # Previous secrets past their overlap sign nothing any more: not kept either.
    WebhookSubscription.objects.filter(previous_secret_expires_at__lte=now).update(
        previous_secret="", previous_secret_expires_at=None
    )
    AlertRule.objects.filter(webhook_previous_secret_expires_at__lte=now).update(
        webhook_previous_secret="", webhook_previous_secret_expires_at=None
    )

    keep_days = int(_setting("SIGNOFF_WEBHOOK_KEEP_DAYS", 30))
    if keep_days > 0:
        old = list(
            WebhookDelivery.objects.filter(created_at__lt=now - timedelta(days=keep_days))
            .exclude(status=WebhookDelivery.Status.PENDING)
            .values_list("pk", flat=True)[:batch]
        )
        if old:
            WebhookDelivery.objects.filter(pk__in=old).delete()
    return rung
