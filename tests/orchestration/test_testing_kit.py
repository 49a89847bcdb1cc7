"""The workflow test kit (orchestration.testing): workflows run in-process with no worker, time
skipped, faults injected, history asserted; its refusals; and one run compared with a real
worker's."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from orchestration import journal
from orchestration.definitions import NonRetryableError, RetryPolicy, Workflow, registry
from orchestration.errors import InvalidInput
from orchestration.models import Event, StepRun, WorkflowInstance
from orchestration.testing import KitError, SignoffKit
from tests.conftest import wait_for
from tests.workflows import ledger

DAY = timedelta(days=1)


def attempts_run(handle) -> dict[str, str]:  # noqa: ANN001
    """What the steps' functions recorded in the Redis ledger (step:attempt -> count)."""
    return {k.decode(): v.decode() for k, v in ledger().hgetall(f"ledger:{handle.id}").items()}


def test_a_workflow_runs_to_its_end_in_process(signoff_kit) -> None:
    handle = signoff_kit.start("t_sequence", {"n": 1}, business_key="order-1")
    assert handle.steps() == {"a": "scheduled", "b": "pending", "c": "pending"}  # nothing ran yet
    handle.run_until_idle()
    assert handle.state == "succeeded" and handle.finished
    assert handle.output["c"] == {"step": "c", "attempt": 1, "saw": ["a", "b"]}
    assert attempts_run(handle) == {"a:1": "1", "b:1": "1", "c:1": "1"}
    handle.assert_history(
        "instance_started",
        *[f"{t}:{s}" for s in "abc" for t in ("step_scheduled", "step_started", "step_succeeded")],
        "instance_succeeded",
        exact=True,
    )
    assert handle.instance.business_key == "order-1"


def test_a_seven_day_signal_wait_passes_by_skipping_time(signoff_kit) -> None:
    handle = signoff_kit.start("customer_onboarding", {"customer": "Acme"}, version=2)
    handle.run_until_idle()
    assert handle.step("setup_completed").state == "waiting"
    begun = time.monotonic()
    signoff_kit.skip(timedelta(days=6, hours=23))
    assert handle.step("setup_completed").state == "waiting"
    signoff_kit.skip(timedelta(hours=1))
    assert time.monotonic() - begun < 5  # seven days in (far) less than five seconds
    assert handle.state == "cancelled"
    handle.assert_history(
        "step_waiting:setup_completed",
        "step_timed_out:setup_completed",
        "step_cancelled:enable_billing",
        "instance_cancelled",
    )


def test_a_signal_moves_the_workflow_on(signoff_kit, user) -> None:
    handle = signoff_kit.start("customer_onboarding", {"customer": "Acme", "plan": "team"})
    handle.run_until_idle()
    signoff_kit.skip(3 * DAY)
    handle.signal("setup_completed", {"seats": 5}, user=user)
    assert handle.state == "succeeded"
    assert handle.step("setup_completed").output == {"seats": 5}
    assert handle.output["enable_billing"]["billing_account"] == "bill-acct-acme"
    received = Event.objects.get(instance_id=handle.id, type="signal_received")
    assert received.actor == "user:alice"


def test_timers_fire_when_their_time_comes(signoff_kit) -> None:
    wake = timezone.now() + timedelta(hours=5)
    handle = signoff_kit.start("t_timer", {"wake_at": wake.isoformat()}).run_until_idle()
    signoff_kit.skip(timedelta(hours=1))
    assert handle.steps()["nap"] == "waiting"
    signoff_kit.skip(timedelta(hours=1))
    assert handle.steps()["nap"] == "succeeded" and handle.steps()["until"] == "waiting"
    signoff_kit.advance_to(wake)
    assert handle.state == "succeeded"


def test_a_step_failing_on_its_first_attempts_then_succeeding(signoff_kit) -> None:
    signoff_kit.fail_step("t_sequence", "b", on_attempt=[1, 2], error=ConnectionError("down"))
    handle = signoff_kit.start("t_sequence").run_until_idle()
    assert handle.state == "succeeded"
    assert handle.step("b").attempt == 3
    # The failing attempts never reached the step's own code.
    assert attempts_run(handle) == {"a:1": "1", "b:3": "1", "c:1": "1"}
    handle.assert_history(
        "step_started:b", "step_retrying:b", "step_retrying:b", "step_succeeded:b"
    )
    retried = Event.objects.filter(instance_id=handle.id, type="step_retrying").first()
    assert retried.data["error"]["type"] == "builtins.ConnectionError"
    assert retried.data["error"]["message"] == "down"


def test_a_non_retryable_fault_fails_the_instance_at_once(signoff_kit) -> None:
    signoff_kit.fail_step("t_sequence", "a", error=NonRetryableError)
    handle = signoff_kit.start("t_sequence").run_until_idle()
    assert handle.state == "failed"
    assert (handle.step("a").state, handle.step("a").attempt) == ("failed", 1)
    assert handle.error["step"] == "a"
    handle.assert_history("step_failed:a", "instance_failed")


