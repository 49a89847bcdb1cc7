"""Batch operations end to end, with a real worker: a retry batch over many failed instances
survives a SIGKILLed worker midway, and every instance is retried exactly once.

The instances are written straight into the tables as failed ``t_flaky`` instances (their
``call`` step failed at attempt 1; ``fail_times`` 1, so the retried attempt succeeds): making a
thousand through the engine would take longer than the test itself.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Count
from django.utils import timezone

from orchestration import batch_runner, batches, sweepers
from orchestration.batch_models import BatchOperation
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import wait_for


def failed_flaky_instances(n: int) -> list[WorkflowInstance]:
    now = timezone.now()
    error = {"type": "tests.workflows.Flaky", "message": "transient failure on attempt 1"}
    rows = [
        WorkflowInstance(
            workflow="t_flaky",
            version=1,
            input={"fail_times": 1},
            business_key=f"BATCH-{i:05d}",
            created_at=now - timedelta(seconds=n - i),
            updated_at=now,
            started_at=now,
            finished_at=now,
            state="failed",
            error={"step": "call", **error},
        )
        for i in range(n)
    ]
    WorkflowInstance.objects.bulk_create(rows)
    StepRun.objects.bulk_create(
        [
            step
            for row in rows
            for step in (
                StepRun(
                    instance=row,
                    name="call",
                    position=0,
                    attempt=1,
                    state="failed",
                    error=error,
                    finished_at=now,
                ),
                StepRun(instance=row, name="after_call", position=1, state="pending"),
            )
        ]
    )
    return rows


def progress(batch: BatchOperation) -> BatchOperation:
    return BatchOperation.objects.get(pk=batch.pk)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "count", [100, pytest.param(1000, marks=pytest.mark.chaos, id="1000-chaos")]
)
def test_a_retry_batch_survives_a_worker_kill_and_retries_each_instance_once(
    worker: Any, operator: Any, settings: Any, count: int
) -> None:
    settings.SIGNOFF_DOORBELL_GRACE_SECONDS = 1  # the test process sweeps, standing in for beat
    instances = failed_flaky_instances(count)
    batch = batches.batch_create(
        action="retry",
        filter={"workflow": "t_flaky", "failed_step": "call", "error_type": "Flaky"},
        user=operator,
        reason="the endpoint is back",
        rate=1000,
    )
    assert batch.total == count

    # SIGKILL the worker midway through the batch
    wait_for(
        lambda: progress(batch).handled >= count // 3,
        timeout=120,
        interval=0.02,
        message="a third of the batch",
    )
    worker.kill()
    midway = progress(batch)
    assert midway.state == "running" and midway.handled < count
    # the steps the killed worker had claimed: their start-to-close (5 minutes) is cut short,
    # so the timeout sweeper retries them now; its unacked messages are rung again below
    StepRun.objects.filter(instance__in=instances, state="running").update(
        timeout_at=timezone.now()
    )
    sweepers.sweep_step_timeouts()
    worker.start()

    def recovered() -> bool:
        batch_runner.sweep_stale_batches(stale=timedelta(seconds=2))
        sweepers.sweep_doorbells()
        return progress(batch).state == "done"

    wait_for(recovered, timeout=240, interval=0.5, message="the batch to finish after the kill")
    wait_for(
        lambda: (
            not WorkflowInstance.objects.filter(pk__in=[i.pk for i in instances])
            .exclude(state="succeeded")
            .exists()
        ),
        sweep=True,
        timeout=240,
        interval=0.5,
        message="every retried instance to succeed",
    )
    done = progress(batch)
    assert (done.done, done.skipped, done.failed) == (count, 0, 0)
    assert done.items.filter(outcome="done").count() == count
    retried = dict(
        Event.objects.filter(type="instance_retried", instance__in=instances)
        .values_list("instance")
        .annotate(n=Count("id"))
        .values_list("instance", "n")
    )
    assert len(retried) == count and set(retried.values()) == {1}
    assert set(
        Event.objects.filter(type="instance_retried", instance__in=instances).values_list(
            "actor", flat=True
        )
    ) == {"user:oper"}
