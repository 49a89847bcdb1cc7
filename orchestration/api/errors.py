"""One mapping of errors to JSON: ``{"detail": ..., "code": ...}``; field errors as DRF gives
them under ``fields``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from orchestration.errors import SignoffError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, SignoffError):
        body: dict[str, Any] = {"detail": exc.message, "code": exc.code}
        if exc.errors is not None:
            body["fields"] = exc.errors
        return Response(body, status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": str(exc), "code": "request_too_large"},
                        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"detail": "Invalid input.", "code": "invalid", "fields": exc.detail}
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        code = getattr(detail, "code", None) or exc.default_code
        response.data = {"detail": str(detail), "code": code}
    return response
