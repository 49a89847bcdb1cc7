"""What people said on a request: their decisions (one per person) and the comments of its
thread (questions and answers that decide nothing)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .choices import Channel, Outcome
from .requests import ApprovalRequest


class Decision(models.Model):
    """One person's decision on one request. ``assignee`` is whose vote it is; ``decided_by``
    differs when a delegate decided ("bob for carol")."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    via_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    comment = models.TextField(blank=True, default="")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    reason = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="why an operator decided on someone's behalf",
    )
    at = models.DateTimeField()

    class Meta:
        verbose_name = _("decision")
        verbose_name_plural = _("decisions")
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "assignee"], name="decision_one_per_person"),
        ]
        indexes = [models.Index(fields=["decided_by", "-at"], name="decision_by_user")]

    def __str__(self) -> str:
        return f"{self.outcome} by {self.decided_by_id}"


class Comment(models.Model):
    """One message in a request's thread: a question or an answer, not a decision. ``role``
    is what the author posted as (``requester``, ``assignee``, ``delegate``, ``operator``),
    which decides who is told by mail. ``idempotency_key`` (per author) makes a repeated
    submission (a double click, a retried API call) one comment."""

    class Role(models.TextChoices):
        REQUESTER = "requester", _("Requester")
        ASSIGNEE = "assignee", _("Assignee")
        DELEGATE = "delegate", _("Delegate")
        OPERATOR = "operator", _("Operator")

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=10, choices=Role.choices)
    body = models.TextField()
    channel = models.CharField(max_length=10, choices=Channel.choices)
    created_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        verbose_name = _("comment")
        verbose_name_plural = _("comments")
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["author", "idempotency_key"],
                name="comment_idempotency_key_per_author",
                condition=~Q(idempotency_key=""),
            ),
        ]
        indexes = [models.Index(fields=["request", "created_at"], name="comment_request_created")]

    def __str__(self) -> str:
        return f"comment {self.pk} by {self.author_id} on {self.request_id}"
