"""Step kinds: what the engine does when a step of a kind becomes ready or is cancelled.

The engine knows ``task`` itself. Other apps register kinds (``approvals`` registers
``approval``) without the engine importing them: the engine calls the handler inside its own
transaction, with the instance row locked, and the handler changes the step only through its
transitions and records what it did on the journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from .definitions import StepSpec
    from .journal import Journal
    from .models import StepRun


class StepKind(Protocol):
    name: str

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        """The step's dependencies are done: start it (schedule, or wait for a person...).

        ``journal.steps`` holds the instance's steps (for ``engine.step_context``); a new
        step may have no id yet: use ``journal.after_write`` for rows that refer to it."""

    def cancelled(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        """The step was cancelled (its instance was cancelled or failed)."""


_KINDS: dict[str, StepKind] = {}


def register_kind(kind: StepKind) -> StepKind:
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> StepKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"no step kind {name!r} is registered") from None


def kind_names() -> list[str]:
    return sorted(_KINDS)
