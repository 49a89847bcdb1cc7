"""Schedules: fire times (cron in a time zone across DST, intervals, jitter), catch-up after
downtime, the overlap policies, pause and resume, idempotency of each fire, and the service's
refusals of bad input (nothing written)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone

from orchestration import engine, schedule_firing, schedules, sealing, sweepers
from orchestration.errors import Conflict, InvalidInput, NotAllowed, NotFound
from orchestration.models import Schedule, ScheduleFire, StepRun, WorkflowInstance
from orchestration.schedule_timing import (
    Timing,
    describe,
    due_at,
    fire_at_or_before,
    jitter_of,
    next_fire_after,
    next_fire_times,
)
from orchestration.signals import schedule_missed

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def make(**values: Any) -> Schedule:
    base = {"name": "nightly", "workflow": "t_scheduled", "input": {"report": "sales"}}
    if "cron" not in values and "interval_seconds" not in values:
        values["interval_seconds"] = 3600
    return schedules.schedule_create(values={**base, **values})


def state() -> tuple:
    """Everything a schedule service could write."""
    return (
        sorted(Schedule.objects.values_list("name", "cron", "interval_seconds", "paused")),
        ScheduleFire.objects.count(),
        WorkflowInstance.objects.count(),
    )


def sweep(at: datetime) -> int:
    with time_machine.travel(at, tick=False):
        return sweepers.sweep_schedules()


def fires(schedule: Schedule) -> list[tuple[datetime, str]]:
    return list(
        ScheduleFire.objects.filter(schedule=schedule)
        .order_by("fire_time")
        .values_list("fire_time", "outcome")
    )


def finish(instance_id: Any) -> None:
    """Play the worker in-process: run the instance's steps to the end."""
    for step in StepRun.objects.filter(instance_id=instance_id, state="scheduled"):
        engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


@pytest.fixture
def missed() -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    def listen(sender: Any, **kwargs: Any) -> None:
        got.append(kwargs)

    schedule_missed.connect(listen)
    yield got
    schedule_missed.disconnect(listen)


# -- timing -----------------------------------------------------------------------------------


