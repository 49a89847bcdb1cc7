"""Map-step (fan-out) workflows used by the end-to-end tests, registered in the test process
and in the test worker. Each item records its executions, and applies its effect once by its
idempotency key, in Redis (the test broker's database)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from orchestration.definitions import RetryPolicy, StepContext, Workflow, registry
from orchestration.fanout import ItemContext, map_step
from tests.workflows import ledger

ITEM_RETRY = RetryPolicy(
    max_attempts=3,
    initial_interval=timedelta(milliseconds=100),
    max_interval=timedelta(milliseconds=500),
    jitter=0.1,
)


def _list(ctx: StepContext) -> dict[str, Any]:
    return {"numbers": list(range(int(ctx.input["n"])))}


def apply_effect(ctx: ItemContext, item: Any) -> None:
    """What a user does with ``ctx.idempotency_key``: an external system applies the effect
    once per key (here HSETNX), whatever the number of executions."""
    r = ledger()
    r.hincrby(f"fanout:runs:{ctx.instance_id}", str(ctx.item_index), 1)
    r.hsetnx(f"fanout:effects:{ctx.instance_id}", ctx.idempotency_key, item)


def _square(ctx: ItemContext, item: int) -> int:
    r = ledger()
    running = r.incr(f"fanout:running:{ctx.instance_id}")
    r.rpush(f"fanout:samples:{ctx.instance_id}", running)
    try:
        time.sleep(float(ctx.input.get("sleep", 0.0)))
        apply_effect(ctx, item)
        return item * item
    finally:
        r.decr(f"fanout:running:{ctx.instance_id}")


def _total(ctx: StepContext) -> dict[str, Any]:
    return {"sum": sum(ctx.outputs["square"]), "count": len(ctx.outputs["square"])}


def fanout_workflow(name: str, *, concurrency: int, start_to_close: timedelta) -> Workflow:
    wf = Workflow(name, description=f"list -> map (concurrency {concurrency}) -> total")
    wf.task(_list, name="numbers")
    map_step(
        wf,
        "square",
        items=lambda ctx: ctx.outputs["numbers"]["numbers"],
        after=["numbers"],
        concurrency=concurrency,
        max_items=20_000,
        retry=ITEM_RETRY,
        start_to_close=start_to_close,
    )(_square)
    wf.task(_total, name="total", after=["square"])
    return wf


# The chaos test's workflow: a short start-to-close, so the items a killed worker held are
# retried within seconds (by the item timeout sweeper).
fanout_chaos = registry.register(
    fanout_workflow("t_fanout", concurrency=10, start_to_close=timedelta(seconds=4))
)
fanout_window = registry.register(
    fanout_workflow("t_fanout_window", concurrency=3, start_to_close=timedelta(seconds=30))
)


# Fan-out over child workflows (orchestration.fanout_children): t_fc_parent starts one
# t_fc_item child per number (5 at a time, one failure tolerated); t_fc_parent_wait one
# child_wait per customer (each reserves, with a saga, then waits for a "go" signal).

from orchestration.definitions import NonRetryableError  # noqa: E402
from orchestration.fanout_children import map_children  # noqa: E402
from orchestration.models import WorkflowInstance  # noqa: E402


def _child_item(ctx: StepContext) -> dict[str, Any]:
    """Run by each child: records how many children of its parent run now (the window) and
    its execution; fails for good when told to."""
    r = ledger()
    parent = ctx.input["parent"]
    running = WorkflowInstance.objects.filter(
        parent_item__step_run__instance_id=parent, state="running"
    ).count()
    r.rpush(f"fc:samples:{parent}", running)
    time.sleep(float(ctx.input.get("sleep", 0.0)))
    if ctx.input.get("fail"):
        raise NonRetryableError(f"number {ctx.input['n']} refused")
    r.hincrby(f"fc:runs:{parent}", str(ctx.input["n"]), 1)
    return {"square": ctx.input["n"] ** 2}


fc_item = Workflow(
    "t_fc_item",
    description="a child per number: square it",
    input_schema={
        "type": "object",
        "required": ["n", "parent"],
        "properties": {"n": {"type": "integer"}, "parent": {"type": "string"}},
    },
)
fc_item.task(_child_item, name="square", retry=ITEM_RETRY)
registry.register(fc_item)

fc_parent = Workflow("t_fc_parent", description="list -> a child per number -> total")
fc_parent.task(_list, name="numbers")
map_children(
    fc_parent,
    "squares",
    workflow="t_fc_item",
    items=lambda ctx: ctx.outputs["numbers"]["numbers"],
    after=["numbers"],
    input=lambda ctx, n: {
        "n": n,
        "parent": str(ctx.instance_id),
        "fail": n in ctx.input.get("fail", []),
        "sleep": ctx.input.get("sleep", 0.0),
    },
    concurrency=5,
    tolerate_failures=1,
)
fc_parent.task(
    lambda ctx: {"squares": [o and o["square"]["square"] for o in ctx.outputs["squares"]]},
    name="total",
    after=["squares"],
)
registry.register(fc_parent)

fc_parent_wait = Workflow("t_fc_parent_wait", description="a child_wait per customer")
map_children(
    fc_parent_wait,
    "holds",
    workflow="child_wait",
    items=lambda ctx: ctx.input["customers"],
    input=lambda ctx, customer: {"customer": customer},
    concurrency=2,
)
registry.register(fc_parent_wait)
