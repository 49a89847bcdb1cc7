"""The operator actions of the instance admin: the bulk actions on a filtered list, and the
pages of one instance's and one step's actions (their URLs and views). Each asks first and
runs through the one confirm-and-run flow of :mod:`orchestration.operator_actions`, the same
as the status page's buttons; here only the admin's confirmation page and where to go back to
are chosen."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import path, reverse
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..models import StepRun, WorkflowInstance
from ..operator_actions import (
    INSTANCE_OPERATIONS,
    STEP_OPERATIONS,
    Operation,
    confirm_and_run,
    confirm_and_run_each,
    instance_operations,
    require_operator,
    short_label,
)
from .shared import confirm_page


def bulk_action(op: Operation) -> Any:
    """``op`` as an admin action on the selected instances (needs the operate permission)."""

    def action(modeladmin: InstanceOperationsMixin, request: HttpRequest, queryset: QuerySet):
        return modeladmin.run_bulk(request, queryset, op)

    action.__name__ = f"op_{op.name}"
    description = format_lazy(gettext_lazy("{action} (selected instances)…"), action=op.label)
    return admin.action(description=description, permissions=["operate"])(action)


class InstanceOperationsMixin:
    """For ``WorkflowInstanceAdmin``: the bulk actions' runner, the per-instance and per-step
    action pages and their URLs."""

    def offered_operations(self, obj: WorkflowInstance) -> list[tuple[Operation, str]]:
        """(operation, its admin page) for the buttons of ``obj``'s page (for operators)."""
        return [
            (op, reverse("admin:orchestration_workflowinstance_operate", args=[obj.pk, op.name]))
            for op in instance_operations(obj)
        ]

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<uuid:object_id>/operate/<slug:name>/",
                wrap(self.operate_view),
                name="orchestration_workflowinstance_operate",
            ),
            path(
                "<uuid:object_id>/steps/<int:step_id>/<slug:name>/",
                wrap(self.step_operate_view),
                name="orchestration_workflowinstance_step_operate",
            ),
            *super().get_urls(),
        ]

    def _instance_for(self, request: HttpRequest, object_id: Any) -> WorkflowInstance:
        obj = self.get_object(request, str(object_id))
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404("No such instance.")
        require_operator(request.user)  # before the action's name is looked at
        return obj

    def _single(
        self,
        request: HttpRequest,
        instance: WorkflowInstance,
        op: Operation,
        target: Any,
        subject: str,
    ) -> HttpResponse:
        back = reverse("admin:orchestration_workflowinstance_change", args=[instance.pk])
        confirmation = confirm_and_run(request, op, target, subject=subject, invalid_status=200)
        if confirmation is None:
            return HttpResponseRedirect(back)
        return confirm_page(
            self,
            request,
            title=f"{op.title}: {subject}",
            question=op.question,
            form=confirmation.form,
            objects=[target],
            count=1,
            danger=op.danger,
            back_url=back,
            status=confirmation.status,
        )

    def operate_view(self, request: HttpRequest, object_id: Any, name: str) -> HttpResponse:
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        instance = self._instance_for(request, object_id)
        op = INSTANCE_OPERATIONS.get(name)
        if op is None:
            raise Http404("No such action.")
        return self._single(
            request,
            instance,
            op,
            instance,
            _("Instance %(label)s") % {"label": short_label(instance)},
        )

    def step_operate_view(
        self, request: HttpRequest, object_id: Any, step_id: int, name: str
    ) -> HttpResponse:
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        instance = self._instance_for(request, object_id)
        op = STEP_OPERATIONS.get(name)
        step = StepRun.objects.filter(pk=step_id, instance=instance).first()
        if op is None or step is None:
            raise Http404("No such step or action.")
        return self._single(request, instance, op, step, _("Step %(name)s") % {"name": step.name})

    def run_bulk(self, request: HttpRequest, queryset: QuerySet, op: Operation) -> Any:
        """The bulk action: a confirmation page first, then one service call per instance."""
        confirmation = confirm_and_run_each(request, op, queryset.order_by("created_at"))
        if confirmation is None:
            return None  # back to the (filtered) list
        return confirm_page(
            self,
            request,
            title=f"{op.label}: confirm",
            question=op.question,
            form=confirmation.form,
            objects=list(queryset[:50]),
            count=queryset.count(),
            danger=op.danger,
            action=f"op_{op.name}",
            select_across=request.POST.get("select_across") == "1",
            selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            back_url=request.get_full_path(),
            status=confirmation.status,
        )
