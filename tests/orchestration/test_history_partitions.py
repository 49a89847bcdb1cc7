"""History that scales: the partitioned event table (migration 0020), the partition sweeper
and whole-partition retention (orchestration.history_partitions)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from orchestration import engine, history_partitions
from orchestration.definitions import Workflow, registry
from orchestration.models import Event, WorkflowInstance
from tests.orchestration.test_engine import run_ready

pytestmark = pytest.mark.django_db

# A month long past: its partition is made by the tests (rows first land in the default one).
# The migration test (transactional: its partitions stay) uses a later one.
OLD = datetime(2023, 1, 10, 12, 0, tzinfo=UTC)
MIGRATED = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


def _tables() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'orchestration_event'::regclass"
        )
        return {r[0] for r in cursor.fetchall()}


def _partition_of(event: Event) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM orchestration_event WHERE id = %s", [event.pk]
        )
        return cursor.fetchone()[0]


@pytest.fixture
def flows():
    kept = Workflow("t_hist_kept")  # no retention: history kept for good
    kept.task(_noop, name="one")
    retained = Workflow(
        "t_hist_retained", retention=timedelta(days=30), delete_after=timedelta(days=30)
    )
    retained.task(_noop, name="one")
    retained.task(_noop, name="two", after=["one"])
    for wf in (kept, retained):
        registry.register(wf)
    yield retained, kept
    for wf in (kept, retained):
        registry.unregister(wf.name, wf.version)


def _finished(workflow: str, at: datetime) -> WorkflowInstance:
    with time_machine.travel(at, tick=False):
        instance, _ = engine.instance_start(workflow=workflow)
        run_ready(instance)
    instance.refresh_from_db()
    assert instance.state == "succeeded"
    return instance


def test_the_event_table_is_partitioned_with_a_composite_key() -> None:
    assert history_partitions.is_partitioned()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'orchestration_event'::regclass AND contype IN ('p', 'u') "
            "ORDER BY contype"
        )
        assert [r[0] for r in cursor.fetchall()] == [
            "PRIMARY KEY (id, at)",
            "UNIQUE (instance_id, seq, at)",
        ]
        # Nothing references the event table by foreign key (a partitioned PK is (id, at)).
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE confrelid = 'orchestration_event'::regclass"
        )
        assert cursor.fetchone()[0] == 0
    assert "orchestration_event_default" in _tables()
    now = history_partitions.period_start(datetime.now(UTC), "month")
    assert history_partitions.partition_name(now) in _tables()


def test_the_partition_sweeper_creates_partitions_ahead_and_is_idempotent(settings) -> None:
    far = datetime(2031, 3, 15, tzinfo=UTC)
    first = history_partitions.sweep_history_partitions(now=far)
    assert first["created"] == 1 + settings.SIGNOFF_HISTORY_PARTITIONS_AHEAD
    assert {"orchestration_event_p20310301", "orchestration_event_p20310601"} <= _tables()
    again = history_partitions.sweep_history_partitions(now=far)
    assert again == {"created": 0, "dropped": 0, "deleted": 0}
    # Weekly from now on: only the gaps after the monthly partitions are filled.
    settings.SIGNOFF_HISTORY_PARTITION_INTERVAL = "week"
    created = history_partitions.ensure_partitions_ahead(now=far, ahead=16)
    parts = history_partitions.partitions()
    assert created and all(p.lo >= datetime(2031, 7, 1, tzinfo=UTC) for p in parts[-len(created) :])
    for a, b in zip(parts, parts[1:], strict=False):
        assert a.hi <= b.lo  # never overlapping


def test_a_new_partition_takes_its_rows_from_the_default_partition(flows) -> None:
    retained, _ = flows
    instance = _finished(retained.name, OLD)
    events = list(Event.objects.filter(instance=instance).order_by("seq"))
    assert {_partition_of(e) for e in events} == {"orchestration_event_default"}
    assert history_partitions.create_partitions(OLD, OLD) == ["orchestration_event_p20230101"]
    assert history_partitions.create_partitions(OLD, OLD) == []
    assert {_partition_of(e) for e in events} == {"orchestration_event_p20230101"}
    assert list(Event.objects.filter(instance=instance).order_by("seq")) == events


def test_a_partition_is_dropped_only_when_every_instance_in_it_may_be_deleted(flows) -> None:
    retained, kept = flows
    done = _finished(retained.name, OLD)
    with time_machine.travel(OLD, tick=False):
        waiting, _ = engine.instance_start(workflow=retained.name)  # never runs: not finished
    february = OLD + timedelta(days=31)
    keeps_history = _finished(kept.name, february)
    also_done = _finished(retained.name, february)
    history_partitions.create_partitions(OLD, february)
    later = OLD + timedelta(days=400)

    # January holds an unfinished instance; February one whose workflow keeps its history.
    assert history_partitions.drop_expired_partitions(now=later) == {"dropped": 0, "deleted": 0}
    assert {"orchestration_event_p20230101", "orchestration_event_p20230201"} <= _tables()
    assert Event.objects.filter(instance=done).count() > 0

    with time_machine.travel(OLD + timedelta(days=1), tick=False):
        engine.instance_cancel(instance_id=waiting.pk, actor="user:ops", reason="done with it")
    # Finished, but not yet past retention + delete_after (60 days) at this "now".
    assert history_partitions.drop_expired_partitions(now=OLD + timedelta(days=40)) == {
        "dropped": 0,
        "deleted": 0,
    }
    assert history_partitions.drop_expired_partitions(now=later) == {"dropped": 1, "deleted": 2}
    assert "orchestration_event_p20230101" not in _tables()
    assert "orchestration_event_p20230201" in _tables()
    assert not WorkflowInstance.objects.filter(pk__in=[done.pk, waiting.pk]).exists()
    assert not Event.objects.filter(instance_id__in=[done.pk, waiting.pk]).exists()
    # February's instances and their history are untouched.
    assert Event.objects.filter(instance=keeps_history).count() > 0
    assert Event.objects.filter(instance=also_done).count() > 0
    assert history_partitions.drop_expired_partitions(now=later) == {"dropped": 0, "deleted": 0}


def api_history_seqs(staff: Any, instance: WorkflowInstance) -> list[int]:
    """The seqs of ``GET /api/v1/instances/{id}/history/`` as a superuser reads them."""
    client = APIClient()
    staff.is_superuser = True
    staff.save()
    client.force_authenticate(staff)
    body = client.get(f"/api/v1/instances/{instance.pk}/history/").json()
    return [i["seq"] for i in (body["results"] if isinstance(body, dict) else body)]


def test_history_reads_span_partitions_in_order_through_an_index_per_partition(
    flows, staff
) -> None:
    retained, _ = flows
    with time_machine.travel(OLD, tick=False):
        instance, _ = engine.instance_start(workflow=retained.name)
    with time_machine.travel(OLD + timedelta(days=40), tick=False):
        run_ready(instance, limit=1)  # step one only
    with time_machine.travel(OLD + timedelta(days=80), tick=False):
        run_ready(instance)
    history_partitions.create_partitions(OLD, OLD + timedelta(days=80))
    seqs = list(Event.objects.filter(instance=instance).values_list("seq", flat=True))
    partitions = {_partition_of(e) for e in Event.objects.filter(instance=instance)}
    assert len(partitions) >= 2

    assert api_history_seqs(staff, instance) == sorted(seqs) == list(range(1, len(seqs) + 1))

    # The tables here are tiny, so PostgreSQL would rather read them whole: with sequential
    # scans priced out, every partition must still have an index path (bench/history.py shows
    # the plan PostgreSQL picks on its own over 50,000,000 rows).
    sql, params = Event.objects.filter(instance=instance).order_by("seq").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(r[0] for r in cursor.fetchall())
    assert "Seq Scan" not in plan
    scans = [line for line in plan.splitlines() if " Scan " in line or "Scan using" in line]
    assert scans and all("Index Scan" in s or "Index Only Scan" in s for s in scans)
    assert len(scans) == len(_tables())  # one per partition (no bound on at to prune by)


def test_a_history_read_skips_the_partitions_before_its_instance(flows, staff) -> None:
    # selectors.events_of bounds the read below by the instance's creation (less a day of
    # clock margin): the months before it are pruned from the plan, and nothing is lost.
    from orchestration import selectors

    retained, _ = flows
    history_partitions.create_partitions(OLD, OLD + timedelta(days=80))
    later = OLD + timedelta(days=40)
    with time_machine.travel(later, tick=False):
        instance, _ = engine.instance_start(workflow=retained.name)
    with time_machine.travel(later + timedelta(days=30), tick=False):
        run_ready(instance)
    everything = list(Event.objects.filter(instance=instance).order_by("seq"))
    assert {_partition_of(e) for e in everything} >= {"orchestration_event_p20230201"}
    read = list(selectors.instance_history(instance=instance))
    assert [e.pk for e in read] == [e.pk for e in everything]

    sql, params = selectors.instance_history(instance=instance).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(r[0] for r in cursor.fetchall())
    scanned = {t for t in _tables() if t in plan}
    assert "orchestration_event_p20230101" not in scanned  # the month before: pruned
    assert "orchestration_event_p20230201" in scanned
    assert len(scanned) < len(_tables())

    assert api_history_seqs(staff, instance) == [e.seq for e in everything]


@pytest.mark.django_db(transaction=True)
def test_migration_0020_converts_a_table_with_rows_and_ids_continue() -> None:
    executor = MigrationExecutor(connection)
    before = executor.loader.get_migration("orchestration", "0020_event_partitioned")
    target = [d for d in before.dependencies if d[0] == "orchestration"]
    leaf = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "orchestration"]
    executor.migrate(target)
    try:
        assert not history_partitions.is_partitioned()
        rows = []
        with connection.cursor() as cursor:
            for n, at in enumerate(
                [
                    MIGRATED,
                    MIGRATED + timedelta(days=45),
                    datetime.now(UTC),
                    datetime(2099, 1, 1, tzinfo=UTC),
                ]
            ):
                pk = uuid.uuid4()
                cursor.execute(
                    "INSERT INTO orchestration_workflowinstance (id, workflow, version, state, "
                    "input, business_key, request_hash, created_at, updated_at, last_seq, "
                    "trace_context) VALUES (%s, 'w', 1, 'succeeded', '{}', '', '', %s, %s, 2, '')",
                    [pk, at, at],
                )
                for seq in (1, 2):
                    cursor.execute(
                        "INSERT INTO orchestration_event (seq, type, actor, data, at, "
                        "instance_id) VALUES (%s, 'x', 'system', %s, %s, %s) RETURNING id",
                        [seq, f'{{"n": {n}}}', at + timedelta(seconds=seq), pk],
                    )
                    rows.append((cursor.fetchone()[0], seq, pk))
            # The last ids were used and removed: the new table must not hand them out again.
            cursor.execute("SELECT max(id) FROM orchestration_event")
            top = cursor.fetchone()[0]
            cursor.execute("DELETE FROM orchestration_event WHERE id = %s", [top])
            rows.pop()
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaf)
    assert history_partitions.is_partitioned()
    assert sorted(Event.objects.values_list("id", "seq", "instance_id")) == sorted(rows)
    parts = {_partition_of(e) for e in Event.objects.all()}
    assert "orchestration_event_p20240101" in parts and "orchestration_event_p20240201" in parts
    assert "orchestration_event_default" in parts  # 2099: beyond the partitions ahead
    new = Event.objects.create(
        instance_id=rows[0][2], seq=3, type="y", data={}, at=datetime.now(UTC)
    )
    assert new.pk == top + 1
