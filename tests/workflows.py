"""Workflows used by the tests, registered in the test process and in the test worker.

Every step records each execution in a Redis ledger keyed by its idempotency key and attempt,
so a test can prove a function ran once per attempt.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings

from orchestration.definitions import (
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    registry,
)

_redis: redis.Redis | None = None


def ledger() -> redis.Redis:
    global _redis
    if _redis is None:
        # The test Redis database, also when the broker is RabbitMQ (tests/settings.py).
        url = getattr(settings, "SIGNOFF_TEST_REDIS_URL", "") or settings.CELERY_BROKER_URL
        _redis = redis.Redis.from_url(url.replace("redis+socket", "unix"))
    return _redis


def record(ctx: StepContext) -> None:
    ledger().hincrby(f"ledger:{ctx.instance_id}", f"{ctx.step}:{ctx.attempt}", 1)


class Flaky(Exception):
    pass


FAST = RetryPolicy(
    max_attempts=4,
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=1),
    jitter=0.1,
)


def _step(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    return {"step": ctx.step, "attempt": ctx.attempt, "saw": sorted(ctx.outputs)}


# a -> b -> c
sequence = Workflow("t_sequence", description="three steps in a row")
sequence.task(_step, name="a", retry=FAST)
sequence.task(_step, name="b", after=["a"], retry=FAST)
sequence.task(_step, name="c", after=["b"], retry=FAST)
registry.register(sequence)


# a when= predicate that raises
def _broken_when(ctx: StepContext) -> bool:
    raise ValueError("predicate broke")


broken_when = Workflow("t_broken_when", description="a when= predicate that raises")
broken_when.task(_step, name="a", retry=FAST)
broken_when.task(_step, name="b", after=["a"], when=_broken_when, retry=FAST)
registry.register(broken_when)

# fan-out to four branches, then a join
parallel = Workflow("t_parallel", description="fan-out and join")
parallel.task(_step, name="start", retry=FAST)
for _i in range(4):
    parallel.task(_step, name=f"branch_{_i}", after=["start"], retry=FAST)
parallel.task(_step, name="join", after=[f"branch_{i}" for i in range(4)], retry=FAST)
registry.register(parallel)

# b is skipped when input.skip is true; c still runs
conditional = Workflow("t_when")
conditional.task(_step, name="a")
conditional.task(_step, name="b", after=["a"], when=lambda ctx: not ctx.input.get("skip"))
conditional.task(_step, name="c", after=["b"])
registry.register(conditional)


def _flaky(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    if ctx.attempt <= int(ctx.input.get("fail_times", 0)):
        raise Flaky(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


flaky = Workflow("t_flaky")
flaky.task(_flaky, name="call", retry=FAST)
flaky.task(_step, name="after_call", after=["call"])
registry.register(flaky)


def _bad_value(ctx: StepContext) -> None:
    record(ctx)
    raise ValueError("this input can never work")


nonretryable = Workflow("t_nonretryable")
nonretryable.task(
    _bad_value, name="validate", retry=RetryPolicy(max_attempts=5, non_retryable=(ValueError,))
)
nonretryable.task(_step, name="never", after=["validate"])
registry.register(nonretryable)


def _always_flaky(ctx: StepContext) -> None:
    record(ctx)
    raise Flaky("still down")


closing = Workflow("t_close")
closing.task(
    _always_flaky,
    name="call",
    retry=RetryPolicy(
        max_attempts=100,
        initial_interval=timedelta(milliseconds=300),
        backoff_coefficient=1.0,
        max_interval=timedelta(seconds=1),
        jitter=0,
    ),
    schedule_to_close=timedelta(seconds=1),
)
registry.register(closing)


def _slow_first(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    if ctx.attempt == 1:
        time.sleep(float(ctx.input.get("sleep", 3)))
    return {"attempt": ctx.attempt}


slow = Workflow("t_slow")
slow.task(_slow_first, name="slow", start_to_close=timedelta(seconds=1), retry=FAST)
registry.register(slow)


def _hang_first(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    if ctx.attempt == 1:
        time.sleep(60)  # the test kills the worker meanwhile
    return {"attempt": ctx.attempt}


hang = Workflow("t_hang")
hang.task(_hang_first, name="hang", start_to_close=timedelta(seconds=2), retry=FAST)
hang.task(_step, name="after_hang", after=["hang"])
registry.register(hang)


def _fail_once_permanently(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    if ledger().get(f"fixed:{ctx.instance_id}") is None:
        raise NonRetryableError("broken until an operator fixes it")
    return {"fixed": True}


fixable = Workflow("t_fixable", deadline=timedelta(hours=1))
fixable.task(_step, name="first")
fixable.task(_fail_once_permanently, name="fragile", after=["first"])
fixable.task(_step, name="last", after=["fragile"])
registry.register(fixable)


# -- waiting steps -------------------------------------------------------------------------

from orchestration.waits import signal_step, timer_step  # noqa: E402

signalled = Workflow("t_signal")
signalled.task(_step, name="a")
signal_step(
    signalled,
    "go",
    after=["a"],
    timeout=timedelta(hours=1),
    schema={"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
)
signalled.task(_step, name="b", after=["go"])
registry.register(signalled)

lenient = Workflow("t_signal_continue")
signal_step(lenient, "go", timeout=timedelta(hours=1), on_timeout="continue", default={"ok": False})
lenient.task(_step, name="b", after=["go"])
registry.register(lenient)

impatient = Workflow("t_signal_cancel")
signal_step(impatient, "go", timeout=timedelta(hours=1), on_timeout="cancel")
impatient.task(_step, name="b", after=["go"])
registry.register(impatient)

sleepy = Workflow("t_timer")
sleepy.task(_step, name="a")
timer_step(sleepy, "nap", after=["a"], duration=timedelta(hours=2))
timer_step(sleepy, "until", after=["nap"], until_input="wake_at")
sleepy.task(_step, name="b", after=["until"])
registry.register(sleepy)


# -- sagas that undo attempted steps ---------------------------------------------------------
#
# reserve -> charge and hold in parallel -> ship. Each step's behaviour comes from
# input["behave"][step]: "ok"; "lost" (every attempt applies its effect, then fails: a lost
# response); "lost_once" (only attempt 1 does); "doom" (fails for good before its effect);
# "lost_then_doom" (attempt 1 lost, attempt 2 doomed); "slow" (sleeps input["sleep"] s first).
# Effects and undos go to the Redis ledger: effects:<id> (step -> attempt) and undone:<id>
# (step -> what the compensation saw).


def _effect_step(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    behave = ctx.input.get("behave", {}).get(ctx.step, "ok")
    if behave == "slow":
        time.sleep(float(ctx.input.get("sleep", 1.5)))
    if behave == "doom" or (behave == "lost_then_doom" and ctx.attempt > 1):
        raise NonRetryableError(f"{ctx.step} cannot be done")
    ledger().hset(f"effects:{ctx.instance_id}", ctx.step, ctx.attempt)
    if behave == "lost" or (behave in ("lost_once", "lost_then_doom") and ctx.attempt == 1):
        raise Flaky(f"{ctx.step} applied, but its answer was lost")
    return {"step": ctx.step, "attempt": ctx.attempt}


def _undo_effect(ctx: StepContext, output: Any) -> dict[str, Any]:
    seen = {"output": output, "attempted_only": ctx.attempted_only, "outputs": sorted(ctx.outputs)}
    ledger().hset(f"undone:{ctx.instance_id}", ctx.step, json.dumps(seen))
    ledger().rpush(f"undo_order:{ctx.instance_id}", ctx.step)
    return {"undone": ctx.step}


SLOW_RETRY = RetryPolicy(
    max_attempts=3, initial_interval=timedelta(seconds=2), max_interval=timedelta(seconds=2)
)


def _attempted_saga(name: str, attempted: bool) -> Workflow:
    wf = Workflow(name, description="saga whose steps may be undone for their attempts")
    undo = {"compensate": _undo_effect, "compensate_attempted": attempted}
    wf.task(_effect_step, name="reserve", retry=FAST, **undo)
    wf.task(
        _effect_step,
        name="charge",
        after=["reserve"],
        retry=SLOW_RETRY,
        start_to_close=timedelta(seconds=5),
        **undo,
    )
    wf.task(_effect_step, name="hold", after=["reserve"], retry=FAST, **undo)
    wf.task(_step, name="ship", after=["charge", "hold"])
    return registry.register(wf)


attempted_saga = _attempted_saga("t_saga_attempted", True)
plain_saga = _attempted_saga("t_saga_plain", False)


# -- the sentinel (tests/test_sentinel.py): one value in every kind of sealed field -----------
#
# derive (a sealed output field) -> quote (its first attempt fails quoting the input) ->
# review (an approval whose title and fields are formatted from sealed fields) -> callback (a
# signal, sent early, whose `code` is sealed) -> finish (with input.fail: fails for good,
# quoting the input and the signal's code).

from approvals.definitions import approval  # noqa: E402


def _sentinel_derive(ctx: StepContext) -> dict[str, Any]:
    return {"secret_out": f"{ctx.input['secret']}/derived", "public": "derived in public"}


def _sentinel_quote(ctx: StepContext) -> dict[str, Any]:
    if ctx.attempt == 1:
        raise ValueError(f"cannot use {ctx.input['secret']!r} yet")
    return {"quoted": True}


def _sentinel_finish(ctx: StepContext) -> dict[str, Any]:
    if ctx.input.get("fail"):
        code = ctx.outputs["callback"]["code"]
        raise NonRetryableError(f"refused {code} for {ctx.input['secret']}")
    return {"done": True}


sentinel = Workflow(
    "t_sentinel",
    sensitive=["input.secret", "outputs.derive.secret_out", "outputs.callback.code"],
)
sentinel.task(_sentinel_derive, name="derive", retry=FAST)
sentinel.task(_sentinel_quote, name="quote", after=["derive"], retry=FAST)
approval(
    sentinel,
    "review",
    after=["quote"],
    users=["sentinel_approver"],
    title="Review {input[secret]} ({outputs[derive][secret_out]}) for {input[name]}",
    show=["input.secret", "outputs.derive.secret_out", "input.name", "outputs.derive.public"],
)
signal_step(sentinel, "callback", after=["review"])
sentinel.task(_sentinel_finish, name="finish", after=["callback"], retry=FAST)
registry.register(sentinel)


# -- attachments (tests/orchestration/test_attachments.py, tests/test_security_files.py) ------
#
# An expense with receipts: the files of the start are listed in input.receipts, which the
# schema requires (at least one) and both approvals show; a manager, then finance.

from orchestration.attachments import REFS_SCHEMA  # noqa: E402

receipts = Workflow(
    "t_receipts",
    description="an expense with receipts: a manager, then finance",
    requester_input="requester",
    attachments="receipts",
    input_schema={
        "type": "object",
        "required": ["amount", "receipts"],
        "properties": {
            "amount": {"type": "number"},
            "requester": {"type": "string"},
            "receipts": {**REFS_SCHEMA, "minItems": 1},
        },
    },
)
RECEIPTS_SHOW = [("Amount", "input.amount"), ("Receipts", "input.receipts")]
approval(
    receipts,
    "manager_approval",
    groups=["managers"],
    title="Receipts for {input[amount]}",
    show=RECEIPTS_SHOW,
    requester=lambda ctx: ctx.input["requester"],
    revisable=["amount", "receipts"],
)
approval(
    receipts,
    "finance_approval",
    after=["manager_approval"],
    groups=["finance"],
    title="Finance: receipts for {input[amount]}",
    show=RECEIPTS_SHOW,
    requester=lambda ctx: ctx.input["requester"],
)
registry.register(receipts)

# Files optional: any number, none required.
notes = Workflow("t_notes", attachments="files")
notes.task(_step, name="a", retry=FAST)
registry.register(notes)
# -- send back for changes (issue 12): an expense the manager may send back -------------------
#
# reserve (undone by release when the expense is withdrawn) -> manager_approval (amount,
# description, category, iban (sealed) and receipt are revisable; at most 3 rounds) -> pay.

from approvals.definitions import Escalation  # noqa: E402


def _reserve(ctx: StepContext) -> dict[str, Any]:
    return {"reserved": ctx.input["amount"]}


def _release(ctx: StepContext, output: dict[str, Any]) -> dict[str, Any]:
    return {"released": output["reserved"]}


def _pay(ctx: StepContext) -> dict[str, Any]:
    return {"paid": ctx.input["amount"], "for": ctx.input["description"]}


REVISABLE_SCHEMA = {
    "type": "object",
    "required": ["amount", "description", "requester"],
    "properties": {
        "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 100000},
        "description": {"type": "string", "minLength": 1, "maxLength": 500},
        "category": {"type": "string", "enum": ["travel", "meals", "other"]},
        "iban": {"type": "string", "minLength": 5, "maxLength": 34},
        "receipt": {"type": "string", "maxLength": 100},
        "items": {"type": "array", "maxItems": 10},
        "requester": {"type": "string", "minLength": 1},
    },
}


def revisable_workflow(name: str, *, max_rounds: int = 3, **approval_options: Any) -> Workflow:
    wf = Workflow(
        name,
        description="an expense its manager may send back for changes",
        requester_input="requester",
        sensitive=["input.iban"],
        input_schema=REVISABLE_SCHEMA,
    )
    wf.task(_reserve, name="reserve", retry=FAST, compensate=_release)
    options: dict[str, Any] = {
        "groups": ["managers"],
        "due": timedelta(days=3),
        "remind_every": timedelta(days=1),
        "escalate": [Escalation(after=timedelta(days=2), users=["admin"])],
        **approval_options,
    }
    approval(
        wf,
        "manager_approval",
        after=["reserve"],
        title="Expense {input[amount]} for {input[description]}",
        show=[("Amount", "input.amount"), ("Description", "input.description")],
        revisable=["amount", "description", "category", "iban", "receipt", "items"],
        max_rounds=max_rounds,
        **options,
    )
    wf.task(_pay, name="pay", after=["manager_approval"], retry=FAST)
    return registry.register(wf)


revisable = revisable_workflow("t_revisable")
revisable_long = revisable_workflow("t_revisable_long", max_rounds=8)
revisable_once = revisable_workflow("t_revisable_once", max_rounds=1)


# -- child workflows (issue 15) ------------------------------------------------------------------
#
# child_kyc: reserve (undone by release) -> check (fails at once when input.fail).
# child_parent: prepare -> verify (a child_kyc; a second child when the first fails) -> finish.
# child_parent_wait: hold (a child_wait: reserve, then a "go" signal) -> after.
# child_parent_timeout: hold (a child_wait that must finish within a minute).
# child_parent_sealed: a sealed ssn passed into a child field the child does not seal.

from orchestration.children import child_step  # noqa: E402

CHILD_FAST = RetryPolicy(
    max_attempts=2,
    initial_interval=timedelta(milliseconds=100),
    max_interval=timedelta(milliseconds=200),
    jitter=0.0,
)


def _child_reserve(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    return {"reserved": ctx.input["customer"]}


def _child_release(ctx: StepContext, output: dict[str, Any]) -> dict[str, Any]:
    ledger().hincrby(f"ledger:{ctx.instance_id}", "released", 1)
    return {"released": output["reserved"]}


def _child_check(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    if ctx.input.get("fail"):
        raise NonRetryableError(f"customer {ctx.input['customer']} refused")
    return {"verified": ctx.input["customer"], "business_key": ctx.business_key}


child_kyc = Workflow(
    "child_kyc",
    description="a child: reserve, then check",
    input_schema={
        "type": "object",
        "required": ["customer"],
        "properties": {"customer": {"type": "string", "minLength": 1}, "fail": {"type": "boolean"}},
    },
)
child_kyc.task(_child_reserve, name="reserve", retry=FAST, compensate=_child_release)
child_kyc.task(_child_check, name="check", after=["reserve"], retry=FAST)
registry.register(child_kyc)


def _child_prepare(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    return {"customer": ctx.input["customer"].upper()}


def _child_finish(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    return {"from_child": ctx.outputs["verify"]["check"]["verified"]}


child_parent = Workflow("child_parent", description="a parent with a child_kyc step")
child_parent.task(_child_prepare, name="prepare", retry=FAST)
child_step(
    child_parent,
    "verify",
    workflow="child_kyc",
    after=["prepare"],
    input=lambda ctx: {
        "customer": ctx.outputs["prepare"]["customer"],
        # the first child fails when asked to: the step's retry starts a second one
        "fail": bool(ctx.input.get("fail_first"))
        and ctx.attempt == 1
        or bool(ctx.input.get("fail_always")),
    },
    retry=CHILD_FAST,
)
child_parent.task(_child_finish, name="finish", after=["verify"], retry=FAST)
registry.register(child_parent)

child_wait = Workflow("child_wait", description="a child: reserve, then wait for go")
child_wait.task(_child_reserve, name="reserve", retry=FAST, compensate=_child_release)
signal_step(child_wait, "go", after=["reserve"])
registry.register(child_wait)


def _child_after(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    return {"done": True}


child_parent_wait = Workflow("child_parent_wait", description="a parent waiting on child_wait")
child_step(
    child_parent_wait,
    "hold",
    workflow="child_wait",
    input=lambda ctx: {"customer": ctx.input.get("customer", "c-1")},
)
child_parent_wait.task(_child_after, name="after", after=["hold"], retry=FAST)
registry.register(child_parent_wait)

child_parent_timeout = Workflow("child_parent_timeout", description="a child with a timeout")
child_step(
    child_parent_timeout,
    "hold",
    workflow="child_wait",
    input=lambda ctx: {"customer": "slow"},
    timeout=timedelta(minutes=1),
)
registry.register(child_parent_timeout)

child_sealed_target = Workflow("child_sealed_target", description="a child sealing nothing")
child_sealed_target.task(
    lambda ctx: {
        "seen": ctx.input["tax_id"][-4:],
        "len": len(ctx.input["tax_id"]),
        "echo": {"tax_id": ctx.input["tax_id"]},  # a child echoing its input
    },
    name="use",
    retry=FAST,
)
registry.register(child_sealed_target)

child_parent_sealed = Workflow(
    "child_parent_sealed", description="a sealed field into a child", sensitive=["input.ssn"]
)
child_step(
    child_parent_sealed,
    "hand_over",
    workflow="child_sealed_target",
    input=lambda ctx: {"tax_id": ctx.input["ssn"], "note": "plain"},
)
registry.register(child_parent_sealed)


# Started by schedules (tests/orchestration/test_schedules*.py): the fire time in the context.
def _report(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    when = ctx.scheduled_for
    return {"scheduled_for": when.isoformat() if when else None, "report": ctx.input["report"]}


scheduled = Workflow(
    "t_scheduled",
    description="a report a schedule starts",
    input_schema={
        "type": "object",
        "properties": {
            "report": {"type": "string", "maxLength": 50},
            "token": {"type": "string"},
            "hold": {"type": "boolean"},
        },
        "required": ["report"],
        "additionalProperties": False,
    },
    sensitive=["input.token"],
)
scheduled.task(_report, name="report", retry=FAST)
registry.register(scheduled)


# Steps that take a moment, with a short start-to-close: a server restarted in the middle of
# a run (tests/test_pgbouncer.py, tests/test_rabbitmq.py) finds steps running.
def _paced_step(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    time.sleep(0.25)
    return {"step": ctx.step, "attempt": ctx.attempt}


paced = Workflow("t_paced", description="four quarter-second steps in a row")
for _i, _name in enumerate(["p1", "p2", "p3", "p4"]):
    paced.task(
        _paced_step,
        name=_name,
        after=[f"p{_i}"] if _i else [],
        retry=FAST,
        start_to_close=timedelta(seconds=3),
    )
registry.register(paced)
# -- operator repair (issue 16): edit, skip, reset, a failed undo resolved by hand ------------
#
# t_repair: load -> check (fails for good on a negative amount) -> report (with
# input.break_report: fails for good until the ledger's fixed:<id> is set). input.card and
# load's output token are sealed.
# t_repair_saga: reserve -> book -> pay (fails for good); book's undo always fails for good,
# reserve's undo works: resolving book by hand lets reserve's undo run.


def _repair_load(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    return {"amount": ctx.input["amount"], "token": f"tok-{ctx.input.get('card', 'none')}"}


def _repair_check(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    if ctx.input["amount"] < 0:
        raise NonRetryableError(f"amount must be positive, got {ctx.input['amount']}")
    return {"ok": True, "amount": ctx.input["amount"]}


def _repair_report(ctx: StepContext) -> dict[str, Any]:
    record(ctx)
    if ctx.input.get("break_report") and ledger().get(f"fixed:{ctx.instance_id}") is None:
        raise NonRetryableError("report is broken until fixed")
    return {"check": ctx.outputs["check"], "loaded": ctx.outputs["load"]["amount"]}


REPAIR_SCHEMA = {
    "type": "object",
    "required": ["amount"],
    "properties": {
        "amount": {"type": "number"},
        "card": {"type": "string"},
        "break_report": {"type": "boolean"},
    },
    "additionalProperties": False,
}

repair = Workflow(
    "t_repair",
    description="an operator repairs it",
    input_schema=REPAIR_SCHEMA,
    sensitive=["input.card", "outputs.load.token"],
)
repair.task(_repair_load, name="load", retry=FAST)
repair.task(_repair_check, name="check", after=["load"], retry=FAST)
repair.task(_repair_report, name="report", after=["check"], retry=FAST)
registry.register(repair)


def _undo_fails(ctx: StepContext, output: Any) -> None:
    ledger().rpush(f"undo_order:{ctx.instance_id}", f"{ctx.step}:failed")
    raise NonRetryableError(f"cannot undo {ctx.step}: the partner's API is gone")


ONCE = RetryPolicy(max_attempts=1)

repair_saga = Workflow("t_repair_saga", description="a saga whose undo fails for good")
repair_saga.task(_effect_step, name="reserve", retry=FAST, compensate=_undo_effect)
repair_saga.task(
    _effect_step,
    name="book",
    after=["reserve"],
    retry=FAST,
    compensate=_undo_fails,
    compensate_retry=ONCE,
)
repair_saga.task(_effect_step, name="pay", after=["book"], retry=FAST)
registry.register(repair_saga)
# -- failures grouped and search (issue 16) ---------------------------------------------------


def _lookup_order(ctx: StepContext) -> dict[str, Any]:
    """Fails with a message that differs per instance (its order number and a request id)
    until the ``fixed:t_lookup`` switch is set (the "bug fix")."""
    record(ctx)
    if ledger().get("fixed:t_lookup") is None:
        order = ctx.input.get("order", 0)
        raise NonRetryableError(f"order {order} not found (request {ctx.instance_id})")
    return {"found": ctx.input.get("order")}


lookup = Workflow("t_lookup", description="fails per order until fixed", sensitive=["input.card"])
lookup.task(_lookup_order, name="lookup")
lookup.task(_step, name="ship", after=["lookup"])
registry.register(lookup)
