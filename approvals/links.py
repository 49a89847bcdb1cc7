"""Email action links under ``/a/<token>/``: scanner-safe.

GET shows the request and a confirm form and changes nothing (mail scanners open every link).
POST — with the CSRF token of the page the person opened — decides through the same
``approval_decide`` as the inbox (or sends the request back for changes through
``approval_request_changes``, a comment required), as the link's person, with channel
``email``, and uses the token up. A tampered, unknown, used, expired or superseded link, or
one for a resolved request, shows a page saying which and changes nothing. A link to a
request someone else claimed shows "claimed by X since T" and no decision form, and stays
valid for when the claim ends (claiming from a mail is not offered). The link never logs
anyone in. Failures are counted per client IP; past ``SIGNOFF_LINK_FAILURES_PER_IP`` in ten
minutes the page answers 429.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

from orchestration.errors import Conflict, NotAllowed, NotFound, SignoffError, localize

from . import notifications, policy
from .locale import activate_person, why
from .models import ActionToken, ApprovalRequest, Channel, Outcome, RequestState
from .services import approval_decide, approval_request_changes

WINDOW_SECONDS = 600

REASONS = {
    "tampered": (
        gettext_lazy("This link is not valid"),
        gettext_lazy(
            "It was changed or cut off. Copy the whole link from the mail, or decide in your inbox."
        ),
    ),
    "unknown": (
        gettext_lazy("This link is not valid"),
        gettext_lazy("No such link exists. Decide in your inbox instead."),
    ),
    "used": (gettext_lazy("This link was already used"), gettext_lazy("Each link works once.")),
    "expired": (
        gettext_lazy("This link has expired"),
        gettext_lazy("Links work for a limited time."),
    ),
    "superseded": (
        gettext_lazy("This link no longer applies"),
        gettext_lazy("The request was escalated and is now with someone else."),
    ),
    "resolved": (gettext_lazy("This request is already closed"), ""),
    "claimed": (
        gettext_lazy("Someone else is on this request"),
        gettext_lazy(
            "Another assignee claimed it. The link works again if they release it or the claim "
            "expires."
        ),
    ),
    "not_allowed": (gettext_lazy("This link cannot decide this request"), ""),
    "rate_limited": (
        gettext_lazy("Too many invalid links"),
        gettext_lazy(
            "Too many invalid links came from your address. Try again later, or decide in "
            "your inbox."
        ),
    ),
}


def _ip(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "unknown")


def _failures_key(request: HttpRequest) -> str:
    return f"signoff:link-failures:{_ip(request)}"


def _rate_limited(request: HttpRequest) -> bool:
    return (cache.get(_failures_key(request)) or 0) >= settings.SIGNOFF_LINK_FAILURES_PER_IP


def _count_failure(request: HttpRequest) -> None:
    key = _failures_key(request)
    if cache.add(key, 1, WINDOW_SECONDS):
        return
    try:
        cache.incr(key)
    except ValueError:
        cache.set(key, 1, WINDOW_SECONDS)


def _refuse(request: HttpRequest, reason: str, status: int, detail: str = "") -> HttpResponse:
    title, text = REASONS[reason]
    return render(
        request,
        "links/refused.html",
        {"reason": reason, "title": title, "text": detail or text},
        status=status,
    )


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + "."


def _problem(token: ActionToken) -> tuple[str, str] | None:
    """Why the link cannot act now, or None. Besides the token's own state, the one decision
    policy is asked as the link's person: a deactivated account, someone no longer assigned,
    or the requester get a refusal here, on GET already (POST asks again under the lock)."""
    approval = token.request
    if approval.state != RequestState.PENDING:
        return "resolved", _sentence(localize(policy.already_decided_message(approval)))
    if token.used_at is not None:
        return "used", ""
    if token.superseded_at is not None:
        return "superseded", ""
    if token.expires_at <= timezone.now():
        return "expired", ""
    try:
        policy.authorize(policy.Act.DECIDE, user=token.user, request=approval)
    except Conflict as exc:
        if exc.code == "claimed":  # the link stays good for when the claim ends
            return "claimed", _sentence(why(exc)) + " " + str(REASONS["claimed"][1])
        return "resolved", _sentence(why(exc))
    except (NotAllowed, NotFound) as exc:
        return "not_allowed", _sentence(why(exc))
    return None


def _status(reason: str) -> int:
    return {"not_allowed": 403, "claimed": 409}.get(reason, 410)


@never_cache
@ensure_csrf_cookie
def action_link(request: HttpRequest, token: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    if _rate_limited(request):
        return _refuse(request, "rate_limited", 429)
    raw = notifications.token_unsign(token)
    if raw is None:
        _count_failure(request)
        return _refuse(request, "tampered", 400)
    found = notifications.token_lookup(raw)
    if found is None:
        _count_failure(request)
        return _refuse(request, "unknown", 404)
    activate_person(request, found.user_id)  # the page in the mail's language
    problem = _problem(found)
    if problem:
        return _refuse(request, problem[0], _status(problem[0]), problem[1])
    if request.method != "POST":
        return render(request, "links/confirm.html", _page(found))
    return _decide(request, found.pk)


def _page(token: ActionToken, **extra: object) -> dict[str, object]:
    approval: ApprovalRequest = token.request
    return {
        "token": token,
        "approval": approval,
        "person": token.user,
        "decisions": list(approval.decisions.select_related("decided_by", "assignee")),
        **extra,
    }


def _decide(request: HttpRequest, token_id: int) -> HttpResponse:
    outcome = request.POST.get("outcome", "")
    comment = request.POST.get("comment", "")
    if outcome not in Outcome.values:
        token = ActionToken.objects.select_related("request", "user").get(pk=token_id)
        return render(
            request,
            "links/confirm.html",
            _page(token, error="Choose Approve, Reject or Request changes."),
            status=400,
        )
    try:
        with transaction.atomic():
            token = (
                # The token row only: the request is locked by approval_decide, after the
                # instance (the engine's one lock order).
                ActionToken.objects.select_for_update(of=("self",), no_key=True)
                .select_related("request", "user")
                .get(pk=token_id)
            )
            problem = _problem(token)
            if problem:
                return _refuse(request, problem[0], _status(problem[0]), problem[1])
            if outcome == Outcome.REQUEST_CHANGES:
                decision = approval_request_changes(
                    request_id=token.request_id,
                    user=token.user,
                    comment=comment,
                    channel=Channel.EMAIL,
                )
            else:
                decision = approval_decide(
                    request_id=token.request_id,
                    user=token.user,
                    outcome=outcome,
                    comment=comment,
                    channel=Channel.EMAIL,
                )
            token.used_at = timezone.now()
            token.save(update_fields=["used_at"])
    except Conflict as exc:
        if exc.code == "claimed":
            return _refuse(request, "claimed", 409, _sentence(why(exc)))
        if exc.code in ("max_rounds", "no_requester"):  # still open: approve or reject it
            token = ActionToken.objects.select_related("request", "user").get(pk=token_id)
            return render(request, "links/confirm.html", _page(token, error=why(exc)), status=409)
        return _refuse(request, "resolved", 409, why(exc))
    except (NotAllowed, NotFound) as exc:
        return _refuse(request, "not_allowed", 403, _sentence(why(exc)))
    except SignoffError as exc:
        token = ActionToken.objects.select_related("request", "user").get(pk=token_id)
        return render(
            request, "links/confirm.html", _page(token, error=why(exc)), status=exc.status
        )
    token.request.refresh_from_db()
    return render(
        request,
        "links/done.html",
        {"approval": token.request, "decision": decision, "person": token.user},
    )
