"""Schedules end to end: a real Celery worker on Redis and PostgreSQL runs what the schedules
start, and the sweeper runs in separate processes that are "restarted" in between.

- Under time-machine: a schedule fires at its fire time, the instance runs to success in the
  worker with the fire time in its context, and the sweeper run again from fresh processes
  (a restarted beat), and in this process after closing its connections, starts nothing more.
- In real time with real beat processes: two beats at once, one of them killed and started
  again, send the sweeper to the worker; every fire time starts exactly one instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connections
from django.utils import timezone

from orchestration import schedules, sweepers, tasks
from orchestration.models import Schedule, ScheduleFire, StepRun, WorkflowInstance
from orchestration.worker import beat_command
from tests.conftest import ROOT, wait_for
from tests.workflows import ledger

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SWEEP_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    from datetime import datetime

    import django

    django.setup()
    import time_machine

    from orchestration import tasks

    with time_machine.travel(datetime.fromisoformat(sys.argv[1]), tick=False):
        print(tasks.sweep_schedules.apply().get())
    """
)


def sweep_in_a_fresh_process(worker: Any, at: datetime) -> int:
    """The sweeper task in a new Python process (a beat that was restarted), at ``at``."""
    done = subprocess.run(
        [sys.executable, "-c", SWEEP_IN_A_FRESH_PROCESS, at.isoformat()],
        cwd=ROOT,
        env=worker.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])


def succeeded(schedule: Schedule) -> int:
    return WorkflowInstance.objects.filter(schedule=schedule, state="succeeded").count()


def test_a_schedule_fires_under_time_machine_and_a_restarted_sweeper_never_fires_twice(
    worker: Any,
) -> None:
    # Two hours back: the fire times below are then in the worker's past (it runs in real time
    # and claims no step whose due time is ahead of its clock).
    now = timezone.now() - timedelta(hours=2)
    with time_machine.travel(now, tick=False):
        schedule = schedules.schedule_create(
            values={
                "name": "hourly report",
                "workflow": "t_scheduled",
                "input": {"report": "hourly", "token": "tok"},
                "interval_seconds": 3600,
                "business_key_template": "{schedule} {fire_time}",
            }
        )
    fire_time = schedule.next_fire_at
    assert fire_time > now
    # Before its time nothing fires, in this process or a fresh one.
    assert sweep_in_a_fresh_process(worker, fire_time - timedelta(seconds=1)) == 0
    # The first beat sends the sweeper a few seconds after the fire time.
    assert sweep_in_a_fresh_process(worker, fire_time + timedelta(seconds=3)) == 1
    # Restarted: a fresh process, and this one after its connections were closed.
    assert sweep_in_a_fresh_process(worker, fire_time + timedelta(seconds=13)) == 0
    connections.close_all()
    with time_machine.travel(fire_time + timedelta(seconds=23), tick=False):
        assert tasks.sweep_schedules.apply().get() == 0
        assert sweepers.sweep_schedules() == 0
    instance = WorkflowInstance.objects.get(schedule=schedule)
    wait_for(lambda: succeeded(schedule) == 1, message="the scheduled instance to succeed")
    report = StepRun.objects.get(instance=instance, name="report")
    assert report.output == {"scheduled_for": fire_time.isoformat(), "report": "hourly"}
    assert {k.decode(): int(v) for k, v in ledger().hgetall(f"ledger:{instance.pk}").items()} == {
        "report:1": 1
    }
    instance.refresh_from_db()
    assert instance.scheduled_for == fire_time
    assert instance.business_key == f"hourly report {fire_time.isoformat()}"
    # The next hour: fired by this process, once, and run by the worker.
    with time_machine.travel(fire_time + timedelta(hours=1, seconds=2), tick=False):
        assert sweepers.sweep_schedules() == 1
    assert sweep_in_a_fresh_process(worker, fire_time + timedelta(hours=1, seconds=9)) == 0
    wait_for(lambda: succeeded(schedule) == 2, message="the second run to succeed")
    assert list(
        ScheduleFire.objects.filter(schedule=schedule)
        .order_by("fire_time")
        .values_list("fire_time", "outcome")
    ) == [(fire_time, "started"), (fire_time + timedelta(hours=1), "started")]


class Beat:
    """A real ``celery beat`` process with the database scheduler (django-celery-beat)."""

    def __init__(self, worker: Any, n: int) -> None:
        self.log = ROOT / "var" / f"test-beat-{n}.log"
        self.process = subprocess.Popen(
            [*beat_command(), "-s", str(ROOT / "var" / f"test-beat-{n}.db")],
            cwd=ROOT,
            env=worker.env(),
            stdout=open(self.log, "ab"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.mark.chaos  # a fault run (two beats, one killed): `make chaos` runs it
def test_two_beats_and_a_beat_restart_start_each_fire_once(worker: Any) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from orchestration.periodic import install_periodic_tasks

    install_periodic_tasks()
    # Only the schedule sweeper, every second, so the test takes seconds.
    PeriodicTask.objects.exclude(task="orchestration.sweep_schedules").update(enabled=False)
    every_second, _ = IntervalSchedule.objects.get_or_create(
        every=1, period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.filter(task="orchestration.sweep_schedules").update(
        interval=every_second, last_run_at=None
    )
    schedule = schedules.schedule_create(
        values={
            "name": "every two seconds",
            "workflow": "t_scheduled",
            "input": {"report": "tick"},
            "interval_seconds": 2,
            "overlap": "allow_all",
        }
    )
    beats = [Beat(worker, 1), Beat(worker, 2)]
    try:
        wait_for(
            lambda: ScheduleFire.objects.filter(schedule=schedule).count() >= 3,
            timeout=40,
            message="two beats to fire the schedule",
        )
        beats[0].kill()  # one beat dies outright and comes back
        count = ScheduleFire.objects.filter(schedule=schedule).count()
        beats[0] = Beat(worker, 1)
        wait_for(
            lambda: ScheduleFire.objects.filter(schedule=schedule).count() >= count + 3,
            timeout=40,
            message="the restarted beats to fire again",
        )
    finally:
        for beat in beats:
            beat.kill()
        schedules.schedule_pause(schedule_id=schedule.pk, note="test over")
    wait_for(
        lambda: (
            not WorkflowInstance.objects.filter(
                schedule=schedule, state__in=["pending", "running"]
            ).exists()
        ),
        timeout=40,
        message="every scheduled instance to finish",
    )
    fires = list(ScheduleFire.objects.filter(schedule=schedule).values_list("fire_time", "outcome"))
    instances = list(WorkflowInstance.objects.filter(schedule=schedule))
    assert len(fires) >= 6
    # Each fire time once; each started fire one instance, run once, successfully.
    assert len({t for t, _ in fires}) == len(fires)
    started = [t for t, outcome in fires if outcome == "started"]
    assert sorted(i.scheduled_for for i in instances) == sorted(started)
    assert Counter(i.scheduled_for for i in instances).most_common(1)[0][1] == 1
    assert all(i.state == "succeeded" for i in instances)
    for instance in instances:
        assert ledger().hget(f"ledger:{instance.pk}", "report:1") == b"1"
    # Fire times are the schedule's own: every two seconds, on the epoch's grid.
    assert all(t.timestamp() % 2 == 0 for t, _ in fires)
    assert all(t.tzinfo is not None and t <= datetime.now(UTC) for t, _ in fires)
