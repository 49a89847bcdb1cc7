"""The integrations' Celery tasks, thin: each takes ids and calls a service of
:mod:`integrations.mail` or :mod:`integrations.webhooks`. The services send them by name
(their constants), so they never import this module."""

from __future__ import annotations

from celery import shared_task

from . import mail, webhooks
from .alerts import delivery as alert_delivery
from .alerts import services as alert_services


@shared_task(
    name=mail.SEND_EMAIL,
    bind=True,
    acks_late=True,
    ignore_result=True,
    max_retries=8,
)
def send_email(self, email_id: int) -> str:  # noqa: ANN001
    try:
        return mail.email_deliver(email_id=email_id)
    except mail.RETRYABLE as exc:
        if self.request.retries >= self.max_retries:
            mail.email_give_up(email_id=email_id, error=f"{type(exc).__name__}: {exc}")
            return "failed"
        raise self.retry(exc=exc, countdown=min(2**self.request.retries * 5, 600)) from exc


@shared_task(name=mail.SEND_EMAILS, acks_late=True, ignore_result=True)
def send_emails(email_ids: list[int]) -> dict[str, int]:
    """Deliver a slice of outbox rows over one SMTP connection; a row that failed gets a task
    of its own (``send_email``, with its retries and backoff)."""
    outcome = mail.emails_deliver(email_ids=email_ids)
    for pk in outcome["retry"]:
        send_email.apply_async((pk,), countdown=5)
    return {k: len(v) for k, v in outcome.items()}


@shared_task(name="integrations.sweep_outbox", ignore_result=True)
def sweep_outbox() -> int:
    return mail.sweep_outbox()


@shared_task(
    name=webhooks.DELIVER_WEBHOOK,
    acks_late=True,
    ignore_result=True,
    # One HTTP attempt under a row lock; retries are scheduled by the service, not by Celery.
    soft_time_limit=60,
    time_limit=90,
)
def deliver_webhook(delivery_id: int) -> str:
    return webhooks.webhook_deliver(delivery_id=delivery_id)


@shared_task(
    name=webhooks.DELIVER_WEBHOOKS,
    acks_late=True,
    ignore_result=True,
    # The deliveries of one event, one HTTP client; each attempt is bounded by the client's
    # timeouts (SIGNOFF_WEBHOOK_TOTAL_TIMEOUT at most), retries are the service's.
    soft_time_limit=300,
    time_limit=330,
)
def deliver_webhooks(delivery_ids: list[int]) -> dict[str, int]:
    return webhooks.webhook_deliver_batch(delivery_ids=delivery_ids)


@shared_task(name="integrations.sweep_webhooks", ignore_result=True)
def sweep_webhooks() -> int:
    return webhooks.sweep_webhooks()


@shared_task(
    name=alert_delivery.DELIVER_ALERT_WEBHOOK,
    acks_late=True,
    ignore_result=True,
    soft_time_limit=60,
    time_limit=90,
)
def deliver_alert_webhook(alert_id: int, notice: str) -> str:
    return alert_delivery.alert_webhook_deliver(alert_id=alert_id, notice=notice)


@shared_task(name="integrations.sweep_alerts", ignore_result=True)
def sweep_alerts() -> int:
    return alert_services.sweep_alerts()
