"""REST API for batch operations (:mod:`orchestration.batches`): create (or preview), list,
read the progress of, and cancel a batch. Every operation needs
``orchestration.operate_instance``; views validate the body's shape and call one service."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from orchestration import batches
from orchestration.batch_models import BatchAction, BatchItem, BatchOperation
from orchestration.errors import NotAllowed

from .pagination import CheckedCursorPagination
from .serializers import (
    ErrorSerializer,
    JSONObjectField,
    RejectUnknownFieldsMixin,
    StrictCharField,
)
from .views import INVALID_CURSOR, ApiView

FILTER_HELP = (
    "Which instances: any of workflow, version, state, failed_step, error_type (dotted "
    "name or its last part), created_from, created_to, updated_from, updated_to (ISO 8601 "
    "with a time zone; from inclusive, to exclusive), business_key_prefix — combined with "
    'AND; or {"ids": [...]} (at most SIGNOFF_BATCH_MAX_INSTANCES). An empty filter needs '
    '"all": true.'
)


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean: ``"true"``, ``1`` and ``"yes"`` are refused."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictNumberField(serializers.FloatField):
    """A JSON number: ``"2"`` and ``true`` are refused."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class BatchCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    action = serializers.ChoiceField(choices=BatchAction.choices)
    filter = JSONObjectField(required=False, default=dict, help_text=FILTER_HELP)
    reason = StrictCharField(
        max_length=1000,
        required=False,
        default="",
        allow_blank=True,
        help_text="Required unless dry_run; kept on the batch and on each cancel event.",
    )
    all = StrictBooleanField(
        required=False, default=False, help_text="Confirms a batch with no filter."
    )
    dry_run = StrictBooleanField(
        required=False, default=False, help_text="Preview: the count and a sample, nothing made."
    )
    rate = StrictNumberField(
        required=False,
        min_value=0.1,
        max_value=1000,
        allow_null=True,
        default=None,
        help_text="Instances a second at most (0.1–1000; default SIGNOFF_BATCH_RATE).",
    )


class BatchSampleSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow = serializers.CharField()
    version = serializers.IntegerField()
    state = serializers.CharField()
    business_key = serializers.CharField()


class BatchPreviewSerializer(serializers.Serializer):
    action = serializers.CharField()
    count = serializers.IntegerField(help_text="Instances the filter matches now.")
    filter = serializers.DictField()
    sample = BatchSampleSerializer(many=True, help_text="The first few, oldest first.")


class BatchProblemSerializer(serializers.Serializer):
    instance = serializers.UUIDField(source="instance_id")
    outcome = serializers.CharField()
    message = serializers.CharField()


class BatchSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.CharField()
    state = serializers.CharField(help_text="queued, running, done, failed or cancelled.")
    filter = serializers.SerializerMethodField(
        help_text='The filter; for ticked rows, {"ids_count": n} in lists and the ids in a '
        "batch's own resource."
    )
    reason = serializers.CharField()
    created_by = serializers.SerializerMethodField()
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="Not in a state the action applies to.")
    failed = serializers.IntegerField(help_text="Refused (permission, policy) or errors.")
    handled = serializers.IntegerField()
    percent = serializers.IntegerField()
    rate = serializers.FloatField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    cancelled_by = serializers.CharField()

    def get_filter(self, obj: BatchOperation) -> dict[str, Any]:
        if "ids" in obj.filter and not self.context.get("full"):
            return {"ids_count": len(obj.filter["ids"])}
        return obj.filter

    def get_created_by(self, obj: BatchOperation) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None


class BatchDetailSerializer(BatchSerializer):
    problems = serializers.SerializerMethodField(
        help_text="Up to 50 instances skipped or failed, with why."
    )

    def get_problems(self, obj: BatchOperation) -> list[dict[str, Any]]:
        rows = BatchItem.objects.filter(batch=obj, outcome__in=["skipped", "failed"]).order_by(
            "position"
        )[:50]
        return BatchProblemSerializer(rows, many=True).data


class BatchPagination(CheckedCursorPagination):
    page_size = 50
    ordering = ("-created_at", "-id")
    max_page_size = 200


def _operator(request: Request) -> None:
    if not batches.may_operate(request.user):
        raise NotAllowed(
            f"batch operations need the {batches.OPERATE_PERMISSION} permission",
            code="permission_denied",
        )


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    described = {
        400: "Invalid input (unknown action or filter key, a bad time range or id, a missing "
        "reason, no filter without all, ids that match no instance, too many instances).",
        401: "Not authenticated.",
        403: "The caller lacks orchestration.operate_instance.",
        404: "No such batch.",
        409: "Another queued or running batch acts on one of these instances "
        "(code batch_overlap), or the batch already ended.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=described[code]) for code in codes}


BATCH_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)


class BatchListView(ApiView):
    pagination_class = BatchPagination

    @extend_schema(
        summary="List batch operations",
        tags=["batches"],
        description="Newest first, cursor-paginated. Needs orchestration.operate_instance.",
        responses={
            200: BatchSerializer(many=True),
            **_errors(400, 401, 403),
            404: OpenApiResponse(ErrorSerializer, description=INVALID_CURSOR),
        },
    )
    def get(self, request: Request) -> Response:
        _operator(request)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(batches.batches_list(), request, view=self)
        return paginator.get_paginated_response(BatchSerializer(page, many=True).data)

    @extend_schema(
        summary="Create a batch operation (or preview it)",
        tags=["batches"],
        description="Retry, cancel, pause or resume (unpause) every instance the filter "
        "selects now, in the background, throttled; each instance is handled once and asked "
        "as for the single action (refused ones are counted failed, with why). With "
        "dry_run: 200 with the count and a sample, nothing made. Otherwise 202 with the "
        "batch; follow GET /api/v1/batches/{id}/ for progress. Needs "
        "orchestration.operate_instance.",
        request=BatchCreateSerializer,
        responses={
            202: BatchDetailSerializer,
            200: BatchPreviewSerializer,
            **_errors(400, 401, 403, 409),
        },
    )
    def post(self, request: Request) -> Response:
        _operator(request)
        serializer = BatchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = batches.batch_create(
            action=data["action"],
            filter=data["filter"],
            user=request.user,
            reason=data["reason"],
            confirm_all=data["all"],
            dry_run=data["dry_run"],
            rate=data["rate"],
        )
        if isinstance(result, batches.Preview):
            return Response(BatchPreviewSerializer(result).data)
        body = BatchDetailSerializer(result, context={"full": True}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class BatchDetailView(ApiView):
    @extend_schema(
        summary="A batch operation and its progress",
        tags=["batches"],
        parameters=[BATCH_ID],
        responses={200: BatchDetailSerializer, **_errors(401, 403, 404)},
    )
    def get(self, request: Request, pk: str) -> Response:
        _operator(request)
        batch = batches.batch_get(batch_id=pk)
        return Response(BatchDetailSerializer(batch, context={"full": True}).data)


class BatchCancelView(ApiView):
    @extend_schema(
        summary="Cancel a batch operation",
        tags=["batches"],
        description="Stops a queued or running batch: instances not handled yet are left "
        "alone. 409 when it already ended.",
        parameters=[BATCH_ID],
        request=None,
        responses={200: BatchDetailSerializer, **_errors(401, 403, 404, 409)},
    )
    def post(self, request: Request, pk: str) -> Response:
        _operator(request)
        batch = batches.batch_cancel(batch_id=pk, user=request.user)
        return Response(BatchDetailSerializer(batch, context={"full": True}).data)
