"""Operator repair services in process: edit the input or a step's output, skip a failed step,
reset from a step, resolve a failed undo by hand — and the bad input each refuses."""

from __future__ import annotations

import json

import pytest

from orchestration import engine, sealing
from orchestration.errors import Conflict, InvalidInput, NotFound
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.orchestration.test_engine import event_types, refresh, run_ready, steps_of
from tests.orchestration.test_saga import play
from tests.workflows import ledger

pytestmark = pytest.mark.django_db

OPS = "user:ops"


def failed_repair(**input: object) -> WorkflowInstance:
    """A t_repair instance failed in check (a negative amount)."""
    instance, _ = engine.instance_start(
        workflow="t_repair", input={"amount": -1, "card": "4111-secret", **input}
    )
    run_ready(instance)
    assert refresh(instance).state == "failed"
    return refresh(instance)


def state_of(instance: WorkflowInstance) -> tuple:
    """Everything a refused repair must leave as it was."""
    instance = refresh(instance)
    return (
        instance.state,
        json.dumps(instance.input, sort_keys=True),
        instance.last_seq,
        sorted(
            (s.name, s.state, s.attempt, json.dumps(s.output, sort_keys=True))
            for s in StepRun.objects.filter(instance=instance)
        ),
    )


def last_event(instance: WorkflowInstance) -> Event:
    return Event.objects.filter(instance=instance).order_by("-seq").first()


# -- edit --------------------------------------------------------------------------------------


def test_edit_input_then_retry_succeeds_and_the_history_shows_a_masked_diff() -> None:
    instance = failed_repair()
    diff = engine.instance_edit_input(
        instance_id=instance.pk,
        input={"amount": 5, "card": "5500-new-secret"},
        actor=OPS,
        reason="customer typo",
    )
    assert diff["amount"] == {"from": -1, "to": 5}
    assert diff["card"] == {"from": sealing.MASK, "to": sealing.MASK, "sealed": True}
    event = last_event(instance)
    assert (event.type, event.actor) == ("instance_input_edited", OPS)
    assert event.data["reason"] == "customer typo"
    assert "secret" not in json.dumps(event.data)  # neither clear nor sealed value
    stored = refresh(instance).input
    assert sealing.is_sealed(stored["card"])
    assert sealing.open_value(stored["card"]) == "5500-new-secret"
    assert refresh(instance).state == "failed"  # an edit runs nothing
    engine.instance_retry(instance_id=instance.pk, actor=OPS)
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    assert steps_of(instance)["report"].output["check"] == {"ok": True, "amount": 5}


def test_edit_input_keeps_a_sealed_field_sent_back_as_the_mask() -> None:
    instance = failed_repair()
    before = refresh(instance).input["card"]
    diff = engine.instance_edit_input(
        instance_id=instance.pk,
        input={"amount": 7, "card": sealing.MASK},
        actor=OPS,
        reason="fix amount",
    )
    assert set(diff) == {"amount"}
    assert refresh(instance).input["card"] == before


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"input": {"amount": "lots"}}, InvalidInput, "invalid_input"),  # breaks the schema
        ({"input": {"amount": 5, "extra": 1}}, InvalidInput, "invalid_input"),
        ({"input": [1, 2]}, InvalidInput, "invalid_input"),
        ({"input": {"amount": 5}, "reason": ""}, InvalidInput, "reason_required"),
        ({"input": {"amount": 5}, "reason": "   "}, InvalidInput, "reason_required"),
        ({"input": {"amount": 5, "card": "x" * 100_001}}, InvalidInput, "input_too_large"),
        ({"input": {"amount": -1, "card": sealing.MASK}}, Conflict, "unchanged"),
    ],
)
def test_bad_input_edits_are_refused_and_change_nothing(kwargs, error, code) -> None:
    instance = failed_repair()
    before = state_of(instance)
    with pytest.raises(error) as exc:
        engine.instance_edit_input(
            instance_id=instance.pk, actor=OPS, **{"reason": "why", **kwargs}
        )
    assert exc.value.code == code
    assert state_of(instance) == before


def test_a_repeated_edit_is_refused_as_unchanged() -> None:
    instance = failed_repair()
    edit = {"instance_id": instance.pk, "input": {"amount": 3}, "actor": OPS, "reason": "fix"}
    engine.instance_edit_input(**edit)
    before = state_of(instance)
    with pytest.raises(Conflict) as exc:
        engine.instance_edit_input(**edit)
    assert exc.value.code == "unchanged" and state_of(instance) == before


