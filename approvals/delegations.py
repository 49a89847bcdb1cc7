"""Out of office: a person lets someone else decide their requests for a while
(:func:`delegation_create`) and ends that early (:func:`delegation_end`). The decision policy
reads active delegations when someone decides."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext_noop

from orchestration.errors import InvalidInput, NotFound

from .models import Delegation


def delegation_create(
    *, user: Any, delegate: Any, starts_at: datetime, ends_at: datetime
) -> Delegation:
    """Let ``delegate`` decide ``user``'s requests between ``starts_at`` and ``ends_at``."""
    if delegate is None or delegate.pk == user.pk:
        raise InvalidInput(
            gettext_noop("choose someone else as your delegate"), code="invalid_delegate"
        )
    if not delegate.is_active:
        raise InvalidInput(gettext_noop("that user is not active"), code="invalid_delegate")
    if ends_at <= starts_at:
        raise InvalidInput(gettext_noop("the end must be after the start"), code="invalid_dates")
    if ends_at <= timezone.now():
        raise InvalidInput(gettext_noop("the end is in the past"), code="invalid_dates")
    return Delegation.objects.create(
        user=user, delegate=delegate, starts_at=starts_at, ends_at=ends_at
    )


def delegation_end(*, delegation_id: Any, user: Any) -> None:
    """End one of ``user``'s delegations now (or delete it if it has not started)."""
    delegation = Delegation.objects.filter(pk=delegation_id, user=user).first()
    if delegation is None:
        raise NotFound(gettext_noop("delegation not found"))
    now = timezone.now()
    if delegation.starts_at >= now:
        delegation.delete()
    elif delegation.ends_at > now:
        delegation.ends_at = now
        delegation.save(update_fields=["ends_at"])
