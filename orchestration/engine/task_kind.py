"""The ``task`` step kind: a Python function run by a Celery worker.

A ready task step is ``scheduled`` and its doorbell (the Celery message) rings after commit;
:mod:`.stepping` claims, runs and records its attempts, :mod:`.retrying` applies its retry
policy.
"""

from __future__ import annotations

from datetime import datetime

from ..definitions import StepSpec, TaskStep
from ..journal import Journal
from ..kinds import StepKind, register_kind
from ..models import StepRun


def schedule_task(step: StepRun, spec: StepSpec, journal: Journal, *, retry: bool = False) -> None:
    """Move a ready task step to ``scheduled`` and ring its doorbell after commit. Writes
    ``step_scheduled`` (data ``retry`` for an operator's retry)."""
    now = journal.now
    step.schedule()
    step.scheduled_at = now
    step.next_attempt_at = now
    step.rung_at = now
    step.started_at = None
    step.timeout_at = None
    if isinstance(spec, TaskStep) and spec.schedule_to_close is not None:
        step.close_by = now + spec.schedule_to_close
    else:
        step.close_by = None
    journal.record("step_scheduled", step=step, data={"retry": True} if retry else None)
    journal.ring(step, queue=getattr(spec, "queue", None), time_limit=time_limit_of(spec))


def time_limit_of(spec: StepSpec | None) -> float | None:
    """The Celery time limit of a task step's attempt (its start-to-close), in seconds."""
    if isinstance(spec, TaskStep):
        return spec.start_to_close.total_seconds()
    return None


class TaskKind(StepKind):
    name = "task"

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        schedule_task(step_run, spec, journal)

    def retried(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        schedule_task(step_run, spec, journal, retry=True)


register_kind(TaskKind())
