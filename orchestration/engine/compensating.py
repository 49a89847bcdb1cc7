"""The saga under the instance lock: when an instance fails or is cancelled, which
compensations to schedule, and when the instance is done undoing.

The compensations of succeeded steps run newest first: a step is compensated once every step
that depends on it is settled (compensated, or never succeeded, or has nothing to undo), so
parallel branches unwind in parallel and a chain unwinds in reverse. Attempts still running
when the saga starts are waited for (never cancelled), and compensated too if they succeed.
Each compensation is a Celery task with its own retry policy (:mod:`orchestration.saga` runs
its attempts), claimed like a forward attempt (state ``compensating``, sub-phase
``comp_phase``). When all are done the instance is ``compensated``; a compensation that keeps
failing leaves it ``failed`` with ``error.phase == "compensation"``, and retrying the instance
retries the compensation.

A step declared with ``compensate_attempted=True`` is also undone when it never succeeded but
one of its attempts was claimed (``step_started``): it failed, timed out, or was waiting to
retry (or scheduled again by an operator) when the saga cancelled it; the attempt may have
applied its effect before it failed. Such a step is marked ``comp_attempted`` and its
compensation gets output None and ``ctx.attempted_only``. Its dependents never ran, so it is
undone first, like the newest step of its branch, and the steps it depends on wait for it.
"""

from __future__ import annotations

from typing import Any

from ..definitions import TaskStep, Workflow
from ..journal import Journal
from ..models import CompensationPhase, Event, InstanceState, StepRun, StepState, WorkflowInstance
from .cancelling import cancel_step

I = InstanceState  # noqa: E741
S = StepState
C = CompensationPhase


def compensation_of(definition: Workflow | None, step: StepRun) -> TaskStep | None:
    """The step's spec when it declares a compensation."""
    spec = definition.steps.get(step.name) if definition else None
    if isinstance(spec, TaskStep) and spec.compensate is not None:
        return spec
    return None


def _owed(definition: Workflow | None, step: StepRun) -> TaskStep | None:
    """The step's compensation if the saga still owes it: the step succeeded, or it never did
    but an attempt was claimed and it declares ``compensate_attempted``."""
    spec = compensation_of(definition, step)
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
        spec = compensation_of(definition, step)
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
        s.state in (S.SUCCEEDED, S.RUNNING) and compensation_of(definition, s) is not None
        for s in steps.values()
    ) or bool(claimed_unsucceeded(steps, definition))


def start_compensation(
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
    owed = claimed_unsucceeded(steps, definition)
    for step in steps.values():
        if step.name in owed:
            step.comp_attempted = True
            journal.touch(step)
        if step.state in (S.PENDING, S.SCHEDULED, S.RETRYING, S.WAITING):
            cancel_step(step, definition, journal, reason=f"instance_{cause}")
    instance.compensate()
    instance.error = error
    data: dict[str, Any] = {"cause": cause, "error": error}
    if reason:
        data["reason"] = reason
    journal.record("instance_compensating", data=data)
    advance_compensation(instance, steps, definition, journal)


def advance_compensation(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow | None,
    journal: Journal,
) -> None:
    """Start every compensation whose dependents are settled; finish when nothing is left.
    Does nothing unless the instance is ``compensating``."""
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
        spec = _owed(definition, step)
        if spec is None:
            continue
        waiting_on = [
            d
            for d in dependents.get(name, [])
            if steps[d].state == S.COMPENSATING or _owed(definition, steps[d]) is not None
        ]
        open_ = True
        if waiting_on:
            continue
        schedule_compensation(step, spec, journal)
    if not open_:
        instance.finish_compensation()
        instance.finished_at = journal.now
        journal.record("instance_compensated")


def schedule_compensation(
    step: StepRun, spec: TaskStep, journal: Journal, *, fresh: bool = True
) -> None:
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
        step.queue_compensation()
        data = {"attempted": True} if step.comp_attempted else None
    step.next_attempt_at = journal.now
    step.rung_at = journal.now
    step.timeout_at = None
    journal.record("step_compensating", step=step, attempt=step.comp_attempt, data=data)
    journal.ring_compensation(
        step, queue=spec.queue, time_limit=spec.start_to_close.total_seconds()
    )


def retry_compensation(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow,
    journal: Journal,
    *,
    reason: str = "",
) -> None:
    """Retry an instance whose compensation failed: back to ``compensating``."""
    instance.compensate()
    instance.error = None
    data = {"phase": "compensation", **({"reason": reason} if reason else {})}
    journal.record("instance_retried", data=data)
    for step in steps.values():
        spec = compensation_of(definition, step)
        if step.state == S.COMPENSATING and step.comp_phase == C.FAILED and spec:
            step.comp_base = step.comp_attempt
            schedule_compensation(step, spec, journal, fresh=False)
    advance_compensation(instance, steps, definition, journal)
