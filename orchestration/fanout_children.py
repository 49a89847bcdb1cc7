"""Fan-out over child workflows: a ``map`` step whose items each run as a child workflow.

Example::

    map_children(onboarding, "check_documents", workflow="document_check",
                 items=lambda ctx: ctx.input["documents"], after=["register"],
                 input=lambda ctx, doc: {"document": doc},
                 concurrency=5, tolerate_failures=1)

It is an ordinary map step (:mod:`orchestration.fanout`) with the ``child`` item runner: the
same ``items`` check, concurrency window, per-item retry policy (a new child per attempt),
failure policy and output (the children's outputs in index order; a failed item's place holds
``None``). What differs is how an item runs:

- **Started with its claim.** The item's doorbell (``run_map_item``) claims the item
  (``scheduled`` → ``running``) and, in that same transaction, writes its child instance,
  linked by ``WorkflowInstance.parent_item`` / ``parent_attempt`` (unique together): one child
  per item attempt, however often the doorbell rings or a worker dies. The child's input comes
  from ``input(ctx, item)`` and is checked as a ``child`` step's is
  (:func:`orchestration.children.child_start_values`); an invalid one fails the item for good.
  The claim takes a share lock on the parent instance first, so a parent being cancelled is
  seen: the item is dropped and no child starts.
- **Counted while its child runs.** The item stays ``running`` until its child ends, so the
  concurrency limit counts running children.
- **Told when its child ends.** The child's journal rings ``child_item_sync`` after its
  commit; :func:`child_item_sync` records the outcome through the item services
  (:func:`~orchestration.fanout_items.item_complete` / ``item_fail``). A lost doorbell is
  picked up by :func:`due_child_items` (the waiting-deadline sweeper).
- **Stopped with its step.** When the step is cancelled (the parent cancelled) or fails
  (fail fast), the running items' children are cancelled in the parent's transaction (lock
  order parent, then child, as for a ``child`` step) and their sagas unwind.

A child item has no attempt timeout of its own: give the child workflow a ``deadline``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.db.models import F
from django.utils import timezone

from . import fanout_sql
from .children import StepFailure, child_cancel, child_output, child_start_values
from .children import child_workflow_problems as _child_workflow_problems
from .definitions import Predicate, RetryPolicy, StepContext, Workflow
from .engine.starting import child_create
from .fanout import MAX_ITEMS_DEFAULT, MapStep
from .fanout_items import item_complete, item_fail
from .fanout_models import MapItem, MapItemState
from .fanout_runners import (
    ItemContext,
    ItemNotStarted,
    TaskItemRunner,
    register_item_runner,
)
from .models import INSTANCE_FINISHED, InstanceState, StepState, WorkflowInstance

M = MapItemState
I = InstanceState  # noqa: E741
FAILED_TYPE = "signoff.ChildWorkflowFailed"


@dataclass
class ChildMapStep(MapStep):
    """Start ``workflow`` (``version``, default: the newest) once per item of ``items(ctx)``
    with ``input(ctx, item)``, at most ``concurrency`` children at a time; the output is the
    children's outputs in index order."""

    workflow: str = ""
    version: int | None = None
    input: Callable[[ItemContext, Any], dict[str, Any]] | None = None
    business_key: Callable[[ItemContext, Any], str] | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=1))
    runner: str = "child"
    needs_fn: ClassVar[bool] = False

    def item_deadline(self, now: datetime) -> datetime | None:
        return None  # a child runs as long as it needs (its own deadline bounds it)

    def problems(self) -> list[str]:
        found = super().problems()
        if not isinstance(self.workflow, str) or not self.workflow:
            found.append("workflow must name a registered workflow")
        if self.version is not None and (
            not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1
        ):
            found.append("version must be an integer >= 1 or None (the newest)")
        for name in ("input", "business_key"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                found.append(f"{name} must be callable (ctx, item -> value) or None")
        if self.runner != "child":
            found.append("a map step over child workflows uses the 'child' item runner")
        return found

    def problems_in(self, workflow: Workflow) -> list[str]:
        found = super().problems_in(workflow)
        if isinstance(self.workflow, str) and self.workflow:
            found.extend(_child_workflow_problems(workflow, self.workflow, self.version))
        return found

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "workflow": self.workflow, "version": self.version}


def map_children(
    parent: Workflow,
    name: str,
    /,
    *,
    workflow: str,
    items: Callable[[StepContext], Any],
    after: Iterable[str] | str = (),
    when: Predicate | None = None,
    input: Callable[[ItemContext, Any], dict[str, Any]] | None = None,
    version: int | None = None,
    business_key: Callable[[ItemContext, Any], str] | None = None,
    concurrency: int = 10,
    max_items: int = MAX_ITEMS_DEFAULT,
    tolerate_failures: int = 0,
    retry: RetryPolicy | None = None,
    queue: str | None = None,
) -> ChildMapStep:
    """Add to ``parent`` a map step that starts the workflow named ``workflow`` as a child once
    per item. ``input(ctx, item)`` gives a child's input (default ``{"item": item}``),
    ``business_key(ctx, item)`` its business key (default: the parent's). ``retry``: a failed
    child is followed by a new one for its item while attempts are left (default: one attempt).
    Invalid settings, an unknown child workflow or a cycle raise
    :class:`~orchestration.definitions.DefinitionError` when ``parent`` is registered."""
    step = ChildMapStep(
        name=name,
        after=(after,) if isinstance(after, str) else tuple(after),
        when=when,
        items=items,
        concurrency=concurrency,
        max_items=max_items,
        tolerate_failures=tolerate_failures,
        retry=retry if retry is not None else RetryPolicy(max_attempts=1),
        queue=queue,
        workflow=workflow,
        version=version,
        input=input,
        business_key=business_key,
    )
    parent.add(step)
    return step