def test_cron_fires_in_its_time_zone_summer_and_winter() -> None:
    timing = Timing(name="x", cron="0 2 * * *", time_zone="Europe/Berlin")
    summer = next_fire_after(timing, datetime(2026, 6, 30, 12, tzinfo=UTC))
    winter = next_fire_after(timing, datetime(2026, 11, 30, 12, tzinfo=UTC))
    assert summer == datetime(2026, 7, 1, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert winter == datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 02:00 CET
    assert summer.astimezone(BERLIN).hour == winter.astimezone(BERLIN).hour == 2


def test_a_time_skipped_by_spring_forward_fires_right_after_the_gap() -> None:
    timing = Timing(name="x", cron="30 2 * * *", time_zone="Europe/Berlin")
    times = next_fire_times(timing, datetime(2026, 3, 28, 12, tzinfo=UTC), 3)
    local = [t.astimezone(BERLIN) for t in times]
    # 2026-03-29 02:30 does not exist in Berlin: it fires at 03:00, once.
    assert [(t.day, t.hour, t.minute) for t in local] == [(29, 3, 0), (30, 2, 30), (31, 2, 30)]


def test_a_daily_time_repeated_by_fall_back_fires_once() -> None:
    timing = Timing(name="x", cron="30 2 * * *", time_zone="Europe/Berlin")
    times = next_fire_times(timing, datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    local = [t.astimezone(BERLIN) for t in times]
    assert [(t.day, t.hour, t.minute) for t in local] == [(25, 2, 30), (26, 2, 30), (27, 2, 30)]
    assert times[0] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first (CEST) 02:30


def test_an_hourly_cron_fires_in_each_real_hour_across_fall_back() -> None:
    timing = Timing(name="x", cron="0 * * * *", time_zone="Europe/Berlin")
    times = next_fire_times(timing, datetime(2026, 10, 24, 22, 30, tzinfo=UTC), 4)
    gaps = {b - a for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {timedelta(hours=1)}  # 01:00, 02:00 CEST, 02:00 CET, 03:00


def test_interval_fire_times_are_anchored_at_the_epoch() -> None:
    timing = Timing(name="x", interval_seconds=900)
    assert next_fire_after(timing, datetime(2026, 6, 1, 8, 7, tzinfo=UTC)) == datetime(
        2026, 6, 1, 8, 15, tzinfo=UTC
    )
    # strictly after: a fire time itself is not its own next
    assert next_fire_after(timing, datetime(2026, 6, 1, 8, 15, tzinfo=UTC)) == datetime(
        2026, 6, 1, 8, 30, tzinfo=UTC
    )


def test_the_fire_time_at_or_before_a_moment() -> None:
    cron = Timing(name="x", cron="30 2 * * *", time_zone="Europe/Berlin")
    last = datetime(2026, 6, 1, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert fire_at_or_before(cron, last) == last
    assert fire_at_or_before(cron, last + timedelta(hours=20)) == last
    assert fire_at_or_before(cron, last - timedelta(seconds=1)) == last - timedelta(days=1)
    # across fall back: the repeated 02:30 counts once (its first occurrence)
    assert fire_at_or_before(cron, datetime(2026, 10, 25, 3, tzinfo=UTC)) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )
    interval = Timing(name="x", interval_seconds=900)
    assert fire_at_or_before(interval, T0 + timedelta(minutes=14)) == T0
    assert fire_at_or_before(interval, T0) == T0


def test_jitter_stays_within_its_bounds_and_is_the_same_for_every_sweeper() -> None:
    timing = Timing(name="x", interval_seconds=60, jitter_seconds=20)
    delays = [jitter_of(timing, T0 + timedelta(minutes=n)) for n in range(300)]
    assert all(timedelta(0) <= d <= timedelta(seconds=20) for d in delays)
    assert len(set(delays)) > 10  # spread, not one constant
    assert delays == [jitter_of(timing, T0 + timedelta(minutes=n)) for n in range(300)]
    assert jitter_of(Timing(name="x", interval_seconds=60), T0) == timedelta(0)


def test_descriptions_read_as_words() -> None:
    assert describe(Timing(name="x", interval_seconds=300)) == "every 5 minutes"
    assert describe(Timing(name="x", interval_seconds=3600)) == "every hour"
    assert describe(Timing(name="x", interval_seconds=45)) == "every 45 seconds"
    words = describe(Timing(name="x", cron="0 2 * * 1-5", time_zone="Europe/Berlin"))
    assert words == "At 02:00, Monday through Friday (Europe/Berlin)"


# -- the service: create and its refusals ------------------------------------------------------


def test_create_seals_the_sensitive_input_and_plans_the_first_fire() -> None:
    with time_machine.travel(T0 + timedelta(minutes=7), tick=False):
        schedule = make(input={"report": "sales", "token": "s3cret"}, interval_seconds=900)
    assert "s3cret" not in str(schedule.input)
    assert sealing.open_fields(schedule.input, where="input")["token"] == "s3cret"
    assert schedule.next_fire_at == T0 + timedelta(minutes=15)
    assert schedule.fire_due_at == schedule.next_fire_at


BAD_VALUES = {
    "invalid cron": ({"cron": "61 * * * *"}, "invalid_cron"),
    "cron with 6 fields": ({"cron": "0 0 2 * * *"}, "invalid_cron"),
    "cron text": ({"cron": "every day"}, "invalid_cron"),
    "unknown workflow": ({"workflow": "no_such_flow"}, "unknown_workflow"),
    "unknown version": ({"version": 99}, "unknown_workflow"),
    "bad time zone": ({"time_zone": "Mars/Olympus"}, "invalid_time_zone"),
    "neither cron nor interval": ({"interval_seconds": None}, "invalid_timing"),
    "both cron and interval": ({"cron": "0 * * * *", "interval_seconds": 60}, "invalid_timing"),
    "interval under a second": ({"interval_seconds": 0}, "invalid_interval_seconds"),
    "interval not an integer": ({"interval_seconds": "60"}, "invalid_interval_seconds"),
    "negative jitter": ({"jitter_seconds": -1}, "invalid_jitter_seconds"),
    "jitter over the interval": ({"jitter_seconds": 3600}, "invalid_jitter_seconds"),
    "input against the schema": ({"input": {"report": 7}}, "invalid_input"),
    "input missing a field": ({"input": {}}, "invalid_input"),
    "input not an object": ({"input": ["x"]}, "invalid_input"),
    "oversized input": ({"input": {"report": "x", "pad": "y" * 70_000}}, "input_too_large"),
    "unknown placeholder": ({"business_key_template": "{fire_time.__class__}"}, None),
    "bad overlap": ({"overlap": "sometimes"}, "invalid_overlap"),
    "bad name": ({"name": "../etc"}, "invalid_name"),
    "negative catch-up": ({"catchup_window_seconds": -5}, "invalid_catchup_window_seconds"),
}


@pytest.mark.parametrize("case", BAD_VALUES.keys())
def test_create_refuses_bad_input_and_writes_nothing(case: str) -> None:
    values, code = BAD_VALUES[case]
    before = state()
    with pytest.raises(InvalidInput) as caught:
        make(**values)
    if code:
        assert caught.value.code == code, caught.value.message
    assert caught.value.message
    assert state() == before


def test_a_taken_name_is_a_conflict() -> None:
    make()
    before = state()
    with pytest.raises(Conflict):
        make()
    assert state() == before


def test_a_schedule_naming_another_requester_needs_start_on_behalf(django_user_model) -> None:
    alice = django_user_model.objects.create_user("alice")
    before = state()
    with pytest.raises(NotAllowed):
        schedules.schedule_create(
            values={
                "name": "expenses",
                "workflow": "expense_approval",
                "input": {"amount": 5, "currency": "EUR", "description": "x", "requester": "bob"},
                "interval_seconds": 3600,
            },
            created_by=alice,
        )
    assert state() == before
    own = schedules.schedule_create(
        values={
            "name": "expenses",
            "workflow": "expense_approval",
            "input": {"amount": 5, "currency": "EUR", "description": "x"},
            "interval_seconds": 3600,
        },
        created_by=alice,
    )
    assert sealing.open_fields(own.input, where="input")["requester"] == "alice"


def test_update_checks_again_and_retimes_only_on_a_timing_change() -> None:
    with time_machine.travel(T0 + timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=900)
    first = schedule.next_fire_at
    with time_machine.travel(T0 + timedelta(minutes=2), tick=False):
        schedule = schedules.schedule_update(
            schedule_id=schedule.pk, values={"overlap": "allow_all"}
        )
        assert schedule.next_fire_at == first
        before = state()
        with pytest.raises(InvalidInput):
            schedules.schedule_update(schedule_id=schedule.pk, values={"cron": "nope"})
        assert state() == before
        schedule = schedules.schedule_update(
            schedule_id=schedule.pk, values={"cron": "0 12 * * *", "time_zone": "Europe/Berlin"}
        )
    assert schedule.interval_seconds is None
    assert schedule.next_fire_at == datetime(2026, 6, 1, 10, 0, tzinfo=UTC)  # 12:00 CEST
    # the stored (sealed) input is kept when the update does not give one
    assert sealing.open_fields(schedule.input, where="input") == {"report": "sales"}
    with pytest.raises(NotFound):
        schedules.schedule_update(schedule_id=999_999, values={"overlap": "skip"})


# -- firing: the sweeper -----------------------------------------------------------------------


def test_a_due_fire_starts_one_instance_with_its_fire_time() -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(business_key_template="{schedule}-{date}-{time}")
    assert sweep(T0 - timedelta(seconds=1)) == 0
    assert sweep(T0 + timedelta(seconds=5)) == 1
    instance = WorkflowInstance.objects.get(schedule=schedule)
    assert instance.scheduled_for == T0
    assert instance.business_key == "nightly-2026-06-01-08:00"
    assert instance.input == {"report": "sales"}
    assert fires(schedule) == [(T0, "started")]
    schedule.refresh_from_db()
    assert schedule.next_fire_at == T0 + timedelta(hours=1)
    assert schedule.last_fire_at == T0
    # the step sees the fire time
    finish(instance.pk)
    step = StepRun.objects.get(instance=instance, name="report")
    assert step.output["scheduled_for"] == T0.isoformat()
    # the same sweep again starts nothing
    assert sweep(T0 + timedelta(seconds=6)) == 0
    assert WorkflowInstance.objects.filter(schedule=schedule).count() == 1


def test_jitter_delays_the_start_but_not_the_fire_time() -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=3600, jitter_seconds=600)
    delay = jitter_of(Timing.of(schedule), T0)
    assert timedelta(0) < delay <= timedelta(seconds=600)  # this name and fire time: > 0
    assert schedule.fire_due_at == T0 + delay
    assert sweep(T0 + delay - timedelta(seconds=1)) == 0
    assert sweep(T0 + delay) == 1
    assert WorkflowInstance.objects.get(schedule=schedule).scheduled_for == T0


def test_after_downtime_fires_in_the_window_run_and_older_ones_are_missed(settings) -> None:
    settings.SIGNOFF_SCHEDULE_GRACE_SECONDS = 0
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600, overlap="allow_all", catchup_window_seconds=1800)
    # down from T0 until T0+2h: fires at T0 .. T0+1h20 are older than the window
    handled = sweep(T0 + timedelta(hours=2))
    assert handled == 13
    rows = fires(schedule)
    assert rows[0] == (T0 + timedelta(minutes=80), "missed")
    assert ScheduleFire.objects.get(outcome="missed").count == 9
    assert [o for _, o in rows[1:]] == ["started"] * 4  # 1:30, 1:40, 1:50, 2:00
    assert WorkflowInstance.objects.filter(schedule=schedule).count() == 4


def test_missed_and_skipped_fires_are_announced_after_commit(
    missed, django_capture_on_commit_callbacks, rung
) -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600, catchup_window_seconds=0)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        sweep(T0 + timedelta(hours=1))  # 1 h late: T0 .. T0+50 missed, T0+1h starts
    assert missed == []  # nothing before commit
    for callback in callbacks:
        callback()
    assert missed == [
        {
            "signal": schedule_missed,
            "schedule_id": schedule.pk,
            "schedule_name": "nightly",
            "fire_time": T0 + timedelta(minutes=50),
            "reason": "missed",
        }
    ]


