"""End to end: a real Celery worker process (prefork, 2 processes) on Redis and PostgreSQL.

Sweepers are run by the test loop (standing in for beat) or sent to the worker as Celery tasks.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from orchestration import engine, sweepers, tasks
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import wait_for
from tests.workflows import ledger

pytestmark = pytest.mark.e2e


def finished(*instances: WorkflowInstance) -> bool:
    ids = [i.pk for i in instances]
    open_ = WorkflowInstance.objects.filter(
        pk__in=ids, state__in=["pending", "running", "compensating"]
    )
    return not open_.exists()


def state(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.get(pk=instance.pk).state


def runs(instance: WorkflowInstance) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in ledger().hgetall(f"ledger:{instance.pk}").items()}


def steps(instance: WorkflowInstance) -> dict[str, StepRun]:
    return {s.name: s for s in StepRun.objects.filter(instance=instance)}


def assert_history_sound(instance: WorkflowInstance) -> list[Event]:
    events = list(Event.objects.filter(instance=instance).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(a.at <= b.at for a, b in zip(events, events[1:], strict=False))
    return events


def test_sequence_completes(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    wait_for(lambda: finished(instance), message="sequence to finish")
    assert state(instance) == "succeeded"
    assert runs(instance) == {"a:1": 1, "b:1": 1, "c:1": 1}
    events = assert_history_sound(instance)
    assert events[-1].type == "instance_succeeded"


def test_parallel_branches_schedule_join_exactly_once(worker) -> None:
    instances = [engine.instance_start(workflow="t_parallel")[0] for _ in range(12)]
    wait_for(lambda: finished(*instances), timeout=40, message="parallel workflows")
    for instance in instances:
        assert state(instance) == "succeeded"
        ledger_runs = runs(instance)
        assert ledger_runs["join:1"] == 1
        assert sum(ledger_runs.values()) == 6  # start, four branches, join: each once
        assert (
            Event.objects.filter(instance=instance, type="step_scheduled", step="join").count() == 1
        )
        assert steps(instance)["join"].attempt == 1
        assert_history_sound(instance)


def test_false_when_skips_step_and_the_rest_runs(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_when", input={"skip": True})
    wait_for(lambda: finished(instance))
    assert state(instance) == "succeeded"
    assert steps(instance)["b"].state == "skipped"
    assert runs(instance) == {"a:1": 1, "c:1": 1}


def test_transient_failures_retry_with_backoff_then_succeed(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 2})
    wait_for(lambda: finished(instance), message="flaky workflow")
    assert state(instance) == "succeeded"
    assert steps(instance)["call"].attempt == 3
    assert runs(instance) == {"call:1": 1, "call:2": 1, "call:3": 1, "after_call:1": 1}
    events = assert_history_sound(instance)
    retrying = [e for e in events if e.type == "step_retrying"]
    assert [e.attempt for e in retrying] == [1, 2]
    delays = [e.data["delay"] for e in retrying]
    assert 0.18 <= delays[0] <= 0.2 and 0.36 <= delays[1] <= 0.4  # 0.2 s × 2ⁿ, 10 % jitter
    started = {e.attempt: e.at for e in events if e.type == "step_started" and e.step == "call"}
    assert started[2] - started[1] >= timedelta(seconds=delays[0])
    assert started[3] - started[2] >= timedelta(seconds=delays[1])


def test_non_retryable_error_fails_at_once(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_nonretryable")
    wait_for(lambda: finished(instance))
    instance.refresh_from_db()
    assert instance.state == "failed"
    assert instance.error["reason"] == "non_retryable"
    assert instance.error["type"] == "builtins.ValueError"
    assert runs(instance) == {"validate:1": 1}


def test_schedule_to_close_ends_the_retries(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_close")
    wait_for(lambda: finished(instance), message="schedule-to-close")
    instance.refresh_from_db()
    assert instance.state == "failed"
    assert instance.error["reason"] == "schedule_to_close"
    attempts = steps(instance)["call"].attempt
    assert 2 <= attempts <= 5  # 0.3 s apart within a 1 s budget, far below max_attempts=100
    assert sum(runs(instance).values()) == attempts


def test_step_past_start_to_close_is_timed_out_and_retried(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_slow", input={"sleep": 3})
    wait_for(lambda: finished(instance), sweep=True, message="timed-out step retried")
    assert state(instance) == "succeeded"
    step = steps(instance)["slow"]
    assert step.attempt == 2 and step.output == {"attempt": 2}
    types = [e.type for e in assert_history_sound(instance)]
    assert types.count("step_timed_out") == 1
    # The first attempt's late result (after 3 s) is ignored.
    wait_for(lambda: runs(instance).get("slow:1") == 1)
    time.sleep(3.2)
    assert steps(instance)["slow"].output == {"attempt": 2}
    assert [e.type for e in assert_history_sound(instance)] == types


def test_same_task_message_delivered_twice_does_the_work_once(worker) -> None:
    worker.stop()
    instance, _ = engine.instance_start(workflow="t_sequence")
    step = steps(instance)["a"]
    for _ in range(3):  # the doorbell is already queued once; add three duplicates
        tasks.run_step.delay(step.pk, 1)
    worker.start()
    wait_for(lambda: finished(instance))
    assert state(instance) == "succeeded"
    assert runs(instance) == {"a:1": 1, "b:1": 1, "c:1": 1}
    assert Event.objects.filter(instance=instance, type="step_started", step="a").count() == 1


def test_worker_killed_mid_step_and_the_sweeper_recovers_the_instance(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_hang")
    wait_for(lambda: runs(instance).get("hang:1") == 1, message="hang step to start")
    worker.kill()  # SIGKILL: no ack, no cleanup, the step row stays 'running'
    assert steps(instance)["hang"].state == "running"
    worker.start()

    def sweep_through_celery() -> bool:
        tasks.sweep_step_timeouts.delay()  # as beat would send it
        return finished(instance)

    wait_for(sweep_through_celery, timeout=30, interval=0.5, message="recovery after SIGKILL")
    assert state(instance) == "succeeded"
    assert runs(instance) == {"hang:1": 1, "hang:2": 1, "after_hang:1": 1}
    types = [e.type for e in assert_history_sound(instance)]
    assert "step_timed_out" in types


def test_flushed_broker_loses_no_workflow(worker, broker, settings) -> None:
    settings.SIGNOFF_DOORBELL_GRACE_SECONDS = 1
    worker.stop()
    instances = [engine.instance_start(workflow="t_parallel")[0] for _ in range(5)]
    assert broker.depth("signoff") == 5
    broker.flush()  # every queued doorbell is gone (Redis: FLUSHDB; RabbitMQ: purged)
    worker.start()
    wait_for(
        lambda: finished(*instances), sweep=True, timeout=40, message="instances after FLUSHDB"
    )
    for instance in instances:
        assert state(instance) == "succeeded"
        assert all(count == 1 for count in runs(instance).values())
        assert_history_sound(instance)


def test_cancel_stops_an_instance_and_ignores_the_running_attempt(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_slow", input={"sleep": 1.5})
    wait_for(lambda: runs(instance).get("slow:1") == 1)
    engine.instance_cancel(instance_id=instance.pk, actor="user:ops")
    time.sleep(2)  # let the attempt end and report
    assert state(instance) == "cancelled"
    assert steps(instance)["slow"].state == "cancelled"
    types = [e.type for e in assert_history_sound(instance)]
    assert "step_succeeded" not in types
    assert types[-1] == "instance_cancelled"


def test_failed_instance_is_retried_to_success(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    wait_for(lambda: finished(instance))
    assert state(instance) == "failed"
    ledger().set(f"fixed:{instance.pk}", 1)
    engine.instance_retry(instance_id=instance.pk, actor="user:ops")
    wait_for(lambda: finished(instance))
    assert state(instance) == "succeeded"
    assert runs(instance) == {"first:1": 1, "fragile:1": 1, "fragile:2": 1, "last:1": 1}


def test_sweepers_are_installed_as_beat_periodic_tasks(worker) -> None:
    from django.core.management import call_command
    from django_celery_beat.models import PeriodicTask

    call_command("setup_periodic_tasks")
    call_command("setup_periodic_tasks")
    names = set(
        PeriodicTask.objects.filter(name__startswith="signoff:").values_list("task", flat=True)
    )
    assert {
        "orchestration.sweep_doorbells",
        "orchestration.sweep_step_timeouts",
        "orchestration.sweep_instance_deadlines",
    } <= names
    assert PeriodicTask.objects.filter(name__startswith="signoff:").count() == len(names)


def test_deadline_sweeper_runs_in_the_worker(worker) -> None:
    instance, _ = engine.instance_start(workflow="t_hang")
    wait_for(lambda: runs(instance).get("hang:1") == 1)
    WorkflowInstance.objects.filter(pk=instance.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    tasks.sweep_instance_deadlines.delay()
    wait_for(lambda: finished(instance))
    instance.refresh_from_db()
    assert instance.state == "failed"
    assert instance.error["type"] == "signoff.DeadlineExceeded"
    worker.kill()  # do not leave the 60 s sleeper occupying a pool process
    worker.start()
    assert sweepers.sweep_instance_deadlines() == 0


@pytest.mark.parametrize("fail_at", ["book_hotel", "book_car"])
def test_saga_unwinds_with_a_real_worker(worker, fail_at) -> None:
    instance, _ = engine.instance_start(
        workflow="trip_booking", input={"traveller": "Ada", "fail_at": fail_at}
    )
    wait_for(lambda: finished(instance), message="saga to unwind")
    assert state(instance) == "compensated"
    order = list(
        Event.objects.filter(instance=instance, type="step_compensated")
        .order_by("seq")
        .values_list("step", flat=True)
    )
    done = ["book_flight", "book_hotel", "book_car"]
    assert order == list(reversed(done[: done.index(fail_at)]))
    assert_history_sound(instance)


def test_cancel_during_a_running_step_compensates_it_too(worker) -> None:
    instance, _ = engine.instance_start(
        workflow="trip_booking", input={"traveller": "Ada", "slow": True}
    )
    wait_for(lambda: steps(instance)["book_flight"].state == "running", message="flight running")
    engine.instance_cancel(instance_id=instance.pk, actor="user:ops")
    wait_for(lambda: finished(instance), timeout=30, message="cancel to unwind")
    assert state(instance) == "compensated"
    assert steps(instance)["book_flight"].state == "compensated"
    assert steps(instance)["book_hotel"].state == "cancelled"


def test_saga_undoes_a_step_whose_answer_was_lost_with_a_real_worker(worker) -> None:
    import json

    instance, _ = engine.instance_start(
        workflow="t_saga_attempted", input={"behave": {"charge": "lost", "hold": "lost_then_doom"}}
    )
    wait_for(lambda: finished(instance), sweep=True, timeout=30, message="saga to unwind")
    assert state(instance) == "compensated"
    s = steps(instance)
    assert {name: s[name].state for name in s} == {
        "reserve": "compensated",
        "charge": "compensated",
        "hold": "compensated",
        "ship": "cancelled",
    }
    effects = ledger().hgetall(f"effects:{instance.pk}")
    undone = {
        k.decode(): json.loads(v) for k, v in ledger().hgetall(f"undone:{instance.pk}").items()
    }
    assert {k.decode() for k in effects} == {"reserve", "charge", "hold"}
    assert set(undone) == {"reserve", "charge", "hold"}  # every applied effect undone
    assert undone["charge"]["output"] is None and undone["charge"]["attempted_only"]
    assert undone["hold"]["output"] is None and undone["hold"]["attempted_only"]
    order = [x.decode() for x in ledger().lrange(f"undo_order:{instance.pk}", 0, -1)]
    assert order[-1] == "reserve"
    types = [e.type for e in assert_history_sound(instance)]
    assert types[-1] == "instance_compensated"
