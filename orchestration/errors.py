"""Business errors, mapped to HTTP once (``orchestration.api.errors``) and to messages once
in the HTML views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.utils.translation import gettext, gettext_noop


class Message(str):
    """An English message with values in it that remembers its template and values, so a page
    can say it in its own language (:func:`localize`) while the API answers the English text.

    ``Message(gettext_noop("%(name)s has already decided"), name=name)`` is the English
    sentence (a ``str``: the API, logs and events use it as is); a value may be a Message too
    (a claim's "claimed by …" inside a longer refusal) and is localized with it. The
    ``gettext_noop`` marks the template for ``makemessages``."""

    template: str
    params: dict[str, Any]

    def __new__(cls, template: str, **params: Any) -> Message:
        text = template % {k: str(v) for k, v in params.items()} if params else template
        message = super().__new__(cls, text)
        message.template, message.params = template, params
        return message


def joined(parts: Sequence[Any], separator: str = "; ") -> Message:
    """``parts`` (Messages, or values shown as they are) joined with ``separator``, as one
    :class:`Message` a page localizes part by part (its English text is the English parts
    joined)."""
    template = separator.join(f"%(p{i})s" for i in range(len(parts)))
    return Message(template, **{f"p{i}": part for i, part in enumerate(parts)})


def invalid_input(problems: Sequence[str]) -> Message:
    """ "invalid input: …" naming the input schema's problems (the validator's words, shown as
    they are)."""
    return Message(gettext_noop("invalid input: %(problems)s"), problems="; ".join(problems))


def unknown_workflow(workflow: Any, version: Any = None) -> Message:
    """ "unknown workflow 'x'", or "workflow 'x' has no version 3" when ``version`` is given."""
    if version:
        return Message(
            gettext_noop("workflow %(workflow)s has no version %(version)s"),
            workflow=repr(workflow),
            version=version,
        )
    return Message(gettext_noop("unknown workflow %(workflow)s"), workflow=repr(workflow))


# The states a refusal names ("instance is failed; ..."), marked for makemessages so a page can
# say them in its language (the English word is the state's value, as the API gives it).
STATE_WORDS = frozenset(
    {
        gettext_noop("pending"),
        gettext_noop("running"),
        gettext_noop("succeeded"),
        gettext_noop("failed"),
        gettext_noop("cancelled"),
        gettext_noop("compensating"),
        gettext_noop("compensated"),
        gettext_noop("scheduled"),
        gettext_noop("retrying"),
        gettext_noop("timed_out"),
        gettext_noop("waiting"),
        gettext_noop("skipped"),
        gettext_noop("approved"),
        gettext_noop("rejected"),
        gettext_noop("expired"),
        gettext_noop("changes_requested"),
        gettext_noop("resubmitted"),
        gettext_noop("withdrawn"),
        gettext_noop("queued"),
        gettext_noop("done"),
        gettext_noop("undo failed"),
    }
)


def state_word(value: Any) -> Message | str:
    """A state's value as a refusal names it: a :class:`Message` a page translates when it is
    one of :data:`STATE_WORDS`, else the value as it is."""
    value = str(value)
    return Message(value) if value in STATE_WORDS else value


def localize(text: Any) -> str:
    """``text`` in the active language: a :class:`Message` through its template and values (a
    value that is a Message is localized, any other is shown as it is: a name, a limit); a
    plain fixed message (marked ``gettext_noop`` where it is raised) through ``gettext``."""
    if isinstance(text, Message):
        template = gettext(text.template) if text.template else text.template
        if not text.params:
            return template
        return template % {
            k: localize(v) if isinstance(v, Message) else str(v) for k, v in text.params.items()
        }
    text = str(text or "")
    return gettext(text) if text else text


def localized(exc: Any) -> str:
    """A business error's message (``exc.message``) in the active language."""
    return localize(getattr(exc, "message", "") or "")


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
