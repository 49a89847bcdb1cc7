"""Sagas in process: the compensations of succeeded steps run newest first."""

from __future__ import annotations

import pytest

from orchestration import engine, saga, sweepers
from orchestration.engine import compensating
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.orchestration.test_engine import refresh, run_ready, steps_of

pytestmark = pytest.mark.django_db


def run_compensations(instance: WorkflowInstance, limit: int = 30) -> None:
    for _ in range(limit):
        due = [
            s
            for s in steps_of(instance).values()
            if s.state == "compensating" and s.comp_phase in ("scheduled", "retrying")
        ]
        if not due:
            return
        for step in due:
            saga.execute_compensation(step_run_id=step.pk, attempt=step.comp_attempt)


def play(instance: WorkflowInstance) -> None:
    for _ in range(10):
        run_ready(instance)
        run_compensations(instance)


def compensated_order(instance: WorkflowInstance) -> list[str]:
    return list(
        Event.objects.filter(instance=instance, type="step_compensated")
        .order_by("seq")
        .values_list("step", flat=True)
    )


@pytest.mark.parametrize(
    ("fail_at", "undone"),
    [
        ("book_flight", []),
        ("book_hotel", ["book_flight"]),
        ("book_car", ["book_hotel", "book_flight"]),
    ],
)
def test_failure_at_each_step_unwinds_the_succeeded_ones_in_reverse(fail_at, undone) -> None:
    instance, _ = engine.instance_start(
        workflow="trip_booking", input={"traveller": "Ada", "fail_at": fail_at}
    )
    play(instance)
    instance = refresh(instance)
    assert compensated_order(instance) == undone
    steps = steps_of(instance)
    if undone:
        assert instance.state == "compensated"
        assert all(steps[name].state == "compensated" for name in undone)
        assert steps[fail_at].state == "failed"
        kinds = [e.type for e in Event.objects.filter(instance=instance).order_by("seq")]
        assert kinds[-1] == "instance_compensated"
        assert "instance_compensating" in kinds
    else:
        assert instance.state == "failed"  # nothing to undo: a plain failure


def test_cancel_compensates_what_was_done() -> None:
    instance, _ = engine.instance_start(workflow="trip_booking", input={"traveller": "Ada"})
    flight = steps_of(instance)["book_flight"]
    engine.step_execute(step_run_id=flight.pk, attempt=1)
    hotel = steps_of(instance)["book_hotel"]
    assert engine.step_claim(step_run_id=hotel.pk, attempt=1) is not None  # hotel is running
    engine.instance_cancel(instance_id=instance.pk, actor="user:ops", reason="trip off")
    instance = refresh(instance)
    assert instance.state == "compensating"
    assert steps_of(instance)["book_car"].state == "cancelled"
    run_compensations(instance)  # waits for the running hotel booking
    assert compensated_order(instance) == []
    engine.step_complete(step_run_id=hotel.pk, attempt=1, output={"booking": "hotel-1"})
    run_compensations(instance)
    assert compensated_order(instance) == ["book_hotel", "book_flight"]
    assert refresh(instance).state == "compensated"
    started = Event.objects.get(instance=instance, type="instance_compensating")
    assert started.data["cause"] == "cancelled" and started.data["reason"] == "trip off"


def test_failing_compensation_is_retried_then_shown_failed_and_retryable(settings) -> None:
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    instance, _ = engine.instance_start(
        workflow="trip_booking",
        input={"traveller": "Ada", "fail_at": "book_car", "fail_compensation": "book_hotel"},
    )
    start = timezone.now()
    for second in range(0, 20):
        with time_machine.travel(start + timedelta(seconds=second), tick=False):
            play(instance)
    instance = refresh(instance)
    assert instance.state == "failed"
    assert instance.error["phase"] == "compensation" and instance.error["step"] == "book_hotel"
    hotel = steps_of(instance)["book_hotel"]
    assert hotel.state == "compensating" and hotel.comp_phase == "failed"
    assert hotel.comp_attempt == 3
    assert steps_of(instance)["book_flight"].state == "succeeded"  # waits behind the hotel
    assert Event.objects.filter(instance=instance, type="step_compensation_retrying").count() == 2

    # the supplier answers again; an operator retries
    WorkflowInstance.objects.filter(pk=instance.pk).update(
        input={"traveller": "Ada", "fail_at": "book_car"}
    )
    engine.instance_retry(instance_id=instance.pk, actor="user:ops")
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    assert compensated_order(instance) == ["book_hotel", "book_flight"]


