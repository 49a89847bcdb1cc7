"""The one door into an instance: :func:`lock_instance` opens every service's transaction.

It locks the instance row with ``select_for_update`` (by the instance's id, or by one of its
steps' ids), loads its steps, finds the step asked for and checks the states the caller needs,
and hands back a :class:`LockedInstance` with a fresh :class:`~orchestration.journal.Journal`.
The instance row is the lock for the instance *and all its steps*, so locks are always taken in
one order and parallel branches serialize on it.

The step hot path (claim, complete) runs through here on every step: on PostgreSQL the lock and
the load are fixed SQL built once from the models' columns (:func:`_hot_sql`) and loaded as the
ORM would (:func:`_load`), without query compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, models

from ..definitions import Workflow
from ..journal import Journal
from ..models import InstanceState, StepRun, WorkflowInstance
from ..vendor import is_postgresql
from .advancing import advance, cancel_instance, fail_instance
from .context import definition_of, stored_output
from .revising import revise_input

I = InstanceState  # noqa: E741


@dataclass
class LockedInstance:
    """An instance locked for the current transaction, with its steps, a journal and (when
    locked by a step's id) that step. Engine services and other apps' services (approvals,
    signals) change it through these methods; the caller flushes the journal before leaving
    the transaction."""

    instance: WorkflowInstance
    steps: dict[str, StepRun]
    journal: Journal
    definition: Workflow | None
    step: StepRun | None = None

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
            advance(self.instance, self.steps, self.definition, self.journal)

    def advance(self) -> None:
        """Schedule what became ready (after a waiting step completed)."""
        if self.definition is not None:
            advance(self.instance, self.steps, self.definition, self.journal)

    def cancel_instance(self, reason: str) -> None:
        """Cancel the instance with its open steps (and, through their kinds, requests)."""
        cancel_instance(self.instance, self.steps, self.definition, self.journal, reason)

    def revise_input(
        self, changes: Any, *, reason: str = "", added_files: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """Change top-level input fields of the running instance (see
        :func:`~orchestration.engine.instance_revise_input`); returns the diff recorded.
        ``added_files``: attachment rows saved on this journal (not yet written) that the
        files' field may list."""
        return revise_input(
            self.instance, self.definition, self.journal, changes, reason, added_files
        )

    def fail_step(self, step: StepRun, error: dict[str, Any], *, reason: str) -> None:
        """``waiting`` → ``failed``; fails the instance (no retry for a human decision)."""
        step.reject()
        step.error = error
        step.finished_at = self.journal.now
        self.journal.record("step_failed", step=step, data={"reason": reason, "error": error})
        if self.instance.state == I.RUNNING and self.definition is not None:
            fail_instance(
                self.instance,
                self.steps,
                self.definition,
                self.journal,
                {"step": step.name, "reason": reason, **error},
            )


def lock_instance(
    *,
    instance_id: Any = None,
    step_run_id: int | None = None,
    actor: str = "system",
    skip_locked: bool = False,
    instance_states: Collection[str] | None = None,
    step_states: Collection[str] | None = None,
) -> LockedInstance | None:
    """Lock an instance (by ``instance_id``, or by ``step_run_id``: one of its steps, found as
    ``.step``) in the caller's transaction and load its steps. None, having loaded nothing
    more, when the instance does not exist (or is locked, with ``skip_locked``) or is not in
    one of ``instance_states``; None also when, locked by a step, that step is not in one of
    ``step_states``. The caller must :meth:`Journal.flush` before leaving the transaction
    (or write nothing)."""
    if step_run_id is not None:
        instance = _lock_instance_of_step(step_run_id, skip_locked=skip_locked)
    else:
        instance = (
            WorkflowInstance.objects.select_for_update(skip_locked=skip_locked)
            .filter(pk=instance_id)
            .first()
        )
    if instance is None or (instance_states is not None and instance.state not in instance_states):
        return None
    steps = _steps(instance)
    step = None
    if step_run_id is not None:
        step = next((s for s in steps.values() if s.pk == step_run_id), None)
        if step_states is not None and (step is None or step.state not in step_states):
            return None
    journal = Journal(instance, actor=actor)
    journal.steps = steps
    return LockedInstance(instance, steps, journal, definition_of(instance), step)


# -- the fixed SQL of the hot path ----------------------------------------------------------------


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
