"""The per-row services the sweepers (:mod:`orchestration.sweepers`) call: ring a lost
doorbell again, time out a running attempt, expire an instance past its deadline, act on a
waiting step past its deadline.

Each locks its instance with ``skip_locked`` (another transaction holding it is acting on it
now; the next sweep comes back) and re-checks under the lock that the row is still due.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import journal as journal_module
from ..journal import Doorbell
from ..kinds import get_kind
from ..models import InstanceState, StepRun, StepState
from .advancing import fail_instance
from .locking import lock_instance
from .retrying import attempt_failed
from .task_kind import time_limit_of

I = InstanceState  # noqa: E741
S = StepState
RUNNING = (I.RUNNING,)


def step_ring_again(*, step_run_id: int, older_than: datetime) -> bool:
    """Re-ring the doorbell of a step still ``scheduled``/``retrying`` whose due time and last
    ring are before ``older_than`` (its message was lost). Skips a locked instance."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="sweeper",
            skip_locked=True,
            instance_states=RUNNING,
            step_states=(S.SCHEDULED, S.RETRYING),
        )
        if locked is None or locked.instance.paused_at is not None:
            return False
        step = locked.step
        if (
            step.next_attempt_at is None
            or step.next_attempt_at > older_than
            or (step.rung_at is not None and step.rung_at > older_than)
        ):
            return False
        definition = locked.definition
        spec = definition.steps.get(step.name) if definition else None
        StepRun.objects.filter(pk=step.pk).update(rung_at=timezone.now())
        # Nothing changed state: no event and no instance write, only the doorbell.
        bells = [
            Doorbell(
                step.pk,
                step.attempt,
                None,
                getattr(spec, "queue", None),
                time_limit_of(spec),
            )
        ]
        transaction.on_commit(lambda: journal_module.ring_doorbells(bells))
        return True


def step_time_out(*, step_run_id: int, attempt: int | None = None) -> bool:
    """Time out a ``running`` attempt and apply its retry policy.

    From the sweeper (``attempt`` None): only a step past its start-to-close (or
    schedule-to-close) deadline, skipping a locked instance. From the worker that enforced the
    limit itself (Celery's soft time limit): that exact attempt, if it is still running.
    """
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="sweeper" if attempt is None else "worker",
            skip_locked=attempt is None,
            step_states=(S.RUNNING,),
        )
        if locked is None:
            return False
        step, journal = locked.step, locked.journal
        if step.timeout_at is None:
            return False
        if attempt is None and step.timeout_at > journal.now:
            return False
        if attempt is not None and step.attempt != attempt:
            return False
        definition = locked.definition
        spec = definition.steps.get(step.name) if definition else None
        past_close = step.close_by is not None and step.close_by <= journal.now
        limit = "schedule_to_close" if past_close else "start_to_close"
        step.time_out()
        error = {
            "type": "signoff.StepTimeout",
            "message": f"attempt {step.attempt} exceeded {limit}",
            "traceback": "",
        }
        journal.record("step_timed_out", step=step, data={"limit": limit})
        attempt_failed(
            locked.instance,
            locked.steps,
            step,
            spec,
            definition,
            journal,
            error,
            retryable=not past_close,
            reason="timed_out",
        )
        journal.flush()
        return True


def instance_expire(*, instance_id: Any) -> bool:
    """Fail a running instance past its workflow deadline. Skips a locked instance."""
    with transaction.atomic():
        locked = lock_instance(
            instance_id=instance_id, actor="sweeper", skip_locked=True, instance_states=RUNNING
        )
        if locked is None:
            return False
        instance, journal = locked.instance, locked.journal
        if instance.deadline_at is None or instance.deadline_at > journal.now:
            return False
        error = {
            "type": "signoff.DeadlineExceeded",
            "message": f"workflow deadline {instance.deadline_at.isoformat()} passed",
            "traceback": "",
        }
        if locked.definition is None:
            instance.fail(error)
            instance.finished_at = journal.now
            journal.record("instance_failed", data={"error": error})
        else:
            fail_instance(instance, locked.steps, locked.definition, journal, error)
        journal.flush()
        return True


def waiting_step_deadline(*, step_run_id: int) -> bool:
    """A ``waiting`` step's deadline passed: its kind acts (a timer fires; a signal wait
    applies its ``on_timeout``). Skips a locked instance."""
    with transaction.atomic():
        locked = lock_instance(
            step_run_id=step_run_id,
            actor="sweeper",
            skip_locked=True,
            instance_states=RUNNING,
            step_states=(S.WAITING,),
        )
        if locked is None:
            return False
        step = locked.step
        if step.timeout_at is None or step.timeout_at > locked.journal.now:
            return False
        spec = locked.definition.steps.get(step.name) if locked.definition else None
        if spec is None or not get_kind(spec.kind).timed_out(
            locked=locked, step_run=step, spec=spec
        ):
            return False
        locked.journal.flush()
        return True
