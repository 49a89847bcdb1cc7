"""The daily digest sweeper: each digest reader gets at most one mail a local day listing
what waits for them (:mod:`approvals.mail_preferences` holds the preferences and their clock;
:func:`approvals.notifications.notify_digest` writes the mail)."""

from __future__ import annotations

import logging
from datetime import date, datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import notifications, selectors
from .models import MailPreference

log = logging.getLogger("signoff.sweepers")


def sweep_digests(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Send each digest reader at most one digest per local day, at or after their hour.

    Due rows come from ``next_digest_at`` (partial index on digest mode); each is locked with
    ``skip_locked`` and checked again: still digest, still due, and no digest yet for today in
    the person's zone (``last_digest_on``). ``last_digest_on`` and the next time are written
    before the mail is queued, in the same transaction, and the mail's Message-ID is fixed per
    person and local day: two sweeps at once, or one repeated after a crash, send one digest.
    The digest lists what the inbox's pending list shows (``selectors.decidable_by``), most
    urgent first: overdue, then due soonest, then the oldest without a due time. Nothing
    pending (or no address, or deactivated): the day counts as done and no mail goes out.
    Returns the number of digests queued."""
    now = now or timezone.now()
    due = list(
        MailPreference.objects.filter(mode=MailPreference.Mode.DIGEST, next_digest_at__lte=now)
        .order_by("next_digest_at")
        .values_list("pk", flat=True)[: batch or settings.SIGNOFF_SWEEP_BATCH]
    )
    sent = 0
    for pk in due:
        try:
            with transaction.atomic():
                preference = (
                    MailPreference.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related("user")
                    .filter(pk=pk)
                    .first()
                )
                if (
                    preference is None
                    or preference.mode != MailPreference.Mode.DIGEST
                    or preference.next_digest_at is None
                    or preference.next_digest_at > now
                ):
                    continue  # another sweep holds it, or it changed since we looked
                day = preference.local_date(now)
                fields = ["next_digest_at"]
                if preference.last_digest_on is None or preference.last_digest_on < day:
                    preference.last_digest_on, preference.last_digest_sent_at = day, now
                    fields += ["last_digest_on", "last_digest_sent_at"]
                    sent += _digest_send(preference, day, now)
                preference.next_digest_at = preference.digest_due_at(now)
                preference.save(update_fields=fields)
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("sweeper digests failed on mail preference %s", pk)
    if sent:
        log.info("sweeper digests queued %d digests", sent)
    return sent


def _digest_send(preference: MailPreference, day: date, now: datetime) -> bool:
    user = preference.user
    if not user.is_active or not user.email:
        return False
    pending = selectors.decidable_by(user, now)
    limit = settings.SIGNOFF_DIGEST_LIMIT
    rows = list(pending.order_by(F("due_at").asc(nulls_last=True), "created_at", "pk")[:limit])
    if not rows:
        return False
    total = len(rows) if len(rows) < limit else pending.count()
    return notifications.notify_digest(
        user, rows, day=day, total=total, now=now, time_zone=preference.time_zone
    )
