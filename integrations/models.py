"""Outbound messages. Each is written in the transaction that decides to send it (an outbox),
then delivered by a Celery task; the unique ``message_id`` makes a retried delivery a no-op."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class OutboundEmail(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        SENT = "sent"
        FAILED = "failed"

    message_id = models.CharField(max_length=255, unique=True)
    kind = models.CharField(max_length=50)
    to = models.JSONField(default=list)
    subject = models.CharField(max_length=300)
    body_text = models.TextField()
    body_html = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    # Context for operators: which instance and request it is about.
    instance_id = models.UUIDField(null=True, blank=True)
    request_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["created_at"], name="email_queued_created", condition=Q(status="queued")
            ),
            models.Index(fields=["instance_id"], name="email_instance"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {', '.join(self.to)}: {self.subject}"
