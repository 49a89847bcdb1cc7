"""Operator services: pause, resume, retry a step now, complete a step by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from orchestration import engine, sweepers
from orchestration.errors import Conflict, InvalidInput, NotFound
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.orchestration.test_engine import event_types, refresh, run_ready, steps_of
from tests.workflows import ledger

pytestmark = pytest.mark.django_db


def test_paused_instance_starts_nothing_until_unpaused(
    django_capture_on_commit_callbacks, rung
) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    engine.instance_pause(instance_id=instance.pk, actor="user:ops")
    with pytest.raises(Conflict, match="already paused"):
        engine.instance_pause(instance_id=instance.pk, actor="user:ops")
    assert engine.step_execute(step_run_id=a.pk, attempt=1) == "stale"
    assert sweepers.sweep_doorbells(grace=timedelta(0)) == 0
    with django_capture_on_commit_callbacks(execute=True):
        engine.instance_unpause(instance_id=instance.pk, actor="user:ops")
    assert [b.step_run_id for b in rung] == [a.pk]  # a's doorbell rings again
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    types = event_types(instance)
    assert types[2:4] == ["instance_paused", "instance_unpaused"]
    assert Event.objects.get(instance=instance, type="instance_paused").actor == "user:ops"


def test_pausing_lets_a_running_attempt_finish_but_schedules_nothing_after_it() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    assert engine.step_claim(step_run_id=a.pk, attempt=1) is not None
    engine.instance_pause(instance_id=instance.pk, actor="user:ops")
    assert engine.step_complete(step_run_id=a.pk, attempt=1, output={"x": 1})
    steps = steps_of(instance)
    assert steps["a"].state == "succeeded" and steps["b"].state == "pending"
    engine.instance_unpause(instance_id=instance.pk, actor="user:ops")
    assert steps_of(instance)["b"].state == "scheduled"


def test_resume_rings_every_open_step_now_and_skips_backoff(
    django_capture_on_commit_callbacks, rung
) -> None:
    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 1})
    call = steps_of(instance)["call"]
    engine.step_execute(step_run_id=call.pk, attempt=1)
    assert steps_of(instance)["call"].state == "retrying"
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.instance_resume(instance_id=instance.pk, actor="user:ops") == ["call"]
    assert [(b.step_run_id, b.eta) for b in rung] == [(call.pk, None)]
    assert steps_of(instance)["call"].next_attempt_at <= timezone.now()
    assert Event.objects.get(instance=instance, type="instance_resumed").data == {"rung": ["call"]}


def test_retry_now_skips_the_backoff_of_a_retrying_step() -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 1})
        call = steps_of(instance)["call"]
        engine.step_execute(step_run_id=call.pk, attempt=1)
        engine.step_retry_now(step_run_id=call.pk, actor="user:ops")
        assert engine.step_execute(step_run_id=call.pk, attempt=2) == "succeeded"


def test_retry_now_of_a_failed_step_runs_the_instance_again() -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    run_ready(instance)
    assert refresh(instance).state == "failed"
    ledger().set(f"fixed:{instance.pk}", 1)
    engine.step_retry_now(step_run_id=steps_of(instance)["fragile"].pk, actor="user:ops")
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    with pytest.raises(Conflict):
        engine.step_retry_now(step_run_id=steps_of(instance)["fragile"].pk, actor="user:ops")


def test_complete_by_hand_continues_a_failed_instance() -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    run_ready(instance)
    fragile = steps_of(instance)["fragile"]
    with pytest.raises(InvalidInput, match="reason"):
        engine.step_complete_manually(
            step_run_id=fragile.pk, output={}, actor="user:ops", reason=" "
        )
    engine.step_complete_manually(
        step_run_id=fragile.pk,
        output={"fixed": "by hand"},
        actor="user:ops",
        reason="ran the SQL myself",
    )
    run_ready(instance)
    instance = refresh(instance)
    assert instance.state == "succeeded"
    steps = steps_of(instance)
    assert steps["fragile"].output == {"fixed": "by hand"}
    assert steps["last"].output["saw"] == ["first", "fragile"]
    manual = Event.objects.get(instance=instance, type="step_completed_manually")
    assert (manual.actor, manual.data["reason"]) == ("user:ops", "ran the SQL myself")


def test_operator_actions_refuse_bad_targets_and_change_nothing() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    run_ready(instance)
    before = Event.objects.count()
    with pytest.raises(Conflict):
        engine.instance_pause(instance_id=instance.pk, actor="user:ops")
    with pytest.raises(Conflict):
        engine.instance_unpause(instance_id=instance.pk, actor="user:ops")
    with pytest.raises(Conflict):
        engine.instance_resume(instance_id=instance.pk, actor="user:ops")
    with pytest.raises(Conflict):
        engine.step_complete_manually(
            step_run_id=steps_of(instance)["a"].pk, output={}, actor="user:ops", reason="x"
        )
    with pytest.raises(NotFound):
        engine.step_retry_now(step_run_id="nope", actor="user:ops")
    with pytest.raises(NotFound):
        engine.instance_pause(instance_id="00000000-0000-0000-0000-000000000000", actor="x")
    assert Event.objects.count() == before
    assert WorkflowInstance.objects.get(pk=instance.pk).paused_at is None
    assert StepRun.objects.filter(instance=instance, state="succeeded").count() == 3
