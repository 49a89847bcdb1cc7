"""Output serializers of the approvals API: a request (list and detail), its decisions, rounds
and links (inputs: :mod:`approvals.api.input_serializers`; comments:
:mod:`approvals.api.comment_serializers`).

Output serializers read only what the views load beforehand (requester, assignee names,
decisions), so a page costs the same number of queries whatever its length.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from approvals.models import (
    ApprovalRequest,
    Channel,
    Decision,
    Outcome,
    Policy,
    RequestState,
)
from approvals.selectors import ASSIGNEES
from orchestration import sealing


class RequestStateField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=RequestState.choices, **kwargs)


class RequestStateFieldSchema(OpenApiSerializerFieldExtension):
    """The request state as its own named enum, ``ApprovalState``. drf-spectacular would
    otherwise name it after the field, and ``state`` is also the instance's and the step's
    field, with other choices: a naming collision it can only settle with a hashed name and
    a warning."""

    target_class = RequestStateField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        component = ResolvedComponent(
            name="ApprovalState",
            type=ResolvedComponent.SCHEMA,
            object="ApprovalState",
            schema={"type": "string", "enum": list(RequestState.values)},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


# Formats datetimes exactly as the serializers' DateTimeFields do, without building a
# serializer's fields (DRF builds a ModelSerializer's fields per instance, per request).
TIMESTAMP = serializers.DateTimeField()

# Where the views put a request's assignee names ({"users": [...], "groups": [...]}) and its
# decisions (a list), loaded for a whole page at once.

DECISIONS = "decision_list"


class ShownValueField(serializers.JSONField):
    """A field's value as a reader may see it: sealed values were masked when the request
    was written; secret-looking keys inside it are masked here (``sealing.masked``)."""

    def to_representation(self, value: Any) -> Any:
        return sealing.masked(value)


class FieldSerializer(serializers.Serializer):
    label = serializers.CharField()
    value = ShownValueField(allow_null=True)


class AssigneesSerializer(serializers.Serializer):
    users = serializers.ListField(child=serializers.CharField(), help_text="Usernames.")
    groups = serializers.ListField(child=serializers.CharField(), help_text="Group names.")


class ApprovalLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    approve = serializers.CharField()
    reject = serializers.CharField()
    request_changes = serializers.CharField(help_text="Send it back to the requester.")
    resubmit = serializers.CharField(help_text="The requester's answer: the next round.")
    withdraw = serializers.CharField(help_text="The requester's answer: cancel the workflow.")
    comments = serializers.CharField(help_text="The thread of the request's step.")
    inbox = serializers.CharField(help_text="The request's page in the web inbox.")
    instance = serializers.CharField(
        allow_null=True,
        required=False,
        help_text="The workflow instance in the API; null when the caller may not read it. "
        "Only in the detail.",
    )


class DecisionSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="decided_by.get_username", help_text="Who decided.")
    on_behalf_of = serializers.SerializerMethodField(
        help_text='The assignee a delegate decided for ("bob for carol"); null otherwise.'
    )
    via_group = serializers.SlugRelatedField(
        slug_field="name",
        read_only=True,
        allow_null=True,
        help_text="The assigned group the vote counts for, if any.",
    )
    outcome = serializers.ChoiceField(choices=Outcome.choices)
    channel = serializers.ChoiceField(choices=Channel.choices)

    class Meta:
        model = Decision
        fields = ["user", "on_behalf_of", "via_group", "outcome", "comment", "channel", "at"]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_on_behalf_of(self, obj: Decision) -> str | None:
        if obj.assignee_id == obj.decided_by_id:
            return None
        return obj.assignee.get_username()


class WorkflowDecisionSerializer(serializers.Serializer):
    request = serializers.IntegerField(source="request_id", help_text="The request decided.")
    step = serializers.CharField(help_text="The step, in words (“Manager approval”).")
    round = serializers.IntegerField(help_text="The round of that step (from 1).")
    who = serializers.CharField(
        help_text="Who decided: “bob”, or “bob for carol” (a delegate, or on behalf)."
    )
    outcome = serializers.ChoiceField(choices=Outcome.choices)
    verb = serializers.CharField(help_text="approved, rejected, asked for changes.")
    at = serializers.DateTimeField()
    channel = serializers.CharField(help_text="web, email link, API, admin.")
    comment = serializers.CharField(allow_blank=True)
    this_request = serializers.BooleanField(help_text="Made on this request.")


class RoundSerializer(serializers.Serializer):
    """An earlier round of the same approval step (sent back for changes)."""

    id = serializers.IntegerField(help_text="That round's approval request.")
    round = serializers.IntegerField()
    state = RequestStateField()
    created_at = serializers.DateTimeField()
    changes_requested_by = serializers.CharField(allow_null=True)
    comment = serializers.CharField(help_text="What was asked to change.")
    answered_by = serializers.CharField(
        allow_null=True, help_text="Who resubmitted or withdrew it."
    )
    answered_at = serializers.DateTimeField(allow_null=True)
    decisions = DecisionSerializer(many=True, help_text="Every decision of that round.")


class ApprovalRequestSerializer(serializers.ModelSerializer):
    """One request as listed: what is asked, of whom, by when."""

    step = serializers.CharField(source="step_name")
    round = serializers.IntegerField(
        help_text="The round of its approval step (from 1; the next after a resubmission)."
    )
    state = RequestStateField()
    policy = serializers.ChoiceField(choices=Policy.choices)
    quorum = serializers.IntegerField(help_text="Approvals needed under policy quorum.")
    fields = FieldSerializer(many=True, help_text="What the approver is shown.")
    columns = serializers.DictField(
        help_text="The values of the fields the step shows as inbox columns "
        '(`Show(..., column=True)`), by column key, for example {"amount": 86.4}; sealed '
        "values never appear."
    )
    requester = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Username of whose request it is; they may not decide it.",
    )
    assignees = serializers.SerializerMethodField()
    overdue = serializers.SerializerMethodField()
    instance = serializers.UUIDField(source="instance_id", help_text="The workflow instance id.")
    links = serializers.SerializerMethodField()
    claimed_by = serializers.SerializerMethodField()
    claimed_at = serializers.SerializerMethodField()

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "title",
            "workflow",
            "business_key",
            "step",
            "round",
            "state",
            "policy",
            "quorum",
            "fields",
            "columns",
            "requester",
            "assignees",
            "created_at",
            "due_at",
            "overdue",
            "resolved_at",
            "claimed_by",
            "claimed_at",
            "instance",
            "links",
        ]

    def _claim_holder(self, obj: ApprovalRequest) -> int | None:
        now = self.context.setdefault("now", timezone.now())
        return obj.claim_holder_id(now)

    @extend_schema_field(
        serializers.CharField(
            allow_null=True,
            help_text='Username of whoever claimed the pending request ("I\'m on it"): while '
            "the claim holds nobody else may decide it. Null when unclaimed, decided, or the "
            "claim went idle past its expiry.",
        )
    )
    def get_claimed_by(self, obj: ApprovalRequest) -> str | None:
        if self._claim_holder(obj) is None:
            return None
        return obj.claimed_by.get_username()

    @extend_schema_field(
        serializers.DateTimeField(allow_null=True, help_text="Since when it is claimed.")
    )
    def get_claimed_at(self, obj: ApprovalRequest) -> str | None:
        if self._claim_holder(obj) is None:
            return None
        return TIMESTAMP.to_representation(obj.claimed_at)

    @extend_schema_field(AssigneesSerializer)
    def get_assignees(self, obj: ApprovalRequest) -> dict[str, list[str]]:
        names = getattr(obj, ASSIGNEES, None)
        if names is None:
            names = {
                "users": sorted(u.get_username() for u in obj.assignee_users.all()),
                "groups": sorted(g.name for g in obj.assignee_groups.all()),
            }
        return names

    @extend_schema_field(serializers.BooleanField(help_text="Pending and past its due time."))
    def get_overdue(self, obj: ApprovalRequest) -> bool:
        now = self.context.setdefault("now", timezone.now())
        return bool(obj.state == RequestState.PENDING and obj.due_at and obj.due_at < now)

    @extend_schema_field(ApprovalLinksSerializer)
    def get_links(self, obj: ApprovalRequest) -> dict[str, Any]:
        base = f"/api/v1/approvals/{obj.pk}/"
        return {
            "self": base,
            "approve": f"{base}approve/",
            "reject": f"{base}reject/",
            "request_changes": f"{base}request-changes/",
            "resubmit": f"{base}resubmit/",
            "withdraw": f"{base}withdraw/",
            "comments": f"{base}comments/",
            "inbox": f"/inbox/{obj.pk}/",
        }

    def to_representation(self, obj: ApprovalRequest) -> dict[str, Any]:
        # The fields declared above, built directly: on a 50-row page DRF's generic loop
        # (field lookup, get_attribute, a nested serializer per row) costs more than the
        # page's queries. A test holds it equal to the generic representation.
        timestamp = TIMESTAMP.to_representation
        return {
            "id": obj.pk,
            "title": obj.title,
            "workflow": obj.workflow,
            "business_key": obj.business_key,
            "step": obj.step_name,
            "round": obj.round,
            "state": obj.state,
            "policy": obj.policy,
            "quorum": obj.quorum,
            "fields": [
                {"label": item.get("label"), "value": sealing.masked(item.get("value"))}
                for item in obj.fields
            ],
            "columns": obj.columns,
            "requester": obj.requester.get_username() if obj.requester_id else None,
            "assignees": self.get_assignees(obj),
            "created_at": timestamp(obj.created_at),
            "due_at": timestamp(obj.due_at) if obj.due_at else None,
            "overdue": self.get_overdue(obj),
            "resolved_at": timestamp(obj.resolved_at) if obj.resolved_at else None,
            "claimed_by": self.get_claimed_by(obj),
            "claimed_at": self.get_claimed_at(obj),
            "instance": str(obj.instance_id),
            "links": self.get_links(obj),
        }


class ApprovalRequestDetailSerializer(ApprovalRequestSerializer):
    """One request with its rules, the decisions so far and whether the caller may decide."""

    decisions = serializers.SerializerMethodField()
    can_decide = serializers.SerializerMethodField()
    claim = serializers.SerializerMethodField()
    claim_expires_at = serializers.SerializerMethodField()
    can_request_changes = serializers.SerializerMethodField()
    can_resubmit = serializers.SerializerMethodField()
    revisable = serializers.ListField(
        child=serializers.CharField(),
        help_text="Input fields the requester may revise when it is sent back for changes.",
    )
    rounds = serializers.SerializerMethodField()
    workflow_decisions = serializers.SerializerMethodField()

    class Meta(ApprovalRequestSerializer.Meta):
        fields = [
            *ApprovalRequestSerializer.Meta.fields,
            "veto",
            "reject_requires_comment",
            "allow_self_approval",
            "level",
            "claim",
            "claim_expires_at",
            "max_rounds",
            "revisable",
            "can_decide",
            "can_request_changes",
            "can_resubmit",
            "decisions",
            "rounds",
            "workflow_decisions",
        ]
        extra_kwargs = {
            "veto": {"help_text": "Whether a single rejection rejects."},
            "level": {"help_text": "Escalation level reached (0: none)."},
            "max_rounds": {
                "help_text": "Rounds the step may take; in the last, changes can no longer be "
                "requested."
            },
        }

    def to_representation(self, obj: ApprovalRequest) -> dict[str, Any]:
        # One object: DRF's generic path, over every declared field.
        return serializers.ModelSerializer.to_representation(self, obj)

    @extend_schema_field(DecisionSerializer(many=True))
    def get_decisions(self, obj: ApprovalRequest) -> list[dict[str, Any]]:
        decisions = getattr(obj, DECISIONS, None)
        if decisions is None:
            decisions = obj.decisions.select_related("decided_by", "assignee", "via_group")
        return DecisionSerializer(decisions, many=True).data

    @extend_schema_field(
        serializers.ChoiceField(
            choices=["soft", "hard"],
            allow_null=True,
            help_text="Whether assignees may claim it: soft (another assignee may take the "
            "claim over with a note), hard (only the claimant releases it; an "
            "approvals.override_claim holder may take it over), null (no claims).",
        )
    )
    def get_claim(self, obj: ApprovalRequest) -> str | None:
        return obj.claim_mode or None

    @extend_schema_field(
        serializers.DateTimeField(
            allow_null=True,
            help_text="When the claim ends unless its claimant acts again (null: unclaimed, "
            "or claims never expire).",
        )
    )
    def get_claim_expires_at(self, obj: ApprovalRequest) -> str | None:
        if self._claim_holder(obj) is None or obj.claim_expires_at is None:
            return None
        return TIMESTAMP.to_representation(obj.claim_expires_at)

    @extend_schema_field(
        serializers.BooleanField(help_text="Whether the caller may approve or reject it now.")
    )
    def get_can_decide(self, obj: ApprovalRequest) -> bool:
        return bool(self.context.get("can_decide", False))

    @extend_schema_field(
        serializers.BooleanField(
            help_text="Whether the caller may send it back for changes now (not in the last round)."
        )
    )
    def get_can_request_changes(self, obj: ApprovalRequest) -> bool:
        return bool(self.context.get("can_decide", False)) and obj.can_be_sent_back

    @extend_schema_field(
        serializers.BooleanField(
            help_text="Whether the caller may resubmit or withdraw it now (its requester, "
            "while it is changes_requested)."
        )
    )
    def get_can_resubmit(self, obj: ApprovalRequest) -> bool:
        return bool(self.context.get("can_resubmit", False))

    @extend_schema_field(WorkflowDecisionSerializer(many=True))
    def get_workflow_decisions(self, obj: ApprovalRequest) -> list[dict[str, Any]]:
        """Every decision on the request's workflow instance (every step and round), oldest
        first: the whole picture an approver decides with."""
        lines = self.context.get("workflow_decisions", [])
        return WorkflowDecisionSerializer(lines, many=True).data

    @extend_schema_field(RoundSerializer(many=True))
    def get_rounds(self, obj: ApprovalRequest) -> list[dict[str, Any]]:
        rows = []
        for earlier in self.context.get("rounds", []):
            decisions = list(earlier.decisions.all())
            sent = [d for d in decisions if d.outcome == Outcome.REQUEST_CHANGES]
            rows.append(
                {
                    "id": earlier.pk,
                    "round": earlier.round,
                    "state": earlier.state,
                    "created_at": earlier.created_at,
                    "changes_requested_by": sent[-1].decided_by.get_username() if sent else None,
                    "comment": sent[-1].comment if sent else "",
                    "answered_by": earlier.answered_by.get_username()
                    if earlier.answered_by_id
                    else None,
                    "answered_at": earlier.answered_at,
                    "decisions": decisions,
                }
            )
        return RoundSerializer(rows, many=True).data

    @extend_schema_field(ApprovalLinksSerializer)
    def get_links(self, obj: ApprovalRequest) -> dict[str, Any]:
        links = super().get_links(obj)
        visible = self.context.get("instance_visible", False)
        links["instance"] = f"/api/v1/instances/{obj.instance_id}/" if visible else None
        return links
