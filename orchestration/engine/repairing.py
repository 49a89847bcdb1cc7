"""Operator repair: edit an instance's input or a finished step's output before a retry, skip a
failed step with an output given by hand, reset (re-run) the instance from a chosen step, and
resolve by hand a compensation that failed for good.

Each service opens its transaction through :func:`~.locking.lock_instance`, checks everything
before it changes anything (a :class:`~orchestration.errors.SignoffError` then, nothing
written), asks the kind of every step it touches (:func:`kinds.authorize_operator` with
``edit``, ``skip``, ``reset`` or ``resolve``: approvals answer with their decision policy), and
writes one event naming the actor, the reason and the change (and one event for each further
state change it causes, as every engine service does).

Which instances may be repaired:

- *edit* (input or output): a ``failed`` instance (its forward run, not its undo), or a
  ``running`` one that is paused — nothing runs then, so nothing reads the value mid-change;
- *skip*: a ``failed``, ``timed_out`` or ``cancelled`` step of a failed instance, or a
  ``retrying`` step of a running one;
- *reset*: a ``failed`` instance (forward run);
- *resolve*: a step whose compensation failed for good (``undo failed``), in an instance
  failed in its undo.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.utils.translation import gettext_noop

from .. import kinds, sealing
from ..definitions import Workflow
from ..errors import Conflict, InvalidInput, Message, NotFound, invalid_input, state_word
from ..jsonsafe import storable_json_problem, string_problem
from ..models import (
    STEP_ACTIVE,
    STEP_DONE,
    STEP_RETRYABLE,
    CompensationPhase,
    InstanceState,
    StepRun,
    StepState,
    WorkflowInstance,
)
from .advancing import advance
from .compensating import advance_compensation
from .context import jsonable, stored_output
from .locking import LockedInstance, lock_instance
from .operator import _reopen_after_manual_completion

I = InstanceState  # noqa: E741
S = StepState
C = CompensationPhase

# An edited input or output, or a skipped step's output, as JSON text: at most this long.
MAX_VALUE_BYTES = 100_000
MAX_REASON = 1000


# -- checks ------------------------------------------------------------------------------------


def _reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput(gettext_noop("a reason is required"), code="reason_required")
    if len(reason) > MAX_REASON or string_problem(reason):
        raise InvalidInput(
            Message(
                gettext_noop("reason must be valid text of at most %(max)s characters"),
                max=MAX_REASON,
            ),
            code="invalid_reason",
        )
    return reason.strip()


def _value(value: Any, what: str) -> Any:
    problem = storable_json_problem(value)
    if problem:
        raise InvalidInput(
            Message(gettext_noop("%(what)s: %(problem)s"), what=what, problem=problem),
            code=f"invalid_{what}",
        )
    if len(json.dumps(value, ensure_ascii=False)) > MAX_VALUE_BYTES:
        raise InvalidInput(
            Message(
                gettext_noop("%(what)s is over %(max)s bytes of JSON"),
                what=what,
                max=f"{MAX_VALUE_BYTES:,}",
            ),
            code=f"{what}_too_large",
        )
    return jsonable(value)


def _lock(instance_id: Any, actor: str) -> LockedInstance:
    locked = lock_instance(instance_id=instance_id, actor=actor)
    if locked is None:
        raise NotFound(gettext_noop("instance not found"))
    return locked


def _lock_step(step_run_id: Any, actor: str) -> LockedInstance:
    try:
        pk = int(step_run_id)
    except (TypeError, ValueError):
        raise NotFound(gettext_noop("step not found")) from None
    locked = lock_instance(step_run_id=pk, actor=actor)
    if locked is None:
        raise NotFound(gettext_noop("step not found"))
    return locked


def _definition(locked: LockedInstance) -> Workflow:
    if locked.definition is None:
        instance = locked.instance
        raise Conflict(
            Message(
                gettext_noop("%(workflow)s v%(version)s is not registered"),
                workflow=instance.workflow,
                version=instance.version,
            ),
            code="definition_missing",
        )
    return locked.definition


def _undo_failed(instance: WorkflowInstance) -> bool:
    return instance.state == I.FAILED and (instance.error or {}).get("phase") == "compensation"


def _check_editable(instance: WorkflowInstance) -> None:
    """Edits apply to a failed instance (forward run) or a paused running one."""
    if _undo_failed(instance):
        raise Conflict(
            gettext_noop(
                "the instance failed while undoing its steps: retry the undo or resolve it by hand"
            ),
            code="undo_failed",
        )
    if instance.state == I.FAILED:
        return
    if instance.state == I.RUNNING and instance.paused_at is not None:
        return
    if instance.state == I.RUNNING:
        raise Conflict(
            gettext_noop("instance is running; pause it first (or wait until it fails)"),
            code="not_paused",
        )
    raise Conflict(
        Message(
            gettext_noop("instance is %(state)s; only a failed or paused instance can be edited"),
            state=state_word(instance.state),
        ),
        code="invalid_state",
    )


def _authorize(action: str, locked: LockedInstance, steps: list[StepRun], user: Any) -> None:
    definition = locked.definition
    for step in steps:
        spec = definition.steps.get(step.name) if definition else None
        if spec is not None:
            kinds.authorize_operator(
                action=action, step_run=step, spec=spec, instance=locked.instance, user=user
            )


# -- diffs -------------------------------------------------------------------------------------


def _keep_masked(new: Any, old: Any) -> Any:
    """A top-level field sent back as the mask (what the edit form shows for sealed fields and
    secret-looking keys) keeps its stored value."""
    if not isinstance(new, dict) or not isinstance(old, dict):
        return new
    return {k: old[k] if v == sealing.MASK and k in old else v for k, v in new.items()}


def _same(a: Any, b: Any) -> bool:
    # 120 and 120.0 are the same amount; true and 1 are not the same
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _diff(old_stored: Any, new_stored: Any, sealed_names: set[str]) -> dict[str, Any]:
    """``{field: {"from", "to"}}`` (``added``/``removed`` marked) between two stored values,
    sealed fields masked (the history never holds a sealed value in clear, nor its
    ciphertext): opened only to compare. A value that is not an object diffs as a whole, under
    the key ``""``."""
    if not (isinstance(old_stored, dict) and isinstance(new_stored, dict)):
        old = sealing.open_value(old_stored)
        new = sealing.open_value(new_stored)
        if _same(old, new):
            return {}
        return {"": {"from": sealing.mask(old_stored), "to": sealing.mask(new_stored)}}
    diff: dict[str, Any] = {}
    for name in [*old_stored, *(k for k in new_stored if k not in old_stored)]:
        sealed = (
            name in sealed_names
            or sealing.is_sealed(old_stored.get(name))
            or sealing.is_sealed(new_stored.get(name))
        )
        if name not in new_stored:
            entry: dict[str, Any] = {"from": old_stored[name], "to": None, "removed": True}
        else:
            if name in old_stored and _same(
                sealing.open_value(old_stored[name]), sealing.open_value(new_stored[name])
            ):
                continue
            entry = {"from": old_stored.get(name), "to": new_stored[name]}
            if name not in old_stored:
                entry["added"] = True
        if sealed:
            entry["from"] = sealing.MASK if name in old_stored else None
            entry["to"] = sealing.MASK if name in new_stored else None
            entry["sealed"] = True
        else:
            entry["from"] = sealing.mask(entry["from"])
            entry["to"] = sealing.mask(entry["to"])
        diff[name] = entry
    return diff


# -- edit --------------------------------------------------------------------------------------


def instance_edit_input(
    *, instance_id: Any, input: Any, actor: str, reason: str, user: Any = None
) -> dict[str, Any]:
    """Replace the input of a failed (or paused) instance with ``input`` before a retry.

    The new input must pass the workflow's ``input_schema``; the field naming the requester
    (``requester_input``) and the files' field cannot change (left out, they are kept);
    sensitive fields are sealed again (a sealed field sent back as the mask keeps its value).
    Writes
    ``instance_input_edited`` with the reason and a diff (sealed values masked); returns the
    diff. Raises :class:`Conflict` (``unchanged``) when nothing would change, and changes
    nothing whenever it raises. The kinds of the steps that started are asked
    (``edit_input``)."""
    reason = _reason(reason)
    if not isinstance(input, dict):
        raise InvalidInput(gettext_noop("input must be a JSON object"), code="invalid_input")
    input = _value(input, "input")
    with transaction.atomic():
        locked = _lock(instance_id, actor)
        instance, journal = locked.instance, locked.journal
        _check_editable(instance)
        definition = _definition(locked)
        current = instance.input if isinstance(instance.input, dict) else {}
        new = _keep_masked(input, current)
        for name in (definition.requester_input, definition.attachments):
            if name is not None and name in current and name not in new:
                new[name] = current[name]  # left out: kept (neither may change)
        opened_old = sealing.open_fields(current, where="input")
        opened_new = sealing.open_fields(new, where="input")
        for name in (definition.requester_input, definition.attachments):
            if name is not None and not _same(opened_old.get(name), opened_new.get(name)):
                raise InvalidInput(
                    Message(gettext_noop("input.%(field)s cannot be edited"), field=name),
                    code="not_editable",
                )
        problems = definition.validate_input(opened_new)
        if problems:
            raise InvalidInput(
                invalid_input(problems),
                code="invalid_input",
                errors={"input": problems},
            )
        sealed_names = sealing.input_fields(definition.sensitive)
        stored = sealing.seal_fields(new, sealed_names)
        diff = _diff(current, stored, sealed_names)
        if not diff:
            raise Conflict(gettext_noop("the input is unchanged"), code="unchanged")
        started = [s for s in locked.steps.values() if s.state != S.PENDING]
        _authorize("edit_input", locked, started, user)
        instance.input = stored
        # The journal's instance write leaves the input alone: written here, same transaction.
        WorkflowInstance.objects.filter(pk=instance.pk).update(input=stored)
        journal.record("instance_input_edited", data={"reason": reason, "changes": diff})
        journal.flush()
        return diff


def step_edit_output(
    *, step_run_id: Any, output: Any, actor: str, reason: str, user: Any = None
) -> dict[str, Any]:
    """Replace the output of a finished (``succeeded`` or ``skipped``) step of a failed (or
    paused) instance: the steps that run after the retry read the new one. Sensitive fields
    are sealed again (a sealed field sent back as the mask keeps its value). Writes
    ``step_output_edited`` with the reason and a diff (sealed values masked); returns the
    diff. The step's kind is asked (``edit``)."""
    reason = _reason(reason)
    output = _value(output, "output")
    with transaction.atomic():
        locked = _lock_step(step_run_id, actor)
        instance, journal, step = locked.instance, locked.journal, locked.step
        _check_editable(instance)
        definition = _definition(locked)
        if step.state not in STEP_DONE:
            raise Conflict(
                Message(
                    gettext_noop(
                        "step is %(step_state)s; only a succeeded or skipped step's output can "
                        "be edited"
                    ),
                    step_state=state_word(step.state),
                ),
                code="invalid_state",
            )
        new = _keep_masked(output, step.output)
        stored = stored_output(instance, step.name, new)
        sealed_names = sealing.output_fields(definition.sensitive, step.name)
        diff = _diff(step.output, stored, sealed_names)
        if not diff:
            raise Conflict(gettext_noop("the output is unchanged"), code="unchanged")
        _authorize("edit", locked, [step], user)
        step.output = stored
        journal.touch(step)
        journal.record("step_output_edited", step=step, data={"reason": reason, "changes": diff})
        journal.flush()
        return diff


