"""Durable state: workflow instances, their step runs and the append-only event history.

Transitions only change the row (trait 2). The engine (``orchestration.engine``) locks the
row, calls a transition, saves and appends the event in one transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, FSMModelMixin, transition


class InstanceState(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    COMPENSATING = "compensating", _("Compensating")
    COMPENSATED = "compensated", _("Compensated")


class StepState(models.TextChoices):
    PENDING = "pending", _("Pending")
    SCHEDULED = "scheduled", _("Scheduled")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    RETRYING = "retrying", _("Retrying")
    FAILED = "failed", _("Failed")
    TIMED_OUT = "timed_out", _("Timed Out")
    WAITING = "waiting", _("Waiting")
    CANCELLED = "cancelled", _("Cancelled")
    SKIPPED = "skipped", _("Skipped")
    COMPENSATING = "compensating", _("Compensating")
    COMPENSATED = "compensated", _("Compensated")


class CompensationPhase(models.TextChoices):
    """Where a ``compensating`` step's compensation is (``comp_phase``); blank before."""

    NONE = "", "not compensating"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    FAILED = "failed"
    DONE = "done"


I = InstanceState  # noqa: E741 - short aliases keep the transition tables readable
S = StepState
C = CompensationPhase

INSTANCE_OPEN = [I.PENDING, I.RUNNING]
INSTANCE_FINISHED = [I.SUCCEEDED, I.FAILED, I.CANCELLED, I.COMPENSATED]
# A dependency is satisfied by these.
STEP_DONE = [S.SUCCEEDED, S.SKIPPED]
# A step in one of these still has work in flight or ahead of it.
STEP_ACTIVE = [S.SCHEDULED, S.RUNNING, S.RETRYING, S.WAITING]
# What a failed instance's retry picks up again.
STEP_RETRYABLE = [S.FAILED, S.TIMED_OUT, S.CANCELLED]


# Whose Idempotency-Key a start's key is: its starter's id, 0 for the system. The unique index
# instance_idempotency_key_per_caller is on this expression; lookups filter on it to use it.
KEY_OWNER = Coalesce(F("started_by"), Value(0))


