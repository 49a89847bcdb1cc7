"""The engine: every write to instances and steps goes through these services.

Shape of each service (house style, trait 3): ``transaction.atomic()`` → lock the instance row
with ``select_for_update`` (the instance row is the lock for the instance *and all its steps*,
so locks are always taken in one order and parallel branches serialize on it) → check → django-
fsm transitions → one event per state change → write → doorbells (Celery messages) after commit.

Public services are keyword-only and return plain values; they raise
:class:`~orchestration.errors.SignoffError` subclasses for business errors and change nothing
when they do.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    models,
    transaction,
)
from django.utils import timezone

from . import attachments, kinds, saga, sealing
from .definitions import StepContext, StepSpec, TaskStep, Workflow, registry
from .errors import Conflict, InvalidInput, NotAllowed, NotFound
from .journal import Doorbell, Journal, ring_doorbells
from .jsonsafe import storable_json_problem, string_problem
from .models import (
    KEY_OWNER,
    STEP_ACTIVE,
    STEP_DONE,
    STEP_RETRYABLE,
    InstanceState,
    StepRun,
    StepState,
    WorkflowInstance,
)
from .vendor import is_postgresql

log = logging.getLogger("signoff.engine")

I = InstanceState  # noqa: E741
S = StepState
MAX_KEY_LENGTH = 200


# -- helpers ------------------------------------------------------------------------------------


def _lock_instance(instance_id: Any, *, skip_locked: bool = False) -> WorkflowInstance | None:
    qs = WorkflowInstance.objects.select_for_update(skip_locked=skip_locked)
    return qs.filter(pk=instance_id).first()


def _lock_instance_of_step(
    step_run_id: int, *, skip_locked: bool = False
) -> WorkflowInstance | None:
    """Lock the instance owning a step (one query: a join, locking only the instance row)."""
    if is_postgresql(connection):
        # The hot path of every step (claim, complete): fixed SQL, no ORM compilation.
        sql = _hot_sql("lock_of_step") + (" SKIP LOCKED" if skip_locked else "")
        rows = _load(WorkflowInstance, sql, [step_run_id])
    else:
        rows = list(
            WorkflowInstance.objects.select_for_update(of=("self",), skip_locked=skip_locked)
            .filter(steps__pk=step_run_id)
            .order_by()[:1]
        )
    return rows[0] if rows else None


def _steps(instance: WorkflowInstance) -> dict[str, StepRun]:
    if is_postgresql(connection):
        rows = _load(StepRun, _hot_sql("steps"), [instance.pk])
    else:
        rows = list(StepRun.objects.filter(instance=instance))
    return {s.name: s for s in rows}


def _columns(model: type[models.Model], alias: str) -> str:
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


@functools.cache
def _hot_sql(name: str) -> str:
    """The hot path's two reads, written once from the models' own columns."""
    if name == "lock_of_step":
        return (
            f"SELECT {_columns(WorkflowInstance, 'i')} FROM orchestration_workflowinstance i "
            "JOIN orchestration_steprun s ON s.instance_id = i.id WHERE s.id = %s LIMIT 1 "
            "FOR UPDATE OF i"
        )
    return (
        f"SELECT {_columns(StepRun, 's')} FROM orchestration_steprun s "
        "WHERE s.instance_id = %s ORDER BY s.position, s.id"
    )


@functools.cache
def _load_plan(model: type[models.Model]) -> tuple[Any, list[str], list[Any]]:
    connection = connections[DEFAULT_DB_ALIAS]
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    converters = [
        (i, f.get_db_converters(connection))
        for i, f in enumerate(fields)
        if f.get_db_converters(connection)
    ]
    return fields, names, converters


def _load(model: type[models.Model], sql: str, params: list[Any]) -> list[Any]:
    """Rows of ``sql`` (every concrete column in field order) as model instances, as the ORM
    loads them (``from_db``, field converters applied)."""
    connection = connections[DEFAULT_DB_ALIAS]  # the real one: no proxy lookups per field
    fields, names, converters = _load_plan(model)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    loaded = []
    for row in rows:
        values = list(row)
        for i, funcs in converters:
            for func in funcs:
                values[i] = func(values[i], fields[i], connection)
        loaded.append(model.from_db(connection.alias, names, values))
    return loaded


def definition_of(instance: WorkflowInstance) -> Workflow | None:
    return registry.get(instance.workflow, instance.version)


def error_info(exc: BaseException) -> dict[str, str]:
    klass = type(exc)
    return {
        "type": f"{klass.__module__}.{klass.__qualname__}",
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }


def scrubbed_error(
    instance: WorkflowInstance, steps: dict[str, StepRun], error: dict[str, Any]
) -> dict[str, Any]:
    """``error`` as it may be stored (step, instance, events, webhooks): every copy of the
    instance's sealed values in its message and traceback masked, so an exception that quotes
    its input does not unseal it."""
    scrubber = sealing.scrubber_for(instance.input, *(s.output for s in steps.values()))
    return scrubber.json(error)[0] if scrubber else error


def _sealed_derived(instance: WorkflowInstance, steps: dict[str, StepRun], output: Any) -> Any:
    """A workflow's own ``output=`` result as it may be stored: each top-level value (or the
    whole result, when it is not an object) that holds a copy of one of the instance's sealed
    values is sealed too, so deriving from a sealed field never unseals it."""
    scrubber = sealing.scrubber_for(instance.input, *(s.output for s in steps.values()))
    if not scrubber:
        return output
    if not isinstance(output, dict):
        return sealing.seal_value(output) if scrubber.json(output)[1] else output
    return {k: sealing.seal_value(v) if scrubber.json(v)[1] else v for k, v in output.items()}


def step_context(journal: Journal, step: StepRun) -> StepContext:
    """The context a step (or a kind handler deciding about it) sees, inside a service."""
    return _context(journal.instance, journal.steps, step)


def _context(instance: WorkflowInstance, steps: dict[str, StepRun], step: StepRun) -> StepContext:
    """The step's view of the instance, with sealed fields opened (raises SealError)."""
    definition = definition_of(instance)
    return StepContext(
        instance_id=str(instance.pk),
        workflow=instance.workflow,
        version=instance.version,
        step=step.name,
        attempt=max(step.attempt, 1),
        input=sealing.open_fields(instance.input, where="input"),
        outputs={
            name: sealing.open_fields(s.output, where=f"outputs.{name}")
            for name, s in steps.items()
            # a step undone for its attempts only (saga) never had an output
            if s.state in (S.SUCCEEDED, S.COMPENSATING, S.COMPENSATED) and not s.comp_attempted
        },
        business_key=instance.business_key,
        sensitive=definition.sensitive if definition else frozenset(),
    )


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so what is stored is exactly what later steps read."""
    return json.loads(json.dumps(value))


def request_fingerprint(payload: dict[str, Any]) -> str:
    """Keyed (HMAC with SECRET_KEY): the stored hash of a request reveals nothing about
    sensitive input."""
    from django.conf import settings

    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(settings.SECRET_KEY.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def stored_output(instance: WorkflowInstance, step_name: str, output: Any) -> Any:
    """A step's output as stored: JSON, with the workflow's sensitive fields sealed."""
    definition = definition_of(instance)
    fields = sealing.output_fields(definition.sensitive, step_name) if definition else set()
    return sealing.seal_fields(_jsonable(output), fields)


# -- the task kind ------------------------------------------------------------------------------


def step_schedule(step: StepRun, spec: StepSpec, journal: Journal, *, retry: bool = False) -> None:
    """Move a ready task step to ``scheduled`` and ring its doorbell after commit."""
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
    journal.ring(step, queue=getattr(spec, "queue", None), time_limit=_time_limit(spec))


def _time_limit(spec: StepSpec) -> float | None:
    if isinstance(spec, TaskStep):
        return spec.start_to_close.total_seconds()
    return None


class TaskKind:
    name = "task"

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        step_schedule(step_run, spec, journal)

    def cancelled(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        pass


kinds.register_kind(TaskKind())


# -- advancing ----------------------------------------------------------------------------------


def _advance(
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
            _succeed_instance(instance, steps, definition, journal)
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
                go = bool(spec.when(_context(instance, steps, step)))
            except Exception as exc:  # noqa: BLE001 - a broken predicate fails the step
                step.fail_before_start()
                step.error = scrubbed_error(instance, steps, error_info(exc))
                step.finished_at = journal.now
                journal.record(
                    "step_failed", step=step, data={"reason": "when_raised", "error": step.error}
                )
                _fail_instance(instance, steps, definition, journal, {"step": name, **step.error})
                return
            if not go:
                step.skip()
                step.finished_at = journal.now
                journal.record("step_skipped", step=step, data={"reason": "when_false"})
                continue
        kinds.get_kind(spec.kind).ready(step_run=step, spec=spec, journal=journal, now=journal.now)
    if all(s.state in STEP_DONE for s in steps.values()):
        _succeed_instance(instance, steps, definition, journal)


def _succeed_instance(
    instance: WorkflowInstance, steps: dict[str, StepRun], definition: Workflow, journal: Journal
) -> None:
    if definition.output_fn is not None:
        last = steps[definition.order()[-1]]
        output = _sealed_derived(
            instance, steps, _jsonable(definition.output_fn(_context(instance, steps, last)))
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


def _fail_instance(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow,
    journal: Journal,
    error: dict[str, Any],
) -> None:
    """Fail the instance; cancel what waits to run. Running attempts finish and are recorded,
    but nothing new is scheduled. With something to undo, the saga unwinds instead."""
    if saga.needs_compensation(steps, definition):
        saga.start(instance, steps, definition, journal, cause="failed", error=error)
        return
    instance.fail(error)
    instance.finished_at = journal.now
    for step in steps.values():
        if step.state in (S.SCHEDULED, S.RETRYING, S.WAITING):
            _cancel_step(step, definition, journal, reason="instance_failed")
    journal.record("instance_failed", data={"error": error})


def _cancel_instance(
    instance: WorkflowInstance,
    steps: dict[str, StepRun],
    definition: Workflow | None,
    journal: Journal,
    reason: str,
) -> None:
    compensation_failed = (instance.error or {}).get("phase") == "compensation"
    if (
        definition is not None
        and not compensation_failed
        and saga.needs_compensation(steps, definition)
    ):
        saga.start(
            instance, steps, definition, journal, cause="cancelled", error=None, reason=reason
        )
        return
    for step in steps.values():
        if step.state in (S.PENDING, *STEP_ACTIVE):
            _cancel_step(step, definition, journal, reason="instance_cancelled")
    instance.cancel()
    instance.finished_at = journal.now
    journal.record("instance_cancelled", data={"reason": reason} if reason else None)


def _cancel_step(
    step: StepRun, definition: Workflow | None, journal: Journal, *, reason: str
) -> None:
    step.cancel()
    step.finished_at = journal.now
    step.next_attempt_at = None
    step.timeout_at = None
    journal.record("step_cancelled", step=step, data={"reason": reason})
    spec = definition.steps.get(step.name) if definition else None
    if spec is not None:
        kinds.get_kind(spec.kind).cancelled(
            step_run=step, spec=spec, journal=journal, now=journal.now
        )


def _attempt_failed(
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
                time_limit=_time_limit(spec) if spec else None,
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
        _fail_instance(
            instance, steps, definition, journal, {"step": step.name, "reason": why, **error}
        )
    else:
        saga.advance(instance, steps, definition, journal)


# -- starting -----------------------------------------------------------------------------------


def instance_start(
    *,
    workflow: str,
    input: dict[str, Any] | None = None,
    business_key: str = "",
    idempotency_key: str | None = None,
    version: int | None = None,
    started_by: Any = None,
    actor: str = "system",
    files: Sequence[Any] = (),
) -> tuple[WorkflowInstance, bool]:
    """Start an instance; returns ``(instance, created)``.

    ``files`` (uploads) are checked (:mod:`orchestration.attachments`), listed in the input
    field the workflow names (``Workflow(attachments=...)``) before the input is validated,
    and stored with the instance in its transaction (their bytes deleted if it fails). A
    repeat with the same Idempotency-Key and the same files stores nothing.

    With an ``idempotency_key``: the same key and the same request return the first instance
    (``created`` False); the same key with another request raises :class:`Conflict`. Unknown
    workflow or invalid input raise :class:`InvalidInput` and write nothing. Writes the
    instance, its steps and ``instance_started`` plus the first steps' events in one
    transaction; their doorbells ring after commit.
    """
    input = {} if input is None else input
    if not isinstance(workflow, str) or not workflow:
        raise InvalidInput("workflow must be a non-empty string", code="invalid")
    definition = registry.get(workflow, version)
    if definition is None:
        known = registry.get(workflow) is not None
        raise InvalidInput(
            f"workflow {workflow!r} has no version {version}"
            if known and version
            else f"unknown workflow {workflow!r}",
            code="unknown_workflow",
        )
    input, on_behalf_of = _requester_input(definition, input, started_by)
    uploads = attachments.start_files(definition, input, files, started_by)
    if uploads is not None:
        stored_input = {**input, definition.attachments: uploads.refs}
    else:
        stored_input = input
    problems = definition.validate_input(stored_input)
    unstorable = storable_json_problem(stored_input)
    if unstorable and not problems:
        problems = [unstorable]
    if problems:
        raise InvalidInput(
            "invalid input: " + "; ".join(problems),
            code="invalid_input",
            errors={"input": problems},
        )
    if not isinstance(business_key, str) or len(business_key) > 200 or string_problem(business_key):
        raise InvalidInput(
            "business_key must be a string of at most 200 characters "
            "(valid Unicode, no NUL characters)"
        )
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not idempotency_key.strip()
        or len(idempotency_key) > MAX_KEY_LENGTH
        or string_problem(idempotency_key)
    ):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            code="invalid_idempotency_key",
        )
    request = {
        "workflow": workflow,
        "version": version,
        "input": input,
        "business_key": business_key,
    }
    if uploads is not None and uploads.checked:
        # The files by name and content, not by the ids this start would give them.
        request["files"] = uploads.digests
    fingerprint = request_fingerprint(request)
    if idempotency_key is not None:
        existing = _same_key(workflow, idempotency_key, fingerprint, started_by)
        if existing is not None:
            return existing, False
    try:
        with attachments.guard(), transaction.atomic():
            return _create(
                definition,
                stored_input,
                business_key,
                idempotency_key,
                fingerprint,
                started_by,
                actor,
                on_behalf_of,
                uploads,
            ), True
    except IntegrityError:
        # Two requests with one key raced; the loser answers like a repeat.
        if idempotency_key is None:
            raise
        existing = _same_key(workflow, idempotency_key, fingerprint, started_by)
        if existing is None:
            raise
        return existing, False


def _requester_input(definition: Workflow, input: Any, started_by: Any) -> tuple[Any, str | None]:
    """The input with the workflow's requester field (``requester_input``) checked against
    the person starting it: filled with their username when absent; another name only with
    ``orchestration.start_on_behalf`` (:class:`NotAllowed` otherwise). Returns the input and
    the name started on behalf of (None when it is the starter's own). A start without a
    person (the system, a command) is taken as it is."""
    field_name = definition.requester_input
    if field_name is None or not isinstance(input, dict) or not getattr(started_by, "pk", None):
        return input, None
    own = started_by.get_username()
    named = input.get(field_name)
    if named is None:
        return {**input, field_name: own}, None
    if named == own:
        return input, None
    if not started_by.has_perm("orchestration.start_on_behalf"):
        raise NotAllowed(
            f"input.{field_name} names someone else; starting a workflow for another person "
            "needs the orchestration.start_on_behalf permission",
            code="on_behalf_not_allowed",
        )
    return input, named if isinstance(named, str) else None


def _same_key(
    workflow: str, key: str, fingerprint: str, started_by: Any
) -> WorkflowInstance | None:
    """The caller's own instance of ``workflow`` started with ``key`` (keys are per caller)."""
    existing = (
        WorkflowInstance.objects.alias(owner=KEY_OWNER)
        .filter(workflow=workflow, owner=getattr(started_by, "pk", None) or 0, idempotency_key=key)
        .first()
    )
    if existing is not None and existing.request_hash != fingerprint:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for a different request",
            code="idempotency_conflict",
        )
    return existing


