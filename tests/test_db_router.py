"""The read-replica router against the real streaming replica (scripts/replica.sh, port 5433):
which reads go where, and read-your-writes by WAL position (README, "Read replica")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import connections, transaction

from config.db_router import ReplicaRouter
from orchestration import replica
from tests.conftest import wait_for

# xdist_group: see tests/approvals/test_read_replica.py (replay paused on the one replica).
pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.xdist_group("replica"),
]


def replay_position() -> int:
    return replica.lsn_value(replica.replayed_lsn())


def primary_position() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        return replica.lsn_value(cursor.fetchone()[0])


def caught_up() -> None:
    target = primary_position()
    wait_for(lambda: replay_position() >= target, timeout=30, message="replica to catch up")


@pytest.fixture
def replica_on(settings: Any) -> Iterator[None]:
    settings.SIGNOFF_REPLICA_READS = True
    cache.clear()
    caught_up()
    yield
    cache.clear()


@pytest.fixture
def paused(replica_on: None) -> Iterator[None]:
    """Replay stopped on the replica (always resumed: a paused replica lags forever)."""
    with connections["replica"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with connections["replica"].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")


def test_lsn_values_order_like_postgresql() -> None:
    assert replica.lsn_value("0/16B3748") < replica.lsn_value("1/0") < replica.lsn_value("1/A")
    assert replica.lsn_value("16/B374D848") == (0x16 << 32) + 0xB374D848


def test_the_replica_is_a_standby_streaming_from_the_primary(replica_on: None) -> None:
    with connections["replica"].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery(), current_setting('port')")
        assert cursor.fetchone() == (True, "5433")
    Group.objects.create(name="streamed")
    wait_for(
        lambda: Group.objects.using("replica").filter(name="streamed").exists(),
        message="the row on the replica",
    )


def test_reads_go_to_the_replica_only_on_chosen_paths(replica_on: None) -> None:
    router = ReplicaRouter()
    assert router.db_for_read(Group) == "default"
    with replica.use_replica(None) as alias:
        assert alias == "replica"
        assert router.db_for_read(Group) == "replica"
        assert router.db_for_write(Group) == "default"
        # A lock is a write for the router; so is every read inside a transaction.
        assert Group.objects.select_for_update().db == "default"
        with transaction.atomic():
            assert router.db_for_read(Group) == "default"
        with replica.use_primary():
            assert router.db_for_read(Group) == "default"
    assert router.db_for_read(Group) == "default"
    assert router.allow_migrate("replica", "orchestration") is False
    assert router.allow_migrate("default", "orchestration") is None


def test_reads_stay_on_the_primary_when_replica_reads_are_off(settings: Any) -> None:
    settings.SIGNOFF_REPLICA_READS = False
    with replica.use_replica(None) as alias:
        assert alias is None
        assert ReplicaRouter().db_for_read(Group) == "default"


def test_a_user_reads_the_replica_only_once_it_replayed_their_write(
    paused: None, django_user_model: Any
) -> None:
    maker = django_user_model.objects.create_user("maker")
    other = django_user_model.objects.create_user("other")
    Group.objects.create(name="written-while-paused")
    mark = replica.record_write(maker)
    assert mark is not None and replica.lsn_value(mark) > replay_position()
    assert replica.replica_for(maker) is None  # lagging behind their write: the primary
    assert replica.replica_for(other) == "replica"  # others may read the lagging replica
    assert not Group.objects.using("replica").filter(name="written-while-paused").exists()
    with connections["replica"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_resume()")
    wait_for(lambda: replica.replica_for(maker) == "replica", message="replay past the mark")
    assert Group.objects.using("replica").filter(name="written-while-paused").exists()


def test_an_unreachable_replica_means_the_primary(replica_on: None) -> None:
    conn = connections["replica"]
    port = conn.settings_dict["PORT"]
    conn.close()
    conn.settings_dict["PORT"] = 1  # nothing listens there
    try:
        assert replica.replica_for(None) is None
    finally:
        conn.close()
        conn.settings_dict["PORT"] = port
    assert replica.replica_for(None) == "replica"


def test_the_middleware_marks_writes_not_reads(replica_on: None, client: Any, user: Any) -> None:
    client.force_login(user)
    client.get("/inbox/")
    assert cache.get(f"signoff:replica:lsn:{user.pk}") is None
    client.post("/inbox/bulk/", {})
    mark = cache.get(f"signoff:replica:lsn:{user.pk}")
    assert mark is not None and replica.lsn_value(mark) <= primary_position()