def test_skip_policy_skips_while_an_instance_runs(
    missed, django_capture_on_commit_callbacks, rung
) -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600)
    sweep(T0)
    with django_capture_on_commit_callbacks(execute=True):
        sweep(T0 + timedelta(minutes=10))
    assert fires(schedule) == [(T0, "started"), (T0 + timedelta(minutes=10), "skipped_overlap")]
    assert [m["reason"] for m in missed] == ["skipped_overlap"]
    finish(WorkflowInstance.objects.get(schedule=schedule).pk)
    sweep(T0 + timedelta(minutes=20))
    assert fires(schedule)[-1] == (T0 + timedelta(minutes=20), "started")


def test_buffer_one_keeps_one_fire_and_starts_it_when_the_running_one_ends() -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600, overlap="buffer_one")
    sweep(T0)
    sweep(T0 + timedelta(minutes=10))
    sweep(T0 + timedelta(minutes=20))
    assert [o for _, o in fires(schedule)] == ["started", "buffered", "skipped_overlap"]
    first = WorkflowInstance.objects.get(schedule=schedule)
    assert sweep(T0 + timedelta(minutes=21)) == 0  # still running: the buffer waits
    finish(first.pk)
    assert WorkflowInstance.objects.get(pk=first.pk).state == "succeeded"
    assert sweep(T0 + timedelta(minutes=22)) == 1
    buffered = ScheduleFire.objects.get(schedule=schedule, fire_time=T0 + timedelta(minutes=10))
    assert buffered.outcome == "started"
    assert buffered.instance.scheduled_for == T0 + timedelta(minutes=10)
    schedule.refresh_from_db()
    assert schedule.buffered_fire_at is None


