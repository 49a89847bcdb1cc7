"""Map steps (dynamic fan-out), in process: the item functions run in the test, doorbells are
captured (``rung``). The same paths with a real worker, and a worker killed midway, are in
test_fanout_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from orchestration import engine, sweepers
from orchestration.definitions import (
    DefinitionError,
    NonRetryableError,
    RetryPolicy,
    Workflow,
    registry,
)
from orchestration.fanout import map_step
from orchestration.fanout_items import item_claim, item_execute
from orchestration.fanout_models import MapItem, MapRun
from orchestration.models import Event, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db

RETRY = RetryPolicy(
    max_attempts=3, initial_interval=timedelta(seconds=10), max_interval=timedelta(seconds=60)
)
calls: list[tuple[int, int, str]] = []  # (index, attempt, idempotency key)
plan: dict[int, list[str]] = {}  # index -> what each attempt does ("ok", "retry", "fatal")


def _item(ctx: Any, item: Any) -> Any:
    calls.append((ctx.item_index, ctx.attempt, ctx.idempotency_key))
    todo = plan.get(ctx.item_index, [])
    what = todo[ctx.attempt - 1] if ctx.attempt - 1 < len(todo) else "ok"
    if what == "retry":
        raise ConnectionError(f"item {ctx.item_index} flaked")
    if what == "fatal":
        raise NonRetryableError(f"item {ctx.item_index} is bad")
    return {"i": ctx.item_index, "double": item * 2}


def build(name: str, *, items: Any = None, **options: Any) -> Workflow:
    wf = Workflow(name)
    wf.task(lambda ctx: {"values": ctx.input.get("values", [])}, name="source")
    options.setdefault("retry", RETRY)
    map_step(
        wf,
        "each",
        items=items or (lambda ctx: ctx.outputs["source"]["values"]),
        after=["source"],
        **options,
    )(_item)
    wf.task(lambda ctx: {"seen": ctx.outputs["each"]}, name="after", after=["each"])
    return wf


@pytest.fixture
def workflows() -> Iterator[Any]:
    made: list[Workflow] = []
    calls.clear()
    plan.clear()

    def make(name: str, **options: Any) -> Workflow:
        wf = registry.register(build(name, **options))
        made.append(wf)
        return wf

    yield make
    for wf in made:
        registry.unregister(wf.name, wf.version)


def steps_of(instance: WorkflowInstance) -> dict[str, StepRun]:
    return {s.name: s for s in StepRun.objects.filter(instance=instance)}


def items_of(instance: WorkflowInstance) -> list[MapItem]:
    return list(MapItem.objects.filter(step_run__instance=instance).order_by("index"))


def in_flight(instance: WorkflowInstance) -> int:
    return MapItem.objects.filter(
        step_run__instance=instance, state__in=["scheduled", "running", "retrying"]
    ).count()


def drive(instance: WorkflowInstance, *, reverse: bool = False, limit: int = 500) -> int:
    """Play the worker: run due task steps and due items (one at a time) until none is left;
    returns the largest number of items seen in the window."""
    most = 0
    for _ in range(limit):
        now = timezone.now()
        steps = [
            s
            for s in steps_of(instance).values()
            if s.state in ("scheduled", "retrying") and s.next_attempt_at <= now
        ]
        for step in steps:
            engine.step_execute(step_run_id=step.pk, attempt=step.attempt)
        due = [
            i
            for i in items_of(instance)
            if i.state in ("scheduled", "retrying") and i.next_attempt_at <= now
        ]
        most = max(most, in_flight(instance))
        if not steps and not due:
            return most
        if not due:
            continue
        item = due[-1] if reverse else due[0]
        item_execute(item_id=item.pk, attempt=item.attempt)
    raise AssertionError("the driver did not finish")


def start(name: str, values: list[Any]) -> WorkflowInstance:
    instance, _ = engine.instance_start(workflow=name, input={"values": values})
    return instance


def refresh(instance: WorkflowInstance) -> WorkflowInstance:
    return WorkflowInstance.objects.get(pk=instance.pk)


# -- definitions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"max_items": 0}, "max_items must be an integer >= 1"),
        ({"tolerate_failures": -1}, "tolerate_failures must be an integer >= 0"),
        ({"concurrency": True}, "concurrency must be an integer >= 1"),
        ({"items": "not callable"}, "items must be a callable"),
        ({"runner": "nope"}, "no item runner 'nope'"),
        ({"start_to_close": timedelta(0)}, "start_to_close must be a positive timedelta"),
    ],
)
def test_invalid_map_settings_are_refused_at_registration(options: dict, message: str) -> None:
    wf = build("t_unit_map_bad", **options)
    with pytest.raises(DefinitionError, match=message):
        registry.register(wf)
    assert registry.get("t_unit_map_bad") is None


def test_sensitive_output_fields_of_a_map_step_are_refused() -> None:
    wf = build("t_unit_map_sealed")
    wf.sensitive = frozenset({"outputs.each.double"})
    with pytest.raises(DefinitionError, match="cannot declare sensitive output fields"):
        registry.register(wf)


# -- running -------------------------------------------------------------------------------


def test_outputs_are_collected_in_index_order(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_order", concurrency=3)
    values = [7, 1, 9, 4, 4, 0, 2]
    instance = start("t_unit_map_order", values)
    drive(instance, reverse=True)  # items finish out of order
    instance = refresh(instance)
    assert instance.state == "succeeded"
    expected = [{"i": i, "double": v * 2} for i, v in enumerate(values)]
    steps = steps_of(instance)
    assert steps["each"].output == expected
    assert steps["after"].output == {"seen": expected}
    # finished out of order: the last index ran before the first
    order = [index for index, _, _ in calls]
    assert order.index(6) < order.index(0)


def test_concurrency_window_is_never_exceeded(
    workflows: Any, rung: list, django_capture_on_commit_callbacks: Any
) -> None:
    workflows("t_unit_map_window", concurrency=3)
    instance = start("t_unit_map_window", list(range(20)))
    with django_capture_on_commit_callbacks(execute=True):
        engine.step_execute(step_run_id=steps_of(instance)["source"].pk, attempt=1)
    assert in_flight(instance) == 3
    assert len([b for b in rung if b.task == "run_map_item"]) == 3
    most = drive(instance)
    assert most == 3
    run = MapRun.objects.get(step_run__instance=instance)
    assert (run.state, run.total, run.concurrency) == ("settled", 20, 3)
    assert refresh(instance).state == "succeeded"


def test_each_item_has_its_own_idempotency_key_and_index(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_keys", concurrency=2)
    instance = start("t_unit_map_keys", [10, 20, 30])
    drive(instance)
    assert sorted(key for _, _, key in calls) == [f"{instance.pk}:each:{i}" for i in range(3)]


def test_empty_list_succeeds_with_an_empty_output(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_empty")
    instance = start("t_unit_map_empty", [])
    drive(instance)
    assert refresh(instance).state == "succeeded"
    assert steps_of(instance)["each"].output == []
    assert not MapItem.objects.filter(step_run__instance=instance).exists()


def test_a_failing_item_is_retried_under_the_step_policy(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_retry", concurrency=2)
    plan[1] = ["retry", "retry", "ok"]
    instance = start("t_unit_map_retry", [1, 2, 3])
    drive(instance)
    item = items_of(instance)[1]
    assert (item.state, item.attempt) == ("retrying", 2)
    assert "flaked" in item.error["message"]
    base = timezone.now()
    for k in range(2):
        with time_machine.travel(base + timedelta(minutes=2 * (k + 1)), tick=False):
            drive(instance)
    instance = refresh(instance)
    assert instance.state == "succeeded"
    assert [a for i, a, _ in calls if i == 1] == [1, 2, 3]
    keys = {k for i, _, k in calls if i == 1}
    assert keys == {f"{instance.pk}:each:1"}  # the same key for every attempt


def test_fail_fast_cancels_the_rest_and_names_the_item(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_failfast", concurrency=2)
    plan[1] = ["fatal"]
    instance = start("t_unit_map_failfast", list(range(10)))
    drive(instance)
    instance = refresh(instance)
    assert instance.state == "failed"
    each = steps_of(instance)["each"]
    assert each.state == "failed"
    assert each.error["item"] == 1
    assert each.error["type"] == "signoff.MapItemFailed"
    assert "item 1 failed" in each.error["message"] and "is bad" in each.error["message"]
    states = [i.state for i in items_of(instance)]
    assert states[:2] == ["succeeded", "failed"]
    assert "pending" not in states and "scheduled" not in states
    assert states.count("cancelled") >= 7
    assert steps_of(instance)["after"].state == "pending"
    assert instance.error["step"] == "each"


def test_tolerate_failures_keeps_going_with_null_outputs(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_tolerate", concurrency=2, tolerate_failures=2)
    plan[1] = ["fatal"]
    plan[3] = ["retry", "retry", "retry"]  # exhausts its attempts
    instance = start("t_unit_map_tolerate", [0, 1, 2, 3, 4])
    base = timezone.now()
    for k in range(4):
        with time_machine.travel(base + timedelta(minutes=2 * k), tick=False):
            drive(instance)
    instance = refresh(instance)
    assert instance.state == "succeeded"
    output = steps_of(instance)["each"].output
    assert output[1] is None and output[3] is None
    assert output[4] == {"i": 4, "double": 8}
    done = Event.objects.get(instance=instance, type="step_succeeded", step="each")
    assert done.data["failed"] == 2 and done.data["failed_indexes"] == [1, 3]


def test_one_failure_past_the_tolerance_fails_the_step(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_tolerate_over", concurrency=5, tolerate_failures=1)
    plan.update({0: ["fatal"], 2: ["fatal"]})
    instance = start("t_unit_map_tolerate_over", list(range(5)))
    drive(instance)
    instance = refresh(instance)
    assert instance.state == "failed"
    assert steps_of(instance)["each"].error["failed_items"] == 2


def test_items_that_are_not_a_list_fail_the_step_and_write_no_item(
    workflows: Any, rung: list
) -> None:
    workflows("t_unit_map_notlist", items=lambda ctx: {"a": 1})
    instance = start("t_unit_map_notlist", [])
    drive(instance)
    instance = refresh(instance)
    each = steps_of(instance)["each"]
    assert (instance.state, each.state) == ("failed", "failed")
    assert each.error["message"] == "items must be a list, got dict"
    assert each.attempt == 0  # never attempted, never retried
    assert not MapItem.objects.filter(step_run=each).exists()
    assert not MapRun.objects.filter(step_run=each).exists()
    assert steps_of(instance)["after"].state == "pending"
    failed = Event.objects.get(instance=instance, type="step_failed")
    assert failed.data["reason"] == "invalid_items"


def test_a_list_longer_than_max_items_fails_the_step(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_long", max_items=3)
    instance = start("t_unit_map_long", [1, 2, 3, 4])
    drive(instance)
    each = steps_of(refresh(instance))["each"]
    assert each.state == "failed"
    assert each.error["message"] == "4 items exceed max_items=3"
    assert not MapItem.objects.filter(step_run=each).exists()


def test_an_items_function_that_raises_fails_the_step(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_raises", items=lambda ctx: ctx.outputs["missing"])
    instance = start("t_unit_map_raises", [])
    drive(instance)
    each = steps_of(refresh(instance))["each"]
    assert each.state == "failed" and each.error["type"] == "builtins.KeyError"


def test_cancel_cancels_pending_items_and_a_late_doorbell_does_nothing(
    workflows: Any, rung: list
) -> None:
    workflows("t_unit_map_cancel", concurrency=2)
    instance = start("t_unit_map_cancel", list(range(6)))
    engine.step_execute(
        step_run_id=steps_of(instance)["source"].pk, attempt=1
    )  # the map step starts
    first = items_of(instance)[0]
    item_execute(item_id=first.pk, attempt=1)
    engine.instance_cancel(instance_id=instance.pk, actor="test")
    states = [i.state for i in items_of(instance)]
    assert states == ["succeeded"] + ["cancelled"] * 5
    assert MapRun.objects.get(step_run__instance=instance).state == "settled"
    late = items_of(instance)[1]
    assert item_execute(item_id=late.pk, attempt=1) == "stale"
    assert [i for i, _, _ in calls] == [0]
    assert refresh(instance).state == "cancelled"


def test_operator_retry_reruns_only_failed_and_cancelled_items(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_operator", concurrency=2)
    plan[2] = ["fatal"]
    instance = start("t_unit_map_operator", list(range(6)))
    drive(instance)
    assert refresh(instance).state == "failed"
    before = {i.index: i.state for i in items_of(instance)}
    assert before[2] == "failed" and "cancelled" in before.values()
    ran_before = [i for i, _, _ in calls]
    plan.clear()
    engine.instance_retry(instance_id=instance.pk, actor="operator")
    drive(instance)
    instance = refresh(instance)
    assert instance.state == "succeeded"
    rerun = [i for i, _, _ in calls[len(ran_before) :]]
    assert sorted(rerun) == sorted(i for i, s in before.items() if s != "succeeded")
    assert steps_of(instance)["each"].output == [{"i": i, "double": i * 2} for i in range(6)]
    retried = Event.objects.filter(instance=instance, type="step_started", step="each")
    assert retried.last().data == {"retry": True, "items_rerun": len(rerun)}


def test_history_stays_readable_for_many_items(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_history", concurrency=10)
    instance = start("t_unit_map_history", list(range(200)))
    drive(instance, limit=1000)
    types = list(
        Event.objects.filter(instance=instance, step="each")
        .order_by("seq")
        .values_list("type", flat=True)
    )
    assert types == ["step_started", "step_succeeded"]


# -- the sweepers' backstops ---------------------------------------------------------------


def test_lost_item_doorbells_are_rung_again_in_bounded_batches(
    workflows: Any, rung: list, django_capture_on_commit_callbacks: Any
) -> None:
    workflows("t_unit_map_lost", concurrency=4)
    instance = start("t_unit_map_lost", list(range(8)))
    engine.step_execute(step_run_id=steps_of(instance)["source"].pk, attempt=1)
    # the four item messages are lost (the test transaction never commits)
    later = timezone.now() + timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert sweepers.sweep_doorbells(now=later, batch=3) >= 3
    bells = [b for b in rung if b.task == "run_map_item"]
    assert len(bells) == 3
    with django_capture_on_commit_callbacks(execute=True):
        sweepers.sweep_doorbells(now=later, batch=3)
    assert len({b.step_run_id for b in rung if b.task == "run_map_item"}) == 4


def test_an_item_whose_worker_died_times_out_and_runs_again(workflows: Any, rung: list) -> None:
    workflows("t_unit_map_killed", concurrency=1, start_to_close=timedelta(seconds=30))
    instance = start("t_unit_map_killed", [5])
    engine.step_execute(step_run_id=steps_of(instance)["source"].pk, attempt=1)
    item = items_of(instance)[0]
    assert item_claim(item_id=item.pk, attempt=1) is not None  # ... and the worker dies
    with time_machine.travel(timezone.now() + timedelta(minutes=1), tick=False):
        assert sweepers.sweep_step_timeouts() >= 1
        item.refresh_from_db()
        assert (item.state, item.attempt) == ("retrying", 2)
        assert item.error["type"] == "signoff.StepTimeout"
        assert item_execute(item_id=item.pk, attempt=1) == "stale"  # the redelivered one
    with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=False):
        drive(instance)
    assert refresh(instance).state == "succeeded"


def test_a_step_whose_settling_was_lost_is_settled_by_the_sweeper(
    workflows: Any, rung: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflows("t_unit_map_settle", concurrency=2)
    instance = start("t_unit_map_settle", [1, 2])
    monkeypatch.setattr("orchestration.fanout_items.maybe_settle", lambda **kw: False)
    drive(instance)  # items done; the worker "died" before settling
    assert steps_of(instance)["each"].state == "waiting"
    monkeypatch.undo()
    sweepers.sweep_doorbells()
    drive(instance)
    assert refresh(instance).state == "succeeded"


def test_operator_retry_is_refused_while_items_still_run(workflows: Any, rung: list) -> None:
    from orchestration.errors import Conflict

    workflows("t_unit_map_busy", concurrency=3)
    plan[0] = ["fatal"]
    instance = start("t_unit_map_busy", list(range(6)))
    engine.step_execute(step_run_id=steps_of(instance)["source"].pk, attempt=1)
    slow = items_of(instance)[1]
    assert item_claim(item_id=slow.pk, attempt=1) is not None  # still running
    first = items_of(instance)[0]
    item_execute(item_id=first.pk, attempt=1)  # fails fast
    assert refresh(instance).state == "failed"
    before = (refresh(instance).last_seq, [(i.state, i.attempt) for i in items_of(instance)])
    with pytest.raises(Conflict, match="1 items of step each are still running"):
        engine.instance_retry(instance_id=instance.pk, actor="operator")
    after = (refresh(instance).last_seq, [(i.state, i.attempt) for i in items_of(instance)])
    assert after == before and refresh(instance).state == "failed"


def test_a_first_map_step_over_bad_input_fails_the_start_cleanly(rung: list) -> None:
    wf = Workflow("t_unit_map_first")
    map_step(wf, "each", items=lambda ctx: ctx.input["files"], max_items=2)(_item)
    registry.register(wf)
    try:
        for files, message in [
            ("a.png", "items must be a list, got str"),
            (["a", "b", "c"], "3 items exceed max_items=2"),
        ]:
            instance, _ = engine.instance_start(workflow="t_unit_map_first", input={"files": files})
            instance = refresh(instance)
            each = steps_of(instance)["each"]
            assert (instance.state, each.state) == ("failed", "failed")
            assert each.error["message"] == message
            assert not MapItem.objects.filter(step_run=each).exists()
            assert list(
                Event.objects.filter(instance=instance)
                .order_by("seq")
                .values_list("type", flat=True)
            ) == ["instance_started", "step_failed", "instance_failed"]
    finally:
        registry.unregister("t_unit_map_first", 1)


def test_an_item_left_scheduled_by_a_cancel_is_cancelled_when_rung_again(
    workflows: Any, rung: list, django_capture_on_commit_callbacks: Any
) -> None:
    workflows("t_unit_map_orphan", concurrency=2)
    instance = start("t_unit_map_orphan", list(range(4)))
    engine.step_execute(step_run_id=steps_of(instance)["source"].pk, attempt=1)
    orphan = items_of(instance)[0]
    engine.instance_cancel(instance_id=instance.pk, actor="test")
    # as if its row had been locked by its own transaction during the cancel (SKIP LOCKED)
    MapItem.objects.filter(pk=orphan.pk).update(
        state="scheduled", finished_at=None, next_attempt_at=orphan.next_attempt_at
    )
    later = timezone.now() + timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        sweepers.sweep_doorbells(now=later)
    bell = next(b for b in rung if b.task == "run_map_item" and b.step_run_id == orphan.pk)
    assert item_execute(item_id=bell.step_run_id, attempt=bell.attempt) == "stale"
    orphan.refresh_from_db()
    assert orphan.state == "cancelled" and calls == []
