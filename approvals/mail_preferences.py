"""Mail that respects time: each person chooses each mail at once (the default) or one daily
digest, and every mail carries a signed link to change that choice without logging in.

What a digest holds back (:data:`HELD_KINDS`, decided per recipient in
:func:`approvals.notifications.notify_assignees`): the mail about a new request assigned to
them (also by a reassignment) and the reminders, unless the request is due before their next
digest (then it is mailed at once). Everything else stays immediate: escalations
(a request escalated to them), comments, and the mails to a requester (a step's decision,
changes requested, expiry, the instance's end). The digest itself is sent by
:func:`approvals.sweepers.sweep_digests`.

The preferences link (``/mail/<token>/``) is a ``TimestampSigner`` token over the user id,
with its own salt and a max age (``SIGNOFF_PREFERENCES_LINK_MAX_AGE_SECONDS``). Whoever holds
it may switch that one person between immediate mail and the digest, nothing else; it is
made at delivery and never stored (:func:`integrations.mail.register_preferences_link`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from integrations.mail import register_preferences_link
from orchestration.errors import InvalidInput

from .models import MailPreference, language_validate, time_zone_validate

User = get_user_model()
PREFERENCES_SALT = "signoff.approvals.mail-preferences"
# notify_assignees kinds a digest holds back (module doc).
HELD_KINDS = frozenset({"assigned", "reminder"})
Mode = MailPreference.Mode


def preference_of(user: Any) -> MailPreference:
    """The user's preference; an unsaved default (immediate) when they never chose."""
    found = MailPreference.objects.filter(user_id=user.pk).first()
    return found if found is not None else MailPreference(user_id=user.pk)


def digest_user_ids(user_ids: list[int] | set[int], *, due_at: datetime | None = None) -> set[int]:
    """Which of ``user_ids`` get the daily digest (one query). With ``due_at`` (a request's
    due time): only those whose next digest comes before it; a request that would expire
    before anyone's digest is mailed to them at once."""
    if not user_ids:
        return set()
    readers = MailPreference.objects.filter(user_id__in=user_ids, mode=Mode.DIGEST)
    if due_at is not None:
        readers = readers.filter(next_digest_at__lt=due_at)
    return set(readers.values_list("user_id", flat=True))


def mail_preference_set(
    *,
    user: Any,
    mode: str,
    digest_hour: int | None = None,
    time_zone: str | None = None,
    language: str | None = None,
    now: datetime | None = None,
) -> MailPreference:
    """Set ``user``'s mail preference (``digest_hour`` / ``time_zone`` / ``language``: None
    keeps the current one; the zone and language are also those of every page and mail).
    Invalid input raises :class:`InvalidInput` with field errors and changes nothing. One
    transaction, the row locked; the next digest's time is computed again (a change of hour or
    zone never sends a second digest the same local day: ``last_digest_on`` stays)."""
    now = now or timezone.now()
    errors: dict[str, list[str]] = {}
    if mode not in Mode.values:
        errors["mode"] = ["Choose immediate or digest."]
    if digest_hour is not None and (
        isinstance(digest_hour, bool)
        or not isinstance(digest_hour, int)
        or not 0 <= digest_hour <= 23
    ):
        errors["digest_hour"] = ["An hour from 0 to 23."]
    if time_zone is not None:
        try:
            time_zone_validate(time_zone)
        except ValidationError as exc:
            errors["time_zone"] = list(exc.messages)
    if language is not None:
        try:
            language_validate(language)
        except ValidationError as exc:
            errors["language"] = list(exc.messages)
    if errors:
        raise InvalidInput(gettext_noop("invalid mail preference"), errors=errors)
    with transaction.atomic():
        MailPreference.objects.get_or_create(user_id=user.pk)
        preference = MailPreference.objects.select_for_update().get(user_id=user.pk)
        preference.mode = mode
        if digest_hour is not None:
            preference.digest_hour = digest_hour
        if time_zone is not None:
            preference.time_zone = time_zone
        if language is not None:
            preference.language = language
        preference.next_digest_at = preference.digest_due_at(now)
        preference.updated_at = now
        preference.save()
    return preference


# -- the signed preferences link -------------------------------------------------------------------


def preferences_token(user_id: int) -> str:
    return signing.dumps({"u": int(user_id)}, salt=PREFERENCES_SALT)


def preferences_token_read(token: str) -> tuple[Any | None, str]:
    """The active user a preferences token names, and ``"ok"``; or None and why not
    (``"expired"``, ``"invalid"``: tampered, or the person is gone or deactivated)."""
    try:
        data = signing.loads(
            token, salt=PREFERENCES_SALT, max_age=settings.SIGNOFF_PREFERENCES_LINK_MAX_AGE_SECONDS
        )
    except signing.SignatureExpired:
        return None, "expired"
    except signing.BadSignature:
        return None, "invalid"
    user_id = data.get("u") if isinstance(data, dict) else None
    if not isinstance(user_id, int):
        return None, "invalid"
    user = User.objects.filter(pk=user_id, is_active=True).first()
    return (user, "ok") if user is not None else (None, "invalid")


def preferences_url(user_id: int) -> str:
    """The absolute preferences link of ``user_id`` (made at delivery, in the mail only)."""
    base = settings.SIGNOFF_BASE_URL.rstrip("/")
    return f"{base}/mail/{preferences_token(user_id)}/"


register_preferences_link(preferences_url)
