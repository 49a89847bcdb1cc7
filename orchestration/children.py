"""Child workflows: the ``child`` step kind starts another workflow and waits for its result.

Example::

    child_step(onboarding, "verify", workflow="kyc_check", after=["create_account"],
               input=lambda ctx: {"customer": ctx.input["customer"]},
               retry=RetryPolicy(max_attempts=2), timeout=timedelta(days=2))

The step succeeds with the child's output, fails when the child fails, is cancelled or
compensated (error type ``signoff.ChildWorkflowFailed``; the step's ``retry`` policy may then
start a new child), and cancelling the parent cancels the child (whose saga then unwinds).

How it stays consistent:

- **One child per attempt.** Attempt *n* of the step starts child *n*, linked by
  ``WorkflowInstance.parent_step`` / ``parent_attempt`` (unique together), in the parent's
  transaction: the step goes ``waiting`` and the child is written with it, or neither is.
  The child's input is checked against its ``input_schema`` first; an invalid input fails the
  step (non-retryable) and writes no child.
- **Lock order is parent, then child.** A parent's transaction may lock its child (to cancel
  it); a child's transaction never locks its parent. When a child ends, its journal rings the
  ``child_sync`` doorbell after commit (:data:`orchestration.journal.CHILD_ENDING_EVENTS`);
  :func:`child_step_sync` then locks the parent and applies the outcome. A lost doorbell is
  picked up by :func:`due_child_steps` (the waiting-deadline sweeper). ``manage.py check``
  names a child workflow unregistered after its parent (:mod:`orchestration.checks`).
- **Sealed values stay sealed.** The child's own ``sensitive`` paths seal its input fields;
  besides, every top-level child input field holding a copy of one of the parent's sealed
  values is sealed in the child too (whatever the child declares), the business key may not
  carry one, and the child's output becomes the step's output with the same rule. The copy is
  found by value (the scrubber): a value transformed on its way (hashed, upper-cased, cut
  below three characters) is not recognised.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F

from . import sealing
from .definitions import (
    Predicate,
    RetryPolicy,
    StepContext,
    StepSpec,
    Workflow,
    registry,
)
from .engine import LockedInstance, definition_of, lock_instance, step_context, stored_output
from .engine.context import jsonable
from .engine.starting import child_create, child_input_checked
from .errors import SignoffError
from .journal import Journal
from .jsonsafe import string_problem
from .kinds import StepKind, register_kind
from .models import INSTANCE_FINISHED, InstanceState, StepRun, StepState, WorkflowInstance

S = StepState
I = InstanceState  # noqa: E741
FAILED_TYPE = "signoff.ChildWorkflowFailed"


@dataclass
class ChildStep(StepSpec):
    """Start ``workflow`` (``version``, default: the newest registered when the step starts)
    with ``input(ctx)`` and wait for it to end; its output is the step's output."""

    workflow: str = ""
    version: int | None = None
    input: Callable[[StepContext], dict[str, Any]] | None = None
    business_key: Callable[[StepContext], str] | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=1))
    timeout: timedelta | None = None
    kind: str = "child"

    def problems(self) -> list[str]:
        found = []
        if not isinstance(self.workflow, str) or not self.workflow:
            found.append("workflow must name a registered workflow")
        if self.version is not None and (
            not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1
        ):
            found.append("version must be an integer >= 1 or None (the newest)")
        if self.input is not None and not callable(self.input):
            found.append("input must be callable (ctx -> dict) or None")
        if self.business_key is not None and not callable(self.business_key):
            found.append("business_key must be callable (ctx -> str) or None")
        if not isinstance(self.retry, RetryPolicy):
            found.append("retry must be a RetryPolicy")
        else:
            found.extend(self.retry.problems())
        if self.timeout is not None and (
            not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0)
        ):
            found.append("timeout must be a positive timedelta")
        return found

    def problems_in(self, workflow: Workflow) -> list[str]:
        """The child must be registered already (list its module before the parent's in
        ``SIGNOFF_WORKFLOW_MODULES``), take no files, and never lead back to the parent."""
        return child_workflow_problems(workflow, self.workflow, self.version)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "workflow": self.workflow,
            "version": self.version,
            "retry": self.retry.describe(),
            "timeout": self.timeout.total_seconds() if self.timeout else None,
        }


def child_workflow_problems(parent: Workflow, name: str, version: int | None) -> list[str]:
    """Why ``parent`` may not start workflow ``name`` (``version``; None: the newest) as a
    child, a ``child`` step's or a map step's child items' (empty: it may)."""
    if name == parent.name:
        return [f"a workflow cannot start itself as a child ({name})"]
    child = registry.get(name, version)
    if child is None:
        which = f"{name} v{version}" if version else name
        return [
            f"unknown child workflow {which}: register it before the parent (list its "
            "module earlier in SIGNOFF_WORKFLOW_MODULES)"
        ]
    if child.attachments is not None:
        return [f"child workflow {child.label} takes files; a child step cannot pass files"]
    path = _path_back_to(parent.name, child, seen=set())
    if path:
        return ["child workflows form a cycle: " + " → ".join([parent.name, *path])]
    return []


