"""Webhooks in the admin. Subscriptions are managed here (name, URL, filters, active). The
secret is generated, shown whole once (in the message after the subscription is added or its
secret rotated) and masked ever after; "rotate secret" gives a new one while the previous one
keeps signing for the overlap (``SIGNOFF_WEBHOOK_SECRET_OVERLAP_HOURS``). Deliveries are
read-only history; one operator action, "retry", hands a failed delivery back to the delivery
task through ``webhooks.webhook_delivery_retry``. Retrying needs
``orchestration.operate_instance``."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from orchestration.actors import actor_of
from orchestration.admin.shared import ReadOnlyAdminMixin, StrictActionsMixin
from orchestration.definitions import registry
from orchestration.presentation import json_block, pill, status_url

from . import webhooks
from .models import (
    WEBHOOK_EVENTS,
    WEBHOOK_LIFECYCLE_EVENTS,
    WebhookDelivery,
    WebhookSubscription,
    open_secret,
)

# The outbox's templates only add the house admin style; they fit any integrations model.
CHANGE_LIST_TEMPLATE = "admin/integrations/outboundemail/change_list.html"
CHANGE_FORM_TEMPLATE = "admin/integrations/outboundemail/change_form.html"


class WebhookSubscriptionForm(forms.ModelForm):
    url = forms.URLField(
        max_length=500, assume_scheme="https", help_text="http:// or https:// endpoint to POST to."
    )
    event_types = forms.MultipleChoiceField(
        choices=list(WEBHOOK_EVENTS.items()),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every lifecycle event ("
        + ", ".join(WEBHOOK_LIFECYCLE_EVENTS)
        + "). Opt-in events are sent only when ticked.",
    )
    workflows = forms.MultipleChoiceField(
        choices=[],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every workflow.",
    )

    class Meta:
        model = WebhookSubscription
        fields = ["name", "url", "active", "event_types", "workflows"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = {workflow.name for workflow in registry.all()}
        names.update(self.instance.workflows or [])  # keep a name no longer registered
        self.fields["workflows"].choices = [(name, name) for name in sorted(names)]


def _describe(entry: dict[str, Any]) -> str:
    """One line of a delivery's history."""
    if "retried_by" in entry:
        return f"retried by {entry['retried_by']}"
    if "attempt" not in entry:
        return str(entry.get("error", ""))
    outcome = entry.get("error") or f"HTTP {entry.get('status_code')}"
    took = f" ({entry['ms']} ms)" if "ms" in entry else ""
    return f"attempt {entry['attempt']}: {outcome}{took}"


def show_new_secret(
    model_admin: admin.ModelAdmin, request: HttpRequest, name: str, secret: str
) -> None:
    """The one time a new signing secret is shown whole: a message after it was made."""
    model_admin.message_user(
        request,
        format_html(
            _(
                "Signing secret of {}: <code>{}</code> — copy it now and give it to the "
                "receiver; it is not shown again."
            ),
            name,
            secret,
        ),
        messages.INFO,
    )


def show_rotated_secret(
    model_admin: admin.ModelAdmin, request: HttpRequest, name: str, secret: str
) -> None:
    """The one time a rotated signing secret is shown whole."""
    hours = webhooks.overlap().total_seconds() / 3600
    model_admin.message_user(
        request,
        format_html(
            _(
                "New signing secret of {}: <code>{}</code> — copy it now, it is not shown "
                "again. The previous secret signs too for {} hours."
            ),
            name,
            secret,
            f"{hours:g}",
        ),
        messages.SUCCESS,
    )


