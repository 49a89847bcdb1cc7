"""Step kinds: the only way the engine meets what a step of a kind does.

The engine calls a step's kind when the step becomes ready, is retried by an operator, is
cancelled, passes its waiting deadline or is completed by hand; it never branches on kind names.
The ``task`` kind lives in :mod:`orchestration.engine.task_kind`, ``signal`` and ``timer`` in
:mod:`orchestration.waits`; other apps register theirs (``approvals`` registers ``approval``)
without the engine importing them. The engine calls a kind inside its own transaction, with the
instance row locked; the kind changes the step only through its transitions and records what it
did on the journal.

A kind subclasses :class:`StepKind` and overrides what differs from the defaults. An object that
does not subclass it (an older kind) is registered with the defaults for the methods it lacks.
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
        (``complete``, ``retry``) on one of this kind's steps. A kind that owns its steps'
        outcomes (approvals) asks its policy; default: the engine's own checks decide."""

    def offers_operator(self, action: str) -> bool:
        """Whether to offer operator ``action`` on steps of this kind at all (buttons only)."""
        return True


# The methods a kind may define; an object that is no StepKind keeps its own and gets the
# defaults for the others.
HOOKS = (
    "ready",
    "retried",
    "cancelled",
    "timed_out",
    "completed_by_hand",
    "authorize_operator",
    "offers_operator",
)


class _Defaulted(StepKind):
    """A kind object registered without subclassing :class:`StepKind`."""

    def __init__(self, kind: Any) -> None:
        self.name = kind.name
        for hook in HOOKS:
            method = getattr(kind, hook, None)
            if method is not None:
                setattr(self, hook, method)


_KINDS: dict[str, StepKind] = {}


def register_kind(kind: Any) -> Any:
    """Register ``kind`` (a :class:`StepKind`) under its ``name``; returns it."""
    _KINDS[kind.name] = kind if isinstance(kind, StepKind) else _Defaulted(kind)
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
    hand. Called by the engine under the instance lock; the engine never completes or retries
    a step of another app's kind without asking it."""
    get_kind(spec.kind).authorize_operator(
        action=action, step_run=step_run, spec=spec, instance=instance, user=user
    )


def offers_operator(kind_name: str, action: str) -> bool:
    """Whether to offer an operator ``action`` on steps of this kind at all (buttons only:
    :func:`authorize_operator` decides when it is used)."""
    kind = _KINDS.get(kind_name)
    return True if kind is None else bool(kind.offers_operator(action))


def kind_names() -> list[str]:
    return sorted(_KINDS)
