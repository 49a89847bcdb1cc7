"""Outbound email: an outbox row written in the caller's transaction, delivered after commit
by a Celery task that is safe to run twice (the row's status is checked and set under a lock,
and the Message-ID is fixed when the row is written)."""

from __future__ import annotations

import logging
import smtplib
import socket
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from .models import OutboundEmail

log = logging.getLogger("signoff.mail")
RETRYABLE = (smtplib.SMTPException, socket.error, OSError)


def email_queue(
    *,
    message_id: str,
    kind: str,
    to: list[str],
    template: str,
    context: dict[str, Any],
    instance_id: Any = None,
    request_id: int | None = None,
) -> OutboundEmail | None:
    """Render ``email/<template>.txt`` / ``.html`` (first line of the text is ``Subject: ...``)
    and write an outbox row; the send task runs after commit. Idempotent: a second call with
    the same ``message_id`` changes nothing and sends nothing. Returns None without recipients.
    """
    to = sorted({addr for addr in to if addr})
    if not to:
        return None
    subject, body_text, html = email_render(template=template, context=context)
    email, created = OutboundEmail.objects.get_or_create(
        message_id=message_id,
        defaults={
            "kind": kind,
            "to": to,
            "subject": subject,
            "body_text": body_text,
            "body_html": html,
            "created_at": timezone.now(),
            "instance_id": instance_id,
            "request_id": request_id,
        },
    )
    if created:
        transaction.on_commit(lambda: _enqueue(email.pk))
    return email


def email_render(*, template: str, context: dict[str, Any]) -> tuple[str, str, str]:
    """Subject, text body and HTML body of ``email/<template>.txt`` / ``.html``."""
    text = render_to_string(f"email/{template}.txt", context).lstrip()
    subject, _, body = text.partition("\n")
    html = render_to_string(f"email/{template}.html", context)
    return subject.removeprefix("Subject:").strip()[:300], body.strip() + "\n", html


# Delivery tasks carry this many rows each: one broker message and one SMTP connection per
# slice instead of per mail (a burst of 10,000 escalation mails is 100 messages).
DELIVERY_SLICE = 100


def emails_enqueue(email_ids: list[int]) -> None:
    """Send the delivery tasks of several queued rows (after commit), a slice of rows per task
    over one broker connection. A broker failure is logged: the outbox sweeper sends them
    later."""
    from .tasks import send_emails

    if not email_ids:
        return
    try:
        with send_emails.app.producer_or_acquire() as producer:
            for i in range(0, len(email_ids), DELIVERY_SLICE):
                send_emails.apply_async((email_ids[i : i + DELIVERY_SLICE],), producer=producer)
    except Exception:  # noqa: BLE001 - the outbox sweeper sends them later
        log.warning(
            "%d emails not enqueued; the outbox sweeper will send them",
            len(email_ids),
            exc_info=True,
        )


def emails_deliver(*, email_ids: list[int]) -> dict[str, list[int]]:
    """Deliver several outbox rows over one SMTP connection, each as :func:`email_deliver`
    does (its own transaction and row lock; a row no longer queued is skipped). A row whose
    send fails with a retryable error keeps its recorded attempt and is returned under
    ``retry`` for a task of its own with backoff; the connection is opened again for the
    rest. Returns the ids by outcome."""
    outcome: dict[str, list[int]] = {"sent": [], "skipped": [], "retry": []}
    connection = get_connection()
    is_open = False
    try:
        for pk in email_ids:
            try:
                if not is_open:
                    # Opened here, the backend keeps it open across sends (it closes only
                    # the connections it opened itself).
                    connection.open()
                    is_open = True
                result = email_deliver(email_id=pk, connection=connection)
            except RETRYABLE:
                outcome["retry"].append(pk)
                connection.close()  # it may be broken; the next row opens a new one
                is_open = False
                continue
            outcome[result].append(pk)
    finally:
        connection.close()
    return outcome


def _enqueue(email_id: int) -> None:
    from .tasks import send_email

    try:
        send_email.delay(email_id)
    except Exception:  # noqa: BLE001 - the outbox sweeper sends it later
        log.warning(
            "email %s not enqueued; the outbox sweeper will send it", email_id, exc_info=True
        )


def email_deliver(*, email_id: int, connection: Any = None) -> str:
    """Send one outbox row if it is still queued. Raises on an SMTP error (the task retries);
    returns ``sent`` or ``skipped``. ``connection``: an open mail connection to reuse."""
    failure: Exception | None = None
    with transaction.atomic():
        email = OutboundEmail.objects.select_for_update().filter(pk=email_id).first()
        if email is None or email.status != OutboundEmail.Status.QUEUED:
            return "skipped"
        email.attempts += 1
        message = EmailMultiAlternatives(
            subject=email.subject,
            body=email.body_text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=email.to,
            headers={"Message-ID": email.message_id, "X-Signoff-Kind": email.kind},
            connection=connection,
        )
        if email.body_html:
            message.attach_alternative(email.body_html, "text/html")
        try:
            message.send()
        except RETRYABLE as exc:
            # Record the attempt (committed), then raise for the task to retry.
            failure = exc
            email.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            email.save(update_fields=["attempts", "last_error"])
        else:
            email.status = OutboundEmail.Status.SENT
            email.sent_at = timezone.now()
            email.last_error = ""
            email.save(update_fields=["attempts", "status", "sent_at", "last_error"])
    if failure is not None:
        raise failure
    return "sent"


def email_give_up(*, email_id: int, error: str) -> None:
    OutboundEmail.objects.filter(pk=email_id, status=OutboundEmail.Status.QUEUED).update(
        status=OutboundEmail.Status.FAILED, last_error=error[:2000]
    )


def sweep_outbox(*, older_than_seconds: int = 60, batch: int = 500) -> int:
    """Enqueue again queued mails whose task was lost (broker down at commit)."""
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_seconds)
    ids = list(
        OutboundEmail.objects.filter(status=OutboundEmail.Status.QUEUED, created_at__lte=cutoff)
        .order_by("created_at")
        .values_list("pk", flat=True)[:batch]
    )
    emails_enqueue(ids)
    return len(ids)