def test_compensation_timeout_is_swept_and_retried() -> None:
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    instance, _ = engine.instance_start(
        workflow="trip_booking", input={"traveller": "Ada", "fail_at": "book_hotel"}
    )
    play_until = timezone.now()
    run_ready(instance)
    flight = steps_of(instance)["book_flight"]
    assert flight.state == "compensating"
    # the worker dies here, after its claim
    assert saga.claim_compensation(step_run_id=flight.pk, attempt=1) is not None
    with time_machine.travel(play_until + timedelta(minutes=5), tick=False):
        assert sweepers.sweep_step_timeouts() == 1
    flight = steps_of(instance)["book_flight"]
    assert flight.comp_phase == "retrying" and flight.comp_attempt == 2
    with time_machine.travel(play_until + timedelta(minutes=6), tick=False):
        run_compensations(instance)
    assert refresh(instance).state == "compensated"


def test_expense_payment_is_refunded_when_notification_fails_for_good(monkeypatch) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from approvals import services
    from approvals.models import ApprovalRequest

    call_command("seed_demo")
    User = get_user_model()  # noqa: N806
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 10, "currency": "EUR", "description": "pens", "requester": "alice"},
        started_by=User.objects.get(username="alice"),
    )
    run_ready(instance)
    request = ApprovalRequest.objects.get(instance=instance)
    services.approval_decide(
        request_id=request.pk, user=User.objects.get(username="bob"), outcome="approve"
    )
    from orchestration.definitions import NonRetryableError, registry

    spec = registry.get("expense_approval").steps["book"]

    def broken(ctx):  # noqa: ANN001, ANN202
        raise NonRetryableError("the ledger refused the entry")

    monkeypatch.setattr(spec, "fn", broken)
    play(instance)
    instance = refresh(instance)
    assert instance.state == "compensated"
    pay = StepRun.objects.get(instance=instance, name="pay")
    assert pay.state == "compensated"
    assert compensated_order(instance) == ["pay"]


# -- compensate_attempted: undo steps that never succeeded but had an attempt claimed ----------


def _start_attempted(behave: dict, workflow: str = "t_saga_attempted") -> WorkflowInstance:
    instance, _ = engine.instance_start(workflow=workflow, input={"behave": behave})
    reserve = steps_of(instance)["reserve"]
    assert engine.step_execute(step_run_id=reserve.pk, attempt=1) == "succeeded"
    return instance


def _execute(instance: WorkflowInstance, name: str) -> str:
    step = steps_of(instance)[name]
    return engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


def _undone(instance: WorkflowInstance) -> dict:
    import json

    from tests.workflows import ledger

    raw = ledger().hgetall(f"undone:{instance.pk}")
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def _effects(instance: WorkflowInstance) -> dict:
    from tests.workflows import ledger

    return {k.decode(): int(v) for k, v in ledger().hgetall(f"effects:{instance.pk}").items()}


def _step_events(instance: WorkflowInstance, step: str) -> list[tuple[str, dict]]:
    return [
        (e.type, e.data)
        for e in Event.objects.filter(instance=instance, step=step).order_by("seq")
        if e.type.startswith(("step_compensat", "step_cancelled"))
    ]


@pytest.fixture
def frozen():
    import time_machine
    from django.utils import timezone

    with time_machine.travel(timezone.now(), tick=False) as traveller:
        yield traveller