def masked_secret_line(hint: str, previous: str, previous_expires_at: Any) -> str:
    """A secret as shown after its handover: masked, with the overlap of the previous one."""
    if previous and previous_expires_at:
        until = previous_expires_at
        return f"{hint} (the previous secret signs too until {until:%Y-%m-%d %H:%M} UTC)"
    return hint


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(StrictActionsMixin, admin.ModelAdmin):
    form = WebhookSubscriptionForm
    list_display = [
        "name",
        "url",
        "active",
        "events",
        "workflow_filter",
        "created_at",
        "deliveries_link",
    ]
    list_filter = ["active"]
    search_fields = ["name", "url"]
    actions = ["rotate_secret"]
    change_list_template = CHANGE_LIST_TEMPLATE
    change_form_template = CHANGE_FORM_TEMPLATE

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["name", "url", "active", "event_types", "workflows"]
        if obj is not None:
            fields += ["secret_hidden", "created_at", "deliveries_link"]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["secret_hidden", "created_at", "deliveries_link"]

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: Any = None) -> Any:
        show_new_secret(self, request, obj.name, open_secret(obj.secret))
        return super().response_add(request, obj, post_url_continue)

    @admin.display(description=gettext_lazy("secret"))
    def secret_hidden(self, obj: WebhookSubscription) -> str:
        return masked_secret_line(
            obj.secret_hint(), obj.previous_secret, obj.previous_secret_expires_at
        )

    @admin.display(description=gettext_lazy("events"))
    def events(self, obj: WebhookSubscription) -> str:
        return ", ".join(obj.event_types) if obj.event_types else "all lifecycle events"

    @admin.display(description=gettext_lazy("workflows"))
    def workflow_filter(self, obj: WebhookSubscription) -> str:
        return ", ".join(obj.workflows) if obj.workflows else "all"

    @admin.display(description=gettext_lazy("deliveries"))
    def deliveries_link(self, obj: WebhookSubscription) -> str:
        if obj.pk is None:
            return "—"
        url = reverse("admin:integrations_webhookdelivery_changelist")
        return format_html('<a href="{}?subscription__id__exact={}">deliveries</a>', url, obj.pk)

    @admin.action(
        description=gettext_lazy("Rotate secret (the previous one keeps signing for the overlap)"),
        permissions=["change"],
    )
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet) -> None:
        for subscription in queryset.order_by("pk"):
            secret = webhooks.webhook_secret_rotate(subscription_id=subscription.pk)
            show_rotated_secret(self, request, subscription.name, secret)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "created_at",
        "subscription",
        "event_type",
        "instance",
        "status_pill",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["status", "subscription", "event_type"]
    list_select_related = ["subscription"]
    search_fields = ["event_type"]
    search_help_text = "An instance id, a delivery id or an event type."
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_per_page = 100
    actions = ["retry_deliveries"]
    change_list_template = CHANGE_LIST_TEMPLATE
    change_form_template = CHANGE_FORM_TEMPLATE
    fieldsets = [
        (
            None,
            {
                "fields": [
                    ("subscription", "event_type", "status_pill"),
                    ("instance", "event_seq", "event_id"),
                    ("attempts", "last_status_code", "next_attempt_at"),
                    ("created_at", "delivered_at"),
                    "last_error_block",
                ]
            },
        ),
        (gettext_lazy("Attempts"), {"fields": ["history_table"]}),
        (gettext_lazy("Payload"), {"fields": ["payload_block"]}),
    ]
    readonly_fields = [
        "subscription",
        "event_type",
        "status_pill",
        "instance",
        "event_seq",
        "event_id",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
        "delivered_at",
        "last_error_block",
        "history_table",
        "payload_block",
    ]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        q = Q(event_type=term)
        if term.isdigit():
            q |= Q(pk=int(term))
        try:
            q |= Q(instance_id=uuid.UUID(term))
        except ValueError:
            pass
        return queryset.filter(q), False

    @admin.action(
        description=gettext_lazy("Retry delivery (selected deliveries)"), permissions=["operate"]
    )
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = actor_of(request.user)
        retried, refused = 0, 0
        for pk in queryset.values_list("pk", flat=True):
            if webhooks.webhook_delivery_retry(delivery_id=pk, actor=actor):
                retried += 1
            else:
                refused += 1
        if retried:
            self.message_user(
                request,
                _("%(count)d deliveries queued to be sent again.") % {"count": retried},
                messages.SUCCESS,
            )
        if refused:
            self.message_user(
                request,
                _("%(count)d not retried: already delivered, or being delivered right now.")
                % {"count": refused},
                messages.WARNING,
            )

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_pill(self, obj: WebhookDelivery) -> str:
        return pill(obj.status, obj.get_status_display())

    @admin.display(description=gettext_lazy("instance"))
    def instance(self, obj: WebhookDelivery) -> str:
        return format_html(
            '<a href="{}">{}</a>', status_url(obj.instance_id), str(obj.instance_id)[:8]
        )

    @admin.display(description=gettext_lazy("last error"))
    def last_error_block(self, obj: WebhookDelivery) -> str:
        if not obj.last_error:
            return "—"
        return format_html('<pre class="so-json">{}</pre>', obj.last_error)

    @admin.display(description=gettext_lazy("attempts"))
    def history_table(self, obj: WebhookDelivery) -> str:
        if not obj.history:
            return "—"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><code>{}</code> {}</li>",
                ((entry.get("at", ""), _describe(entry)) for entry in obj.history),
            ),
        )

    @admin.display(description=gettext_lazy("body (id added when sent)"))
    def payload_block(self, obj: WebhookDelivery) -> str:
        return json_block(obj.payload)
