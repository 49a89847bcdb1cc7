"""Alerts in the admin. Rules are managed here (their checks are the model's ``clean``, run by
the form). A rule's webhook secret is handled as a webhook subscription's (shared helpers of
``webhook_admin``): shown whole once, in the message after it is made or rotated ("rotate
webhook secret", change permission), masked ever after. Alerts are read-only history with
one action, "resolve now", which needs ``integrations.resolve_alert`` and goes through
``alert_resolve`` (one resolved notice per channel; an alert already resolved is left
alone)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from orchestration.actors import actor_of
from orchestration.admin.shared import ReadOnlyAdminMixin, StrictActionsMixin
from orchestration.definitions import registry
from orchestration.presentation import json_block, pill, status_url

from .alerts.services import alert_resolve, alert_rule_secret_rotate
from .models import (
    Alert,
    AlertRule,
    OutboundEmail,
    new_webhook_secret,
    open_secret,
    seal_secret,
)
from .webhook_admin import masked_secret_line, show_new_secret, show_rotated_secret

CHANGE_LIST_TEMPLATE = "admin/integrations/outboundemail/change_list.html"
CHANGE_FORM_TEMPLATE = "admin/integrations/outboundemail/change_form.html"
RESOLVE_PERMISSION = "integrations.resolve_alert"


class AlertRuleForm(forms.ModelForm):
    webhook_url = forms.URLField(
        max_length=500,
        required=False,
        assume_scheme="https",
        help_text="https:// endpoint; POSTs are signed with the rule's secret.",
    )
    workflow = forms.ChoiceField(
        choices=[], required=False, help_text="Only this workflow (empty: every one)."
    )

    class Meta:
        model = AlertRule
        fields = [
            "name",
            "condition",
            "workflow",
            "stuck_after",
            "overdue_grace",
            "mail_to",
            "mail_group",
            "webhook_url",
            "enabled",
        ]
        widgets = {"mail_to": forms.Textarea(attrs={"rows": 3})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = {workflow.name for workflow in registry.all()}
        if self.instance.workflow:
            names.add(self.instance.workflow)  # keep a name no longer registered
        self.fields["workflow"].choices = [("", "every workflow")] + [
            (name, name) for name in sorted(names)
        ]


@admin.register(AlertRule)
class AlertRuleAdmin(StrictActionsMixin, admin.ModelAdmin):
    form = AlertRuleForm
    list_display = ["name", "condition", "workflow_filter", "channels", "enabled", "firing"]
    list_filter = ["enabled", "condition"]
    search_fields = ["name"]
    actions = ["rotate_webhook_secret"]
    change_list_template = CHANGE_LIST_TEMPLATE
    change_form_template = CHANGE_FORM_TEMPLATE

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(AlertRuleForm.Meta.fields)
        if obj is not None:
            fields += ["secret_hidden", "created_at"]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["secret_hidden", "created_at"]

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: Any = None) -> Any:
        if obj.webhook_url:
            show_new_secret(self, request, obj.name, open_secret(obj.webhook_secret))
        return super().response_add(request, obj, post_url_continue)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change and obj.webhook_url and not form.initial.get("webhook_url"):
            # A webhook given to a rule made without one: a fresh secret, handed over now.
            secret = new_webhook_secret()
            obj.webhook_secret = seal_secret(secret)
            obj.webhook_previous_secret, obj.webhook_previous_secret_expires_at = "", None
            obj._new_secret = secret
        super().save_model(request, obj, form, change)

    def response_change(self, request: HttpRequest, obj: Any) -> Any:
        if secret := getattr(obj, "_new_secret", ""):
            show_new_secret(self, request, obj.name, secret)
        return super().response_change(request, obj)

    @admin.display(description=gettext_lazy("webhook secret"))
    def secret_hidden(self, obj: AlertRule) -> str:
        return masked_secret_line(
            obj.secret_hint(), obj.webhook_previous_secret, obj.webhook_previous_secret_expires_at
        )

    @admin.action(
        description=gettext_lazy(
            "Rotate webhook secret (the previous one keeps signing for the overlap)"
        ),
        permissions=["change"],
    )
    def rotate_webhook_secret(self, request: HttpRequest, queryset: QuerySet) -> None:
        for rule in queryset.order_by("pk"):
            secret = alert_rule_secret_rotate(rule_id=rule.pk)
            show_rotated_secret(self, request, rule.name, secret)

    @admin.display(description=gettext_lazy("workflow"))
    def workflow_filter(self, obj: AlertRule) -> str:
        return obj.workflow or "all"

    @admin.display(description=gettext_lazy("channels"))
    def channels(self, obj: AlertRule) -> str:
        parts = []
        if obj.mail_addresses:
            parts.append(f"{len(obj.mail_addresses)} address(es)")
        if obj.mail_group_id:
            parts.append("a group")
        if obj.webhook_url:
            parts.append("webhook")
        return ", ".join(parts) or "—"

    @admin.display(description=gettext_lazy("firing"), ordering="firing_count")
    def firing(self, obj: AlertRule) -> int:
        return getattr(obj, "firing_count", 0)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # One query for the list, firing counts included.
        return (
            super()
            .get_queryset(request)
            .annotate(firing_count=Count("alerts", filter=Q(alerts__state="firing")))
        )


@admin.register(Alert)
class AlertAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "first_fired_at",
        "rule",
        "title",
        "state_pill",
        "times_seen",
        "last_seen_at",
        "resolved_at",
    ]
    list_filter = ["state", "rule", "condition"]
    list_select_related = ["rule"]
    search_fields = ["subject", "title"]
    date_hierarchy = "first_fired_at"
    show_full_result_count = False
    list_per_page = 100
    actions = ["resolve_now"]
    change_list_template = CHANGE_LIST_TEMPLATE
    change_form_template = CHANGE_FORM_TEMPLATE
    fieldsets = [
        (
            None,
            {
                "fields": [
                    ("rule", "condition", "state_pill"),
                    ("subject", "instance"),
                    "title",
                    ("first_fired_at", "last_seen_at", "times_seen"),
                    ("resolved_at", "resolved_by"),
                ]
            },
        ),
        (gettext_lazy("Notices"), {"fields": ["deliveries_table"]}),
        (gettext_lazy("Details"), {"fields": ["details_block"]}),
    ]
    readonly_fields = [
        "rule",
        "condition",
        "state_pill",
        "subject",
        "instance",
        "title",
        "first_fired_at",
        "last_seen_at",
        "times_seen",
        "resolved_at",
        "resolved_by",
        "deliveries_table",
        "details_block",
    ]

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RESOLVE_PERMISSION)

    @admin.action(
        description=gettext_lazy("Resolve now (selected alerts)"), permissions=["resolve"]
    )
    def resolve_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = actor_of(request.user)
        resolved, left = 0, 0
        for pk in queryset.values_list("pk", flat=True):
            if alert_resolve(alert_id=pk, actor=actor):
                resolved += 1
            else:
                left += 1
        if resolved:
            self.message_user(
                request,
                _("%(count)d alerts resolved; resolved notices queued.") % {"count": resolved},
                messages.SUCCESS,
            )
        if left:
            self.message_user(
                request,
                _("%(count)d not resolved: already resolved.") % {"count": left},
                messages.WARNING,
            )

    @admin.display(description=gettext_lazy("state"), ordering="state")
    def state_pill(self, obj: Alert) -> str:
        return pill(obj.state)

    @admin.display(description=gettext_lazy("instance"))
    def instance(self, obj: Alert) -> str:
        if not obj.instance_id:
            return "—"
        return format_html(
            '<a href="{}">{}</a>', status_url(obj.instance_id), str(obj.instance_id)[:8]
        )

    @admin.display(description=gettext_lazy("notices"))
    def deliveries_table(self, obj: Alert) -> str:
        rows = []
        mail_ids = [
            (entry.get("mail") or {}).get("email_id") for entry in (obj.deliveries or {}).values()
        ]
        mail_status = dict(
            OutboundEmail.objects.filter(pk__in=[pk for pk in mail_ids if pk]).values_list(
                "pk", "status"
            )
        )
        for notice, entry in (obj.deliveries or {}).items():
            for channel, info in entry.items():
                if channel == "mail" and info.get("email_id"):
                    status = mail_status.get(info["email_id"], "deleted")
                    text = f"{status}, {info.get('to', 0)} recipient(s)"
                else:
                    text = ", ".join(f"{k}: {v}" for k, v in info.items())
                rows.append((notice, channel, text))
        if not rows:
            return "—"
        return format_html(
            "<ul>{}</ul>",
            format_html_join("", "<li><strong>{}</strong> by {}: {}</li>", rows),
        )

    @admin.display(description=gettext_lazy("details (masked)"))
    def details_block(self, obj: Alert) -> str:
        return json_block(obj.details)
