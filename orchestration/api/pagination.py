"""Cursor pagination for the API lists (stable under inserts, no COUNT query)."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from orchestration.errors import InvalidInput


class CheckedCursorPagination(CursorPagination):
    """DRF's cursor pagination, except that a tampered cursor answers 404 "Invalid cursor"
    and a ``page_size`` outside 1..``max_page_size`` answers 400.

    DRF hands the position decoded from the cursor straight to ``filter()``; a position the
    ordering field cannot parse (``p=abc`` for a date, a NUL) would be a 500. DRF also
    silently ignores a ``page_size`` it cannot use; the schema documents the range, and bad
    input is a clear 400 (DESIGN invariant 8)."""

    page_size_query_param = "page_size"
    max_page_size = 200
    _model: type[Model] | None = None

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= self.max_page_size:
            raise InvalidInput(
                f"{self.page_size_query_param} must be an integer from 1 to {self.max_page_size}",
                code="invalid_page_size",
            )
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                }
        return parameters

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any] | None:
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Cursor | None:
        cursor = super().decode_cursor(request)
        if cursor is None or cursor.position is None or self._model is None:
            return cursor
        field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
        try:
            if "\x00" in cursor.position:
                raise ValueError("NUL in cursor position")
            field.get_prep_value(field.to_python(cursor.position))
        except (ValidationError, ValueError, TypeError, OverflowError):
            raise NotFound(self.invalid_cursor_message) from None
        return cursor


class InstancePagination(CheckedCursorPagination):
    page_size = 50
    ordering = ("-created_at", "-id")
    max_page_size = 200


class EventPagination(CheckedCursorPagination):
    page_size = 200
    ordering = ("seq",)
    max_page_size = 1000
