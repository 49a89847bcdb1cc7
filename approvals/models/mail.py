"""How each person wants their mail: at once, or one daily digest at an hour of their time
zone (:class:`MailPreference`, and the time zone checks its field uses). The same row holds
the person's time zone and language for every page and mail (:mod:`approvals.locale`)."""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def time_zone_validate(value: str) -> None:
    """An IANA time zone name that ``zoneinfo`` knows (``Europe/Berlin``, ``UTC``)."""
    if not isinstance(value, str) or value not in time_zone_names():
        raise ValidationError(f"Unknown time zone: {str(value)[:64]!r}.", code="time_zone")


@functools.cache
def time_zone_names() -> frozenset[str]:
    """Every IANA time zone name ``zoneinfo`` knows (read once)."""
    return frozenset(zoneinfo.available_timezones())


def default_time_zone() -> str:
    return settings.TIME_ZONE


def language_codes() -> frozenset[str]:
    """The languages Signoff is translated into (``settings.LANGUAGES``)."""
    return frozenset(code for code, _ in settings.LANGUAGES)


def language_validate(value: str) -> None:
    """Empty (the browser's ``Accept-Language`` decides) or one of ``settings.LANGUAGES``."""
    if not isinstance(value, str) or (value and value not in language_codes()):
        raise ValidationError(f"Unknown language: {str(value)[:16]!r}.", code="language")


class MailPreference(models.Model):
    """How one person wants their mail: each mail at once (the default, also without a row),
    or the new-request and reminder mails held for one daily digest at ``digest_hour`` in
    ``time_zone``. ``next_digest_at`` is the sweeper's deadline column: the instant the next
    digest is due (set while ``mode`` is digest); ``last_digest_on`` is the local date of the
    last digest, so a day never gets two."""

    class Mode(models.TextChoices):
        IMMEDIATE = "immediate", _("Each mail at once")
        DIGEST = "digest", _("One daily digest")

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mail_preference"
    )
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.IMMEDIATE)
    digest_hour = models.PositiveSmallIntegerField(
        default=8, validators=[MinValueValidator(0), MaxValueValidator(23)]
    )
    time_zone = models.CharField(
        max_length=64, default=default_time_zone, validators=[time_zone_validate]
    )
    # The person's language for pages and mail; empty: the browser's Accept-Language (pages)
    # or settings.LANGUAGE_CODE (mail). ``time_zone`` above is their zone for every time shown.
    language = models.CharField(
        max_length=8, blank=True, default="", validators=[language_validate]
    )
    next_digest_at = models.DateTimeField(null=True, blank=True)
    last_digest_on = models.DateField(null=True, blank=True)
    last_digest_sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("mail preference")
        verbose_name_plural = _("mail preferences")
        constraints = [
            models.CheckConstraint(
                condition=Q(digest_hour__gte=0, digest_hour__lte=23), name="mail_digest_hour_0_23"
            ),
            models.CheckConstraint(
                condition=Q(mode__in=["immediate", "digest"]), name="mail_preference_mode"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_digest_at"], name="mail_digest_due", condition=Q(mode="digest")
            ),
        ]

    def __str__(self) -> str:
        return f"mail for {self.user_id}: {self.mode}"

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def local_date(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()

    def digest_due_at(self, now: datetime) -> datetime | None:
        """When the next digest is due, seen at ``now``: ``digest_hour`` on the local day
        after the last digest's, and not before today (in the past when today's hour has gone
        by without one: due at once). None unless in digest mode. A local hour that does not
        exist (a daylight-saving gap) falls an hour later."""
        if self.mode != self.Mode.DIGEST:
            return None
        day = self.local_date(now)
        if self.last_digest_on is not None and self.last_digest_on >= day:
            day = self.last_digest_on + timedelta(days=1)
        local = datetime.combine(day, time(self.digest_hour), tzinfo=self.zone)
        return local.astimezone(UTC)
