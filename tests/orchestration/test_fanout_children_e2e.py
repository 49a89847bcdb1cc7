"""Map steps over child workflows end to end: PostgreSQL, Redis and a real Celery worker
process run the parent's steps, the items' doorbells, the children's steps and their
``child_item_sync`` doorbells (tests/fanout_workflows.py). Nothing here plays the worker."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import engine
from orchestration.fanout_models import MapItem
from orchestration.models import StepRun, WorkflowInstance
from tests.conftest import WorkerProcess, wait_for
from tests.workflows import ledger

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _state(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.get(pk=instance.pk).state


def _children(parent: WorkflowInstance) -> list[WorkflowInstance]:
    return list(
        WorkflowInstance.objects.filter(parent_item__step_run__instance=parent).order_by(
            "parent_item__index", "parent_attempt"
        )
    )


def _steps(instance: WorkflowInstance) -> dict[str, StepRun]:
    return {s.name: s for s in StepRun.objects.filter(instance=instance)}


def test_twenty_children_at_concurrency_five_in_order_with_a_tolerated_failure(
    worker: WorkerProcess,
) -> None:
    parent, _ = engine.instance_start(
        workflow="t_fc_parent", input={"n": 20, "fail": [7], "sleep": 0.05}
    )
    wait_for(
        lambda: _state(parent) in ("succeeded", "failed"),
        timeout=60,
        interval=0.2,
        message="the fan-out over children to finish",
    )
    assert _state(parent) == "succeeded"
    kids = _children(parent)
    # one child per item; the failed one was not retried (one attempt)
    assert [k.parent_item.index for k in kids] == list(range(20))
    assert [k.state for k in kids].count("failed") == 1 and kids[7].state == "failed"
    expected = [None if n == 7 else n * n for n in range(20)]
    assert _steps(parent)["total"].output == {"squares": expected}
    # each child's effect ran exactly once, the failed one's never
    runs = {int(k): int(v) for k, v in ledger().hgetall(f"fc:runs:{parent.pk}").items()}
    assert runs == {n: 1 for n in range(20) if n != 7}
    # the window counted running children: never more than five at once, and it was used
    samples = [int(x) for x in ledger().lrange(f"fc:samples:{parent.pk}", 0, -1)]
    assert len(samples) == 20 and 1 < max(samples) <= 5
    item = MapItem.objects.get(step_run__instance=parent, index=7)
    assert item.state == "failed" and item.error["type"] == "signoff.ChildWorkflowFailed"


def test_cancelling_the_parent_cancels_its_running_children_and_their_sagas_unwind(
    worker: WorkerProcess, settings: Any
) -> None:
    parent, _ = engine.instance_start(
        workflow="t_fc_parent_wait", input={"customers": ["c-1", "c-2", "c-3"]}
    )
    wait_for(
        lambda: (
            len(_children(parent)) == 2
            and all(_steps(k)["go"].state == "waiting" for k in _children(parent))
        ),
        message="two children (the window) to reserve and wait",
    )
    engine.instance_cancel(instance_id=parent.pk, reason="deal lost", actor="test")
    wait_for(
        lambda: {_state(k) for k in _children(parent)} == {"compensated"},
        message="the children's sagas to unwind",
    )
    kids = _children(parent)
    assert len(kids) == 2  # the third item never started a child
    assert _state(parent) == "cancelled"
    assert all(ledger().hget(f"ledger:{k.pk}", "released") == b"1" for k in kids)
    assert set(
        MapItem.objects.filter(step_run__instance=parent).values_list("state", flat=True)
    ) == {"cancelled"}
