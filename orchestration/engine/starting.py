"""Starting an instance: checks, the Idempotency-Key, files, and the first steps.

:func:`instance_start` writes the instance, its steps, ``instance_started`` and the first
steps' events in one transaction (one statement on PostgreSQL); their doorbells ring after
commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from .. import sealing, tracing
from ..definitions import Workflow, registry
from ..errors import Conflict, InvalidInput, Message, NotAllowed, invalid_input, unknown_workflow
from ..journal import Journal
from ..jsonsafe import storable_json_problem, string_problem
from ..models import KEY_OWNER, StepRun, WorkflowInstance
from ..uploads import PendingFiles, guard, start_files
from .advancing import advance
from .context import jsonable, request_fingerprint

MAX_KEY_LENGTH = 200


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
    schedule: Any = None,
    scheduled_for: datetime | None = None,
) -> tuple[WorkflowInstance, bool]:
    """Start an instance; returns ``(instance, created)``.

    ``files`` (uploads) are checked (:mod:`orchestration.uploads`), listed in the input
    field the workflow names (``Workflow(attachments=...)``) before the input is validated,
    and stored with the instance in its transaction (their bytes deleted if it fails). A
    repeat with the same Idempotency-Key and the same files stores nothing.

    With an ``idempotency_key``: the same key and the same request return the first instance
    (``created`` False); the same key with another request raises :class:`Conflict`. Unknown
    workflow or invalid input raise :class:`InvalidInput` and write nothing. Writes the
    instance, its steps and ``instance_started`` plus the first steps' events in one
    transaction; their doorbells ring after commit.

    ``schedule`` and ``scheduled_for`` (the schedule's fire time) are set by
    :mod:`orchestration.schedule_firing`: the instance links to its schedule and its steps see
    the fire time as ``ctx.scheduled_for``.

    With tracing on, the start is a span (a child of the API request's span, when it came
    through the API) and the instance keeps its context: every step's span is its child.
    """
    with tracing.start_span(workflow=workflow, version=version) as span:
        instance, created = _start(
            workflow=workflow,
            input=input,
            business_key=business_key,
            idempotency_key=idempotency_key,
            version=version,
            started_by=started_by,
            actor=actor,
            files=files,
            schedule=schedule,
            scheduled_for=scheduled_for,
        )
        tracing.note_started(span, instance, created)
        return instance, created


@dataclass
class CheckedStart:
    """A start's request once checked (:func:`start_checked`): what :func:`_create` writes."""

    definition: Workflow
    input: dict[str, Any]
    business_key: str
    idempotency_key: str | None
    fingerprint: str
    on_behalf_of: str | None
    uploads: PendingFiles | None


def start_checked(
    *,
    workflow: Any,
    input: Any = None,
    business_key: Any = "",
    idempotency_key: Any = None,
    version: Any = None,
    started_by: Any = None,
    files: Sequence[Any] = (),
) -> CheckedStart:
    """The checks of :func:`instance_start`, writing nothing: the workflow and version, the
    requester field, the files, the input schema, storable JSON, the business key and the
    Idempotency-Key. Raises :class:`InvalidInput` (or :class:`NotAllowed` for another
    requester); returns what the start would write and the request's fingerprint (a batch
    start checks each of its items with it)."""
    input = {} if input is None else input
    if not isinstance(workflow, str) or not workflow:
        raise InvalidInput(gettext_noop("workflow must be a non-empty string"), code="invalid")
    definition = registry.get(workflow, version)
    if definition is None:
        known = registry.get(workflow) is not None
        raise InvalidInput(
            unknown_workflow(workflow, version if known else None),
            code="unknown_workflow",
        )
    input, on_behalf_of = _requester_input(definition, input, started_by)
    uploads = start_files(definition, input, files, started_by)
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
            invalid_input(problems),
            code="invalid_input",
            errors={"input": problems},
        )
    if not isinstance(business_key, str) or len(business_key) > 200 or string_problem(business_key):
        raise InvalidInput(
            gettext_noop(
                "business_key must be a string of at most 200 characters "
                "(valid Unicode, no NUL characters)"
            )
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
    return CheckedStart(
        definition=definition,
        input=stored_input,
        business_key=business_key,
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(request),
        on_behalf_of=on_behalf_of,
        uploads=uploads,
    )


def _start(
    *,
    workflow: str,
    input: dict[str, Any] | None = None,
    business_key: str = "",
    idempotency_key: str | None = None,
    version: int | None = None,
    started_by: Any = None,
    actor: str = "system",
    files: Sequence[Any] = (),
    schedule: Any = None,
    scheduled_for: datetime | None = None,
) -> tuple[WorkflowInstance, bool]:
    """:func:`instance_start`, outside its span."""
    checked = start_checked(
        workflow=workflow,
        input=input,
        business_key=business_key,
        idempotency_key=idempotency_key,
        version=version,
        started_by=started_by,
        files=files,
    )
    fingerprint = checked.fingerprint
    if idempotency_key is not None:
        existing = _same_key(workflow, idempotency_key, fingerprint, started_by)
        if existing is not None:
            return existing, False
    try:
        with guard(), transaction.atomic():
            return _create(
                checked.definition,
                checked.input,
                business_key,
                idempotency_key,
                fingerprint,
                started_by,
                actor,
                checked.on_behalf_of,
                checked.uploads,
                schedule=schedule,
                scheduled_for=scheduled_for,
            ), True
    except IntegrityError:
        # Two requests with one key raced; the loser answers like a repeat.
        if idempotency_key is None:
            raise
        existing = _same_key(workflow, idempotency_key, fingerprint, started_by)
        if existing is None:
            raise
        return existing, False


def requester_input(definition: Workflow, input: Any, started_by: Any) -> Any:
    """``input`` as a start by ``started_by`` would take it: the workflow's requester field
    filled with their username when absent; naming someone else needs
    ``orchestration.start_on_behalf`` (:class:`NotAllowed` otherwise). Schedules check their
    fixed input with it when they are saved, since their fires start as the system."""
    return _requester_input(definition, input, started_by)[0]


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
            Message(
                gettext_noop(
                    "input.%(field)s names someone else; starting a workflow for another "
                    "person needs the orchestration.start_on_behalf permission"
                ),
                field=field_name,
            ),
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
            Message(
                gettext_noop("Idempotency-Key %(key)s was already used for a different request"),
                key=repr(key),
            ),
            code="idempotency_conflict",
        )
    return existing