def _create(
    definition: Workflow,
    input: dict[str, Any],
    business_key: str,
    idempotency_key: str | None,
    fingerprint: str,
    started_by: Any,
    actor: str,
    on_behalf_of: str | None = None,
    uploads: attachments.PendingFiles | None = None,
) -> WorkflowInstance:
    now = timezone.now()
    instance = WorkflowInstance(
        workflow=definition.name,
        version=definition.version,
        input=sealing.seal_fields(_jsonable(input), sealing.input_fields(definition.sensitive)),
        business_key=business_key,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        started_by=started_by if getattr(started_by, "pk", None) else None,
        created_at=now,
        updated_at=now,
    )
    journal = Journal(instance, actor=actor, now=now)
    instance.start()
    instance.started_at = now
    if definition.deadline is not None:
        instance.deadline_at = now + definition.deadline
    steps = {
        name: StepRun(
            instance=instance, name=name, kind=definition.steps[name].kind, position=position
        )
        for position, name in enumerate(definition.order())
    }
    journal.record(
        "instance_started",
        data={
            "workflow": definition.name,
            "version": definition.version,
            "business_key": business_key,
            **({"on_behalf_of": on_behalf_of} if on_behalf_of else {}),
        },
    )
    if uploads is not None:
        uploads.record(instance, journal)
    _advance(instance, steps, definition, journal)
    journal.flush(created_steps=list(steps.values()))
    return instance


