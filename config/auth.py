"""Login lockout (django-axes), wired for this project.

Every login form (``/accounts/login/`` and the admin's) authenticates through Django's
``authenticate(request, ...)``; the backend below refuses a username + address that failed
``AXES_FAILURE_LIMIT`` times within the cool-off, before any password is checked (so the right
password is refused too while locked).
"""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class LoginLockoutBackend(AxesStandaloneBackend):
    """django-axes' lockout check. A call without a request (``manage.py`` commands, Django's
    test client ``login()``) has no client address to throttle and is not a login form: it
    passes on to the next backend instead of raising, as axes does by default."""

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> Any:
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)
