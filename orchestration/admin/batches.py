"""Batch operations in the operators' admin: the instance list's "… selected (as a batch)"
actions, the "batch by filter" page (preview, then start), and the batches themselves,
read-only, with their progress bar and a cancel action. Each page calls one service of
:mod:`orchestration.batches`; acting needs ``orchestration.operate_instance``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from .. import batches
from ..batch_models import BATCH_ACTIVE, BatchAction, BatchItem, BatchOperation
from ..errors import SignoffError, localized
from ..models import InstanceState
from ..operator_actions import require_operator, short_label
from ..presentation import coarse_age, json_block, pill
from .shared import ReadOnlyAdminMixin, StrictActionsMixin, confirm_page

ACTION_HELP = {
    "retry": gettext_lazy(
        "Retry each failed instance from its failed steps (fresh retry budgets)."
    ),
    "cancel": gettext_lazy("Cancel each unfinished (or failed) instance and its open steps."),
    "pause": gettext_lazy("Pause each running instance: nothing new starts until resumed."),
    "resume": gettext_lazy("Resume (unpause) each paused instance."),
}


# -- forms -----------------------------------------------------------------------------------


class BatchConfirmForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        label=gettext_lazy("Reason"),
        help_text=gettext_lazy(
            "Required: why, for the audit trail (kept on the batch; cancel events carry it)."
        ),
    )
    rate = forms.FloatField(
        required=False,
        min_value=0.1,
        max_value=1000,
        label=gettext_lazy("Rate"),
        help_text=gettext_lazy(
            "Instances a second at most (empty: the default, SIGNOFF_BATCH_RATE)."
        ),
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason and self.fields["reason"].required:
            raise forms.ValidationError(_("A reason is required."))
        return reason


class BatchFilterForm(BatchConfirmForm):
    action = forms.ChoiceField(label=gettext_lazy("Action"), choices=BatchAction.choices)
    workflow = forms.CharField(label=gettext_lazy("Workflow"), required=False, max_length=200)
    version = forms.IntegerField(label=gettext_lazy("Version"), required=False, min_value=1)
    state = forms.ChoiceField(
        label=gettext_lazy("State"),
        required=False,
        choices=[("", gettext_lazy("any")), *InstanceState.choices],
    )
    failed_step = forms.CharField(label=gettext_lazy("Failed step"), required=False, max_length=200)
    error_type = forms.CharField(
        label=gettext_lazy("Error type"),
        required=False,
        max_length=200,
        help_text=gettext_lazy("Dotted name, or its last part (ValueError)."),
    )
    business_key_prefix = forms.CharField(
        label=gettext_lazy("Business key prefix"), required=False, max_length=200
    )
    created_from = forms.DateTimeField(
        label=gettext_lazy("Created from"),
        required=False,
        help_text=gettext_lazy("From (inclusive)."),
    )
    created_to = forms.DateTimeField(
        label=gettext_lazy("Created to"), required=False, help_text=gettext_lazy("To (exclusive).")
    )
    updated_from = forms.DateTimeField(label=gettext_lazy("Updated from"), required=False)
    updated_to = forms.DateTimeField(label=gettext_lazy("Updated to"), required=False)
    all = forms.BooleanField(
        required=False,
        label=gettext_lazy("All instances"),
        help_text=gettext_lazy("Confirms a batch with no filter."),
    )
    field_order = ["action", *batches.FILTER_KEYS, "all", "reason", "rate"]

    def __init__(self, *args: Any, preview: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if preview:  # a preview needs no reason yet
            self.fields["reason"].required = False

    def filter(self) -> dict[str, Any]:
        data = self.cleaned_data
        out: dict[str, Any] = {}
        for key in batches.FILTER_KEYS:
            value = data.get(key)
            if value in (None, ""):
                continue
            out[key] = value.isoformat() if hasattr(value, "isoformat") else value
        return out


def _run(request: HttpRequest, form: Any, **kwargs: Any) -> BatchOperation | batches.Preview | None:
    """Call :func:`batches.batch_create`; a refusal becomes a form error (None)."""
    try:
        return batches.batch_create(user=request.user, rate=form.cleaned_data.get("rate"), **kwargs)
    except SignoffError as exc:
        form.add_error(None, localized(exc))
        form.refused_status = exc.status
        return None


def _started(request: HttpRequest, batch: BatchOperation) -> HttpResponseRedirect:
    messages.success(
        request,
        ngettext(
            "Batch #%(id)s started: %(action)s of %(count)d instance, in the background.",
            "Batch #%(id)s started: %(action)s of %(count)d instances, in the background.",
            batch.total,
        )
        % {"id": batch.pk, "action": batch.action, "count": batch.total},
    )
    return HttpResponseRedirect(
        reverse("admin:orchestration_batchoperation_change", args=[batch.pk])
    )


# -- the instance list's actions ---------------------------------------------------------------


BATCH_CONFIRM_TITLES = {
    "retry": gettext_lazy("Retry selected instances as a batch: confirm"),
    "cancel": gettext_lazy("Cancel selected instances as a batch: confirm"),
    "pause": gettext_lazy("Pause selected instances as a batch: confirm"),
    "resume": gettext_lazy("Resume selected instances as a batch: confirm"),
}
BATCH_ACTION_LABELS = {
    "retry": gettext_lazy("Retry selected (as a batch)…"),
    "cancel": gettext_lazy("Cancel selected (as a batch)…"),
    "pause": gettext_lazy("Pause selected (as a batch)…"),
    "resume": gettext_lazy("Resume selected (as a batch)…"),
}


def batch_action(action: str) -> Any:
    """``action`` on the selected instances as one background batch (with a confirmation)."""

    def run(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> Any:
        require_operator(request.user)
        confirmed = request.method == "POST" and "confirm" in request.POST
        form = BatchConfirmForm(request.POST if confirmed else None)
        status = 200
        if confirmed:
            status = 400
            if form.is_valid():
                cap = settings.SIGNOFF_BATCH_MAX_INSTANCES  # one more: refused as too many
                rows = queryset.order_by().values_list("pk", flat=True)[: cap + 1]
                ids = [str(pk) for pk in rows]
                batch = _run(
                    request,
                    form,
                    action=action,
                    filter={"ids": ids},
                    reason=form.cleaned_data["reason"],
                )
                if batch is not None:
                    return _started(request, batch)
                status = getattr(form, "refused_status", 400)
        return confirm_page(
            modeladmin,
            request,
            title=str(BATCH_CONFIRM_TITLES[action]),
            question=_(
                "%(help)s A background job does it, throttled, each instance once; its page "
                "shows the progress. Instances the action does not apply to are skipped; those "
                "refused are reported with the reason."
            )
            % {"help": ACTION_HELP[action]},
            form=form,
            objects=[short_label(i) for i in queryset[:20]],
            count=queryset.count(),
            danger=action == "cancel",
            action=f"batch_{action}",
            select_across=request.POST.get("select_across") == "1",
            selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            back_url=request.get_full_path(),
            status=status,
        )

    run.__name__ = f"batch_{action}"
    return admin.action(
        description=BATCH_ACTION_LABELS.get(
            action, f"{action.capitalize()} selected (as a batch)…"
        ),
        permissions=["operate"],
    )(run)


BATCH_ACTIONS = [batch_action(action) for action in BatchAction.values]


# -- the batches -------------------------------------------------------------------------------


def progress_bar(batch: BatchOperation) -> str:
    return format_html(
        '<div class="so-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
        'aria-valuenow="{}" title="{} done, {} skipped, {} failed of {}">'
        '<span style="width: {}%"></span></div> <span class="so-progress-text">{} / {}</span>',
        batch.percent,
        batch.done,
        batch.skipped,
        batch.failed,
        batch.total,
        batch.percent,
        batch.handled,
        batch.total,
    )


@admin.register(BatchOperation)
class BatchOperationAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "action", "state_pill", "progress", "counts", "created"]
    list_filter = ["state", "action"]
    list_select_related = ["created_by"]
    list_per_page = 50
    ordering = ["-created_at"]
    actions = ["cancel_batches"]
    change_list_template = "admin/orchestration/batchoperation/change_list.html"
    change_form_template = "admin/orchestration/batchoperation/change_form.html"
    fields = [
        "id",
        ("action", "state_pill"),
        "progress",
        "counts",
        "filter_display",
        "reason",
        ("created_by", "actor", "rate"),
        ("created_at", "started_at", "finished_at", "heartbeat_at"),
        "cancelled_by",
        "error",
        "problems",
    ]
    readonly_fields = fields[:1] + [
        "action",
        "state_pill",
        "progress",
        "counts",
        "filter_display",
        "reason",
        "created_by",
        "actor",
        "rate",
        "created_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "cancelled_by",
        "error",
        "problems",
    ]

    # Operators see batches (they made them); view permissions on the model do too.
    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_operate_permission(request) or super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_operate_permission(request) or super().has_module_permission(request)

    @admin.display(description=gettext_lazy("state"), ordering="state")
    def state_pill(self, obj: BatchOperation) -> str:
        return pill(obj.state)

    @admin.display(description=gettext_lazy("progress"))
    def progress(self, obj: BatchOperation) -> str:
        return progress_bar(obj)

    @admin.display(description=gettext_lazy("created"), ordering="created_at")
    def created(self, obj: BatchOperation) -> str:
        who = obj.created_by.get_username() if obj.created_by else obj.actor
        return format_html(
            '<span title="{}">{} · {}</span>',
            obj.created_at.isoformat(timespec="seconds"),
            who,
            coarse_age(timezone.now() - obj.created_at),
        )

    @admin.display(description=gettext_lazy("filter"))
    def filter_display(self, obj: BatchOperation) -> str:
        ids = obj.filter.get("ids")
        if ids is None:
            return json_block(obj.filter)
        shown = ", ".join(ids[:5])
        more = _(", and %(count)s more") % {"count": len(ids) - 5} if len(ids) > 5 else ""
        return format_html(
            "{} <code>{}</code>{}",
            _("%(count)s ticked instance(s):") % {"count": len(ids)},
            shown,
            more,
        )

    @admin.display(description=gettext_lazy("done · skip · fail"))
    def counts(self, obj: BatchOperation) -> str:
        return f"{obj.done} · {obj.skipped} · {obj.failed}"

    @admin.display(description=gettext_lazy("skipped or failed (first 50)"))
    def problems(self, obj: BatchOperation) -> str:
        rows = list(
            BatchItem.objects.filter(batch=obj, outcome__in=["skipped", "failed"])
            .select_related("instance")
            .order_by("position")[:50]
        )
        if not rows:
            return "—"
        items = format_html_join(
            "",
            '<li><a href="{}"><code>{}</code></a> {} {}</li>',
            (
                (
                    reverse("admin:orchestration_workflowinstance_change", args=[row.instance_id]),
                    str(row.instance_id)[:8],
                    pill(row.outcome),
                    row.message,
                )
                for row in rows
            ),
        )
        return format_html('<ul class="so-problems">{}</ul>', items)

    @admin.action(description=gettext_lazy("Cancel selected batches…"), permissions=["operate"])
    def cancel_batches(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not (request.method == "POST" and "confirm" in request.POST):
            return confirm_page(
                self,
                request,
                title=_("Cancel batches: confirm"),
                question=_(
                    "Stop these batches: instances not handled yet are left as they are (what "
                    "was done stays done)."
                ),
                form=forms.Form(),
                objects=list(queryset[:20]),
                count=queryset.count(),
                danger=True,
                action="cancel_batches",
                select_across=request.POST.get("select_across") == "1",
                selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                back_url=request.get_full_path(),
            )
        done, refused = 0, []
        for batch in queryset:
            try:
                batches.batch_cancel(batch_id=batch.pk, user=request.user)
                done += 1
            except SignoffError as exc:
                refused.append(f"#{batch.pk}: {localized(exc)}")
        if done:
            messages.success(
                request,
                ngettext("%(count)d batch cancelled.", "%(count)d batches cancelled.", done)
                % {"count": done},
            )
        if refused:
            messages.warning(
                request, _("Refused — %(refusals)s") % {"refusals": "; ".join(refused[:20])}
            )
        return None

    # -- pages ---------------------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        return [
            path(
                "new/",
                self.admin_site.admin_view(self.by_filter_view),
                name="orchestration_batchoperation_by_filter",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        extra = dict(extra_context or {})
        extra["can_operate"] = self.has_operate_permission(request)
        extra["refresh"] = BatchOperation.objects.filter(state__in=BATCH_ACTIVE).exists()
        return super().changelist_view(request, extra)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if obj is not None:
            extra["refresh"] = obj.state in BATCH_ACTIVE
            extra["can_cancel"] = extra["refresh"] and self.has_operate_permission(request)
        return super().change_view(request, object_id, form_url, extra)

    def by_filter_view(self, request: HttpRequest) -> HttpResponse:
        """The "batch by filter" page: the form (prefilled from the query string, e.g. by the
        failures page), "Preview" shows the count and a sample, "Start" makes the batch."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        if not self.has_operate_permission(request):
            raise PermissionDenied(_("You may not operate workflow instances."))
        preview = None
        status = 200
        starting = request.method == "POST" and "start" in request.POST
        if request.method == "POST":
            form = BatchFilterForm(request.POST, preview=not starting)
            status = 400
            if form.is_valid():
                result = _run(
                    request,
                    form,
                    action=form.cleaned_data["action"],
                    filter=form.filter(),
                    reason=form.cleaned_data["reason"],
                    confirm_all=form.cleaned_data["all"],
                    dry_run=not starting,
                )
                if isinstance(result, BatchOperation):
                    return _started(request, result)
                if isinstance(result, batches.Preview):
                    preview, status = result, 200
                else:
                    status = getattr(form, "refused_status", 400)
        else:
            initial = {k: v for k, v in request.GET.items() if k in BatchFilterForm.base_fields}
            form = BatchFilterForm(initial=initial)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("New batch by filter"),
            "form": form,
            "preview": preview,
            "media": self.media,
        }
        return TemplateResponse(
            request, "admin/orchestration/batchoperation/by_filter.html", context, status=status
        )


__all__ = ["BATCH_ACTIONS", "BatchOperationAdmin"]
