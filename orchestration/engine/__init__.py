"""The engine: every write to instances and steps goes through these services.

Shape of each service (house style, trait 3): ``transaction.atomic()`` → lock the instance row
through :func:`lock_instance` (the instance row is the lock for the instance *and all its
steps*, so locks are always taken in one order and parallel branches serialize on it) → check
→ django-fsm transitions → one event per state change → write → doorbells (Celery messages)
after commit.

Public services are keyword-only and return plain values; they raise
:class:`~orchestration.errors.SignoffError` subclasses for business errors and change nothing
when they do. Callers use this package (``from orchestration import engine``); its modules:

- :mod:`.locking` — :func:`lock_instance` / :class:`LockedInstance`, the one way in, and the
  hot path's fixed SQL;
- :mod:`.context` — the step context, stored outputs, error info, fingerprints;
- :mod:`.starting` — :func:`instance_start`;
- :mod:`.batch_starting` — :func:`instances_start_batch` (many starts in one transaction);
- :mod:`.stepping` — a task step's attempt: claim, execute, complete, fail;
- :mod:`.retrying` — the retry policy of a failed or timed-out attempt;
- :mod:`.advancing` — start ready steps through their kinds; succeed, fail, cancel an instance;
- :mod:`.compensating` — the saga under the lock (its attempts run in
  :mod:`orchestration.saga`);
- :mod:`.cancelling` — cancelling one step;
- :mod:`.revising` — revising a running instance's input;
- :mod:`.operator` — operator and API actions (cancel, retry, pause, complete by hand, ...);
- :mod:`.repairing` — operator repair: edit input or output, skip, reset, resolve an undo;
- :mod:`.sweeping` — what the sweepers call: ring again, time out, expire, waiting deadlines;
- :mod:`.task_kind` — the ``task`` step kind.
"""

from .batch_starting import MAX_BATCH_ITEMS, BatchItemResult, instances_start_batch
from .context import (
    definition_of,
    error_info,
    jsonable,
    request_fingerprint,
    scrubbed_error,
    step_context,
    stored_output,
)
from .locking import LockedInstance, lock_instance
from .operator import (
    instance_cancel,
    instance_pause,
    instance_resume,
    instance_retry,
    instance_revise_input,
    instance_unpause,
    step_complete_manually,
    step_retry_now,
)
from .repairing import (
    compensation_resolve,
    instance_edit_input,
    instance_reset,
    step_by_name,
    step_edit_output,
    step_skip,
)
from .starting import MAX_KEY_LENGTH, instance_start, requester_input
from .stepping import (
    Claimed,
    complete_attempt,
    step_claim,
    step_complete,
    step_execute,
    step_fail,
)
from .sweeping import instance_expire, step_ring_again, step_time_out, waiting_step_deadline
from .task_kind import TaskKind, schedule_task

# Older names other apps, tests and benchmarks use.
_complete = complete_attempt
_jsonable = jsonable
step_schedule = schedule_task

__all__ = [
    "MAX_BATCH_ITEMS",
    "MAX_KEY_LENGTH",
    "BatchItemResult",
    "Claimed",
    "LockedInstance",
    "TaskKind",
    "complete_attempt",
    "compensation_resolve",
    "definition_of",
    "error_info",
    "instance_cancel",
    "instance_edit_input",
    "instance_expire",
    "instance_pause",
    "instance_reset",
    "instance_resume",
    "instance_retry",
    "instance_revise_input",
    "instance_start",
    "instances_start_batch",
    "instance_unpause",
    "jsonable",
    "lock_instance",
    "request_fingerprint",
    "requester_input",
    "schedule_task",
    "scrubbed_error",
    "step_by_name",
    "step_claim",
    "step_complete",
    "step_complete_manually",
    "step_context",
    "step_edit_output",
    "step_execute",
    "step_fail",
    "step_retry_now",
    "step_ring_again",
    "step_skip",
    "step_time_out",
    "stored_output",
    "waiting_step_deadline",
]
