from __future__ import annotations

from typing import Any

from rest_framework import serializers

from orchestration.models import Event, StepRun, WorkflowInstance


class StartInstanceSerializer(serializers.Serializer):
    workflow = serializers.CharField(max_length=100)
    input = serializers.JSONField(required=False, default=dict)
    business_key = serializers.CharField(max_length=200, required=False, default="",
                                         allow_blank=True)
    version = serializers.IntegerField(required=False, min_value=1, allow_null=True, default=None)

    def validate_input(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("input must be a JSON object")
        return value


class ErrorSerializer(serializers.Serializer):
    type = serializers.CharField()
    message = serializers.CharField()
    traceback = serializers.CharField(required=False)


class StepRunSerializer(serializers.ModelSerializer):
    error = serializers.JSONField(allow_null=True)
    output = serializers.JSONField(allow_null=True)

    class Meta:
        model = StepRun
        fields = ["name", "kind", "state", "attempt", "scheduled_at", "started_at",
                  "finished_at", "next_attempt_at", "timeout_at", "output", "error"]


class InstanceSerializer(serializers.ModelSerializer):
    steps = StepRunSerializer(many=True, read_only=True)
    input = serializers.JSONField()
    output = serializers.JSONField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    started_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    links = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowInstance
        fields = ["id", "workflow", "version", "state", "input", "output", "error",
                  "business_key", "idempotency_key", "started_by", "created_at", "started_at",
                  "finished_at", "deadline_at", "updated_at", "steps", "links"]

    def get_links(self, obj: WorkflowInstance) -> dict[str, str]:
        return {
            "self": f"/api/v1/instances/{obj.pk}/",
            "history": f"/api/v1/instances/{obj.pk}/history/",
        }


class EventSerializer(serializers.ModelSerializer):
    data = serializers.JSONField()

    class Meta:
        model = Event
        fields = ["seq", "type", "step", "attempt", "actor", "at", "data"]


class WorkflowSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    description = serializers.CharField()
    deadline = serializers.FloatField(allow_null=True, help_text="seconds")
    input_schema = serializers.JSONField(allow_null=True)
    steps = serializers.ListField(child=serializers.DictField())