# -- skip --------------------------------------------------------------------------------------


def step_skip(
    *, step_run_id: Any, output: Any, actor: str, reason: str, user: Any = None
) -> StepRun:
    """Skip a failed, timed-out or cancelled step of a failed instance (or a retrying step of
    a running one) with ``output`` given by the operator: the step ends ``skipped`` (it did
    nothing: a saga has nothing of it to undo), later steps read ``output`` in its place, and
    a failed instance with no other failed step runs again. Writes ``step_skipped`` (data
    ``operator``, ``reason``, the output masked). The step's kind is asked (``skip``)."""
    reason = _reason(reason)
    output = _value(output, "output")
    with transaction.atomic():
        locked = _lock_step(step_run_id, actor)
        instance, journal, step = locked.instance, locked.journal, locked.step
        if _undo_failed(instance):
            raise Conflict(
                gettext_noop(
                    "the instance failed while undoing its steps: retry the undo or resolve it"
                ),
                code="undo_failed",
            )
        allowed = (instance.state == I.FAILED and step.state in STEP_RETRYABLE) or (
            instance.state == I.RUNNING and step.state == S.RETRYING
        )
        if not allowed:
            raise Conflict(
                Message(
                    gettext_noop(
                        "step is %(step_state)s in a %(state)s instance; only a failed, "
                        "timed-out or cancelled step of a failed instance (or a retrying one) "
                        "can be skipped"
                    ),
                    step_state=state_word(step.state),
                    state=state_word(instance.state),
                ),
                code="invalid_state",
            )
        _definition(locked)
        _authorize("skip", locked, [step], user)
        step.skip_by_hand(stored_output(instance, step.name, output))
        step.finished_at = journal.now
        step.next_attempt_at = None
        step.timeout_at = None
        journal.record(
            "step_skipped",
            step=step,
            data={"operator": True, "reason": reason, "output": sealing.mask(step.output)},
        )
        _reopen_after_manual_completion(locked, step)
        locked.advance()
        journal.flush()
        return step


