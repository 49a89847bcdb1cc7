"""A thread on each approval request: questions and answers that decide nothing.

Who may post and read is the decision policy's (acts ``comment`` and ``read_comments``). A
post locks the instance (the engine's order: the instance, then the request), writes the
comment, one ``approval_commented`` event (who, as what, which comment — never the text: the
history goes to webhooks and to everyone who may read the instance, the text only to those
who may see the request), and one outbox mail per person told, in one transaction.

The thread of a request is the thread of its step: the comments on every request of the same
step of the instance (every round, a retried step's earlier request), oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils.translation import gettext_noop

from integrations.mail import email_queue
from orchestration import attachments
from orchestration.errors import Conflict, InvalidInput, Message, NotAllowed
from orchestration.jsonsafe import string_problem

from . import notifications, policy
from .context import step_label
from .locking import lock_request, step_run_of
from .models import ApprovalRequest, Channel, Comment

MAX_BODY = 5000  # characters, after trimming
MAX_KEY = 200  # an idempotency key's length
THREAD_LIMIT = 200  # comments shown on a request page (the latest ones)
Role = Comment.Role


def _clean_body(body: Any) -> str:
    if not isinstance(body, str):
        raise InvalidInput(gettext_noop("the comment must be text"), code="invalid_comment")
    problem = string_problem(body)
    if problem:
        raise InvalidInput(
            Message(gettext_noop("the comment %(problem)s"), problem=problem),
            code="invalid_comment",
        )
    body = body.strip()
    if not body:
        raise InvalidInput(
            gettext_noop("the comment is empty: write something"), code="comment_required"
        )
    if len(body) > MAX_BODY:
        raise InvalidInput(
            Message(
                gettext_noop(
                    "the comment is %(length)s characters long; at most %(max)s are allowed"
                ),
                length=len(body),
                max=MAX_BODY,
            ),
            code="comment_too_long",
        )
    return body


def _clean_key(key: Any) -> str:
    if key in (None, ""):
        return ""
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY or not key.isprintable():
        raise InvalidInput(
            Message(
                gettext_noop("the idempotency key must be 1 to %(max)s printable characters"),
                max=MAX_KEY,
            ),
            code="invalid_idempotency_key",
        )
    return key


@dataclass(frozen=True)
class Posted:
    comment: Comment
    created: bool  # False: the same submission came again (same idempotency key)


def comment_post(
    *,
    request_id: Any,
    user: Any,
    body: Any,
    channel: str = Channel.WEB,
    idempotency_key: Any = "",
    files: Sequence[Any] = (),
) -> Posted:
    """Post ``body`` on the thread of request ``request_id`` as ``user``.

    The policy (act ``comment``) answers under the instance lock: a request the user may
    not see is :class:`NotFound`; one they have no part in :class:`NotAllowed`
    (``not_participant``); a finished instance :class:`Conflict` (``comments_closed``). The
    body is trimmed, required, at most :data:`MAX_BODY` characters, without NUL characters.
    With ``idempotency_key`` (per author), a repeated submission of the same body on the same
    request answers the first comment (``created`` False) and writes nothing; the key reused
    for something else is a :class:`Conflict` (``idempotency_conflict``).

    Writes the comment, one ``approval_commented`` event and one outbox mail per person told
    (the requester for an assignee's or delegate's comment, the current assignees for the
    requester's, both for an operator's), each with a fixed Message-ID and a link to the
    request page, never an action link.

    ``files`` are attached with the comment (context ``comment:<id>``, the engine's checks of
    type, size and count; one ``attachments_added`` event); a refused file posts nothing and
    leaves no bytes behind. A repeated submission (same key) answers the first comment and
    stores none of its files again.
    """
    if channel not in (Channel.WEB, Channel.API):
        raise InvalidInput(gettext_noop("channel must be web or api"), code="invalid_channel")
    body = _clean_body(body)
    key = _clean_key(idempotency_key)
    if not getattr(user, "is_authenticated", False):
        raise NotAllowed(gettext_noop("log in to comment"), code="not_authenticated")
    step_run_id = step_run_of(request_id)
    with attachments.guard(), transaction.atomic():
        locked, request = lock_request(request_id, step_run_id, user)
        earlier = Comment.objects.filter(author=user, idempotency_key=key).first() if key else None
        if earlier is not None and earlier.request_id == request.pk and earlier.body == body:
            return Posted(earlier, False)  # nothing recorded: nothing to flush or change
        grant = policy.authorize(
            policy.Act.COMMENT,
            user=user,
            request=request,
            instance=locked.instance,
            now=locked.journal.now,
        )
        if earlier is not None:
            raise _key_conflict(key)
        try:
            with transaction.atomic():
                comment = Comment.objects.create(
                    request=request,
                    author=user,
                    role=grant.role,
                    body=body,
                    channel=channel,
                    created_at=locked.journal.now,
                    idempotency_key=key,
                )
        except IntegrityError:
            # The same key on another instance's request, committed meanwhile.
            raise _key_conflict(key) from None
        principal = grant.principal
        locked.record(
            "approval_commented",
            step=locked.step_by_id(request.step_run_id),
            data={
                "comment": comment.pk,
                "request": request.pk,
                "user": user.get_username(),
                "role": grant.role,
                **(
                    {"for": principal.get_username()}
                    if principal is not None and principal.pk != user.pk
                    else {}
                ),
            },
        )
        if files:
            comment.files = attachments.attachments_save(
                instance=locked.instance,
                files=files,
                user=user,
                context=comment_context(comment.pk),
                journal=locked.journal,
            )
        comment_notify(comment, request)
        locked.journal.flush()
        return Posted(comment, True)


def comment_context(comment_id: Any) -> str:
    return f"comment:{comment_id}"


def with_files(thread: Sequence[Comment]) -> Sequence[Comment]:
    """Give each comment of one instance's thread its ``files`` (oldest first): one query
    for the whole thread, whatever the number of comments and files."""
    if not thread:
        return thread
    by_context = attachments.attachments_by_context(
        instance_id=thread[0].request.instance_id,
        contexts=[comment_context(c.pk) for c in thread],
    )
    for c in thread:
        c.files = by_context[comment_context(c.pk)]
    return thread


def _key_conflict(key: str) -> Conflict:
    return Conflict(
        Message(
            gettext_noop("the idempotency key %(key)s was already used for another comment"),
            key=repr(key),
        ),
        code="idempotency_conflict",
    )


# -- reading ------------------------------------------------------------------------------------


def thread_of(request: ApprovalRequest) -> QuerySet[Comment]:
    """The comments of ``request``'s step on its instance, every round, in posting order (the
    caller checks that the reader may see ``request``: policy act ``read_comments``)."""
    return Comment.objects.filter(
        request__instance_id=request.instance_id, request__step_name=request.step_name
    ).select_related("author", "request")


def thread_for_page(request: ApprovalRequest) -> tuple[list[Comment], bool]:
    """The latest :data:`THREAD_LIMIT` comments of the thread, oldest first, each with
    ``round`` (the position of its request among the step's requests, from 1) and ``here``
    (posted on ``request``) and ``files``; and whether earlier ones were left out. Two
    queries (the comments, their files)."""
    earlier = (
        ApprovalRequest.objects.filter(
            instance_id=OuterRef("request__instance_id"),
            step_name=OuterRef("request__step_name"),
            created_at__lt=OuterRef("request__created_at"),
        )
        .order_by()
        .values("instance_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    rows = list(
        thread_of(request)
        .annotate(round_number=Coalesce(Subquery(earlier), 0) + 1)
        .order_by("-created_at", "-id")[: THREAD_LIMIT + 1]
    )
    more = len(rows) > THREAD_LIMIT
    rows = rows[:THREAD_LIMIT][::-1]
    for comment in rows:
        comment.round = getattr(comment.request, "round", None) or comment.round_number
        comment.here = comment.request_id == request.pk
    with_files(rows)
    return rows, more


# -- mail ---------------------------------------------------------------------------------------

ROLE_LABELS = {
    Role.REQUESTER: "the requester",
    Role.ASSIGNEE: "an approver",
    Role.DELEGATE: "a delegate of an approver",
    Role.OPERATOR: "an operator",
}


def _requester_of(request: ApprovalRequest) -> Any:
    if request.requester_id is not None:
        return request.requester
    if settings.SIGNOFF_STARTER_IS_REQUESTER:
        return request.instance.started_by
    return None


def recipients(comment: Comment, request: ApprovalRequest) -> list[Any]:
    """Who is told of ``comment``: the other side. An assignee's or a delegate's comment
    goes to the requester; the requester's to the current assignees (directly or through a
    group); an operator's to both. Never the author; only active people with an address."""
    people: list[Any] = []
    if comment.role in (Role.ASSIGNEE, Role.DELEGATE, Role.OPERATOR):
        people.append(_requester_of(request))
    if comment.role in (Role.REQUESTER, Role.OPERATOR):
        people.extend(notifications.current_assignee_users(request))
    seen: set[int] = set()
    told = []
    for person in people:
        if (
            person is None
            or person.pk == comment.author_id
            or person.pk in seen
            or not person.is_active
            or not person.email
        ):
            continue
        seen.add(person.pk)
        told.append(person)
    return told


def comment_notify(comment: Comment, request: ApprovalRequest) -> int:
    """One outbox mail per person told (:func:`recipients`), Message-ID fixed per comment and
    recipient, with a link to the request page (no action link: nothing in it decides).
    Runs in the comment's transaction; returns how many were queued."""
    author = comment.author
    queued = 0
    for person in recipients(comment, request):
        mail = email_queue(
            message_id=f"<signoff.comment.{comment.pk}.{person.pk}@{notifications._domain()}>",
            kind="approval_commented",
            to=[person.email],
            template="approval_commented",
            context=notifications._context(
                request,
                user=person,
                comment=comment,
                author=author.get_username(),
                role=ROLE_LABELS.get(comment.role, comment.role),
                step=step_label(request.step_name),
            ),
            instance_id=request.instance_id,
            request_id=request.pk,
            recipient_id=person.pk,
        )
        queued += mail is not None
    return queued
