"""Schedules: a workflow started on a cron expression or an interval, and the record of each
fire.

A :class:`Schedule` says what to start (workflow, version, a fixed input sealed like a start's)
and when (cron in a time zone, or every N seconds; jitter; what to do when the previous run is
still going; how late a fire may still run). Each fire time becomes one :class:`ScheduleFire`
row, unique per ``(schedule, fire_time)``: that row, written in the transaction that starts
the instance, is what makes two beat processes or a restart start a fire once.

Writes go through :mod:`orchestration.schedules` (validation) and
:mod:`orchestration.schedule_firing` (the sweeper's per-row service).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


class OverlapPolicy(models.TextChoices):
    """What a fire does while an instance of the schedule is still running."""

    SKIP = "skip", "skip the fire"
    BUFFER_ONE = "buffer_one", "buffer one fire until the running one ends"
    ALLOW_ALL = "allow_all", "start it anyway"


class FireOutcome(models.TextChoices):
    STARTED = "started"
    SKIPPED_OVERLAP = "skipped_overlap"
    BUFFERED = "buffered"
    MISSED = "missed"
    # The start itself was refused (the workflow was unregistered, its input schema changed).
    FAILED = "failed"


class Schedule(models.Model):
    """Start ``workflow`` with ``input`` on ``cron`` (in ``time_zone``) or every
    ``interval_seconds``.

    ``next_fire_at`` is the next nominal fire time (the idempotency key of that run);
    ``fire_due_at`` is when the sweeper starts it (the fire time plus this fire's jitter).
    Both are None while the schedule is paused.
    """

    name = models.CharField(max_length=100, unique=True)
    workflow = models.CharField(max_length=100)
    # None: the newest registered version at each fire.
    version = models.PositiveIntegerField(null=True, blank=True)
    # The fixed input of every run, its sensitive fields sealed as a start seals them.
    input = models.JSONField(default=dict, blank=True)
    # Placeholders {schedule}, {fire_time}, {date}, {time} (fire time in the schedule's zone).
    business_key_template = models.CharField(max_length=200, blank=True, default="")
    cron = models.CharField(max_length=100, blank=True, default="")
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    time_zone = models.CharField(max_length=64, default="UTC")
    jitter_seconds = models.PositiveIntegerField(default=0)
    overlap = models.CharField(
        max_length=20, choices=OverlapPolicy.choices, default=OverlapPolicy.SKIP
    )
    # A fire later than this (plus SIGNOFF_SCHEDULE_GRACE_SECONDS) is recorded missed.
    catchup_window_seconds = models.PositiveIntegerField(default=3600)
    paused = models.BooleanField(default=False)
    paused_note = models.CharField(max_length=500, blank=True, default="")
    next_fire_at = models.DateTimeField(null=True, blank=True)
    fire_due_at = models.DateTimeField(null=True, blank=True)
    last_fire_at = models.DateTimeField(null=True, blank=True)
    # The one fire kept back by the buffer_one policy (its ScheduleFire row says buffered).
    buffered_fire_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(cron="") & Q(interval_seconds__gte=1))
                | (~Q(cron="") & Q(interval_seconds__isnull=True)),
                name="schedule_cron_xor_interval",
            ),
        ]
        indexes = [
            # The sweeper reads only active schedules that are due.
            models.Index(
                fields=["fire_due_at"],
                name="schedule_due",
                condition=Q(paused=False, fire_due_at__isnull=False),
            ),
            models.Index(
                fields=["buffered_fire_at"],
                name="schedule_buffered",
                condition=Q(buffered_fire_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ScheduleFire(models.Model):
    """One fire time of a schedule and what came of it. Unique per ``(schedule, fire_time)``:
    the idempotency of each run."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires")
    fire_time = models.DateTimeField()
    instance = models.ForeignKey(
        "orchestration.WorkflowInstance",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    outcome = models.CharField(max_length=20, choices=FireOutcome.choices)
    # Fire times this row stands for: a ``missed`` row after downtime counts all the older
    # fire times skipped with it (``fire_time`` is the newest of them).
    count = models.PositiveIntegerField(default=1)
    # Trigger-now, by whom (blank for the sweeper's fires).
    triggered_by = models.CharField(max_length=150, blank=True, default="")
    note = models.CharField(max_length=500, blank=True, default="")
    at = models.DateTimeField()

    class Meta:
        verbose_name = _("schedule fire")
        verbose_name_plural = _("schedule fires")
        ordering = ["-fire_time"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "fire_time"], name="schedule_fire_once"),
        ]
        # Old records are pruned by age (SIGNOFF_SCHEDULE_FIRE_RETENTION_DAYS); metrics count
        # the recent ones.
        indexes = [models.Index(fields=["at"], name="schedule_fire_at")]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.fire_time.isoformat()}: {self.outcome}"