# -- running a task step (called by the Celery task) ---------------------------------------------


@dataclass(frozen=True)
class Claimed:
    spec: TaskStep
    context: StepContext
    step_run_id: int = 0
    attempt: int = 0


def step_claim(*, step_run_id: int, attempt: int) -> Claimed | None:
    """Claim attempt ``attempt`` of a step: ``scheduled``/``retrying`` → ``running``.

    Returns None (and changes nothing) for a duplicate or stale message: the step is not
    waiting for exactly this attempt, its backoff has not elapsed, or its instance is not
    running. Writes ``step_started``.
    """
    with transaction.atomic():
        instance = _lock_instance_of_step(step_run_id)
        if instance is None or instance.state != I.RUNNING or instance.paused_at is not None:
            return None  # unpausing rings again
        steps = _steps(instance)
        step = next((s for s in steps.values() if s.pk == step_run_id), None)
        if step is None or step.attempt != attempt or step.state not in (S.SCHEDULED, S.RETRYING):
            return None
        journal = Journal(instance, actor="worker")
        claimed = _claim(instance, steps, step, journal)
        if journal.events:
            journal.flush()
        return claimed


def _claim(
    instance: WorkflowInstance, steps: dict[str, StepRun], step: StepRun, journal: Journal
) -> Claimed | None:
    """:func:`step_claim` on the locked instance, recorded on ``journal`` (not flushed).
    Records nothing for an early message; records the failed attempt when the step's
    definition or its keys are missing."""
    now = journal.now
    if step.next_attempt_at is not None and step.next_attempt_at > now + timedelta(seconds=1):
        return None  # an early message; its own doorbell or the sweeper comes back
    definition = definition_of(instance)
    spec = definition.steps.get(step.name) if definition else None
    step.claim()
    step.started_at = now
    if not isinstance(spec, TaskStep):
        # A deploy removed this definition: fail the attempt; the policy may retry.
        step.timeout_at = None
        journal.record("step_started", step=step)
        _attempt_failed(
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
        context = _context(instance, steps, step)
    except sealing.SealError as exc:
        # A key is missing or wrong: a clear, retryable failure (a deploy may fix keys).
        _attempt_failed(
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
    return Claimed(spec=spec, context=context, step_run_id=step.pk, attempt=step.attempt)


def step_complete(*, step_run_id: int, attempt: int, output: Any) -> bool:
    """Record a successful attempt and advance the instance. Ignores (returns False) a result
    for an attempt that is no longer running, e.g. one the timeout sweeper gave up on."""
    return _complete(step_run_id, attempt, output, hold=False)[0]


def _complete(
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
    output = _jsonable(output)
    with transaction.atomic():
        instance = _lock_instance_of_step(step_run_id)
        if instance is None:
            return False, None
        steps = _steps(instance)
        step = next((s for s in steps.values() if s.pk == step_run_id), None)
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
        journal = Journal(instance, actor="worker")
        if hold is not False:
            journal.hold_for(hold, until=until)
        step.succeed(stored_output(instance, step.name, output))
        step.finished_at = journal.now
        step.timeout_at = None
        journal.record("step_succeeded", step=step)
        definition = definition_of(instance)
        if definition is not None:
            _advance(instance, steps, definition, journal)
        saga.advance(instance, steps, definition, journal)
        claimed = None
        held = journal.held_step
        if held is not None:
            if (
                instance.state == I.RUNNING
                and instance.paused_at is None
                and held.state in (S.SCHEDULED, S.RETRYING)
            ):
                claimed = _claim(instance, steps, held, journal)
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
        instance = _lock_instance_of_step(step_run_id)
        if instance is None:
            return False
        steps = _steps(instance)
        step = next((s for s in steps.values() if s.pk == step_run_id), None)
        if step is None or step.state != S.RUNNING or step.attempt != attempt:
            return False
        journal = Journal(instance, actor="worker")
        definition = definition_of(instance)
        spec = definition.steps.get(step.name) if definition else None
        retryable = spec.retry.is_retryable(error) if isinstance(spec, TaskStep) else False
        _attempt_failed(
            instance,
            steps,
            step,
            spec,
            definition,
            journal,
            info,
            retryable=retryable,
            reason="error",
        )
        journal.flush()
        return True


def step_execute(*, step_run_id: int, attempt: int, chain_until: float | None = None) -> str:
    """Run one attempt of a task step: claim, call the function outside any transaction,
    record the outcome. Safe to call twice with the same arguments: the second claim fails.

    With ``chain_until`` (a ``time.monotonic()`` deadline: the worker's time limit for this
    message), when the step's completion makes a next step on the same queue ready, and
    that step's start-to-close fits before the deadline, the completing transaction also
    claims it and it runs here at once instead of waiting for its own Celery message (see
    :func:`_complete`).
    """
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
    if claimed is None:
        return "stale"
    while True:
        step_run_id, attempt = claimed.step_run_id, claimed.attempt
        fn = claimed.spec.fn
        assert fn is not None
        try:
            output = _jsonable(fn(claimed.context))
        except SoftTimeLimitExceeded:
            # The worker enforced start-to-close itself; same outcome as the sweeper's.
            step_time_out(step_run_id=step_run_id, attempt=attempt)
            return "timed_out"
        except Exception as exc:  # noqa: BLE001 - every step error is the engine's to handle
            step_fail(step_run_id=step_run_id, attempt=attempt, error=exc)
            return "failed"
        chain = chain_until is not None
        hold = claimed.spec.queue if chain else False
        _ok, claimed = _complete(step_run_id, attempt, output, hold=hold, until=chain_until)
        if claimed is None:
            return "succeeded"


# -- operator and API actions --------------------------------------------------------------------


def instance_cancel(
    *, instance_id: Any, actor: str = "system", reason: str = ""
) -> WorkflowInstance:
    """Cancel an instance that has not finished (or a failed one). Cancels its open steps;
    running attempts finish but their results are ignored. Raises :class:`Conflict` when the
    instance already finished."""
    if not isinstance(reason, str) or len(reason) > 1000 or string_problem(reason):
        raise InvalidInput("reason must be valid text of at most 1000 characters")
    with transaction.atomic():
        instance = _lock_instance(instance_id)
        if instance is None:
            raise NotFound("instance not found")
        if instance.state not in (I.PENDING, I.RUNNING, I.FAILED):
            raise Conflict(
                f"instance is {instance.state}; it cannot be cancelled", code="invalid_state"
            )
        journal = Journal(instance, actor=actor)
        _cancel_instance(instance, _steps(instance), definition_of(instance), journal, reason)
        journal.flush()
        return instance


def _reopen(
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


def instance_retry(
    *, instance_id: Any, actor: str = "system", user: Any = None
) -> WorkflowInstance:
    """Retry a failed instance from its failed, timed-out or cancelled steps, each with a
    fresh retry budget and schedule-to-close window. Raises :class:`Conflict` unless the
    instance is ``failed``. Steps of another app's kind start again only if that kind allows
    ``user`` (None: the system) to retry them (:func:`kinds.authorize_operator`)."""
    with transaction.atomic():
        instance = _lock_instance(instance_id)
        if instance is None:
            raise NotFound("instance not found")
        if instance.state != I.FAILED:
            raise Conflict(
                f"instance is {instance.state}; only failed instances can be retried",
                code="invalid_state",
            )
        definition = definition_of(instance)
        if definition is None:
            raise Conflict(
                f"{instance.workflow} v{instance.version} is not registered",
                code="definition_missing",
            )
        journal = Journal(instance, actor=actor)
        steps = _steps(instance)
        if (instance.error or {}).get("phase") == "compensation":
            saga.retry_failed(instance, steps, definition, journal)
            journal.flush()
            return instance
        _reopen(instance, definition, journal)
        journal.steps = steps
        for name in definition.order():
            step = steps[name]
            if step.state in STEP_RETRYABLE:
                step.attempt_base = step.attempt
                spec = definition.steps[name]
                if spec.kind == "task":
                    step_schedule(step, spec, journal, retry=True)
                else:
                    kinds.authorize_operator(
                        action="retry", step_run=step, spec=spec, instance=instance, user=user
                    )
                    kinds.get_kind(spec.kind).ready(
                        step_run=step, spec=spec, journal=journal, now=journal.now
                    )
        _advance(instance, steps, definition, journal)
        journal.flush()
        return instance


# -- sweepers' per-row services -----------------------------------------------------------------


def step_ring_again(*, step_run_id: int, older_than: datetime) -> bool:
    """Re-ring the doorbell of a step still ``scheduled``/``retrying`` whose due time and last
    ring are before ``older_than`` (its message was lost). Skips a locked instance."""
    with transaction.atomic():
        instance = _lock_instance_of_step(step_run_id, skip_locked=True)
        if instance is None or instance.state != I.RUNNING or instance.paused_at is not None:
            return False
        step = StepRun.objects.filter(pk=step_run_id).first()
        if (
            step is None
            or step.state not in (S.SCHEDULED, S.RETRYING)
            or step.next_attempt_at is None
            or step.next_attempt_at > older_than
            or (step.rung_at is not None and step.rung_at > older_than)
        ):
            return False
        definition = definition_of(instance)
        spec = definition.steps.get(step.name) if definition else None
        StepRun.objects.filter(pk=step.pk).update(rung_at=timezone.now())
        # Nothing changed state: no event and no instance write, only the doorbell.
        bells = [
            Doorbell(
                step.pk,
                step.attempt,
                None,
                getattr(spec, "queue", None),
                _time_limit(spec) if spec else None,
            )
        ]
        transaction.on_commit(lambda: ring_doorbells(bells))
        return True


def step_time_out(*, step_run_id: int, attempt: int | None = None) -> bool:
    """Time out a ``running`` attempt and apply its retry policy.

    From the sweeper (``attempt`` None): only a step past its start-to-close (or
    schedule-to-close) deadline, skipping a locked instance. From the worker that enforced the
    limit itself (Celery's soft time limit): that exact attempt, if it is still running.
    """
    with transaction.atomic():
        instance = _lock_instance_of_step(step_run_id, skip_locked=attempt is None)
        if instance is None:
            return False
        steps = _steps(instance)
        step = next((s for s in steps.values() if s.pk == step_run_id), None)
        journal = Journal(instance, actor="sweeper" if attempt is None else "worker")
        if step is None or step.state != S.RUNNING or step.timeout_at is None:
            return False
        if attempt is None and step.timeout_at > journal.now:
            return False
        if attempt is not None and step.attempt != attempt:
            return False
        definition = definition_of(instance)
        spec = definition.steps.get(step.name) if definition else None
        past_close = step.close_by is not None and step.close_by <= journal.now
        limit = "schedule_to_close" if past_close else "start_to_close"
        step.time_out()
        error = {
            "type": "signoff.StepTimeout",
            "message": f"attempt {step.attempt} exceeded {limit}",
            "traceback": "",
        }
        journal.record("step_timed_out", step=step, data={"limit": limit})
        _attempt_failed(
            instance,
            steps,
            step,
            spec,
            definition,
            journal,
            error,
            retryable=not past_close,
            reason="timed_out",
        )
        journal.flush()
        return True


def instance_expire(*, instance_id: Any) -> bool:
    """Fail a running instance past its workflow deadline. Skips a locked instance."""
    with transaction.atomic():
        instance = _lock_instance(instance_id, skip_locked=True)
        now = timezone.now()
        if (
            instance is None
            or instance.state != I.RUNNING
            or instance.deadline_at is None
            or instance.deadline_at > now
        ):
            return False
        journal = Journal(instance, actor="sweeper", now=now)
        definition = definition_of(instance)
        steps = _steps(instance)
        error = {
            "type": "signoff.DeadlineExceeded",
            "message": f"workflow deadline {instance.deadline_at.isoformat()} passed",
            "traceback": "",
        }
        if definition is None:
            instance.fail(error)
            instance.finished_at = now
            journal.record("instance_failed", data={"error": error})
        else:
            _fail_instance(instance, steps, definition, journal, error)
        journal.flush()
        return True


# -- for other step kinds (approvals, signals): act on a waiting step under the lock -------------


@dataclass
class LockedInstance:
    """An instance locked for the current transaction, with its steps and a journal. Other
    apps' services use it to complete ``waiting`` steps through the engine's rules."""

    instance: WorkflowInstance
    steps: dict[str, StepRun]
    journal: Journal
    definition: Workflow | None

    def step_by_id(self, step_run_id: int) -> StepRun | None:
        return next((s for s in self.steps.values() if s.pk == step_run_id), None)

    def record(self, type: str, *, step: StepRun | None = None, **kwargs: Any) -> None:
        self.journal.record(type, step=step, **kwargs)

    def resolve_step(self, step: StepRun, output: Any) -> None:
        """``waiting`` → ``succeeded`` with ``output``, then advance the instance."""
        step.resolve(stored_output(self.instance, step.name, output))
        step.finished_at = self.journal.now
        self.journal.record("step_succeeded", step=step)
        if self.definition is not None:
            _advance(self.instance, self.steps, self.definition, self.journal)

    def advance(self) -> None:
        """Schedule what became ready (after a waiting step completed)."""
        if self.definition is not None:
            _advance(self.instance, self.steps, self.definition, self.journal)

    def cancel_instance(self, reason: str) -> None:
        """Cancel the instance with its open steps (and, through their kinds, requests)."""
        _cancel_instance(self.instance, self.steps, self.definition, self.journal, reason)

    def revise_input(
        self, changes: Any, *, reason: str = "", added_files: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """Change top-level input fields of the running instance (see
        :func:`instance_revise_input`); returns the diff recorded. ``added_files``: attachment
        rows saved on this journal (not yet written) that the files' field may list."""
        return _revise_input(
            self.instance, self.definition, self.journal, changes, reason, added_files
        )

    def fail_step(self, step: StepRun, error: dict[str, Any], *, reason: str) -> None:
        """``waiting`` → ``failed``; fails the instance (no retry for a human decision)."""
        step.reject()
        step.error = error
        step.finished_at = self.journal.now
        self.journal.record("step_failed", step=step, data={"reason": reason, "error": error})
        if self.instance.state == I.RUNNING and self.definition is not None:
            _fail_instance(
                self.instance,
                self.steps,
                self.definition,
                self.journal,
                {"step": step.name, "reason": reason, **error},
            )


def _revise_input(
    instance: WorkflowInstance,
    definition: Workflow | None,
    journal: Journal,
    changes: Any,
    reason: str,
    added_files: Sequence[Any] = (),
) -> dict[str, Any]:
    if instance.state != I.RUNNING:
        raise Conflict(
            f"instance is {instance.state}; only a running instance's input can be revised",
            code="invalid_state",
        )
    if definition is None:
        raise Conflict(
            f"{instance.workflow} v{instance.version} is not registered",
            code="definition_missing",
        )
    if not isinstance(changes, dict):
        raise InvalidInput("the changes must be a JSON object of input fields", code="invalid")
    problem = storable_json_problem(changes)
    if problem:
        raise InvalidInput(f"input: {problem}", code="invalid_input")
    if not isinstance(reason, str) or len(reason) > 1000 or string_problem(reason):
        raise InvalidInput("reason must be valid text of at most 1000 characters")
    if definition.requester_input is not None and definition.requester_input in changes:
        raise InvalidInput(
            f"input.{definition.requester_input} names the requester; it cannot be revised",
            code="not_revisable",
        )
    changes = _jsonable(changes)
    if definition.attachments is not None and definition.attachments in changes:
        # The files' field lists files of this instance only, as their rows say.
        changes[definition.attachments] = attachments.refs_of_instance(
            instance.pk,
            changes[definition.attachments],
            field=definition.attachments,
            added=added_files,
        )
    current = sealing.open_fields(instance.input, where="input")
    if not isinstance(current, dict):
        raise Conflict("the instance's input is not an object", code="invalid_state")
    problems = definition.validate_input({**current, **changes})
    if problems:
        raise InvalidInput(
            "invalid input: " + "; ".join(problems),
            code="invalid_input",
            errors={"input": problems},
        )
    sealed_fields = sealing.input_fields(definition.sensitive)
    stored = dict(instance.input)
    diff: dict[str, Any] = {}
    for name, new in changes.items():
        old = current.get(name)
        if name in current and old == new and isinstance(old, bool) == isinstance(new, bool):
            continue  # 120 and 120.0 are the same amount; true and 1 are not the same
        entry: dict[str, Any] = {"from": current.get(name), "to": new}
        if name not in current:
            entry["added"] = True
        if name in sealed_fields:
            # The history never holds a sealed value: the diff says that it changed, not how.
            entry.update({"from": sealing.MASK if name in current else None, "to": sealing.MASK})
            entry["sealed"] = True
            stored[name] = sealing.seal_value(new)
        else:
            stored[name] = new
        diff[name] = entry
    if not diff:
        return {}
    instance.input = stored
    # The journal's instance write leaves the input alone (it is not in the hot path's
    # columns): write it here, in the same transaction.
    WorkflowInstance.objects.filter(pk=instance.pk).update(input=stored)
    journal.record(
        "instance_input_revised",
        data={"changes": diff, **({"reason": reason} if reason else {})},
    )
    return diff


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
        locked = lock_instance(instance_id=instance_id, actor=actor)
        if locked is None:
            raise NotFound("instance not found")
        diff = locked.revise_input(changes, reason=reason)
        locked.journal.flush()
        return diff


def lock_instance(
    *,
    instance_id: Any = None,
    step_run_id: int | None = None,
    actor: str = "system",
    skip_locked: bool = False,
) -> LockedInstance | None:
    """Lock an instance (by id or by one of its steps) in the caller's transaction and load
    its steps; None when it does not exist (or is locked, with ``skip_locked``). The caller
    must :meth:`Journal.flush` before leaving the transaction."""
    if step_run_id is not None:
        instance = _lock_instance_of_step(step_run_id, skip_locked=skip_locked)
    else:
        instance = (
            WorkflowInstance.objects.select_for_update(skip_locked=skip_locked)
            .filter(pk=instance_id)
            .first()
        )
    if instance is None:
        return None
    steps = _steps(instance)
    journal = Journal(instance, actor=actor)
    journal.steps = steps
    return LockedInstance(instance, steps, journal, definition_of(instance))


# -- operator actions (admin, status page, `manage.py signoff`) ----------------------------------


def _operator_lock(instance_id: Any, actor: str) -> tuple[WorkflowInstance, Journal]:
    instance = _lock_instance(instance_id)
    if instance is None:
        raise NotFound("instance not found")
    journal = Journal(instance, actor=actor)
    journal.steps = _steps(instance)
    return instance, journal


def _ring_open_steps(instance: WorkflowInstance, journal: Journal, *, now_only: bool) -> list[str]:
    """Ring every scheduled/retrying step again (retrying ones at their due time, or now)."""
    definition = definition_of(instance)
    rung = []
    for step in journal.steps.values():
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
            step,
            eta=eta,
            queue=getattr(spec, "queue", None),
            time_limit=_time_limit(spec) if spec else None,
        )
        rung.append(step.name)
    return rung


def instance_pause(*, instance_id: Any, actor: str) -> WorkflowInstance:
    """Pause a running instance: nothing new is scheduled or started until unpaused; attempts
    already running finish and are recorded. Writes ``instance_paused``."""
    with transaction.atomic():
        instance, journal = _operator_lock(instance_id, actor)
        if instance.state != I.RUNNING:
            raise Conflict(
                f"instance is {instance.state}; only running instances can be paused",
                code="invalid_state",
            )
        if instance.paused_at is not None:
            raise Conflict("instance is already paused", code="already_paused")
        instance.paused_at = journal.now
        journal.record("instance_paused")
        journal.flush()
        return instance


def instance_unpause(*, instance_id: Any, actor: str) -> WorkflowInstance:
    """Undo :func:`instance_pause`: ring the waiting steps and schedule what became ready.
    Writes ``instance_unpaused``."""
    with transaction.atomic():
        instance, journal = _operator_lock(instance_id, actor)
        if instance.paused_at is None:
            raise Conflict("instance is not paused", code="not_paused")
        instance.paused_at = None
        journal.record("instance_unpaused")
        _ring_open_steps(instance, journal, now_only=False)
        definition = definition_of(instance)
        if definition is not None:
            _advance(instance, journal.steps, definition, journal)
        journal.flush()
        return instance


def instance_resume(*, instance_id: Any, actor: str) -> list[str]:
    """Resume a stuck instance: ring the doorbell of every scheduled or retrying step now
    (skipping backoffs), e.g. after the broker lost its messages. Writes ``instance_resumed``
    and returns the steps rung."""
    with transaction.atomic():
        instance, journal = _operator_lock(instance_id, actor)
        if instance.state != I.RUNNING:
            raise Conflict(
                f"instance is {instance.state}; only running instances can be resumed",
                code="invalid_state",
            )
        if instance.paused_at is not None:
            raise Conflict("instance is paused; unpause it instead", code="paused")
        rung = _ring_open_steps(instance, journal, now_only=True)
        journal.record("instance_resumed", data={"rung": rung})
        journal.flush()
        return rung


def _step_for_operator(step_run_id: Any, actor: str) -> tuple[WorkflowInstance, Journal, StepRun]:
    try:
        pk = int(step_run_id)
    except (TypeError, ValueError):
        raise NotFound("step not found") from None
    instance = _lock_instance_of_step(pk)
    if instance is None:
        raise NotFound("step not found")
    journal = Journal(instance, actor=actor)
    journal.steps = _steps(instance)
    step = next(s for s in journal.steps.values() if s.pk == pk)
    return instance, journal, step


def step_retry_now(*, step_run_id: Any, actor: str) -> StepRun:
    """Run a step again now: a ``retrying`` step skips the rest of its backoff; a failed,
    timed-out or cancelled step of a failed instance is scheduled again with a fresh retry
    budget (the instance runs again). Writes ``step_scheduled`` (data ``operator``)."""
    with transaction.atomic():
        instance, journal, step = _step_for_operator(step_run_id, actor)
        definition = definition_of(instance)
        spec = definition.steps.get(step.name) if definition else None
        if not isinstance(spec, TaskStep):
            raise Conflict("only task steps can be retried", code="invalid_step")
        if step.state == S.RETRYING and instance.state == I.RUNNING:
            step.next_attempt_at = journal.now
            step.rung_at = journal.now
            journal.record("step_scheduled", step=step, data={"operator": True, "now": True})
            journal.ring(step, queue=spec.queue, time_limit=_time_limit(spec))
        elif step.state in STEP_RETRYABLE and instance.state in (I.FAILED, I.RUNNING):
            if instance.state == I.FAILED:
                _reopen(instance, definition, journal, {"step": step.name})
            step.attempt_base = step.attempt
            step_schedule(step, spec, journal, retry=True)
        else:
            raise Conflict(
                f"step is {step.state} in a {instance.state} instance; nothing to retry",
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
        raise InvalidInput("a reason (up to 1000 characters) is required", code="reason_required")
    problem = storable_json_problem(output)
    if problem:
        raise InvalidInput(f"output: {problem}", code="invalid_output")
    with transaction.atomic():
        instance, journal, step = _step_for_operator(step_run_id, actor)
        if instance.state not in (I.RUNNING, I.FAILED):
            raise Conflict(f"instance is {instance.state}", code="invalid_state")
        definition = definition_of(instance)
        if step.state not in (
            S.FAILED,
            S.TIMED_OUT,
            S.CANCELLED,
            S.RETRYING,
            S.SCHEDULED,
            S.WAITING,
        ):
            raise Conflict(
                f"step is {step.state}; it cannot be completed by hand", code="invalid_state"
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
        if was_waiting and spec is not None:
            kinds.get_kind(spec.kind).cancelled(
                step_run=step, spec=spec, journal=journal, now=journal.now
            )
        still_failed = any(s.state in (S.FAILED, S.TIMED_OUT) for s in journal.steps.values())
        if instance.state == I.FAILED and not still_failed:
            _reopen(instance, definition, journal, {"step": step.name})
            # steps the failure cancelled go on too
            for other in journal.steps.values():
                other_spec = definition.steps.get(other.name) if definition else None
                if other.state == S.CANCELLED and isinstance(other_spec, TaskStep):
                    other.attempt_base = other.attempt
                    step_schedule(other, other_spec, journal, retry=True)
        if definition is not None:
            _advance(instance, journal.steps, definition, journal)
        journal.flush()
        return step
