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
mid-request); receivers dedupe on ``X-Signoff-Delivery``.

Signature: ``X-Signoff-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``,
checked by :func:`verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestration import sealing

from .models import WEBHOOK_EVENTS, WebhookDelivery, WebhookSubscription, new_webhook_secret

log = logging.getLogger("signoff.webhooks")

USER_AGENT = "Signoff-Webhooks/1"
SIGNATURE_HEADER = "X-Signoff-Signature"
HISTORY_KEEP = 20
# The delivery task (:mod:`integrations.tasks`, loaded by the app's ready()), sent by name from
# Celery's registry: the task calls this module, so this module does not import it.
DELIVER_WEBHOOK = "integrations.deliver_webhook"
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


# -- signing -------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    t = int(time.time() if timestamp is None else timestamp)
    return f"t={t},v1={sign(secret, t, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> bool:
    """The receiver's check: ``header`` (``X-Signoff-Signature``) signs exactly ``body`` (the raw
    request bytes) under ``secret``, with a timestamp within ``tolerance`` seconds of now (a
    captured request cannot be replayed later). Constant-time comparison."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


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
    for pk in ids:
        _enqueue(pk)


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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: the POST is not repeated elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def body_of(delivery: WebhookDelivery) -> bytes:
    document = {"id": delivery.pk, **delivery.payload}
    return json.dumps(
        document, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False
    ).encode()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    """POST once; returns ``(status code or None, error text)`` with an empty error on 2xx."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    timeout = float(_setting("SIGNOFF_WEBHOOK_TIMEOUT", 5))
    try:
        with _opener.open(request, timeout=timeout) as response:
            code = response.status
            response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        try:
            excerpt = exc.read(500).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the status is what matters
            excerpt = ""
        finally:
            exc.close()
        return exc.code, f"HTTP {exc.code}" + (f": {excerpt}" if excerpt else "")
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = f"{type(reason).__name__}: {reason}" if isinstance(reason, Exception) else reason
        return None, str(text)
    except Exception as exc:  # noqa: BLE001 - timeouts, resets, bad URLs: all retryable
        return None, f"{type(exc).__name__}: {exc}"
    if 200 <= code < 300:
        return code, ""
    return code, f"HTTP {code}"


# Public: alert notices (:mod:`integrations.alerts.delivery`) POST through the same door and
# claim their attempts for the same lease (``lease`` is defined below).
post = _post


def _remember(delivery: WebhookDelivery, entry: dict[str, Any]) -> None:
    delivery.history = [*(delivery.history or []), entry][-HISTORY_KEEP:]


def _lease() -> timedelta:
    """How long a claimed attempt keeps others away: past the task's hard time limit, so a
    second attempt starts only when the first is surely over (or its worker died)."""
    return timedelta(seconds=float(_setting("SIGNOFF_WEBHOOK_TIMEOUT", 5)) + 90)


lease = _lease


def webhook_deliver(*, delivery_id: int) -> str:
    """POST one pending, due delivery and record the attempt. Returns ``delivered``,
    ``retrying``, ``failed``, ``not_due`` or ``skipped``.

    No transaction is open during the request (on SQLite an open write transaction would hold
    the database's write lock): a short one claims the attempt under the row lock (``attempts``
    + 1, the row not due again for a lease), the POST runs, another short one records the
    outcome. A duplicate message finds the row claimed (``not_due``) or not pending
    (``skipped``); a worker that dies mid-request leaves a claim the sweeper rings again for
    when the lease ends. On failure the next attempt is scheduled with exponential backoff,
    its message sent after the commit; after ``SIGNOFF_WEBHOOK_MAX_ATTEMPTS`` attempts the
    delivery is ``failed`` (an operator may retry it from the admin)."""
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
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Signoff-Event": delivery.event_type,
        "X-Signoff-Delivery": str(delivery.pk),
        SIGNATURE_HEADER: signature_header(
            subscription.secret, body, timestamp=int(started.timestamp())
        ),
    }
    clock = time.monotonic()
    code, error = _post(subscription.url, body, headers)
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
        elif attempt >= max_attempts():
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


def webhook_secret_rotate(*, subscription_id: int) -> str:
    """Give a subscription a new secret; deliveries signed from now on use it."""
    secret = new_webhook_secret()
    WebhookSubscription.objects.filter(pk=subscription_id).update(secret=secret)
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
    ``SIGNOFF_WEBHOOK_KEEP_DAYS`` (default 30; 0 keeps them). Returns how many were rung."""
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
