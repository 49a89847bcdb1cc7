"""REST API for alerts: a read-only list for operators (``integrations.view_alert``). Rules are
managed in the admin."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from orchestration.api.pagination import CheckedCursorPagination
from orchestration.api.serializers import ErrorSerializer
from orchestration.api.views import ApiView

from ..alerts.selectors import alert_list
from ..models import AlertCondition, AlertState
from .serializers import AlertSerializer


class AlertPagination(CheckedCursorPagination):
    page_size = 50
    ordering = ("-first_fired_at", "-id")
    max_page_size = 200


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


class AlertListView(ApiView):
    pagination_class = AlertPagination

    @extend_schema(
        operation_id="alerts_list",
        summary="Alerts",
        tags=["alerts"],
        description="Alerts fired by the alert rules, newest first, cursor-paginated. Needs "
        "integrations.view_alert. Details are masked (no sealed value).",
        parameters=[
            OpenApiParameter("state", str, enum=AlertState.values),
            OpenApiParameter("condition", str, enum=AlertCondition.values),
            OpenApiParameter("rule", int, description="A rule id."),
        ],
        responses={
            200: AlertSerializer(many=True),
            400: _error("Invalid filter or page size."),
            401: _error("Not authenticated."),
            403: _error("Not allowed to read alerts (code permission_denied)."),
            404: _error("Invalid cursor."),
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        qs = alert_list(
            user=request.user,
            state=params.get("state"),
            rule=params.get("rule"),
            condition=params.get("condition"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, view=self) or []
        return paginator.get_paginated_response(AlertSerializer(page, many=True).data)
