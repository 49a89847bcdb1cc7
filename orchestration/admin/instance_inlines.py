"""The two tables on an instance's admin page: its steps (with the step actions an operator
may take) and its history of events, both read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.translation import gettext_lazy

from ..models import Event, StepRun
from ..operator_actions import step_operations
from ..presentation import clock, error_block, human_duration, json_snippet, pill


class _InstanceChildInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False
    reveal = False  # set per request: may the user see sealed fields?

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("orchestration.view_workflowinstance")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StepRunInline(_InstanceChildInline):
    model = StepRun
    verbose_name_plural = gettext_lazy("Steps")
    fields = [
        "name",
        "kind",
        "state_pill",
        "attempt",
        "started",
        "took",
        "next_attempt",
        "output_snippet",
        "last_error",
        "step_actions",
    ]
    readonly_fields = fields
    ordering = ["position"]
    can_operate = False  # set per request by WorkflowInstanceAdmin.get_inline_instances

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("instance")

    @admin.display(description=gettext_lazy("state"))
    def state_pill(self, obj: StepRun) -> str:
        return pill(obj.shown_state, obj.shown_state_label)

    @admin.display(description=gettext_lazy("started"))
    def started(self, obj: StepRun) -> str:
        return clock(obj.started_at)

    @admin.display(description=gettext_lazy("took"))
    def took(self, obj: StepRun) -> str:
        if obj.started_at is None:
            return "—"
        return human_duration((obj.finished_at or timezone.now()) - obj.started_at)

    @admin.display(description=gettext_lazy("next attempt"))
    def next_attempt(self, obj: StepRun) -> str:
        if obj.state not in ("retrying", "scheduled") or obj.next_attempt_at is None:
            return "—"
        return clock(obj.next_attempt_at)

    @admin.display(description=gettext_lazy("output"))
    def output_snippet(self, obj: StepRun) -> str:
        return json_snippet(obj.output, reveal=self.reveal, limit=28)

    @admin.display(description=gettext_lazy("last error"))
    def last_error(self, obj: StepRun) -> str:
        return error_block(obj.error)

    @admin.display(description=gettext_lazy("actions"))
    def step_actions(self, obj: StepRun) -> str:
        if not self.can_operate or obj.pk is None:
            return ""
        return format_html_join(
            " ",
            '<a class="button so-small" href="{}">{}</a>',
            (
                (
                    reverse(
                        "admin:orchestration_workflowinstance_step_operate",
                        args=[obj.instance_id, obj.pk, op.name],
                    ),
                    op.label,
                )
                for op in step_operations(obj.instance, obj)
            ),
        )


class EventInline(_InstanceChildInline):
    model = Event
    verbose_name_plural = gettext_lazy("History (events, read-only)")
    fields = ["seq", "at_clock", "type", "step", "attempt", "actor", "data_snippet"]
    readonly_fields = fields
    ordering = ["seq"]

    @admin.display(description=gettext_lazy("at"))
    def at_clock(self, obj: Event) -> str:
        return clock(obj.at, millis=True)

    @admin.display(description=gettext_lazy("data"))
    def data_snippet(self, obj: Event) -> str:
        data = obj.data if isinstance(obj.data, dict) else {}
        error = data.get("error")
        if isinstance(error, dict) and "traceback" in error:
            # the traceback is on the step (and in the downloads); keep the row readable
            data = {**data, "error": {k: v for k, v in error.items() if k != "traceback"}}
        return json_snippet(data, reveal=self.reveal)
