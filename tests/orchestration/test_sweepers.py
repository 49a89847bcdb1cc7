"""The doorbell sweeper's back-off: a lost message is rung again promptly, one merely queued
behind a backlog is rung again less and less often (capped), and a fresh ring starts over."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from orchestration import engine, sweepers
from orchestration.models import StepRun
from tests.conftest import wait_for
from tests.orchestration.test_engine import refresh, steps_of

pytestmark = pytest.mark.django_db

GRACE = timedelta(seconds=30)
CAP = timedelta(minutes=5)


def sweep_at(start, seconds: float) -> int:  # noqa: ANN001
    with time_machine.travel(start + timedelta(seconds=seconds), tick=False):
        return sweepers.sweep_doorbells(grace=GRACE, max_backoff=CAP)


def rings_between(start, first: int, last: int, every: int = 1) -> list[int]:  # noqa: ANN001
    """The seconds (one sweep every ``every`` seconds) at which the sweeper rang."""
    return [s for s in range(first, last + 1, every) if sweep_at(start, s)]


def test_a_message_only_queued_is_rung_again_with_doubling_waits_up_to_the_cap(rung) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_sequence")
    # First re-ring a grace after the due time (a lost message: prompt), then waits of
    # 30, 60, 120, 240 s (each as long as the step had been overdue), then 300 s (the cap).
    assert rings_between(start, 0, 1400, every=10) == [30, 60, 120, 240, 480, 780, 1080, 1380]
    step = steps_of(instance)["a"]
    assert step.state == "scheduled" and step.attempt == 1  # only rung, nothing else changed
    assert step.rung_at == start + timedelta(seconds=1380)


def test_a_retrying_step_is_rung_again_a_grace_after_its_backoff(rung) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 1})
        call = steps_of(instance)["call"]
        assert engine.step_execute(step_run_id=call.pk, attempt=1) == "failed"
    call = steps_of(instance)["call"]
    assert call.state == "retrying" and call.rung_at == start < call.next_attempt_at
    due = (call.next_attempt_at - start).total_seconds()
    assert sweep_at(start, due + 29) == 0
    assert sweep_at(start, due + 31) == 1


def test_a_fresh_ring_starts_the_back_off_over(rung) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_sequence")
    assert rings_between(start, 0, 299) == [30, 60, 120, 240]
    with time_machine.travel(start + timedelta(seconds=300), tick=False):
        assert engine.instance_resume(instance_id=instance.pk, actor="user:ops") == ["a"]
    assert rings_between(start, 301, 400) == [330, 360]


def test_unpausing_rings_and_a_lost_ring_is_rung_again_promptly(rung) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_sequence")
        engine.instance_pause(instance_id=instance.pk, actor="user:ops")
    assert rings_between(start, 0, 1000, every=10) == []  # paused: nothing rings
    with time_machine.travel(start + timedelta(seconds=1000), tick=False):
        engine.instance_unpause(instance_id=instance.pk, actor="user:ops")
    # unpausing made the step due now: not 1000 s overdue, so no long wait for a lost ring
    assert rings_between(start, 1001, 1100) == [1030, 1060]


def test_compensation_doorbells_back_off_too(rung) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(
            workflow="trip_booking", input={"traveller": "Ada", "fail_at": "book_hotel"}
        )
        for name in ("book_flight", "book_hotel"):
            step = steps_of(instance)[name]
            engine.step_execute(step_run_id=step.pk, attempt=1)
    assert refresh(instance).state == "compensating"
    assert steps_of(instance)["book_flight"].comp_phase == "scheduled"
    assert rings_between(start, 0, 130) == [30, 60, 120]


def test_the_due_query_stays_on_the_partial_due_time_index() -> None:
    from django.db import connection

    now = timezone.now()
    qs = StepRun.objects.filter(state__in=["scheduled", "retrying"]).filter(
        sweepers.ring_again_q(now=now, grace=GRACE, max_backoff=CAP)
    )
    sql, params = qs.order_by("next_attempt_at").values("pk")[:500].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "steprun_due_doorbell" in plan, plan


@pytest.mark.e2e
def test_a_backlog_is_not_rung_on_every_sweep_and_each_step_runs_once(
    worker, broker, settings
) -> None:
    from tests.orchestration.test_e2e import finished, runs, state

    worker.stop()  # a backlog: nobody consumes, every message waits in the queue
    broker.purge("signoff")  # what earlier tests left queued is not this test's
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instances = [engine.instance_start(workflow="t_sequence")[0] for _ in range(3)]
    assert broker.depth("signoff") == 3
    rang = sum(sweep_at(start, s) for s in range(0, 600, 5))
    # at 30, 60, 120, 240 and 480 s: five re-rings each in 10 minutes, not 20
    assert rang == 3 * 5
    assert broker.depth("signoff") == 3 + rang
    worker.start()
    wait_for(lambda: finished(*instances), timeout=30, message="the backlog to drain")
    for instance in instances:
        assert state(instance) == "succeeded"
        assert runs(instance) == {"a:1": 1, "b:1": 1, "c:1": 1}  # the claim absorbed repeats
