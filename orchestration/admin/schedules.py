"""Schedules in the admin: list them with their next fire in words, add and change them
through the service's checks, pause, resume and fire them now, and read their fire records.

Adding, changing, pausing, resuming and firing need Django's model permissions on Schedule
(pause, resume and fire now are changes: ``orchestration.change_schedule``, as in the API); a
posted action the user may not run is a 403 (:class:`~.shared.StrictActionsMixin`). The stored
input is never shown unmasked: the form takes a new input or keeps the stored one.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timeuntil
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .. import schedules
from ..errors import SignoffError, localize, localized
from ..presentation import json_block
from ..schedule_models import Schedule, ScheduleFire
from ..schedule_timing import Timing, describe
from .shared import ReadOnlyAdminMixin, StrictActionsMixin

FORM_FIELDS = [
    "name",
    "workflow",
    "version",
    "business_key_template",
    "cron",
    "interval_seconds",
    "time_zone",
    "jitter_seconds",
    "overlap",
    "catchup_window_seconds",
]


class ScheduleForm(forms.ModelForm):
    new_input = forms.JSONField(
        required=False,
        label=gettext_lazy("Input"),
        help_text=gettext_lazy(
            "A JSON object, checked against the workflow's input schema. Leave empty "
            "to keep the stored input (shown above, sensitive fields masked)."
        ),
    )

    class Meta:
        model = Schedule
        fields = FORM_FIELDS

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        if self.instance.pk is None:
            self.fields["new_input"].help_text = _("A JSON object (empty: {}).")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        values = {field: cleaned.get(field) for field in FORM_FIELDS}
        values["cron"] = values["cron"] or ""
        if cleaned.get("new_input") is not None:
            values["input"] = cleaned["new_input"]
        existing = self.instance if self.instance.pk else None
        if existing is not None:
            values = {k: v for k, v in values.items() if k == "input" or v != getattr(existing, k)}
            values.setdefault("cron", cleaned.get("cron") or "")
            values.setdefault("interval_seconds", cleaned.get("interval_seconds"))
        try:
            schedules.schedule_check(values=values, user=self.user, schedule=existing)
        except SignoffError as exc:
            field = next(iter(exc.errors), None) if isinstance(exc.errors, dict) else None
            target = field if field in self.fields else None
            if field == "input":
                target = "new_input"
            message = localized(exc)
            raise ValidationError({target: message} if target else message) from None
        self.service_values = values
        return cleaned


@admin.register(Schedule)
class ScheduleAdmin(StrictActionsMixin, admin.ModelAdmin):
    form = ScheduleForm
    list_display = [
        "name",
        "workflow",
        "timing",
        "next_fire",
        "overlap",
        "paused",
        "last_fire_at",
        "fires_link",
    ]
    list_filter = ["paused", "overlap", "workflow"]
    search_fields = ["name", "workflow"]
    actions = ["pause_schedules", "resume_schedules", "trigger_schedules"]
    readonly_fields = [
        "stored_input",
        "timing",
        "next_fire",
        "paused",
        "paused_note",
        "next_fire_at",
        "fire_due_at",
        "last_fire_at",
        "buffered_fire_at",
        "created_by",
        "created_at",
        "updated_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Schedule]:
        return super().get_queryset(request).select_related("created_by")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change=change, **kwargs)

        class WithUser(form):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, user=request.user, **kw)

        return WithUser

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return [*FORM_FIELDS, "new_input"]
        return [*FORM_FIELDS, "stored_input", "new_input", *self.readonly_fields[1:]]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        """Writes go through the service (checked again there), never ``obj.save()``."""
        if change:
            saved = schedules.schedule_update(
                schedule_id=obj.pk, values=form.service_values, user=request.user
            )
        else:
            saved = schedules.schedule_create(values=form.service_values, created_by=request.user)
        obj.pk = saved.pk
        obj.__dict__.update({k: v for k, v in saved.__dict__.items() if not k.startswith("_")})

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        schedules.schedule_delete(schedule_id=obj.pk, user=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for pk in list(queryset.values_list("pk", flat=True)):
            schedules.schedule_delete(schedule_id=pk, user=request.user)

    @admin.display(description=gettext_lazy("Input"))
    def stored_input(self, obj: Schedule) -> str:
        return json_block(obj.input)

    @admin.display(description=gettext_lazy("When"))
    def timing(self, obj: Schedule) -> str:
        return localize(describe(Timing.of(obj)))

    @admin.display(description=gettext_lazy("Next fire"), ordering="fire_due_at")
    def next_fire(self, obj: Schedule) -> str:
        if obj.paused or obj.next_fire_at is None:
            return _("paused")
        now = timezone.now()
        if obj.next_fire_at <= now:
            return _("due now")
        local = timezone.localtime(obj.next_fire_at)
        return _("in %(time)s (%(at)s)") % {
            "time": timeuntil(obj.next_fire_at, now),
            "at": f"{local:%Y-%m-%d %H:%M %Z}",
        }

    @admin.display(description=gettext_lazy("Fires"))
    def fires_link(self, obj: Schedule) -> str:
        url = reverse("admin:orchestration_schedulefire_changelist")
        return format_html('<a href="{}?schedule__id__exact={}">{}</a>', url, obj.pk, _("fires"))

    @admin.action(description=gettext_lazy("Pause the selected schedules"), permissions=["change"])
    def pause_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for pk in list(queryset.values_list("pk", flat=True)):
            schedules.schedule_pause(schedule_id=pk, note="paused in the admin", user=request.user)
        self.message_user(
            request,
            _("Paused %(count)d schedule(s).") % {"count": queryset.count()},
            messages.SUCCESS,
        )

    @admin.action(description=gettext_lazy("Resume the selected schedules"), permissions=["change"])
    def resume_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for pk in list(queryset.values_list("pk", flat=True)):
            schedules.schedule_resume(schedule_id=pk, user=request.user)
        self.message_user(
            request,
            _("Resumed %(count)d schedule(s).") % {"count": queryset.count()},
            messages.SUCCESS,
        )

    @admin.action(
        description=gettext_lazy("Fire the selected schedules now"), permissions=["change"]
    )
    def trigger_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        """Fire each now under its overlap policy (as the API's trigger), reporting what each
        fire did; a schedule that already fired this second is reported, not fired again."""
        for schedule in list(queryset):
            try:
                fired = schedules.schedule_trigger(schedule_id=schedule.pk, user=request.user)
            except SignoffError as exc:
                self.message_user(request, f"{schedule.name}: {localized(exc)}", messages.ERROR)
                continue
            level = messages.SUCCESS if fired.outcome == "started" else messages.WARNING
            self.message_user(request, f"{schedule.name}: {fired.outcome}", level)


@admin.register(ScheduleFire)
class ScheduleFireAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every fire of every schedule, read-only: the record of what each fire time did."""

    list_display = ["schedule", "fire_time", "outcome", "instance_link", "count", "note", "at"]
    list_filter = ["outcome", "schedule"]
    list_select_related = ["schedule"]
    date_hierarchy = "fire_time"

    @admin.display(description=gettext_lazy("Instance"))
    def instance_link(self, obj: ScheduleFire) -> str:
        if obj.instance_id is None:
            return "-"
        url = reverse("admin:orchestration_workflowinstance_change", args=[obj.instance_id])
        return format_html('<a href="{}">{}</a>', url, obj.instance_id)
