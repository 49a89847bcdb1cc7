"""Building blocks of every admin in the project (the orchestration, approvals and
integrations admins): rows that change only through services, actions refused with 403 when
the user may not run them, the confirmation page of an action and its report as messages.
The HTML snippets they show (pills, JSON blocks, times) are in :mod:`orchestration.presentation`.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from ..operator_actions import can_operate


class ReadOnlyAdminMixin:
    """Rows change only through services: no add, change or delete in the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StrictActionsMixin:
    """A posted action the user may not run is refused with 403 (Django's default answers a
    silent "no action selected" redirect). Staff with view permissions only see no actions
    and cannot run one by crafting a request."""

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return can_operate(request.user)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if request.method == "POST" and "action" in request.POST:
            names = request.POST.getlist("action")
            try:
                index = int(request.POST.get("index", 0))
            except ValueError:
                index = 0
            name = names[index] if 0 <= index < len(names) else names[0]
            if name and name not in self.get_actions(request):
                raise PermissionDenied("You may not run this action.")
        return super().changelist_view(request, extra_context)


def reveal_of(obj: Any) -> bool:
    """May the page's user see ``obj``'s sealed fields? (set by the admin's ``get_object``)"""
    return bool(getattr(obj, "_signoff_reveal", False))


def confirm_page(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    title: str,
    question: str,
    form: Any,
    objects: list[Any],
    count: int,
    danger: bool = False,
    action: str = "",
    select_across: bool = False,
    selected: list[str] | None = None,
    back_url: str = "",
    status: int = 200,
) -> TemplateResponse:
    """The admin's confirmation page for an action, bulk (``action`` set: posts back to the
    changelist) or on one object (posts to the current URL)."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": opts,
        "title": title,
        "question": question,
        "form": form,
        "objects": objects,
        "count": count,
        "more": max(count - len(objects), 0),
        "danger": danger,
        "action": action,
        "select_across": select_across,
        "selected": selected or [],
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "back_url": back_url or reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        "media": modeladmin.media,
    }
    return TemplateResponse(request, "admin/signoff/confirm.html", context, status=status)
