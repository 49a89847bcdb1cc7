"""REST API for approvals, the reads: the caller's inbox (the list, with its filters) and one
request; and what the write views share (the detail they answer with, the error schema).
Deciding, sending back and the requester's answer: :mod:`approvals.api.decision_views`;
comments: :mod:`approvals.api.comment_views`; claims and reassignment:
:mod:`approvals.api.claim_views`.

Reads go through :mod:`approvals.selectors`, decisions through
:func:`approvals.services.approval_decide` (channel ``api``), the same service the web inbox
and email links use, so the rules and the errors are the same everywhere. Business errors
become JSON in one place, :func:`orchestration.api.errors.exception_handler`.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from approvals import search, selectors, services
from approvals.context import decision_lines
from approvals.models import ApprovalRequest, Decision, RequestState
from approvals.selectors import attach_assignees
from orchestration.api.pagination import CheckedCursorPagination
from orchestration.api.serializers import ErrorSerializer
from orchestration.api.views import ApiView
from orchestration.errors import InvalidInput, NotFound
from orchestration.replica import replica_reads
from orchestration.selectors import can_read

from .serializers import (
    DECISIONS,
    ApprovalRequestDetailSerializer,
    ApprovalRequestSerializer,
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
    @replica_reads
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
