"""The item hot path's fixed SQL (PostgreSQL): every item of a map step is claimed and
completed through these reads and writes, so they are written once from the models' columns
and loaded as the ORM would, without query compilation — as the task step's hot path does
(:mod:`orchestration.engine.locking`). On other databases the ORM does the same.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from .engine.locking import _load, _load_plan
from .fanout_models import MapItem
from .models import StepRun, WorkflowInstance
from .vendor import is_postgresql


def _columns(model: Any, alias: str) -> str:
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


@functools.cache
def _sql(name: str) -> str:
    if name == "item":
        return (
            f"SELECT {_columns(MapItem, 'm')}, {_columns(StepRun, 's')}, "
            f"{_columns(WorkflowInstance, 'i')} FROM orchestration_mapitem m "
            "JOIN orchestration_steprun s ON s.id = m.step_run_id "
            "JOIN orchestration_workflowinstance i ON i.id = s.instance_id "
            "WHERE m.id = %s AND m.state = ANY(%s) FOR UPDATE OF m"
        )
    if name == "pending":
        return (
            f"SELECT {_columns(MapItem, 'm')} FROM orchestration_mapitem m "
            "WHERE m.step_run_id = %s AND m.state = 'pending' ORDER BY m.index LIMIT 1 "
            "FOR UPDATE SKIP LOCKED"
        )
    raise KeyError(name)


def _from_row(model: Any, values: list[Any], connection: Any) -> Any:
    fields, names, converters = _load_plan(model)
    for i, funcs in converters:
        for func in funcs:
            values[i] = func(values[i], fields[i], connection)
    return model.from_db(connection.alias, names, values)


def locked_item(item_id: int, *, states: list[str], skip_locked: bool = False) -> MapItem | None:
    """The item row locked (``FOR UPDATE``, only that row), with its step and instance as of
    now (``item.step_run``, ``item.step_run.instance``); None when it is not in ``states``
    (or, with ``skip_locked``, another transaction holds it)."""
    connection = connections[DEFAULT_DB_ALIAS]
    if not is_postgresql(connection):
        return (
            MapItem.objects.select_for_update(of=("self",), skip_locked=skip_locked)
            .select_related("step_run", "step_run__instance")
            .filter(pk=item_id, state__in=states)
            .order_by()
            .first()
        )
    sql = _sql("item") + (" SKIP LOCKED" if skip_locked else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [item_id, list(states)])
        row = cursor.fetchone()
    if row is None:
        return None
    n_item = len(MapItem._meta.concrete_fields)
    n_step = len(StepRun._meta.concrete_fields)
    item = _from_row(MapItem, list(row[:n_item]), connection)
    step = _from_row(StepRun, list(row[n_item : n_item + n_step]), connection)
    step.instance = _from_row(WorkflowInstance, list(row[n_item + n_step :]), connection)
    item.step_run = step
    return item


def next_pending(step_run_id: int) -> MapItem | None:
    """The step's first pending item (index order), locked; items others hold are skipped."""
    connection = connections[DEFAULT_DB_ALIAS]
    if not is_postgresql(connection):
        return (
            MapItem.objects.select_for_update(skip_locked=True)
            .filter(step_run_id=step_run_id, state="pending")
            .order_by("index")
            .first()
        )
    rows = _load(MapItem, _sql("pending"), [step_run_id])
    return rows[0] if rows else None


def steps_of(instance: WorkflowInstance) -> dict[str, StepRun]:
    """The instance's steps by name (for an item's context)."""
    from .engine.locking import _steps

    return _steps(instance)


@functools.cache
def _update_sql(fields: tuple[str, ...]) -> tuple[str, list[Any]]:
    model_fields = [MapItem._meta.get_field(name) for name in fields]
    assignments = ", ".join(f'"{f.column}" = %s' for f in model_fields)
    return f"UPDATE orchestration_mapitem SET {assignments} WHERE id = %s", model_fields


def save_item(item: MapItem, fields: list[str]) -> None:
    """``item.save(update_fields=fields)``, as one fixed UPDATE on PostgreSQL."""
    connection = connections[DEFAULT_DB_ALIAS]
    if not is_postgresql(connection):
        item.save(update_fields=fields)
        return
    sql, model_fields = _update_sql(tuple(fields))
    params = [f.get_db_prep_save(getattr(item, f.attname), connection) for f in model_fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, item.pk])


def step_still_waiting(step_run_id: int, instance_id: Any) -> bool:
    """Whether the step waits and its instance runs, read after a share lock on the
    instance row: a transaction cancelling or failing the instance (which holds it for update)
    is waited for, and its outcome seen. Share locks do not block one another, so items
    claimed side by side do not queue on it."""
    connection = connections[DEFAULT_DB_ALIAS]
    if is_postgresql(connection):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.state FROM orchestration_workflowinstance i WHERE i.id = %s FOR SHARE",
                [instance_id],
            )
            row = cursor.fetchone()
    else:
        row = WorkflowInstance.objects.filter(pk=instance_id).values_list("state").first()
    if row is None or row[0] != "running":
        return False
    state = StepRun.objects.filter(pk=step_run_id).values_list("state", flat=True).first()
    return state == "waiting"
