"""Sagas: running the compensations that undo a failed or cancelled instance's steps.

Which compensations run, and in what order, is decided under the instance lock by
:mod:`orchestration.engine.compensating` (read its docstring for the saga's rules). This module
runs one compensation attempt, as the ``run_compensation`` Celery task and the sweepers call it:
claim it (``comp_phase`` ``scheduled``/``retrying`` → ``running``), call the step's
``compensate`` function outside any transaction, and record the outcome — done, a retry with
the compensation's own policy, or failed (the instance fails with
``error.phase == "compensation"``; retrying the instance retries the compensation).

Each service opens its transaction through :func:`engine.lock_instance` and ignores a message
for an attempt the step no longer waits for, as the forward attempts do.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.utils import timezone

from . import journal as journal_module
from . import tracing
from .definitions import StepContext, TaskStep, Workflow
from .engine import error_info, jsonable, lock_instance, scrubbed_error, step_context
from .engine.compensating import advance_compensation, compensation_of
from .journal import Doorbell, Journal
from .models import CompensationPhase, InstanceState, StepRun, StepState, WorkflowInstance

I = InstanceState  # noqa: E741
S = StepState
C = CompensationPhase
COMPENSATING_INSTANCE = (I.COMPENSATING,)
COMPENSATING_STEP = (S.COMPENSATING,)
TIMEOUT = {
    "type": "signoff.StepTimeout",
    "message": "compensation exceeded start_to_close",
    "traceback": "",
}


def claim_compensation(
    *, step_run_id: int, attempt: int
) -> tuple[TaskStep, StepContext, Any, str] | None:
    """Claim compensation attempt ``attempt`` of a step: ``comp_phase`` → ``running``. Writes
    ``step_compensation_started``; returns the spec, the context (``attempted_only`` for a step
    that never succeeded), the output to undo and the instance's trace context, or None
    (changing nothing) for a stale or early message."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="worker",
            instance_states=COMPENSATING_INSTANCE,
            step_states=COMPENSATING_STEP,
        )
        if locked is None:
            return None
        step, journal = locked.step, locked.journal
        if step.comp_attempt != attempt or step.comp_phase not in (C.SCHEDULED, C.RETRYING):
            return None
        if step.next_attempt_at and step.next_attempt_at > journal.now:
            return None
        spec = compensation_of(locked.definition, step)
        if spec is None:
            return None
        step.claim_compensation()
        step.timeout_at = journal.now + spec.start_to_close
        journal.record("step_compensation_started", step=step, attempt=attempt)
        journal.flush()
        ctx = step_context(journal, step)
        ctx = dataclasses.replace(ctx, attempt=attempt, attempted_only=step.comp_attempted)
        output = None if step.comp_attempted else step.output
        return spec, ctx, output, locked.instance.trace_context


