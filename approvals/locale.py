"""Each person's time zone and language, for every page and every mail.

Both live on the person's :class:`~approvals.models.MailPreference` row (``time_zone``,
``language``; no row: ``settings.TIME_ZONE`` and no language). On the web,
:class:`UserLocaleMiddleware` (after Django's ``LocaleMiddleware``, which chose a language
from ``Accept-Language``) activates the person's language when they chose one and their time
zone, so every time a template or view shows is in their zone. The pair is kept in the
session (set at login and when the person saves it), so a page costs no query for it; a
session from before this existed is filled once. Mail: :func:`locales_of` is registered with
:func:`integrations.mail.register_recipient_locale`, so each mail is rendered in its
recipient's language and zone (batch renderers pass the pairs they read in one query)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.http import HttpRequest, HttpResponse
from django.utils import timezone, translation

from integrations.mail import register_recipient_locale
from orchestration.errors import localized

from .models import MailPreference, language_codes, time_zone_names

SESSION_KEY = "signoff.locale"
Locale = tuple[str, str]  # (language, or "" for none chosen; IANA time zone)


def _default() -> Locale:
    return ("", settings.TIME_ZONE)


def locales_of(user_ids: Iterable[int]) -> dict[int, Locale]:
    """``{user id: (language, time zone)}`` for ``user_ids`` (one query; the default for
    anyone without a preference row)."""
    ids = {int(pk) for pk in user_ids}
    found = {
        user_id: (language, zone)
        for user_id, language, zone in MailPreference.objects.filter(user_id__in=ids).values_list(
            "user_id", "language", "time_zone"
        )
    }
    return {pk: found.get(pk, _default()) for pk in ids}


def remember(request: HttpRequest, user_id: int, locale: Locale | None = None) -> Locale:
    """Keep ``user_id``'s pair in the session (read when not given) and return it."""
    if locale is None:
        locale = locales_of([user_id])[user_id]
    request.session[SESSION_KEY] = [user_id, locale[0], locale[1]]
    return locale


def _on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        remember(request, user.pk)


user_logged_in.connect(_on_login, dispatch_uid="signoff.locale.login")


def session_locale(request: HttpRequest) -> Locale | None:
    """The logged-in person's pair: from the session, or read once and kept there."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    stored = request.session.get(SESSION_KEY)
    if isinstance(stored, list) and len(stored) == 3 and stored[0] == user.pk:
        return (stored[1], stored[2])
    return remember(request, user.pk)


def activate(locale: Locale) -> None:
    """Activate a pair for the current thread (an unknown value is ignored, never an error)."""
    language, zone = locale
    if language in language_codes():
        translation.activate(language)
    if zone in time_zone_names():
        timezone.activate(zoneinfo.ZoneInfo(zone))


class UserLocaleMiddleware:
    """After ``LocaleMiddleware`` and ``AuthenticationMiddleware``: the person's language (when
    chosen) over the browser's, and their time zone for the whole request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        locale = session_locale(request)
        if locale is not None:
            activate(locale)
            if locale[0] in language_codes():
                request.LANGUAGE_CODE = locale[0]
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()


register_recipient_locale(locales_of)


def why(exc: Any) -> str:
    """A service's refusal (``exc.message``) in the page's language. Services raise their
    messages in English (the API answers them as they are): the fixed ones marked with
    ``gettext_noop``, those with values in them (a name, a limit) as an
    :class:`orchestration.errors.Message` (a ``gettext_noop`` template and its values); the
    pages translate them here (:func:`orchestration.errors.localized`)."""
    return localized(exc)


def activate_person(request: HttpRequest, user_id: int) -> None:
    """A page reached from a mail (an email link, no login): the language and time zone of the
    link's person for this response (one query); the browser's language when they chose
    none."""
    locale = locales_of([user_id])[user_id]
    activate(locale)
    if locale[0] in language_codes():
        request.LANGUAGE_CODE = locale[0]
