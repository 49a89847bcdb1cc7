"""Moving an instance forward under its lock: start the steps that became ready (through their
kinds), and succeed, fail, cancel or reopen the instance. Services call these after changing a
step; nothing here locks or flushes."""

from __future__ import annotations

from typing import Any

from ..definitions import Workflow
from ..journal import Journal
from ..kinds import get_kind
from ..models import STEP_ACTIVE, STEP_DONE, InstanceState, StepRun, StepState, WorkflowInstance
from .cancelling import cancel_step
from .compensating import needs_compensation, start_compensation
from .context import context_of, error_info, jsonable, scrubbed_error, sealed_derived

I = InstanceState  # noqa: E741
S = StepState


def advance(
    instance: WorkflowInstance, steps: dict[str, StepRun], definition: Workflow, journal: Journal
) -> None:
    """Start every pending step whose dependencies are done; finish the instance when all are.

    Runs under the instance lock, so two branches finishing at once schedule a join once.
    """
    if instance.state != I.RUNNING:
        return
    journal.steps = steps
    if instance.paused_at is not None:
        # Paused: nothing new starts; finishing is still noticed.
        if all(s.state in STEP_DONE for s in steps.values()):
            succeed_instance(instance, steps, definition, journal)
        return
    for name in definition.order():
        step = steps[name]
        if step.state != S.PENDING:
            continue
        spec = definition.steps[name]
        if any(steps[dep].state not in STEP_DONE for dep in spec.after):
            continue
        if spec.when is not None:
            try:
                go = bool(spec.when(context_of(instance, steps, step)))
            except Exception as exc:  # noqa: BLE001 - a broken predicate fails the step
                step.fail_before_start()
                step.error = scrubbed_error(instance, steps, error_info(exc))
                step.finished_at = journal.now
                journal.record(
                    "step_failed", step=step, data={"reason": "when_raised", "error": step.error}
                )
                fail_instance(instance, steps, definition, journal, {"step": name, **step.error})
                return
            if not go:
                step.skip()
                step.finished_at = journal.now
                journal.record("step_skipped", step=step, data={"reason": "when_false"})
                continue
        get_kind(spec.kind).ready(step_run=step, spec=spec, journal=journal, now=journal.now)
        if instance.state != I.RUNNING:
            return  # the kind failed (or cancelled) the instance (a map's bad items...)
    if all(s.state in STEP_DONE for s in steps.values()):
        succeed_instance(instance, steps, definition, journal)


def succeed_instance(
    instance: WorkflowInstance, steps: dict[str, StepRun], definition: Workflow, journal: Journal
) -> None:
    if definition.output_fn is not None:
        last = steps[definition.order()[-1]]
        output = sealed_derived(
            instance, steps, jsonable(definition.output_fn(context_of(instance, steps, last)))
        )
    else:
        output = {
            name: steps[name].output
            for name in definition.leaves()
            if steps[name].state == S.SUCCEEDED
        }
    instance.succeed(output)
    instance.finished_at = journal.now
    journal.record("instance_succeeded")


def fail_instance(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow,
    journal: Journal,
    error: dict[str, Any],
) -> None:
    """Fail the instance; cancel what waits to run. Running attempts finish and are recorded,
    but nothing new is scheduled. With something to undo, the saga unwinds instead."""
    if needs_compensation(steps, definition):
        start_compensation(instance, steps, definition, journal, cause="failed", error=error)
        return
    instance.fail(error)
    instance.finished_at = journal.now
    for step in steps.values():
        if step.state in (S.SCHEDULED, S.RETRYING, S.WAITING):
            cancel_step(step, definition, journal, reason="instance_failed")
    journal.record("instance_failed", data={"error": error})


def cancel_instance(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow | None,
    journal: Journal,
    reason: str,
) -> None:
    """Cancel the instance with its open steps (and, through their kinds, what they opened);
    with something to undo, the saga unwinds first (unless its compensation already failed)."""
    compensation_failed = (instance.error or {}).get("phase") == "compensation"
    if definition is not None and not compensation_failed and needs_compensation(steps, definition):
        start_compensation(
            instance, steps, definition, journal, cause="cancelled", error=None, reason=reason
        )
        return
    for step in steps.values():
        if step.state in (S.PENDING, *STEP_ACTIVE):
            cancel_step(step, definition, journal, reason="instance_cancelled")
    instance.cancel()
    instance.finished_at = journal.now
    journal.record("instance_cancelled", data={"reason": reason} if reason else None)


def reopen_instance(
    instance: WorkflowInstance,
    definition: Workflow | None,
    journal: Journal,
    data: dict[str, Any] | None = None,
) -> None:
    """A failed instance runs again: ``failed`` → ``running`` with a fresh deadline."""
    instance.retry()
    if definition is not None and definition.deadline is not None:
        instance.deadline_at = journal.now + definition.deadline
    journal.record("instance_retried", data=data)
