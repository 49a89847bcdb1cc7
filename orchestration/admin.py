from django.contrib import admin

from .models import Event, StepRun, WorkflowInstance


class StepRunInline(admin.TabularInline):
    model = StepRun
    extra = 0
    can_delete = False
    fields = [
        "name",
        "kind",
        "state",
        "attempt",
        "scheduled_at",
        "started_at",
        "finished_at",
        "next_attempt_at",
        "error",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


class EventInline(admin.TabularInline):
    model = Event
    extra = 0
    can_delete = False
    fields = ["seq", "type", "step", "attempt", "actor", "at", "data"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(admin.ModelAdmin):
    list_display = ["id", "workflow", "version", "state", "business_key", "created_at"]
    list_filter = ["state", "workflow"]
    search_fields = ["=id", "business_key"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in WorkflowInstance._meta.fields]
    inlines = [StepRunInline, EventInline]

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False