def finish_compensation(
    *,
    step_run_id: int,
    attempt: int,
    error: BaseException | None = None,
    error_data: dict[str, Any] | None = None,
    result: Any = None,
) -> bool:
    """Record a compensation attempt's outcome (success, or error / timeout for a retry), then
    schedule the compensations that became due. Returns False (changing nothing) unless the
    attempt is the running one."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="worker" if error_data is None else "sweeper",
            instance_states=COMPENSATING_INSTANCE,
            step_states=COMPENSATING_STEP,
        )
        if locked is None:
            return False
        step, journal = locked.step, locked.journal
        if step.comp_attempt != attempt or step.comp_phase != C.RUNNING:
            return False
        step.timeout_at = None
        if error is None and error_data is None:
            step.finish_compensation()
            data: dict[str, Any] = {} if result is None else {"result": result}
            if step.comp_attempted:
                data["attempted"] = True
            journal.record("step_compensated", step=step, attempt=attempt, data=data or None)
        else:
            _compensation_failed(
                locked.instance,
                locked.steps,
                step,
                locked.definition,
                journal,
                error_data or error_info(error),
                error,
            )
        advance_compensation(locked.instance, locked.steps, locked.definition, journal)
        journal.flush()
        return True


def _compensation_failed(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    step: StepRun,
    definition: Workflow | None,
    journal: Journal,
    info: dict[str, Any],
    error: BaseException | None,
) -> None:
    """Apply the compensation's retry policy: ``retrying`` with a backoff, or ``failed`` (the
    instance fails; other running compensations finish)."""
    spec = compensation_of(definition, step)
    policy = spec.compensate_retry if spec else None
    used = step.comp_attempt - step.comp_base
    retryable = policy is not None and (error is None or policy.is_retryable(error))
    info = scrubbed_error(instance, steps, info)
    step.error = info
    if retryable and used < policy.max_attempts:
        failed = step.comp_attempt
        step.retry_compensation()
        step.next_attempt_at = journal.now + policy.delay(used)
        step.rung_at = journal.now
        journal.record(
            "step_compensation_retrying",
            step=step,
            attempt=failed,
            data={
                "error": info,
                "next_attempt": step.comp_attempt,
                "next_attempt_at": step.next_attempt_at.isoformat(),
            },
        )
        journal.ring_compensation(
            step,
            eta=step.next_attempt_at,
            queue=spec.queue,
            time_limit=spec.start_to_close.total_seconds(),
        )
        return
    step.fail_compensation()
    journal.record(
        "step_compensation_failed", step=step, attempt=step.comp_attempt, data={"error": info}
    )
    # Other compensations already running finish; the instance is failed and retryable.
    failure = {"phase": "compensation", "step": step.name, **info}
    instance.fail(failure)
    instance.finished_at = journal.now
    journal.record("instance_failed", data={"error": failure})


def execute_compensation(*, step_run_id: int, attempt: int) -> str:
    """Run one compensation attempt: claim, call ``compensate(ctx, output)``, record the
    outcome. Safe to call twice: the second claim finds nothing to do (``"stale"``). With
    tracing on, the attempt is a ``compensate <workflow>.<step>`` span in the workflow's trace.
    """
    began = tracing.clock()
    claimed = claim_compensation(step_run_id=step_run_id, attempt=attempt)
    if claimed is None:
        return "stale"
    spec, ctx, output, trace_context = claimed
    with tracing.step_span(ctx, trace_context, began, action="compensate") as span:
        try:
            result = jsonable(spec.compensate(ctx, output))
        except SoftTimeLimitExceeded:
            finish_compensation(step_run_id=step_run_id, attempt=attempt, error_data=dict(TIMEOUT))
            tracing.step_outcome(span, "timed_out")
            return "timed_out"
        except Exception as exc:  # noqa: BLE001 - the engine applies the policy
            finish_compensation(step_run_id=step_run_id, attempt=attempt, error=exc)
            tracing.step_outcome(span, "failed", exc)
            return "failed"
        finish_compensation(step_run_id=step_run_id, attempt=attempt, result=result)
        tracing.step_outcome(span, "compensated")
        return "compensated"


def time_out_compensation(*, step_run_id: int) -> bool:
    """Sweeper: a compensation attempt past its start-to-close (its worker died)."""
    step = StepRun.objects.filter(pk=step_run_id).values("comp_attempt").first()
    if step is None:
        return False
    return finish_compensation(
        step_run_id=step_run_id, attempt=step["comp_attempt"], error_data=dict(TIMEOUT)
    )


def ring_compensation_again(*, step_run_id: int, older_than: datetime) -> bool:
    """Sweeper: re-ring a compensation whose message was lost. Skips a locked instance."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="sweeper",
            skip_locked=True,
            instance_states=COMPENSATING_INSTANCE,
            step_states=COMPENSATING_STEP,
        )
        if locked is None:
            return False
        step = locked.step
        if (
            step.comp_phase not in (C.SCHEDULED, C.RETRYING)
            or step.next_attempt_at is None
            or step.next_attempt_at > older_than
            or (step.rung_at is not None and step.rung_at > older_than)
        ):
            return False
        spec = compensation_of(locked.definition, step)
        StepRun.objects.filter(pk=step.pk).update(rung_at=timezone.now())
        bells = [
            Doorbell(
                step.pk,
                step.comp_attempt,
                None,
                spec.queue if spec else None,
                spec.start_to_close.total_seconds() if spec else None,
                "run_compensation",
            )
        ]
        transaction.on_commit(lambda: journal_module.ring_doorbells(bells))
        return True
