"""Input and output serializers of the workflow and instance API.

Input fields are strict about JSON types (a number is not a string, ``"2"`` is not an
integer) and refuse what the database cannot store (NUL characters, lone surrogates, absurd
nesting), so bad input is a 400 and never a 500 halfway through a write.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orchestration import sealing, selectors
from orchestration.jsonsafe import storable_json_problem
from orchestration.jsonsafe import string_problem as _string_problem
from orchestration.models import Event, InstanceState, Signal, StepRun, StepState, WorkflowInstance
from orchestration.selectors import map_item_counts


class StrictCharField(serializers.CharField):
    """A JSON string, kept as sent (no type coercion, no trimming), storable in PostgreSQL."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        problem = _string_problem(data)
        if problem:
            raise serializers.ValidationError(problem)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: ``"2"``, ``2.0`` and ``true`` are refused."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class JSONObjectField(serializers.JSONField):
    """A JSON object that the database can store."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError("must be a JSON object")
        # Checked before DRF's own round trip through json.dumps, which recurses.
        problem = storable_json_problem(data)
        if problem:
            raise serializers.ValidationError(problem)
        return super().to_internal_value(data)


class RejectUnknownFieldsMixin:
    # A typo ("inputs") is a 400 naming the field, not a silently ignored key.

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))  # type: ignore[attr-defined]
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().validate(attrs)  # type: ignore[misc]


class RejectUnknownFieldsSchema(OpenApiSerializerExtension):
    """The schema of a request that refuses unknown fields says so (``additionalProperties:
    false``): a body the schema allows is one the API accepts."""

    target_class = RejectUnknownFieldsMixin
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema


class StartInstanceSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    workflow = StrictCharField(max_length=100, help_text="A registered workflow name.")
    input = JSONObjectField(
        required=False,
        default=dict,
        help_text="The instance input; validated against the workflow's input schema.",
    )
    business_key = StrictCharField(max_length=200, required=False, default="", allow_blank=True)
    version = StrictIntegerField(
        required=False,
        min_value=1,
        allow_null=True,
        default=None,
        help_text="A registered version; the newest when omitted.",
    )


class StartInstanceMultipartSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    # The multipart form of a start (documentation; the view reads the form itself and, like
    # the JSON body, refuses unknown fields).

    workflow = serializers.CharField(max_length=100, help_text="A registered workflow name.")
    input = serializers.CharField(
        required=False,
        help_text="The instance input as a JSON object (a string), without the files' field: "
        "the workflow's `attachments` input field is filled from the files.",
    )
    business_key = serializers.CharField(max_length=200, required=False, allow_blank=True)
    version = serializers.IntegerField(required=False, min_value=1)
    files = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        help_text="The files (repeat the field for several). Their type is read from their "
        "bytes and must be one of SIGNOFF_FILE_TYPES; limits: SIGNOFF_FILE_MAX_BYTES per file, "
        "SIGNOFF_FILE_MAX_COUNT per upload.",
    )


class AttachmentLinksSerializer(serializers.Serializer):
    download = serializers.CharField()


class AttachmentSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    content_type = serializers.CharField(help_text="Read from the file's bytes.")
    size = serializers.IntegerField(help_text="bytes")
    sha256 = serializers.CharField()
    context = serializers.CharField(
        help_text="What the file was attached to: start, request:<id>, comment:<id>, "
        "revision:<round>."
    )
    uploaded_by = serializers.SerializerMethodField()
    uploaded_at = serializers.DateTimeField()
    links = serializers.SerializerMethodField()

    def get_uploaded_by(self, obj: Any) -> str | None:
        return obj.uploaded_by.get_username() if obj.uploaded_by_id else None

    @extend_schema_field(AttachmentLinksSerializer)
    def get_links(self, obj: Any) -> dict[str, str]:
        return {"download": f"/api/v1/files/{obj.pk}/"}


class CancelInstanceSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    reason = StrictCharField(max_length=1000, required=False, default="", allow_blank=True)


class ErrorSerializer(serializers.Serializer):
    # Every error response: a message and a stable machine-readable code.

    detail = serializers.CharField()
    code = serializers.CharField()
    fields = serializers.DictField(
        required=False, help_text="Field errors, by field name, as DRF gives them."
    )


# One DateTimeField's output for the hand-built representations below: ISO 8601 in the current
# time zone, "Z" for UTC, None for no time (what DRF's field gives).
TIMESTAMP = serializers.DateTimeField()


def _timestamp(value: Any) -> str | None:
    return TIMESTAMP.to_representation(value) if value else None


def _shown_json(value: Any, context: dict[str, Any], where: str) -> Any:
    # SealedJSONField's output (below), None kept as None as DRF's loop keeps it.
    if value is None:
        return None
    if context.get("reveal"):
        return sealing.reveal(value, where=where)
    return sealing.masked(value)


class SealedJSONField(serializers.JSONField):
    """JSON as a reader may see it (:func:`orchestration.sealing.masked`): sensitive (sealed)
    fields and the values of secret-looking keys show as a mask, or sealed fields are opened
    when the serializer's context says ``reveal`` (someone with orchestration.view_sensitive,
    on a detail)."""

    def to_representation(self, value: Any) -> Any:
        if self.context.get("reveal"):
            return sealing.reveal(value, where=self.field_name)
        return sealing.masked(value)


class MapItemCountsSerializer(serializers.Serializer):
    """A map step's items by state (as committed when read)."""

    total = serializers.IntegerField()
    pending = serializers.IntegerField(help_text="not started yet")
    scheduled = serializers.IntegerField()
    running = serializers.IntegerField()
    retrying = serializers.IntegerField(help_text="waiting for their next attempt")
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    in_flight = serializers.IntegerField(help_text="scheduled + running + retrying")


