"""The ``map`` step kind: dynamic fan-out, one run of a function per item of a list.

Example::

    @map_step(wf, "resize", items=lambda ctx: ctx.outputs["list"]["files"], after=["list"],
              concurrency=10, max_items=10_000, tolerate_failures=0,
              retry=RetryPolicy(max_attempts=3))
    def resize(ctx: ItemContext, item: dict) -> dict:
        return {"thumb": make_thumb(item, key=ctx.idempotency_key)}

When the step becomes ready, ``items(ctx)`` is evaluated once, under the instance lock. A value
that is not a list, or a list longer than ``max_items``, fails the step at once (not retried,
no item written). Otherwise each item gets a :class:`~.fanout_models.MapItem` row and the first
``concurrency`` of them are scheduled; the step waits (state ``waiting``) while they run. Each
item has its own attempts under the step's retry policy, and its context carries its index:
``ctx.item_index``, and an ``idempotency_key`` of ``<instance>:<step>:<index>``.

The step's output is the list of the items' outputs in index order. With
``tolerate_failures=N`` up to N items may fail for good: their places in the output hold
``None`` (their errors are on the item rows, counted in the API's ``items``); one more
failure, or with the default 0 the first, fails the step at once ("fail fast"): pending items
are cancelled and the step's error names the item and why.

Items are run by an *item runner* (:mod:`.fanout_runners`, the seam for a child workflow per
item); an item's attempt is :mod:`.fanout_items`, settling the step :mod:`.fanout_settle`. This
module is the DSL and the kind (ready, retried by an operator, cancelled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext_noop

from . import sealing
from .definitions import Predicate, RetryPolicy, StepContext, StepSpec, Workflow
from .engine import definition_of, step_context
from .engine.advancing import fail_instance
from .engine.context import error_info, jsonable
from .errors import Conflict, Message
from .fanout_models import MapItem, MapItemState, MapRun
from .fanout_runners import (
    ItemContext,
    cancel_open_items,
    get_item_runner,
    in_flight,
    schedule_pending,
)
from .fanout_settle import settle_locked
from .journal import Journal
from .jsonsafe import storable_json_problem
from .kinds import StepKind, register_kind
from .models import StepRun

M = MapItemState
MAX_ITEMS_DEFAULT = 10_000


@dataclass
class MapStep(StepSpec):
    """Run ``fn(ctx, item)`` once per item of ``items(ctx)``, at most ``concurrency`` at a
    time; the output is the items' outputs in order."""

    fn: Callable[[ItemContext, Any], Any] | None = None
    items: Callable[[StepContext], Any] | None = None
    concurrency: int = 10
    max_items: int = MAX_ITEMS_DEFAULT
    tolerate_failures: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    start_to_close: timedelta = timedelta(minutes=5)
    queue: str | None = None
    # How items run: "task" (a Celery task per item). The seam for other runners (a child
    # workflow per item): orchestration.fanout_items.register_item_runner.
    runner: str = "task"
    kind: str = "map"
    # Whether items run ``fn`` (a runner starting a child workflow per item needs none).
    needs_fn: ClassVar[bool] = True

    def item_deadline(self, now: datetime) -> datetime | None:
        """When an item's attempt claimed at ``now`` times out (None: never)."""
        return now + self.start_to_close

    def problems(self) -> list[str]:
        found = []
        if self.needs_fn and not callable(self.fn):
            found.append("fn must be callable")
        if not callable(self.items):
            found.append("items must be a callable returning the list")
        for name in ("concurrency", "max_items"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                found.append(f"{name} must be an integer >= 1, got {value!r}")
        tolerate = self.tolerate_failures
        if not isinstance(tolerate, int) or isinstance(tolerate, bool) or tolerate < 0:
            found.append(f"tolerate_failures must be an integer >= 0, got {tolerate!r}")
        if not isinstance(self.retry, RetryPolicy):
            found.append("retry must be a RetryPolicy")
        else:
            found.extend(self.retry.problems())
        if not isinstance(self.start_to_close, timedelta) or self.start_to_close <= timedelta(0):
            found.append("start_to_close must be a positive timedelta")
        if self.queue is not None and not (isinstance(self.queue, str) and self.queue):
            found.append("queue must be a non-empty string")
        try:
            get_item_runner(self.runner)
        except LookupError as exc:
            found.append(str(exc))
        return found

    def problems_in(self, workflow: Workflow) -> list[str]:
        prefix = f"outputs.{self.name}."
        if any(p.startswith(prefix) for p in workflow.sensitive):
            return [
                "a map step's output is a list: it cannot declare sensitive output fields "
                f"({prefix}...); seal what the items need in the input instead"
            ]
        return []

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "concurrency": self.concurrency,
            "max_items": self.max_items,
            "tolerate_failures": self.tolerate_failures,
            "retry": self.retry.describe(),
            "start_to_close": self.start_to_close.total_seconds(),
            "queue": self.queue,
            "runner": self.runner,
        }


