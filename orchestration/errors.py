"""Business errors, mapped to HTTP once (``orchestration.api.errors``) and to messages once
in the HTML views."""

from __future__ import annotations

from typing import Any


class SignoffError(Exception):
    """Base of every business error. ``code`` is stable and machine-readable."""

    status = 400
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, errors: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.errors = errors


class InvalidInput(SignoffError):
    status = 400
    code = "invalid"


class NotFound(SignoffError):
    status = 404
    code = "not_found"


class NotAllowed(SignoffError):
    status = 403
    code = "permission_denied"


class Conflict(SignoffError):
    status = 409
    code = "conflict"
