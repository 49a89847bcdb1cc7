"""A handle on one instance under the workflow test kit (:mod:`orchestration.testing`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import sealing
from .actors import actor_of
from .engine import instance_cancel
from .models import Event, InstanceState, StepRun, StepState, WorkflowInstance
from .testing_support import Kit, KitError, assert_history, definition_of, label
from .waits import SignalStep, signal_send

FINISHED = {
    InstanceState.SUCCEEDED,
    InstanceState.FAILED,
    InstanceState.CANCELLED,
    InstanceState.COMPENSATED,
}


class WorkflowHandle:
    """One instance under test: read its state, output, steps and history; send signals;
    run it. Every read goes to the database (no stale copies)."""

    def __init__(self, kit: Kit, instance_id: Any) -> None:
        self.kit = kit
        self.id = instance_id

    def __repr__(self) -> str:
        instance = self.instance
        return (
            f"<WorkflowHandle {instance.workflow} v{instance.version} {self.id} {instance.state}>"
        )

    @property
    def instance(self) -> WorkflowInstance:
        return WorkflowInstance.objects.get(pk=self.id)

    @property
    def state(self) -> str:
        return self.instance.state

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def output(self) -> Any:
        """The instance's output, sealed fields opened (a test may read its own secrets)."""
        return sealing.reveal(self.instance.output, where="instance output")

    @property
    def error(self) -> Any:
        return self.instance.error

    def run_until_idle(self, *, skip_backoff: bool = True) -> WorkflowHandle:
        """:meth:`SignoffKit.run_until_idle`; returns the handle (``h.run_until_idle().state``)."""
        self.kit.run_until_idle(skip_backoff=skip_backoff)
        return self

    def step(self, name: str) -> StepRun:
        """The step's row as it is now (``.state``, ``.attempt``, ``.output``, ``.error``)."""
        found = StepRun.objects.filter(instance_id=self.id, name=name).first()
        if found is None:
            names = StepRun.objects.filter(instance_id=self.id).values_list("name", flat=True)
            raise KitError(f"no step {name!r} in this instance; its steps: {', '.join(names)}")
        return found

    def step_output(self, name: str) -> Any:
        """The step's output, sealed fields opened."""
        return sealing.reveal(self.step(name).output, where=f"output of {name}")

    def steps(self) -> dict[str, str]:
        """Each step's state by name."""
        return dict(StepRun.objects.filter(instance_id=self.id).values_list("name", "state"))

    def events(self) -> list[Event]:
        return list(Event.objects.filter(instance_id=self.id).order_by("seq"))

    def history(self, *, steps: bool = False) -> list[str]:
        """The event types in order; with ``steps`` as ``"type:step"`` where an event names a
        step (the notation :meth:`assert_history` accepts)."""
        return [label(e) if steps else e.type for e in self.events()]

    def assert_history(self, *expected: str, exact: bool = False) -> None:
        """Assert that these events happened in this order (others may come between them,
        unless ``exact``). Each is an event type, or ``"type:step"`` for that step's event:
        ``h.assert_history("step_retrying:call", "step_succeeded:call", "instance_succeeded")``.
        The failure message shows the whole history and where the match stopped."""
        assert_history(self.events(), *expected, exact=exact, title=repr(self))

    def signal(
        self,
        name: str,
        payload: Any = None,
        *,
        early: bool = False,
        idempotency_key: str | None = None,
        user: Any = None,
        run: bool = True,
    ) -> WorkflowHandle:
        """Send signal ``name`` with ``payload`` through the engine's delivery (schema check,
        idempotency), then run until idle unless ``run`` is False.

        Raises :class:`KitError` when no step of the workflow waits for that signal, or its
        step does not wait now: finished, or not reached yet (``early=True`` sends it ahead,
        kept until the step waits, as the API allows)."""
        instance = self.instance
        definition = definition_of(instance.workflow, instance.version)
        specs = [s for s in definition.steps.values() if isinstance(s, SignalStep)]
        spec = next((s for s in specs if s.signal == name), None)
        if spec is None:
            waits = ", ".join(s.signal for s in specs) or "no signal at all"
            raise KitError(
                f"{instance.workflow} v{instance.version} waits for {waits}, not {name!r}"
            )
        state = self.step(spec.name).state
        if state != StepState.WAITING and not (early and state == StepState.PENDING):
            hint = "; pass early=True to send it ahead" if state == StepState.PENDING else ""
            raise KitError(
                f"step {spec.name!r} is {state}, not waiting for signal {name!r} "
                f"(instance {instance.state}){hint}"
            )
        signal_send(
            instance_id=self.id,
            name=name,
            payload=payload,
            idempotency_key=idempotency_key,
            actor=actor_of(user),
        )
        return self.run_until_idle() if run else self

    def cancel(self, reason: str = "", *, user: Any = None) -> WorkflowHandle:
        """Cancel the instance (the engine's cancel: its saga unwinds), then run until idle."""
        instance_cancel(instance_id=self.id, actor=actor_of(user), reason=reason)
        return self.run_until_idle()

    def fail_step(
        self,
        step: str,
        *,
        on_attempt: int | Iterable[int] = 1,
        error: BaseException | type[BaseException] | None = None,
    ) -> WorkflowHandle:
        """:meth:`SignoffKit.fail_step` for this instance only."""
        instance = self.instance
        self.kit.fail_step(
            instance.workflow,
            step,
            on_attempt=on_attempt,
            error=error,
            version=instance.version,
            instance_id=self.id,
        )
        return self
