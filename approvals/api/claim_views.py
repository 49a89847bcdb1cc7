"""REST API for claims and reassignment: claim, release, take over (``approvals.claims``) and
an operator's reassignment (``approvals.services.approval_reassign``), each through the one
decision policy; errors become JSON in :func:`orchestration.api.errors.exception_handler`.
Each answers the request as it is afterwards (the approval detail)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from approvals import claims, services
from approvals.models import Channel
from orchestration.api.serializers import ErrorSerializer
from orchestration.api.views import ApiView

from .input_serializers import (
    ClaimSerializer,
    ReassignSerializer,
    ReleaseSerializer,
    TakeOverSerializer,
)
from .serializers import ApprovalRequestDetailSerializer
from .views import _detail


def _errors(described: dict[int, str]) -> dict[int, OpenApiResponse]:
    """Every error status an operation may answer (with 400, 401, 404 and 413 always)."""
    texts = {
        400: "Invalid input: detail, code and, for field errors, fields.",
        401: "Not authenticated.",
        404: "No such request, or not one the caller may see.",
        413: "Request body over SIGNOFF_MAX_REQUEST_BYTES.",
        **described,
    }
    return {
        code: OpenApiResponse(ErrorSerializer, description=text)
        for code, text in sorted(texts.items())
    }


CLAIM_403 = (
    "The decision policy refuses: only someone who may decide the request claims it "
    "(code not_assignee; the requester: self_approval; deactivated: inactive)."
)
DECIDED_409 = 'Already decided (code already_decided): "already approved by X at T".'


class ApprovalClaimView(ApiView):
    @extend_schema(
        operation_id="approvals_claim",
        summary='Claim ("I\'m on it")',
        tags=["approvals"],
        description="The caller claims a pending request assigned to a group or to several "
        "people: until the claim is released, taken over or expires after its idle time, "
        "nobody else may decide it (409 claimed). Only someone who may decide it may claim "
        "it. Claiming a request you hold renews the claim (its idle time starts again). Two "
        "people claiming at once: one wins, the other gets 409 claimed naming the winner.",
        request=ClaimSerializer,
        responses={
            200: ApprovalRequestDetailSerializer,
            **_errors(
                {
                    403: CLAIM_403,
                    409: DECIDED_409 + ' Claimed by someone else (code claimed): "claimed by X '
                    'since T". Takes no claims (code not_claimable): the step says claim=None, '
                    "its policy needs several decisions, or it is assigned to one person.",
                }
            ),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        ClaimSerializer(data=request.data).is_valid(raise_exception=True)
        claims.approval_claim(request_id=pk, user=request.user, channel=Channel.API)
        return _detail(request, pk)


class ApprovalReleaseView(ApiView):
    @extend_schema(
        operation_id="approvals_release",
        summary="Release a claim",
        tags=["approvals"],
        description="The claimant releases their claim; a holder of the "
        "approvals.override_claim permission may release anyone's (recorded as forced, with "
        "the optional note), never on their own request.",
        request=ReleaseSerializer,
        responses={
            200: ApprovalRequestDetailSerializer,
            **_errors(
                {
                    403: "Someone else's claim (code not_claimant), or your own request "
                    "(code own_request).",
                    409: DECIDED_409 + " Not claimed (code not_claimed).",
                }
            ),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        serializer = ReleaseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        claims.approval_release(
            request_id=pk,
            user=request.user,
            note=serializer.validated_data["note"],
            channel=Channel.API,
        )
        return _detail(request, pk)


class ApprovalTakeOverView(ApiView):
    @extend_schema(
        operation_id="approvals_take_over",
        summary="Take a claim over",
        tags=["approvals"],
        description="The caller takes someone else's claim over, with a note (recorded). A "
        "soft claim: anyone else who may decide the request. A hard claim: only a holder of "
        "approvals.override_claim who may decide it.",
        request=TakeOverSerializer,
        responses={
            200: ApprovalRequestDetailSerializer,
            **_errors(
                {
                    400: "Invalid input; a note is required (code note_required or a field error).",
                    403: CLAIM_403 + " A hard claim without approvals.override_claim "
                    "(code hard_claim).",
                    409: DECIDED_409 + " Not claimed (code not_claimed); your own claim (code "
                    "own_claim); someone other than the expected claimant holds it now "
                    '(code claimed: "claimed by X since T").',
                }
            ),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        serializer = TakeOverSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        claims.approval_take_over(
            request_id=pk,
            user=request.user,
            note=serializer.validated_data["note"],
            expected_claimant=serializer.validated_data.get("claimant"),
            channel=Channel.API,
        )
        return _detail(request, pk)


class ApprovalReassignView(ApiView):
    @extend_schema(
        operation_id="approvals_reassign",
        summary="Reassign (operators)",
        tags=["approvals"],
        description="Replace a pending request's assignees with these users and groups, with "
        "a reason (recorded on the approval_reassigned event, channel api). Operators only "
        "(orchestration.operate_instance), never on their own request nor to themselves or a "
        "group of theirs. People no longer assigned lose their email links, newcomers get "
        "mail, and a claim held by someone who may no longer decide it is released.",
        request=ReassignSerializer,
        responses={
            200: ApprovalRequestDetailSerializer,
            **_errors(
                {
                    400: "Invalid input: unknown or inactive users or groups (code "
                    "unknown_assignee), nobody named (code no_assignee), reason missing.",
                    403: "Not an operator (code permission_denied), your own request (code "
                    "own_request), to yourself or a group of yours (code self_assignment), or "
                    "only to the requester (code self_approval).",
                    409: DECIDED_409,
                }
            ),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        serializer = ReassignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        services.approval_reassign(
            request_id=pk,
            operator=request.user,
            users=data["users"],
            groups=data["groups"],
            reason=data["reason"],
            channel=Channel.API,
        )
        return _detail(request, pk)