# -- the runner ----------------------------------------------------------------------------------


class ChildItemRunner(TaskItemRunner):
    """Each item's doorbell claims it and starts its child in the claim's transaction."""

    name = "child"

    def begin(
        self,
        item: MapItem,
        spec: Any,
        context: ItemContext,
        value: Any,
        steps: dict[str, Any],
    ) -> bool:
        step = item.step_run
        parent = step.instance
        if not fanout_sql.step_still_waiting(step.pk, parent.pk):
            # The parent was cancelled or failed while this item was being claimed.
            item.abandon()
            item.finished_at = timezone.now()
            fanout_sql.save_item(item, ["state", "finished_at"])
            return True
        assert isinstance(spec, ChildMapStep)
        try:
            definition, input, key = child_start_values(
                workflow=spec.workflow,
                version=spec.version,
                parent=parent,
                parent_outputs=[s.output for s in steps.values()],
                make_input=(
                    (lambda: spec.input(context, value))
                    if spec.input is not None
                    else (lambda: {"item": value})
                ),
                make_key=(
                    (lambda: spec.business_key(context, value))
                    if spec.business_key is not None
                    else None
                ),
            )
        except StepFailure as exc:
            raise ItemNotStarted(exc.error) from exc
        child_create(
            definition,
            input=input,
            business_key=key,
            parent_item=item,
            parent_attempt=item.attempt,
            instance_id=uuid.uuid4(),
            started_by=parent.started_by if parent.started_by_id else None,
            actor="system",
        )
        return True

    def cancel_running(self, step_run_id: int, spec: Any, *, now: datetime) -> int:
        """Cancel the children of the step's running items (their sagas unwind) and drop the
        items. SKIP LOCKED: an item being claimed now sees its step stopped when the parent's
        lock is released, and starts no child; one being completed has a child that ended."""
        running = list(
            MapItem.objects.select_for_update(skip_locked=True).filter(
                step_run_id=step_run_id, state=M.RUNNING
            )
        )
        for item in running:
            child = (
                WorkflowInstance.objects.filter(parent_item=item, parent_attempt=item.attempt)
                .only("pk", "state")
                .first()
            )
            if child is not None and child.state not in INSTANCE_FINISHED:
                child_cancel(
                    child_id=child.pk,
                    actor="system",
                    reason=f"map step {spec.name} item {item.index} was cancelled",
                )
            item.abandon()
            item.finished_at = now
            item.timeout_at = None
            item.save(update_fields=["state", "finished_at", "timeout_at"])
        return len(running)


register_item_runner(ChildItemRunner())


# -- the doorbell and the sweeper ------------------------------------------------------------------


def child_item_sync(*, item_id: int, attempt: int) -> str:
    """A child item's child ended: record its outcome on the item (its output, or a failed
    attempt under the step's retry policy). Idempotent: a repeated or stale doorbell (another
    attempt, an item no longer running) changes nothing. Returns ``child_<state>``,
    ``running`` (the child has not ended) or ``stale``."""
    child = (
        WorkflowInstance.objects.filter(parent_item_id=item_id, parent_attempt=attempt)
        .only("pk", "workflow", "state", "input", "output", "error")
        .first()
    )
    if child is None:
        return "stale"
    if child.state not in INSTANCE_FINISHED:
        return "running"
    if child.state == I.SUCCEEDED:
        done = item_complete(item_id=item_id, attempt=attempt, output=child_output(child))
    else:
        reason = (child.error or {}).get("message") if isinstance(child.error, dict) else None
        message = f"child {child.workflow} {child.pk} ended {child.state}"
        if reason:
            message += f": {str(reason)[:500]}"
        done = item_fail(
            item_id=item_id,
            attempt=attempt,
            error={"type": FAILED_TYPE, "message": message, "traceback": ""},
            retryable=True,
        )
    return f"child_{child.state}" if done else "stale"


def due_child_items(now: datetime, batch: int, grace: timedelta) -> list[tuple[int, int]]:
    """``(item id, attempt)`` of running child items whose current child ended more than
    ``grace`` ago (its doorbell was lost): the sweeper's backstop."""
    return list(
        MapItem.objects.filter(
            state=M.RUNNING,
            step_run__state=StepState.WAITING,
            child_instances__state__in=INSTANCE_FINISHED,
            child_instances__parent_attempt=F("attempt"),
            child_instances__finished_at__lte=now - grace,
        )
        .order_by("pk")
        .values_list("pk", "attempt")[:batch]
    )