def test_step_waiting_to_retry_after_a_lost_response_is_undone_with_no_output(frozen) -> None:
    instance = _start_attempted({"charge": "lost", "hold": "doom"})
    assert _execute(instance, "charge") == "failed"  # applied, answer lost: retrying
    assert steps_of(instance)["charge"].state == "retrying"
    assert _execute(instance, "hold") == "failed"  # for good: the saga unwinds
    instance = refresh(instance)
    assert instance.state == "compensating"
    steps = steps_of(instance)
    assert steps["charge"].state == "compensating" and steps["charge"].comp_attempted
    assert steps["hold"].state == "compensating" and steps["hold"].comp_attempted
    assert steps["ship"].state == "cancelled"
    assert steps["reserve"].state == "succeeded"  # waits for both: they depend on it
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    undone = _undone(instance)
    assert undone["charge"] == {"output": None, "attempted_only": True, "outputs": ["reserve"]}
    assert undone["hold"] == {"output": None, "attempted_only": True, "outputs": ["reserve"]}
    assert undone["reserve"] == {
        "output": {"step": "reserve", "attempt": 1},
        "attempted_only": False,
        "outputs": ["reserve"],  # the attempted-only steps never had an output
    }
    assert compensated_order(instance)[-1] == "reserve"  # after the steps that depend on it
    assert _step_events(instance, "charge") == [
        ("step_cancelled", {"reason": "instance_failed"}),
        ("step_compensating", {"attempted": True, "from": "cancelled"}),
        ("step_compensation_started", {}),
        ("step_compensated", {"result": {"undone": "charge"}, "attempted": True}),
    ]
    assert _step_events(instance, "hold")[0] == (
        "step_compensating",
        {"attempted": True, "from": "failed"},
    )
    assert _step_events(instance, "reserve")[0] == ("step_compensating", {})
    # The retry that was waiting never runs: its claim is refused.
    assert engine.step_execute(step_run_id=steps["charge"].pk, attempt=2) == "stale"
    assert _effects(instance) == {"reserve": 1, "charge": 1}


def test_without_compensate_attempted_only_succeeded_steps_are_undone(frozen) -> None:
    instance = _start_attempted({"charge": "lost", "hold": "doom"}, workflow="t_saga_plain")
    _execute(instance, "charge")
    _execute(instance, "hold")
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    steps = steps_of(instance)
    assert (steps["charge"].state, steps["hold"].state) == ("cancelled", "failed")
    assert not steps["charge"].comp_attempted
    assert compensated_order(instance) == ["reserve"]
    assert set(_undone(instance)) == {"reserve"}  # charge's effect stays (the old limit)


def test_step_never_claimed_is_cancelled_not_undone(frozen) -> None:
    instance = _start_attempted({"hold": "doom"})
    _execute(instance, "hold")  # charge is still scheduled, attempt 1 never claimed
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    steps = steps_of(instance)
    assert steps["charge"].state == "cancelled" and not steps["charge"].comp_attempted
    assert compensated_order(instance)[-1] == "reserve"
    assert set(compensated_order(instance)) == {"hold", "reserve"}


def test_attempt_running_when_the_saga_starts_and_then_failing_is_undone(frozen) -> None:
    instance = _start_attempted({"charge": "lost", "hold": "doom"})
    charge = steps_of(instance)["charge"]
    claimed = engine.step_claim(step_run_id=charge.pk, attempt=1)
    _execute(instance, "hold")
    assert refresh(instance).state == "compensating"
    assert steps_of(instance)["hold"].state == "failed"  # nothing starts while charge runs
    with pytest.raises(Exception, match="answer was lost"):
        claimed.spec.fn(claimed.context)  # the effect is applied, then the attempt fails
    assert engine.step_fail(step_run_id=charge.pk, attempt=1, error=RuntimeError("lost"))
    failed = Event.objects.get(instance=instance, step="charge", type="step_failed")
    assert failed.data["reason"] == "instance_compensating"  # no retry inside a saga
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    assert _undone(instance)["charge"]["attempted_only"] is True
    assert _step_events(instance, "charge")[0] == (
        "step_compensating",
        {"attempted": True, "from": "failed"},
    )


