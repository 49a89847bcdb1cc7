"""Operator and API actions on an instance or one of its steps: cancel, retry, pause, unpause,
resume, retry a step now, complete a step by hand, revise the input.

Each opens its transaction through :func:`~.locking.lock_instance`, raises
:class:`~orchestration.errors.SignoffError` subclasses (changing nothing) when the action does
not apply, and writes one event per change. Who may act is the caller's question, except on
steps of a kind another app owns: that kind is asked (:func:`kinds.authorize_operator`).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils.translation import gettext_noop

from .. import kinds
from ..definitions import TaskStep
from ..errors import Conflict, InvalidInput, Message, NotFound, state_word
from ..jsonsafe import storable_json_problem, string_problem
from ..models import STEP_RETRYABLE, InstanceState, StepRun, StepState, WorkflowInstance
from .advancing import advance, reopen_instance
from .compensating import retry_compensation
from .context import stored_output
from .locking import LockedInstance, lock_instance
from .task_kind import schedule_task, time_limit_of

I = InstanceState  # noqa: E741
S = StepState


def _lock_for_operator(instance_id: Any, actor: str) -> LockedInstance:
    locked = lock_instance(instance_id=instance_id, actor=actor)
    if locked is None:
        raise NotFound(gettext_noop("instance not found"))
    return locked


def _lock_step_for_operator(step_run_id: Any, actor: str) -> LockedInstance:
    """The instance locked by one of its steps' ids (``.step``); NotFound for a bad id."""
    try:
        pk = int(step_run_id)
    except (TypeError, ValueError):
        raise NotFound(gettext_noop("step not found")) from None
    locked = lock_instance(step_run_id=pk, actor=actor)
    if locked is None:
        raise NotFound(gettext_noop("step not found"))
    return locked


def instance_cancel(
    *, instance_id: Any, actor: str = "system", reason: str = ""
) -> WorkflowInstance:
    """Cancel an instance that has not finished (or a failed one). Cancels its open steps;
    running attempts finish but their results are ignored. Raises :class:`Conflict` when the
    instance already finished."""
    if not isinstance(reason, str) or len(reason) > 1000 or string_problem(reason):
        raise InvalidInput(gettext_noop("reason must be valid text of at most 1000 characters"))
    with transaction.atomic():
        locked = _lock_for_operator(instance_id, actor)
        instance = locked.instance
        if instance.state not in (I.PENDING, I.RUNNING, I.FAILED):
            raise Conflict(
                Message(
                    gettext_noop("instance is %(state)s; it cannot be cancelled"),
                    state=state_word(instance.state),
                ),
                code="invalid_state",
            )
        locked.cancel_instance(reason)
        locked.journal.flush()
        return instance


def instance_retry(
    *, instance_id: Any, actor: str = "system", user: Any = None, reason: str = ""
) -> WorkflowInstance:
    """Retry a failed instance from its failed, timed-out or cancelled steps, each with a
    fresh retry budget and schedule-to-close window. Raises :class:`Conflict` unless the
    instance is ``failed``. Steps of another app's kind start again only if that kind allows
    ``user`` (None: the system) to retry them (:func:`kinds.authorize_operator`). A
    ``reason`` (optional) is recorded on the ``instance_retried`` event."""
    if not isinstance(reason, str) or len(reason) > 1000 or string_problem(reason):
        raise InvalidInput(gettext_noop("reason must be valid text of at most 1000 characters"))
    with transaction.atomic():
        locked = _lock_for_operator(instance_id, actor)
        instance, steps, journal = locked.instance, locked.steps, locked.journal
        if instance.state != I.FAILED:
            raise Conflict(
                Message(
                    gettext_noop("instance is %(state)s; only failed instances can be retried"),
                    state=state_word(instance.state),
                ),
                code="invalid_state",
            )
        definition = locked.definition
        if definition is None:
            raise Conflict(
                Message(
                    gettext_noop("%(workflow)s v%(version)s is not registered"),
                    workflow=instance.workflow,
                    version=instance.version,
                ),
                code="definition_missing",
            )
        if (instance.error or {}).get("phase") == "compensation":
            retry_compensation(instance, steps, definition, journal, reason=reason)
            journal.flush()
            return instance
        reopen_instance(instance, definition, journal, {"reason": reason} if reason else None)
        for name in definition.order():
            step = steps[name]
            if step.state in STEP_RETRYABLE:
                step.attempt_base = step.attempt
                spec = definition.steps[name]
                kinds.authorize_operator(
                    action="retry", step_run=step, spec=spec, instance=instance, user=user
                )
                kinds.get_kind(spec.kind).retried(
                    step_run=step, spec=spec, journal=journal, now=journal.now
                )
        advance(instance, steps, definition, journal)
        journal.flush()
        return instance


