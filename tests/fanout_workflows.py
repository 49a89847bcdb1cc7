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
