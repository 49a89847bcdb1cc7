"""Step kinds: what the engine does when a step of a kind becomes ready or is cancelled.

The engine knows ``task`` itself. Other apps register kinds (``approvals`` registers
``approval``) without the engine importing them: the engine calls the handler inside its own
transaction, with the instance row locked, and the handler changes the step only through its
transitions and records what it did on the journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

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

    # Optional: a kind that owns its steps' outcomes (approvals) also defines
    #   authorize_operator(*, action, step_run, spec, instance, user) -> None
    # and raises NotAllowed to refuse an operator's ``action`` ("complete", "retry") on one
    # of its steps. The engine never completes or retries a step of another app's kind
    # without asking it (authorize_operator below). And, for which buttons to show,
    #   offers_operator(action) -> bool


_KINDS: dict[str, StepKind] = {}


def register_kind(kind: StepKind) -> StepKind:
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> StepKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"no step kind {name!r} is registered") from None


def authorize_operator(
    *, action: str, step_run: StepRun, spec: StepSpec, instance: Any, user: Any
) -> None:
    """Ask the step's kind whether ``user`` may ``action`` ("complete", "retry") the step by
    hand. Called by the engine under the instance lock; a kind without the hook (the engine's
    own ``task``, ``signal`` and ``timer``) leaves it to the engine's checks."""
    hook = getattr(get_kind(spec.kind), "authorize_operator", None)
    if hook is not None:
        hook(action=action, step_run=step_run, spec=spec, instance=instance, user=user)


def offers_operator(kind_name: str, action: str) -> bool:
    """Whether to offer an operator ``action`` on steps of this kind at all (buttons only:
    :func:`authorize_operator` decides when it is used)."""
    kind = _KINDS.get(kind_name)
    hook = getattr(kind, "offers_operator", None)
    return True if hook is None else bool(hook(action))


def kind_names() -> list[str]:
    return sorted(_KINDS)