class StepRunSerializer(serializers.ModelSerializer):
    state = serializers.ChoiceField(choices=StepState.choices)
    error = serializers.JSONField(allow_null=True, help_text="type, message, traceback")
    output = SealedJSONField(allow_null=True)
    items = serializers.SerializerMethodField(
        help_text="A map step's items by outcome (null for other kinds, or before its items "
        "exist); never one entry per item."
    )
    undo_failed = serializers.SerializerMethodField(
        help_text="True when the step's compensation failed for good (state compensating): "
        "retry the instance (the undo) or resolve it by hand."
    )

    class Meta:
        model = StepRun
        fields = [
            "name",
            "kind",
            "state",
            "undo_failed",
            "attempt",
            "scheduled_at",
            "started_at",
            "finished_at",
            "next_attempt_at",
            "timeout_at",
            "output",
            "error",
            "items",
        ]

    @extend_schema_field(MapItemCountsSerializer(allow_null=True))
    def get_items(self, obj: StepRun) -> dict[str, int] | None:
        counts = self.context.get("map_counts")
        if counts is not None:  # a list: counted for the whole page at once
            return counts.get(obj.pk)
        return map_item_counts(obj)

    def get_undo_failed(self, step: StepRun) -> bool:
        return step.shown_state == "undo_failed"

    def to_representation(self, step: StepRun) -> dict[str, Any]:
        # The fields declared above, built directly (see InstanceSerializer.to_representation).
        return step_data(step, self.context)


def step_data(step: StepRun, context: dict[str, Any]) -> dict[str, Any]:
    """:class:`StepRunSerializer`'s representation of ``step``, built without DRF's field loop
    (a test holds it equal to the generic one)."""
    counts = context.get("map_counts")
    return {
        "name": step.name,
        "kind": step.kind,
        "state": str(step.state),
        "undo_failed": step.shown_state == "undo_failed",
        "attempt": step.attempt,
        "scheduled_at": _timestamp(step.scheduled_at),
        "started_at": _timestamp(step.started_at),
        "finished_at": _timestamp(step.finished_at),
        "next_attempt_at": _timestamp(step.next_attempt_at),
        "timeout_at": _timestamp(step.timeout_at),
        "output": _shown_json(step.output, context, "output"),
        "error": step.error,
        "items": counts.get(step.pk) if counts is not None else map_item_counts(step),
    }


class InstanceLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    history = serializers.CharField()
    files = serializers.CharField()
    status_page = serializers.CharField()


class ParentLinkSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow = serializers.CharField()
    step = serializers.CharField(help_text="The parent's child step that started this one.")
    item = serializers.IntegerField(
        required=False, help_text="For a child of a map step's item: the item's index."
    )


class ChildLinkSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow = serializers.CharField()
    # Not an enum of its own: drf-spectacular would name the instance states' enum apart.
    state = serializers.CharField(help_text="The child's state (an instance state).")
    step = serializers.CharField(help_text="The child step of this instance that started it.")
    attempt = serializers.IntegerField(help_text="The step's attempt it was started for.")


class InstanceSerializer(serializers.ModelSerializer):
    state = serializers.ChoiceField(choices=InstanceState.choices)
    steps = StepRunSerializer(many=True, read_only=True)
    input = SealedJSONField()
    output = SealedJSONField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    started_by = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Username of who started it; null when started by the system.",
    )
    links = serializers.SerializerMethodField()
    parent = serializers.SerializerMethodField()
    children = serializers.SerializerMethodField()
    schedule = serializers.IntegerField(
        source="schedule_id",
        read_only=True,
        allow_null=True,
        help_text="The schedule that started it (GET /api/v1/schedules/{id}/); null if none.",
    )
    scheduled_for = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="That schedule's fire time; null if none."
    )

    class Meta:
        model = WorkflowInstance
        fields = [
            "id",
            "workflow",
            "version",
            "state",
            "input",
            "output",
            "error",
            "business_key",
            "idempotency_key",
            "started_by",
            "created_at",
            "started_at",
            "finished_at",
            "deadline_at",
            "updated_at",
            "schedule",
            "scheduled_for",
            "steps",
            "parent",
            "children",
            "links",
        ]

    @extend_schema_field(ParentLinkSerializer(allow_null=True))
    def get_parent(self, obj: WorkflowInstance) -> dict[str, str] | None:
        """The instance whose child step (or map step's item) started this one (null for a
        top-level one)."""
        step, item = selectors.parent_step_of(obj)
        if step is None:
            return None
        link = {"id": str(step.instance_id), "workflow": step.instance.workflow, "step": step.name}
        return link if item is None else {**link, "item": item}

    @extend_schema_field(ChildLinkSerializer(many=True))
    def get_children(self, obj: WorkflowInstance) -> list[dict[str, Any]]:
        """The child workflows this instance's child steps started, one per attempt."""
        links = getattr(obj, "child_links", None)
        if links is None:
            links = selectors.attach_children([obj])[0].child_links
        return [
            {
                "id": str(child.pk),
                "workflow": child.workflow,
                "state": child.state,
                "step": step,
                "attempt": child.parent_attempt,
            }
            for child, step in links
        ]

    @extend_schema_field(InstanceLinksSerializer)
    def get_links(self, obj: WorkflowInstance) -> dict[str, str]:
        return {
            "self": f"/api/v1/instances/{obj.pk}/",
            "history": f"/api/v1/instances/{obj.pk}/history/",
            "files": f"/api/v1/instances/{obj.pk}/files/",
            "status_page": f"/instances/{obj.pk}/",
        }

    def to_representation(self, obj: WorkflowInstance) -> dict[str, Any]:
        # The fields declared above, built directly: DRF's generic loop builds every field
        # (and the steps' nested serializer) again for each response, which was a third of a
        # start's time through the API (bench/api.py --profile). A test holds it equal to the
        # generic representation, field by field. The answer to a start (context
        # ``as_started``) shows the new instance as its transaction wrote it: its steps as the
        # engine built them (``started_steps``), no query, and no children yet.
        context = self.context
        if context.get("as_started"):
            steps, children = obj.started_steps, []
        else:
            steps, children = obj.steps.all(), self.get_children(obj)
        return {
            "id": str(obj.pk),
            "workflow": obj.workflow,
            "version": obj.version,
            "state": str(obj.state),
            "input": _shown_json(obj.input, context, "input"),
            "output": _shown_json(obj.output, context, "output"),
            "error": obj.error,
            "business_key": obj.business_key,
            "idempotency_key": obj.idempotency_key,
            "started_by": obj.started_by.username if obj.started_by_id else None,
            "created_at": _timestamp(obj.created_at),
            "started_at": _timestamp(obj.started_at),
            "finished_at": _timestamp(obj.finished_at),
            "deadline_at": _timestamp(obj.deadline_at),
            "updated_at": _timestamp(obj.updated_at),
            "schedule": obj.schedule_id,
            "scheduled_for": _timestamp(obj.scheduled_for),
            "steps": [step_data(step, context) for step in steps],
            "parent": self.get_parent(obj),
            "children": children,
            "links": self.get_links(obj),
        }


