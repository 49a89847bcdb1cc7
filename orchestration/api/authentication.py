"""API authentication: DRF's token authentication with a per-address limit on failures.

Every request with an ``Authorization: Token ...`` header that names no active token counts
one failure against the client address. After ``SIGNOFF_TOKEN_FAILURES_PER_IP`` failures in
``SIGNOFF_TOKEN_FAILURE_WINDOW_SECONDS`` that address gets 429 (``throttled``, with
``Retry-After``) for every token request — valid tokens included, or the limit would still
answer which guess was right — until the window ends. Session authentication and other
addresses are unaffected. Counters live in the default cache (``SIGNOFF_CACHE_URL`` shares
them between web processes).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework import authentication, exceptions
from rest_framework.request import Request


def _failures_key(request: Request) -> str:
    return f"signoff:token-failures:{request.META.get('REMOTE_ADDR', 'unknown')}"


def _count_failure(key: str) -> None:
    window = settings.SIGNOFF_TOKEN_FAILURE_WINDOW_SECONDS
    if cache.add(key, 1, window):
        return
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, window)


class ThrottledTokenAuthentication(authentication.TokenAuthentication):
    def authenticate(self, request: Request) -> Any:
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None  # not a token request: nothing to count
        key = _failures_key(request)
        if (cache.get(key) or 0) >= settings.SIGNOFF_TOKEN_FAILURES_PER_IP:
            raise exceptions.Throttled(
                wait=settings.SIGNOFF_TOKEN_FAILURE_WINDOW_SECONDS,
                detail="too many requests with an invalid token from this address",
            )
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            _count_failure(key)
            raise
