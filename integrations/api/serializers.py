from __future__ import annotations

from rest_framework import serializers

from ..models import Alert


class AlertSerializer(serializers.ModelSerializer):
    rule = serializers.CharField(source="rule.name", read_only=True)
    rule_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "rule_id",
            "condition",
            "subject",
            "instance_id",
            "title",
            "state",
            "first_fired_at",
            "last_seen_at",
            "times_seen",
            "resolved_at",
            "resolved_by",
            "details",
            "deliveries",
        ]
        read_only_fields = fields