def test_a_fault_on_every_attempt_exhausts_the_retry_policy(signoff_kit) -> None:
    signoff_kit.fail_step("t_sequence", "a", on_attempt=range(1, 5))  # FAST: 4 attempts
    handle = signoff_kit.start("t_sequence").run_until_idle()
    assert handle.state == "failed" and handle.step("a").attempt == 4
    assert handle.history().count("step_retrying") == 3


def test_a_fault_for_one_instance_leaves_the_others_alone(signoff_kit) -> None:
    first, second = signoff_kit.start("t_sequence"), signoff_kit.start("t_sequence")
    first.fail_step("a", on_attempt=1)
    signoff_kit.run_until_idle()
    assert (first.step("a").attempt, second.step("a").attempt) == (2, 1)
    assert first.state == second.state == "succeeded"


def test_a_retry_backoff_passes_at_once_unless_asked_not_to(signoff_kit) -> None:
    signoff_kit.fail_step("t_flaky", "call", on_attempt=1)
    handle = signoff_kit.start("t_flaky").run_until_idle(skip_backoff=False)
    assert handle.step("call").state == "retrying"
    handle.run_until_idle()
    assert handle.state == "succeeded"


@pytest.fixture
def slow_retry() -> str:
    """A step retried a day after it fails."""
    wf = Workflow("t_kit_slow_retry")
    wf.task(
        lambda ctx: {"attempt": ctx.attempt},
        name="call",
        retry=RetryPolicy(max_attempts=2, initial_interval=DAY, max_interval=DAY, jitter=0),
    )
    registry.register(wf)
    yield wf.name
    registry.unregister(wf.name, wf.version)


def test_the_clock_moves_to_a_waiting_retry_only_while_it_still_waits(
    signoff_kit, slow_retry
) -> None:
    begun = timezone.now()
    signoff_kit.fail_step(slow_retry, "call", on_attempt=1)
    cancelled = signoff_kit.start(slow_retry).run_until_idle(skip_backoff=False)
    assert cancelled.step("call").state == "retrying"
    cancelled.cancel("no longer needed")  # runs until idle: its doorbell is stale now
    assert cancelled.state == "cancelled"
    assert timezone.now() - begun < timedelta(hours=1)
    waits = signoff_kit.start(slow_retry).run_until_idle()  # a day passes, as a worker waits
    assert timezone.now() - begun >= DAY
    assert waits.state == "succeeded" and waits.step_output("call") == {"attempt": 2}


def test_a_saga_unwinds_in_process(signoff_kit) -> None:
    handle = signoff_kit.start("trip_booking", {"traveller": "Ada", "fail_at": "book_car"})
    handle.run_until_idle()
    assert handle.state == "compensated"
    handle.assert_history(
        "step_failed:book_car",
        "step_compensated:book_hotel",
        "step_compensated:book_flight",
        "instance_compensated",
    )


def test_history_assertions_say_what_is_missing_and_show_the_history(signoff_kit) -> None:
    handle = signoff_kit.start("t_sequence").run_until_idle()
    with pytest.raises(AssertionError) as missing:
        handle.assert_history("step_succeeded:c", "step_succeeded:a")
    message = str(missing.value)
    assert "expected 'step_succeeded:a' after step_succeeded:c" in message
    assert "found it only before the events matched so far" in message
    assert "#1 instance_started" in message and "<- matched up to here" in message
    with pytest.raises(AssertionError, match="found it nowhere"):
        handle.assert_history("step_failed")
    with pytest.raises(AssertionError, match="is not exactly"):
        handle.assert_history("instance_started", "instance_succeeded", exact=True)
    with pytest.raises(KitError, match="at least one"):
        handle.assert_history()


def test_cancelling_through_the_handle(signoff_kit) -> None:
    handle = signoff_kit.start("t_signal").run_until_idle()
    handle.cancel("not needed", user=None)
    assert handle.state == "cancelled"


# -- refusals: a clear error, nothing changed ----------------------------------------------------


