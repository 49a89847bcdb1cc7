"""Outbound email: an outbox row written in the caller's transaction, delivered after commit
by a Celery task that is safe to run twice (the row's status is checked and set under a lock,
and the Message-ID is fixed when the row is written).

A mail may carry one personal link that must never be stored (an approval's single-use action
link: whoever reads the outbox could use it). The outbox keeps :data:`LINK_PLACEHOLDER` where
the template puts ``{{ link }}`` and, in ``link_ref``, which registered minter makes the link
and for what (ids, no secret). At delivery, inside the row's transaction and under its lock,
the minter returns the URL; the body with the URL is sent and never saved. Each delivery
attempt asks the minter again (see :func:`email_deliver`).

A mail to a person also carries a link to their mail preferences (immediate mail or a daily
digest) in its footer and in a ``List-Unsubscribe`` header. It is signed and works without a
login, so it is never stored either: the outbox keeps :func:`preferences_placeholder` (the
recipient's user id, nothing secret) and the maker registered with
:func:`register_preferences_link` writes the URL at delivery."""

from __future__ import annotations

import json
import logging
import re
import secrets
import smtplib
import socket
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.utils import timezone, translation
from django.utils.html import escape

from .models import OutboundEmail

log = logging.getLogger("signoff.mail")
RETRYABLE = (smtplib.SMTPException, socket.error, OSError)

# The delivery tasks (:mod:`integrations.tasks`, loaded by the app's ready()), sent by name
# from Celery's registry: the tasks call this module, so this module does not import them.
SEND_EMAIL = "integrations.send_email"
SEND_EMAILS = "integrations.send_emails"

# What the outbox stores in place of a personal link (HTML-safe: the same in text and HTML).
LINK_PLACEHOLDER = "{signoff:action-link}"
# The placeholder's text when it comes from the content (a title, a field), not from the
# template: shown as it was written, never replaced by a link.
LINK_PLACEHOLDER_DEFUSED = "(signoff:action-link)"

LinkMinter = Callable[[dict[str, Any]], str]
_link_minters: dict[str, LinkMinter] = {}

# Where the recipient's preferences link goes: ``{signoff:preferences-link:<user id>}``.
_PREFERENCES_PREFIX = "{signoff:preferences-link"
_PREFERENCES_DEFUSED = "(signoff:preferences-link"
_PREFERENCES_RE = re.compile(r"\{signoff:preferences-link:(\d+)\}")
PreferencesLink = Callable[[int], str]
_preferences_link: dict[str, PreferencesLink] = {}


def preferences_placeholder(recipient_id: int) -> str:
    """What the outbox stores in place of ``recipient_id``'s preferences link."""
    return f"{_PREFERENCES_PREFIX}:{int(recipient_id)}}}"


def register_preferences_link(maker: PreferencesLink) -> None:
    """Let ``maker(user_id)`` make the absolute URL of a person's mail preferences page, put
    at delivery where a mail to them has :func:`preferences_placeholder` (and in its
    ``List-Unsubscribe`` header). Registering again replaces it."""
    _preferences_link["maker"] = maker


def _preferences_url(recipient_id: int) -> str:
    maker = _preferences_link.get("maker")
    if maker is None:  # nobody registered one: the site, at least
        return f"{settings.SIGNOFF_BASE_URL.rstrip('/')}/"
    return maker(recipient_id)


RecipientLocales = Callable[[list[int]], dict[int, tuple[str, str]]]
_recipient_locales: dict[str, RecipientLocales] = {}


def register_recipient_locale(reader: RecipientLocales) -> None:
    """Let ``reader(user_ids)`` say each recipient's ``(language, time zone)`` (language ""
    when they chose none): a mail to a person is rendered in their language and zone.
    Registering again replaces it."""
    _recipient_locales["reader"] = reader


def recipient_locale(recipient_id: int | None) -> tuple[str, str]:
    """The language and time zone a mail to ``recipient_id`` is rendered in (the site's
    ``LANGUAGE_CODE`` and ``TIME_ZONE`` for anyone without a choice, or no recipient)."""
    language, zone = "", settings.TIME_ZONE
    reader = _recipient_locales.get("reader")
    if recipient_id is not None and reader is not None:
        language, zone = reader([recipient_id]).get(recipient_id, (language, zone))
    return language or settings.LANGUAGE_CODE, zone or settings.TIME_ZONE


def register_link_minter(name: str, minter: LinkMinter) -> None:
    """Let ``name`` (the ``minter`` of a row's ``link_ref``) make the personal links of the
    mails queued with it. ``minter(link_ref)`` runs at delivery, once per attempt, inside the
    delivery's transaction while the outbox row is locked; it returns the absolute URL sent in
    place of :data:`LINK_PLACEHOLDER`. What it writes (a token's hash) commits with the
    attempt, also when the SMTP send then fails. Registering a name again replaces it."""
    _link_minters[name] = minter


