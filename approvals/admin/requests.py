"""The approval requests in the admin: the list (state, policy, workflow filters; title and
business key search) and the read-only page, with its decisions and email links inline and
its claim; the operator actions come from
:class:`~approvals.admin.operations.OperatorActionsMixin`."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy

from orchestration.admin.shared import ReadOnlyAdminMixin, StrictActionsMixin
from orchestration.presentation import json_block, pill, status_url

from .. import selectors
from ..models import ActionToken, ApprovalRequest, Decision
from .operations import OperatorActionsMixin


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("approvals.view_approvalrequest")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DecisionInline(_ReadOnlyInline):
    model = Decision
    fields = [
        "at",
        "outcome",
        "assignee",
        "decided_by",
        "via_group",
        "channel",
        "comment",
        "reason",
    ]
    readonly_fields = fields
    ordering = ["at", "id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("assignee", "decided_by", "via_group")


class ActionTokenInline(_ReadOnlyInline):
    """Email links sent (only their hashes are stored; nothing here can act)."""

    model = ActionToken
    verbose_name_plural = gettext_lazy("Email action links")
    fields = ["user", "purpose", "created_at", "expires_at", "used_at", "superseded_at"]
    readonly_fields = fields
    ordering = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("user")


@admin.action(
    description=gettext_lazy("Reassign (selected pending requests)…"), permissions=["operate"]
)
def reassign_selected(
    modeladmin: ApprovalRequestAdmin, request: HttpRequest, queryset: QuerySet
) -> Any:
    return modeladmin.reassign_bulk(request, queryset)


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(
    OperatorActionsMixin, StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin
):
    list_display = [
        "title",
        "workflow",
        "business_key",
        "step_name",
        "round",
        "state_pill",
        "policy",
        "decision_count",
        "created_at",
        "due_at",
        "resolved_at",
        "status_page",
    ]
    list_filter = ["state", "policy", "workflow"]
    list_select_related = ["requester"]
    search_fields = ["title", "=business_key", "=workflow"]
    search_help_text = "Words of the title, or an exact business key or workflow."
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_per_page = 50
    actions = [reassign_selected]
    inlines = [DecisionInline, ActionTokenInline]
    change_form_template = "admin/approvals/approvalrequest/change_form.html"
    change_list_template = "admin/approvals/approvalrequest/change_list.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "title",
                    "state_pill",
                    ("workflow", "business_key", "step_name"),
                    ("round", "max_rounds", "revisable"),
                    ("answered_by", "answered_at"),
                    "status_page",
                    "requester",
                    "assignees",
                    "claim_display",
                    ("policy", "quorum", "veto"),
                    ("reject_requires_comment", "allow_self_approval"),
                    "fields_pretty",
                ]
            },
        ),
        (
            gettext_lazy("Times"),
            {
                "fields": [
                    ("created_at", "due_at", "resolved_at"),
                    ("level", "reminders_sent", "last_reminded_at"),
                    ("next_reminder_at", "next_escalation_at"),
                ]
            },
        ),
    ]
    readonly_fields = [
        "title",
        "state_pill",
        "workflow",
        "business_key",
        "step_name",
        "round",
        "max_rounds",
        "revisable",
        "answered_by",
        "answered_at",
        "status_page",
        "requester",
        "assignees",
        "claim_display",
        "policy",
        "quorum",
        "veto",
        "reject_requires_comment",
        "allow_self_approval",
        "fields_pretty",
        "created_at",
        "due_at",
        "resolved_at",
        "level",
        "reminders_sent",
        "last_reminded_at",
        "next_reminder_at",
        "next_escalation_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(n_decisions=Count("decisions"))

    @admin.display(description=gettext_lazy("state"), ordering="state")
    def state_pill(self, obj: ApprovalRequest) -> str:
        return pill(obj.state, obj.get_state_display())

    @admin.display(description=gettext_lazy("decisions"), ordering="n_decisions")
    def decision_count(self, obj: ApprovalRequest) -> int:
        return getattr(obj, "n_decisions", 0)

    @admin.display(description=gettext_lazy("instance"))
    def status_page(self, obj: ApprovalRequest) -> str:
        return format_html('<a href="{}">Status page&nbsp;→</a>', status_url(obj.instance_id))

    @admin.display(description=gettext_lazy("assigned to"))
    def assignees(self, obj: ApprovalRequest) -> str:
        users = [u.get_username() for u in obj.assignee_users.all()]
        groups = [f"group {g.name}" for g in obj.assignee_groups.all()]
        return ", ".join(users + groups) or "—"

    @admin.display(description=gettext_lazy("claim"))
    def claim_display(self, obj: ApprovalRequest) -> str:
        if not obj.claim_mode:
            return "no claims on this request"
        holder = selectors.claim_holder_name(obj)
        if holder is None:
            return f"unclaimed ({obj.claim_mode} claims)"
        expires = (
            f", expires if idle at {timezone.localtime(obj.claim_expires_at):%Y-%m-%d %H:%M %Z}"
            if obj.claim_expires_at
            else ""
        )
        return (
            f"claimed by {holder} since {timezone.localtime(obj.claimed_at):%Y-%m-%d %H:%M %Z}"
            f" ({obj.claim_mode}{expires})"
        )

    @admin.display(description=gettext_lazy("what the approver sees"))
    def fields_pretty(self, obj: ApprovalRequest) -> str:
        return json_block(obj.fields)