def map_step(
    workflow: Workflow,
    name: str | None = None,
    *,
    items: Callable[[StepContext], Any],
    after: Iterable[str] | str = (),
    when: Predicate | None = None,
    concurrency: int = 10,
    max_items: int = MAX_ITEMS_DEFAULT,
    tolerate_failures: int = 0,
    retry: RetryPolicy | None = None,
    start_to_close: timedelta = timedelta(minutes=5),
    queue: str | None = None,
    runner: str = "task",
) -> Callable[[Callable[[ItemContext, Any], Any]], Callable[[ItemContext, Any], Any]]:
    """Declare a map step; decorates the per-item function ``fn(ctx, item)`` (the step is
    named after it unless ``name`` is given). Invalid settings raise
    :class:`~orchestration.definitions.DefinitionError` when the workflow is registered."""

    def decorate(fn: Callable[[ItemContext, Any], Any]) -> Callable[[ItemContext, Any], Any]:
        workflow.add(
            MapStep(
                name=name or fn.__name__,
                after=(after,) if isinstance(after, str) else tuple(after),
                when=when,
                fn=fn,
                items=items,
                concurrency=concurrency,
                max_items=max_items,
                tolerate_failures=tolerate_failures,
                retry=retry if retry is not None else RetryPolicy(),
                start_to_close=start_to_close,
                queue=queue,
                runner=runner,
            )
        )
        return fn

    return decorate


# -- the kind ----------------------------------------------------------------------------------


def items_problem(items: Any, max_items: int) -> str | None:
    """Why ``items`` cannot be fanned out over, or None."""
    if not isinstance(items, list):
        return f"items must be a list, got {type(items).__name__}"
    if len(items) > max_items:
        return f"{len(items)} items exceed max_items={max_items}"
    try:
        jsonable(items)
    except (TypeError, ValueError) as exc:
        return f"items must be JSON: {exc}"
    return storable_json_problem(items)