def _starts_children(spec: StepSpec) -> bool:
    """A ``child`` step, or a map step whose items run as child workflows."""
    return isinstance(spec, ChildStep) or getattr(spec, "runner", None) == "child"


def _path_back_to(name: str, definition: Workflow, seen: set[str]) -> list[str]:
    """The chain of child workflows from ``definition`` that starts ``name`` again (empty:
    none does)."""
    if definition.label in seen:
        return []
    seen.add(definition.label)
    for spec in definition.steps.values():
        if not _starts_children(spec):
            continue
        workflow, version = spec.workflow, spec.version  # type: ignore[attr-defined]
        if workflow == name:
            return [definition.name, name]
        nested = registry.get(workflow, version)
        if nested is not None:
            path = _path_back_to(name, nested, seen)
            if path:
                return [definition.name, *path]
    return []


def child_step(
    parent: Workflow,
    name: str,
    /,
    *,
    workflow: str,
    after: Iterable[str] = (),
    when: Predicate | None = None,
    input: Callable[[StepContext], dict[str, Any]] | None = None,
    version: int | None = None,
    business_key: Callable[[StepContext], str] | None = None,
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
) -> ChildStep:
    """Add to ``parent`` a step that starts the workflow named ``workflow`` as a child.
    ``input(ctx)`` gives its input (default ``{}``), ``business_key(ctx)`` its business key
    (default: the parent's). ``retry``: a failed child is followed by a new one while
    attempts are left (default: one attempt). ``timeout``: per child; when it passes the child
    is cancelled and the attempt fails (and may be retried)."""
    step = ChildStep(
        name=name,
        after=tuple([after] if isinstance(after, str) else after),
        when=when,
        workflow=workflow,
        version=version,
        input=input,
        business_key=business_key,
        retry=retry if retry is not None else RetryPolicy(max_attempts=1),
        timeout=timeout,
    )
    parent.add(step)
    return step


# -- the kind ------------------------------------------------------------------------------------


class StepFailure(Exception):
    """A child attempt cannot start; ``error`` is stored on the step."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error = {"type": error_type, "message": message[:2000], "traceback": ""}


def current_child(step: StepRun) -> WorkflowInstance | None:
    """The child of the step's current attempt (None: not started, or the step is new)."""
    if step.pk is None:
        return None
    return WorkflowInstance.objects.filter(parent_step=step, parent_attempt=step.attempt).first()


def _locked(journal: Journal) -> LockedInstance:
    return LockedInstance(journal.instance, journal.steps, journal, definition_of(journal.instance))