def instance_revise_input(
    *, instance_id: Any, changes: dict[str, Any], actor: str = "system", reason: str = ""
) -> dict[str, Any]:
    """Change top-level fields of a running instance's input, under the instance lock.

    The whole input after the change must pass the workflow's ``input_schema``; the field
    naming the requester (``requester_input``) cannot change. Sensitive fields are sealed
    again. Steps that already ran are not run again: later steps see the new input. Writes
    ``instance_input_revised`` with a diff (``{field: {"from", "to"}}``; a sealed field's
    values masked) when something changed, and returns that diff (empty: nothing changed,
    nothing written). Raises :class:`InvalidInput`, :class:`NotFound` or :class:`Conflict`
    (not running) and changes nothing then. Who may revise is the caller's question."""
    with transaction.atomic():
        locked = _lock_for_operator(instance_id, actor)
        diff = locked.revise_input(changes, reason=reason)
        locked.journal.flush()
        return diff


def _ring_open_steps(locked: LockedInstance, *, now_only: bool) -> list[str]:
    """Ring every scheduled/retrying step again (retrying ones at their due time, or now)."""
    definition, journal = locked.definition, locked.journal
    rung = []
    for step in locked.steps.values():
        if step.state not in (S.SCHEDULED, S.RETRYING):
            continue
        spec = definition.steps.get(step.name) if definition else None
        eta = None
        if step.next_attempt_at and step.next_attempt_at > journal.now and not now_only:
            eta = step.next_attempt_at
        else:  # due now: also restarts the doorbell sweeper's back-off (rung_at - due)
            step.next_attempt_at = journal.now
        step.rung_at = journal.now
        journal.touch(step)
        journal.ring(
            step, eta=eta, queue=getattr(spec, "queue", None), time_limit=time_limit_of(spec)
        )
        rung.append(step.name)
    return rung


def instance_pause(*, instance_id: Any, actor: str) -> WorkflowInstance:
    """Pause a running instance: nothing new is scheduled or started until unpaused; attempts
    already running finish and are recorded. Writes ``instance_paused``."""
    with transaction.atomic():
        locked = _lock_for_operator(instance_id, actor)
        instance, journal = locked.instance, locked.journal
        if instance.state != I.RUNNING:
            raise Conflict(
                Message(
                    gettext_noop("instance is %(state)s; only running instances can be paused"),
                    state=state_word(instance.state),
                ),
                code="invalid_state",
            )
        if instance.paused_at is not None:
            raise Conflict(gettext_noop("instance is already paused"), code="already_paused")
        instance.paused_at = journal.now
        journal.record("instance_paused")
        journal.flush()
        return instance


def instance_unpause(*, instance_id: Any, actor: str) -> WorkflowInstance:
    """Undo :func:`instance_pause`: ring the waiting steps and schedule what became ready.
    Writes ``instance_unpaused``."""
    with transaction.atomic():
        locked = _lock_for_operator(instance_id, actor)
        instance, journal = locked.instance, locked.journal
        if instance.paused_at is None:
            raise Conflict(gettext_noop("instance is not paused"), code="not_paused")
        instance.paused_at = None
        journal.record("instance_unpaused")
        _ring_open_steps(locked, now_only=False)
        locked.advance()
        journal.flush()
        return instance


def instance_resume(*, instance_id: Any, actor: str) -> list[str]:
    """Resume a stuck instance: ring the doorbell of every scheduled or retrying step now
    (skipping backoffs), e.g. after the broker lost its messages. Writes ``instance_resumed``
    and returns the steps rung."""
    with transaction.atomic():
        locked = _lock_for_operator(instance_id, actor)
        instance, journal = locked.instance, locked.journal
        if instance.state != I.RUNNING:
            raise Conflict(
                Message(
                    gettext_noop("instance is %(state)s; only running instances can be resumed"),
                    state=state_word(instance.state),
                ),
                code="invalid_state",
            )
        if instance.paused_at is not None:
            raise Conflict(gettext_noop("instance is paused; unpause it instead"), code="paused")
        rung = _ring_open_steps(locked, now_only=True)
        journal.record("instance_resumed", data={"rung": rung})
        journal.flush()
        return rung


