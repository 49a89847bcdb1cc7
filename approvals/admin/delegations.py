"""Delegations (out of office) in the admin: read-only, filtered by whether they are active."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy

from orchestration.admin.shared import ReadOnlyAdminMixin, StrictActionsMixin
from orchestration.presentation import pill

from ..models import Delegation


class ActiveDelegationFilter(admin.SimpleListFilter):
    title = gettext_lazy("active")
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("now", "Active now"), ("future", "Upcoming"), ("past", "Ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == "now":
            return queryset.filter(starts_at__lte=now, ends_at__gt=now)
        if self.value() == "future":
            return queryset.filter(starts_at__gt=now)
        if self.value() == "past":
            return queryset.filter(ends_at__lte=now)
        return queryset


@admin.register(Delegation)
class DelegationAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["user", "delegate", "starts_at", "ends_at", "status", "created_at"]
    list_select_related = ["user", "delegate"]
    list_filter = [ActiveDelegationFilter]
    search_fields = ["=user__username", "=delegate__username"]
    search_help_text = "An exact username (who delegated, or the delegate)."
    fields = ["user", "delegate", "starts_at", "ends_at", "created_at"]
    readonly_fields = fields

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    @admin.display(description=gettext_lazy("status"))
    def status(self, obj: Delegation) -> str:
        now = timezone.now()
        if obj.starts_at > now:
            return pill("scheduled", "upcoming")
        if obj.ends_at > now:
            return pill("active", "active")
        return pill("ended", "ended")