def test_allow_all_starts_every_fire() -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600, overlap="allow_all")
    for minutes in (0, 10, 20):
        sweep(T0 + timedelta(minutes=minutes))
    assert [o for _, o in fires(schedule)] == ["started"] * 3
    assert WorkflowInstance.objects.filter(schedule=schedule, state="running").count() == 3


def test_pause_stops_fires_and_resume_does_not_catch_up() -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600)
        schedules.schedule_pause(schedule_id=schedule.pk, note="maintenance")
    assert sweep(T0 + timedelta(minutes=5)) == 0
    schedule.refresh_from_db()
    assert schedule.paused and schedule.paused_note == "maintenance"
    assert schedule.next_fire_at is None
    with time_machine.travel(T0 + timedelta(minutes=45), tick=False):
        schedules.schedule_resume(schedule_id=schedule.pk)
    schedule.refresh_from_db()
    assert schedule.next_fire_at == T0 + timedelta(minutes=50)
    assert sweep(T0 + timedelta(minutes=50)) == 1
    assert fires(schedule) == [(T0 + timedelta(minutes=50), "started")]


def test_trigger_now_fires_once_per_fire_time() -> None:
    with time_machine.travel(T0, tick=False):
        schedule = make(overlap="allow_all")
        fired = schedules.schedule_trigger(schedule_id=schedule.pk)
        assert fired.outcome == "started" and fired.fire_time == T0
        before = state()
        with pytest.raises(Conflict):
            schedules.schedule_trigger(schedule_id=schedule.pk)  # same second: the same run
        assert state() == before
        with pytest.raises(InvalidInput):
            schedules.schedule_trigger(schedule_id=schedule.pk, fire_time=T0 + timedelta(days=9))
    assert state() == before


