"""How the engine's data reads for people, on the status page and in the admins.

Plain text (JSON dumps with sealed fields masked, durations, an error's one line, the status
page's address) and the small HTML snippets the admins share (state pills, times of day, JSON
blocks, errors with their traceback folded). No queries, no writes: values in, text out.

A presentation module: only views, admins, forms, template tags and urls import it (models and
services never do).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _

from . import sealing, selectors
from .errors import localize, state_word
from .models import WorkflowInstance

MASK = sealing.MASK
# What a reader sees: one door for every reader (see sealing.masked).
masked = sealing.masked


# -- text ----------------------------------------------------------------------------------------


def pretty_json(value: Any, *, reveal: bool = False) -> str:
    return json.dumps(masked(value, reveal=reveal), indent=2, ensure_ascii=False, default=str)


def compact_json(value: Any, *, reveal: bool = False) -> str:
    if value in (None, "", {}, []):
        return ""
    return json.dumps(
        masked(value, reveal=reveal), ensure_ascii=False, default=str, separators=(", ", ": ")
    )


def human_duration(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{round(seconds)} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def coarse_age(delta: timedelta) -> str:
    """An age to the minute (the admin's list): "3 h 5 min", "2 d 4 h"."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def error_line(error: Any) -> str:
    """An error ``{type, message, ...}`` on one line: "ValueError: bad amount"."""
    if not isinstance(error, dict):
        return ""
    kind = str(error.get("type", "")).rsplit(".", 1)[-1]
    message = str(error.get("message", ""))
    return f"{kind}: {message}" if kind else message


def status_url(instance: WorkflowInstance | Any) -> str:
    """The status page of an instance (or of an instance id)."""
    pk = getattr(instance, "pk", instance)
    return reverse("instances:detail", args=[pk])


def parent_link(instance: WorkflowInstance) -> dict[str, Any] | None:
    """The parent of a child workflow, for the status page (its parent step and instance
    loaded with it: ``selectors.instance_get``); None for a top-level instance."""
    step, item = selectors.parent_step_of(instance)
    if step is None:
        return None
    return {
        "id": str(step.instance_id),
        "short": str(step.instance_id)[:8],
        "workflow": step.instance.workflow,
        "step": step.name,
        "item": item,
        "url": status_url(step.instance_id),
    }


def child_links(instance: WorkflowInstance) -> list[dict[str, Any]]:
    """The child workflows of an instance (``selectors.attach_children``), for the status
    page: one per child step attempt, with its state."""
    return [
        {
            "id": str(child.pk),
            "short": str(child.pk)[:8],
            "workflow": child.workflow,
            "state": child.state,
            "state_label": child.get_state_display(),
            "step": step,
            "attempt": child.parent_attempt,
            "url": status_url(child),
        }
        for child, step in getattr(instance, "child_links", [])
    ]


# -- HTML snippets (the admins) ------------------------------------------------------------------


def instance_state_label(instance: WorkflowInstance) -> str:
    """The instance's state in words: "Failed: undo failed" for one whose compensation failed
    for good (an operator retries the undo or resolves it by hand)."""
    if instance.state == "failed" and (instance.error or {}).get("phase") == "compensation":
        return _("Failed: undo failed")
    return instance.get_state_display()


def pill(state: str, label: str | None = None) -> str:
    """A state as a coloured pill, its word in the page's language (``label``: other words)."""
    return format_html(
        '<span class="so-pill so-{}">{}</span>', state, label or localize(state_word(state))
    )


def json_block(value: Any, *, reveal: bool = False) -> str:
    """Indented JSON; sealed fields opened only with ``reveal`` (see ``masked``)."""
    if value is None:
        return "—"
    return format_html('<pre class="so-json">{}</pre>', pretty_json(value, reveal=reveal))


def clock(moment: Any, *, millis: bool = False) -> str:
    """A time of day (the date and zone on hover): rows stay one line high."""
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    shown = local.strftime("%H:%M:%S") + (f".{local.microsecond // 1000:03d}" if millis else "")
    return format_html('<time title="{}">{}</time>', local.isoformat(), shown)


def json_snippet(value: Any, *, reveal: bool = False, limit: int = 60) -> str:
    """Short JSON on one line; longer values unfold to the indented whole."""
    text = compact_json(value, reveal=reveal)
    if not text:
        return "—"
    if len(text) <= limit:
        return format_html('<code class="so-data">{}</code>', text)
    return format_html(
        '<details class="so-more"><summary><code class="so-data">{}…</code></summary>'
        '<pre class="so-json">{}</pre></details>',
        text[: limit - 1],
        pretty_json(value, reveal=reveal),
    )


def error_block(error: Any) -> str:
    """An error ``{type, message, traceback}``: the message, the traceback collapsed."""
    if not isinstance(error, dict) or not error:
        return "—"
    summary = error_line(error)
    tb = error.get("traceback") or ""
    if not tb:
        return format_html('<span class="so-error">{}</span>', summary)
    return format_html(
        '<details class="so-tb"><summary>{}</summary><pre>{}</pre></details>', summary, tb
    )
