"""What every inbox page shares: the pending count in the navigation (:func:`pending_count`)
and where a POST may send the person back to (:func:`safe_next`: an inbox URL on this site,
else the list)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from . import selectors
from .models import ApprovalRequest

COUNT_CAP = 99  # the navigation shows "99+" beyond this: counting stops at 100 rows


def pending_count(request: HttpRequest, pending: QuerySet[ApprovalRequest] | None = None) -> str:
    """The user's pending count for the navigation, capped ("99+"); one cheap query, cached
    on the request. ``pending`` reuses a ``decidable_by`` query the view already built."""
    cached = getattr(request, "_inbox_pending_count", None)
    if cached is None:
        if pending is None:
            pending = selectors.decidable_by(request.user)
        found = pending.values("pk")[: COUNT_CAP + 1].count()
        cached = remember_pending_count(request, found)
    return cached


def remember_pending_count(request: HttpRequest, found: int) -> str:
    """Cache on the request the count a view found itself (the rows it counted, at most
    ``COUNT_CAP + 1``), as :func:`pending_count` shows it."""
    shown = f"{COUNT_CAP}+" if found > COUNT_CAP else str(found)
    request._inbox_pending_count = shown
    return shown


def safe_next(request: HttpRequest, candidate: str | None) -> str:
    """``candidate`` if it is a URL of the inbox on this site (the list with its query string,
    as the bulk form and the keyboard's decision dialog post it), else the list. Django's
    check also refuses URLs over 2048 characters."""
    fallback = reverse("inbox:list")
    if (
        candidate
        and candidate.startswith(fallback)
        and not _climbs(candidate)
        and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
    ):
        return candidate
    return fallback


def _climbs(url: str) -> bool:
    """Whether the path has a dot segment ("/inbox/../admin/"; browsers also read "%2e" as a
    dot and a backslash as a slash), which would lead out of the inbox."""
    path = unquote(urlsplit(url).path).replace("\\", "/")
    return any(segment in (".", "..") for segment in path.split("/"))
