"""Every event of every instance in the admin, read-only (e.g. everything one operator did)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy

from .. import sealing
from ..models import Event
from ..presentation import json_block, status_url
from .shared import ReadOnlyAdminMixin, StrictActionsMixin, reveal_of


@admin.register(Event)
class EventAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every event of every instance, read-only (e.g. everything one operator did)."""

    list_display = ["at", "instance_link", "seq", "type", "step", "attempt", "actor"]
    list_select_related = ["instance"]
    search_fields = ["=type", "=actor", "=step"]
    search_help_text = "An exact event type, actor (e.g. user:ops, sweeper) or step name."
    show_full_result_count = False
    list_per_page = 100
    ordering = ["-id"]  # newest first, on the primary key index
    fields = ["instance_link", "seq", "at", "type", "step", "attempt", "actor", "data_pretty"]
    readonly_fields = fields

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj._signoff_reveal = sealing.can_view(request.user)
        return obj

    @admin.display(description=gettext_lazy("instance"))
    def instance_link(self, obj: Event) -> str:
        return format_html(
            '<a href="{}">{} {}</a>',
            status_url(obj.instance_id),
            obj.instance.workflow,
            str(obj.instance_id)[:8],
        )

    @admin.display(description=gettext_lazy("data"))
    def data_pretty(self, obj: Event) -> str:
        return json_block(obj.data, reveal=reveal_of(obj))