class MapKind(StepKind):
    name = "map"

    def ready(self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime) -> None:
        assert isinstance(spec, MapStep)
        try:
            items = spec.items(step_context(journal, step_run)) if spec.items else None
        except Exception as exc:  # noqa: BLE001 - a broken items function fails the step
            info = error_info(exc)
            _fail_before_start(
                step_run,
                journal,
                reason="items_raised",
                type_=info["type"],
                message=info["message"],
            )
            return
        problem = items_problem(items, spec.max_items)
        if problem:
            _fail_before_start(
                step_run,
                journal,
                reason="invalid_items",
                type_="signoff.InvalidItems",
                message=problem,
            )
            return
        items = jsonable(items)
        step_run.wait()
        step_run.started_at = now
        step_run.finished_at = None
        step_run.timeout_at = None
        step_run.error = None
        journal.record(
            "step_started",
            step=step_run,
            data={
                "items": len(items),
                "concurrency": spec.concurrency,
                "tolerate_failures": spec.tolerate_failures,
            },
        )
        if not items:
            _resolve_empty(step_run, journal)
            return
        definition = definition_of(journal.instance)
        sealed = bool(definition and definition.sensitive)
        journal.after_write(lambda: _create_items(step_run, spec, items, sealed, now))

    def retried(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        """Run again only the items that failed or were cancelled; succeeded items keep their
        outputs. A step that failed before it had items evaluates ``items`` afresh. Refused
        (:class:`Conflict`, nothing changed) while items of the failed step still run."""
        assert isinstance(spec, MapStep)
        run = MapRun.objects.select_for_update().filter(pk=step_run.pk).first()
        if run is None:
            self.ready(step_run=step_run, spec=spec, journal=journal, now=now)
            return
        running = in_flight(step_run.pk)
        if running:
            raise Conflict(
                Message(
                    gettext_noop(
                        "%(count)s items of step %(step)s are still running; retry when they "
                        "have finished"
                    ),
                    count=running,
                    step=step_run.name,
                ),
                code="items_in_flight",
            )
        rerun = MapItem.objects.filter(
            step_run_id=step_run.pk, state__in=[M.FAILED, M.CANCELLED]
        ).update(
            state=M.PENDING,
            attempt_base=F("attempt"),
            error=None,
            finished_at=None,
            next_attempt_at=None,
            timeout_at=None,
        )
        if run.state == "settled":
            run.reopen()
            run.save(update_fields=["state", "round"])
        step_run.wait()
        step_run.started_at = now
        step_run.finished_at = None
        step_run.error = None
        journal.record("step_started", step=step_run, data={"retry": True, "items_rerun": rerun})
        if not schedule_pending(step_run.pk, spec, now=now, limit=run.concurrency):
            settle_locked(journal, step_run, spec, run)  # nothing left to run

    def cancelled(
        self, *, step_run: StepRun, spec: StepSpec, journal: Journal, now: datetime
    ) -> None:
        """The instance was cancelled or failed: cancel the items not running; running ones
        finish and are recorded on their rows, starting nothing new."""
        run = MapRun.objects.select_for_update().filter(pk=step_run.pk).first()
        if run is None or run.state != "running":
            return
        cancel_open_items(step_run.pk, spec, now=now)
        run.settle()
        run.save(update_fields=["state"])

    def state_label(self, state: str) -> str:
        if state == "waiting":
            return "map · items running"
        return super().state_label(state)


def _fail_before_start(
    step: StepRun, journal: Journal, *, reason: str, type_: str, message: str
) -> None:
    """Bad input: the step fails at once (not retried) and so does the instance; no item is
    written."""
    error = {"type": type_, "message": message, "traceback": ""}
    if step.state == "pending":
        step.fail_before_start()
    else:  # an operator's retry of a step that failed before it had items
        step.wait()
        step.reject()
    step.error = error
    step.finished_at = journal.now
    journal.record("step_failed", step=step, data={"reason": reason, "error": error})
    definition = definition_of(journal.instance)
    if definition is not None:
        fail_instance(
            journal.instance,
            journal.steps,
            definition,
            journal,
            {"step": step.name, "reason": reason, **error},
        )


def _resolve_empty(step: StepRun, journal: Journal) -> None:
    step.resolve([])
    step.finished_at = journal.now
    journal.record("step_succeeded", step=step, data={"items": 0, "failed": 0})


def _create_items(
    step: StepRun, spec: MapStep, items: list[Any], sealed: bool, now: datetime
) -> None:
    """Write the items (the step has its id now) and schedule the first ``concurrency``."""
    MapItem.objects.bulk_create(
        [
            MapItem(
                step_run_id=step.pk,
                index=i,
                item=sealing.seal_value(value) if sealed else value,
            )
            for i, value in enumerate(items)
        ],
        batch_size=2000,
    )
    MapRun(
        step_run_id=step.pk,
        total=len(items),
        concurrency=spec.concurrency,
        tolerate=spec.tolerate_failures,
    ).save(force_insert=True)
    schedule_pending(step.pk, spec, now=now or timezone.now(), limit=spec.concurrency)


register_kind(MapKind())
