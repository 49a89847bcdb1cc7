"""Sagas in process: the compensations of succeeded steps run newest first."""

from __future__ import annotations

import pytest

from orchestration import engine, saga, sweepers
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
            saga.execute(step_run_id=step.pk, attempt=step.comp_attempt)


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
    assert saga.claim(step_run_id=flight.pk, attempt=1) is not None  # the worker dies here
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

    spec = registry.get("expense_approval").steps["notify_requester"]

    def broken(ctx):  # noqa: ANN001, ANN202
        raise NonRetryableError("mail address bounced")

    monkeypatch.setattr(spec, "fn", broken)
    play(instance)
    instance = refresh(instance)
    assert instance.state == "compensated"
    pay = StepRun.objects.get(instance=instance, name="pay")
    assert pay.state == "compensated"
    assert compensated_order(instance) == ["pay"]
