"""History that scales: the event table partitioned by time on PostgreSQL.

Migration 0020 turns ``orchestration_event`` into a table ``PARTITION BY RANGE (at)`` with one
partition per period (a month by default, ``SIGNOFF_HISTORY_PARTITION_INTERVAL=week`` for
weeks) and a default partition for anything outside them. The primary key is ``(id, at)`` in
SQL (a partitioned table's unique constraints must hold the partition key); Django keeps ``id``
as the model's pk, which stays unique because one sequence gives every id. The per-instance
unique index is ``(instance_id, seq, at)``: every history read (by instance, in ``seq`` order)
is one index scan per partition, merged in order.

:func:`sweep_history_partitions` (beat, hourly) creates the partitions of the next periods
ahead (``SIGNOFF_HISTORY_PARTITIONS_AHEAD``) and drops a whole past partition only where every
instance with an event in it may be deleted by retention (finished, and past its definition's
``retention + delete_after``); then it deletes those instances through the retention path.
Anything else stays with the row-level retention path (:mod:`orchestration.retention`).

All of it is PostgreSQL-only SQL kept in this module (house style: one vendor branch); on SQLite
the event table is a plain table and every function here does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from . import retention
from .vendor import is_postgresql, transaction_lock

log = logging.getLogger("signoff.history")

TABLE = "orchestration_event"
DEFAULT_PARTITION = f"{TABLE}_default"
# One advisory lock (transaction-scoped: safe behind PgBouncer) serializes partition DDL, so two
# beat processes or an overlapping sweep never create or drop the same partition twice.
LOCK_KEY = 0x5349_4748_5354  # "SIGHST"
_BOUND = r"FROM \('([^']+)'\) TO \('([^']+)'\)"


@dataclass(frozen=True)
class Partition:
    name: str
    lo: datetime
    hi: datetime


def interval() -> str:
    """``month`` or ``week`` (``SIGNOFF_HISTORY_PARTITION_INTERVAL``)."""
    value = getattr(settings, "SIGNOFF_HISTORY_PARTITION_INTERVAL", "month")
    return value if value in ("month", "week") else "month"


def period_start(moment: datetime, unit: str) -> datetime:
    """The start (UTC midnight) of the month or ISO week holding ``moment``."""
    moment = moment.astimezone(UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(start: datetime, unit: str) -> datetime:
    if unit == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def partition_name(lo: datetime) -> str:
    return f"{TABLE}_p{lo:%Y%m%d}"


def is_partitioned() -> bool:
    """Whether the event table is partitioned (PostgreSQL after migration 0020)."""
    if not is_postgresql(connection):
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))",
            [TABLE],
        )
        return bool(cursor.fetchone()[0])


def partitions() -> list[Partition]:
    """The event table's range partitions (not the default one), oldest first."""
    with connection.cursor() as cursor:
        # The bounds as PostgreSQL prints them (with the session's offset), cast back.
        cursor.execute(
            """
            SELECT name, b[1]::timestamptz, b[2]::timestamptz FROM (
                SELECT c.relname AS name, regexp_match(pg_get_expr(c.relpartbound, c.oid), %s) AS b
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = to_regclass(%s)
            ) parts
            WHERE b IS NOT NULL
            ORDER BY 2
            """,
            [_BOUND, TABLE],
        )
        return [Partition(name, lo, hi) for name, lo, hi in cursor.fetchall()]


def uncovered(
    lo: datetime, hi: datetime, existing: list[Partition]
) -> list[tuple[datetime, datetime]]:
    """The pieces of ``[lo, hi)`` no existing partition covers (a changed interval setting
    leaves partitions of the other size; new ones fill only the gaps, never overlap)."""
    pieces = [(lo, hi)]
    for part in existing:
        next_pieces = []
        for a, b in pieces:
            if part.hi <= a or part.lo >= b:
                next_pieces.append((a, b))
                continue
            if a < part.lo:
                next_pieces.append((a, part.lo))
            if part.hi < b:
                next_pieces.append((part.hi, b))
        pieces = next_pieces
    return pieces


def _create(lo: datetime, hi: datetime) -> str:
    """Create the partition ``[lo, hi)``, first moving into it the rows the default partition
    holds in that range (time-travelling tests, or a gap the sweeper missed): ATTACH refuses a
    range the default partition has rows in. The default partition is locked against inserts
    for the move."""
    name = partition_name(lo)
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {q(DEFAULT_PARTITION)} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(
            f"CREATE TABLE {q(name)} (LIKE {q(TABLE)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        cursor.execute(
            f"WITH moved AS (DELETE FROM {q(DEFAULT_PARTITION)} WHERE at >= %s AND at < %s "
            f"RETURNING *) INSERT INTO {q(name)} SELECT * FROM moved",
            [lo, hi],
        )
        # ATTACH builds the partitioned indexes' copies on the new table.
        cursor.execute(
            f"ALTER TABLE {q(TABLE)} ATTACH PARTITION {q(name)} FOR VALUES FROM (%s) TO (%s)",
            [lo, hi],
        )
    return name


