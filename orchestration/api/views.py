"""REST API for workflows and instances: one view per operation, each calling one service."""

from __future__ import annotations

from typing import Any


from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestration import engine, selectors
from orchestration.definitions import registry
from orchestration.errors import NotAllowed

from .serializers import (
    EventSerializer,
    InstanceSerializer,
    StartInstanceSerializer,
    WorkflowSerializer,
)


def actor_of(request: Request) -> str:
    return f"user:{request.user.get_username()}"


class InstancePagination(CursorPagination):
    page_size = 50
    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"
    max_page_size = 200


class EventPagination(CursorPagination):
    page_size = 200
    ordering = "seq"
    page_size_query_param = "page_size"
    max_page_size = 1000


class WorkflowListView(APIView):
    @extend_schema(responses=WorkflowSerializer(many=True), summary="Registered workflows")
    def get(self, request: Request) -> Response:
        return Response([wf.describe() for wf in registry.all()])


class InstanceListView(APIView):
    @extend_schema(
        summary="List instances",
        parameters=[
            OpenApiParameter("workflow", str),
            OpenApiParameter("state", str),
            OpenApiParameter("business_key", str),
        ],
        responses=InstanceSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        qs = selectors.instance_list(
            user=request.user,
            workflow=request.query_params.get("workflow"),
            state=request.query_params.get("state"),
            business_key=request.query_params.get("business_key"),
        )
        paginator = InstancePagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(InstanceSerializer(page, many=True).data)

    @extend_schema(
        summary="Start an instance",
        request=StartInstanceSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
        responses={201: InstanceSerializer, 200: InstanceSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = StartInstanceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        instance, created = engine.instance_start(
            workflow=data["workflow"],
            input=data["input"],
            business_key=data["business_key"],
            version=data["version"],
            idempotency_key=request.headers.get("Idempotency-Key"),
            started_by=request.user,
            actor=actor_of(request),
        )
        instance = selectors.instance_get(user=request.user, instance_id=instance.pk)
        return Response(InstanceSerializer(instance).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class InstanceDetailView(APIView):
    @extend_schema(summary="One instance with its steps", responses=InstanceSerializer)
    def get(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_get(user=request.user, instance_id=pk)
        return Response(InstanceSerializer(instance).data)


class InstanceHistoryView(APIView):
    @extend_schema(summary="The instance's events in order", responses=EventSerializer(many=True))
    def get(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_get(user=request.user, instance_id=pk)
        paginator = EventPagination()
        page = paginator.paginate_queryset(
            selectors.instance_history(instance=instance), request, view=self
        )
        return paginator.get_paginated_response(EventSerializer(page, many=True).data)


class _InstanceAction(APIView):
    def _act(self, request: Request, pk: str, **kwargs: Any) -> Response:
        instance = selectors.instance_get(user=request.user, instance_id=pk)
        if not (selectors.can_see_all_instances(request.user)
                or instance.started_by_id == request.user.pk):
            raise NotAllowed("you may not act on this instance")
        self.service(instance_id=instance.pk, actor=actor_of(request), **kwargs)
        instance = selectors.instance_get(user=request.user, instance_id=pk)
        return Response(InstanceSerializer(instance).data)


class InstanceCancelView(_InstanceAction):
    service = staticmethod(engine.instance_cancel)

    @extend_schema(summary="Cancel an instance", request=None, responses=InstanceSerializer)
    def post(self, request: Request, pk: str) -> Response:
        reason = request.data.get("reason", "") if isinstance(request.data, dict) else ""
        if not isinstance(reason, str) or len(reason) > 1000:
            from orchestration.errors import InvalidInput

            raise InvalidInput("reason must be a string of at most 1000 characters")
        return self._act(request, pk, reason=reason)


class InstanceRetryView(_InstanceAction):
    service = staticmethod(engine.instance_retry)

    @extend_schema(summary="Retry a failed instance from its failed steps", request=None,
                   responses=InstanceSerializer)
    def post(self, request: Request, pk: str) -> Response:
        return self._act(request, pk)


class ApiRootView(APIView):
    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        return Response({"workflows": "/api/v1/workflows/", "instances": "/api/v1/instances/",
                         "schema": "/api/schema/", "docs": "/api/docs/"})


def not_found(request: Any, *args: Any, **kwargs: Any) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)