def step_retry_now(*, step_run_id: Any, actor: str) -> StepRun:
    """Run a step again now: a ``retrying`` step skips the rest of its backoff; a failed,
    timed-out or cancelled step of a failed instance is scheduled again with a fresh retry
    budget (the instance runs again). Writes ``step_scheduled`` (data ``operator``)."""
    with transaction.atomic():
        locked = _lock_step_for_operator(step_run_id, actor)
        instance, journal, step, definition = (
            locked.instance,
            locked.journal,
            locked.step,
            locked.definition,
        )
        if (instance.error or {}).get("phase") == "compensation":
            raise Conflict(
                gettext_noop(
                    "the instance failed while undoing its steps: retry the undo or resolve it"
                ),
                code="undo_failed",
            )
        spec = definition.steps.get(step.name) if definition else None
        if not isinstance(spec, TaskStep):
            raise Conflict(gettext_noop("only task steps can be retried"), code="invalid_step")
        if step.state == S.RETRYING and instance.state == I.RUNNING:
            step.next_attempt_at = journal.now
            step.rung_at = journal.now
            journal.record("step_scheduled", step=step, data={"operator": True, "now": True})
            journal.ring(step, queue=spec.queue, time_limit=time_limit_of(spec))
        elif step.state in STEP_RETRYABLE and instance.state in (I.FAILED, I.RUNNING):
            if instance.state == I.FAILED:
                reopen_instance(instance, definition, journal, {"step": step.name})
            step.attempt_base = step.attempt
            schedule_task(step, spec, journal, retry=True)
        else:
            raise Conflict(
                Message(
                    gettext_noop(
                        "step is %(step_state)s in a %(state)s instance; nothing to retry"
                    ),
                    step_state=state_word(step.state),
                    state=state_word(instance.state),
                ),
                code="invalid_state",
            )
        journal.flush()
        return step


def step_complete_manually(
    *, step_run_id: Any, output: Any, actor: str, reason: str, user: Any = None
) -> StepRun:
    """Mark a step succeeded with ``output`` given by an operator who did its work by hand
    (a failed, timed-out, cancelled, retrying, scheduled or waiting step). A failed instance
    with no other failed step runs again; the flow continues. Writes
    ``step_completed_manually``. A step of a kind another app owns (an approval) is completed
    only if that kind allows ``user`` to (:func:`kinds.authorize_operator`, under the lock)."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
        raise InvalidInput(
            gettext_noop("a reason (up to 1000 characters) is required"), code="reason_required"
        )
    problem = storable_json_problem(output)
    if problem:
        raise InvalidInput(
            Message(gettext_noop("output: %(problem)s"), problem=problem), code="invalid_output"
        )
    with transaction.atomic():
        locked = _lock_step_for_operator(step_run_id, actor)
        instance, journal, step = locked.instance, locked.journal, locked.step
        if instance.state not in (I.RUNNING, I.FAILED):
            raise Conflict(
                Message(gettext_noop("instance is %(state)s"), state=state_word(instance.state)),
                code="invalid_state",
            )
        if (instance.error or {}).get("phase") == "compensation":
            raise Conflict(
                gettext_noop(
                    "the instance failed while undoing its steps: retry the undo or resolve it"
                ),
                code="undo_failed",
            )
        definition = locked.definition
        if step.state not in (
            S.FAILED,
            S.TIMED_OUT,
            S.CANCELLED,
            S.RETRYING,
            S.SCHEDULED,
            S.WAITING,
        ):
            raise Conflict(
                Message(
                    gettext_noop("step is %(step_state)s; it cannot be completed by hand"),
                    step_state=state_word(step.state),
                ),
                code="invalid_state",
            )
        spec = definition.steps.get(step.name) if definition else None
        if spec is not None:
            kinds.authorize_operator(
                action="complete", step_run=step, spec=spec, instance=instance, user=user
            )
        was_waiting = step.state == S.WAITING
        step.complete_manually(stored_output(instance, step.name, output))
        step.finished_at = journal.now
        step.next_attempt_at = None
        step.timeout_at = None
        journal.record(
            "step_completed_manually",
            step=step,
            data={"reason": reason.strip(), "output": step.output},
        )
        if spec is not None:
            kinds.get_kind(spec.kind).completed_by_hand(
                step_run=step, spec=spec, journal=journal, now=journal.now, was_waiting=was_waiting
            )
        _reopen_after_manual_completion(locked, step)
        locked.advance()
        journal.flush()
        return step


def _reopen_after_manual_completion(locked: LockedInstance, step: StepRun) -> None:
    """A failed instance with no failed or timed-out step left runs again, with the task steps
    its failure cancelled."""
    instance, journal, definition = locked.instance, locked.journal, locked.definition
    still_failed = any(s.state in (S.FAILED, S.TIMED_OUT) for s in locked.steps.values())
    if instance.state != I.FAILED or still_failed:
        return
    reopen_instance(instance, definition, journal, {"step": step.name})
    # steps the failure cancelled go on too
    for other in locked.steps.values():
        other_spec = definition.steps.get(other.name) if definition else None
        if other.state == S.CANCELLED and isinstance(other_spec, TaskStep):
            other.attempt_base = other.attempt
            schedule_task(other, other_spec, journal, retry=True)
