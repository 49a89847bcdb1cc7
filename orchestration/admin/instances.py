"""Workflow instances in the operators' admin: find stuck or failed ones (filters, search by
id or business key, the current step in the list), read one (its data, steps and history,
sealed fields masked unless the user may see them) and act on it (the actions are in
:mod:`.instance_operations`, the steps and events tables in :mod:`.instance_inlines`)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy

# repair_actions: its operations join INSTANCE_OPERATIONS before the bulk actions are listed
from .. import repair_actions, sealing, selectors, tracing  # noqa: F401
from ..models import StepRun, WorkflowInstance
from ..operator_actions import INSTANCE_OPERATIONS
from ..presentation import (
    coarse_age,
    error_block,
    instance_state_label,
    json_block,
    pill,
    status_url,
)
from ..selectors import stuck_q
from . import instance_search
from .batches import BATCH_ACTIONS
from .instance_inlines import EventInline, StepRunInline
from .instance_operations import InstanceOperationsMixin, bulk_action
from .shared import ReadOnlyAdminMixin, StrictActionsMixin, reveal_of

CURRENT_STATES = ["running", "retrying", "scheduled", "waiting", "failed", "timed_out"]


# -- filters -----------------------------------------------------------------------------------


class StuckFilter(admin.SimpleListFilter):
    title = gettext_lazy("stuck")
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Stuck now")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(stuck_q(timezone.now()))
        return queryset


class FailedRecentlyFilter(admin.SimpleListFilter):
    title = gettext_lazy("failed")
    parameter_name = "failed_within"
    WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("1h", "In the last hour"), ("24h", "In the last day"), ("7d", "In the last week")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        window = self.WINDOWS.get(self.value() or "")
        if window is None:
            return queryset
        return queryset.filter(state="failed", finished_at__gte=timezone.now() - window)


class PausedFilter(admin.SimpleListFilter):
    title = gettext_lazy("paused")
    parameter_name = "paused"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Paused"), ("no", "Not paused")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(paused_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(paused_at__isnull=True)
        return queryset


# -- instances ---------------------------------------------------------------------------------


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(
    InstanceOperationsMixin, StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin
):
    list_display = [
        "short_id",
        "workflow_version",
        "state_pill",
        "business_key",
        "started_by",
        "age",
        "current_step",
        "status_link",
    ]
    list_display_links = ["short_id"]
    list_filter = [
        "state",
        StuckFilter,
        FailedRecentlyFilter,
        PausedFilter,
        "workflow",
        "version",
    ]
    list_select_related = ["started_by"]
    list_per_page = 50
    show_full_result_count = False
    empty_value_display = "—"
    search_fields = ["business_key"]
    search_help_text = instance_search.HELP
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    actions = [
        *(bulk_action(op) for op in INSTANCE_OPERATIONS.values() if op.bulk),
        *BATCH_ACTIONS,
    ]
    inlines = [StepRunInline, EventInline]
    change_form_template = "admin/orchestration/workflowinstance/change_form.html"
    change_list_template = "admin/orchestration/workflowinstance/change_list.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    ("workflow", "version"),
                    "state_pill",
                    "paused_at",
                    "business_key",
                    "idempotency_key",
                    "started_by",
                    "status_page",
                    "parent_link",
                    "children_links",
                ]
            },
        ),
        (
            gettext_lazy("Times"),
            {
                "fields": [
                    ("created_at", "started_at", "finished_at"),
                    ("updated_at", "deadline_at"),
                    "last_seq",
                    "trace_id",
                ]
            },
        ),
        (gettext_lazy("Data"), {"fields": ["input_pretty", "output_pretty", "error_pretty"]}),
    ]
    readonly_fields = [
        "id",
        "workflow",
        "version",
        "state_pill",
        "paused_at",
        "business_key",
        "idempotency_key",
        "started_by",
        "status_page",
        "parent_link",
        "children_links",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "deadline_at",
        "last_seq",
        "trace_id",
        "input_pretty",
        "output_pretty",
        "error_pretty",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The current step in one query with the list: the first step (in topological order)
        # with work in flight or a failure.
        current = StepRun.objects.filter(
            instance=OuterRef("pk"), state__in=CURRENT_STATES
        ).order_by("position")
        return (
            super()
            .get_queryset(request)
            .annotate(
                current_step_name=Subquery(current.values("name")[:1]),
                current_step_state=Subquery(current.values("state")[:1]),
            )
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        searched = instance_search.search_results(request, queryset, term)
        if searched is not None:
            return searched, False
        q = Q(business_key=term) | Q(business_key__startswith=term)
        try:
            q |= Q(pk=uuid.UUID(term))
        except ValueError:
            if re.fullmatch(r"[0-9a-fA-F-]{4,36}", term):
                q |= Q(id__startswith=term.lower())
        return queryset.filter(q), False

    def get_inline_instances(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        # Inline instances are made per request, so per-request flags are safe on them.
        inlines = super().get_inline_instances(request, obj)
        for inline in inlines:
            inline.reveal = sealing.can_view(request.user)
            if isinstance(inline, StepRunInline):
                inline.can_operate = self.has_operate_permission(request)
        return inlines

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj._signoff_reveal = sealing.can_view(request.user)
        return obj

    # -- columns ---------------------------------------------------------------------------
    @admin.display(description=gettext_lazy("id"), ordering="id")
    def short_id(self, obj: WorkflowInstance) -> str:
        return format_html('<code title="{}">{}</code>', obj.pk, str(obj.pk)[:8])

    @admin.display(description=gettext_lazy("workflow"), ordering="workflow")
    def workflow_version(self, obj: WorkflowInstance) -> str:
        return f"{obj.workflow} v{obj.version}"

    @admin.display(description=gettext_lazy("state"), ordering="state")
    def state_pill(self, obj: WorkflowInstance) -> str:
        html = pill(obj.state, instance_state_label(obj))
        if obj.paused_at:
            html = format_html("{} {}", html, pill("paused", "paused"))
        return html

    @admin.display(description=gettext_lazy("age"), ordering="created_at")
    def age(self, obj: WorkflowInstance) -> str:
        return format_html(
            '<span title="created {}, last change {}">{}</span>',
            timezone.localtime(obj.created_at).isoformat(timespec="seconds"),
            timezone.localtime(obj.updated_at).isoformat(timespec="seconds"),
            coarse_age(timezone.now() - obj.created_at),
        )

    @admin.display(description=gettext_lazy("current step"))
    def current_step(self, obj: WorkflowInstance) -> str:
        name = getattr(obj, "current_step_name", None)
        if not name:
            return "—"
        state = obj.current_step_state
        return format_html("<code>{}</code> {}", name, pill(state, state.replace("_", " ")))

    @admin.display(description="")
    def status_link(self, obj: WorkflowInstance) -> str:
        return format_html(
            '<a class="so-status-link" href="{}" title="Status page">status&nbsp;↗</a>',
            status_url(obj),
        )

    @admin.display(description=gettext_lazy("status page"))
    def status_page(self, obj: WorkflowInstance) -> str:
        return format_html('<a href="{}">Status&nbsp;→</a>', status_url(obj))

    @admin.display(description=gettext_lazy("parent"))
    def parent_link(self, obj: WorkflowInstance) -> str:
        step = obj.parent_step if obj.parent_step_id else None
        if step is None:
            return "—"
        return format_html(
            '<a href="{}">{} <code>{}</code></a> · step <code>{}</code>',
            reverse("admin:orchestration_workflowinstance_change", args=[step.instance_id]),
            step.instance.workflow,
            str(step.instance_id)[:8],
            step.name,
        )

    @admin.display(description=gettext_lazy("child workflows"))
    def children_links(self, obj: WorkflowInstance) -> str:
        links = selectors.attach_children([obj])[0].child_links
        if not links:
            return "—"
        return format_html_join(
            mark_safe("<br>"),
            '<a href="{}">{} <code>{}</code></a> {} · step <code>{}</code>, attempt {}',
            (
                (
                    reverse("admin:orchestration_workflowinstance_change", args=[child.pk]),
                    child.workflow,
                    str(child.pk)[:8],
                    pill(child.state, child.get_state_display()),
                    step,
                    child.parent_attempt,
                )
                for child, step in links
            ),
        )

    @admin.display(description=gettext_lazy("trace id"))
    def trace_id(self, obj: WorkflowInstance) -> str:
        """The instance's OpenTelemetry trace, to look up in the tracing UI (README "Traces")."""
        return tracing.trace_id_of(obj.trace_context) or "—"

    @admin.display(description=gettext_lazy("input"))
    def input_pretty(self, obj: WorkflowInstance) -> str:
        return json_block(obj.input, reveal=reveal_of(obj))

    @admin.display(description=gettext_lazy("output"))
    def output_pretty(self, obj: WorkflowInstance) -> str:
        return json_block(obj.output, reveal=reveal_of(obj))

    @admin.display(description=gettext_lazy("error"))
    def error_pretty(self, obj: WorkflowInstance) -> str:
        if not obj.error:
            return "—"
        rest = {k: v for k, v in obj.error.items() if k not in ("type", "message", "traceback")}
        extra = json_block(rest) if rest else ""
        return format_html("{}{}", error_block(obj.error), extra)

    # -- pages -----------------------------------------------------------------------------
    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if obj is not None:
            extra["status_url"] = status_url(obj)
            if self.has_operate_permission(request):
                extra["operations"] = self.offered_operations(obj)
        return super().change_view(request, object_id, form_url, extra)
