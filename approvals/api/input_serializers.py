"""Input serializers of the approvals API: what deciding, sending back, resubmitting,
withdrawing, claiming and reassigning accept (unknown fields refused)."""

from __future__ import annotations

from rest_framework import serializers

from approvals.inputs import MAX_COMMENT
from orchestration.api.serializers import (
    JSONObjectField,
    RejectUnknownFieldsMixin,
    StrictCharField,
)


class DecideSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    comment = StrictCharField(
        required=False,
        default="",
        allow_blank=True,
        # The length as sent, as the schema's maxLength says (approval_decide trims it after;
        # trimming first accepted 5,001 characters that began with a control character).
        max_length=MAX_COMMENT,
        help_text="Why. Required to reject unless the step says otherwise.",
    )


class RequestChangesSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    comment = StrictCharField(
        required=True,
        allow_blank=False,
        trim_whitespace=True,
        max_length=MAX_COMMENT,
        help_text="What the requester should change (required).",
    )


class ResubmitSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    input = JSONObjectField(
        required=False,
        default=dict,
        help_text="The changed revisable top-level input fields (the request's `revisable`); "
        "merged into the instance input, the whole must pass the workflow's input schema. "
        "Empty or left out: resubmitted as it is.",
    )


class WithdrawSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    reason = StrictCharField(
        required=False, default="", allow_blank=True, trim_whitespace=True, max_length=500
    )


class TakeOverSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    note = StrictCharField(
        max_length=500,
        trim_whitespace=True,
        help_text="Why you take the claim over; recorded, and shown to the claimant in the "
        "history.",
    )
    claimant = StrictCharField(
        required=False,
        max_length=150,
        help_text="Username you expect to hold the claim. If someone else holds it now (two "
        "took it over at once), 409 claimed says who, and nothing changes.",
    )


class ReleaseSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    note = StrictCharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=500,
        trim_whitespace=True,
        help_text="Optional; recorded when you release someone else's claim.",
    )


class ClaimSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """No fields: the body is {} (or empty)."""


class ReassignSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    users = serializers.ListField(
        child=StrictCharField(max_length=150),
        required=False,
        default=list,
        max_length=100,
        help_text="Usernames; they replace the current assignees.",
    )
    groups = serializers.ListField(
        child=StrictCharField(max_length=150),
        required=False,
        default=list,
        max_length=100,
        help_text="Group names.",
    )
    reason = StrictCharField(
        max_length=500,
        trim_whitespace=True,
        help_text="Why; recorded on the approval_reassigned event.",
    )


class ResubmitMultipartSerializer(serializers.Serializer):
    # The multipart form of a resubmission with files (documentation; the view reads it).
    input = serializers.CharField(
        required=False,
        help_text="The changed revisable fields as a JSON object (a string).",
    )
    files = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        help_text="New files for the workflow's files field, when the step lists it as "
        "revisable: added after the files kept.",
    )
