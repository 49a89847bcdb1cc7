"""The status page's timeline: each event of an instance's history as a line for people
(a title, a tone, a detail), with how long attempts took and how long a step waited.

The engine titles its own events here. Other apps title theirs through
:func:`register_event_titles` (approvals: requested, decided, changes requested, ...), and
give the text their events do not carry (a comment's) through
:func:`register_timeline_details`, so the engine reads no other app's vocabulary. An event
nobody titles reads as its type ("Something happened").

A presentation module: only views, admins, forms, template tags and urls import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.http import HttpRequest
from django.utils.translation import gettext as _

from .models import Event, WorkflowInstance
from .presentation import compact_json, error_line, human_duration, masked

EventText = tuple[str, str, str]  # (title, tone, detail)


@dataclass
class TimelineEntry:
    event: Event
    offset: timedelta
    title: str
    tone: str  # ok | bad | warn | info | human | operator | muted
    detail: str = ""
    duration: timedelta | None = None
    data: str = ""
    traceback: str = ""

    @property
    def took(self) -> str:
        return human_duration(self.duration)

    @property
    def since_start(self) -> str:
        return "+" + (human_duration(self.offset) or "0 ms")


# -- other apps' events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventTitles:
    """How one app's events read on the timeline: ``titles`` maps an event type to a function
    giving its (title, tone, detail). A step that waits (``step_waiting``) waits again from an
    event in ``restarts_wait`` (a resubmission), and an event in ``ends_wait`` (a decision)
    shows how long the step waited for it."""

    titles: Mapping[str, Callable[[Event], EventText]]
    restarts_wait: frozenset[str] = frozenset()
    ends_wait: frozenset[str] = frozenset()


_EVENT_TITLES: list[EventTitles] = []


def register_event_titles(titles: EventTitles) -> EventTitles:
    """Register how another app's events read on the timeline (see :class:`EventTitles`).
    The engine's own event types are titled here and cannot be overridden."""
    if titles not in _EVENT_TITLES:
        _EVENT_TITLES.append(titles)
    return titles


def _registered() -> EventTitles:
    """Every registered app's titles and wait events, as one."""
    titles: dict[str, Callable[[Event], EventText]] = {}
    restarts: set[str] = set()
    ends: set[str] = set()
    for registered in _EVENT_TITLES:
        titles.update(registered.titles)
        restarts |= registered.restarts_wait
        ends |= registered.ends_wait
    return EventTitles(titles=titles, restarts_wait=frozenset(restarts), ends_wait=frozenset(ends))


# Other apps give the text of some of their events on the timeline (approvals: a comment's
# text, which its event does not carry) through this hook, for the events they may show.
TimelineDetails = Callable[[HttpRequest, WorkflowInstance, list[Event]], dict[int, str]]
_TIMELINE_DETAILS: list[TimelineDetails] = []


def register_timeline_details(provider: TimelineDetails) -> TimelineDetails:
    """Register ``provider(request, instance, events) -> {seq: text}``, called once per status
    page with the events shown (keep it to a query or two). It answers only for the events
    the page's user may read the text of."""
    if provider not in _TIMELINE_DETAILS:
        _TIMELINE_DETAILS.append(provider)
    return provider


def timeline_details(
    request: HttpRequest, instance: WorkflowInstance, events: list[Event]
) -> dict[int, str]:
    """The registered providers' texts for ``events``, by ``seq``."""
    details: dict[int, str] = {}
    for provider in _TIMELINE_DETAILS:
        details.update(provider(request, instance, events))
    return details


# -- the engine's own events -----------------------------------------------------------------------

STEP_END = {"step_succeeded", "step_failed", "step_retrying", "step_timed_out"}
COMPENSATION_END = {
    "step_compensated",
    "step_compensation_retrying",
    "step_compensation_failed",
}


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _revision_line(changes: Any) -> str:
    """An input diff in words: "amount 120 → 95; receipt added" (sealed and secret-looking
    values masked)."""
    if not isinstance(changes, dict):
        return ""
    parts = []
    for key, change in masked(changes).items():
        name = key or _("value")  # a value that is not an object diffs as a whole
        if not isinstance(change, dict):
            parts.append(_("%(name)s changed") % {"name": name})
        elif change.get("added"):
            parts.append(
                _("%(name)s set to %(value)s") % {"name": name, "value": _short(change.get("to"))}
            )
        elif change.get("removed"):
            parts.append(
                _("%(name)s removed (was %(value)s)")
                % {"name": name, "value": _short(change.get("from"))}
            )
        else:
            parts.append(
                _("%(name)s %(before)s → %(after)s")
                % {
                    "name": name,
                    "before": _short(change.get("from")),
                    "after": _short(change.get("to")),
                }
            )
    return "; ".join(parts)


