"""The outbox in the admin, read-only: what was sent (or failed), to whom, about which
instance. Delivery is the Celery task's job; nothing here sends or edits mail.

A personal link is never stored: the bodies show the placeholder it replaced, marked, and the
page says that the link is made when the mail is sent."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db import connection
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy

from orchestration.admin.shared import ReadOnlyAdminMixin, StrictActionsMixin
from orchestration.presentation import pill, status_url
from orchestration.vendor import supports_json_contains

from .mail import LINK_PLACEHOLDER
from .models import OutboundEmail

LINK_NOTE = (
    "Inserted when the mail is sent: a single-use link for this recipient, made at delivery "
    "and never stored (only its hash is kept). Each delivery attempt makes its own; if the "
    "link could no longer act by then, the request's inbox URL is sent instead."
)


def _marked(text: str) -> SafeString:
    """``text`` escaped, with the link placeholder marked for the operator."""
    mark = format_html(
        '<mark title="{}" style="background:#fff3bf;padding:0 2px">{}</mark>',
        LINK_NOTE,
        LINK_PLACEHOLDER,
    )
    return mark_safe(escape(text).replace(escape(LINK_PLACEHOLDER), mark))


@admin.register(OutboundEmail)
class OutboundEmailAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "kind",
        "recipients",
        "subject",
        "status_pill",
        "attempts",
        "sent_at",
        "instance",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["subject"]
    search_help_text = "Words of the subject, an exact recipient, message id or instance id."
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_per_page = 100
    change_list_template = "admin/integrations/outboundemail/change_list.html"
    change_form_template = "admin/integrations/outboundemail/change_form.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    ("kind", "status_pill", "attempts"),
                    "recipients",
                    "subject",
                    ("created_at", "sent_at"),
                    "message_id",
                    ("instance", "request_id"),
                    "last_error_block",
                ]
            },
        ),
        (
            gettext_lazy("Body"),
            {"fields": ["personal_link", "body_text_block", "body_html_preview"]},
        ),
    ]
    readonly_fields = [
        "kind",
        "status_pill",
        "attempts",
        "recipients",
        "subject",
        "created_at",
        "sent_at",
        "message_id",
        "instance",
        "request_id",
        "last_error_block",
        "personal_link",
        "body_text_block",
        "body_html_preview",
    ]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        q = Q(subject__icontains=term) | Q(message_id=term)
        if supports_json_contains(connection):
            q |= Q(to__contains=[term])
        try:
            q |= Q(instance_id=uuid.UUID(term))
        except ValueError:
            pass
        return queryset.filter(q), False

    @admin.display(description=gettext_lazy("to"))
    def recipients(self, obj: OutboundEmail) -> str:
        return ", ".join(obj.to or [])

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_pill(self, obj: OutboundEmail) -> str:
        return pill(obj.status, obj.get_status_display())

    @admin.display(description=gettext_lazy("instance"))
    def instance(self, obj: OutboundEmail) -> str:
        if not obj.instance_id:
            return "—"
        return format_html(
            '<a href="{}">{}</a>', status_url(obj.instance_id), str(obj.instance_id)[:8]
        )

    @admin.display(description=gettext_lazy("last error"))
    def last_error_block(self, obj: OutboundEmail) -> str:
        if not obj.last_error:
            return "—"
        return format_html('<pre class="so-json">{}</pre>', obj.last_error)

    @admin.display(description=gettext_lazy("personal link"))
    def personal_link(self, obj: OutboundEmail) -> str:
        if not obj.link_ref and LINK_PLACEHOLDER not in obj.body_text:
            return "—"
        return format_html("<code>{}</code> — {}", LINK_PLACEHOLDER, LINK_NOTE)

    @admin.display(description=gettext_lazy("text"))
    def body_text_block(self, obj: OutboundEmail) -> str:
        return format_html('<pre class="so-json">{}</pre>', _marked(obj.body_text))

    @admin.display(description=gettext_lazy("HTML"))
    def body_html_preview(self, obj: OutboundEmail) -> str:
        if not obj.body_html:
            return "—"
        # A sandboxed frame: the mail's HTML renders without scripts, forms or same-origin.
        return format_html(
            '<iframe sandbox="" srcdoc="{}" title="HTML body" '
            'style="width:100%;max-width:720px;height:420px;border:1px solid #ddd;'
            'background:#fff"></iframe>',
            obj.body_html,
        )
