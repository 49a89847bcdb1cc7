"""Sagas: when an instance fails or is cancelled, undo what its steps did.

The compensations of succeeded steps run newest first: a step is compensated once every step
that depends on it is settled (compensated, or never succeeded, or has nothing to undo), so
parallel branches unwind in parallel and a chain unwinds in reverse. Attempts still running
when the saga starts are waited for (never cancelled), and compensated too if they succeed.
Each compensation is a Celery task with its own retry policy, claimed like a forward attempt
(state ``compensating``, sub-phase ``comp_phase``). When all are done the instance is
``compensated``; a compensation that keeps failing leaves it ``failed`` with
``error.phase == "compensation"``, and retrying the instance retries the compensation.

A step declared with ``compensate_attempted=True`` is also undone when it never succeeded but
one of its attempts was claimed (``step_started``): it failed, timed out, or was waiting to
retry (or scheduled again by an operator) when the saga cancelled it; the attempt may have
applied its effect before it failed. Such a step is marked ``comp_attempted`` and its
compensation gets output None and ``ctx.attempted_only``. Its dependents never ran, so it is
undone first, like the newest step of its branch, and the steps it depends on wait for it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction

from .definitions import StepContext, TaskStep, Workflow  # noqa: F401
from .journal import Journal
from .models import Event, InstanceState, StepRun, StepState, WorkflowInstance

log = logging.getLogger("signoff.engine")
I = InstanceState  # noqa: E741
S = StepState


def _compensation(definition: Workflow | None, step: StepRun) -> TaskStep | None:
    spec = definition.steps.get(step.name) if definition else None
    if isinstance(spec, TaskStep) and spec.compensate is not None:
        return spec
    return None


def _undo(definition: Workflow | None, step: StepRun) -> TaskStep | None:
    """The step's compensation if the saga still owes it: the step succeeded, or it never did
    but an attempt was claimed and it declares ``compensate_attempted``."""
    spec = _compensation(definition, step)
    if spec is None:
        return None
    if step.state == S.SUCCEEDED:
        return spec
    if spec.compensate_attempted and (
        (step.state == S.CANCELLED and step.comp_attempted)
        # failed or timed out from `running` (a claim sets started_at); the saga may not have
        # marked it yet: it was running when the saga started
        or (step.state in (S.FAILED, S.TIMED_OUT) and step.started_at is not None)
    ):
        return spec
    return None


def claimed_unsucceeded(steps: dict[str, StepRun], definition: Workflow | None) -> set[str]:
    """Names of the steps declaring ``compensate_attempted`` that never succeeded although an
    attempt was claimed. The row tells for most states; a ``cancelled`` step, or one
    ``scheduled`` again by an operator, is looked up in the history (one query, only then)."""
    sure: set[str] = set()
    unsure: list[StepRun] = []
    for step in steps.values():
        spec = _compensation(definition, step)
        if spec is None or not spec.compensate_attempted:
            continue
        if step.state == S.RETRYING or (step.state == S.CANCELLED and step.comp_attempted):
            sure.add(step.name)  # `retrying` follows a claimed attempt that failed
        elif step.state in (S.FAILED, S.TIMED_OUT):
            if step.started_at is not None:
                sure.add(step.name)
        elif step.state == S.CANCELLED or (step.state == S.SCHEDULED and step.attempt > 1):
            unsure.append(step)
    if unsure:
        sure.update(
            Event.objects.filter(
                instance_id=unsure[0].instance_id,
                type="step_started",
                step__in=[s.name for s in unsure],
            )
            .values_list("step", flat=True)
            .distinct()
        )
    return sure


def needs_compensation(steps: dict[str, StepRun], definition: Workflow | None) -> bool:
    """Does anything need undoing (or might, once running attempts report)?"""
    return any(
        s.state in (S.SUCCEEDED, S.RUNNING) and _compensation(definition, s) is not None
        for s in steps.values()
    ) or bool(claimed_unsucceeded(steps, definition))


def start(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow,
    journal: Journal,
    *,
    cause: str,
    error: dict[str, Any] | None,
    reason: str = "",
) -> None:
    """Enter ``compensating``: cancel what has not started (a step waiting to retry too: its
    next attempt never runs), then unwind. Steps owed an attempted compensation are marked
    ``comp_attempted`` first (their state says so no longer once cancelled)."""
    from .engine import _cancel_step

    owed = claimed_unsucceeded(steps, definition)
    for step in steps.values():
        if step.name in owed:
            step.comp_attempted = True
            journal.touch(step)
        if step.state in (S.PENDING, S.SCHEDULED, S.RETRYING, S.WAITING):
            _cancel_step(step, definition, journal, reason=f"instance_{cause}")
    instance.compensate()
    instance.error = error
    data: dict[str, Any] = {"cause": cause, "error": error}
    if reason:
        data["reason"] = reason
    journal.record("instance_compensating", data=data)
    advance(instance, steps, definition, journal)


def advance(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow | None,
    journal: Journal,
) -> None:
    """Start every compensation whose dependents are settled; finish when nothing is left."""
    if instance.state != I.COMPENSATING:
        return
    if any(s.state == S.RUNNING for s in steps.values()):
        return  # a forward attempt may still succeed and need undoing
    dependents = definition.dependents() if definition else {}
    open_ = False
    for name in reversed(definition.order() if definition else list(steps)):
        step = steps[name]
        if step.state == S.COMPENSATING:
            open_ = True
            continue
        spec = _undo(definition, step)
        if spec is None:
            continue
        waiting_on = [
            d
            for d in dependents.get(name, [])
            if steps[d].state == S.COMPENSATING or _undo(definition, steps[d]) is not None
        ]
        open_ = True
        if waiting_on:
            continue
        schedule(step, spec, journal)
    if not open_:
        instance.finish_compensation()
        instance.finished_at = journal.now
        journal.record("instance_compensated")


def schedule(step: StepRun, spec: TaskStep, journal: Journal, *, fresh: bool = True) -> None:
    """Schedule the step's compensation and ring it. Writes ``step_compensating`` (data
    ``attempted`` and the state it left, for a step that never succeeded)."""
    data: dict[str, Any] | None = None
    if fresh:
        # Decided here, whatever an earlier mark said (an operator may have completed a
        # marked step by hand since).
        step.comp_attempted = step.state != S.SUCCEEDED
        if step.comp_attempted:
            data = {"attempted": True, "from": step.state}
        step.start_compensation()
    else:  # a failed compensation retried by an operator
        step.comp_attempt += 1
        step.comp_phase = "scheduled"
        data = {"attempted": True} if step.comp_attempted else None
    step.next_attempt_at = journal.now
    step.rung_at = journal.now
    step.timeout_at = None
    journal.record("step_compensating", step=step, attempt=step.comp_attempt, data=data)
    journal.ring_compensation(
        step, queue=spec.queue, time_limit=spec.start_to_close.total_seconds()
    )


def retry_failed(
    instance: WorkflowInstance, steps: dict[str, StepRun], definition: Workflow, journal: Journal
) -> None:
    """Retry an instance whose compensation failed: back to ``compensating``."""
    instance.compensate()
    instance.error = None
    journal.record("instance_retried", data={"phase": "compensation"})
    for step in steps.values():
        spec = _compensation(definition, step)
        if step.state == S.COMPENSATING and step.comp_phase == "failed" and spec:
            step.comp_base = step.comp_attempt
            schedule(step, spec, journal, fresh=False)
    advance(instance, steps, definition, journal)


# -- the compensation task ---------------------------------------------------------------------


def claim(*, step_run_id: int, attempt: int) -> tuple[TaskStep, StepContext, Any] | None:
    from .engine import _context, _lock_instance_of_step, _steps, definition_of

    with transaction.atomic():
        instance = _lock_instance_of_step(step_run_id)
        if instance is None or instance.state != I.COMPENSATING:
            return None
        steps = _steps(instance)
        step = next((s for s in steps.values() if s.pk == step_run_id), None)
        if (
            step is None
            or step.state != S.COMPENSATING
            or step.comp_attempt != attempt
            or step.comp_phase not in ("scheduled", "retrying")
        ):
            return None
        journal = Journal(instance, actor="worker")
        if step.next_attempt_at and step.next_attempt_at > journal.now:
            return None
        spec = _compensation(definition_of(instance), step)
        if spec is None:
            return None
        step.comp_phase = "running"
        step.timeout_at = journal.now + spec.start_to_close
        journal.record("step_compensation_started", step=step, attempt=attempt)
        journal.flush()
        ctx = _context(instance, steps, step)
        ctx = dataclasses.replace(ctx, attempt=attempt, attempted_only=step.comp_attempted)
        return spec, ctx, None if step.comp_attempted else step.output


def finish(
    *,
    step_run_id: int,
    attempt: int,
    error: BaseException | None = None,
    error_data: dict[str, Any] | None = None,
    result: Any = None,
) -> bool:
    """Record a compensation attempt's outcome (success, or error / timeout for a retry)."""
    from .engine import _lock_instance_of_step, _steps, definition_of, error_info

    with transaction.atomic():
        instance = _lock_instance_of_step(step_run_id)
        if instance is None or instance.state != I.COMPENSATING:
            return False
        steps = _steps(instance)
        step = next((s for s in steps.values() if s.pk == step_run_id), None)
        if (
            step is None
            or step.state != S.COMPENSATING
            or step.comp_attempt != attempt
            or step.comp_phase != "running"
        ):
            return False
        journal = Journal(instance, actor="worker" if error_data is None else "sweeper")
        definition = definition_of(instance)
        step.timeout_at = None
        if error is None and error_data is None:
            step.finish_compensation()
            data: dict[str, Any] = {} if result is None else {"result": result}
            if step.comp_attempted:
                data["attempted"] = True
            journal.record("step_compensated", step=step, attempt=attempt, data=data or None)
        else:
            _failed_attempt(
                instance, steps, step, definition, journal, error_data or error_info(error), error
            )
        advance(instance, steps, definition, journal)
        journal.flush()
        return True


