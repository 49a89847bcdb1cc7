"""REST API for deciding a request (approve, reject), sending it back for changes, and the
requester's answer (resubmit, withdraw). Each goes through the same service and decision
policy as the web inbox and email links (channel ``api``) and answers with the request as it
is afterwards; business errors become JSON in
:func:`orchestration.api.errors.exception_handler`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from approvals import services
from approvals.models import Channel, Outcome
from orchestration.api.parsers import JSONParser, is_multipart, multipart_body
from orchestration.api.views import ApiView

from .input_serializers import (
    DecideSerializer,
    RequestChangesSerializer,
    ResubmitMultipartSerializer,
    ResubmitSerializer,
    WithdrawSerializer,
)
from .serializers import (
    ApprovalRequestDetailSerializer,
)
from .views import _detail, _errors


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
