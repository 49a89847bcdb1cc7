"""Cancelling one step: its transition, its event and its kind's clean-up. Shared by the
instance's failure and cancellation (:mod:`.advancing`) and the saga's start
(:mod:`.compensating`), which both cancel what has not finished."""

from __future__ import annotations

from ..definitions import Workflow
from ..journal import Journal
from ..kinds import get_kind
from ..models import StepRun


def cancel_step(
    step: StepRun, definition: Workflow | None, journal: Journal, *, reason: str
) -> None:
    """``step`` → ``cancelled``; writes ``step_cancelled`` and tells the step's kind (an
    approval closes its open request)."""
    step.cancel()
    step.finished_at = journal.now
    step.next_attempt_at = None
    step.timeout_at = None
    journal.record("step_cancelled", step=step, data={"reason": reason})
    spec = definition.steps.get(step.name) if definition else None
    if spec is not None:
        get_kind(spec.kind).cancelled(step_run=step, spec=spec, journal=journal, now=journal.now)