def _failed_attempt(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    step: StepRun,
    definition: Workflow | None,
    journal: Journal,
    info: dict[str, Any],
    error: BaseException | None,
) -> None:
    spec = _compensation(definition, step)
    policy = spec.compensate_retry if spec else None
    used = step.comp_attempt - step.comp_base
    from .engine import scrubbed_error

    retryable = policy is not None and (error is None or policy.is_retryable(error))
    info = scrubbed_error(instance, steps, info)
    step.error = info
    if retryable and used < policy.max_attempts:
        failed = step.comp_attempt
        step.comp_attempt += 1
        step.comp_phase = "retrying"
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
    step.comp_phase = "failed"
    journal.record(
        "step_compensation_failed", step=step, attempt=step.comp_attempt, data={"error": info}
    )
    # Other compensations already running finish; the instance is failed and retryable.
    failure = {"phase": "compensation", "step": step.name, **info}
    instance.fail(failure)
    instance.finished_at = journal.now
    journal.record("instance_failed", data={"error": failure})


def execute(*, step_run_id: int, attempt: int) -> str:
    from .engine import _jsonable

    claimed = claim(step_run_id=step_run_id, attempt=attempt)
    if claimed is None:
        return "stale"
    spec, ctx, output = claimed
    try:
        result = _jsonable(spec.compensate(ctx, output))
    except SoftTimeLimitExceeded:
        finish(
            step_run_id=step_run_id,
            attempt=attempt,
            error_data={
                "type": "signoff.StepTimeout",
                "message": "compensation exceeded start_to_close",
                "traceback": "",
            },
        )
        return "timed_out"
    except Exception as exc:  # noqa: BLE001 - the engine applies the policy
        finish(step_run_id=step_run_id, attempt=attempt, error=exc)
        return "failed"
    finish(step_run_id=step_run_id, attempt=attempt, result=result)
    return "compensated"


