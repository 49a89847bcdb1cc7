"""REST API for a request's comment thread: list the step's comments, post one (JSON, or
multipart with files; an ``Idempotency-Key`` header makes a retried post one comment)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from approvals import comments, policy, selectors
from approvals.models import Channel
from orchestration.api.pagination import CheckedCursorPagination
from orchestration.api.parsers import JSONParser
from orchestration.api.serializers import ErrorSerializer
from orchestration.api.views import ApiView
from orchestration.errors import InvalidInput, NotFound

from .comment_serializers import (
    CommentCreateSerializer,
    CommentMultipartSerializer,
    CommentSerializer,
)
from .decision_views import _body_and_files

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
