"""The chaos run's own workflows (``bench/chaos.py``), with flaky steps and a ledger.

Loaded through ``SIGNOFF_WORKFLOW_MODULES=bench.chaos_workflows`` by the chaos run's web
server, workers and the chaos process itself; nothing else imports it.

Five shapes, every task step (and every map item) flaky:

- ``chaos_sequence``: ``one → two → three → four``.
- ``chaos_parallel``: ``split`` → ``left``, ``middle``, ``right`` in parallel → ``join``.
- ``chaos_approval``: ``prepare`` → ``manager_ok`` (policy any of chaos_a, chaos_b) and
  ``finance_ok`` (policy all of chaos_a, chaos_b) in parallel → ``book``.
- ``chaos_saga``: ``reserve`` → ``charge`` and ``hold`` in parallel → ``ship``; the first three
  have compensations, declared ``compensate_attempted=True``: a step that never succeeded is
  undone too once one of its attempts was claimed (it may have applied its effect and then
  failed). With ``"doom": true`` in the input, ``hold`` fails for good (a non-retryable
  error, after its transient failures, some of which applied its effect) while ``charge`` may
  still be scheduled, running or waiting to retry, and the saga unwinds: the instance must end
  ``compensated``, ``reserve`` and ``hold`` compensated, ``charge`` compensated (or cancelled
  if no attempt of it was ever claimed) and ``ship`` cancelled. Every compensation checks what
  it is given: the step's own output, or output None with ``ctx.attempted_only`` for a step
  that never succeeded; anything else fails it for good (the instance would end ``failed``).
- ``chaos_family``: ``split`` → in parallel ``fan`` (a map step: a flaky task per item, four
  items, two at a time), ``kid`` (a child step: a ``chaos_kid``) and ``brood`` (a map step over
  child workflows: a ``chaos_kid`` per item, three items, two at a time) → ``join``. A
  ``chaos_kid`` is ``work → done``. Children are instances too: they carry the parent's
  business key, and their input carries the family's ``seed``, ``n`` (``<n>/kid`` or
  ``<n>/brood/<index>``) and ``fail_rate``.

Transient failures: an attempt fails when a hash of ``(seed, phase, step key, attempt)`` falls
under ``fail_rate`` (input, default 0.2), so every process agrees on which attempts fail. The
step key is ``<n>:<step>`` (``n`` is the instance's number in the run, from its input) rather
than the idempotency key (``<instance uuid>:<step>``), so a seed fails the same attempts in
every run. Half of the failing attempts fail *before* their side
effect, the other half *after* it (a lost response: the effect is applied, the attempt still
fails), so a retry meets its own earlier effect.

Ledger (raw SQL tables in the chaos database, created by ``bench/chaos.py``):

- ``chaos_ledger``: the side effects, primary key ``(key, phase)`` where ``key`` is the step's
  idempotency key and ``phase`` is ``forward`` or ``compensate``; applied with ``INSERT ... ON
  CONFLICT DO NOTHING``, so a retried attempt never applies it twice.
- ``chaos_executions``: one row per execution event (``started``, ``failed``,
  ``completed``) with the key, phase and attempt, so the checker counts executions per
  ``(key, phase, attempt)``.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any

from django.db import connection

from approvals.definitions import approval
from orchestration.children import child_step
from orchestration.definitions import (
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    registry,
)
from orchestration.fanout import ItemContext, map_step
from orchestration.fanout_children import map_children

DEFAULT_FAIL_RATE = 0.2
APPROVERS = ("chaos_a", "chaos_b")
WORKFLOWS = ("chaos_sequence", "chaos_parallel", "chaos_approval", "chaos_saga", "chaos_family")
# Started by a chaos_family, never by the plan.
CHILD_WORKFLOWS = ("chaos_kid",)

# Generous: a step may lose attempts to transient failures (20 %) and to killed workers
# (a timed-out attempt counts as one); 0.2 ** 12 makes exhaustion by chance negligible.
RETRY = RetryPolicy(
    max_attempts=12,
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=2),
)
# An attempt whose worker was SIGKILLed stays `running` until the timeout sweeper sees it.
STEP_TIMEOUT = timedelta(seconds=5)

LEDGER_DDL = [
    """
    CREATE TABLE IF NOT EXISTS chaos_ledger (
        key text NOT NULL,
        phase text NOT NULL,
        attempt integer NOT NULL,
        pid integer NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (key, phase)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS chaos_executions (
        id bigserial PRIMARY KEY,
        key text NOT NULL,
        phase text NOT NULL,
        attempt integer NOT NULL,
        event text NOT NULL,
        applied boolean,
        pid integer NOT NULL,
        at timestamptz NOT NULL DEFAULT clock_timestamp()
    )
    """,
    "CREATE INDEX IF NOT EXISTS chaos_executions_key ON chaos_executions (key, phase, attempt)",
]


class ChaosTransientError(Exception):
    """An injected transient failure; the engine retries it."""


class ChaosDoomed(NonRetryableError):
    """The doomed saga's ``hold``: fails for good, so the saga unwinds."""


def roll(seed: Any, phase: str, key: str, attempt: int) -> float:
    """A number in [0, 1) that every process computes alike for one attempt."""
    digest = hashlib.sha256(f"{seed}|{phase}|{key}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _execution(key: str, phase: str, attempt: int, event: str, applied: bool | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO chaos_executions (key, phase, attempt, event, applied, pid) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [key, phase, attempt, event, applied, os.getpid()],
        )


def _apply_effect(key: str, phase: str, attempt: int) -> bool:
    """The side effect, idempotent by the step's key: True when this call applied it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO chaos_ledger (key, phase, attempt, pid) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key, phase) DO NOTHING",
            [key, phase, attempt, os.getpid()],
        )
        return cursor.rowcount == 1


def run_flaky(ctx: StepContext, phase: str = "forward", *, doomed: bool = False) -> dict[str, Any]:
    """One execution of a chaos step (or compensation): log it, maybe fail, apply the effect."""
    key = ctx.idempotency_key
    attempt = ctx.attempt
    _execution(key, phase, attempt, "started")
    rate = float(ctx.input.get("fail_rate", DEFAULT_FAIL_RATE))
    stable = f"{ctx.input['n']}:{ctx.step}" if "n" in ctx.input else key
    if isinstance(ctx, ItemContext):
        stable += f":{ctx.item_index}"
    dice = roll(ctx.input.get("seed", 0), phase, stable, attempt)
    if dice < rate / 2:
        _execution(key, phase, attempt, "failed")
        raise ChaosTransientError(f"{phase} {key} attempt {attempt}: injected before the effect")
    if doomed:
        _execution(key, phase, attempt, "failed")
        raise ChaosDoomed(f"{key}: doomed by the input; the saga unwinds")
    applied = _apply_effect(key, phase, attempt)
    if dice < rate:
        _execution(key, phase, attempt, "failed", applied)
        raise ChaosTransientError(f"{phase} {key} attempt {attempt}: injected after the effect")
    _execution(key, phase, attempt, "completed", applied)
    return {"key": key, "phase": phase, "attempt": attempt, "applied": applied}


def _task(workflow: Workflow, name: str, after: tuple[str, ...] = (), **kwargs: Any) -> None:
    def step(ctx: StepContext) -> dict[str, Any]:
        return run_flaky(ctx)

    step.__name__ = name
    workflow.task(step, name=name, after=after, retry=RETRY, start_to_close=STEP_TIMEOUT, **kwargs)


class ChaosContractBroken(NonRetryableError):
    """A compensation got something else than its step's output (or None for a step that
    never succeeded): fails the compensation for good, so the checker sees the instance
    ``failed``."""


def _undo(ctx: StepContext, output: Any) -> dict[str, Any]:
    key = ctx.idempotency_key
    if ctx.attempted_only:
        if output is not None:
            raise ChaosContractBroken(f"{key}: attempted-only compensation given {output!r}")
    elif not isinstance(output, dict) or output.get("key") != key:
        raise ChaosContractBroken(f"{key}: compensation given {output!r}")
    return run_flaky(ctx, "compensate")


# -- sequence ----------------------------------------------------------------------------------

sequence = Workflow("chaos_sequence", version=1, description="Chaos: four steps in a row.")
_task(sequence, "one")
_task(sequence, "two", ("one",))
_task(sequence, "three", ("two",))
_task(sequence, "four", ("three",))
registry.register(sequence, replace=True)

# -- parallel join -----------------------------------------------------------------------------

parallel = Workflow("chaos_parallel", version=1, description="Chaos: fan-out of three, join.")
_task(parallel, "split")
_task(parallel, "left", ("split",))
_task(parallel, "middle", ("split",))
_task(parallel, "right", ("split",))
_task(parallel, "join", ("left", "middle", "right"))
registry.register(parallel, replace=True)

# -- approvals ---------------------------------------------------------------------------------

approvals = Workflow(
    "chaos_approval", version=1, description="Chaos: two approvals in parallel, then book."
)
_task(approvals, "prepare")
approval(
    approvals,
    "manager_ok",
    after=["prepare"],
    users=APPROVERS,
    policy="any",
    title="Chaos {input[n]}: manager",
)
approval(
    approvals,
    "finance_ok",
    after=["prepare"],
    users=APPROVERS,
    policy="all",
    title="Chaos {input[n]}: finance",
)
_task(approvals, "book", ("manager_ok", "finance_ok"))
registry.register(approvals, replace=True)

# -- saga --------------------------------------------------------------------------------------

saga = Workflow(
    "chaos_saga",
    version=1,
    description="Chaos: reserve, then charge and hold in parallel, then ship; a doomed hold "
    "unwinds.",
)
COMPENSATE_RETRY = RetryPolicy(
    max_attempts=12,
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=2),
)
UNDO = {"compensate": _undo, "compensate_retry": COMPENSATE_RETRY, "compensate_attempted": True}
_task(saga, "reserve", **UNDO)
_task(saga, "charge", ("reserve",), **UNDO)


@saga.task(after=["reserve"], retry=RETRY, start_to_close=STEP_TIMEOUT, **UNDO)
def hold(ctx: StepContext) -> dict[str, Any]:
    return run_flaky(ctx, doomed=bool(ctx.input.get("doom")))


_task(saga, "ship", ("charge", "hold"))
registry.register(saga, replace=True)

# -- a child and fan-outs ------------------------------------------------------------------------

kid = Workflow("chaos_kid", version=1, description="Chaos: a child workflow, work then done.")
_task(kid, "work")
_task(kid, "done", ("work",))
registry.register(kid, replace=True)


def _kid_input(ctx: StepContext, label: str) -> dict[str, Any]:
    return {
        "seed": ctx.input.get("seed", 0),
        "n": f"{ctx.input['n']}/{label}",
        "fail_rate": ctx.input.get("fail_rate", DEFAULT_FAIL_RATE),
    }


family = Workflow(
    "chaos_family",
    version=1,
    description="Chaos: a map over tasks, a child and a map over children, then join.",
)
_task(family, "split")


@map_step(
    family,
    "fan",
    items=lambda ctx: [0, 1, 2, 3],
    after=["split"],
    concurrency=2,
    retry=RETRY,
    start_to_close=STEP_TIMEOUT,
)
def fan(ctx: ItemContext, item: int) -> dict[str, Any]:
    return run_flaky(ctx)


child_step(
    family,
    "kid",
    workflow="chaos_kid",
    after=["split"],
    input=lambda ctx: _kid_input(ctx, "kid"),
)
map_children(
    family,
    "brood",
    workflow="chaos_kid",
    items=lambda ctx: [0, 1, 2],
    after=["split"],
    input=lambda ctx, item: _kid_input(ctx, f"brood/{item}"),
    concurrency=2,
)
_task(family, "join", ("fan", "kid", "brood"))
registry.register(family, replace=True)
