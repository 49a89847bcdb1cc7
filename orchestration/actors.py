"""How an event names who acted: one formatter for every path (web, API, admin, mail link).

An event's ``actor`` is ``"user:<username>"`` for a person and ``"system"`` for the engine and
the sweepers (an email link's decision is its person's). Paths never build the string
themselves, so a change of format (or of the user model's username field) is made here once.
"""

from __future__ import annotations

from typing import Any

SYSTEM = "system"


def actor_of(user: Any) -> str:
    """The actor string of ``user``; ``"system"`` when there is no (saved) user."""
    if user is None or not getattr(user, "pk", None):
        return SYSTEM
    return f"user:{user.get_username()}"