class WorkflowInstance(FSMModelMixin, models.Model):
    """One execution of a workflow definition, pinned to the version it started on."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    state = FSMField(default=I.PENDING, choices=I.choices, protected=True)
    input = models.JSONField(default=dict)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    business_key = models.CharField(max_length=200, blank=True, default="")
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True, default="")
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    deadline_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()
    # Set while an operator paused the instance: nothing new is scheduled or started.
    paused_at = models.DateTimeField(null=True, blank=True)
    # When its sensitive fields were erased (retention or a subject's erasure request).
    erased_at = models.DateTimeField(null=True, blank=True)
    # Last event sequence number used; bumped under the row lock so history is gap-free.
    last_seq = models.PositiveIntegerField(default=0)
    # A child workflow: the parent's ``child`` step that started it, and that step's attempt
    # (one child per attempt: the unique constraint below). Null for a top-level instance.
    # No index of its own: the unique (parent_step, parent_attempt) index starts with it.
    parent_step = models.ForeignKey(
        "StepRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="child_instances",
        db_index=False,
    )
    parent_attempt = models.PositiveIntegerField(null=True, blank=True)
    # A child started for one item of a map step (orchestration.fanout_children): that item,
    # and the item's attempt in ``parent_attempt`` (one child per item attempt). Null else.
    parent_item = models.ForeignKey(
        "orchestration.MapItem",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="child_instances",
        db_index=False,
    )
    # Started by a schedule (orchestration.schedule_models): which, and for which fire time.
    schedule = models.ForeignKey(
        "orchestration.Schedule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="instances",
        # indexed partially below: most instances have no schedule, and the start's INSERT
        # should not maintain an index entry for each of them
        db_index=False,
    )
    scheduled_for = models.DateTimeField(null=True, blank=True)
    # The W3C traceparent of the span that started it ("" when tracing was off): every step
    # attempt's span is its child, so one workflow is one trace (orchestration.tracing).
    trace_context = models.CharField(max_length=55, blank=True, default="", editable=False)

    class Meta:
        verbose_name = _("workflow instance")
        verbose_name_plural = _("workflow instances")
        ordering = ["-created_at"]
        constraints = [
            # Idempotency keys are the caller's own: one per (workflow, starter, key), the
            # system (no starter) counting as one caller. Another caller's key is neither
            # found nor squatted.
            models.UniqueConstraint(
                F("workflow"),
                KEY_OWNER,
                F("idempotency_key"),
                condition=Q(idempotency_key__isnull=False),
                name="instance_idempotency_key_per_caller",
            ),
            # A child step starts one child per attempt, however often it is asked to.
            models.UniqueConstraint(
                fields=["parent_step", "parent_attempt"],
                condition=Q(parent_step__isnull=False),
                name="instance_child_per_parent_attempt",
            ),
            # A map step's child runner starts one child per item attempt.
            models.UniqueConstraint(
                fields=["parent_item", "parent_attempt"],
                condition=Q(parent_item__isnull=False),
                name="instance_child_per_item_attempt",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "-created_at"], name="instance_state_created"),
            models.Index(fields=["workflow", "-created_at"], name="instance_workflow_created"),
            models.Index(fields=["business_key"], name="instance_business_key"),
            models.Index(fields=["-created_at"], name="instance_created"),
            models.Index(
                fields=["workflow", "finished_at"],
                name="instance_finished",
                condition=Q(finished_at__isnull=False),
            ),
            # A schedule's overlap policy asks whether one of its runs is still open.
            models.Index(
                fields=["schedule", "state"],
                name="instance_schedule_state",
                condition=Q(schedule__isnull=False),
            ),
            # The deadline sweeper reads only running instances with a deadline.
            models.Index(
                fields=["deadline_at"],
                name="instance_running_deadline",
                condition=Q(state="running", deadline_at__isnull=False),
            ),
        ]
        permissions = [
            ("operate_instance", "Can operate workflow instances (retry, cancel)"),
            ("view_sensitive", "Can see sealed (sensitive) input and output fields"),
            (
                "start_on_behalf",
                "Can start a workflow for someone else (name another requester in the input)",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow} v{self.version} {self.id}"

    # -- transitions --------------------------------------------------------------------------
    @transition(field=state, source=I.PENDING, target=I.RUNNING)
    def start(self) -> None:
        pass

    @transition(field=state, source=I.RUNNING, target=I.SUCCEEDED)
    def succeed(self, output: Any = None) -> None:
        self.output = output

    @transition(field=state, source=[I.PENDING, I.RUNNING, I.COMPENSATING], target=I.FAILED)
    def fail(self, error: dict[str, Any] | None = None) -> None:
        self.error = error

    @transition(field=state, source=[I.RUNNING, I.FAILED], target=I.COMPENSATING)
    def compensate(self) -> None:
        """A saga unwinds: the compensations of succeeded steps run, newest first."""
        self.finished_at = None

    @transition(field=state, source=I.COMPENSATING, target=I.COMPENSATED)
    def finish_compensation(self) -> None:
        pass

    @transition(field=state, source=[I.PENDING, I.RUNNING, I.FAILED], target=I.CANCELLED)
    def cancel(self) -> None:
        pass

    @transition(field=state, source=I.FAILED, target=I.RUNNING)
    def retry(self) -> None:
        self.error = None
        self.finished_at = None


class StepRun(FSMModelMixin, models.Model):
    """One step of one instance: its state machine, attempts, deadlines and result."""

    # No index of its own: the unique (instance, name) index starts with it.
    instance = models.ForeignKey(
        WorkflowInstance, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, default="task")
    position = models.PositiveSmallIntegerField(default=0)  # topological order
    state = FSMField(default=S.PENDING, choices=S.choices, protected=True)
    attempt = models.PositiveIntegerField(default=0)
    # Attempts made before the last operator retry; the policy counts from here.
    attempt_base = models.PositiveIntegerField(default=0)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    # When the current attempt may start (retry backoff); also the doorbell's due time.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # When the doorbell (Celery message) last rang.
    rung_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Start-to-close of the running attempt (capped by schedule-to-close).
    timeout_at = models.DateTimeField(null=True, blank=True)
    # Schedule-to-close: no attempt may start or run past this.
    close_by = models.DateTimeField(null=True, blank=True)
    # While the step is `compensating`: the compensation's own attempt counter and phase
    # (scheduled → running → done, or retrying, or failed). The sweepers and the claim read
    # next_attempt_at / rung_at / timeout_at for it as for a forward attempt.
    comp_attempt = models.PositiveIntegerField(default=0)
    comp_base = models.PositiveIntegerField(default=0)
    comp_phase = FSMField(
        max_length=10, blank=True, default=C.NONE, choices=C.choices, protected=True
    )
    # The saga undoes this step although it never succeeded: an attempt was claimed and the
    # step declares ``compensate_attempted``. Set when the saga takes the step on (while it is
    # still `cancelled`, `failed` or `timed_out`) and kept; its compensation gets output None.
    comp_attempted = models.BooleanField(default=False)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)

    class Meta:
        verbose_name = _("step run")
        verbose_name_plural = _("step runs")
        ordering = ["instance", "position"]
        constraints = [
            models.UniqueConstraint(fields=["instance", "name"], name="steprun_instance_name"),
        ]
        indexes = [
            # Doorbell sweeper: scheduled/retrying steps by due time.
            models.Index(
                fields=["next_attempt_at"],
                name="steprun_due_doorbell",
                condition=Q(state__in=["scheduled", "retrying"]),
            ),
            # Timeout sweeper: running steps by their attempt deadline.
            models.Index(
                fields=["timeout_at"],
                name="steprun_running_timeout",
                condition=Q(state="running"),
            ),
            models.Index(fields=["state"], name="steprun_state"),
            # Waiting signal / timer steps by their deadline.
            models.Index(
                fields=["timeout_at"],
                name="steprun_waiting_deadline",
                condition=Q(state="waiting", timeout_at__isnull=False),
            ),
            models.Index(
                fields=["next_attempt_at"],
                name="steprun_compensating_due",
                condition=Q(state="compensating"),
            ),
            models.Index(
                fields=["timeout_at"],
                name="steprun_compensating_timeout",
                condition=Q(state="compensating"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state}, attempt {self.attempt})"

    @property
    def shown_state(self) -> str:
        """The state as people read it: ``undo_failed`` for a step whose compensation failed
        for good (``compensating`` with ``comp_phase`` failed: nothing runs, an operator must
        retry the undo or resolve it by hand), else :attr:`state`."""
        if self.state == S.COMPENSATING and self.comp_phase == C.FAILED:
            return "undo_failed"
        return self.state

    @property
    def shown_state_label(self) -> str:
        if self.shown_state == "undo_failed":
            return str(_("Undo failed"))
        return self.get_state_display()

    # -- transitions --------------------------------------------------------------------------
    @transition(field=state, source=[S.PENDING, *STEP_RETRYABLE], target=S.SCHEDULED)
    def schedule(self) -> None:
        self.attempt += 1
        self.error = None
        self.finished_at = None

    @transition(field=state, source=[S.SCHEDULED, S.RETRYING], target=S.RUNNING)
    def claim(self) -> None:
        pass

    @transition(field=state, source=S.RUNNING, target=S.SUCCEEDED)
    def succeed(self, output: Any = None) -> None:
        self.output = output
        self.error = None

    @transition(field=state, source=[S.RUNNING, S.TIMED_OUT], target=S.RETRYING)
    def retry_later(self) -> None:
        self.attempt += 1

    @transition(field=state, source=S.RUNNING, target=S.FAILED)
    def fail(self) -> None:
        pass

    @transition(field=state, source=S.PENDING, target=S.FAILED)
    def fail_before_start(self) -> None:
        """Its ``when=`` predicate raised: the step cannot be decided, so it fails."""

    @transition(field=state, source=S.RUNNING, target=S.TIMED_OUT)
    def time_out(self) -> None:
        pass

    # From a retryable state too: a retried step of a waiting kind (a rejected approval, a
    # signal that timed out) waits again.
    @transition(field=state, source=[S.PENDING, *STEP_RETRYABLE], target=S.WAITING)
    def wait(self) -> None:
        pass

    @transition(field=state, source=S.WAITING, target=S.SUCCEEDED)
    def resolve(self, output: Any = None) -> None:
        self.output = output

    @transition(field=state, source=S.WAITING, target=S.FAILED)
    def reject(self) -> None:
        pass

    @transition(field=state, source=[S.PENDING, *STEP_ACTIVE], target=S.CANCELLED)
    def cancel(self) -> None:
        pass

    @transition(field=state, source=S.PENDING, target=S.SKIPPED)
    def skip(self) -> None:
        pass

    @transition(
        field=state,
        source=[S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED],
        target=S.COMPENSATING,
        conditions=[lambda step: step.state == S.SUCCEEDED or step.comp_attempted],
    )
    def start_compensation(self) -> None:
        """Undo a succeeded step, or (``comp_attempted``) the attempts of one that never
        succeeded: its first compensation attempt is scheduled."""
        self.queue_compensation()

    @transition(field=state, source=S.COMPENSATING, target=S.COMPENSATED)
    def finish_compensation(self) -> None:
        """The running compensation attempt succeeded."""
        self.close_compensation()

    # -- the compensation's own phase (while `compensating`) --------------------------------
    @transition(field=comp_phase, source=[C.NONE, C.FAILED], target=C.SCHEDULED)
    def queue_compensation(self) -> None:
        """A compensation attempt is scheduled: the first, or one an operator retries after
        the compensation failed."""
        self.comp_attempt += 1

    @transition(field=comp_phase, source=[C.SCHEDULED, C.RETRYING], target=C.RUNNING)
    def claim_compensation(self) -> None:
        pass

    @transition(field=comp_phase, source=C.RUNNING, target=C.RETRYING)
    def retry_compensation(self) -> None:
        self.comp_attempt += 1

    @transition(field=comp_phase, source=C.RUNNING, target=C.FAILED)
    def fail_compensation(self) -> None:
        pass

    @transition(field=comp_phase, source=C.RUNNING, target=C.DONE)
    def close_compensation(self) -> None:
        pass

    # -- operator repair (orchestration.engine.repairing) ------------------------------------
    @transition(
        field=state, source=[S.FAILED, S.TIMED_OUT, S.CANCELLED, S.RETRYING], target=S.SKIPPED
    )
    def skip_by_hand(self, output: Any = None) -> None:
        """An operator skipped the failed step; later steps read ``output`` in its place. A
        skipped step did nothing, so a saga has nothing of it to undo."""
        self.output = output
        self.error = None

    @transition(
        field=state,
        source=[S.SUCCEEDED, S.SKIPPED, S.FAILED, S.TIMED_OUT, S.CANCELLED],
        target=S.PENDING,
    )
    def reset(self) -> None:
        """An operator resumes the instance from this step (or one it depends on): it runs
        again when its dependencies are done, with a fresh retry budget."""
        self.attempt_base = self.attempt
        self.output = None
        self.error = None

    @transition(
        field=state,
        source=S.COMPENSATING,
        target=S.COMPENSATED,
        conditions=[lambda step: step.comp_phase == C.FAILED],
    )
    def resolve_compensation(self) -> None:
        """An operator undid the step by hand after its compensation failed for good."""
        self.close_failed_compensation()

    @transition(field=comp_phase, source=C.FAILED, target=C.DONE)
    def close_failed_compensation(self) -> None:
        pass

    @transition(
        field=state,
        source=[S.FAILED, S.TIMED_OUT, S.CANCELLED, S.RETRYING, S.SCHEDULED, S.WAITING],
        target=S.SUCCEEDED,
    )
    def complete_manually(self, output: Any = None) -> None:
        """An operator did the step's work by hand and supplies its output."""
        self.output = output
        self.error = None


