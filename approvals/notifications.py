"""Mail about approval requests, with one action link per recipient.

Everything here runs inside the transaction that changed the request: outbox rows commit with
the change or not at all, and the mail task runs after commit.

The outbox never holds a usable link. A mail to an assignee is stored with the link replaced
by ``integrations.mail.LINK_PLACEHOLDER`` and a ``link_ref`` naming this module's minter,
the request, the recipient and the purpose. At delivery :func:`action_link_mint` issues the
single-use token, so it exists only as its hash (``ActionToken.token_hash``) and in the mail
that left over SMTP; a link that could no longer act (request decided, recipient deactivated
or no longer assigned) is replaced by the request's inbox URL and no token is issued.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import connection, transaction
from django.utils import timezone

from integrations.mail import (
    RenderedEmail,
    email_queue,
    email_render,
    emails_enqueue,
    register_link_minter,
    rendered_emails_save,
    unrendered_emails_fail,
    unrendered_emails_lock,
)

from . import mail_preferences
from .locale import locales_of
from .models import ActionToken, ApprovalRequest, RequestState

User = get_user_model()
LINK_SALT = "signoff.approvals.action-link"
# The name this module's minter is registered under (a row's ``link_ref["minter"]``).
LINK_MINTER = "approvals.action-link"


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_issue(request: ApprovalRequest, user: Any, now: datetime, purpose: str) -> str:
    """A new single-use link token for ``user`` on ``request``; returns the signed token (the
    only form of it that is not a hash: put it in the mail being sent, nowhere else)."""
    raw = secrets.token_urlsafe(32)
    ActionToken(
        request=request,
        user=user,
        token_hash=_hash(raw),
        purpose=purpose,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.SIGNOFF_LINK_MAX_AGE_SECONDS),
    ).save(force_insert=True)
    return signing.TimestampSigner(salt=LINK_SALT).sign(raw)


def token_unsign(signed: str) -> str | None:
    """The raw token if the signature is ours, else None (tampered)."""
    try:
        return signing.TimestampSigner(salt=LINK_SALT).unsign(
            signed, max_age=settings.SIGNOFF_LINK_MAX_AGE_SECONDS + 60
        )
    except signing.SignatureExpired:
        return signing.TimestampSigner(salt=LINK_SALT).unsign(signed)
    except signing.BadSignature:
        return None


def token_lookup(raw: str) -> ActionToken | None:
    return (
        ActionToken.objects.select_related("request", "user").filter(token_hash=_hash(raw)).first()
    )


def tokens_supersede(request: ApprovalRequest, user_ids: set[int], now: datetime) -> int:
    return ActionToken.objects.filter(
        request=request, user_id__in=user_ids, used_at__isnull=True, superseded_at__isnull=True
    ).update(superseded_at=now)


def current_assignee_users(request: ApprovalRequest) -> list[Any]:
    """Active users assigned directly or through a group (each once)."""
    return list(
        User.objects.filter(is_active=True)
        .filter(pk__in=request.assignee_users.values("pk"))
        .union(User.objects.filter(is_active=True, groups__in=request.assignee_groups.all()))
    )


def link_url(signed: str) -> str:
    return f"{settings.SIGNOFF_BASE_URL.rstrip('/')}/a/{signed}/"


def inbox_url(request_id: Any) -> str:
    base = f"{settings.SIGNOFF_BASE_URL.rstrip('/')}/inbox/"
    return f"{base}{request_id}/" if request_id else base


def revise_url(request_id: Any) -> str:
    """The requester's "Revise and resubmit" page of a request sent back for changes (a page
    that asks for a login, never an action link)."""
    return f"{settings.SIGNOFF_BASE_URL.rstrip('/')}/inbox/{request_id}/revise/"


def link_ref(request: ApprovalRequest, user: Any, purpose: str) -> dict[str, Any]:
    """What an outbox row records so :func:`action_link_mint` can make its link at delivery:
    ids and the purpose, nothing secret."""
    return {"minter": LINK_MINTER, "request": request.pk, "user": user.pk, "purpose": purpose}


def action_link_mint(ref: dict[str, Any]) -> str:
    """The link to send in place of the placeholder, at delivery (the outbox's minter, run in
    the delivery's transaction under the outbox row's lock, once per attempt).

    While the request is pending and the recipient is active and still assigned (directly or
    through a group): a new single-use token for them, and its link. Otherwise the request's
    inbox URL, and no token. The link page checks all of it again when the link is used.

    A retried delivery (the SMTP send failed after this ran) issues another token and leaves
    the earlier one as it is: that mail may have been accepted before the error, and the
    retry, with the same Message-ID, may be dropped by the receiving side as a duplicate. Each
    token still works once, for this person and request only, and dies with the same rules
    (decision, reassignment, deactivation, expiry); one decision per person holds across them.
    """
    request_id, user_id = ref.get("request"), ref.get("user")
    raw = secrets.token_urlsafe(32)
    now = timezone.now()
    with connection.cursor() as cursor:
        # One statement (delivery runs it per mail): the token is written only if the link can
        # act; the ORM's Exists() version cost three times as much CPU.
        cursor.execute(
            _mint_sql(),
            {
                "request": request_id,
                "user": user_id,
                "hash": _hash(raw),
                "purpose": ref.get("purpose") or "assigned",
                "now": now,
                "expires": now + timedelta(seconds=settings.SIGNOFF_LINK_MAX_AGE_SECONDS),
                "pending": RequestState.PENDING,
            },
        )
        minted = cursor.fetchone() is not None
    if not minted:
        return inbox_url(request_id)
    return link_url(signing.TimestampSigner(salt=LINK_SALT).sign(raw))


@functools.cache
def _mint_sql() -> str:
    """A token for (request, user) if the request is pending and the user active and assigned
    to it, directly or through a group (as current_assignee_users counts them). Table and
    column names come from the models (a custom user model keeps working)."""
    q = connection.ops.quote_name
    assigned_users = ApprovalRequest.assignee_users.through._meta
    assigned_groups = ApprovalRequest.assignee_groups.through._meta
    memberships = User.groups.through._meta
    return f"""
