"""What differs between the databases Signoff runs on, in one place.

Signoff runs on PostgreSQL (production, ``make test``) and on SQLite (the embedded default).
The ORM hides nearly every difference; the few paths that use PostgreSQL-only SQL for speed
(the step hot path's fixed reads, the journal's one-statement writes, the set-based escalation)
ask here, so a third database means reading this module and its callers, nothing else.
Migrations get their connection from the schema editor and ask :func:`is_postgresql` with it.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections


def is_postgresql(connection: Any = None) -> bool:
    """Whether ``connection`` (default: the default database's) is PostgreSQL."""
    return (connection or connections[DEFAULT_DB_ALIAS]).vendor == "postgresql"


def supports_json_contains(connection: Any = None) -> bool:
    """Whether JSON ``contains`` lookups work (PostgreSQL yes, SQLite no)."""
    return bool((connection or connections[DEFAULT_DB_ALIAS]).features.supports_json_field_contains)


def transaction_lock(key: int, connection: Any = None) -> None:
    """Hold an exclusive lock named ``key`` until the current transaction ends: a PostgreSQL
    transaction-level advisory lock; SQLite serializes writing transactions already."""
    connection = connection or connections[DEFAULT_DB_ALIAS]
    if is_postgresql(connection):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def in_values(queryset: Any, column: str, values: list[Any]) -> Any:
    """``queryset`` filtered to rows whose ``column`` (a field name that is its own column) is
    one of ``values``. PostgreSQL: ``= ANY(%s)`` with one array parameter (an ``IN`` of a
    thousand placeholders cost more to build and parse than the query takes to run); SQLite:
    the ORM's ``__in``."""
    if not is_postgresql(connections[queryset.db]):
        return queryset.filter(**{f"{column}__in": values})
    table = connections[queryset.db].ops.quote_name(queryset.model._meta.db_table)
    quoted = connections[queryset.db].ops.quote_name(column)
    return queryset.extra(where=[f"{table}.{quoted} = ANY(%s)"], params=[list(values)])
