"""The step-kind interface (``orchestration.kinds``) and the saga's compensation phase as a
state machine: the only ways the engine meets a kind's behaviour and a compensation's phase."""

from __future__ import annotations

from typing import Any

import pytest
from django_fsm import TransitionNotAllowed

from orchestration import kinds
from orchestration.graph import _meta
from orchestration.models import CompensationPhase, StepRun


class Waits(kinds.StepKind):
    name = "test_waits"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def ready(self, **kw: Any) -> None:
        self.calls.append("ready")

    def cancelled(self, **kw: Any) -> None:
        self.calls.append("cancelled")


def test_register_kind_refuses_what_is_no_named_step_kind() -> None:
    class Plain:
        name = "plain"

        def ready(self, **kw: Any) -> None: ...

    with pytest.raises(TypeError, match="not a named"):
        kinds.register_kind(Plain())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kinds.register_kind(kinds.StepKind())  # no name
    assert "plain" not in kinds.kind_names()
    with pytest.raises(LookupError, match="no step kind 'plain'"):
        kinds.get_kind("plain")


def test_the_defaults_retry_as_ready_and_clean_up_a_step_completed_while_waiting() -> None:
    kind = Waits()
    args: dict[str, Any] = {"step_run": None, "spec": None, "journal": None, "now": None}
    kind.retried(**args)
    kind.completed_by_hand(**args, was_waiting=False)
    kind.completed_by_hand(**args, was_waiting=True)
    assert kind.calls == ["ready", "cancelled"]
    assert kind.timed_out(locked=None, step_run=None, spec=None) is False  # type: ignore[arg-type]
    assert kind.offers_operator("complete") is True
    assert kind.authorize_operator(action="retry", **{k: None for k in ("step_run", "spec")},
                                   instance=None, user=None) is None  # fmt: skip
    with pytest.raises(NotImplementedError):
        kinds.StepKind().ready(**args)


def test_the_graph_asks_the_kind_how_a_step_reads() -> None:
    def node(kind: str, state: str) -> Any:
        return type("N", (), {"kind": kind, "state": state, "attempt": 1})()

    assert _meta(node("approval", "waiting")) == "waiting for a decision"
    assert _meta(node("approval", "succeeded")) == "approval · succeeded"
    assert _meta(node("signal", "timed_out")) == "signal · timed out"
    assert _meta(node("unregistered", "waiting")) == "unregistered · waiting"
    assert _meta(node("task", "running")) == "running"


def test_the_compensation_phase_changes_only_by_its_transitions() -> None:
    step = StepRun(name="charge")
    assert step.comp_phase == CompensationPhase.NONE
    with pytest.raises(AttributeError):
        step.comp_phase = CompensationPhase.DONE  # protected: no direct assignment
    with pytest.raises(TransitionNotAllowed):
        step.claim_compensation()  # nothing scheduled yet
    step.queue_compensation()
    step.claim_compensation()
    attempt = step.comp_attempt
    step.retry_compensation()
    assert (step.comp_phase, step.comp_attempt) == (CompensationPhase.RETRYING, attempt + 1)
    step.claim_compensation()
    step.close_compensation()
    assert step.comp_phase == CompensationPhase.DONE
    with pytest.raises(TransitionNotAllowed):
        step.queue_compensation()  # done is done
