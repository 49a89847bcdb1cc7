"""Mail about approval requests, with one action link per recipient.

Everything here runs inside the transaction that changed the request: tokens and outbox rows
commit with the change or not at all, and the mail task runs after commit.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing

from integrations.mail import email_queue

from .models import ActionToken, ApprovalRequest

User = get_user_model()
LINK_SALT = "signoff.approvals.action-link"


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_issue(request: ApprovalRequest, user: Any, now: datetime, purpose: str) -> str:
    """A new single-use link token for ``user`` on ``request``; returns the signed token."""
    raw = secrets.token_urlsafe(32)
    ActionToken.objects.create(
        request=request,
        user=user,
        token_hash=_hash(raw),
        purpose=purpose,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.SIGNOFF_LINK_MAX_AGE_SECONDS),
    )
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
    """Mail each of ``users`` (who can decide) with their own action link."""
    sent = 0
    for user in users:
        if not user.email or (request.requester_id == user.pk and not request.allow_self_approval):
            continue
        signed = token_issue(request, user, now, kind)
        queued = email_queue(
            message_id=f"<signoff.{kind}.{request.pk}.{user.pk}.{serial}@{_domain()}>",
            kind=f"approval_{kind}",
            to=[user.email],
            template=f"approval_{kind}",
            context=_context(request, user=user, link=link_url(signed), **(extra or {})),
            instance_id=request.instance_id,
            request_id=request.pk,
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
        )
        is not None
    )