def create_partitions(lo: datetime, hi: datetime, *, unit: str | None = None) -> list[str]:
    """Create the missing partitions of every period from the one holding ``lo`` to the one
    holding ``hi``, in one transaction; returns their names. Idempotent."""
    if not is_partitioned():
        return []
    unit = unit or interval()
    created: list[str] = []
    with transaction.atomic():
        transaction_lock(LOCK_KEY)
        existing = partitions()
        start = period_start(lo, unit)
        while start <= hi:
            end = next_period(start, unit)
            for a, b in uncovered(start, end, existing):
                created.append(_create(a, b))
                existing.append(Partition(created[-1], a, b))
            start = end
    if created:
        log.info("history partitions created: %s", ", ".join(created))
    return created


def ensure_partitions_ahead(*, now: datetime | None = None, ahead: int | None = None) -> list[str]:
    """The partitions of the current period and ``ahead`` more (default
    ``SIGNOFF_HISTORY_PARTITIONS_AHEAD``); returns the names created (none when all exist)."""
    now = now or timezone.now()
    unit = interval()
    ahead = settings.SIGNOFF_HISTORY_PARTITIONS_AHEAD if ahead is None else ahead
    last = period_start(now, unit)
    for _ in range(ahead):
        last = next_period(last, unit)
    return create_partitions(now, last, unit=unit)


def _blocking_instance(name: str, cutoffs: list[tuple[str, int, datetime]]) -> object | None:
    """One instance with an event in partition ``name`` that retention may not delete yet
    (not finished, or finished too recently, or its definition keeps history), or None."""
    q = connection.ops.quote_name
    finished = [str(s) for s in retention.FINISHED]
    if cutoffs:
        values = ", ".join(["(%s, %s, %s::timestamptz)"] * len(cutoffs))
        params: list[object] = [v for row in cutoffs for v in row]
        deletable = (
            f"i.state = ANY(%s) AND EXISTS (SELECT 1 FROM (VALUES {values}) r(w, v, cutoff) "
            "WHERE r.w = i.workflow AND r.v = i.version AND i.finished_at <= r.cutoff)"
        )
        params = [finished, *params]
    else:
        deletable, params = "FALSE", []
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT i.id FROM (SELECT DISTINCT instance_id FROM {q(name)}) e
            JOIN orchestration_workflowinstance i ON i.id = e.instance_id
            WHERE NOT ({deletable})
            LIMIT 1
            """,
            params,
        )
        row = cursor.fetchone()
    return row[0] if row else None


def drop_expired_partitions(*, now: datetime | None = None) -> dict[str, int]:
    """Drop each past partition (its range ended before ``now``) whose every instance retention
    may delete, then delete those instances (the retention path: delete hooks, then the rows;
    their few events in later partitions go with them). A partition with one instance that
    still needs its history is kept whole, and retention handles its rows one by one.

    Per partition: one transaction locks it (no event can be added to it), checks, and
    detaches and drops it; the instances are deleted after, in retention's batches. If that
    stops half-way the rest are still past their deletion time: the next retention sweep
    deletes them row by row."""
    if not is_partitioned():
        return {"dropped": 0, "deleted": 0}
    now = now or timezone.now()
    cutoffs = retention.deletion_cutoffs(now=now)
    dropped = deleted = 0
    if not cutoffs:  # no definition lets retention delete anything
        return {"dropped": dropped, "deleted": deleted}
    for part in partitions():
        if part.hi > now:
            break
        try:
            ids = _drop_if_allowed(part, cutoffs)
        except Exception:  # noqa: BLE001 - isolate a failing partition; retried next sweep
            log.exception("history partition %s could not be dropped", part.name)
            continue
        if ids is None:
            continue
        dropped += 1
        log.info("history partition %s dropped (%d instances)", part.name, len(ids))
        for start in range(0, len(ids), 500):
            deleted += retention.instances_delete(ids[start : start + 500])
    return {"dropped": dropped, "deleted": deleted}


def _drop_if_allowed(part: Partition, cutoffs: list[tuple[str, int, datetime]]) -> list | None:
    """In one transaction: lock the partition against new rows, re-check that retention may
    delete every instance in it, detach and drop it. Returns its instance ids, or None when it
    is kept. Detaching locks the whole event table for a moment: a ``lock_timeout`` keeps the
    engine's writers from queueing behind a long wait (the sweep then tries next time)."""
    q = connection.ops.quote_name
    with transaction.atomic():
        transaction_lock(LOCK_KEY)
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '5s'")
            cursor.execute(f"LOCK TABLE {q(part.name)} IN SHARE ROW EXCLUSIVE MODE")
        if _blocking_instance(part.name, cutoffs) is not None:
            return None
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT DISTINCT instance_id FROM {q(part.name)}")
            ids = [r[0] for r in cursor.fetchall()]
            # Deferred FK checks of rows written earlier in this transaction (only ever in
            # tests) would forbid the DROP: run them now.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"ALTER TABLE {q(TABLE)} DETACH PARTITION {q(part.name)}")
            cursor.execute(f"DROP TABLE {q(part.name)}")
    return ids


def sweep_history_partitions(*, now: datetime | None = None) -> dict[str, int]:
    """The beat sweeper: partitions ahead, then whole-partition retention."""
    if not is_partitioned():
        return {"created": 0, "dropped": 0, "deleted": 0}
    created = len(ensure_partitions_ahead(now=now))
    return {"created": created, **drop_expired_partitions(now=now)}