def _repair_line(d: dict[str, Any]) -> str:
    """An operator's edit: "<reason> — amount -1 → 5" (sealed values masked)."""
    return _("%(reason)s — %(changes)s") % {
        "reason": d.get("reason", ""),
        "changes": _revision_line(d.get("changes")),
    }


def _with_attempt(event: Event, plain: str, numbered: str) -> str:
    """``plain`` or, for an event of an attempt, ``numbered`` with its number."""
    return numbered % {"attempt": event.attempt} if event.attempt else plain


def _reason(d: dict[str, Any]) -> str:
    return str(d.get("reason", "")).replace("_", " ")


def _describe_own(event: Event) -> EventText | None:
    """The engine's own events; None for another app's. Titles and details are translated
    at render time (the page's language)."""
    d = event.data if isinstance(event.data, dict) else {}
    t = event.type
    n = {"attempt": event.attempt}
    if t == "instance_started":
        return _("Instance started"), "info", ""
    if t == "step_scheduled":
        if d.get("operator"):
            return _("Scheduled now by an operator"), "operator", ""
        if d.get("retry"):
            title = _with_attempt(
                event, _("Scheduled again"), _("Scheduled again (attempt %(attempt)s)")
            )
        else:
            title = _with_attempt(event, _("Scheduled"), _("Scheduled (attempt %(attempt)s)"))
        return title, "muted", ""
    if t == "step_started":
        return _("Attempt %(attempt)s started") % n, "info", ""
    if t == "step_succeeded":
        return _with_attempt(event, _("Succeeded"), _("Succeeded (attempt %(attempt)s)")), "ok", ""
    if t == "step_retrying":
        delay = d.get("delay")
        if delay:
            title = _("Attempt %(attempt)s failed, next attempt in %(delay)s") % {
                "attempt": event.attempt,
                "delay": human_duration(timedelta(seconds=delay)),
            }
        else:
            title = _("Attempt %(attempt)s failed") % n
        return title, "warn", error_line(d.get("error"))
    if t == "step_failed":
        title = _with_attempt(event, _("Failed"), _("Failed (attempt %(attempt)s)"))
        reason = _reason(d)
        if reason:
            title = _("%(title)s — %(reason)s") % {"title": title, "reason": reason}
        return title, "bad", error_line(d.get("error"))
    if t == "step_timed_out":
        limit = d.get("limit")
        return (
            _with_attempt(event, _("Timed out"), _("Timed out (attempt %(attempt)s)")),
            "bad",
            _("exceeded %(limit)s") % {"limit": limit} if limit else _("exceeded its deadline"),
        )
    if t == "step_skipped" and d.get("operator"):
        return (
            _("Skipped by an operator"),
            "operator",
            _("%(reason)s — output %(output)s")
            % {"reason": d.get("reason", ""), "output": _short(masked(d.get("output")))},
        )
    if t == "step_skipped":
        return _("Skipped"), "muted", _reason(d)
    if t == "step_cancelled":
        return _("Cancelled"), "muted", _reason(d)
    if t == "step_waiting":
        until = d.get("until")
        return _("Waiting"), "human", _("until %(until)s") % {"until": until} if until else ""
    if t == "step_completed_manually":
        return _("Completed by hand"), "operator", str(d.get("reason", ""))
    if t == "instance_input_edited":
        return _("Input edited"), "operator", _repair_line(d)
    if t == "step_output_edited":
        return _("Output edited"), "operator", _repair_line(d)
    if t == "instance_reset":
        reset = ", ".join(d.get("reset") or []) or _("nothing")
        if d.get("retried"):
            detail = _("%(reason)s — re-running %(reset)s; retried %(retried)s") % {
                "reason": d.get("reason", ""),
                "reset": reset,
                "retried": ", ".join(d["retried"]),
            }
        else:
            detail = _("%(reason)s — re-running %(reset)s") % {
                "reason": d.get("reason", ""),
                "reset": reset,
            }
        return _("Reset to %(step)s") % {"step": d.get("step", "")}, "operator", detail
    if t == "step_compensation_resolved":
        return _("Undone by hand"), "operator", str(d.get("reason", ""))
    if t == "instance_compensating" and d.get("cause") == "resolved_by_hand":
        return _("Compensating again (an undo was resolved by hand)"), "operator", ""
    if t == "instance_input_revised":
        return _("Input revised"), "human", _revision_line(d.get("changes"))
    if t == "instance_succeeded":
        return _("Instance succeeded"), "ok", ""
    if t == "instance_failed" and (d.get("error") or {}).get("phase") == "compensation":
        return _("Instance failed: undo failed"), "bad", error_line(d.get("error"))
    if t == "instance_failed":
        return _("Instance failed"), "bad", error_line(d.get("error"))
    if t == "instance_cancelled":
        return _("Instance cancelled"), "bad", str(d.get("reason", ""))
    if t == "instance_compensating":
        return _("Compensating (undoing finished steps)"), "warn", str(d.get("reason", ""))
    if t == "instance_compensated":
        return _("Instance compensated"), "warn", ""
    if t == "step_compensating":
        # compensate_attempted: the step never succeeded, but an attempt may have acted
        detail = _("never succeeded; undoing its attempts") if d.get("attempted") else ""
        return _("Compensation scheduled"), "warn", detail
    if t == "step_compensation_started":
        return _("Compensation attempt %(attempt)s started") % n, "warn", ""
    if t == "step_compensated":
        return _("Compensated"), "warn", ""
    if t == "step_compensation_retrying":
        return (
            _("Compensation attempt %(attempt)s failed, retrying") % n,
            "warn",
            error_line(d.get("error")),
        )
    if t == "step_compensation_failed":
        return _("Compensation failed"), "bad", error_line(d.get("error"))
    if t == "child_started":
        return (
            _("Child workflow %(workflow)s started") % {"workflow": d.get("workflow", "")},
            "info",
            _("instance %(child)s") % {"child": d.get("child", "")},
        )
    if t == "child_cancelled":
        return (
            _("Child workflow cancelled"),
            "muted",
            _("instance %(child)s") % {"child": d.get("child", "")},
        )
    if t == "signal_received":
        return (
            _("Signal %(signal)s received") % {"signal": d.get("signal", "")},
            "human",
            str(d.get("source", "") or ""),
        )
    if t == "instance_erased":
        return _("Sensitive fields erased"), "operator", str(d.get("reason", ""))
    if t == "instance_retried" and d.get("phase") == "compensation":
        return _("Compensation retried"), "operator", ""
    if t == "instance_paused":
        return _("Paused"), "operator", ""
    if t == "instance_unpaused":
        return _("Unpaused"), "operator", ""
    if t == "instance_retried":
        return _("Retried"), "operator", ""
    if t == "instance_resumed":
        detail = _("rang %(signals)s") % {"signals": ", ".join(d["rung"])} if d.get("rung") else ""
        return _("Resumed"), "operator", detail
    return None