INSERT INTO {q(ActionToken._meta.db_table)}
    (request_id, user_id, token_hash, purpose, created_at, expires_at)
SELECT r.id, u.{q(User._meta.pk.column)}, %(hash)s, %(purpose)s, %(now)s, %(expires)s
FROM {q(ApprovalRequest._meta.db_table)} r
JOIN {q(User._meta.db_table)} u ON u.{q(User._meta.pk.column)} = %(user)s AND u.is_active
WHERE r.id = %(request)s AND r.state = %(pending)s
  AND (EXISTS (SELECT 1 FROM {q(assigned_users.db_table)} au
               WHERE au.{q(assigned_users.get_field("approvalrequest").column)} = r.id
                 AND au.{q(assigned_users.get_field("user").column)} = u.{q(User._meta.pk.column)})
       OR EXISTS (SELECT 1 FROM {q(assigned_groups.db_table)} ag
                  JOIN {q(memberships.db_table)} ug
                    ON ug.{q(memberships.get_field("group").column)}
                       = ag.{q(assigned_groups.get_field("group").column)}
                  WHERE ag.{q(assigned_groups.get_field("approvalrequest").column)} = r.id
                    AND ug.{q(memberships.get_field("user").column)}
                        = u.{q(User._meta.pk.column)}))
