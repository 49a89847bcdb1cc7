"""A test kit for people writing workflows: run a workflow in pytest, in-process, on the test
database, with no worker, and skip time.

The kit drives the engine exactly as a worker and beat would, only in the test's process:

- **Doorbells** (the Celery messages that say "run attempt N of step S") are caught instead of
  sent, and :meth:`SignoffKit.run_until_idle` runs each due one through the real Celery task
  (``orchestration.run_step``, ``orchestration.run_compensation``): the claim, the step's
  function, the retry policy and the advance are the engine's own code. In a ``django_db``
  test (everything inside one transaction that is rolled back) the kit also runs the
  ``on_commit`` callbacks the engine arranged, as a commit would.
- **Time** moves with time-machine (:meth:`SignoffKit.skip`, :meth:`SignoffKit.advance_to`);
  after each move the beat sweepers every app declares (``AppConfig.periodic_tasks``) run once,
  so timers fire, signal waits time out, approvals remind, escalate and expire — a 7-day wait
  passes in milliseconds.
- **Faults**: :meth:`SignoffKit.fail_step` makes a task step raise on chosen attempts without
  touching the workflow's code (its registered function is wrapped while the kit is open).

Use it through the ``signoff_kit`` fixture (``orchestration.pytest_plugin``) or as a context
manager (``with SignoffKit() as kit:``). The approval side is in :mod:`approvals.testing`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import journal
from .actors import actor_of
from .definitions import StepContext, TaskStep
from .engine import instance_start
from .models import MapItem, StepRun, StepState, WorkflowInstance
from .periodic import wanted_periodic_tasks
from .testing_handle import WorkflowHandle
from .testing_support import KitError, assert_history, definition_of, versions_of

__all__ = [
    "DEFAULT_SKIPPED_SWEEPERS",
    "KitError",
    "SignoffKit",
    "WorkflowHandle",
    "assert_history",
    "definition_of",
]

# Beat tasks the kit does not run when time moves: retention would erase or delete test
# instances after a long skip; the outbox, webhooks and digests talk to the outside world.
DEFAULT_SKIPPED_SWEEPERS = frozenset(
    {
        "orchestration.sweep_retention",
        "orchestration.sweep_history_partitions",
        "integrations.sweep_outbox",
        "integrations.sweep_webhooks",
        "approvals.sweep_digests",
    }
)


@dataclass(frozen=True)
class _Bell:
    task: str
    step_run_id: int
    attempt: int
    eta: datetime | None


class _CaughtTask:
    """Stands in for a doorbell's Celery task while the kit is open: keeps the message."""

    def __init__(self, kit: SignoffKit, name: str) -> None:
        self.kit, self.name = kit, name

    def apply_async(self, args: tuple[int, int], **options: Any) -> None:
        self.kit._bells.append(_Bell(self.name, args[0], args[1], options.get("eta")))


@dataclass
class _Fault:
    workflow: str
    step: str
    attempts: frozenset[int]
    error: BaseException | type[BaseException] | None
    version: int | None = None
    instance_id: str | None = None

    def matches(self, ctx: StepContext) -> bool:
        return (
            ctx.workflow == self.workflow
            and ctx.step == self.step
            and ctx.attempt in self.attempts
            and (self.version is None or ctx.version == self.version)
            and (self.instance_id is None or str(ctx.instance_id) == self.instance_id)
        )

    def raise_for(self, ctx: StepContext) -> None:
        message = f"signoff kit: {ctx.step} made to fail on attempt {ctx.attempt}"
        if self.error is None:
            raise RuntimeError(message)
        if isinstance(self.error, type):
            raise self.error(message)
        raise self.error.with_traceback(None)


