"""The REST API's tokens in the admin, never whole: a key is shown as its first characters on
every page (list, view, history, delete, messages, the admin log), for everyone, superusers
included. Whoever reads the admin cannot lift a token. Revoking (delete) stays; tokens are
made with ``manage.py drf_create_token <user>``, not here.

It replaces DRF's stock ``TokenAdmin``, which lists every key in full, names a token by its key
in titles, messages and log entries, answers popups with the key, and filters the list by any
lookup on the key (``?key__startswith=``: a key read character by character from the result
count). Here popups and ``_to_field`` are refused and only the ``created`` filter is allowed.
"""

from __future__ import annotations

from typing import Any

import rest_framework.authtoken.admin as drf_token_admin  # registers the stock admin first
from django.contrib import admin
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.options import IS_POPUP_VAR, TO_FIELD_VAR, get_content_type_for_model
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy
from rest_framework.authtoken.models import TokenProxy

SHOWN_CHARS = 6


def key_prefix(key: str) -> str:
    """What the admin shows of a key: enough to tell tokens apart, not enough to use one."""
    return f"{key[:SHOWN_CHARS]}…"


class _Shown:
    """A token as the admin's templates get it: its id in the admin's URLs (the user's id) and
    its prefix as its name (Django names an object by ``str()``, which is a token's key)."""

    def __init__(self, token: TokenProxy) -> None:
        self.pk = token.pk
        self.label = key_prefix(token.key)

    def __str__(self) -> str:
        return self.label


def _refuse_popups(request: HttpRequest) -> None:
    # A popup answers with the object's value, which for a token is its key.
    for name in (IS_POPUP_VAR, TO_FIELD_VAR):
        if name in request.GET or name in request.POST:
            raise PermissionDenied


admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class ApiTokenAdmin(drf_token_admin.TokenAdmin):
    """List, view and revoke; keys shown as prefixes only (module doc)."""

    list_display = ("key_shown", "user", "created")
    list_filter = ("created",)
    fields = ("user", "key_shown", "created")
    readonly_fields = fields
    actions = None  # DRF's: bulk actions do not fit the user-id mapping

    @admin.display(description=gettext_lazy("key"))
    def key_shown(self, obj: TokenProxy) -> str:
        return key_prefix(obj.key)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # manage.py drf_create_token <user>

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # Only the date filter: any lookup on the key (or pk, its alias) is an oracle for it.
        return lookup.split("__", 1)[0] == "created" and super().lookup_allowed(
            lookup, value, request
        )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        _refuse_popups(request)
        return super().changelist_view(request, extra_context)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: Any = None,
    ) -> HttpResponse:
        _refuse_popups(request)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            context["original"] = shown = _Shown(obj)
            context["subtitle"] = shown.label
        return super().render_change_form(request, context, add, change, form_url, obj)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: Any = None
    ) -> HttpResponse:
        _refuse_popups(request)
        response = super().history_view(request, object_id, extra_context)
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and isinstance(response, TemplateResponse):
            shown = _Shown(obj)
            response.context_data["object"] = shown
            response.context_data["title"] = f"Change history: {shown}"
        return response

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: Any = None
    ) -> HttpResponse:
        _refuse_popups(request)
        return super().delete_view(request, object_id, extra_context)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        _, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        return [f"Token: {_Shown(obj)}" for obj in objs], model_count, perms_needed, protected

    def render_delete_form(self, request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
        context["object"] = _Shown(context["object"])
        return super().render_delete_form(request, context)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> list[LogEntry]:
        content_type = get_content_type_for_model(self.model)
        return [
            LogEntry.objects.create(
                user_id=request.user.pk,
                content_type_id=content_type.pk,
                object_id=str(obj.pk),
                object_repr=key_prefix(obj.key),
                action_flag=DELETION,
            )
            for obj in queryset
        ]

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> HttpResponse:
        return super().response_delete(request, key_prefix(obj_display), None)
