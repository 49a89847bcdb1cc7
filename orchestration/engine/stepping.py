"""Running a task step's attempt (what the Celery task calls): claim, execute, complete, fail.

Each service opens its transaction through :func:`~.locking.lock_instance` (by the step's id)
and ignores, changing nothing, a message for an attempt that is not the one the step waits for:
duplicates, stale and redelivered messages are normal. This is the engine's hot path: the lock
and load are fixed SQL, and the completing transaction may claim the next step at once
(:func:`complete_attempt` with ``hold``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError, connection, transaction

from .. import sealing, tracing
from ..definitions import StepContext, TaskStep, Workflow
from ..journal import Journal
from ..models import InstanceState, StepRun, StepState, WorkflowInstance
from .advancing import advance
from .compensating import advance_compensation
from .context import context_of, error_info, jsonable, stored_output
from .locking import lock_instance
from .retrying import attempt_failed
from .sweeping import step_time_out

log = logging.getLogger("signoff.engine")

I = InstanceState  # noqa: E741
S = StepState
RUNNING = (I.RUNNING,)
CLAIMABLE = (S.SCHEDULED, S.RETRYING)


@dataclass(frozen=True)
class Claimed:
    spec: TaskStep
    context: StepContext
    step_run_id: int = 0
    attempt: int = 0
    trace_context: str = ""  # the instance's (orchestration.tracing)


def step_claim(*, step_run_id: int, attempt: int) -> Claimed | None:
    """Claim attempt ``attempt`` of a step: ``scheduled``/``retrying`` → ``running``.

    Returns None (and changes nothing) for a duplicate or stale message: the step is not
    waiting for exactly this attempt, its backoff has not elapsed, or its instance is not
    running. Writes ``step_started``.
    """
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="worker",
            instance_states=RUNNING,
            step_states=CLAIMABLE,
        )
        if locked is None or locked.instance.paused_at is not None:
            return None  # unpausing rings again
        step = locked.step
        if step.attempt != attempt:
            return None
        journal = locked.journal
        claimed = claim_locked(locked.instance, locked.steps, step, locked.definition, journal)
        if journal.events:
            journal.flush()
        return claimed


def claim_locked(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    step: StepRun,
    definition: Workflow | None,
    journal: Journal,
) -> Claimed | None:
    """:func:`step_claim` on the locked instance, recorded on ``journal`` (not flushed).
    Records nothing for an early message; records the failed attempt when the step's
    definition or its keys are missing."""
    now = journal.now
    if step.next_attempt_at is not None and step.next_attempt_at > now + timedelta(seconds=1):
        return None  # an early message; its own doorbell or the sweeper comes back
    spec = definition.steps.get(step.name) if definition else None
    step.claim()
    step.started_at = now
    if not isinstance(spec, TaskStep):
        # A deploy removed this definition: fail the attempt; the policy may retry.
        step.timeout_at = None
        journal.record("step_started", step=step)
        attempt_failed(
            instance,
            steps,
            step,
            spec,
            definition,
            journal,
            {
                "type": "signoff.DefinitionMissing",
                "message": f"{instance.workflow} v{instance.version} step {step.name!r} "
                "is not registered in this worker",
                "traceback": "",
            },
            retryable=spec is not None,
            reason="definition_missing",
        )
        return None
    step.timeout_at = now + spec.start_to_close
    if step.close_by is not None:
        step.timeout_at = min(step.timeout_at, step.close_by)
    journal.record("step_started", step=step)
    try:
        context = context_of(instance, steps, step)
    except sealing.SealError as exc:
        # A key is missing or wrong: a clear, retryable failure (a deploy may fix keys).
        attempt_failed(
            instance,
            steps,
            step,
            spec,
            definition,
            journal,
            {"type": "signoff.SealError", "message": str(exc), "traceback": ""},
            retryable=True,
            reason="seal_error",
        )
        return None
    return Claimed(
        spec=spec,
        context=context,
        step_run_id=step.pk,
        attempt=step.attempt,
        trace_context=instance.trace_context,
    )


def step_complete(*, step_run_id: int, attempt: int, output: Any) -> bool:
    """Record a successful attempt and advance the instance. Ignores (returns False) a result
    for an attempt that is no longer running, e.g. one the timeout sweeper gave up on."""
    return complete_attempt(step_run_id, attempt, output, hold=False)[0]


def complete_attempt(
    step_run_id: int,
    attempt: int,
    output: Any,
    *,
    hold: bool | str | None,
    until: float | None = None,
) -> tuple[bool, Claimed | None]:
    """:func:`step_complete`; with ``hold`` (a queue name, None for the default queue) the
    first task step this completion schedules on that queue — when its start-to-close ends
    before ``until`` (``time.monotonic()``) — is not rung but claimed in this same
    transaction and returned, for the caller to run at once in this worker: one transaction
    and one broker round trip less per chained step. If this worker dies before the step's
    function returns, the step is ``running`` like any claimed attempt, and the timeout
    sweeper retries it after its start-to-close."""
    output = jsonable(output)
    with transaction.atomic():
        locked = lock_instance(step_run_id=step_run_id, actor="worker")
        if locked is None:
            return False, None
        instance, steps, step = locked.instance, locked.steps, locked.step
        if step is None or step.state != S.RUNNING or step.attempt != attempt:
            log.info(
                "result of step %s attempt %s ignored (no longer running)",
                step_run_id,
                attempt,
                extra={
                    "instance_id": str(instance.pk),
                    "step_run_id": step_run_id,
                    "attempt": attempt,
                },
            )
            return False, None
        journal = locked.journal
        if hold is not False:
            journal.hold_for(hold, until=until)
        step.succeed(stored_output(instance, step.name, output))
        step.finished_at = journal.now
        step.timeout_at = None
        journal.record("step_succeeded", step=step)
        definition = locked.definition
        if definition is not None:
            advance(instance, steps, definition, journal)
        advance_compensation(instance, steps, definition, journal)
        claimed = None
        held = journal.held_step
        if held is not None:
            if (
                instance.state == I.RUNNING
                and instance.paused_at is None
                and held.state in CLAIMABLE
            ):
                claimed = claim_locked(instance, steps, held, definition, journal)
            else:
                journal.release_held()
        journal.flush()
        return True, claimed


def step_fail(
    *,
    step_run_id: int,
    attempt: int,
    error: BaseException,
    error_data: dict[str, Any] | None = None,
) -> bool:
    """Record a failed attempt and apply the retry policy: ``retrying`` with a backoff, or
    ``failed`` (non-retryable, exhausted, past schedule-to-close) which fails the instance."""
    info = error_data or error_info(error)
    with transaction.atomic():
        locked = lock_instance(step_run_id=step_run_id, actor="worker", step_states=(S.RUNNING,))
        if locked is None or locked.step.attempt != attempt:
            return False
        definition = locked.definition
        step = locked.step
        spec = definition.steps.get(step.name) if definition else None
        retryable = spec.retry.is_retryable(error) if isinstance(spec, TaskStep) else False
        attempt_failed(
            locked.instance,
            locked.steps,
            step,
            spec,
            definition,
            locked.journal,
            info,
            retryable=retryable,
            reason="error",
        )
        locked.journal.flush()
        return True


def step_execute(*, step_run_id: int, attempt: int, chain_until: float | None = None) -> str:
    """Run one attempt of a task step: claim, call the function outside any transaction,
    record the outcome. Safe to call twice with the same arguments: the second claim fails.

    With ``chain_until`` (a ``time.monotonic()`` deadline: the worker's time limit for this
    message), when the step's completion makes a next step on the same queue ready, and
    that step's start-to-close fits before the deadline, the completing transaction also
    claims it and it runs here at once instead of waiting for its own Celery message (see
    :func:`complete_attempt`).

    With tracing on, each attempt has its span (:func:`orchestration.tracing.step_span`),
    the first one from before its claim.
    """
    began = tracing.clock()
    try:
        claimed = step_claim(step_run_id=step_run_id, attempt=attempt)
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        # The server dropped the connection (a restart, a failover, an idle timeout) and this
        # was its first use: nothing was written. Reconnect and claim once more, rather than
        # leave the step to the doorbell sweeper. (Had the claim committed after all, the
        # second one finds the step running and does nothing.)
        log.warning("claim of step %s failed on a dropped connection; reconnecting", step_run_id)
        connection.close()
        claimed = step_claim(step_run_id=step_run_id, attempt=attempt)
    outcome = "stale"
    while claimed is not None:
        with tracing.step_span(claimed.context, claimed.trace_context, began) as span:
            outcome, claimed = _run_attempt(claimed, chain_until, span)
        began = None
    return outcome


def _run_attempt(
    claimed: Claimed, chain_until: float | None, span: Any
) -> tuple[str, Claimed | None]:
    """Call a claimed attempt's function and record its outcome; returns the outcome and the
    next step this worker claimed to run at once (chaining), if any."""
    step_run_id, attempt = claimed.step_run_id, claimed.attempt
    fn = claimed.spec.fn
    assert fn is not None
    try:
        output = jsonable(fn(claimed.context))
    except SoftTimeLimitExceeded:
        # The worker enforced start-to-close itself; same outcome as the sweeper's.
        step_time_out(step_run_id=step_run_id, attempt=attempt)
        tracing.step_outcome(span, "timed_out")
        return "timed_out", None
    except Exception as exc:  # noqa: BLE001 - every step error is the engine's to handle
        step_fail(step_run_id=step_run_id, attempt=attempt, error=exc)
        tracing.step_outcome(span, "failed", exc)
        return "failed", None
    hold = claimed.spec.queue if chain_until is not None else False
    recorded, next_claimed = complete_attempt(
        step_run_id, attempt, output, hold=hold, until=chain_until
    )
    # "ignored": the step had moved on (timed out, cancelled) before this result came.
    tracing.step_outcome(span, "succeeded" if recorded else "ignored")
    return "succeeded", next_claimed