class Event(models.Model):
    """Append-only history. ``seq`` counts from 1 per instance with no gaps."""

    # No index of its own: the unique (instance, seq) index starts with it and serves every
    # lookup by instance; one index fewer to maintain on the hottest insert.
    instance = models.ForeignKey(
        WorkflowInstance, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=50)
    step = models.CharField(max_length=100, null=True, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, default="system")
    data = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField()

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        ordering = ["instance", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["instance", "seq"], name="event_instance_seq"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError("events are append-only")


class Signal(models.Model):
    """An external callback delivered to an instance. Kept until a ``signal`` step consumes it,
    so a callback that arrives before its step is reached is not lost; the optional
    ``idempotency_key`` makes a repeated delivery a no-op."""

    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="signals")
    name = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    source = models.CharField(max_length=20, default="api")
    actor = models.CharField(max_length=150, default="system")
    received_at = models.DateTimeField()
    consumed_at = models.DateTimeField(null=True, blank=True)
    step = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        verbose_name = _("signal")
        verbose_name_plural = _("signals")
        ordering = ["received_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="signal_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(
                fields=["instance", "name"],
                name="signal_unconsumed",
                condition=Q(consumed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} for {self.instance_id}"


class Attachment(models.Model):
    """A file that belongs to an instance: uploaded with its start, to one of its requests or
    comments. ``context`` says to what, as a string the attaching app chooses (``start``,
    ``request:<id>``, ``comment:<id>``, ``revision:<round>``), so other apps attach files to
    their own things without a foreign key into their tables. The bytes live in the
    ``attachments`` storage under ``storage_key``, a random name that is never shown."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance = models.ForeignKey(
        WorkflowInstance, on_delete=models.CASCADE, related_name="attachments", db_index=False
    )
    context = models.CharField(max_length=100)
    name = models.CharField(max_length=255, help_text="As uploaded, made safe to show.")
    content_type = models.CharField(max_length=100, help_text="Read from the bytes.")
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=255, unique=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    uploaded_at = models.DateTimeField()
    position = models.PositiveSmallIntegerField(default=0, help_text="Order within its upload.")

    class Meta:
        verbose_name = _("attachment")
        verbose_name_plural = _("attachments")
        ordering = ["uploaded_at", "position"]
        indexes = [
            # Every read is by instance (optionally by context), in upload order.
            models.Index(fields=["instance", "context", "uploaded_at"], name="attachment_instance"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.context})"


# Schedules live in their own module; imported here so Django registers their models.
# Map steps (dynamic fan-out) keep their items in their own tables.
from .fanout_models import MapItem, MapRun  # noqa: E402, F401
from .schedule_models import (  # noqa: E402, F401
    FireOutcome,
    OverlapPolicy,
    Schedule,
    ScheduleFire,
)


class FailureGroupProxy(WorkflowInstance):
    """The admin's "Failures" page (failed instances grouped, :mod:`orchestration.failures`):
    a proxy, so the page has its place in the admin's menu. No table, no rows of its own."""

    class Meta:
        verbose_name = _("failure group")
        verbose_name_plural = _("failures")
        proxy = True
        default_permissions = ()


# Batch operations live in their own module; imported here so Django registers them.
from .batch_models import BatchItem, BatchOperation  # noqa: E402, F401