def time_out(*, step_run_id: int) -> bool:
    """Sweeper: a compensation attempt past its start-to-close (its worker died)."""
    step = StepRun.objects.filter(pk=step_run_id).values("comp_attempt").first()
    if step is None:
        return False
    return finish(
        step_run_id=step_run_id,
        attempt=step["comp_attempt"],
        error_data={
            "type": "signoff.StepTimeout",
            "message": "compensation exceeded start_to_close",
            "traceback": "",
        },
    )


def ring_again(*, step_run_id: int, older_than: Any) -> bool:
    """Sweeper: re-ring a compensation whose message was lost."""
    from django.utils import timezone

    from .engine import _lock_instance_of_step, definition_of
    from .journal import Doorbell, ring_doorbells

    with transaction.atomic():
        instance = _lock_instance_of_step(step_run_id, skip_locked=True)
        if instance is None or instance.state != I.COMPENSATING:
            return False
        step = StepRun.objects.filter(pk=step_run_id).first()
        if (
            step is None
            or step.state != S.COMPENSATING
            or step.comp_phase not in ("scheduled", "retrying")
            or step.next_attempt_at is None
            or step.next_attempt_at > older_than
            or (step.rung_at is not None and step.rung_at > older_than)
        ):
            return False
        spec = _compensation(definition_of(instance), step)
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
        transaction.on_commit(lambda: ring_doorbells(bells))
        return True
