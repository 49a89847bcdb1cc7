"""Batch operations: one operator action (retry, cancel, pause, resume) on many instances,
run in the background (:mod:`orchestration.batches`).

A :class:`BatchOperation` is the job; its :class:`BatchItem` rows are the instances it
selected when it was created, one row per instance (unique per batch). An item's outcome is
written in the same transaction as the action on its instance, so a batch resumed after a
crash never acts on an instance twice. Imported by :mod:`orchestration.models`.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, FSMModelMixin, transition


class BatchAction(models.TextChoices):
    RETRY = "retry"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"


class BatchState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


B = BatchState
BATCH_ACTIVE = [B.QUEUED, B.RUNNING]


class BatchOperation(FSMModelMixin, models.Model):
    """A batch job: its action, how it chose its instances, who asked and why, and progress."""

    action = models.CharField(max_length=10, choices=BatchAction.choices)
    # The filter as given (normalised), or {"ids": [...]} for ticked rows.
    filter = models.JSONField(default=dict, blank=True)
    reason = models.TextField(max_length=1000)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor = models.CharField(max_length=150, default="system")
    state = FSMField(default=B.QUEUED, choices=B.choices, protected=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # Position of the last item handled (progress is in the items; this is for reading).
    cursor = models.PositiveIntegerField(default=0)
    # Instances per second at most.
    rate = models.FloatField(default=20.0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by every chunk; a running batch whose heartbeat is stale is rung again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        verbose_name = _("batch operation")
        verbose_name_plural = _("batch operations")
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["heartbeat_at"],
                name="batch_active_heartbeat",
                condition=Q(state__in=["queued", "running"]),
            ),
        ]

    def __str__(self) -> str:
        return f"batch #{self.pk} {self.action} ({self.state})"

    @property
    def handled(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def percent(self) -> int:
        return 100 if not self.total else min(100, round(100 * self.handled / self.total))

    # -- transitions --------------------------------------------------------------------------
    @transition(field=state, source=B.QUEUED, target=B.RUNNING)
    def start(self) -> None:
        pass

    @transition(field=state, source=B.RUNNING, target=B.DONE)
    def finish(self) -> None:
        pass

    @transition(field=state, source=BATCH_ACTIVE, target=B.FAILED)
    def fail(self, error: str = "") -> None:
        self.error = error[:2000]

    @transition(field=state, source=BATCH_ACTIVE, target=B.CANCELLED)
    def cancel(self) -> None:
        pass


class ItemOutcome(models.TextChoices):
    PENDING = "", "pending"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class BatchItem(models.Model):
    """One instance a batch selected; its outcome once handled (blank until then)."""

    batch = models.ForeignKey(BatchOperation, on_delete=models.CASCADE, related_name="items")
    instance = models.ForeignKey(
        "orchestration.WorkflowInstance", on_delete=models.CASCADE, related_name="+"
    )
    position = models.PositiveIntegerField()
    outcome = models.CharField(max_length=10, blank=True, default="", choices=ItemOutcome.choices)
    message = models.TextField(blank=True, default="")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("batch item")
        verbose_name_plural = _("batch items")
        ordering = ["batch", "position"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "instance"], name="batchitem_batch_instance"),
        ]
        indexes = [
            # The runner's next chunk: the batch's pending items in order.
            models.Index(
                fields=["batch", "position"],
                name="batchitem_pending",
                condition=Q(outcome=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.instance_id} {self.outcome or 'pending'}"
