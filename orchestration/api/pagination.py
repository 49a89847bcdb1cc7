"""Cursor pagination for the API lists (stable under inserts, no COUNT query)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request


class CheckedCursorPagination(CursorPagination):
    """DRF's cursor pagination, except that a tampered cursor answers 404 "Invalid cursor".

    DRF hands the position decoded from the cursor straight to ``filter()``; a position the
    ordering field cannot parse (``p=abc`` for a date, a NUL) would be a 500."""

    page_size_query_param = "page_size"
    _model: type[Model] | None = None

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