def email_queue(
    *,
    message_id: str,
    kind: str,
    to: list[str],
    template: str,
    context: dict[str, Any],
    instance_id: Any = None,
    request_id: int | None = None,
    link_ref: dict[str, Any] | None = None,
    recipient_id: int | None = None,
    locale: tuple[str, str] | None = None,
) -> OutboundEmail | None:
    """Render ``email/<template>.txt`` / ``.html`` (first line of the text is ``Subject: ...``)
    and write an outbox row; the send task runs after commit. Idempotent: a second call with
    the same ``message_id`` changes nothing and sends nothing. Returns None without recipients.

    ``link_ref``: the mail carries a personal link, made at delivery by the minter registered
    under ``link_ref["minter"]`` (:func:`register_link_minter`); the template's ``{{ link }}``
    is stored as :data:`LINK_PLACEHOLDER`. Only ids belong in it: it is stored and shown.

    ``recipient_id``: the user the mail is for; the mail gets their preferences link (footer
    and ``List-Unsubscribe``), made at delivery (:func:`register_preferences_link`); it is
    rendered in their language and time zone (``locale``, or read: :func:`email_render`).
    """
    to = sorted({addr for addr in to if addr})
    if not to:
        return None
    if link_ref is not None and link_ref.get("minter") not in _link_minters:
        raise ValueError(f"no link minter registered as {link_ref.get('minter')!r}")
    subject, body_text, html = email_render(
        template=template,
        context=context,
        personal_link=link_ref is not None,
        recipient_id=recipient_id,
        locale=locale,
    )
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
            "link_ref": link_ref,
        },
    )
    if created:
        transaction.on_commit(lambda: _enqueue(email.pk))
    return email


def email_render(
    *,
    template: str,
    context: dict[str, Any],
    personal_link: bool = False,
    recipient_id: int | None = None,
    locale: tuple[str, str] | None = None,
) -> tuple[str, str, str]:
    """Subject, text body and HTML body of ``email/<template>.txt`` / ``.html``.

    ``personal_link``: the template's ``{{ link }}`` becomes :data:`LINK_PLACEHOLDER`, and only
    it does: a placeholder written into the content (a title quoting it) is defused first, so
    delivery puts the link only where the template put it.

    ``recipient_id``: the text gets the ``email/_preferences.txt`` footer and the HTML layout
    its preferences row (``{{ preferences_link }}``), both holding
    :func:`preferences_placeholder`; a preferences placeholder in the content is defused.

    ``locale``: the ``(language, time zone)`` to render in; without it, the recipient's
    (:func:`recipient_locale`, one query), so every string and time of the mail is theirs."""
    if locale is None:
        locale = recipient_locale(recipient_id)
    language, zone = locale
    with (
        translation.override(language or settings.LANGUAGE_CODE),
        timezone.override(zoneinfo.ZoneInfo(zone or settings.TIME_ZONE)),
    ):
        return _email_render(template, context, personal_link, recipient_id)


def _email_render(
    template: str, context: dict[str, Any], personal_link: bool, recipient_id: int | None
) -> tuple[str, str, str]:
    marker = f"signoff-link-{secrets.token_hex(8)}" if personal_link else None
    if marker:
        context = {**context, "link": marker}
    prefs = f"signoff-prefs-{secrets.token_hex(8)}" if recipient_id is not None else None
    if prefs:
        context = {**context, "preferences_link": prefs}
    text = render_to_string(f"email/{template}.txt", context).lstrip()
    subject, _, body = text.partition("\n")
    html = render_to_string(f"email/{template}.html", context)
    subject, body = subject.removeprefix("Subject:").strip()[:300], body.strip() + "\n"
    if prefs:
        body += "\n" + render_to_string("email/_preferences.txt", context).strip() + "\n"
    if marker:
        subject, body, html = (_place_link(part, marker) for part in (subject, body, html))
    subject, body, html = (
        part.replace(_PREFERENCES_PREFIX, _PREFERENCES_DEFUSED) for part in (subject, body, html)
    )
    if prefs:
        placeholder = preferences_placeholder(recipient_id)
        body, html = (part.replace(prefs, placeholder) for part in (body, html))
    return subject, body, html


def _place_link(text: str, marker: str) -> str:
    return text.replace(LINK_PLACEHOLDER, LINK_PLACEHOLDER_DEFUSED).replace(
        marker, LINK_PLACEHOLDER
    )


