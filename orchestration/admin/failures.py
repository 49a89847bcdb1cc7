"""The admin's "Failures" page: failed instances grouped by workflow, failed step, error type
and normalised message (:mod:`orchestration.failures`), with counts, first and last seen, a
sample instance, and "retry all in this group" (a confirmation page with the count and a
mandatory reason, then :func:`orchestration.failures.retry_group`).

Seeing the page needs what the instance admin needs to see (``view_workflowinstance``);
retrying needs ``orchestration.operate_instance``, and each retry asks the engine, which asks
the step kinds.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _

from .. import failures
from ..errors import SignoffError, localized
from ..models import FailureGroupProxy, WorkflowInstance
from ..operator_actions import can_operate, require_operator, short_label
from .shared import ReadOnlyAdminMixin, confirm_page

VIEW_PERMISSION = "orchestration.view_workflowinstance"


class RetryGroupForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required: why these are retried now (the fix that was deployed), recorded "
        "on each instance's instance_retried event.",
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


@admin.register(FailureGroupProxy)
class FailuresAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Not a list of rows: the grouped failures page and its retry page."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name="orchestration_failuregroupproxy_changelist"),
            path("retry/", wrap(self.retry_view), name="orchestration_failuregroupproxy_retry"),
            path(
                "<path:object_id>/change/",
                wrap(self.change_view),
                name="orchestration_failuregroupproxy_change",
            ),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """A failed instance is shown as the instance admin shows it (same checks, same
        masking), so the proxy has no page of its own to keep in step."""
        instances = self.admin_site._registry[WorkflowInstance]
        return instances.change_view(request, object_id, form_url, extra_context)

    def _require_view(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied("You may not see workflow instances.")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        self._require_view(request)
        groups, more = failures.failure_groups(user=request.user)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Failures",
            "groups": groups,
            "more": more,
            "limit": failures.GROUP_LIMIT,
            "can_operate": can_operate(request.user),
            "instances_url": reverse("admin:orchestration_workflowinstance_changelist"),
            "retry_url": reverse("admin:orchestration_failuregroupproxy_retry"),
        }
        return TemplateResponse(request, "admin/orchestration/failures.html", context)

    def retry_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the confirmation (the group's count, a sample, a reason); POST with
        ``confirm``: retry the group through :func:`failures.retry_group`."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        self._require_view(request)
        require_operator(request.user)
        back = reverse("admin:orchestration_failuregroupproxy_changelist")
        try:
            key = failures.GroupKey.from_token(request.GET.get("group", ""))
        except SignoffError as exc:
            return HttpResponse(exc.message, status=400, content_type="text/plain")
        group = failures.group_of(user=request.user, key=key)
        if group is None:
            messages.info(request, _("No failed instance is left in that group."))
            return HttpResponseRedirect(back)
        confirmed = request.method == "POST" and "confirm" in request.POST
        form = RetryGroupForm(request.POST if confirmed else None)
        if confirmed and form.is_valid():
            try:
                outcome = failures.retry_group(key, request.user, form.cleaned_data["reason"])
            except SignoffError as exc:  # e.g. a batch already running on these instances
                messages.error(request, _("Refused: %(why)s") % {"why": localized(exc)})
                return HttpResponseRedirect(back)
            job = reverse("admin:orchestration_batchoperation_change", args=[outcome.pk])
            messages.success(
                request,
                format_html(
                    _('Retry of {} instance(s) started as <a href="{}">batch operation {}</a>.'),
                    outcome.total,
                    job,
                    outcome.pk,
                ),
            )
            return HttpResponseRedirect(back)
        sample = list(failures.group_instances(user=request.user, key=key)[:20])
        return confirm_page(
            self,
            request,
            title=f"Retry all: {key.workflow} · {key.step or '—'}",
            question=(
                f"Retry every failed instance of this group ({key.error_type or 'no type'}: "
                f"{key.message[:300]}) from its failed steps, each with a fresh retry budget? "
                "It runs as a batch operation in the background."
            ),
            form=form,
            objects=[short_label(i) for i in sample],
            count=group.count,
            back_url=back,
            status=400 if confirmed else 200,
        )
