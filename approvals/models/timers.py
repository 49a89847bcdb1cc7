"""The escalation timer of a pending request, in a narrow table of its own."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class EscalationTimer(models.Model):
    """When a pending request's next escalation level is due: the same moment as its
    ``next_escalation_at``, kept here so the sweeper finds due requests through this table's
    small index instead of an index on the request row. An escalation then changes no
    indexed column of the request (``level`` and ``next_escalation_at`` are covered by no
    index), so on PostgreSQL its update is a HOT update: none of the request table's indexes
    (a trigram index among them) gets a new entry. Written by whatever sets the request's
    timer, in the same transaction (:mod:`approvals.escalation_timers`); a timer left behind
    by a request decided, cancelled or withdrawn is removed by the next sweep once due."""

    request = models.OneToOneField(
        "approvals.ApprovalRequest",
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    due_at = models.DateTimeField()

    class Meta:
        verbose_name = _("escalation timer")
        verbose_name_plural = _("escalation timers")
        indexes = [models.Index(fields=["due_at"], name="escalation_timer_due")]

    def __str__(self) -> str:
        return f"escalation of request {self.request_id} at {self.due_at.isoformat()}"
