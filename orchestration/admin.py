"""The operators' admin: find stuck or failed instances, read their history, act on them.

Everything shown is read-only: instances, steps and events change only through the engine's
services, and events are never added, changed or deleted here. Actions (bulk on a filtered
list, or on one instance or step) ask for confirmation, call one service each with the
operator as the actor, and report what succeeded and what was refused and why. Acting needs
``orchestration.operate_instance``; staff with view permissions only see, and get 403 when
they post an action anyway.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import PeriodicTask

from . import jsonsafe, sealing
from .errors import InvalidInput, NotAllowed, SignoffError
from .models import Event, StepRun, WorkflowInstance
from .selectors import stuck_q
from .views import (
    INSTANCE_OPERATIONS,
    STEP_OPERATIONS,
    Operation,
    can_operate,
    compact_json,
    human_duration,
    operate,
    pretty_json,
    short_label,
    status_url,
)

CURRENT_STATES = ["running", "retrying", "scheduled", "waiting", "failed", "timed_out"]


# -- building blocks (also used by the approvals and integrations admins) --------------------------


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


def pill(state: str, label: str | None = None) -> str:
    return format_html('<span class="so-pill so-{}">{}</span>', state, label or state)


def json_block(value: Any, *, reveal: bool = False) -> str:
    """Indented JSON; sealed fields opened only with ``reveal`` (see ``views.masked``)."""
    if value is None:
        return "—"
    return format_html('<pre class="so-json">{}</pre>', pretty_json(value, reveal=reveal))


def coarse_age(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def clock(moment: Any, *, millis: bool = False) -> str:
    """A time of day (the date and zone on hover): rows stay one line high."""
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    shown = local.strftime("%H:%M:%S") + (f".{local.microsecond // 1000:03d}" if millis else "")
    return format_html('<time title="{}">{}</time>', local.isoformat(), shown)


def json_snippet(value: Any, *, reveal: bool = False, limit: int = 60) -> str:
    """Short JSON on one line; longer values unfold to the indented whole."""
    text = compact_json(value, reveal=reveal)
    if not text:
        return "—"
    if len(text) <= limit:
        return format_html('<code class="so-data">{}</code>', text)
    return format_html(
        '<details class="so-more"><summary><code class="so-data">{}…</code></summary>'
        '<pre class="so-json">{}</pre></details>',
        text[: limit - 1],
        pretty_json(value, reveal=reveal),
    )


def _reveal(obj: Any) -> bool:
    return bool(getattr(obj, "_signoff_reveal", False))


def error_block(error: Any) -> str:
    """An error ``{type, message, traceback}``: the message, the traceback collapsed."""
    if not isinstance(error, dict) or not error:
        return "—"
    kind = str(error.get("type", "")).rsplit(".", 1)[-1]
    message = str(error.get("message", ""))
    summary = f"{kind}: {message}" if kind else message
    tb = error.get("traceback") or ""
    if not tb:
        return format_html('<span class="so-error">{}</span>', summary)
    return format_html(
        '<details class="so-tb"><summary>{}</summary><pre>{}</pre></details>', summary, tb
    )


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


def report_to(modeladmin: admin.ModelAdmin, request: HttpRequest, lines: list[tuple[int, str]]):
    for level, text in lines:
        modeladmin.message_user(request, text, level)


# -- filters -----------------------------------------------------------------------------------


class StuckFilter(admin.SimpleListFilter):
    title = "stuck"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Stuck now")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(stuck_q(timezone.now()))
        return queryset


class FailedRecentlyFilter(admin.SimpleListFilter):
    title = "failed"
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
    title = "paused"
    parameter_name = "paused"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Paused"), ("no", "Not paused")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(paused_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(paused_at__isnull=True)
        return queryset


# -- inlines -----------------------------------------------------------------------------------


class _InstanceChildInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False
    reveal = False  # set per request: may the user see sealed fields?

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("orchestration.view_workflowinstance")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StepRunInline(_InstanceChildInline):
    model = StepRun
    verbose_name_plural = "Steps"
    fields = [
        "name",
        "kind",
        "state_pill",
        "attempt",
        "started",
        "took",
        "next_attempt",
        "output_snippet",
        "last_error",
        "step_actions",
    ]
    readonly_fields = fields
    ordering = ["position"]
    can_operate = False  # set per request by WorkflowInstanceAdmin.get_inline_instances

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("instance")

    @admin.display(description="state")
    def state_pill(self, obj: StepRun) -> str:
        return pill(obj.state, obj.get_state_display())

    @admin.display(description="started")
    def started(self, obj: StepRun) -> str:
        return clock(obj.started_at)

    @admin.display(description="took")
    def took(self, obj: StepRun) -> str:
        if obj.started_at is None:
            return "—"
        return human_duration((obj.finished_at or timezone.now()) - obj.started_at)

    @admin.display(description="next attempt")
    def next_attempt(self, obj: StepRun) -> str:
        if obj.state not in ("retrying", "scheduled") or obj.next_attempt_at is None:
            return "—"
        return clock(obj.next_attempt_at)

    @admin.display(description="output")
    def output_snippet(self, obj: StepRun) -> str:
        return json_snippet(obj.output, reveal=self.reveal, limit=28)

    @admin.display(description="last error")
    def last_error(self, obj: StepRun) -> str:
        return error_block(obj.error)

    @admin.display(description="actions")
    def step_actions(self, obj: StepRun) -> str:
        if not self.can_operate or obj.pk is None:
            return ""
        ops = [op for op in STEP_OPERATIONS.values() if op.offered(obj.instance, obj)]
        return format_html_join(
            " ",
            '<a class="button so-small" href="{}">{}</a>',
            (
                (
                    reverse(
                        "admin:orchestration_workflowinstance_step_operate",
                        args=[obj.instance_id, obj.pk, op.name],
                    ),
                    op.label,
                )
                for op in ops
            ),
        )


class EventInline(_InstanceChildInline):
    model = Event
    verbose_name_plural = "History (events, read-only)"
    fields = ["seq", "at_clock", "type", "step", "attempt", "actor", "data_snippet"]
    readonly_fields = fields
    ordering = ["seq"]

    @admin.display(description="at")
    def at_clock(self, obj: Event) -> str:
        return clock(obj.at, millis=True)

    @admin.display(description="data")
    def data_snippet(self, obj: Event) -> str:
        data = obj.data if isinstance(obj.data, dict) else {}
        error = data.get("error")
        if isinstance(error, dict) and "traceback" in error:
            # the traceback is on the step (and in the downloads); keep the row readable
            data = {**data, "error": {k: v for k, v in error.items() if k != "traceback"}}
        return json_snippet(data, reveal=self.reveal)


# -- instances ---------------------------------------------------------------------------------


def _bulk_action(op: Operation) -> Any:
    def action(modeladmin: WorkflowInstanceAdmin, request: HttpRequest, queryset: QuerySet):
        return modeladmin.run_bulk(request, queryset, op)

    action.__name__ = f"op_{op.name}"
    return admin.action(description=f"{op.label} (selected instances)…", permissions=["operate"])(
        action
    )


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
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
    search_help_text = "An instance id (or its first 8 characters) or a business key (prefix)."
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    actions = [_bulk_action(op) for op in INSTANCE_OPERATIONS.values()]
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
                ]
            },
        ),
        (
            "Times",
            {
                "fields": [
                    ("created_at", "started_at", "finished_at"),
                    ("updated_at", "deadline_at"),
                    "last_seq",
                ]
            },
        ),
        ("Data", {"fields": ["input_pretty", "output_pretty", "error_pretty"]}),
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
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "deadline_at",
        "last_seq",
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
    @admin.display(description="id", ordering="id")
    def short_id(self, obj: WorkflowInstance) -> str:
        return format_html('<code title="{}">{}</code>', obj.pk, str(obj.pk)[:8])

    @admin.display(description="workflow", ordering="workflow")
    def workflow_version(self, obj: WorkflowInstance) -> str:
        return f"{obj.workflow} v{obj.version}"

    @admin.display(description="state", ordering="state")
    def state_pill(self, obj: WorkflowInstance) -> str:
        html = pill(obj.state, obj.get_state_display())
        if obj.paused_at:
            html = format_html("{} {}", html, pill("paused", "paused"))
        return html

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: WorkflowInstance) -> str:
        return format_html(
            '<span title="created {}, last change {}">{}</span>',
            timezone.localtime(obj.created_at).isoformat(timespec="seconds"),
            timezone.localtime(obj.updated_at).isoformat(timespec="seconds"),
            coarse_age(timezone.now() - obj.created_at),
        )

    @admin.display(description="current step")
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

    @admin.display(description="status page")
    def status_page(self, obj: WorkflowInstance) -> str:
        return format_html('<a href="{}">Status&nbsp;→</a>', status_url(obj))

    @admin.display(description="input")
    def input_pretty(self, obj: WorkflowInstance) -> str:
        return json_block(obj.input, reveal=_reveal(obj))

    @admin.display(description="output")
    def output_pretty(self, obj: WorkflowInstance) -> str:
        return json_block(obj.output, reveal=_reveal(obj))

    @admin.display(description="error")
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
                extra["operations"] = [
                    (op, reverse("admin:orchestration_workflowinstance_operate", args=[obj.pk, n]))
                    for n, op in INSTANCE_OPERATIONS.items()
                    if op.offered(obj, None)
                ]
        return super().change_view(request, object_id, form_url, extra)

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
        if not self.has_operate_permission(request):
            raise PermissionDenied("You may not operate workflow instances.")
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
        confirmed = request.method == "POST" and "confirm" in request.POST
        form = op.form(request.POST if confirmed else None)
        status = 200
        if confirmed and form.is_valid():
            try:
                op.run(target, request.user, form.cleaned_data)
            except (InvalidInput, NotAllowed) as exc:
                # Bad input (400) or a refusal of the policy (403): the form again, with why.
                form.add_error(None, exc.message)
                status = exc.status
            except SignoffError as exc:
                self.message_user(request, f"Refused: {exc.message}", messages.ERROR)
                return HttpResponseRedirect(back)
            else:
                self.message_user(request, f"{subject} {op.done}.", messages.SUCCESS)
                return HttpResponseRedirect(back)
        return confirm_page(
            self,
            request,
            title=f"{op.label.rstrip('…')}: {subject}",
            question=op.question,
            form=form,
            objects=[target],
            count=1,
            danger=op.danger,
            back_url=back,
            status=status,
        )

    def operate_view(self, request: HttpRequest, object_id: Any, name: str) -> HttpResponse:
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        instance = self._instance_for(request, object_id)
        op = INSTANCE_OPERATIONS.get(name)
        if op is None:
            raise Http404("No such action.")
        return self._single(request, instance, op, instance, f"Instance {short_label(instance)}")

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
        return self._single(request, instance, op, step, f"Step {step.name}")

    def run_bulk(self, request: HttpRequest, queryset: QuerySet, op: Operation) -> Any:
        """The bulk action: a confirmation page first, then one service call per instance."""
        if not self.has_operate_permission(request):
            raise PermissionDenied("You may not operate workflow instances.")
        confirmed = "confirm" in request.POST
        form = op.form(request.POST if confirmed else None)
        if confirmed and form.is_valid():
            targets = list(queryset.order_by("created_at"))
            report = operate(op, targets, user=request.user, data=form.cleaned_data)
            report_to(self, request, report.messages(op))
            return None  # back to the (filtered) list
        select_across = request.POST.get("select_across") == "1"
        return confirm_page(
            self,
            request,
            title=f"{op.label}: confirm",
            question=op.question,
            form=form,
            objects=list(queryset[:50]),
            count=queryset.count(),
            danger=op.danger,
            action=f"op_{op.name}",
            select_across=select_across,
            selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            back_url=request.get_full_path(),
            status=400 if confirmed else 200,
        )


@admin.register(Event)
class EventAdmin(StrictActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every event of every instance, read-only (e.g. everything one operator did)."""

    list_display = ["at", "instance_link", "seq", "type", "step", "attempt", "actor"]
    list_select_related = ["instance"]
    search_fields = ["=type", "=actor", "=step"]
    search_help_text = "An exact event type, actor (e.g. user:ops, sweeper) or step name."
    show_full_result_count = False
    list_per_page = 100
    ordering = ["-id"]  # newest first, on the primary key index
    fields = ["instance_link", "seq", "at", "type", "step", "attempt", "actor", "data_pretty"]
    readonly_fields = fields

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj._signoff_reveal = sealing.can_view(request.user)
        return obj

    @admin.display(description="instance")
    def instance_link(self, obj: Event) -> str:
        return format_html(
            '<a href="{}">{} {}</a>',
            status_url(obj.instance_id),
            obj.instance.workflow,
            str(obj.instance_id)[:8],
        )

    @admin.display(description="data")
    def data_pretty(self, obj: Event) -> str:
        return json_block(obj.data, reveal=_reveal(obj))


# -- periodic tasks (django-celery-beat): the sweepers' schedule ----------------------------------


class PeriodicTaskForm(beat_admin.PeriodicTaskForm):
    """django-celery-beat's form checks args and kwargs with a plain JSON decode, which lets
    a RecursionError through (a 500 for JSON nested a few thousand deep) and does not check
    headers at all, though beat decodes them for every run. Each is parsed here safely: a
    clear form error, and nothing stored that would stop beat."""

    def _clean_json(self, field: str) -> str:
        value = self.cleaned_data[field]
        if value:
            try:
                jsonsafe.loads(value)
            except jsonsafe.JSONInputError as exc:
                raise forms.ValidationError(str(exc)) from None
        return value

    def clean_headers(self) -> str:
        return self._clean_json("headers")


class PeriodicTaskAdmin(beat_admin.PeriodicTaskAdmin):
    form = PeriodicTaskForm


if admin.site.is_registered(PeriodicTask):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, PeriodicTaskAdmin)

from . import token_admin  # noqa: E402, F401 - replaces DRF's token admin (keys never whole)
