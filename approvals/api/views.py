"""REST API for approvals: the caller's inbox, one request, deciding it, sending it back for
changes, and the requester's answer (resubmit, withdraw).

Reads go through :mod:`approvals.selectors`, decisions through
:func:`approvals.services.approval_decide` (channel ``api``), the same service the web inbox
and email links use, so the rules and the errors are the same everywhere. Business errors
become JSON in one place, :func:`orchestration.api.errors.exception_handler`.
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from approvals import comments, policy, search, selectors, services
from approvals.context import decision_lines
from approvals.models import ApprovalRequest, Channel, Decision, Outcome, RequestState
from orchestration.api.pagination import CheckedCursorPagination
from orchestration.api.parsers import JSONParser, is_multipart, multipart_body
from orchestration.api.serializers import ErrorSerializer
from orchestration.api.views import ApiView
from orchestration.errors import InvalidInput, NotFound
from orchestration.selectors import can_read

from .serializers import (
    ASSIGNEES,
    DECISIONS,
    ApprovalRequestDetailSerializer,
    ApprovalRequestSerializer,
    CommentCreateSerializer,
    CommentMultipartSerializer,
    CommentSerializer,
    DecideSerializer,
    RequestChangesSerializer,
    ResubmitMultipartSerializer,
    ResubmitSerializer,
    WithdrawSerializer,
)

User = get_user_model()
AssignedUser = ApprovalRequest.assignee_users.through
AssignedGroup = ApprovalRequest.assignee_groups.through

# What a list item shows (ApprovalRequestSerializer); the rest of the row stays in the table.
LIST_COLUMNS = [
    "id",
    "title",
    "workflow",
    "business_key",
    "step_name",
    "round",
    "max_rounds",
    "state",
    "policy",
    "quorum",
    "fields",
    "columns",
    "requester_id",
    f"requester__{User.USERNAME_FIELD}",
    "created_at",
    "due_at",
    "resolved_at",
    "instance_id",
    "claim_state",
    "claimed_by_id",
    f"claimed_by__{User.USERNAME_FIELD}",
    "claimed_by__is_active",
    "claimed_at",
    "claim_expires_at",
]

STATES = {
    "pending": "what the caller may decide now (default)",
    "decided": "what the caller decided",
    "all": "everything the caller is or was assigned, or decided",
    "revise": "the caller's own requests sent back for changes, waiting for them to resubmit "
    "or withdraw",
}


class ApprovalPagination(CheckedCursorPagination):
    # The order of the pending partial index (approval_pending_created), so a pending page
    # is a walk of that index that stops after one page; no COUNT.
    page_size = 50
    ordering = ("-created_at", "-id")
    max_page_size = 200


class CreationOrderPagination(ApprovalPagination):
    # state=all: every state, newest first. No index orders all requests by created_at, so
    # that order would sort everything the caller can see (seconds at 1,000,000 rows); the
    # id is the creation order too, and the primary key walks in it.
    ordering = ("-id",)


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    """Schema of the error responses an operation may give (besides 401)."""
    described = {
        400: "Invalid input or filter: detail, code and, for field errors, fields.",
        403: "The decision policy refuses: not an assignee (code not_assignee), the "
        "caller's own request (code self_approval), not the requester (code not_requester).",
        404: "No such request, or not one the caller may see.",
        409: 'Already decided (code already_decided): "already approved by X at T"; someone '
        'else claimed it (code claimed): "claimed by X since T"; in its last round (code '
        "max_rounds); already resubmitted or withdrawn (codes already_resubmitted, "
        "already_withdrawn); not sent back (code not_changes_requested); the instance no "
        "longer running (code invalid_state).",
        413: "Request body over SIGNOFF_MAX_REQUEST_BYTES.",
        401: "Not authenticated.",
    }
    return {
        code: OpenApiResponse(ErrorSerializer, description=described[code])
        for code in (*codes, 401)
    }


@functools.cache
def _assignees_sql(count: int) -> str:
    """Both assignment tables of ``count`` requests, UNION ALL: (request id, kind, name)."""
    quote = connection.ops.quote_name
    username = quote(User._meta.get_field(User.USERNAME_FIELD).column)
    ids = ", ".join(["%s"] * count)

    def part(through: Any, fk: str, target: Any, label: str) -> str:
        return (
            f"SELECT a.{quote(through._meta.get_field('approvalrequest').column)}, "
            f"'{'users' if target is User else 'groups'}', t.{label} "
            f"FROM {quote(through._meta.db_table)} a "
            f"JOIN {quote(target._meta.db_table)} t "
            f"ON t.{quote(target._meta.pk.column)} = a.{quote(through._meta.get_field(fk).column)} "
            f"WHERE a.{quote(through._meta.get_field('approvalrequest').column)} IN ({ids})"
        )

    return (
        part(AssignedUser, "user", User, username)
        + " UNION ALL "
        + part(AssignedGroup, "group", Group, quote("name"))
    )


def attach_assignees(requests: list[ApprovalRequest]) -> list[ApprovalRequest]:
    """Set the assigned users' and groups' names on each request: one query for a whole
    page (both assignment tables, UNION ALL), names only, no model instances. Fixed SQL per
    page size: building it with the ORM cost more than running it (1.9 -> 0.6 ms for a page
    of 50 in bench/inbox.py)."""
    names: dict[int, dict[str, list[str]]] = {r.pk: {"users": [], "groups": []} for r in requests}
    if names:
        ids = list(names)
        with connection.cursor() as cursor:
            cursor.execute(_assignees_sql(len(ids)), ids + ids)
            for request_id, kind, name in cursor.fetchall():
                names[request_id][kind].append(name)
    for request in requests:
        found = names[request.pk]
        setattr(
            request, ASSIGNEES, {"users": sorted(found["users"]), "groups": sorted(found["groups"])}
        )
    return requests


def _filter_value(name: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        # PostgreSQL cannot compare text with NUL: a 400, not a 500.
        raise InvalidInput(f"{name} must not contain NUL characters", code="invalid_filter")
    return value or None


def approval_list(
    *,
    user: Any,
    state: str | None,
    workflow: str | None,
    business_key: str | None,
    filters: search.Filters | None = None,
) -> QuerySet[ApprovalRequest]:
    """The list's query from its query parameters (unordered: the pagination orders it);
    an unknown ``state`` or a NUL in a filter is :class:`InvalidInput`. ``filters`` (text
    search, step, requester, overdue, due before) as :func:`approvals.search.parse_filters`
    read them."""
    state = "pending" if state is None else state
    if state == "pending":
        qs = selectors.decidable_by(user)
    elif state == "decided":
        qs = selectors.decided_by(user)
    elif state == "all":
        qs = selectors.visible_to(user)
    elif state == "revise":
        qs = selectors.awaiting_revision(user)
    else:
        raise InvalidInput(
            f"unknown state {state!r}; one of {', '.join(STATES)}", code="invalid_filter"
        )
    if _filter_value("workflow", workflow):
        qs = qs.filter(workflow=workflow)
    if _filter_value("business_key", business_key):
        qs = qs.filter(business_key=business_key)
    if filters is not None:
        qs = search.apply(qs, filters, timezone.now())
    # With attach_assignees, two queries for any page.
    return qs.select_related("requester", "claimed_by").only(*LIST_COLUMNS)


def _detail(request: Request, approval_id: int, status: int = 200) -> Response:
    """The request as the caller may see it, or 404."""
    user = request.user
    obj = selectors.request_for(user, approval_id)
    if obj is None:
        raise NotFound("approval request not found")
    attach_assignees([obj])
    decisions = Decision.objects.filter(request=obj).select_related(
        "decided_by", "assignee", "via_group"
    )
    setattr(obj, DECISIONS, list(decisions.order_by("at", "id")))
    can_decide = (
        obj.state == RequestState.PENDING
        and obj.claim_holder_id(timezone.now()) in (None, user.pk)
        and selectors.decidable_by(user).filter(pk=obj.pk).exists()
    )
    # Whoever may see a request may read its instance (read-only, as the policy's
    # view_instance says); asked all the same, so the link follows the policy.
    instance_visible = can_read(user, obj.instance)
    can_resubmit = (
        obj.state == RequestState.CHANGES_REQUESTED
        and obj.instance.state == "running"
        and user.pk in (obj.requester_id, obj.instance.started_by_id)
    )
    context = {
        "can_decide": can_decide,
        "can_resubmit": can_resubmit,
        "instance_visible": instance_visible,
        "rounds": services.earlier_rounds(obj),
        "workflow_decisions": decision_lines(obj),
    }
    return Response(ApprovalRequestDetailSerializer(obj, context=context).data, status=status)


class ApprovalListView(ApiView):
    # Read by drf-spectacular too, which then documents the paginated envelope.
    pagination_class = ApprovalPagination

    @extend_schema(
        operation_id="approvals_list",
        summary="The caller's approval requests",
        tags=["approvals"],
        description="Newest first (state=all: in creation order, by id), cursor-paginated "
        "(no total count). By default what the "
        "caller may decide now: assigned directly, through a group, or to someone who "
        "delegated to them, not their own request, not already decided by them.",
        parameters=[
            OpenApiParameter(
                "state",
                str,
                enum=list(STATES),
                description="; ".join(f"{k}: {v}" for k, v in STATES.items()),
            ),
            OpenApiParameter("workflow", str, description="Workflow name."),
            OpenApiParameter("business_key", str, description="Exactly this business key."),
            OpenApiParameter(
                "search",
                str,
                description="Words (at most 200 characters, the first 8 words count) each "
                "found anywhere, case-insensitively, in the title, business key, requester's "
                "username or a shown field's value.",
            ),
            OpenApiParameter("step", str, description="Approval step name."),
            OpenApiParameter("requester", str, description="Requester's username."),
            OpenApiParameter(
                "overdue", bool, description="true: only pending requests past their due time."
            ),
            OpenApiParameter(
                "due_before",
                str,
                description="ISO date (its start, server time zone) or date and time: only "
                "requests due before it.",
            ),
        ],
        responses={
            200: ApprovalRequestSerializer(many=True),
            **_errors(400),
            404: OpenApiResponse(
                ErrorSerializer,
                description="Invalid cursor: a cursor that is not one the API gave.",
            ),
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        state = params.get("state")
        # workflow: checked for NUL by approval_list, as before.
        filters = search.parse_filters({**params.dict(), "workflow": ""})
        qs = approval_list(
            user=request.user,
            state=state,
            workflow=params.get("workflow"),
            business_key=params.get("business_key"),
            filters=filters,
        )
        paginator = CreationOrderPagination() if state == "all" else self.pagination_class()
        page = attach_assignees(paginator.paginate_queryset(qs, request, view=self) or [])
        return paginator.get_paginated_response(ApprovalRequestSerializer(page, many=True).data)


class ApprovalDetailView(ApiView):
    @extend_schema(
        operation_id="approvals_retrieve",
        summary="One approval request with its decisions",
        tags=["approvals"],
        description="Visible to its assignees (and their delegates), whoever decided it, its "
        "requester and staff; 404 for anyone else.",
        responses={200: ApprovalRequestDetailSerializer, **_errors(404)},
    )
    def get(self, request: Request, pk: int) -> Response:
        return _detail(request, pk)


class _DecideView(ApiView):
    outcome: str

    def post(self, request: Request, pk: int) -> Response:
        serializer = DecideSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.approval_decide(
            request_id=pk,
            user=request.user,
            outcome=self.outcome,
            comment=serializer.validated_data["comment"],
            channel=Channel.API,
        )
        return _detail(request, pk)


DECIDE_DESCRIPTION = (
    "Decides through the same service and decision policy as the web inbox and email links "
    "(channel api). Only a current assignee (directly, through a group, or as an active "
    "delegate) may decide, not on their own request (nor one they started); one decision per "
    "person; a request the caller may not see answers 404 whatever its state. Answers the "
    "request as it is afterwards: resolved under policy any, possibly still pending under all "
    "or quorum."
)


class ApprovalApproveView(_DecideView):
    outcome = Outcome.APPROVE

    @extend_schema(
        operation_id="approvals_approve",
        summary="Approve",
        tags=["approvals"],
        description=DECIDE_DESCRIPTION,
        request=DecideSerializer,
        responses={200: ApprovalRequestDetailSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)


class ApprovalRejectView(_DecideView):
    outcome = Outcome.REJECT

    @extend_schema(
        operation_id="approvals_reject",
        summary="Reject",
        tags=["approvals"],
        description=DECIDE_DESCRIPTION + " A comment is required unless the step says "
        "otherwise (400, code comment_required).",
        request=DecideSerializer,
        responses={200: ApprovalRequestDetailSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)


class ApprovalRequestChangesView(ApiView):
    @extend_schema(
        operation_id="approvals_request_changes",
        summary="Send back for changes",
        tags=["approvals"],
        description="Sends the request back to its requester, who may revise the step's "
        "revisable input fields and resubmit (the next round, a new request) or withdraw. "
        "Who may: exactly who may approve or reject it (the same decision policy); a comment "
        "is required (400, code comment_required). Under every policy one request for "
        "changes ends the round at once; decisions others made in it stay recorded. In the "
        "request's last round (max_rounds) it is refused: 409, code max_rounds. Answers the "
        "request as it is afterwards (state changes_requested).",
        request=RequestChangesSerializer,
        responses={200: ApprovalRequestDetailSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: int) -> Response:
        serializer = RequestChangesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.approval_request_changes(
            request_id=pk,
            user=request.user,
            comment=serializer.validated_data["comment"],
            channel=Channel.API,
        )
        return _detail(request, pk)


def _body_and_files(
    request: Request, fields: set[str], *, json_fields: set[str] = frozenset()
) -> tuple[Any, list[Any]]:
    """A JSON body, or a multipart one with files under ``files`` (its JSON fields as strings)."""
    if is_multipart(request):
        return multipart_body(request, fields=fields, json_fields=json_fields)
    return request.data, []


class ApprovalResubmitView(ApiView):
    # A resubmission may add files: multipart bodies up to SIGNOFF_MAX_UPLOAD_BYTES.
    parser_classes = [JSONParser, MultiPartParser]
    accepts_uploads = True

    @extend_schema(
        operation_id="approvals_resubmit",
        summary="Revise and resubmit (requester)",
        tags=["approvals"],
        description="The requester (or the instance's starter) answers a request sent back "
        "for changes: `input` holds the changed revisable fields (others: 400, code "
        "not_revisable); merged into the instance input, the whole must pass the workflow's "
        "input schema (400, code invalid_input). The input change is recorded in the history "
        "as a diff (instance_input_revised), and the next round starts: a new request (201, "
        "its id differs) with its assignees resolved again and its reminders, escalations "
        "and due time counted from now. Only while the request is changes_requested and its "
        "instance running (409); a second resubmit answers 409 (code already_resubmitted) "
        "naming who resubmitted and when.",
        request={
            "application/json": ResubmitSerializer,
            "multipart/form-data": ResubmitMultipartSerializer,
        },
        responses={201: ApprovalRequestDetailSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: int) -> Response:
        data, files = _body_and_files(request, {"input"}, json_fields={"input"})
        serializer = ResubmitSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        new = services.approval_resubmit(
            request_id=pk,
            user=request.user,
            changes=serializer.validated_data["input"],
            channel=Channel.API,
            files=files,
        )
        response = _detail(request, new.pk, status=201)
        response["Location"] = f"/api/v1/approvals/{new.pk}/"
        return response


class ApprovalWithdrawView(ApiView):
    @extend_schema(
        operation_id="approvals_withdraw",
        summary="Withdraw instead of resubmitting (requester)",
        tags=["approvals"],
        description="The requester (or the instance's starter) withdraws a request sent back "
        "for changes: the request becomes withdrawn and the workflow instance is cancelled "
        "(compensations run). Only while the request is changes_requested and its instance "
        "running (409).",
        request=WithdrawSerializer,
        responses={200: ApprovalRequestDetailSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: int) -> Response:
        serializer = WithdrawSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.approval_withdraw(
            request_id=pk,
            user=request.user,
            reason=serializer.validated_data["reason"],
            channel=Channel.API,
        )
        return _detail(request, pk)


# -- comments ------------------------------------------------------------------------------------

IDEMPOTENCY_HEADER = "Idempotency-Key"


class CommentPagination(CheckedCursorPagination):
    # Posting order; the id follows it (ids and created_at both grow as comments are posted).
    page_size = 50
    ordering = ("id",)
    max_page_size = 200


COMMENT_ERRORS = {
    400: "Invalid comment: empty (code comment_required or invalid), too long "
    "(comment_too_long or invalid), NUL characters, unknown fields, or a bad Idempotency-Key "
    "(invalid_idempotency_key).",
    403: "The caller may see the request but has no part in it (code not_participant): only "
    "its assignees, their delegates, its requester and operators comment.",
    404: "No such request, or not one the caller may see.",
    409: "The workflow has finished (code comments_closed), or the Idempotency-Key was used "
    "for another comment (idempotency_conflict).",
    413: "Request body over SIGNOFF_MAX_REQUEST_BYTES.",
    401: "Not authenticated.",
}


def _comment_errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {
        code: OpenApiResponse(ErrorSerializer, description=COMMENT_ERRORS[code])
        for code in (*codes, 401)
    }


def _comment_key(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return ""
    if not key.strip() or len(key) > comments.MAX_KEY or not key.isprintable():
        raise InvalidInput(
            f"{IDEMPOTENCY_HEADER} must be 1 to {comments.MAX_KEY} printable characters",
            code="invalid_idempotency_key",
        )
    return key


class ApprovalCommentsView(ApiView):
    pagination_class = CommentPagination
    # A comment may carry files: multipart bodies up to SIGNOFF_MAX_UPLOAD_BYTES.
    parser_classes = [JSONParser, MultiPartParser]
    accepts_uploads = True

    @extend_schema(
        operation_id="approvals_comments_list",
        summary="The comments of a request's thread",
        tags=["approvals"],
        description="Every comment on the request's step of its workflow instance (every "
        "round), in posting order, cursor-paginated. Readable by whoever may see the request "
        "(its assignees, past assignees, their delegates, whoever decided it, its requester, "
        "staff and operators); 404 for anyone else.",
        responses={
            200: CommentSerializer(many=True),
            **_comment_errors(400),
            404: OpenApiResponse(
                ErrorSerializer,
                description="No such request, or not one the caller may see; or an invalid cursor.",
            ),
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        approval = selectors.request_for(request.user, pk)
        if approval is None:
            raise NotFound("approval request not found")
        policy.authorize(policy.Act.READ_COMMENTS, user=request.user, request=approval)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(comments.thread_of(approval), request, view=self)
        comments.with_files(page)
        return paginator.get_paginated_response(CommentSerializer(page, many=True).data)

    @extend_schema(
        operation_id="approvals_comments_create",
        summary="Comment on a request",
        tags=["approvals"],
        description="Posts a question or an answer on the request's thread; it decides "
        "nothing. Allowed while the workflow runs, to the request's requester (and the "
        "instance's starter), its current assignees and whoever decided it, their active "
        "delegates, and operators (orchestration.operate_instance). The other side is told by "
        "mail (the requester for an assignee's comment, the current assignees for the "
        "requester's, both for an operator's), with a link to the request's page and never an "
        "action link. One approval_commented event per comment (without the text). With an "
        "Idempotency-Key header a repeated post (same key, request and body) answers the first "
        "comment with 200 and posts nothing.",
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description=f"1 to {comments.MAX_KEY} printable characters, per caller.",
            )
        ],
        request={
            "application/json": CommentCreateSerializer,
            "multipart/form-data": CommentMultipartSerializer,
        },
        responses={
            201: CommentSerializer,
            200: OpenApiResponse(
                CommentSerializer, description="The same post again (Idempotency-Key)."
            ),
            **_comment_errors(400, 403, 404, 409, 413),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        key = _comment_key(request)
        data, files = _body_and_files(request, {"body"})
        serializer = CommentCreateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        posted = comments.comment_post(
            request_id=pk,
            user=request.user,
            body=serializer.validated_data["body"],
            channel=Channel.API,
            idempotency_key=key,
            files=files,
        )
        return Response(
            CommentSerializer(posted.comment).data,
            status=status.HTTP_201_CREATED if posted.created else status.HTTP_200_OK,
        )