class SignoffKit:
    """Runs workflows in the test's process. Open it (``with`` or :meth:`open`) before the
    first start; :meth:`close` restores the doorbells, the clock and the faulted steps.

    ``sweepers`` names the beat tasks to run when time moves (default: every app's
    ``periodic_tasks`` but :data:`DEFAULT_SKIPPED_SWEEPERS`); ``max_runs`` bounds one
    :meth:`run_until_idle` (a workflow that never settles fails the test instead of hanging).
    """

    def __init__(self, *, sweepers: Iterable[str] | None = None, max_runs: int = 10_000) -> None:
        self.sweepers = (
            list(sweepers)
            if sweepers is not None
            else [n for n, _ in wanted_periodic_tasks() if n not in DEFAULT_SKIPPED_SWEEPERS]
        )
        self.max_runs = max_runs
        self._bells: list[_Bell] = []
        self._tasks: dict[str, Any] = {}
        self._ran_callbacks: dict[int, Any] = {}
        self._faults: list[_Fault] = []
        self._wrapped: list[tuple[TaskStep, Callable[..., Any]]] = []
        self._travel: Any = None
        self._clock: Any = None
        self._open = False

    # -- opening and closing ------------------------------------------------------------------

    def open(self) -> SignoffKit:
        if self._open:
            return self
        self._tasks = journal.doorbell_tasks()
        if any(isinstance(task, _CaughtTask) for task in self._tasks.values()):
            raise KitError("another SignoffKit is open in this process: close it first")
        for name in self._tasks:
            journal.register_doorbell_task(name, _CaughtTask(self, name))
        self._open = True
        return self

    def close(self) -> None:
        if not self._open:
            return
        for name, task in self._tasks.items():
            journal.register_doorbell_task(name, task)
        for spec, fn in reversed(self._wrapped):
            spec.fn = fn
        self._wrapped.clear()
        if self._travel is not None:
            self._travel.stop()
            self._travel = self._clock = None
        self._open = False

    def __enter__(self) -> SignoffKit:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._open:
            raise KitError("the kit is closed: use the signoff_kit fixture or `with SignoffKit()`")

    # -- starting -----------------------------------------------------------------------------

    def start(
        self,
        workflow: str,
        input: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        business_key: str = "",
        user: Any = None,
        idempotency_key: str | None = None,
    ) -> WorkflowHandle:
        """Start ``workflow`` (its newest version unless ``version``) as ``user`` would, through
        the engine's own start (input schema, sealing, first steps). Nothing runs yet: call
        :meth:`WorkflowHandle.run_until_idle`. Raises :class:`KitError` for an unknown
        workflow or version and the engine's :class:`~orchestration.errors.InvalidInput` for
        input the workflow refuses."""
        self._check_open()
        definition_of(workflow, version)
        instance, _ = instance_start(
            workflow=workflow,
            input=input,
            version=version,
            business_key=business_key,
            idempotency_key=idempotency_key,
            started_by=user,
            actor=actor_of(user),
        )
        return WorkflowHandle(self, instance.pk)

    def handle(self, instance: WorkflowInstance | Any) -> WorkflowHandle:
        """A handle on an instance started some other way (an API call in the test)."""
        pk = getattr(instance, "pk", instance)
        if not WorkflowInstance.objects.filter(pk=pk).exists():
            raise KitError(f"no workflow instance {pk}")
        return WorkflowHandle(self, pk)

    # -- running ------------------------------------------------------------------------------

    def run_until_idle(self, *, skip_backoff: bool = True) -> int:
        """Run every due doorbell (and what each one rings in turn) and the due sweepers until
        nothing is left to do now; returns how many doorbells ran.

        With ``skip_backoff`` (the default) a retry's backoff passes at once: when only
        retries wait, the clock moves to the earliest one, as a worker would wait for it.
        Waiting steps (signals, timers, approvals) never move the clock: use :meth:`skip`."""
        self._check_open()
        runs = rounds = 0
        while True:
            rounds += 1
            if rounds > self.max_runs:
                raise KitError(
                    f"still busy after {self.max_runs} rounds: does the workflow ever settle? "
                    "(raise SignoffKit(max_runs=...) if it is just long)"
                )
            self._run_callbacks()
            bell = self._next_due()
            if bell is not None:
                runs += 1
                self._bells.remove(bell)
                self._tasks[bell.task](bell.step_run_id, bell.attempt)
                continue
            if self.sweep():
                continue
            self._bells = [b for b in self._bells if _live(b)]
            waiting = [b.eta for b in self._bells if b.eta is not None]
            if skip_backoff and waiting:
                self._move_to(max(min(waiting), timezone.now()))
                continue
            return runs

    def sweep(self) -> int:
        """Run each of :attr:`sweepers` once at the kit's now; returns how many rows they
        acted on (beat's work, in this process)."""
        from celery import current_app

        tasks = current_app.tasks
        if any(name not in tasks for name in self.sweepers):
            current_app.loader.import_default_modules()
        acted = 0
        for name in self.sweepers:
            if name not in tasks:
                raise KitError(f"no Celery task {name!r} to sweep with")
            result = tasks[name]()
            acted += sum(result.values()) if isinstance(result, dict) else int(result or 0)
            self._run_callbacks()
        return acted

    def _next_due(self) -> _Bell | None:
        now = timezone.now()
        return next((b for b in self._bells if b.eta is None or b.eta <= now), None)

    def _run_callbacks(self) -> None:
        """Inside the test's transaction (``django_db``) the engine's ``on_commit`` callbacks
        wait for a commit that never comes: run each once, as the commit would."""
        connection = transaction.get_connection()
        if not connection.in_atomic_block:
            return  # a transactional test: they ran at each commit
        while True:
            pending = [c for c in connection.run_on_commit if id(c) not in self._ran_callbacks]
            if not pending:
                return
            for callback in pending:
                self._ran_callbacks[id(callback)] = callback  # kept: ids stay unique
                callback[1]()

    # -- time ---------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return timezone.now()

    def skip(self, delta: timedelta, *, every: timedelta | None = None) -> None:
        """Move the clock ``delta`` forward, running the sweepers and whatever they ring.

        One jump by default: beat's sweeps in between are not replayed (an approval
        reminding daily gets one reminder over a 3-day skip). With ``every`` the clock stops
        at each ``every`` on the way, as beat's sweeps would."""
        if not isinstance(delta, timedelta) or delta < timedelta(0):
            raise KitError(f"skip needs a timedelta of zero or more, not {delta!r}")
        if every is not None and (not isinstance(every, timedelta) or every <= timedelta(0)):
            raise KitError(f"every must be a positive timedelta, not {every!r}")
        self.advance_to(timezone.now() + delta, every=every)

    def advance_to(self, when: datetime, *, every: timedelta | None = None) -> None:
        """Move the clock to ``when`` (aware, not in the past); see :meth:`skip`."""
        self._check_open()
        if not isinstance(when, datetime) or timezone.is_naive(when):
            raise KitError(f"advance_to needs an aware datetime, not {when!r}")
        if when < timezone.now():
            raise KitError(f"cannot go back in time to {when.isoformat()} (now {self.now})")
        self.run_until_idle(skip_backoff=False)
        if every is not None:
            while timezone.now() + every < when:
                self._move_to(timezone.now() + every)
                self.run_until_idle(skip_backoff=False)
        self._move_to(when)
        self.run_until_idle(skip_backoff=False)

    def _move_to(self, when: datetime) -> None:
        import time_machine

        if self._travel is None:
            self._travel = time_machine.travel(when, tick=True)
            self._clock = self._travel.start()
        else:
            self._clock.move_to(when)

    # -- faults -------------------------------------------------------------------------------

    def fail_step(
        self,
        workflow: str,
        step: str,
        *,
        on_attempt: int | Iterable[int] = 1,
        error: BaseException | type[BaseException] | None = None,
        version: int | None = None,
        instance_id: Any = None,
    ) -> None:
        """Make task step ``step`` of ``workflow`` (every version unless ``version``; every
        instance unless ``instance_id``) raise ``error`` on attempt ``on_attempt`` (or each of
        several), before its function runs. The engine's retry policy then does what it
        would: a retryable error retries, a non-retryable one or the last attempt fails.
        ``error`` is an exception, an exception class, or None (a ``RuntimeError``)."""
        self._check_open()
        attempts = frozenset([on_attempt] if isinstance(on_attempt, int) else on_attempt)
        if not attempts or any(
            not isinstance(a, int) or isinstance(a, bool) or a < 1 for a in attempts
        ):
            raise KitError(f"on_attempt must be attempt numbers from 1, not {on_attempt!r}")
        if error is not None and not (
            isinstance(error, BaseException)
            or (isinstance(error, type) and issubclass(error, BaseException))
        ):
            raise KitError(f"error must be an exception or an exception class, not {error!r}")
        definitions = [definition_of(workflow, version)] if version else versions_of(workflow)
        for definition in definitions:
            spec = definition.steps.get(step)
            if spec is None:
                raise KitError(
                    f"{definition.name} v{definition.version} has no step {step!r}; "
                    f"its steps: {', '.join(definition.steps)}"
                )
            if not isinstance(spec, TaskStep):
                raise KitError(
                    f"{step!r} is a {spec.kind} step: only task steps run code to fail "
                    "(decide, signal or skip time to end the others)"
                )
        pk = str(instance_id) if instance_id is not None else None
        self._faults.append(_Fault(workflow, step, attempts, error, version, pk))
        for definition in definitions:
            self._wrap(definition.steps[step])

    def _wrap(self, spec: TaskStep) -> None:
        if any(wrapped is spec for wrapped, _ in self._wrapped):
            return
        original = spec.fn
        assert original is not None

        def faulty(ctx: StepContext) -> Any:
            for fault in self._faults:
                if fault.matches(ctx):
                    fault.raise_for(ctx)
            return original(ctx)

        self._wrapped.append((spec, original))
        spec.fn = faulty


def _live(bell: _Bell) -> bool:
    """Whether the step (or map item) still waits for this doorbell's attempt (a stale one
    moves no clock)."""
    if bell.task in ("run_map_item", "child_item_sync"):
        states = ("running",) if bell.task == "child_item_sync" else ("scheduled", "retrying")
        return MapItem.objects.filter(
            pk=bell.step_run_id, attempt=bell.attempt, state__in=states
        ).exists()
    step = StepRun.objects.filter(pk=bell.step_run_id).first()
    if step is None:
        return False
    if bell.task == "run_compensation":
        return step.state == StepState.COMPENSATING and step.comp_attempt == bell.attempt
    return step.state in (StepState.SCHEDULED, StepState.RETRYING) and step.attempt == bell.attempt