def test_edit_is_refused_on_a_running_unpaused_instance_and_allowed_when_paused() -> None:
    instance, _ = engine.instance_start(workflow="t_repair", input={"amount": 1})
    with pytest.raises(Conflict) as exc:
        engine.instance_edit_input(
            instance_id=instance.pk, input={"amount": 2}, actor=OPS, reason="r"
        )
    assert exc.value.code == "not_paused"
    engine.instance_pause(instance_id=instance.pk, actor=OPS)
    engine.instance_edit_input(instance_id=instance.pk, input={"amount": 2}, actor=OPS, reason="r")
    engine.instance_unpause(instance_id=instance.pk, actor=OPS)
    run_ready(instance)
    assert steps_of(instance)["check"].output == {"ok": True, "amount": 2}


def test_edit_output_of_a_finished_step_reseals_and_later_steps_read_it() -> None:
    instance = failed_repair()
    load = steps_of(instance)["load"]
    assert sealing.is_sealed(load.output["token"])
    diff = engine.step_edit_output(
        step_run_id=load.pk,
        output={"amount": 9, "token": "tok-replaced"},
        actor=OPS,
        reason="reload",
    )
    assert diff == {
        "amount": {"from": -1, "to": 9},
        "token": {"from": sealing.MASK, "to": sealing.MASK, "sealed": True},
    }
    load = steps_of(instance)["load"]
    assert sealing.open_value(load.output["token"]) == "tok-replaced"
    event = last_event(instance)
    assert (event.type, event.step, event.data["reason"]) == (
        "step_output_edited",
        "load",
        "reload",
    )
    assert "tok-" not in json.dumps(event.data)
    engine.instance_edit_input(instance_id=instance.pk, input={"amount": 1}, actor=OPS, reason="r")
    engine.instance_retry(instance_id=instance.pk, actor=OPS)
    run_ready(instance)
    assert steps_of(instance)["report"].output["loaded"] == 9


def test_edit_output_of_an_unfinished_step_is_refused() -> None:
    instance = failed_repair()
    check = steps_of(instance)["check"]
    before = state_of(instance)
    with pytest.raises(Conflict) as exc:
        engine.step_edit_output(step_run_id=check.pk, output={}, actor=OPS, reason="r")
    assert exc.value.code == "invalid_state" and state_of(instance) == before


# -- skip --------------------------------------------------------------------------------------


def test_skip_a_failed_step_with_an_output_and_the_instance_finishes() -> None:
    instance = failed_repair()
    check = steps_of(instance)["check"]
    engine.step_skip(
        step_run_id=check.pk, output={"ok": "waived"}, actor=OPS, reason="finance waived it"
    )
    steps = steps_of(instance)
    assert steps["check"].state == "skipped"
    assert steps["check"].output == {"ok": "waived"}
    skipped = Event.objects.get(instance=instance, type="step_skipped")
    assert skipped.actor == OPS
    assert skipped.data == {
        "operator": True,
        "reason": "finance waived it",
        "output": {"ok": "waived"},
    }
    assert refresh(instance).state == "running"
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    assert steps_of(instance)["report"].output["check"] == {"ok": "waived"}


@pytest.mark.parametrize("step", ["load", "report"])
def test_skip_of_a_step_that_did_not_fail_is_refused(step) -> None:
    instance = failed_repair()  # load succeeded, report pending
    before = state_of(instance)
    with pytest.raises(Conflict) as exc:
        engine.step_skip(step_run_id=steps_of(instance)[step].pk, output={}, actor=OPS, reason="r")
    assert exc.value.code == "invalid_state" and state_of(instance) == before


def test_skip_of_a_running_step_is_refused() -> None:
    instance, _ = engine.instance_start(workflow="t_repair", input={"amount": 1})
    load = steps_of(instance)["load"]
    assert engine.step_claim(step_run_id=load.pk, attempt=1) is not None
    before = state_of(instance)
    with pytest.raises(Conflict):
        engine.step_skip(step_run_id=load.pk, output={}, actor=OPS, reason="r")
    assert state_of(instance) == before


def test_skip_refuses_bad_output_and_missing_reason() -> None:
    instance = failed_repair()
    check = steps_of(instance)["check"]
    before = state_of(instance)
    with pytest.raises(InvalidInput):
        engine.step_skip(step_run_id=check.pk, output={"x": float("nan")}, actor=OPS, reason="r")
    with pytest.raises(InvalidInput):
        engine.step_skip(step_run_id=check.pk, output={}, actor=OPS, reason="")
    with pytest.raises(NotFound):
        engine.step_skip(step_run_id="nope", output={}, actor=OPS, reason="r")
    assert state_of(instance) == before


# -- reset -------------------------------------------------------------------------------------


def test_reset_from_a_middle_step_reruns_it_and_its_dependents_only() -> None:
    instance = failed_repair(break_report=True, amount=4)
    instance = refresh(instance)
    assert steps_of(instance)["report"].state == "failed"
    ledger().set(f"fixed:{instance.pk}", 1)
    reset = engine.instance_reset(
        instance_id=instance.pk, step="check", actor=OPS, reason="report bug fixed"
    )
    assert reset == ["check", "report"]
    event = Event.objects.get(instance=instance, type="instance_reset")
    assert event.actor == OPS
    assert event.data == {
        "reason": "report bug fixed",
        "step": "check",
        "reset": ["check", "report"],
        "retried": [],
    }
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    steps = steps_of(instance)
    assert (steps["load"].attempt, steps["check"].attempt, steps["report"].attempt) == (1, 2, 2)
    runs = ledger().hgetall(f"ledger:{instance.pk}")
    assert {k.decode() for k in runs} == {"load:1", "check:1", "check:2", "report:1", "report:2"}


