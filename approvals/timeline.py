"""How approvals' events read on an instance's status page timeline (requested, decided,
changes requested, resubmitted, ...), registered with
:func:`orchestration.timeline.register_event_titles` in ``ApprovalsConfig.ready``: the engine
titles its own events and asks this app for the titles of these.

A step waits again from a resubmission, and a decision, a resolution or a request for changes
shows how long the step waited for it. A comment's text is not in its event: it comes from
:func:`approvals.context.comment_details`, for those who may read it.
"""

from __future__ import annotations

from typing import Any

from orchestration.models import Event
from orchestration.timeline import EventText, EventTitles


def _data(event: Event) -> dict[str, Any]:
    return event.data if isinstance(event.data, dict) else {}


def _people(d: dict[str, Any]) -> str:
    return ", ".join([*d.get("users", []), *[f"group {g}" for g in d.get("groups", [])]])


def _by(d: dict[str, Any]) -> str:
    """Who acted, and for whom when on behalf: "otto for alice"."""
    who = str(d.get("user", "?"))
    if d.get("for"):
        who += f" for {d['for']}"
    return who


def requested(event: Event) -> EventText:
    d = _data(event)
    who = _people(d)
    title = "Approval requested" + (f" (round {d['round']})" if d.get("round") else "")
    return title, "human", f"from {who}" if who else ""


def changes_requested(event: Event) -> EventText:
    d = _data(event)
    return (
        f"Changes requested by {_by(d)} via {d.get('channel', '?')}",
        "warn",
        str(d.get("comment") or ""),
    )


def resubmitted(event: Event) -> EventText:
    d = _data(event)
    changed = d.get("changed") or []
    detail = "changed " + ", ".join(map(str, changed)) if changed else "nothing changed"
    return (
        f"Resubmitted by {d.get('user', '?')} for round {d.get('round', '?')}",
        "human",
        detail,
    )


def withdrawn(event: Event) -> EventText:
    d = _data(event)
    return f"Withdrawn by {d.get('user', '?')}", "bad", str(d.get("reason", ""))


def decided(event: Event) -> EventText:
    d = _data(event)
    verb = "Approved" if d.get("outcome") == "approve" else "Rejected"
    detail = str(d.get("comment") or "")
    if d.get("reason"):
        detail = (detail + " · " if detail else "") + f"on behalf, reason: {d['reason']}"
    tone = "ok" if d.get("outcome") == "approve" else "bad"
    return f"{verb} by {_by(d)} via {d.get('channel', '?')}", tone, detail


def commented(event: Event) -> EventText:
    d = _data(event)
    role = f" ({d['role']})" if d.get("role") else ""
    return f"Comment by {d.get('user', '?')}{role}", "human", ""


def resolved(event: Event) -> EventText:
    return f"Approval {_data(event).get('outcome', 'resolved')}", "human", ""


def reassigned(event: Event) -> EventText:
    d = _data(event)
    return f"Reassigned to {_people(d)}", "operator", str(d.get("reason", ""))


APPROVAL_EVENTS = EventTitles(
    titles={
        "approval_requested": requested,
        "approval_changes_requested": changes_requested,
        "approval_resubmitted": resubmitted,
        "approval_withdrawn": withdrawn,
        "approval_decided": decided,
        "approval_commented": commented,
        "approval_resolved": resolved,
        "approval_reassigned": reassigned,
    },
    # the next round waits from the resubmission
    restarts_wait=frozenset({"approval_resubmitted"}),
    ends_wait=frozenset({"approval_decided", "approval_resolved", "approval_changes_requested"}),
)
