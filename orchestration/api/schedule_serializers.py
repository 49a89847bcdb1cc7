"""Input and output serializers of the schedule API (``/api/v1/schedules/``).

Input serializers check JSON types strictly; what a value means (a valid cron expression, a
known workflow, an input matching its schema, a real time zone) is checked by the service,
:mod:`orchestration.schedules`, which answers 400 with the field named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orchestration.schedule_models import FireOutcome, OverlapPolicy, Schedule, ScheduleFire
from orchestration.schedule_timing import Timing, describe, next_fire_times

from .serializers import (
    JSONObjectField,
    RejectUnknownFieldsMixin,
    SealedJSONField,
    StrictCharField,
    StrictIntegerField,
)

NEXT_FIRE_TIMES = 5


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean: ``"true"``, ``1`` and ``"yes"`` are refused."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class ScheduleWriteSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    name = StrictCharField(max_length=100, help_text="Unique; letters, digits, space, _ . : -")
    workflow = StrictCharField(max_length=100, help_text="A registered workflow name.")
    version = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="A registered version; null: the newest at each fire.",
    )
    input = JSONObjectField(
        required=False,
        help_text="The fixed input of every run, checked against the workflow's input "
        "schema; its sensitive fields are sealed (and masked when read back). At most "
        "SIGNOFF_SCHEDULE_MAX_INPUT_BYTES (64 KiB) as JSON.",
    )
    business_key_template = StrictCharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="Business key of each run; placeholders {schedule}, {fire_time}, {date}, "
        "{time} (in the schedule's time zone).",
    )
    cron = StrictCharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="Five-field cron expression (minute hour day-of-month month day-of-week) "
        "read in time_zone. Exactly one of cron and interval_seconds.",
    )
    interval_seconds = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Fire every N seconds (anchored at the Unix epoch, UTC).",
    )
    time_zone = StrictCharField(
        max_length=64, required=False, help_text="IANA name, such as Europe/Berlin (UTC)."
    )
    jitter_seconds = StrictIntegerField(
        required=False,
        min_value=0,
        help_text="Delay each fire by a deterministic 0..N seconds (smaller than an interval).",
    )
    overlap = serializers.ChoiceField(
        choices=OverlapPolicy.choices,
        required=False,
        help_text="While an instance of this schedule is still running: skip the fire, "
        "buffer one fire until it ends, or start anyway.",
    )
    catchup_window_seconds = StrictIntegerField(
        required=False,
        min_value=0,
        help_text="After downtime, fires at most this late (plus the sweeper's grace) still "
        "run; older ones are recorded as missed.",
    )


class ScheduleCreateSerializer(ScheduleWriteSerializer):
    paused = StrictBooleanField(required=False, help_text="Create it paused.")
    paused_note = StrictCharField(max_length=500, required=False, allow_blank=True)


class SchedulePauseSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    note = StrictCharField(
        max_length=500, required=False, default="", allow_blank=True, help_text="Why."
    )


class ScheduleTriggerSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    fire_time = serializers.DateTimeField(
        required=False,
        help_text="Names the run (its idempotency): a second trigger with the same fire "
        "time answers 409. Default: now, to the second. Within a day of now.",
    )

    def validate_fire_time(self, value: datetime) -> datetime:
        return value if timezone.is_aware(value) else timezone.make_aware(value)


class ScheduleFireSerializer(serializers.ModelSerializer):
    outcome = serializers.ChoiceField(choices=FireOutcome.choices)
    instance = serializers.UUIDField(source="instance_id", allow_null=True, read_only=True)

    class Meta:
        model = ScheduleFire
        fields = ["fire_time", "outcome", "instance", "count", "triggered_by", "note", "at"]


class ScheduleLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    fires = serializers.CharField()


class ScheduleSerializer(serializers.ModelSerializer):
    input = SealedJSONField(help_text="Sensitive fields masked.")
    overlap = serializers.ChoiceField(choices=OverlapPolicy.choices)
    description = serializers.SerializerMethodField()
    next_fire_times = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    links = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = [
            "id",
            "name",
            "workflow",
            "version",
            "input",
            "business_key_template",
            "cron",
            "interval_seconds",
            "time_zone",
            "jitter_seconds",
            "overlap",
            "catchup_window_seconds",
            "paused",
            "paused_note",
            "description",
            "next_fire_at",
            "fire_due_at",
            "next_fire_times",
            "last_fire_at",
            "buffered_fire_at",
            "created_by",
            "created_at",
            "updated_at",
            "links",
        ]

    def get_description(self, obj: Schedule) -> str:
        """The timing in words (cron-descriptor, or "every N minutes")."""
        return describe(Timing.of(obj))

    @extend_schema_field(serializers.ListField(child=serializers.DateTimeField()))
    def get_next_fire_times(self, obj: Schedule) -> list[str]:
        """The next five nominal fire times (ISO 8601, UTC); none while paused."""
        if obj.paused or obj.next_fire_at is None:
            return []
        timing = Timing.of(obj)
        first = obj.next_fire_at
        rest = next_fire_times(timing, first, NEXT_FIRE_TIMES - 1)
        return [moment.isoformat() for moment in [first, *rest]]

    @extend_schema_field(ScheduleLinksSerializer)
    def get_links(self, obj: Schedule) -> dict[str, Any]:
        return {
            "self": f"/api/v1/schedules/{obj.pk}/",
            "fires": f"/api/v1/schedules/{obj.pk}/fires/",
        }