def test_a_refused_start_is_recorded_failed_and_the_schedule_moves_on(missed) -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600)
    # the workflow's input schema changed under the stored input
    Schedule.objects.filter(pk=schedule.pk).update(input={"report": 12})
    sweep(T0)
    row = ScheduleFire.objects.get(schedule=schedule)
    assert row.outcome == "failed" and "invalid input" in row.note
    assert not WorkflowInstance.objects.filter(schedule=schedule).exists()
    schedule.refresh_from_db()
    assert schedule.next_fire_at == T0 + timedelta(minutes=10)


def test_a_fire_row_is_unique_per_schedule_and_fire_time() -> None:
    schedule = make()
    ScheduleFire.objects.create(schedule=schedule, fire_time=T0, outcome="started", at=T0)
    with pytest.raises(IntegrityError), transaction.atomic():
        ScheduleFire.objects.create(schedule=schedule, fire_time=T0, outcome="started", at=T0)


def test_a_fire_already_recorded_is_not_started_again() -> None:
    """A sweeper whose schedule row still says T0 (an older copy, a restart between the fire and
    the update of next_fire_at in another process) finds T0's row and starts nothing."""
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600)
    sweep(T0)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=T0, fire_due_at=T0)
    sweep(T0 + timedelta(seconds=30))
    assert WorkflowInstance.objects.filter(schedule=schedule).count() == 1
    with pytest.raises(Conflict), transaction.atomic():
        schedule_firing.fire(Schedule.objects.select_for_update().get(pk=schedule.pk), T0, now=T0)


