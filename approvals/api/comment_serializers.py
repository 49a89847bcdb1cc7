"""Serializers of a request's comment thread in the API: posting a comment (JSON or multipart
with files) and reading one."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from approvals.comments import MAX_BODY
from approvals.models import (
    Comment,
)
from orchestration.api.serializers import (
    AttachmentSerializer,
    RejectUnknownFieldsMixin,
    StrictCharField,
)


class CommentCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    body = StrictCharField(
        # The length as sent, as the schema says; comment_post trims it and refuses a blank.
        max_length=MAX_BODY,
        help_text=f"The comment: 1 to {MAX_BODY} characters, not only white space, no NUL. It "
        "decides nothing; the other side (requester, or current assignees) gets a mail.",
    )


class CommentSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.get_username", help_text="Who wrote it.")
    role = serializers.ChoiceField(
        choices=Comment.Role.choices,
        help_text="What the author posted as: requester, assignee, delegate or operator.",
    )
    channel = serializers.ChoiceField(choices=[("web", "web"), ("api", "api")])
    request = serializers.IntegerField(
        source="request_id",
        help_text="The approval request it was posted on (the thread holds every round of "
        "the step).",
    )
    step = serializers.CharField(source="request.step_name")
    files = serializers.SerializerMethodField()

    class Meta:
        model = Comment
        fields = [
            "id",
            "request",
            "step",
            "author",
            "role",
            "body",
            "channel",
            "created_at",
            "files",
        ]

    @extend_schema_field(AttachmentSerializer(many=True))
    def get_files(self, obj: Comment) -> list[dict[str, Any]]:
        """The files posted with the comment (download: whoever may read the instance's
        files)."""
        return AttachmentSerializer(getattr(obj, "files", None) or [], many=True).data


class CommentMultipartSerializer(serializers.Serializer):
    # The multipart form of a comment with files (documentation; the view reads the form).
    body = serializers.CharField(max_length=MAX_BODY)
    files = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        help_text="Files posted with the comment (repeat the field): type read from the "
        "bytes, SIGNOFF_FILE_TYPES, SIGNOFF_FILE_MAX_BYTES, SIGNOFF_FILE_MAX_COUNT.",
    )