RETURNING id
"""


register_link_minter(LINK_MINTER, action_link_mint)


def _domain() -> str:
    host = settings.SIGNOFF_BASE_URL.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return host or "signoff.local"


def _context(request: ApprovalRequest, **extra: Any) -> dict[str, Any]:
    base = settings.SIGNOFF_BASE_URL.rstrip("/")
    return {
        "request": request,
        "inbox_url": f"{base}/inbox/{request.pk}/",
        "base_url": base,
        **extra,
    }


def notify_assignees(
    request: ApprovalRequest,
    users: list[Any],
    now: datetime,
    *,
    kind: str,
    serial: int = 0,
    extra: dict[str, Any] | None = None,
) -> int:
    """Mail each of ``users`` (who can decide) with their own action link, made when the mail
    is sent (module doc): the outbox row holds the placeholder and a :func:`link_ref`.

    A kind in :data:`approvals.mail_preferences.HELD_KINDS` (a new request, a reminder) is not
    mailed to a person who chose the daily digest: the request waits in their next digest
    (unless it is due before that digest)."""
    sent = 0
    held = (
        mail_preferences.digest_user_ids({u.pk for u in users}, due_at=request.due_at)
        if kind in mail_preferences.HELD_KINDS
        else set()
    )
    for user in users:
        if not user.email or (request.requester_id == user.pk and not request.allow_self_approval):
            continue
        if user.pk in held:
            continue
        queued = email_queue(
            message_id=f"<signoff.{kind}.{request.pk}.{user.pk}.{serial}@{_domain()}>",
            kind=f"approval_{kind}",
            to=[user.email],
            template=f"approval_{kind}",
            context=_context(request, user=user, **(extra or {})),
            instance_id=request.instance_id,
            request_id=request.pk,
            link_ref=link_ref(request, user, kind),
            recipient_id=user.pk,
        )
        sent += queued is not None
    return sent


def notify_requester(request: ApprovalRequest, *, kind: str, extra: dict[str, Any]) -> bool:
    requester = request.requester
    if requester is None or not requester.email:
        return False
    return (
        email_queue(
            message_id=f"<signoff.{kind}.{request.pk}.{requester.pk}@{_domain()}>",
            kind=f"approval_{kind}",
            to=[requester.email],
            template=f"approval_{kind}",
            context=_context(request, user=requester, **extra),
            instance_id=request.instance_id,
            request_id=request.pk,
            recipient_id=requester.pk,
        )
        is not None
    )


def render_context(*, user_id: int, purpose: str, extra: dict[str, Any]) -> dict[str, Any]:
    """What :func:`mails_render` needs to render an outbox row written unrendered: the
    recipient, the link's purpose (``approval_<purpose>`` is the template) and the template's
    extra context."""
    return {"user": user_id, "purpose": purpose, "extra": extra}


def mails_render(*, email_ids: list[int]) -> int:
    """Render outbox rows a batch wrote in status ``rendering`` (the batched escalation sweep):
    the subject and bodies exactly as :func:`notify_assignees` renders them (the placeholder
    where the link goes, and its ``link_ref``: the token is issued at delivery), status
    ``queued``; the delivery tasks are sent after the commit. One transaction that locks the
    rows (``skip_locked``: rows another renderer holds are its work); rows no longer
    ``rendering`` are left alone, so a second run or a redelivered task renders nothing twice.
    Returns the count."""
    with transaction.atomic():
        mails = unrendered_emails_lock(email_ids=email_ids)
        if not mails:
            return 0
        requests = ApprovalRequest.objects.in_bulk({m.request_id for m in mails})
        users = User.objects.in_bulk({m.render_context.get("user") for m in mails})
        locales = locales_of(users)  # each recipient's language and zone, one query
        rendered, lost = [], []
        for mail in mails:
            spec = mail.render_context
            request, user = requests.get(mail.request_id), users.get(spec.get("user"))
            if request is None or user is None or "purpose" not in spec:
                lost.append(mail.id)  # deleted since (retention, erasure): nothing to send
                continue
            context = _context(request, user=user, **spec.get("extra", {}))
            subject, body_text, body_html = email_render(
                template=f"approval_{spec['purpose']}",
                context=context,
                personal_link=True,
                recipient_id=user.pk,
                locale=locales[user.pk],
            )
            rendered.append(
                RenderedEmail(
                    id=mail.id,
                    subject=subject,
                    body_text=body_text,
                    body_html=body_html,
                    link_ref=link_ref(request, user, spec["purpose"]),
                )
            )
        rendered_emails_save(emails=rendered)
        unrendered_emails_fail(
            email_ids=lost, error="not rendered: the request or the recipient no longer exists"
        )
        ids = [m.id for m in rendered]
        transaction.on_commit(lambda: emails_enqueue(ids))
    return len(ids)


def notify_digest(
    user: Any,
    requests: list[ApprovalRequest],
    *,
    day: date,
    total: int,
    now: datetime,
    time_zone: str,
) -> bool:
    """Queue ``user``'s daily digest for the local ``day``: ``requests`` (most urgent first),
    each with a link to its inbox page and no action link; ``total`` counts all pending ones
    (the list may be capped); times are shown in ``time_zone``. The Message-ID is fixed per
    person and day, so a second call for the same day queues nothing. Nothing listed or no
    address: no mail (False)."""
    if not requests or not user.email:
        return False
    items = [
        {
            "request": r,
            "inbox_url": inbox_url(r.pk),
            "overdue": bool(r.due_at and r.due_at < now),
        }
        for r in requests
    ]
    mail = email_queue(
        message_id=f"<signoff.digest.{user.pk}.{day.isoformat()}@{_domain()}>",
        kind="approval_digest",
        to=[user.email],
        template="approval_digest",
        context={
            "user": user,
            "items": items,
            "total": total,
            "more": max(total - len(items), 0),
            "day": day,
            "time_zone": time_zone,
            "inbox_url": inbox_url(None),
            "base_url": settings.SIGNOFF_BASE_URL.rstrip("/"),
        },
        recipient_id=user.pk,
    )
    return mail is not None