def test_attempt_timed_out_inside_the_saga_is_undone(frozen) -> None:
    from datetime import timedelta

    instance = _start_attempted({"hold": "doom"})
    charge = steps_of(instance)["charge"]
    assert engine.step_claim(step_run_id=charge.pk, attempt=1) is not None  # worker dies
    _execute(instance, "hold")
    frozen.shift(timedelta(seconds=6))
    assert sweepers.sweep_step_timeouts() == 1
    assert steps_of(instance)["charge"].state == "compensating"
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    assert _undone(instance)["charge"]["attempted_only"] is True
    assert _step_events(instance, "charge")[0][1] == {"attempted": True, "from": "timed_out"}


def test_attempt_running_when_the_saga_starts_and_then_succeeding_is_undone_with_output(
    frozen,
) -> None:
    instance = _start_attempted({"hold": "doom"})
    charge = steps_of(instance)["charge"]
    assert engine.step_claim(step_run_id=charge.pk, attempt=1) is not None
    _execute(instance, "hold")
    engine.step_complete(step_run_id=charge.pk, attempt=1, output={"charged": 1})
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    assert _undone(instance)["charge"] == {
        "output": {"charged": 1},
        "attempted_only": False,
        "outputs": ["charge", "reserve"],
    }


def test_cancel_undoes_a_step_waiting_to_retry(frozen) -> None:
    instance = _start_attempted({"charge": "lost_once"})
    _execute(instance, "hold")
    _execute(instance, "charge")
    engine.instance_cancel(instance_id=instance.pk, actor="user:ops", reason="off")
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    undone = _undone(instance)
    assert undone["charge"]["attempted_only"] is True
    assert undone["hold"]["attempted_only"] is False
    assert compensated_order(instance)[-1] == "reserve"


def test_failing_attempted_compensation_is_retried_by_an_operator_with_no_output(
    frozen, monkeypatch
) -> None:
    from datetime import timedelta

    from orchestration.definitions import registry

    spec = registry.get("t_saga_attempted").steps["charge"]
    real = spec.compensate

    def broken(ctx, output):  # noqa: ANN001, ANN202
        raise RuntimeError("the payment provider is down")

    monkeypatch.setattr(spec, "compensate", broken)
    instance = _start_attempted({"charge": "lost", "hold": "doom"})
    _execute(instance, "charge")
    _execute(instance, "hold")
    for _ in range(6):
        run_compensations(instance)
        frozen.shift(timedelta(minutes=5))
    instance = refresh(instance)
    assert instance.state == "failed" and instance.error["step"] == "charge"
    monkeypatch.setattr(spec, "compensate", real)
    engine.instance_retry(instance_id=instance.pk, actor="user:ops")
    assert _step_events(instance, "charge")[-1] == ("step_compensating", {"attempted": True})
    run_compensations(instance)
    assert refresh(instance).state == "compensated"
    assert _undone(instance)["charge"]["output"] is None


def test_claimed_attempts_of_a_cancelled_step_are_found_in_the_history(frozen) -> None:
    from orchestration.definitions import registry

    instance = _start_attempted({"charge": "lost"})
    _execute(instance, "charge")  # claimed, then retrying
    StepRun.objects.filter(instance=instance, name__in=["charge", "hold"]).update(state="cancelled")
    definition = registry.get("t_saga_attempted")
    assert compensating.claimed_unsucceeded(steps_of(instance), definition) == {"charge"}
    assert (
        compensating.claimed_unsucceeded(steps_of(instance), registry.get("t_saga_plain")) == set()
    )


def test_timeline_tells_an_attempted_compensation_apart(frozen) -> None:
    from orchestration.timeline import build_timeline

    instance = _start_attempted({"charge": "lost", "hold": "doom"})
    _execute(instance, "charge")
    _execute(instance, "hold")
    run_compensations(instance)
    events = list(Event.objects.filter(instance=instance).order_by("seq"))
    details = {
        e.event.step: e.detail
        for e in build_timeline(refresh(instance), events)
        if e.event.type == "step_compensating"
    }
    assert details == {
        "charge": "never succeeded; undoing its attempts",
        "hold": "never succeeded; undoing its attempts",
        "reserve": "",
    }
