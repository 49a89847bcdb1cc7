"""Map steps end to end: PostgreSQL, Redis and real Celery workers (tests/fanout_workflows.py).

The headline case of issue 15: a 1,000-item fan-out at concurrency 10 loses its worker midway
(SIGKILL, no acks, no cleanup) and still applies each item's effect exactly once, its outputs
in order. Items record their executions and apply their effect once by their idempotency key
(HSETNX), as a user's external system would.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings

from orchestration import engine
from orchestration.fanout_models import MapItem
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import WorkerProcess, wait_for
from tests.workflows import ledger

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _state(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.get(pk=instance.pk).state


def _succeeded_items(instance: WorkflowInstance) -> int:
    return MapItem.objects.filter(step_run__instance=instance, state="succeeded").count()


def _check_exactly_once(instance: WorkflowInstance, n: int) -> dict[int, int]:
    steps = {s.name: s for s in StepRun.objects.filter(instance=instance)}
    assert steps["square"].output == [i * i for i in range(n)]
    assert steps["total"].output == {"sum": sum(i * i for i in range(n)), "count": n}
    effects = ledger().hgetall(f"fanout:effects:{instance.pk}")
    assert len(effects) == n
    assert {k.decode() for k in effects} == {f"{instance.pk}:square:{i}" for i in range(n)}
    runs = {int(k): int(v) for k, v in ledger().hgetall(f"fanout:runs:{instance.pk}").items()}
    assert set(runs) == set(range(n))
    items = {i.index: i for i in MapItem.objects.filter(step_run=steps["square"])}
    assert all(item.state == "succeeded" for item in items.values())
    for index, count in runs.items():
        # An item runs more than once only when an attempt was cut off (a killed worker):
        # never more often than it had attempts.
        assert count <= items[index].attempt, (index, count, items[index].attempt)
    samples = [int(x) for x in ledger().lrange(f"fanout:samples:{instance.pk}", 0, -1)]
    assert max(samples) <= 10
    history = list(
        Event.objects.filter(instance=instance, step="square")
        .order_by("seq")
        .values_list("type", flat=True)
    )
    assert history == ["step_started", "step_succeeded"]
    return runs


def _run_with_a_kill(worker: WorkerProcess, settings_: Any, n: int) -> dict[int, int]:
    # The test process stands in for beat: lost doorbells are rung again after 1 s.
    settings_.SIGNOFF_DOORBELL_GRACE_SECONDS = 1
    settings_.SIGNOFF_DOORBELL_MAX_BACKOFF_SECONDS = 2
    instance, _ = engine.instance_start(workflow="t_fanout", input={"n": n, "sleep": 0.005})
    wait_for(
        lambda: _succeeded_items(instance) >= n // 3,
        timeout=60,
        interval=0.2,
        message="a third of the items",
    )
    worker.kill()  # SIGKILL midway: running items and prefetched messages are lost
    killed_at = _succeeded_items(instance)
    assert killed_at < n
    worker.start()
    wait_for(
        lambda: _state(instance) in ("succeeded", "failed"),
        timeout=90,
        interval=0.5,
        sweep=True,
        message="the fan-out to finish",
    )
    assert _state(instance) == "succeeded"
    return _check_exactly_once(instance, n)


def test_fanout_survives_a_killed_worker_exactly_once(worker: WorkerProcess, settings: Any) -> None:
    """The same kill on 200 items (a few seconds): what `make test` runs."""
    runs = _run_with_a_kill(worker, settings, 200)
    assert set(runs) == set(range(200))


@pytest.mark.chaos
def test_thousand_item_fanout_survives_a_killed_worker_exactly_once(
    worker: WorkerProcess, settings: Any
) -> None:
    """The headline case: 15-30 s on a 2-core machine, so `make chaos` runs it, not `make test`."""
    began = time.monotonic()
    runs = _run_with_a_kill(worker, settings, 1000)
    took = time.monotonic() - began
    again = sorted(i for i, count in runs.items() if count > 1)
    print(f"1,000 items, worker killed midway: {took:.1f} s; items run twice: {again}")
    assert took < 90


def test_the_concurrency_window_holds_with_many_worker_processes(worker: WorkerProcess) -> None:
    wide = WorkerProcess(settings.DATABASES["default"]["NAME"], concurrency=6)
    wide.start()
    try:
        instance, _ = engine.instance_start(
            workflow="t_fanout_window", input={"n": 15, "sleep": 0.3}
        )
        wait_for(lambda: _state(instance) == "succeeded", timeout=60, message="the fan-out")
    finally:
        wide.stop()
    samples = [int(x) for x in ledger().lrange(f"fanout:samples:{instance.pk}", 0, -1)]
    assert len(samples) == 15
    # 8 worker processes could run 8 items at once; the window lets 3 run.
    assert max(samples) == 3
    output = StepRun.objects.get(instance=instance, name="square").output
    assert output == [i * i for i in range(15)]