# -- reset -------------------------------------------------------------------------------------


def reset_set(definition: Workflow, step: str) -> list[str]:
    """``step`` and every step that depends on it, transitively, in the workflow's order."""
    dependents = definition.dependents()
    found = {step}
    todo = [step]
    while todo:
        for d in dependents.get(todo.pop(), []):
            if d not in found:
                found.add(d)
                todo.append(d)
    return [name for name in definition.order() if name in found]


def instance_reset(
    *, instance_id: Any, step: Any, actor: str, reason: str, user: Any = None
) -> list[str]:
    """Resume a failed instance from ``step`` (Temporal's reset): that step and every step
    after it (its dependents, transitively) go back to ``pending`` with a fresh retry budget
    and run again; the other failed, timed-out or cancelled steps are retried as
    :func:`~orchestration.engine.instance_retry` does. ``step``'s dependencies must be done.
    The instance runs again. Writes ``instance_reset`` (data ``step``, ``reset``: the names
    reset, ``retried``, ``reason``); returns the names reset. Every step reset that had
    started is asked of its kind (``reset``), every one retried (``retry``). What a reset
    step did before is not undone: its effects must be safe to repeat (idempotency keys)."""
    reason = _reason(reason)
    if not isinstance(step, str) or not step:
        raise InvalidInput(
            gettext_noop("step must name a step of the workflow"), code="invalid_step"
        )
    with transaction.atomic():
        locked = _lock(instance_id, actor)
        instance, journal, steps = locked.instance, locked.journal, locked.steps
        if _undo_failed(instance):
            raise Conflict(
                gettext_noop(
                    "the instance failed while undoing its steps: retry the undo or resolve it"
                ),
                code="undo_failed",
            )
        if instance.state != I.FAILED:
            raise Conflict(
                Message(
                    gettext_noop("instance is %(state)s; only a failed instance can be reset"),
                    state=state_word(instance.state),
                ),
                code="invalid_state",
            )
        definition = _definition(locked)
        if step not in definition.steps or step not in steps:
            raise InvalidInput(
                Message(
                    gettext_noop("no step %(step)s in %(workflow)s"),
                    step=repr(step),
                    workflow=instance.workflow,
                ),
                code="unknown_step",
            )
        waiting_on = [d for d in definition.steps[step].after if steps[d].state not in STEP_DONE]
        if waiting_on:
            raise Conflict(
                Message(
                    gettext_noop(
                        "%(step)s depends on %(steps)s, which did not succeed: reset from there"
                    ),
                    step=step,
                    steps=", ".join(waiting_on),
                ),
                code="dependency_not_done",
            )
        names = reset_set(definition, step)
        busy = [n for n in names if steps[n].state in STEP_ACTIVE]
        if busy:
            raise Conflict(
                Message(
                    gettext_noop("%(steps)s still running; wait until it ends"),
                    steps=", ".join(busy),
                ),
                code="step_running",
            )
        to_reset = [steps[n] for n in names if steps[n].state != S.PENDING]
        to_retry = [
            s
            for n in definition.order()
            if n not in names and (s := steps[n]).state in STEP_RETRYABLE
        ]
        _authorize("reset", locked, to_reset, user)
        _authorize("retry", locked, to_retry, user)
        instance.retry()
        if definition.deadline is not None:
            instance.deadline_at = journal.now + definition.deadline
        for s in to_reset:
            s.reset()
            for name in ("scheduled_at", "next_attempt_at", "started_at", "finished_at"):
                setattr(s, name, None)
            s.timeout_at = s.close_by = None
            s.comp_attempted = False
            journal.touch(s)
        journal.record(
            "instance_reset",
            data={
                "reason": reason,
                "step": step,
                "reset": [s.name for s in to_reset],
                "retried": [s.name for s in to_retry],
            },
        )
        for s in to_retry:
            s.attempt_base = s.attempt
            spec = definition.steps[s.name]
            kinds.get_kind(spec.kind).retried(
                step_run=s, spec=spec, journal=journal, now=journal.now
            )
        advance(instance, steps, definition, journal)
        journal.flush()
        return [s.name for s in to_reset]


