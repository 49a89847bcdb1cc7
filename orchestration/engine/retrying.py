"""The retry policy of a task step: what a failed or timed-out attempt leads to.

An attempt that may be retried (a retryable error, attempts left, the instance running, the
next attempt before schedule-to-close) goes to ``retrying`` with its backoff and rings at the
due time; otherwise the step fails (or stays ``timed_out``) and so does the instance, or, when
the instance is no longer running (its saga waits for running attempts), the saga goes on.
"""

from __future__ import annotations

from typing import Any

from ..definitions import StepSpec, TaskStep, Workflow
from ..journal import Journal
from ..models import InstanceState, StepRun, StepState, WorkflowInstance
from .advancing import fail_instance
from .compensating import advance_compensation
from .context import scrubbed_error
from .task_kind import time_limit_of

I = InstanceState  # noqa: E741
S = StepState


def attempt_failed(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    step: StepRun,
    spec: StepSpec | None,
    definition: Workflow | None,
    journal: Journal,
    error: dict[str, Any],
    *,
    retryable: bool,
    reason: str,
) -> None:
    """Apply the retry policy to a failed or timed-out attempt (step is ``running`` or
    ``timed_out``)."""
    now = journal.now
    error = scrubbed_error(instance, steps, error)
    step.error = error
    step.timeout_at = None
    policy = spec.retry if isinstance(spec, TaskStep) else None
    used = step.attempt - step.attempt_base
    why = reason
    if not retryable:
        why = "non_retryable"
    elif policy is None:
        why = "no_retry_policy"
    elif used >= policy.max_attempts:
        why = "attempts_exhausted"
    elif instance.state != I.RUNNING:
        why = f"instance_{instance.state}"
    else:
        next_at = now + policy.delay(used)
        if step.close_by is not None and next_at >= step.close_by:
            why = "schedule_to_close"
        else:
            failed_attempt = step.attempt
            step.retry_later()
            step.next_attempt_at = next_at
            step.rung_at = now
            step.started_at = None
            journal.record(
                "step_retrying",
                step=step,
                attempt=failed_attempt,
                data={
                    "reason": reason,
                    "error": error,
                    "next_attempt": step.attempt,
                    "next_attempt_at": next_at.isoformat(),
                    "delay": round((next_at - now).total_seconds(), 3),
                },
            )
            journal.ring(
                step,
                eta=next_at,
                queue=getattr(spec, "queue", None),
                time_limit=time_limit_of(spec),
            )
            return
    if step.state == S.RUNNING:
        step.fail()
        step.finished_at = now
        journal.record("step_failed", step=step, data={"reason": why, "error": error})
    else:  # timed_out stays the terminal state; its event was written by the caller
        step.finished_at = now
        journal.touch(step)
    if instance.state == I.RUNNING and definition is not None:
        fail_instance(
            instance, steps, definition, journal, {"step": step.name, "reason": why, **error}
        )
    else:
        advance_compensation(instance, steps, definition, journal)
