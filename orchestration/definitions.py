"""Workflow definitions: the Python DSL and the registry.

A workflow is a set of steps with dependencies (``after=[...]``): sequences, parallel branches
(fan-out) and joins (fan-in). Each step has a *kind*. This module knows the ``task`` kind (a
Python function run by a Celery worker); other apps add kinds (``approval``, ``signal``,
``timer``) by subclassing :class:`StepSpec` and registering a
:class:`~orchestration.kinds.StepKind` with :func:`orchestration.kinds.register_kind` (the
engine runs ``task`` steps through its own, :mod:`orchestration.engine.task_kind`).

Example::

    onboarding = Workflow("customer_onboarding", version=1, deadline=timedelta(hours=1))

    @onboarding.task(retry=RetryPolicy(max_attempts=5))
    def create_account(ctx: StepContext) -> dict:
        return {"account": ctx.input["customer"]}

    @onboarding.task(after=["create_account"], when=lambda ctx: ctx.input.get("plan") != "free")
    def enable_billing(ctx: StepContext) -> dict: ...

    registry.register(onboarding)
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jsonschema

from .retry_policy import NonRetryableError, RetryPolicy  # noqa: F401 - part of the DSL

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,99}$")


class DefinitionError(ValueError):
    """A workflow definition is invalid. The message names the workflow and the step."""


@dataclass(frozen=True)
class StepContext:
    """What a step function (or a ``when`` predicate) sees.

    ``outputs`` holds the outputs of the instance's finished steps by step name. The
    ``idempotency_key`` is the same for every attempt of this step of this instance: pass it
    to external systems so a retried call is applied once.
    """

    instance_id: str
    workflow: str
    version: int
    step: str
    attempt: int
    input: Mapping[str, Any]
    outputs: Mapping[str, Any]
    business_key: str = ""
    # The fire time of the schedule that started the instance (None when not scheduled).
    scheduled_for: datetime | None = None
    # In a compensation only: True when the step never succeeded and is undone because one of
    # its attempts was claimed (``compensate_attempted=True``). The compensation's ``output``
    # is then None (a succeeded step may return None too, so test this flag, not the output)
    # and the attempts' effect may or may not have been applied: look it up by
    # ``idempotency_key`` and undo it if it is there.
    attempted_only: bool = False
    # Paths of the workflow's sensitive fields (``input.x``, ``outputs.step.y``): whoever
    # shows context values to people (approval fields, mail) masks these.
    sensitive: frozenset[str] = frozenset()

    @property
    def idempotency_key(self) -> str:
        return f"{self.instance_id}:{self.step}"


Predicate = Callable[[StepContext], bool]


@dataclass
class StepSpec:
    """One step of a definition. Subclasses add kinds; ``kind`` selects the engine handler."""

    name: str
    after: tuple[str, ...] = ()
    when: Predicate | None = None
    kind: str = "task"

    def problems(self) -> list[str]:
        return []

    def problems_in(self, workflow: Workflow) -> list[str]:
        """Problems only the whole workflow shows (its input schema, its other steps);
        checked at registration after :meth:`problems`."""
        return []

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "after": list(self.after),
            "conditional": self.when is not None,
        }


@dataclass
class TaskStep(StepSpec):
    """A Python function run by a Celery worker, retried by the engine from ``retry``."""

    fn: Callable[[StepContext], Any] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    start_to_close: timedelta = timedelta(minutes=5)
    schedule_to_close: timedelta | None = None
    queue: str | None = None
    # Saga: a function undoing this step, given the context and the step's output. It runs
    # when the instance fails or is cancelled, newest step first, with its own retry policy.
    compensate: Callable[[StepContext, Any], Any] | None = None
    # Also undo the step when it never succeeded but an attempt was claimed (it may have
    # applied its effect and then failed, timed out or been cut off by the saga); the
    # compensation then gets output None and ``ctx.attempted_only``.
    compensate_attempted: bool = False
    compensate_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=5, max_interval=timedelta(minutes=5))
    )
    kind: str = "task"

    def problems(self) -> list[str]:
        found = (
            list(self.retry.problems())
            if isinstance(self.retry, RetryPolicy)
            else ["retry must be a RetryPolicy"]
        )
        if not callable(self.fn):
            found.append("fn must be callable")
        if not isinstance(self.start_to_close, timedelta) or self.start_to_close <= timedelta(0):
            found.append("start_to_close must be a positive timedelta")
        if self.schedule_to_close is not None and (
            not isinstance(self.schedule_to_close, timedelta)
            or self.schedule_to_close <= timedelta(0)
        ):
            found.append("schedule_to_close must be a positive timedelta")
        if self.queue is not None and not (isinstance(self.queue, str) and self.queue):
            found.append("queue must be a non-empty string")
        if self.compensate is not None and not callable(self.compensate):
            found.append("compensate must be callable")
        if not isinstance(self.compensate_attempted, bool):
            found.append("compensate_attempted must be True or False")
        elif self.compensate_attempted and self.compensate is None:
            found.append("compensate_attempted=True needs compensate= (the function undoing it)")
        if not isinstance(self.compensate_retry, RetryPolicy):
            found.append("compensate_retry must be a RetryPolicy")
        else:
            found.extend(f"compensate_retry: {p}" for p in self.compensate_retry.problems())
        return found

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "retry": self.retry.describe(),
            "start_to_close": self.start_to_close.total_seconds(),
            "schedule_to_close": (
                self.schedule_to_close.total_seconds() if self.schedule_to_close else None
            ),
            "queue": self.queue,
            "compensation": self.compensate.__name__ if self.compensate else None,
            "compensate_attempted": self.compensate_attempted,
        }


class Workflow:
    """A workflow definition: a name, a version and a graph of steps."""

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        description: str = "",
        deadline: timedelta | None = None,
        input_schema: Mapping[str, Any] | None = None,
        output: Callable[[StepContext], Any] | None = None,
        sensitive: Iterable[str] = (),
        retention: timedelta | None = timedelta(days=90),
        delete_after: timedelta | None = None,
        requester_input: str | None = None,
        attachments: str | None = None,
        startable_by: Iterable[str] | None = None,
    ) -> None:
        self.name = name
        # Who may start it from the web (the start page, /start/): members of these groups
        # (and superusers). None: not offered on the web (the API starts it as before).
        self.startable_by = (
            tuple(startable_by)
            if startable_by is not None and not isinstance(startable_by, str)
            else startable_by
        )
        # The top-level input field that lists the files uploaded with a start (multipart
        # POST /api/v1/instances/): ``[{"id", "name", "content_type", "size"}, ...]``, filled
        # by the engine (``[]`` without files), so ``input_schema`` may require it and an
        # approval's ``show=`` and ``revisable=`` may name it. None: starts take no files.
        self.attachments = attachments
        # The top-level input field naming the person the instance is for (its requester).
        # A start by a person fills it with their username when absent; naming someone else
        # needs orchestration.start_on_behalf (engine.instance_start).
        self.requester_input = requester_input
        # Sealed payloads: "input.<field>" and "outputs.<step>.<field>" are stored encrypted.
        self.sensitive = frozenset(sensitive)
        # Finished instances older than `retention` lose their sensitive fields; those older
        # than retention + `delete_after` are deleted with their history. None keeps them.
        self.retention = retention
        self.delete_after = delete_after
        self.version = version
        self.description = description
        self.deadline = deadline
        self.input_schema = dict(input_schema) if input_schema is not None else None
        self.output_fn = output
        self.steps: dict[str, StepSpec] = {}
        self._order: list[str] | None = None

    def __repr__(self) -> str:
        return f"<Workflow {self.name} v{self.version}>"

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    # -- building ---------------------------------------------------------------------------
    def add(self, spec: StepSpec) -> StepSpec:
        if spec.name in self.steps:
            raise DefinitionError(f"{self.label}: duplicate step name {spec.name!r}")
        self.steps[spec.name] = spec
        self._order = None
        return spec

    def task(
        self,
        fn: Callable[[StepContext], Any] | None = None,
        *,
        name: str | None = None,
        after: Iterable[str] = (),
        when: Predicate | None = None,
        retry: RetryPolicy | None = None,
        start_to_close: timedelta = timedelta(minutes=5),
        schedule_to_close: timedelta | None = None,
        queue: str | None = None,
        compensate: Callable[[StepContext, Any], Any] | None = None,
        compensate_retry: RetryPolicy | None = None,
        compensate_attempted: bool = False,
    ) -> Any:
        """Declare a task step; usable as ``@wf.task`` or ``@wf.task(after=[...])``.

        ``compensate(ctx, output)`` undoes the step when the instance fails or is cancelled
        (a saga); it gets the step's output and the same ``ctx.idempotency_key``. With
        ``compensate_attempted=True`` it also undoes a step that never succeeded but had an
        attempt claimed (started): then ``output`` is None and ``ctx.attempted_only`` is True,
        and it must be harmless when the attempts applied nothing."""

        def decorate(func: Callable[[StepContext], Any]) -> Callable[[StepContext], Any]:
            self.add(
                TaskStep(
                    name=name or func.__name__,
                    after=_names(after),
                    when=when,
                    fn=func,
                    retry=retry if retry is not None else RetryPolicy(),
                    start_to_close=start_to_close,
                    schedule_to_close=schedule_to_close,
                    queue=queue,
                    compensate=compensate,
                    compensate_attempted=compensate_attempted,
                    **({"compensate_retry": compensate_retry} if compensate_retry else {}),
                )
            )
            return func

        return decorate(fn) if fn is not None else decorate

    # -- reading ----------------------------------------------------------------------------
    def order(self) -> list[str]:
        """Step names in a stable topological order (declaration order among equals)."""
        if self._order is None:
            self._order = _toposort(self)
        return self._order

    def dependents(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {name: [] for name in self.steps}
        for spec in self.steps.values():
            for dep in spec.after:
                result[dep].append(spec.name)
        return result

    def leaves(self) -> list[str]:
        dependents = self.dependents()
        return [name for name in self.order() if not dependents[name]]

    def validate(self) -> None:
        """Raise :class:`DefinitionError` naming the first problem found."""
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise DefinitionError(
                f"workflow name {self.name!r} must be lower case letters, digits and _"
            )
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise DefinitionError(f"{self.name}: version must be an integer >= 1")
        if not self.steps:
            raise DefinitionError(f"{self.label}: a workflow needs at least one step")
        if self.deadline is not None and (
            not isinstance(self.deadline, timedelta) or self.deadline <= timedelta(0)
        ):
            raise DefinitionError(f"{self.label}: deadline must be a positive timedelta")
        for path in sorted(self.sensitive):
            parts = path.split(".") if isinstance(path, str) else []
            valid = (len(parts) == 2 and parts[0] == "input") or (
                len(parts) == 3 and parts[0] == "outputs" and parts[1] in self.steps
            )
            if not valid:
                raise DefinitionError(
                    f"{self.label}: sensitive path {path!r} must be input.<field> or "
                    "outputs.<step>.<field> naming a step of this workflow"
                )
        if self.attachments is not None and (
            not isinstance(self.attachments, str) or not NAME_RE.match(self.attachments)
        ):
            raise DefinitionError(
                f"{self.label}: attachments must name an input field (lower case letters, "
                "digits and _)"
            )
        if self.startable_by is not None and (
            not isinstance(self.startable_by, tuple)
            or not self.startable_by
            or not all(isinstance(g, str) and g.strip() for g in self.startable_by)
        ):
            raise DefinitionError(
                f"{self.label}: startable_by must be a non-empty list of group names"
            )
        if self.attachments is not None and self.attachments == self.requester_input:
            raise DefinitionError(
                f"{self.label}: attachments and requester_input name the same input field"
            )
        for label, value in (("retention", self.retention), ("delete_after", self.delete_after)):
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
                raise DefinitionError(f"{self.label}: {label} must be a positive timedelta")
        if self.input_schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(self.input_schema)
            except jsonschema.SchemaError as exc:
                raise DefinitionError(f"{self.label}: invalid input_schema: {exc.message}") from exc
        for spec in self.steps.values():
            where = f"{self.label}: step {spec.name!r}"
            if not NAME_RE.match(spec.name) or keyword.iskeyword(spec.name):
                raise DefinitionError(f"{where}: name must be lower case letters, digits and _")
            for dep in spec.after:
                if dep not in self.steps:
                    raise DefinitionError(f"{where} depends on unknown step {dep!r}")
                if dep == spec.name:
                    raise DefinitionError(f"{where} depends on itself")
            if len(set(spec.after)) != len(spec.after):
                raise DefinitionError(f"{where} lists a dependency twice")
            if spec.when is not None and not callable(spec.when):
                raise DefinitionError(f"{where}: when must be callable")
            problems = spec.problems() or spec.problems_in(self)
            if problems:
                raise DefinitionError(f"{where}: {problems[0]}")
        self._order = _toposort(self)

    def validate_input(self, data: Any) -> list[str]:
        """Problems with a start input; empty when it is valid."""
        if not isinstance(data, dict):
            return ["input must be a JSON object"]
        if self.input_schema is None:
            return []
        validator = jsonschema.Draft202012Validator(self.input_schema)
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        return [
            (("/".join(str(p) for p in e.absolute_path) + ": ") if e.absolute_path else "")
            + e.message
            for e in errors[:20]
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "deadline": self.deadline.total_seconds() if self.deadline else None,
            "input_schema": self.input_schema,
            "requester_input": self.requester_input,
            "attachments": self.attachments,
            "startable_by": list(self.startable_by) if self.startable_by else None,
            "sensitive": sorted(self.sensitive),
            "steps": [self.steps[name].describe() for name in self.order()],
        }


def _names(after: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(after, str):
        return (after,)
    return tuple(after)


def _toposort(workflow: Workflow) -> list[str]:
    declared = list(workflow.steps)
    indegree = {name: len(workflow.steps[name].after) for name in declared}
    dependents = workflow.dependents()
    ready = [name for name in declared if indegree[name] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for child in dependents[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
        ready.sort(key=declared.index)
    if len(order) != len(declared):
        stuck = [name for name in declared if name not in order]
        raise DefinitionError(
            f"{workflow.label}: dependency cycle through step {stuck[0]!r} ({', '.join(stuck)})"
        )
    return order


class Registry:
    """Definitions by ``(name, version)``. New instances use the newest version."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, int], Workflow] = {}

    def register(self, workflow: Workflow, *, replace: bool = False) -> Workflow:
        workflow.validate()
        key = (workflow.name, workflow.version)
        if key in self._by_key and not replace and self._by_key[key] is not workflow:
            raise DefinitionError(f"{workflow.label} is already registered")
        self._by_key[key] = workflow
        return workflow

    def unregister(self, name: str, version: int) -> None:
        self._by_key.pop((name, version), None)

    def get(self, name: str, version: int | None = None) -> Workflow | None:
        if version is not None:
            return self._by_key.get((name, version))
        versions = [v for (n, v) in self._by_key if n == name]
        return self._by_key[(name, max(versions))] if versions else None

    def all(self) -> list[Workflow]:
        return [self._by_key[key] for key in sorted(self._by_key)]

    def latest(self) -> list[Workflow]:
        """The newest version of each workflow, by name."""
        newest: dict[str, Workflow] = {}
        for (name, _version), wf in sorted(self._by_key.items()):
            newest[name] = wf
        return list(newest.values())


registry = Registry()
