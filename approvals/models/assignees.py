"""Who stands for or beside a request's assignees: delegations (out of office), past assignees
(replaced, still reading), and the email action links sent to assignees (hashes only)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _

from .requests import ApprovalRequest


class Delegation(models.Model):
    """While active, ``delegate`` may decide what is assigned to ``user`` (out of office)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="delegations_given"
    )
    delegate = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="delegations_received"
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("delegation")
        verbose_name_plural = _("delegations")
        ordering = ["-starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=F("starts_at")), name="delegation_ends_after_start"
            ),
            models.CheckConstraint(condition=~Q(user=F("delegate")), name="delegation_not_to_self"),
        ]
        indexes = [models.Index(fields=["delegate", "ends_at"], name="delegation_delegate")]

    def __str__(self) -> str:
        return f"{self.delegate_id} for {self.user_id}"


class ActionToken(models.Model):
    """A one-person, one-request email action link. Only the SHA-256 of the random token is
    stored; the link carries the token signed with a salt (tampering is detected before any
    lookup). Single use, expiring, and never valid after the request is resolved or the person
    was replaced by an escalation."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    purpose = models.CharField(max_length=20, default="assigned")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("action token")
        verbose_name_plural = _("action tokens")
        indexes = [models.Index(fields=["request", "user"], name="token_request_user")]

    def __str__(self) -> str:
        return f"link for {self.user_id} on {self.request_id}"


class PastAssignee(models.Model):
    """Someone who was an assignee of a request and no longer is: replaced by an escalation
    level with ``replace`` or by a reassignment. Current assignees are the request's
    ``assignee_users`` and ``assignee_groups``; together with these rows they are everyone who
    was ever asked. People assigned through a group are recorded one by one, as members were
    when the group was taken off the request (whoever joins the group later was never asked).
    Read by the visibility rules (a past assignee may still read the request and its instance,
    read-only) through the ``(request, user)`` unique index."""

    class Cause(models.TextChoices):
        ESCALATED = "escalated"
        REASSIGNED = "reassigned"

    request = models.ForeignKey(
        ApprovalRequest, on_delete=models.CASCADE, related_name="past_assignees"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    cause = models.CharField(max_length=20, choices=Cause.choices)
    removed_at = models.DateTimeField()

    class Meta:
        verbose_name = _("past assignee")
        verbose_name_plural = _("past assignees")
        constraints = [
            models.UniqueConstraint(fields=["request", "user"], name="past_assignee_once"),
        ]
        indexes = [models.Index(fields=["user"], name="past_assignee_user")]

    def __str__(self) -> str:
        return f"{self.user_id} was assigned {self.request_id}"
