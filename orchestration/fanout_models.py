"""Durable state of ``map`` steps (dynamic fan-out, :mod:`orchestration.fanout`): one
:class:`MapItem` per item of the list, and one :class:`MapRun` per map step.

Items live in their own table so that thousands of them never touch a shared row: an item's
task claims and completes *its* row (``select_for_update`` on that row, a django-fsm
transition); no counter is updated per item (a first version had one, and every item queued on
it: bench/fanout.py). ``orchestration.models`` imports this module; the foreign keys name
``StepRun`` by label so the import goes one way. Transitions only change the row; the
services in :mod:`.fanout_items` lock, transition and save.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, FSMModelMixin, transition


class MapItemState(models.TextChoices):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"


class MapRunState(models.TextChoices):
    RUNNING = "running"
    SETTLED = "settled"


M = MapItemState
# In the step's concurrency window.
ITEM_IN_FLIGHT = [M.SCHEDULED, M.RUNNING, M.RETRYING]
ITEM_CLAIMABLE = [M.SCHEDULED, M.RETRYING]
# Not finished.
ITEM_OPEN = [M.PENDING, *ITEM_IN_FLIGHT]
ITEM_CANCELLABLE = [M.PENDING, M.SCHEDULED, M.RETRYING]


class MapRun(FSMModelMixin, models.Model):
    """One map step's run over its items: ``running`` → ``settled`` when the step succeeded
    or failed (under the instance lock); an operator's retry reopens it. No item updates this
    row: it is locked only to settle or reopen the step."""

    step_run = models.OneToOneField(
        "orchestration.StepRun", on_delete=models.CASCADE, primary_key=True, related_name="map_run"
    )
    state = FSMField(default=MapRunState.RUNNING, choices=MapRunState.choices, protected=True)
    total = models.PositiveIntegerField()
    concurrency = models.PositiveIntegerField()
    tolerate = models.PositiveIntegerField(default=0)
    # Operator retries of the step (1 for the first run).
    round = models.PositiveIntegerField(default=1)

    class Meta:
        verbose_name = _("map run")
        verbose_name_plural = _("map runs")
        indexes = [
            # The settle backstop reads only unsettled runs.
            models.Index(
                fields=["step_run"], name="maprun_unsettled", condition=Q(state="running")
            ),
        ]

    def __str__(self) -> str:
        return f"map run of step {self.step_run_id} ({self.state})"

    @transition(field=state, source=MapRunState.RUNNING, target=MapRunState.SETTLED)
    def settle(self) -> None:
        pass

    @transition(field=state, source=MapRunState.SETTLED, target=MapRunState.RUNNING)
    def reopen(self) -> None:
        self.round += 1


class MapItem(FSMModelMixin, models.Model):
    """One item of a map step: its value, attempts, deadlines and result."""

    step_run = models.ForeignKey(
        "orchestration.StepRun", on_delete=models.CASCADE, related_name="map_items", db_index=False
    )
    index = models.PositiveIntegerField()
    state = FSMField(default=M.PENDING, choices=M.choices, protected=True)
    # The item's value (sealed whole when its workflow declares sensitive fields).
    item = models.JSONField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    attempt_base = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    rung_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    timeout_at = models.DateTimeField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)

    class Meta:
        verbose_name = _("map item")
        verbose_name_plural = _("map items")
        ordering = ["step_run", "index"]
        constraints = [
            models.UniqueConstraint(fields=["step_run", "index"], name="mapitem_step_index"),
        ]
        indexes = [
            # The next pending item of a step, in index order.
            models.Index(
                fields=["step_run", "index"], name="mapitem_pending", condition=Q(state="pending")
            ),
            # Lost item doorbells: scheduled/retrying items by due time.
            models.Index(
                fields=["next_attempt_at"],
                name="mapitem_due_doorbell",
                condition=Q(state__in=["scheduled", "retrying"]),
            ),
            # "Is anything left?" and "how many failed?": the items not succeeded, by step
            # (so the tail of a 5,000-item step counts a handful of rows, not 5,000).
            models.Index(
                fields=["step_run", "state"],
                name="mapitem_unfinished",
                condition=Q(
                    state__in=["pending", "scheduled", "running", "retrying", "failed", "cancelled"]
                ),
            ),
            # Item timeouts: running items by their attempt deadline.
            models.Index(
                fields=["timeout_at"], name="mapitem_running_timeout", condition=Q(state="running")
            ),
        ]

    def __str__(self) -> str:
        return f"item {self.index} of step {self.step_run_id} ({self.state})"

    @transition(field=state, source=M.PENDING, target=M.SCHEDULED)
    def schedule(self) -> None:
        self.attempt += 1
        self.error = None

    @transition(field=state, source=ITEM_CLAIMABLE, target=M.RUNNING)
    def claim(self) -> None:
        pass

    @transition(field=state, source=M.RUNNING, target=M.SUCCEEDED)
    def succeed(self, output: Any = None) -> None:
        self.output = output
        self.error = None

    @transition(field=state, source=M.RUNNING, target=M.RETRYING)
    def retry_later(self) -> None:
        self.attempt += 1

    @transition(field=state, source=M.RUNNING, target=M.FAILED)
    def fail(self) -> None:
        pass

    @transition(field=state, source=ITEM_CANCELLABLE, target=M.CANCELLED)
    def cancel(self) -> None:
        pass

    @transition(field=state, source=M.RUNNING, target=M.CANCELLED)
    def abandon(self) -> None:
        """A running item whose step was cancelled or failed, its work stopped (a child item's
        child cancelled with it)."""
