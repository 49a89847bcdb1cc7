"""Refuse oversized request bodies with 413 before any view reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


def accepts_uploads(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view that takes files: a multipart body to it may be as large as
    ``SIGNOFF_MAX_UPLOAD_BYTES`` (other bodies keep ``SIGNOFF_MAX_REQUEST_BYTES``). A DRF view
    sets ``accepts_uploads = True`` on its class instead."""
    view.accepts_uploads = True  # type: ignore[attr-defined]
    return view


def _takes_uploads(view: Any) -> bool:
    return bool(
        getattr(view, "accepts_uploads", False)
        or getattr(getattr(view, "cls", None), "accepts_uploads", False)
    )


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = _length(request)
        # Nothing is ever allowed past the larger limit; the smaller one is checked once the
        # view is known (process_view), before it or the CSRF check reads the body.
        ceiling = max(settings.SIGNOFF_MAX_REQUEST_BYTES, settings.SIGNOFF_MAX_UPLOAD_BYTES)
        if length > ceiling:
            return _too_large(request, length, ceiling)
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        length = _length(request)
        limit = settings.SIGNOFF_MAX_REQUEST_BYTES
        if length <= limit:
            return None
        if _takes_uploads(view) and request.content_type == "multipart/form-data":
            upload_limit = settings.SIGNOFF_MAX_UPLOAD_BYTES
            return None if length <= upload_limit else _too_large(request, length, upload_limit)
        return _too_large(request, length, limit)


def _length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _too_large(request: HttpRequest, length: int, limit: int) -> HttpResponse:
    message = f"request body is {length} bytes; the limit is {limit} bytes"
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message, "code": "request_too_large"}, status=413)
    return HttpResponse(message, status=413, content_type="text/plain")
