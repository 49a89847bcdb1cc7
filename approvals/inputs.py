"""Checks of what people send with an act on a request — outcome, channel, comment, reason —
each raising :class:`InvalidInput` with the message every channel shows. Shared by the
deciding, send-back and operator services and by the forms that mirror their limits."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_noop

from orchestration.errors import InvalidInput, Message
from orchestration.jsonsafe import string_problem

from .models import DECISIONS, Channel, Outcome

MAX_COMMENT = 5000
MAX_REASON = 500


def check_outcome(outcome: Any) -> None:
    """Approve or reject (sending back for changes is its own act)."""
    if outcome == Outcome.REQUEST_CHANGES:
        raise InvalidInput(
            gettext_noop(
                "request changes with its own action (a comment for the requester is required)"
            ),
            code="invalid_outcome",
        )
    if outcome not in DECISIONS:
        raise InvalidInput(
            gettext_noop("outcome must be one of approve, reject"), code="invalid_outcome"
        )


def check_channel(channel: Any) -> None:
    """A person's channel: web, email or api (``admin`` is the operators' own services')."""
    if channel not in Channel.values or channel == Channel.ADMIN:
        raise InvalidInput(gettext_noop("channel must be one of web, email, api"))


def clean_comment(comment: Any) -> str:
    """The comment trimmed: text of at most :data:`MAX_COMMENT` characters."""
    if not isinstance(comment, str):
        raise InvalidInput(gettext_noop("comment must be a string"))
    comment = comment.strip()
    if len(comment) > MAX_COMMENT:
        raise InvalidInput(
            Message(gettext_noop("comment is longer than %(max)s characters"), max=MAX_COMMENT)
        )
    if string_problem(comment):
        raise InvalidInput(
            Message(gettext_noop("comment: %(problem)s"), problem=string_problem(comment))
        )
    return comment


def clean_reason(reason: Any) -> str:
    """An operator's mandatory reason, trimmed: at most :data:`MAX_REASON` characters."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput(gettext_noop("a reason is required"), code="reason_required")
    if len(reason) > MAX_REASON:
        raise InvalidInput(
            Message(gettext_noop("the reason is longer than %(max)s characters"), max=MAX_REASON)
        )
    return reason.strip()