class EventSerializer(serializers.ModelSerializer):
    data = SealedJSONField()

    class Meta:
        model = Event
        fields = ["seq", "type", "step", "attempt", "actor", "at", "data"]


class WorkflowSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    description = serializers.CharField()
    deadline = serializers.FloatField(allow_null=True, help_text="seconds")
    input_schema = serializers.JSONField(allow_null=True)
    requester_input = serializers.CharField(
        allow_null=True,
        help_text="The input field naming the requester: filled with the caller's username "
        "when absent; another name needs orchestration.start_on_behalf.",
    )
    attachments = serializers.CharField(
        allow_null=True,
        help_text="The input field listing the files of a start (multipart POST "
        "/api/v1/instances/), filled from them; null when the workflow takes no files.",
    )
    startable_by = serializers.ListField(
        child=serializers.CharField(),
        allow_null=True,
        help_text="The groups whose members may start it from the web (/start/); null: not "
        "offered on the web.",
    )
    steps = serializers.ListField(child=serializers.DictField())


class SignalSerializer(serializers.ModelSerializer):
    payload = SealedJSONField(
        help_text="As stored: a workflow with sensitive fields keeps payloads sealed (masked)."
    )
    consumed = serializers.SerializerMethodField()

    class Meta:
        model = Signal
        fields = ["id", "name", "payload", "source", "received_at", "consumed", "step"]

    def get_consumed(self, obj: Signal) -> bool:
        return obj.consumed_at is not None


# -- batch start (POST /api/v1/instances/batch/): documentation of the body and the answer; the
# view hands the items to the engine, which checks each one as a single start is checked.


class BatchStartItemSerializer(StartInstanceSerializer):
    idempotency_key = StrictCharField(
        max_length=200,
        required=False,
        help_text="This item's Idempotency-Key (as the header of a single start): unique per "
        "workflow within the batch.",
    )


class BatchStartSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    items = BatchStartItemSerializer(
        many=True,
        min_length=1,
        max_length=1000,
        help_text="1 to 1,000 start requests, each with its own result.",
    )


class BatchStartedInstanceSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow = serializers.CharField()
    version = serializers.IntegerField()
    state = serializers.CharField()
    business_key = serializers.CharField()
    created_at = serializers.DateTimeField()


class BatchStartResultSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The item's position in `items`, from 0.")
    status = serializers.IntegerField(
        help_text="201 started; 200 a repeat (same key, same body): the first instance; 409 the "
        "key was used with another body; 400 invalid item; 403 the item names another "
        "requester without orchestration.start_on_behalf."
    )
    instance = BatchStartedInstanceSerializer(allow_null=True)
    error = ErrorSerializer(allow_null=True)


class BatchStartResponseSerializer(serializers.Serializer):
    results = BatchStartResultSerializer(many=True, help_text="One per item, in item order.")
    started = serializers.IntegerField(help_text="How many items answered 201.")