def _create(*args: Any, **kwargs: Any) -> WorkflowInstance:
    """Write one new instance (:func:`built`'s arguments) and its journal, in the caller's
    transaction."""
    instance, journal, steps = built(*args, **kwargs)
    journal.flush(created_steps=steps)
    # Its steps as written, for the start's own answer (InstanceSerializer, context
    # ``as_started``), which then reads nothing back.
    instance.started_steps = steps
    return instance


def built(
    definition: Workflow,
    input: dict[str, Any],
    business_key: str,
    idempotency_key: str | None,
    fingerprint: str,
    started_by: Any,
    actor: str,
    on_behalf_of: str | None = None,
    uploads: PendingFiles | None = None,
    parent_step: StepRun | None = None,
    parent_attempt: int | None = None,
    instance_id: Any = None,
    schedule: Any = None,
    scheduled_for: datetime | None = None,
    now: datetime | None = None,
    parent_item: Any = None,
) -> tuple[WorkflowInstance, Journal, list[StepRun]]:
    """A new instance, its steps and its journal (``instance_started``, the first steps
    scheduled), not yet written: :func:`_create` flushes one, a batch start many at once."""
    now = now or timezone.now()
    instance = WorkflowInstance(
        **({"id": instance_id} if instance_id is not None else {}),
        parent_step=parent_step,
        parent_attempt=parent_attempt,
        parent_item=parent_item,
        workflow=definition.name,
        version=definition.version,
        input=sealing.seal_fields(jsonable(input), sealing.input_fields(definition.sensitive)),
        business_key=business_key,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        started_by=started_by if getattr(started_by, "pk", None) else None,
        created_at=now,
        updated_at=now,
        schedule=schedule,
        scheduled_for=scheduled_for,
        trace_context=tracing.traceparent(),
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
            **(
                {"schedule": schedule.name, "scheduled_for": scheduled_for.isoformat()}
                if schedule is not None and scheduled_for is not None
                else {}
            ),
        },
    )
    if uploads is not None:
        uploads.record(instance, journal)
    advance(instance, steps, definition, journal)
    return instance, journal, list(steps.values())


# -- children (orchestration.children) ------------------------------------------------------------


def child_input_checked(definition: Workflow, input: Any, started_by: Any) -> dict[str, Any]:
    """The input a ``child`` step would start ``definition`` with, as :func:`instance_start`
    checks it (the requester field, the input schema, storable JSON). Raises
    :class:`InvalidInput` (or :class:`NotAllowed` for another requester) and writes nothing."""
    input, _ = _requester_input(definition, input, started_by)
    problems = definition.validate_input(input)
    unstorable = storable_json_problem(input)
    if unstorable and not problems:
        problems = [unstorable]
    if problems:
        raise InvalidInput(
            invalid_input(problems),
            code="invalid_input",
            errors={"input": problems},
        )
    return input


def child_create(
    definition: Workflow,
    *,
    input: dict[str, Any],
    business_key: str,
    parent_step: StepRun | None = None,
    parent_attempt: int,
    instance_id: Any,
    started_by: Any,
    actor: str,
    parent_item: Any = None,
) -> WorkflowInstance:
    """Write a child instance (input already checked by :func:`child_input_checked`; values
    may be sealed already) linked to its parent's step (or map item) and attempt, in the caller's
    transaction (the parent's, whose instance row it holds locked). Its doorbells ring when
    that transaction commits."""
    with transaction.atomic():
        return _create(
            definition,
            input,
            business_key,
            None,
            "",
            started_by,
            actor,
            parent_step=parent_step,
            parent_attempt=parent_attempt,
            instance_id=instance_id,
            parent_item=parent_item,
        )