class ChildKind(StepKind):
    name = "child"

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        assert isinstance(spec, ChildStep)
        step_run.attempt += 1
        step_run.wait()
        step_run.started_at = now
        step_run.finished_at = None
        step_run.error = None
        journal.record("step_waiting", step=step_run, data={"child_workflow": spec.workflow})
        start_child(_locked(journal), step_run, spec)

    def cancelled(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        """The parent's step was cancelled (the parent cancelled or failed, or an operator
        completed the step by hand): cancel the running child, in this transaction."""
        child = current_child(step_run)
        if child is None or child.state in INSTANCE_FINISHED:
            return
        reason = f"parent {journal.instance.pk} step {step_run.name} was cancelled"
        if not child_cancel(child_id=child.pk, actor=journal.actor, reason=reason):
            return
        journal.record(
            "child_cancelled", step=step_run, data={"child": str(child.pk), "reason": reason}
        )

    def timed_out(self, *, locked: LockedInstance, step_run: StepRun, spec: StepSpec) -> bool:
        """``timeout_at`` passed: a retry's backoff ended (start the next child), or the
        running child took longer than the step's ``timeout`` (cancel it; the attempt fails)."""
        assert isinstance(spec, ChildStep)
        child = current_child(step_run)
        if child is None:
            if locked.instance.paused_at is not None:
                return False  # nothing new starts while paused; the next sweep comes back
            start_child(locked, step_run, spec)
            return True
        if child.state in INSTANCE_FINISHED:
            return apply_outcome(locked, step_run, spec, child)
        locked.journal.record(
            "step_timed_out", step=step_run, data={"child": str(child.pk), "limit": "timeout"}
        )
        self.cancelled(step_run=step_run, spec=spec, journal=locked.journal, now=locked.journal.now)
        attempt_failed(
            locked,
            step_run,
            spec,
            {
                "type": FAILED_TYPE,
                "message": f"child {child.workflow} {child.pk} did not finish within the "
                f"step's timeout ({spec.timeout}); it was cancelled",
                "traceback": "",
            },
            retryable=True,
            reason="timed_out",
        )
        return True

    def state_label(self, state: str) -> str:
        if state == S.WAITING:
            return "child · waiting for the child workflow"
        return super().state_label(state)


register_kind(ChildKind())


def child_cancel(*, child_id: Any, actor: str, reason: str) -> bool:
    """Cancel a running child in a transaction of its own (nested in the parent's, whose lock
    comes first: parent, then child); its saga unwinds. False: it had ended already."""
    with transaction.atomic():
        locked = lock_instance(
            instance_id=child_id, actor=actor, instance_states=(I.PENDING, I.RUNNING)
        )
        if locked is None:
            return False
        locked.cancel_instance(reason)
        locked.journal.flush()
    return True


def start_child(locked: LockedInstance, step: StepRun, spec: ChildStep) -> None:
    """Start the child of the step's current attempt (the step is ``waiting``): check its
    input, then write it with the parent's transaction, or fail the step and write nothing."""
    journal, instance = locked.journal, locked.instance
    try:
        definition, input, business_key = _child_start(locked, step, spec)
    except StepFailure as exc:
        step.timeout_at = None
        locked.fail_step(step, exc.error, reason="child_not_started")
        return
    child_id = uuid.uuid4()
    step.next_attempt_at = None
    step.timeout_at = journal.now + spec.timeout if spec.timeout else None
    journal.record(
        "child_started",
        step=step,
        data={
            "child": str(child_id),
            "workflow": definition.name,
            "version": definition.version,
        },
    )
    attempt, actor = step.attempt, journal.actor

    def create() -> None:
        # After the parent's rows are written: a new step has its id only now.
        child_create(
            definition,
            input=input,
            business_key=business_key,
            parent_step=step,
            parent_attempt=attempt,
            instance_id=child_id,
            started_by=instance.started_by if instance.started_by_id else None,
            actor=actor,
        )

    journal.after_write(create)


def _child_start(
    locked: LockedInstance, step: StepRun, spec: ChildStep
) -> tuple[Workflow, dict[str, Any], str]:
    ctx = step_context(locked.journal, step)
    return child_start_values(
        workflow=spec.workflow,
        version=spec.version,
        parent=locked.instance,
        parent_outputs=[s.output for s in locked.steps.values()],
        make_input=(lambda: spec.input(ctx)) if spec.input is not None else (lambda: {}),
        make_key=(lambda: spec.business_key(ctx)) if spec.business_key is not None else None,
    )


def child_start_values(
    *,
    workflow: str,
    version: int | None,
    parent: WorkflowInstance,
    parent_outputs: Iterable[Any],
    make_input: Callable[[], Any],
    make_key: Callable[[], Any] | None,
) -> tuple[Workflow, dict[str, Any], str]:
    """The definition, checked input and business key a child of ``parent`` starts with (a
    ``child`` step's, or a map step's child item's), or :class:`StepFailure` saying why not.
    ``make_key`` None: the parent's business key. Sealed values of the parent stay sealed."""
    definition = registry.get(workflow, version)
    if definition is None:
        which = f"{workflow} v{version}" if version else workflow
        raise StepFailure(
            "signoff.ChildWorkflowUnknown", f"child workflow {which} is not registered"
        )
    scrubber = sealing.scrubber_for(parent.input, *parent_outputs)
    try:
        raw = make_input()
        key = make_key() if make_key is not None else parent.business_key
    except Exception as exc:  # noqa: BLE001 - a broken mapping fails the step, clearly
        message = f"{type(exc).__name__}: {exc}"
        message = scrubber.text(message)[0] if scrubber else message
        raise StepFailure("signoff.ChildInputFailed", f"input mapping raised {message}") from exc
    if not isinstance(key, str) or len(key) > 200 or string_problem(key):
        raise StepFailure(
            "signoff.ChildInputInvalid", "business_key must be a string of at most 200 characters"
        )
    if scrubber and scrubber.text(key)[1]:
        raise StepFailure(
            "signoff.ChildInputInvalid",
            "the child's business key would carry a sealed value of the parent in clear",
        )
    try:
        checked = child_input_checked(definition, raw, parent.started_by)
    except SignoffError as exc:
        message = scrubber.text(str(exc))[0] if scrubber else str(exc)
        raise StepFailure(
            "signoff.ChildInputInvalid", f"input for {definition.label} refused: {message}"
        ) from exc
    checked = jsonable(checked)
    if scrubber:
        # A field carrying a sealed value of the parent stays sealed in the child.
        checked = {
            k: sealing.seal_value(v) if not sealing.is_sealed(v) and scrubber.json(v)[1] else v
            for k, v in checked.items()
        }
    return definition, checked, key


# -- the outcome ---------------------------------------------------------------------------------


def child_output(child: WorkflowInstance) -> Any:
    """The child's output as the parent's step output: opened, with every top-level value
    holding one of the child's sealed values sealed again."""
    output = sealing.reveal(child.output, where="child output")
    scrubber = sealing.scrubber_for(child.input, child.output)
    if not scrubber or not isinstance(output, dict):
        return output
    return {k: sealing.seal_value(v) if scrubber.json(v)[1] else v for k, v in output.items()}


def apply_outcome(
    locked: LockedInstance, step: StepRun, spec: ChildStep, child: WorkflowInstance
) -> bool:
    """The step's child ended: succeed the step with its output, or fail the attempt."""
    journal = locked.journal
    if child.state == I.SUCCEEDED:
        step.resolve(stored_output(locked.instance, step.name, child_output(child)))
        step.finished_at = journal.now
        step.timeout_at = None
        journal.record("step_succeeded", step=step, data={"child": str(child.pk)})
        locked.advance()
        return True
    reason = (child.error or {}).get("message") if isinstance(child.error, dict) else None
    message = f"child {child.workflow} {child.pk} ended {child.state}"
    if reason:
        message += f": {str(reason)[:500]}"
    attempt_failed(
        locked,
        step,
        spec,
        {"type": FAILED_TYPE, "message": message, "traceback": ""},
        retryable=True,
        reason=f"child_{child.state}",
    )
    return True


def attempt_failed(
    locked: LockedInstance,
    step: StepRun,
    spec: ChildStep,
    error: dict[str, Any],
    *,
    retryable: bool,
    reason: str,
) -> None:
    """The step's retry policy: with attempts left the step stays ``waiting`` and its next
    child starts after the backoff (``step_retrying``; the ``child_sync`` doorbell rings at
    that time, the waiting-deadline sweeper is the backstop); otherwise the step fails."""
    journal, now = locked.journal, locked.journal.now
    used = step.attempt - step.attempt_base
    if retryable and used < spec.retry.max_attempts and locked.instance.state == I.RUNNING:
        next_at = now + spec.retry.delay(used)
        failed_attempt = step.attempt
        step.attempt += 1
        step.error = error
        step.next_attempt_at = next_at
        step.timeout_at = next_at
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
        journal.ring_task(step, "child_sync", eta=next_at)
        return
    step.timeout_at = None
    why = reason if retryable else "non_retryable"
    if retryable and used >= spec.retry.max_attempts:
        why = "attempts_exhausted"
    locked.fail_step(step, error, reason=why)


# -- the doorbell and the sweeper ------------------------------------------------------------------


def child_step_sync(
    *, step_run_id: int, attempt: int | None = None, skip_locked: bool = False
) -> str:
    """Bring a waiting ``child`` step up to date under its instance's lock: apply its ended
    child's outcome, or start the next child once a retry's backoff is over. Idempotent: a
    repeated or stale doorbell (another attempt, a step no longer waiting) does nothing.
    Returns what it did: ``started``, ``child_<state>`` (the outcome applied), or why not."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="system" if attempt is not None else "sweeper",
            skip_locked=skip_locked,
            instance_states=(I.RUNNING,),
            step_states=(S.WAITING,),
        )
        if locked is None or locked.definition is None:
            return "not_waiting"
        step = locked.step
        spec = locked.definition.steps.get(step.name)
        if not isinstance(spec, ChildStep) or (attempt is not None and step.attempt != attempt):
            return "stale"
        child = current_child(step)
        if child is None:
            due = step.next_attempt_at is not None and step.next_attempt_at <= locked.journal.now
            if not due or locked.instance.paused_at is not None:
                return "not_due"
            start_child(locked, step, spec)
            done = "started"
        elif child.state in INSTANCE_FINISHED:
            apply_outcome(locked, step, spec, child)
            done = f"child_{child.state}"
        else:
            return "running"
        locked.journal.flush()
        return done


def due_child_steps(now: datetime, batch: int, grace: timedelta) -> list[int]:
    """Ids of ``waiting`` child steps whose current child ended more than ``grace`` ago (its
    doorbell was lost): the sweeper's backstop."""
    return list(
        StepRun.objects.filter(
            state=S.WAITING,
            kind="child",
            child_instances__state__in=INSTANCE_FINISHED,
            child_instances__parent_attempt=F("attempt"),
            child_instances__finished_at__lte=now - grace,
        )
        .order_by("pk")
        .values_list("pk", flat=True)[:batch]
    )