@pytest.mark.parametrize(
    ("step", "error", "code"),
    [
        ("nope", InvalidInput, "unknown_step"),
        ("report", Conflict, "dependency_not_done"),  # check failed before it
        ("", InvalidInput, "invalid_step"),
    ],
)
def test_bad_resets_are_refused_and_change_nothing(step, error, code) -> None:
    instance = failed_repair()
    before = state_of(instance)
    with pytest.raises(error) as exc:
        engine.instance_reset(instance_id=instance.pk, step=step, actor=OPS, reason="r")
    assert exc.value.code == code and state_of(instance) == before


def test_reset_twice_is_refused_the_second_time() -> None:
    instance = failed_repair()
    engine.instance_reset(instance_id=instance.pk, step="load", actor=OPS, reason="r")
    before = state_of(instance)
    with pytest.raises(Conflict) as exc:
        engine.instance_reset(instance_id=instance.pk, step="load", actor=OPS, reason="r")
    assert exc.value.code == "invalid_state" and state_of(instance) == before


# -- a failed undo -----------------------------------------------------------------------------


def undo_failed_saga() -> WorkflowInstance:
    instance, _ = engine.instance_start(workflow="t_repair_saga", input={"behave": {"pay": "doom"}})
    play(instance)
    instance = refresh(instance)
    assert instance.state == "failed" and instance.error["phase"] == "compensation"
    book = steps_of(instance)["book"]
    assert (book.state, book.comp_phase, book.shown_state) == (
        "compensating",
        "failed",
        "undo_failed",
    )
    return instance


def test_resolving_a_failed_undo_by_hand_lets_the_rest_undo_and_ends_compensated() -> None:
    instance = undo_failed_saga()
    assert steps_of(instance)["reserve"].state == "succeeded"  # waits for book's undo
    book = steps_of(instance)["book"]
    engine.compensation_resolve(
        step_run_id=book.pk, actor=OPS, reason="cancelled the booking by phone"
    )
    assert steps_of(instance)["book"].state == "compensated"
    resolved = Event.objects.get(instance=instance, type="step_compensation_resolved")
    assert (resolved.actor, resolved.data) == (OPS, {"reason": "cancelled the booking by phone"})
    play(instance)
    instance = refresh(instance)
    assert instance.state == "compensated"
    assert steps_of(instance)["reserve"].state == "compensated"
    types = event_types(instance)
    at = types.index("step_compensation_resolved")
    assert types[at : at + 3] == [
        "step_compensation_resolved",
        "instance_compensating",
        "step_compensating",  # reserve's undo, which waited for book's
    ]
    assert types[-2:] == ["step_compensated", "instance_compensated"]


def test_resolve_is_refused_for_a_step_whose_undo_did_not_fail_and_twice() -> None:
    instance = undo_failed_saga()
    before = state_of(instance)
    with pytest.raises(Conflict):
        engine.compensation_resolve(
            step_run_id=steps_of(instance)["reserve"].pk, actor=OPS, reason="r"
        )
    with pytest.raises(InvalidInput):
        engine.compensation_resolve(step_run_id=steps_of(instance)["book"].pk, actor=OPS, reason="")
    assert state_of(instance) == before
    book = steps_of(instance)["book"]
    engine.compensation_resolve(step_run_id=book.pk, actor=OPS, reason="done")
    before = state_of(instance)
    with pytest.raises(Conflict):
        engine.compensation_resolve(step_run_id=book.pk, actor=OPS, reason="done")
    assert state_of(instance) == before


def test_repairs_of_the_forward_run_are_refused_while_the_undo_failed() -> None:
    instance = undo_failed_saga()
    before = state_of(instance)
    pay = steps_of(instance)["pay"]
    for call in (
        lambda: engine.instance_edit_input(
            instance_id=instance.pk, input={"behave": {}}, actor=OPS, reason="r"
        ),
        lambda: engine.step_skip(step_run_id=pay.pk, output={}, actor=OPS, reason="r"),
        lambda: engine.instance_reset(instance_id=instance.pk, step="pay", actor=OPS, reason="r"),
        lambda: engine.step_retry_now(step_run_id=pay.pk, actor=OPS),
        lambda: engine.step_complete_manually(step_run_id=pay.pk, output={}, actor=OPS, reason="r"),
    ):
        with pytest.raises(Conflict) as exc:
            call()
        assert exc.value.code == "undo_failed"
    assert state_of(instance) == before
