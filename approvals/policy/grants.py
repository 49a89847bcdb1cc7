"""What the decision policy answers in: the acts it knows (:class:`Act`), what it allows
(:class:`Grant`, :class:`CommentGrant`), and the wording of its "already decided" refusal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.contrib.auth.models import Group
from django.utils import timezone
from django.utils.translation import gettext_noop

from orchestration.errors import Conflict, Message, state_word

from ..models import ApprovalRequest, RequestState

OPERATE_PERMISSION = "orchestration.operate_instance"
OVERRIDE_CLAIM_PERMISSION = "approvals.override_claim"


class Act(StrEnum):
    DECIDE = "decide"
    DECIDE_ON_BEHALF = "decide_on_behalf"
    REASSIGN = "reassign"
    COMPLETE_STEP = "complete_step"
    RETRY_STEP = "retry_step"
    # operator repair (orchestration.engine.repairing): edit an output or the input after the
    # step ran, skip the step with a given output, reset the instance over it
    EDIT_STEP = "edit_step"
    EDIT_INPUT = "edit_input"
    SKIP_STEP = "skip_step"
    RESET_STEP = "reset_step"
    # files (see "Files" in the package docstring)
    ATTACH = "attach"
    DOWNLOAD = "download"
    CLAIM = "claim"
    RELEASE = "release"
    TAKE_OVER = "take_over"
    # send back for changes
    REQUEST_CHANGES = "request_changes"
    RESUBMIT = "resubmit"
    WITHDRAW = "withdraw"
    # context and comments
    VIEW_INSTANCE = "view_instance"
    READ_COMMENTS = "read_comments"
    COMMENT = "comment"


CLAIM_ACTS = (Act.CLAIM, Act.RELEASE, Act.TAKE_OVER)
STEP_ACTS = (
    Act.COMPLETE_STEP,
    Act.RETRY_STEP,
    Act.EDIT_STEP,
    Act.EDIT_INPUT,
    Act.SKIP_STEP,
    Act.RESET_STEP,
)
CONTEXT_ACTS = (Act.VIEW_INSTANCE, Act.READ_COMMENTS, Act.COMMENT)


@dataclass(frozen=True)
class Grant:
    """What the policy allowed: whose vote is cast (``principal``; None for acts that cast
    none), through which assigned group, and whether the actor acts for someone else."""

    act: Act
    actor: Any
    principal: Any = None
    via_group: Group | None = None
    on_behalf: bool = False

    @property
    def for_someone_else(self) -> bool:
        return self.principal is not None and self.principal.pk != self.actor.pk


@dataclass(frozen=True)
class CommentGrant(Grant):
    """A ``comment`` grant: what the author posts as (a ``Comment.Role`` value), which
    decides who is told; ``principal`` is the assignee a delegate stands in for."""

    role: str = ""


def stamp(when: datetime | None) -> str:  # "earlier" is a Message: a page localizes it
    if when is None:
        return Message(gettext_noop("earlier"))
    return timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S %Z")


SENT_BACK = (RequestState.CHANGES_REQUESTED, RequestState.RESUBMITTED, RequestState.WITHDRAWN)


def already_decided(request: ApprovalRequest) -> Conflict:
    last = request.decisions.select_related("decided_by").order_by("-at", "-id").first()
    when = request.resolved_at or (last.at if last else None)
    at = stamp(when)
    if request.state in (RequestState.APPROVED, RequestState.REJECTED) and last is not None:
        name = last.decided_by.get_username()
        if request.state == RequestState.APPROVED:
            message = Message(
                gettext_noop("already approved by %(name)s at %(when)s"), name=name, when=at
            )
        else:
            message = Message(
                gettext_noop("already rejected by %(name)s at %(when)s"), name=name, when=at
            )
    elif request.state in SENT_BACK and last is not None:
        message = Message(
            gettext_noop("changes were already requested by %(name)s at %(when)s"),
            name=last.decided_by.get_username(),
            when=at,
        )
    else:
        message = Message(
            gettext_noop("already %(state)s at %(when)s"), state=state_word(request.state), when=at
        )
    return Conflict(message, code="already_decided")


def already_decided_message(request: ApprovalRequest) -> Message:
    return already_decided(request).message
