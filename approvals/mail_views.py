"""Mail preferences: the inbox page (``/inbox/preferences/``, logged in) and the signed page
every mail links to (``/mail/<token>/``, no login). Thin: both call
:func:`approvals.mail_preferences.mail_preference_set`; GET never changes anything, and bad
input or a bad link answers 4xx with nothing changed."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from orchestration.errors import SignoffError

from . import locale, mail_preferences
from .forms import MailModeForm, MailPreferenceForm
from .locale import activate_person, why
from .models import MailPreference

LINK_REFUSALS = {
    "expired": (
        410,
        _("This link has expired"),
        _(
            "Mail preference links work for a limited time. Use the link in a newer mail, or log "
            "in and open Preferences in the inbox."
        ),
    ),
    "invalid": (
        400,
        _("This link is not valid"),
        _(
            "It may have been cut short or changed. Use the link in a newer mail, or log in and "
            "open Preferences in the inbox."
        ),
    ),
}


def _saved(preference: MailPreference) -> str:
    if preference.mode == MailPreference.Mode.DIGEST:
        return _(
            "Saved: one daily digest at %(hour)s:00 (%(zone)s); escalations still arrive at once."
        ) % {"hour": f"{preference.digest_hour:02d}", "zone": preference.time_zone}
    return _("Saved: each mail arrives at once.")


def _form_errors(form: MailPreferenceForm | MailModeForm, exc: SignoffError) -> None:
    for name, errors in (exc.errors or {}).items():
        for error in errors:
            form.add_error(name if name in form.fields else None, error)
    if not exc.errors:
        form.add_error(None, why(exc))


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def preferences_page(request: HttpRequest) -> HttpResponse:
    preference = mail_preferences.preference_of(request.user)
    status = 200
    if request.method == "POST":
        form = MailPreferenceForm(request.POST)
        if form.is_valid():
            try:
                preference = mail_preferences.mail_preference_set(
                    user=request.user,
                    mode=form.cleaned_data["mode"],
                    digest_hour=form.cleaned_data["digest_hour"],
                    time_zone=form.cleaned_data["time_zone"],
                    language=form.cleaned_data["language"],
                )
            except SignoffError as exc:
                _form_errors(form, exc)
                status = exc.status
            else:
                # This session shows the new language and zone from the next page on.
                locale.remember(
                    request, request.user.pk, (preference.language, preference.time_zone)
                )
                locale.activate((preference.language, preference.time_zone))
                messages.success(request, _saved(preference))
                return redirect("inbox:preferences")
        else:
            status = 400
    else:
        form = MailPreferenceForm(
            initial={
                "mode": preference.mode,
                "digest_hour": preference.digest_hour,
                "time_zone": preference.time_zone,
                "language": preference.language,
            }
        )
    context = {"form": form, "preference": preference}
    return render(request, "inbox/preferences.html", context, status=status)


@never_cache
@ensure_csrf_cookie
def preferences_link(request: HttpRequest, token: str) -> HttpResponse:
    """The page behind the link in every mail's footer: shows the person's choice, and a POST
    switches it between immediate mail and the digest (hour and zone stay). Only that person's
    preference changes; no login, no session is created."""
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    person, reason = mail_preferences.preferences_token_read(token)
    if person is None:
        status, title, text = LINK_REFUSALS[reason]
        context = {"reason": reason, "title": title, "text": text}
        return render(request, "links/refused.html", context, status=status)
    activate_person(request, person.pk)  # the page in the mail's language
    preference = mail_preferences.preference_of(person)
    status, done = 200, False
    form = MailModeForm()
    if request.method == "POST":
        form = MailModeForm(request.POST)
        if form.is_valid():
            try:
                preference = mail_preferences.mail_preference_set(
                    user=person, mode=form.cleaned_data["mode"]
                )
            except SignoffError as exc:
                _form_errors(form, exc)
                status = exc.status
            else:
                done = True
        else:
            status = 400
    context = {
        "person": person,
        "preference": preference,
        "form": form,
        "done": done,
        "saved": _saved(preference) if done else "",
    }
    return render(request, "links/preferences.html", context, status=status)