def describe(event: Event, registered: EventTitles | None = None) -> EventText:
    """(title, tone, detail) of one event for people: the engine's own events, then those
    other apps registered, else the event's type in words."""
    own = _describe_own(event)
    if own is not None:
        return own
    title = (registered or _registered()).titles.get(event.type)
    if title is not None:
        return title(event)
    return event.type.replace("_", " ").capitalize(), "muted", ""  # a type, not a sentence


def build_timeline(
    instance: WorkflowInstance,
    events: list[Event],
    *,
    reveal: bool = False,
    details: dict[int, str] | None = None,
) -> list[TimelineEntry]:
    """Events in order, for people: what happened, how long attempts took, retries, decisions
    and how long a step waited for them. ``details``: text for some events by ``seq``, from
    :func:`register_timeline_details` (a comment's text), in place of the computed one."""
    details = details or {}
    registered = _registered()
    started: dict[tuple[str | None, int | None], datetime] = {}
    waiting: dict[str | None, datetime] = {}
    begin = instance.created_at
    entries = []
    for e in events:
        title, tone, detail = describe(e, registered)
        detail = details.get(e.seq, detail)
        duration = None
        key = (e.step, e.attempt)
        comp = (f"{e.step}/compensation", e.attempt)
        if e.type == "step_started":
            started[key] = e.at
        elif e.type in STEP_END and key in started:
            duration = e.at - started.pop(key)
        elif e.type == "step_compensation_started":
            started[comp] = e.at
        elif e.type in COMPENSATION_END and comp in started:
            duration = e.at - started.pop(comp)
        elif e.type == "step_waiting" or e.type in registered.restarts_wait:
            waiting[e.step] = e.at
        elif e.type in registered.ends_wait and e.step in waiting:
            duration = e.at - waiting[e.step]
        elif e.type in (
            "instance_succeeded",
            "instance_failed",
            "instance_cancelled",
            "instance_compensated",
        ):
            duration = e.at - begin
        data = e.data if isinstance(e.data, dict) else {}
        error = data.get("error") if isinstance(data.get("error"), dict) else None
        entries.append(
            TimelineEntry(
                event=e,
                offset=e.at - begin,
                title=title,
                tone=tone,
                detail=detail,
                duration=duration,
                data=compact_json({k: v for k, v in data.items() if k != "error"}, reveal=reveal),
                # the instance's own failure repeats its step's: one traceback is enough
                traceback=""
                if e.type.startswith("instance_")
                else (error or {}).get("traceback", "") or "",
            )
        )
    return entries
