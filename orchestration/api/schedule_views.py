"""REST API for schedules: one view per operation, each calling one service of
:mod:`orchestration.schedules`.

Reading needs ``orchestration.view_schedule`` (or staff, who see every instance too);
creating, changing (pause, resume and trigger included) and deleting need
``orchestration.add_schedule``, ``change_schedule`` and ``delete_schedule``: Django's model
permissions, granted in the admin. A refusal is a 403 ``permission_denied`` and writes nothing.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from orchestration import schedules, selectors
from orchestration.errors import NotAllowed

from .pagination import CheckedCursorPagination
from .schedule_serializers import (
    ScheduleCreateSerializer,
    ScheduleFireSerializer,
    SchedulePauseSerializer,
    ScheduleSerializer,
    ScheduleTriggerSerializer,
    ScheduleWriteSerializer,
)
from .serializers import ErrorSerializer
from .views import INVALID_CURSOR, ApiView

SCHEDULE_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)
TAGS = ["schedules"]


class SchedulePagination(CheckedCursorPagination):
    page_size = 50
    ordering = ("name",)
    max_page_size = 200


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    described = {
        400: "Invalid input (invalid cron expression, unknown workflow or version, input not "
        "matching the workflow's input schema, unknown time zone, neither or both of cron and "
        "interval_seconds, ...): detail, code and fields.",
        401: "Not authenticated.",
        403: "The caller lacks the schedule permission this needs (code permission_denied).",
        404: "No such schedule.",
        409: "The name is taken (name_taken), or the schedule already fired at that time "
        "(already_fired).",
        413: "Request body over SIGNOFF_MAX_REQUEST_BYTES.",
    }
    return {
        code: OpenApiResponse(ErrorSerializer, description=described[code])
        for code in (*codes, 401)
    }


def _need(request: Request, action: str) -> None:
    if not selectors.may_schedule(request.user, action):
        raise NotAllowed(
            f"this needs the orchestration.{action}_schedule permission",
            code="permission_denied",
        )


def _read(request: Request, pk: Any) -> Response:
    schedule = selectors.schedule_get(user=request.user, schedule_id=pk)
    return Response(ScheduleSerializer(schedule).data)


def _exists(request: Request, pk: Any) -> None:
    """404 for a schedule that does not exist, once the caller may see schedules at all."""
    if selectors.may_schedule(request.user, "view"):
        selectors.schedule_get(user=request.user, schedule_id=pk)


class ScheduleListView(ApiView):
    pagination_class = SchedulePagination

    @extend_schema(
        summary="List schedules",
        tags=TAGS,
        description="Every schedule, by name, cursor-paginated, each with its next five fire "
        "times and its timing in words. Needs orchestration.view_schedule (or staff).",
        responses={
            200: ScheduleSerializer(many=True),
            **_errors(400, 403),
            404: OpenApiResponse(ErrorSerializer, description=INVALID_CURSOR),
        },
    )
    def get(self, request: Request) -> Response:
        qs = selectors.schedule_list(user=request.user)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(ScheduleSerializer(page, many=True).data)

    @extend_schema(
        summary="Create a schedule",
        tags=TAGS,
        description="Starts `workflow` with `input` on `cron` (in `time_zone`) or every "
        "`interval_seconds`. Needs orchestration.add_schedule. The first fire is the first "
        "fire time after now.",
        request=ScheduleCreateSerializer,
        responses={201: ScheduleSerializer, **_errors(400, 403, 409, 413)},
    )
    def post(self, request: Request) -> Response:
        _need(request, "add")
        serializer = ScheduleCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        schedule = schedules.schedule_create(
            values=dict(serializer.validated_data), created_by=request.user
        )
        return Response(
            ScheduleSerializer(
                selectors.schedule_get(user=request.user, schedule_id=schedule.pk)
            ).data,
            status=status.HTTP_201_CREATED,
        )


class ScheduleDetailView(ApiView):
    @extend_schema(
        summary="A schedule",
        tags=TAGS,
        parameters=[SCHEDULE_ID],
        responses={200: ScheduleSerializer, **_errors(403, 404)},
    )
    def get(self, request: Request, pk: str) -> Response:
        return _read(request, pk)

    def _update(self, request: Request, pk: str, *, partial: bool) -> Response:
        _need(request, "change")
        _exists(request, pk)
        serializer = ScheduleWriteSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        schedules.schedule_update(
            schedule_id=pk, values=dict(serializer.validated_data), user=request.user
        )
        return _read(request, pk)

    @extend_schema(
        summary="Change a schedule's settings (name and workflow required)",
        tags=TAGS,
        description="Needs orchestration.change_schedule. Fields left out keep their values "
        "(the input too); the whole schedule is checked again. A change of the timing plans "
        "the next fire from now.",
        parameters=[SCHEDULE_ID],
        request=ScheduleWriteSerializer,
        responses={200: ScheduleSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def put(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=False)

    @extend_schema(
        summary="Change some of a schedule's settings",
        tags=TAGS,
        description="Needs orchestration.change_schedule. Fields left out keep their values "
        "(the input too); the whole schedule is checked again.",
        parameters=[SCHEDULE_ID],
        request=ScheduleWriteSerializer(partial=True),
        responses={200: ScheduleSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def patch(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=True)

    @extend_schema(
        summary="Delete a schedule",
        tags=TAGS,
        description="Needs orchestration.delete_schedule. Its instances stay.",
        parameters=[SCHEDULE_ID],
        responses={204: None, **_errors(403, 404)},
    )
    def delete(self, request: Request, pk: str) -> Response:
        _need(request, "delete")
        _exists(request, pk)
        schedules.schedule_delete(schedule_id=pk, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SchedulePauseView(ApiView):
    @extend_schema(
        summary="Pause a schedule",
        tags=TAGS,
        description="No fire starts until it is resumed. Needs orchestration.change_schedule.",
        parameters=[SCHEDULE_ID],
        request=SchedulePauseSerializer,
        responses={200: ScheduleSerializer, **_errors(400, 403, 404, 413)},
    )
    def post(self, request: Request, pk: str) -> Response:
        _need(request, "change")
        _exists(request, pk)
        serializer = SchedulePauseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        schedules.schedule_pause(
            schedule_id=pk, note=serializer.validated_data["note"], user=request.user
        )
        return _read(request, pk)


class ScheduleResumeView(ApiView):
    @extend_schema(
        summary="Resume a paused schedule",
        tags=TAGS,
        description="The next fire is the first fire time after now (times passed while "
        "paused are not caught up). Needs orchestration.change_schedule.",
        parameters=[SCHEDULE_ID],
        request=None,
        responses={200: ScheduleSerializer, **_errors(403, 404)},
    )
    def post(self, request: Request, pk: str) -> Response:
        _need(request, "change")
        _exists(request, pk)
        schedules.schedule_resume(schedule_id=pk, user=request.user)
        return _read(request, pk)


class ScheduleTriggerView(ApiView):
    @extend_schema(
        summary="Fire a schedule now",
        tags=TAGS,
        description="Fires once now (paused or not) under the overlap policy: the answer is "
        "the fire record (outcome started, buffered or skipped_overlap). Its fire time is "
        "the run's idempotency: the same fire time again answers 409 and starts nothing. "
        "Needs orchestration.change_schedule.",
        parameters=[SCHEDULE_ID],
        request=ScheduleTriggerSerializer,
        responses={201: ScheduleFireSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, pk: str) -> Response:
        _need(request, "change")
        _exists(request, pk)
        serializer = ScheduleTriggerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fired = schedules.schedule_trigger(
            schedule_id=pk,
            fire_time=serializer.validated_data.get("fire_time"),
            user=request.user,
        )
        return Response(ScheduleFireSerializer(fired).data, status=status.HTTP_201_CREATED)


class ScheduleFiresView(ApiView):
    @extend_schema(
        summary="A schedule's newest fires",
        tags=TAGS,
        description="The newest 50 fire records: started (with the instance), buffered, "
        "skipped_overlap, missed (count: how many fire times the row stands for) or failed.",
        parameters=[SCHEDULE_ID],
        responses={200: ScheduleFireSerializer(many=True), **_errors(403, 404)},
    )
    def get(self, request: Request, pk: str) -> Response:
        schedule = selectors.schedule_get(user=request.user, schedule_id=pk)
        return Response(
            ScheduleFireSerializer(selectors.schedule_fires(schedule=schedule), many=True).data
        )