def test_unknown_workflows_and_versions_are_refused(signoff_kit) -> None:
    with pytest.raises(KitError, match=r"unknown workflow 'nope'; registered: .*t_sequence"):
        signoff_kit.start("nope")
    with pytest.raises(KitError, match="has no version 9; it has 1, 2"):
        signoff_kit.start("customer_onboarding", {"customer": "A"}, version=9)
    with pytest.raises(InvalidInput):  # the workflow's own input schema
        signoff_kit.start("customer_onboarding", {"plan": "free"})
    assert WorkflowInstance.objects.count() == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("t_sequence", "zzz"), {}, "t_sequence v1 has no step 'zzz'; its steps: a, b, c"),
        (("t_signal", "go"), {}, "'go' is a signal step: only task steps run code"),
        (("t_sequence", "a"), {"on_attempt": 0}, "on_attempt must be attempt numbers from 1"),
        (("t_sequence", "a"), {"on_attempt": []}, "on_attempt must be attempt numbers from 1"),
        (("t_sequence", "a"), {"error": "boom"}, "error must be an exception"),
        (("ghost", "a"), {}, "unknown workflow 'ghost'"),
    ],
)
def test_bad_faults_are_refused(signoff_kit, args, kwargs, message) -> None:
    with pytest.raises(KitError, match=message):
        signoff_kit.fail_step(*args, **kwargs)
    assert signoff_kit._faults == [] and signoff_kit._wrapped == []


def test_time_only_goes_forward(signoff_kit) -> None:
    handle = signoff_kit.start("t_signal").run_until_idle()
    before = handle.history()
    with pytest.raises(KitError, match="skip needs a timedelta of zero or more"):
        signoff_kit.skip(timedelta(seconds=-1))
    with pytest.raises(KitError, match="skip needs a timedelta"):
        signoff_kit.skip(3600)
    with pytest.raises(KitError, match="every must be a positive timedelta"):
        signoff_kit.skip(DAY, every=timedelta(0))
    with pytest.raises(KitError, match="cannot go back in time"):
        signoff_kit.advance_to(timezone.now() - DAY)
    with pytest.raises(KitError, match="aware datetime"):
        signoff_kit.advance_to(timezone.now().replace(tzinfo=None) + DAY)
    assert handle.history() == before and handle.step("go").state == "waiting"


def test_signals_no_step_waits_for_are_refused(signoff_kit) -> None:
    handle = signoff_kit.start("t_signal")
    with pytest.raises(KitError, match="waits for go, not 'stop'"):
        handle.signal("stop", {"ok": True})
    with pytest.raises(KitError, match="step 'go' is pending.*pass early=True"):
        handle.signal("go", {"ok": True})
    assert not Event.objects.filter(instance_id=handle.id, type="signal_received").exists()
    handle.signal("go", {"ok": True}, early=True)  # kept until the step waits
    assert handle.state == "succeeded"
    with pytest.raises(KitError, match="step 'go' is succeeded, not waiting"):
        handle.signal("go", {"ok": True})
    with pytest.raises(KitError, match="no step 'zzz' in this instance; its steps: "):
        handle.step("zzz")


def test_a_closed_kit_refuses_and_leaves_nothing_behind() -> None:
    tasks = journal.doorbell_tasks()
    spec = registry.get("t_sequence").steps["a"]
    original = spec.fn
    kit = SignoffKit().open()
    with pytest.raises(KitError, match="another SignoffKit is open"):
        SignoffKit().open()
    kit.fail_step("t_sequence", "a")
    kit._move_to(timezone.now() + 30 * DAY)
    assert spec.fn is not original and journal.doorbell_tasks() != tasks
    kit.close()
    assert spec.fn is original and journal.doorbell_tasks() == tasks
    assert abs(timezone.now() - time_machine_free_now()) < timedelta(minutes=1)
    with pytest.raises(KitError, match="the kit is closed"):
        kit.start("t_sequence")


def time_machine_free_now():  # noqa: ANN201
    import datetime as dt

    return dt.datetime.fromtimestamp(time.time(), dt.UTC)


@pytest.mark.django_db(transaction=True)
def test_the_kit_in_a_transactional_test(signoff_kit) -> None:
    """Committed data: the doorbells are caught at each real commit."""
    handle = signoff_kit.start("t_signal").run_until_idle()
    handle.signal("go", {"ok": True})
    assert handle.state == "succeeded"


# -- the kit says what a worker does -------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_kit_and_a_real_worker_agree(worker) -> None:
    """The same workflow (two transient failures, then success) in the kit and on a real
    Celery worker: the same final state, output and event types."""
    with SignoffKit() as kit:
        in_kit = kit.start("t_flaky", {"fail_times": 2}).run_until_idle()
        kit_result = (in_kit.state, in_kit.output, in_kit.history(steps=True))
    from orchestration import engine

    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 2})
    wait_for(
        lambda: WorkflowInstance.objects.get(pk=instance.pk).state == "succeeded",
        message="the worker's run",
    )
    instance.refresh_from_db()
    history = [
        f"{e.type}:{e.step}" if e.step else e.type
        for e in Event.objects.filter(instance=instance).order_by("seq")
    ]
    assert kit_result == (instance.state, instance.output, history)
    assert kit_result[0] == "succeeded" and kit_result[2].count("step_retrying:call") == 2
    assert StepRun.objects.get(instance=instance, name="call").attempt == 3