# Delivery tasks carry this many rows each: one broker message and one SMTP connection per
# slice instead of per mail (a burst of 10,000 escalation mails is 100 messages).
DELIVERY_SLICE = 100


def emails_enqueue(email_ids: list[int]) -> None:
    """Send the delivery tasks of several queued rows (after commit), a slice of rows per task
    over one broker connection. A broker failure is logged: the outbox sweeper sends them
    later."""
    if not email_ids:
        return
    send_emails = current_app.tasks[SEND_EMAILS]
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
    rest. Returns the ids by outcome (``failed``: a row that cannot be sent at all)."""
    outcome: dict[str, list[int]] = {"sent": [], "skipped": [], "retry": [], "failed": []}
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
    try:
        current_app.tasks[SEND_EMAIL].delay(email_id)
    except Exception:  # noqa: BLE001 - the outbox sweeper sends it later
        log.warning(
            "email %s not enqueued; the outbox sweeper will send it", email_id, exc_info=True
        )


def email_deliver(*, email_id: int, connection: Any = None) -> str:
    """Send one outbox row if it is still queued. Raises on an SMTP error (the task retries);
    returns ``sent``, ``skipped`` (not queued any more: a repeated task) or ``failed`` (its
    link's minter is not registered). ``connection``: an open mail connection to reuse.

    A row with a ``link_ref`` gets its personal link from the minter here, under the row's
    lock, for this attempt only: the body with the link is sent and never saved. An attempt
    whose send fails has asked for a link all the same and keeps it (the minter's writes
    commit with the recorded attempt): an SMTP error does not prove the mail was not accepted,
    so that link may have reached the person, and the retry, under the same Message-ID, may be
    dropped as a duplicate by the receiving side. The retry asks for a new link. (A worker
    killed during the send rolls the attempt back, link included: should that mail have left,
    its link answers "not valid" and points to the inbox.)"""
    failure: Exception | None = None
    with transaction.atomic():
        email = OutboundEmail.objects.select_for_update().filter(pk=email_id).first()
        if email is None or email.status != OutboundEmail.Status.QUEUED:
            return "skipped"
        email.attempts += 1
        body_text, body_html = email.body_text, email.body_html
        headers = {"Message-ID": email.message_id, "X-Signoff-Kind": email.kind}
        preferences = {
            int(pk): _preferences_url(int(pk)) for pk in _PREFERENCES_RE.findall(body_text)
        }
        if preferences:
            body_text = _PREFERENCES_RE.sub(lambda m: preferences[int(m[1])], body_text)
            body_html = _PREFERENCES_RE.sub(lambda m: escape(preferences[int(m[1])]), body_html)
            headers["List-Unsubscribe"] = f"<{next(iter(preferences.values()))}>"
        if email.link_ref:
            minter = _link_minters.get(email.link_ref.get("minter"))
            if minter is None:
                email.status = OutboundEmail.Status.FAILED
                email.last_error = f"no link minter registered as {email.link_ref.get('minter')!r}"
                email.save(update_fields=["attempts", "status", "last_error"])
                log.error("email %s not sent: %s", email.pk, email.last_error)
                return "failed"
            url = minter(dict(email.link_ref))
            body_text = body_text.replace(LINK_PLACEHOLDER, url)
            body_html = body_html.replace(LINK_PLACEHOLDER, escape(url))
        message = EmailMultiAlternatives(
            subject=email.subject,
            body=body_text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=email.to,
            headers=headers,
            connection=connection,
        )
        if body_html:
            message.attach_alternative(body_html, "text/html")
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


# -- outbox rows written unrendered, set-based (PostgreSQL) -------------------------------------
# A batch (approvals' escalation sweep) writes rows in status ``rendering`` with one statement
# (:func:`unrendered_emails_insert`); its render task locks them (:func:`unrendered_emails_lock`),
# renders each, and stores them queued (:func:`rendered_emails_save`) or failed
# (:func:`unrendered_emails_fail`), all in one transaction. The table is only named here.


def _column(name: str) -> str:
    return connection.ops.quote_name(OutboundEmail._meta.get_field(name).column)


def unrendered_emails_insert(
    *, source: str, kind: str, now: datetime
) -> tuple[str, dict[str, Any]]:
    """An ``INSERT … SELECT`` (PostgreSQL; usable as a data-modifying CTE) that queues one
    outbox row per row of ``source``, in status ``rendering`` (no subject or body yet: the
    app that writes them renders each from its ``render_context`` and moves it to
    ``queued``), and returns the new rows' ids. A row whose Message-ID is in the outbox
    already is skipped, as :func:`email_queue` skips it. Returns ``(sql, params)``: the
    statement returns the new rows' ids as ``id``, and its params' names start with
    ``outbox_`` (the SQL is the same for every ``source``: callers may keep it).

    ``source`` is a table expression (a CTE's name, or a SELECT in parentheses) with the
    columns ``message_id`` (text), ``address`` (text, the one recipient), ``instance_id``,
    ``request_id`` and ``render_context`` (jsonb)."""
    q = connection.ops.quote_name
    meta = OutboundEmail._meta
    columns = ", ".join(
        _column(name)
        for name in (
            "message_id",
            "kind",
            "to",
            "subject",
            "body_text",
            "body_html",
            "status",
            "attempts",
            "last_error",
            "created_at",
            "instance_id",
            "request_id",
            "render_context",
        )
    )
    sql = f"""
    INSERT INTO {q(meta.db_table)} ({columns})
    SELECT src.message_id, %(outbox_kind)s, jsonb_build_array(src.address), '', '', '',
           %(outbox_status)s, 0, '', %(outbox_now)s, src.instance_id, src.request_id,
           src.render_context
    FROM {source} src
    ON CONFLICT ({_column("message_id")}) DO NOTHING
    RETURNING {q(meta.pk.column)} AS id"""
    params = {
        "outbox_kind": kind,
        "outbox_status": OutboundEmail.Status.RENDERING,
        "outbox_now": now,
    }
    return sql, params


def unrendered_email_ids(*, written_before: datetime, limit: int) -> list[int]:
    """The outbox rows still ``rendering`` that were written before ``written_before``
    (their render task was lost, or its worker died), oldest first."""
    return list(
        OutboundEmail.objects.filter(
            status=OutboundEmail.Status.RENDERING, created_at__lte=written_before
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


@dataclass(frozen=True)
class UnrenderedEmail:
    """An outbox row still to render: its id, the approval request it is about (if any) and
    what its writer stored to render it from (``{}`` when nothing)."""

    id: int
    request_id: int | None
    render_context: dict[str, Any]


@dataclass(frozen=True)
class RenderedEmail:
    """What :func:`rendered_emails_save` stores for one row (``link_ref`` as in
    :func:`email_queue`)."""

    id: int
    subject: str
    body_text: str
    body_html: str
    link_ref: dict[str, Any] | None


def _in_transaction() -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("call this inside transaction.atomic(): the rows stay locked in it")


def unrendered_emails_lock(*, email_ids: list[int]) -> list[UnrenderedEmail]:
    """Lock the rows of ``email_ids`` still ``rendering``, by id, for the caller's transaction
    (``skip_locked``: rows another renderer holds are its work; rows no longer ``rendering``
    were rendered already). Must run inside ``transaction.atomic()``."""
    _in_transaction()
    return [
        UnrenderedEmail(id=pk, request_id=request_id, render_context=spec or {})
        for pk, request_id, spec in OutboundEmail.objects.select_for_update(skip_locked=True)
        .filter(pk__in=email_ids, status=OutboundEmail.Status.RENDERING)
        .order_by("pk")
        .values_list("pk", "request_id", "render_context")
    ]


def rendered_emails_save(*, emails: list[RenderedEmail]) -> None:
    """Store the subject and bodies of rows locked by :func:`unrendered_emails_lock`, status
    ``queued``, their ``render_context`` cleared: one statement for them all (``bulk_update``'s
    CASE per column grows with the square of the rows). The caller sends their delivery tasks
    after the commit (:func:`emails_enqueue`). Must run inside ``transaction.atomic()``."""
    _in_transaction()
    if not emails:
        return
    q = connection.ops.quote_name
    meta = OutboundEmail._meta
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {q(meta.db_table)} m SET {_column('subject')} = v.subject, "
            f"{_column('body_text')} = v.body_text, {_column('body_html')} = v.body_html, "
            f"{_column('status')} = %s, {_column('render_context')} = NULL, "
            f"{_column('link_ref')} = v.link_ref::jsonb "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[]) "
            f"AS v(id, subject, body_text, body_html, link_ref) WHERE m.{q(meta.pk.column)} = v.id",
            [
                OutboundEmail.Status.QUEUED,
                [e.id for e in emails],
                [e.subject for e in emails],
                [e.body_text for e in emails],
                [e.body_html for e in emails],
                [json.dumps(e.link_ref) for e in emails],
            ],
        )


def unrendered_emails_fail(*, email_ids: list[int], error: str) -> None:
    """Mark rows that cannot be rendered (what they were about no longer exists) ``failed``
    with ``error``, their ``render_context`` cleared: nothing is sent."""
    if email_ids:
        OutboundEmail.objects.filter(pk__in=email_ids).update(
            status=OutboundEmail.Status.FAILED, render_context=None, last_error=error
        )


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
