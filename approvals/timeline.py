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

from django.utils.translation import gettext as _

from orchestration.models import Event
from orchestration.timeline import EventText, EventTitles


def _data(event: Event) -> dict[str, Any]:
    return event.data if isinstance(event.data, dict) else {}


def _people(d: dict[str, Any]) -> str:
    groups = [_("group %(group)s") % {"group": g} for g in d.get("groups", [])]
    return ", ".join([*d.get("users", []), *groups])


def _by(d: dict[str, Any]) -> str:
    """Who acted, and for whom when on behalf: "otto for alice"."""
    who = str(d.get("user", "?"))
    if d.get("for"):
        who = _("%(user)s for %(for)s") % {"user": who, "for": d["for"]}
    return who


def requested(event: Event) -> EventText:
    d = _data(event)
    who = _people(d)
    if d.get("round"):
        title = _("Approval requested (round %(round)s)") % {"round": d["round"]}
    else:
        title = _("Approval requested")
    return title, "human", _("from %(people)s") % {"people": who} if who else ""


def changes_requested(event: Event) -> EventText:
    d = _data(event)
    return (
        _("Changes requested by %(by)s via %(channel)s")
        % {"by": _by(d), "channel": d.get("channel", "?")},
        "warn",
        str(d.get("comment") or ""),
    )


def resubmitted(event: Event) -> EventText:
    d = _data(event)
    changed = d.get("changed") or []
    if changed:
        detail = _("changed %(fields)s") % {"fields": ", ".join(map(str, changed))}
    else:
        detail = _("nothing changed")
    return (
        _("Resubmitted by %(user)s for round %(round)s")
        % {"user": d.get("user", "?"), "round": d.get("round", "?")},
        "human",
        detail,
    )


def withdrawn(event: Event) -> EventText:
    d = _data(event)
    return (
        _("Withdrawn by %(user)s") % {"user": d.get("user", "?")},
        "bad",
        str(d.get("reason", "")),
    )


def decided(event: Event) -> EventText:
    d = _data(event)
    approved = d.get("outcome") == "approve"
    values = {"by": _by(d), "channel": d.get("channel", "?")}
    if approved:
        title = _("Approved by %(by)s via %(channel)s") % values
    else:
        title = _("Rejected by %(by)s via %(channel)s") % values
    detail = str(d.get("comment") or "")
    if d.get("reason"):
        behalf = _("on behalf, reason: %(reason)s") % {"reason": d["reason"]}
        detail = (detail + " · " if detail else "") + behalf
    return title, "ok" if approved else "bad", detail


def commented(event: Event) -> EventText:
    d = _data(event)
    who = {"user": d.get("user", "?"), "role": d.get("role")}
    if d.get("role"):
        return _("Comment by %(user)s (%(role)s)") % who, "human", ""
    return _("Comment by %(user)s") % who, "human", ""


def resolved(event: Event) -> EventText:
    outcome = _data(event).get("outcome")
    if outcome is None:
        return _("Approval resolved"), "human", ""
    return _("Approval %(outcome)s") % {"outcome": outcome}, "human", ""


def reassigned(event: Event) -> EventText:
    d = _data(event)
    return (
        _("Reassigned to %(people)s") % {"people": _people(d)},
        "operator",
        str(d.get("reason", "")),
    )


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