# -- resolve a failed compensation -------------------------------------------------------------


def compensation_resolve(*, step_run_id: Any, actor: str, reason: str, user: Any = None) -> StepRun:
    """Mark a step whose compensation failed for good as undone by hand (``reason``: what was
    done). The step ends ``compensated``; writes ``step_compensation_resolved``. When no other
    compensation failed, the instance goes back to ``compensating`` (``instance_compensating``,
    cause ``resolved_by_hand``): the compensations that waited for this one run, and the
    instance ends ``compensated`` when all are done. While another one failed, the instance
    stays ``failed``. The step's kind is asked (``resolve``)."""
    reason = _reason(reason)
    with transaction.atomic():
        locked = _lock_step(step_run_id, actor)
        instance, journal, step, steps = locked.instance, locked.journal, locked.step, locked.steps
        if step.shown_state != "undo_failed" or not _undo_failed(instance):
            raise Conflict(
                Message(
                    gettext_noop(
                        "step is %(step_state)s; only a step whose undo failed can be resolved "
                        "by hand"
                    ),
                    step_state=state_word(step.shown_state.replace("_", " ")),
                ),
                code="invalid_state",
            )
        definition = _definition(locked)
        _authorize("resolve", locked, [step], user)
        step.resolve_compensation()
        step.finished_at = journal.now
        step.next_attempt_at = None
        step.timeout_at = None
        journal.record(
            "step_compensation_resolved",
            step=step,
            attempt=step.comp_attempt,
            data={"reason": reason},
        )
        still_failed = [s.name for s in steps.values() if s.shown_state == "undo_failed"]
        if not still_failed:
            instance.compensate()
            instance.error = None
            journal.record(
                "instance_compensating", data={"cause": "resolved_by_hand", "step": step.name}
            )
            advance_compensation(instance, steps, definition, journal)
        journal.flush()
        return step


def step_by_name(*, instance_id: Any, name: Any) -> Any:
    """The id of ``instance_id``'s step ``name`` (NotFound for an unknown step)."""
    if not isinstance(name, str):
        raise NotFound(gettext_noop("step not found"))
    steps = StepRun.objects.filter(instance_id=instance_id, name=name)
    pk = steps.values_list("pk", flat=True).first()
    if pk is None:
        raise NotFound(Message(gettext_noop("no step %(step)s in this instance"), step=repr(name)))
    return pk


__all__ = [
    "MAX_VALUE_BYTES",
    "compensation_resolve",
    "instance_edit_input",
    "instance_reset",
    "reset_set",
    "step_by_name",
    "step_edit_output",
    "step_skip",
]
