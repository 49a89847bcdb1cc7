"""Template helpers of the inbox: the navigation count and readable JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils.timesince import timesince
from django.utils.translation import gettext

from orchestration import attachments
from orchestration.errors import localize

register = template.Library()


@register.simple_tag(takes_context=True)
def inbox_pending_count(context: template.Context) -> str:
    """The signed-in user's pending count ("99+" past the cap), or "" for anonymous users."""
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return ""
    from approvals.navigation import pending_count

    return pending_count(request)


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@register.filter
def compact_json(value: Any) -> str:
    if value in (None, "", {}, []):
        return ""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


@register.filter
def column_value(value: Any) -> str:
    """A column's value in the inbox list: numbers with thousands separators (decimal
    numbers with two decimals), text as it is, nothing as ``—``."""
    if isinstance(value, bool) or value is None or value == "":
        return field_value(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


@register.filter
def field_value(value: Any) -> str:
    """A field shown to people, as text, never JSON: ``["bob"]`` → ``bob``, a list as
    ``a, b``, a dict as ``key: value; key: value``, nested ones in parentheses, nothing as
    ``—``, booleans as yes / no. Masking is the caller's (``sealing.masked``)."""
    if attachments.is_refs(value):  # files: their names and sizes (links: ``file_links``)
        return (
            ", ".join(
                f"{item['name']} ({localize(attachments.human_size(item['size']))})"
                if isinstance(item.get("size"), int)
                else str(item["name"])
                for item in value
            )
            or "—"
        )
    text = _as_text(value, nested=False)
    return text if text != "" else "—"


def _as_text(value: Any, *, nested: bool) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        text = ", ".join(_as_text(v, nested=True) for v in value)
    elif isinstance(value, dict):
        text = "; ".join(f"{k}: {_as_text(v, nested=True)}" for k, v in value.items())
    else:
        return str(value)
    return f"({text})" if nested and text else text


@register.filter
def ago(value: datetime | None, now: datetime) -> str:
    """ "just now" for the last minute, else "3 hours ago" (the largest two units)."""
    if value is None:
        return ""
    if now - value < timedelta(minutes=1):
        return gettext("just now")
    return gettext("%(time)s ago") % {"time": timesince(value, now)}
