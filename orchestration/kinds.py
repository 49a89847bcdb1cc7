"""Step kinds: the only way the engine meets what a step of a kind does.

The engine calls a step's kind when the step becomes ready, is retried by an operator, is
cancelled, passes its waiting deadline or is completed by hand; it never branches on kind names.
The ``task`` kind lives in :mod:`orchestration.engine.task_kind`, ``signal`` and ``timer`` in
:mod:`orchestration.waits`, ``child`` in :mod:`orchestration.children`; other apps register
theirs (``approvals`` registers ``approval``) without the engine importing them. The engine
calls a kind inside its own transaction, with the instance row locked; the kind changes the
step only through its transitions and records what it did on the journal.

A kind subclasses :class:`StepKind` and overrides what differs from the defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from .definitions import StepSpec
    from .journal import Journal
    from .models import StepRun


class StepKind:
    """What a kind of step does at each moment the engine hands it. Defaults: the behaviour of
    a kind that only waits for :meth:`ready` to start it."""

    name: str = ""

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        """The step's dependencies are done: start it (schedule, or wait for a person...).

        ``journal.steps`` holds the instance's steps (for ``engine.step_context``); a new
        step may have no id yet: use ``journal.after_write`` for rows that refer to it."""
        raise NotImplementedError(f"step kind {self.name!r} does not say how a step starts")

    def retried(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        """An operator retried the failed instance: the step (failed, timed out or cancelled,
        its attempt budget renewed) starts again. Default: as when it became ready."""
        self.ready(step_run=step_run, spec=spec, journal=journal, now=now)

    def cancelled(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        """The step was cancelled (its instance was cancelled or failed). Default: nothing."""

    def timed_out(self, *, locked: Any, step_run: StepRun, spec: StepSpec) -> bool:
        """The ``waiting`` step's deadline (``timeout_at``) passed; ``locked`` is the engine's
        :class:`~orchestration.engine.LockedInstance`. Return whether the kind acted (the
        engine then writes what it recorded). Default: a kind without waiting deadlines does
        nothing."""
        return False

    def completed_by_hand(
        self,
        *,
        step_run: StepRun,
        spec: StepSpec,
        journal: Journal,
        now: datetime,
        was_waiting: bool,
    ) -> None:
        """An operator completed the step by hand (it is ``succeeded`` now). Default: a step
        that was waiting is cleaned up as if cancelled (an approval's open request closes)."""
        if was_waiting:
            self.cancelled(step_run=step_run, spec=spec, journal=journal, now=now)

    def authorize_operator(
        self, *, action: str, step_run: StepRun, spec: StepSpec, instance: Any, user: Any
    ) -> None:
        """Raise :class:`~orchestration.errors.NotAllowed` to refuse an operator's ``action``
        (``complete``, ``retry``; repairs: ``edit`` its output, ``edit_input`` once it started,
        ``skip``, ``reset``, ``resolve`` its failed undo) on one of this kind's steps. A kind
        that owns its steps' outcomes (approvals) asks its policy; default: the engine's own
        checks decide."""

    def offers_operator(self, action: str) -> bool:
        """Whether to offer operator ``action`` on steps of this kind at all (buttons only)."""
        return True

    def state_label(self, state: str) -> str:
        """How a step of this kind in ``state`` reads on the workflow graph (a ``waiting``
        approval reads "waiting for a decision")."""
        return f"{self.name} · {state.replace('_', ' ')}"


_KINDS: dict[str, StepKind] = {}


def register_kind(kind: StepKind) -> StepKind:
    """Register ``kind`` under its ``name``; returns it."""
    if not isinstance(kind, StepKind) or not kind.name:
        raise TypeError(f"{kind!r} is not a named orchestration.kinds.StepKind")
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
    """Ask the step's kind whether ``user`` may ``action`` ("complete", "retry", "edit",
    "edit_input", "skip", "reset", "resolve") the step by hand. Called by the engine under
    the instance lock; the engine never completes, retries or repairs a step of another app's
    kind without asking it."""
    get_kind(spec.kind).authorize_operator(
        action=action, step_run=step_run, spec=spec, instance=instance, user=user
    )


def offers_operator(kind_name: str, action: str) -> bool:
    """Whether to offer an operator ``action`` on steps of this kind at all (buttons only:
    :func:`authorize_operator` decides when it is used)."""
    kind = _KINDS.get(kind_name)
    return True if kind is None else bool(kind.offers_operator(action))


def state_label(kind_name: str, state: str) -> str:
    """The graph's words for a step of ``kind_name`` in ``state`` (:meth:`StepKind.state_label`;
    an unregistered kind reads like the default)."""
    kind = _KINDS.get(kind_name)
    if kind is None:
        return f"{kind_name} · {state.replace('_', ' ')}"
    return kind.state_label(state)


def kind_names() -> list[str]:
    return sorted(_KINDS)
