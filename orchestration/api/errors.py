"""One mapping of errors to JSON: ``{"detail": ..., "code": ...}``; field errors as DRF gives
them under ``fields``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
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
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is restarting or unreachable: say so, and when to try again.
        response = Response(
            {"detail": "the database is unavailable; try again shortly", "code": "unavailable"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        response["Retry-After"] = "5"
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": str(exc), "code": "request_too_large"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, TooManyFilesSent | TooManyFieldsSent):
        return Response(
            {"detail": str(exc), "code": "too_many_parts"}, status=status.HTTP_400_BAD_REQUEST
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "detail": f"Invalid input: {_first_problem(exc.detail)}",
            "code": "invalid",
            "fields": exc.detail,
        }
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        code = getattr(detail, "code", None) or exc.default_code
        response.data = {"detail": str(detail), "code": code}
    return response


def _first_problem(detail: Any, path: str = "") -> str:
    """The first field error as ``field: message``, so ``detail`` alone says what is wrong."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            return _first_problem(value, f"{path}.{name}" if path and name else path or name)
    elif isinstance(detail, list) and detail:
        return _first_problem(detail[0], path)
    if isinstance(detail, dict | list):
        return "see fields"
    return f"{path}: {detail}" if path else str(detail)
