"""The whole picture for people with a part in a request (issue 12, "Context").

- Who may read an instance besides its owners: whoever may see one of its approval requests
  (:func:`instance_reader`, registered with ``orchestration.selectors.register_instance_reader``;
  the decision policy's act ``view_instance`` answers). They read it read-only.
- What the request page shows of the instance: every decision on it, on every step and round,
  as plain sentences (:func:`decision_lines`).
- The text of comments on the status page's timeline (:func:`comment_details`, registered with
  ``orchestration.views.register_timeline_details``): their events carry no text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Subquery
from django.http import HttpRequest

from orchestration.errors import SignoffError

from . import policy
from .models import ApprovalRequest, Comment, Decision
from .selectors import seeing_filter, sees_all_requests

DECISION_LIMIT = 200  # decisions shown on a request page (the latest ones)

VERBS = {
    "approve": "approved",
    "reject": "rejected",
    "request_changes": "asked for changes",
}
CHANNELS = {"web": "web", "email": "email link", "api": "API", "admin": "admin"}


def step_label(step_name: str) -> str:
    """``manager_approval`` → ``Manager approval``."""
    text = step_name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def instance_reader(user: Any, instance: Any) -> bool:
    """Whether ``user`` may read ``instance`` (read-only) because of its approval requests:
    the policy's act ``view_instance``."""
    try:
        policy.authorize(policy.Act.VIEW_INSTANCE, user=user, request=None, instance=instance)
    except SignoffError:
        return False
    return True


@dataclass(frozen=True)
class DecisionLine:
    """One decision, said plainly: "Manager approval: bob approved on 4 Dec 14:03 (web):
    ‘fine by me’"."""

    step: str
    who: str  # "bob", or "bob for carol" (a delegate, or an operator on someone's behalf)
    verb: str  # "approved", "rejected", "asked for changes"
    outcome: str
    at: datetime
    channel: str
    comment: str
    reason: str  # why an operator decided on someone's behalf
    via_group: str
    this_request: bool
    request_id: int
    round: int = 1


def decision_lines(approval: ApprovalRequest) -> list[DecisionLine]:
    """Every decision on ``approval``'s instance (every step, every round), oldest first, at
    most the latest :data:`DECISION_LIMIT`. One query."""
    rows = list(
        Decision.objects.filter(request__instance_id=approval.instance_id)
        .select_related("decided_by", "assignee", "via_group", "request")
        .order_by("-at", "-id")[:DECISION_LIMIT]
    )
    rows.reverse()
    lines = []
    for d in rows:
        who = d.decided_by.get_username()
        if d.assignee_id != d.decided_by_id:
            who += f" for {d.assignee.get_username()}"
        lines.append(
            DecisionLine(
                step=step_label(d.request.step_name),
                who=who,
                verb=VERBS.get(d.outcome, d.outcome.replace("_", " ")),
                outcome=d.outcome,
                at=d.at,
                channel=CHANNELS.get(d.channel, d.channel),
                comment=d.comment,
                reason=d.reason,
                via_group=d.via_group.name if d.via_group_id else "",
                this_request=d.request_id == approval.pk,
                request_id=d.request_id,
                round=d.request.round,
            )
        )
    return lines


def comment_details(request: HttpRequest, instance: Any, events: list[Any]) -> dict[int, str]:
    """The text of the comments among ``events``, by event ``seq``, for those the page's user
    may read: comments on a step of which they may see a request (as in the request page's
    thread, which holds every round of the step). Two queries at most."""
    wanted = {
        e.seq: e.data.get("comment")
        for e in events
        if e.type == "approval_commented" and isinstance(e.data, dict)
    }
    if not wanted:
        return {}
    user = request.user
    comments = Comment.objects.filter(pk__in=set(wanted.values()), request__instance_id=instance.pk)
    if not sees_all_requests(user):
        steps = ApprovalRequest.objects.filter(instance_id=instance.pk).filter(seeing_filter(user))
        comments = comments.filter(request__step_name__in=Subquery(steps.values("step_name")))
    bodies = dict(comments.values_list("pk", "body"))
    return {seq: bodies[pk] for seq, pk in wanted.items() if pk in bodies}
