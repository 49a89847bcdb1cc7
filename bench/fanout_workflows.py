"""The map-step workflows bench/fanout.py measures: ``bench_map_c<N>`` fans out over
``range(input["n"])`` at concurrency N with an item function that does no work of its own, so
what is measured is the engine's cost per item."""

from __future__ import annotations

from typing import Any

from orchestration.definitions import StepContext, Workflow, registry
from orchestration.fanout import ItemContext, map_step

CONCURRENCIES = (10, 50)


def _identity(ctx: ItemContext, item: int) -> int:
    return item


def _numbers(ctx: StepContext) -> list[int]:
    return list(range(int(ctx.input["n"])))


def _make(concurrency: int) -> Workflow:
    wf = Workflow(f"bench_map_c{concurrency}", description=f"map at concurrency {concurrency}")
    map_step(wf, "each", items=_numbers, concurrency=concurrency, max_items=100_000)(_identity)
    return wf


WORKFLOWS: dict[int, Any] = {c: registry.register(_make(c)) for c in CONCURRENCIES}
