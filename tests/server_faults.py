"""Restart a server in the middle of real work and prove nothing was lost or doubled: shared
by the PgBouncer and RabbitMQ fault tests (tests/test_pgbouncer.py, tests/test_rabbitmq.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from orchestration import engine
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import wait_for
from tests.workflows import ledger

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["p1", "p2", "p3", "p4"]


def script(*args: str) -> None:
    """Run one of scripts/*.sh (they install, start and restart the servers)."""
    subprocess.run([str(ROOT / "scripts" / args[0]), *args[1:]], check=True, timeout=120)


def run_through(fault: Callable[[], None], *, instances: int = 8, timeout: float = 90) -> dict:
    """Start ``instances`` t_paced workflows, call ``fault`` once some steps have finished and
    others have not, wait until every instance is finished (sweeping, as beat would) and check:
    every instance succeeded, every step function ran at most once per attempt and succeeded
    exactly once, every step's last attempt is the one the ledger saw, and each history is
    gap-free with one start and one end. Returns counts for the test to report."""
    started = [engine.instance_start(workflow="t_paced")[0] for _ in range(instances)]
    ids = [i.pk for i in started]

    def progress() -> int:
        return StepRun.objects.filter(instance_id__in=ids, state="succeeded").count()

    total = instances * len(STEPS)
    wait_for(lambda: progress() >= 2, timeout=30, message="work under way")
    before = progress()
    assert before < total, "the run finished before the fault: nothing was tested"
    fault()
    wait_for(
        lambda: (
            not WorkflowInstance.objects.filter(
                pk__in=ids, state__in=["pending", "running", "compensating"]
            ).exists()
        ),
        sweep=True,
        timeout=timeout,
        interval=0.25,
        message="every instance to finish after the fault",
    )
    retried = 0
    for instance in WorkflowInstance.objects.filter(pk__in=ids):
        assert instance.state == "succeeded", instance.state
        runs = {k.decode(): int(v) for k, v in ledger().hgetall(f"ledger:{instance.pk}").items()}
        assert all(count == 1 for count in runs.values()), runs  # once per attempt
        for step in StepRun.objects.filter(instance=instance):
            assert step.state == "succeeded", (step.name, step.state)
            assert runs.get(f"{step.name}:{step.attempt}") == 1, (step.name, runs)
            retried += step.attempt - 1
        events = list(Event.objects.filter(instance=instance).order_by("seq"))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        types = [e.type for e in events]
        assert types.count("instance_started") == 1 and types.count("instance_succeeded") == 1
        succeeded = [e.step for e in events if e.type == "step_succeeded"]
        assert len(succeeded) == len(set(succeeded)) == len(STEPS), types
    return {"done_before_fault": before, "total": total, "retried_attempts": retried}