@pytest.mark.django_db(transaction=True)
def test_two_sweepers_at_once_start_each_fire_once(rung: list) -> None:
    # rung: these starts commit; a worker left running by an earlier end-to-end test must not
    # run their steps while the test's teardown flushes the tables.
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(interval_seconds=600, overlap="allow_all")
    barrier = threading.Barrier(4)
    counts: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            counts.append(sweepers.sweep_schedules(now=T0 + timedelta(minutes=25)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(counts) == 3  # T0, T0+10, T0+20: once each, whoever got the lock
    assert [o for _, o in fires(schedule)] == ["started"] * 3
    assert WorkflowInstance.objects.filter(schedule=schedule).count() == 3


def test_delete_keeps_the_instances() -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make()
    sweep(T0)
    schedules.schedule_delete(schedule_id=schedule.pk)
    instance = WorkflowInstance.objects.get()
    assert instance.schedule_id is None and instance.scheduled_for == T0
    assert not ScheduleFire.objects.exists()


def test_now_is_the_one_clock() -> None:
    # the services read timezone.now: time-machine moves them
    with time_machine.travel(datetime(2030, 1, 1, tzinfo=UTC), tick=False):
        schedule = make(interval_seconds=60)
        assert schedule.created_at == timezone.now()
    assert schedule.next_fire_at == datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    assert due_at(Timing.of(schedule), schedule.next_fire_at) == schedule.fire_due_at


def test_key_rotation_reencrypts_the_stored_input(settings, rung: list) -> None:
    from cryptography.fernet import Fernet

    from orchestration.retention import rotate_keys

    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SIGNOFF_ENCRYPTION_KEYS = first
    sealing._keys_from.cache_clear()
    try:
        with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
            schedule = make(input={"report": "r", "token": "t0ken"})
        settings.SIGNOFF_ENCRYPTION_KEYS = f"{second},{first}"
        sealing._keys_from.cache_clear()
        assert rotate_keys() >= 1
        settings.SIGNOFF_ENCRYPTION_KEYS = second  # the old key is gone
        sealing._keys_from.cache_clear()
        sweep(T0)
        assert ScheduleFire.objects.get(schedule=schedule).outcome == "started"
        instance = WorkflowInstance.objects.get(schedule=schedule)
        assert sealing.open_fields(instance.input, where="input")["token"] == "t0ken"
    finally:
        sealing._keys_from.cache_clear()


def test_a_long_downtime_is_one_missed_row_and_the_sweep_stays_bounded(settings) -> None:
    settings.SIGNOFF_SCHEDULE_GRACE_SECONDS = 5
    with time_machine.travel(T0 - timedelta(days=1, seconds=1), tick=False):
        schedule = make(interval_seconds=1, catchup_window_seconds=0)
    sweep(T0)  # a day of fire times, one a second: 86,400
    rows = fires(schedule)
    missed_row = ScheduleFire.objects.get(schedule=schedule, outcome="missed")
    assert missed_row.count == schedule_firing.MAX_COUNTED_MISSES
    assert missed_row.note.startswith("at least 10000 fire time(s)")
    assert missed_row.fire_time == T0 - timedelta(seconds=6)  # the newest one too late
    # the last 5 s plus now: one started, the rest skipped (it is still running)
    assert [o for _, o in rows[1:]] == ["started"] + ["skipped_overlap"] * 5
    schedule.refresh_from_db()
    assert schedule.next_fire_at == T0 + timedelta(seconds=1)


def test_a_refusal_quoting_a_sealed_value_is_stored_masked(rung: list) -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make(input={"report": "r", "token": "SEKRIT-TOKEN-123"})
    # the schema changes under the stored input: the token must now be a number
    from tests.workflows import scheduled

    original = scheduled.input_schema
    scheduled.input_schema = {
        **original,
        "properties": {**original["properties"], "token": {"type": "integer"}},
    }
    try:
        sweep(T0)
    finally:
        scheduled.input_schema = original
    row = ScheduleFire.objects.get(schedule=schedule)
    assert row.outcome == "failed" and "is not of type 'integer'" in row.note
    assert "SEKRIT" not in row.note


def test_old_fire_records_are_pruned_but_never_within_two_days(settings, rung: list) -> None:
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        schedule = make()
    sweep(T0)
    settings.SIGNOFF_SCHEDULE_FIRE_RETENTION_DAYS = 0  # taken as 2
    sweep(T0 + timedelta(days=1, minutes=30))  # fires, and keeps the first record
    assert ScheduleFire.objects.filter(fire_time=T0).exists()
    settings.SIGNOFF_SCHEDULE_FIRE_RETENTION_DAYS = 3
    schedules.schedule_pause(schedule_id=schedule.pk)
    sweep(T0 + timedelta(days=3, seconds=1))
    assert not ScheduleFire.objects.filter(fire_time=T0).exists()
    # the records of a day later stay: the fires missed meanwhile, and one skipped
    assert [o for _, o in fires(schedule)] == ["missed", "skipped_overlap"]


def test_schedule_metrics(client, rung: list) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with time_machine.travel(T0 - timedelta(minutes=1), tick=False):
        make(interval_seconds=600)
        make(name="off", interval_seconds=600)
        schedules.schedule_pause(schedule_id=Schedule.objects.get(name="off").pk)
    sweep(T0)
    sweep(T0 + timedelta(minutes=10))  # skipped: the first still runs

    def samples() -> dict[tuple[str, tuple], float]:
        text = client.get("/metrics").content.decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    with time_machine.travel(T0 + timedelta(minutes=25), tick=False):
        got = samples()
    assert got[("signoff_schedules", (("state", "active"),))] == 1
    assert got[("signoff_schedules", (("state", "paused"),))] == 1
    assert got[("signoff_schedule_overdue_seconds", ())] == 300  # due at T0+20, unswept
    assert got[("signoff_schedule_fires_last_day", (("outcome", "started"),))] == 1
    assert got[("signoff_schedule_fires_last_day", (("outcome", "skipped_overlap"),))] == 1
    assert got[("signoff_schedule_fires_last_day", (("outcome", "missed"),))] == 0


def test_a_start_up_check_warns_of_schedules_of_unregistered_workflows() -> None:
    from orchestration.checks import check_schedules_startable

    make()
    assert check_schedules_startable(databases=["default"]) == []
    Schedule.objects.filter(name="nightly").update(workflow="gone_away")
    warnings = check_schedules_startable(databases=["default"])
    assert [w.id for w in warnings] == ["signoff.W001"]
    assert "'nightly' starts workflow gone_away" in warnings[0].msg
    Schedule.objects.filter(name="nightly").update(paused=True)
    assert check_schedules_startable(databases=["default"]) == []
