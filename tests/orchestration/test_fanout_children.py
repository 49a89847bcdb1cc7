"""Map steps over child workflows (orchestration.fanout_children), in process: the worker and
the doorbells are played by hand. With a real worker: test_fanout_children_e2e.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.checks import run_checks
from django.utils import timezone

from orchestration import engine, sweepers
from orchestration.definitions import DefinitionError, RetryPolicy, Workflow, registry
from orchestration.fanout_children import child_item_sync, map_children
from orchestration.fanout_items import item_execute
from orchestration.fanout_models import MapItem
from orchestration.models import StepRun, WorkflowInstance
from orchestration.waits import signal_send
from tests.orchestration import test_children
from tests.orchestration.test_engine import refresh, run_ready, steps_of
from tests.orchestration.test_saga import run_compensations
from tests.workflows import ledger

pytestmark = pytest.mark.django_db

scratch = test_children.scratch  # the child step's tests' fixture: workflows for one test


@pytest.fixture(autouse=True)
def clean_ledger() -> None:
    ledger().flushdb()


def children_of(parent: WorkflowInstance) -> list[WorkflowInstance]:
    return list(
        WorkflowInstance.objects.filter(parent_item__step_run__instance=parent).order_by(
            "parent_item__index", "parent_attempt"
        )
    )


def items_of(parent: WorkflowInstance) -> list[MapItem]:
    return list(MapItem.objects.filter(step_run__instance=parent).order_by("index"))


def play(parent: WorkflowInstance, *, rounds: int = 60, ring_children: bool = True) -> int:
    """Play the worker: the parent's and children's steps, the items' doorbells and (unless
    told not to) the children's ``child_item_sync`` doorbells. Returns the most children seen
    running at once."""
    most = 0
    for _ in range(rounds):
        moved = False
        run_ready(parent)
        for child in children_of(parent):
            run_ready(child)
            run_compensations(child)
        most = max(most, sum(c.state == "running" for c in children_of(parent)))
        for item in items_of(parent):
            if item.state in ("scheduled", "retrying") and item.next_attempt_at <= timezone.now():
                item_execute(item_id=item.pk, attempt=item.attempt)
                moved = True
            elif item.state == "running" and ring_children:
                moved |= child_item_sync(item_id=item.pk, attempt=item.attempt).startswith("child_")
        if not moved and not any(
            s.state in ("scheduled", "retrying")
            for c in [parent, *children_of(parent)]
            for s in steps_of(c).values()
        ):
            return most
    return most


def start(workflow: str, **input: Any) -> WorkflowInstance:
    instance, _ = engine.instance_start(workflow=workflow, input=input)
    return instance


# -- registration ----------------------------------------------------------------------------------


def test_an_unknown_child_workflow_is_refused_at_registration() -> None:
    wf = Workflow("t_fc_unknown")
    map_children(wf, "each", workflow="no_such_workflow", items=lambda ctx: [])
    with pytest.raises(DefinitionError, match="unknown child workflow no_such_workflow"):
        registry.register(wf)
    assert registry.get("t_fc_unknown") is None


def test_an_unknown_child_version_is_refused_at_registration() -> None:
    wf = Workflow("t_fc_unknown_version")
    map_children(wf, "each", workflow="t_fc_item", version=7, items=lambda ctx: [])
    with pytest.raises(DefinitionError, match="unknown child workflow t_fc_item v7"):
        registry.register(wf)


def test_a_map_over_itself_is_refused() -> None:
    wf = Workflow("t_fc_self")
    map_children(wf, "each", workflow="t_fc_self", items=lambda ctx: [])
    with pytest.raises(DefinitionError, match="cannot start itself"):
        registry.register(wf)


def test_a_cycle_through_map_children_is_refused(scratch: Any) -> None:
    first = Workflow("t_fc_cycle_a")
    first.task(lambda ctx: {}, name="work")
    scratch(first)
    middle = Workflow("t_fc_cycle_b")
    map_children(middle, "each", workflow="t_fc_cycle_a", items=lambda ctx: [])
    scratch(middle)
    again = Workflow("t_fc_cycle_a", version=2)
    map_children(again, "each", workflow="t_fc_cycle_b", items=lambda ctx: [])
    with pytest.raises(DefinitionError, match="cycle: t_fc_cycle_a → t_fc_cycle_b"):
        registry.register(again)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"version": 0}, "version must be an integer"),
        ({"input": "fixed"}, "input must be callable"),
        ({"business_key": "fixed"}, "business_key must be callable"),
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"tolerate_failures": -1}, "tolerate_failures must be an integer >= 0"),
        ({"retry": RetryPolicy(max_attempts=0)}, "max_attempts"),
        ({"workflow": ""}, "workflow must name a registered workflow"),
    ],
)
def test_bad_options_are_refused_at_registration(options: dict[str, Any], message: str) -> None:
    wf = Workflow("t_fc_bad")
    map_children(wf, "each", **{"workflow": "t_fc_item", "items": lambda ctx: [], **options})
    with pytest.raises(DefinitionError, match=message):
        registry.register(wf)


def test_system_check_names_a_map_child_workflow_unregistered_later(scratch: Any) -> None:
    target = Workflow("t_fc_gone")
    target.task(lambda ctx: {}, name="work")
    scratch(target)
    parent = Workflow("t_fc_gone_parent")
    map_children(parent, "each", workflow="t_fc_gone", items=lambda ctx: [])
    scratch(parent)
    registry.unregister("t_fc_gone", 1)
    errors = [e for e in run_checks() if e.id == "signoff.E010"]
    assert len(errors) == 1 and "t_fc_gone" in errors[0].msg


# -- running ---------------------------------------------------------------------------------------


def test_one_child_per_item_outputs_in_order_and_the_window_counts_children() -> None:
    parent = start("t_fc_parent", n=12)
    play(parent)
    parent = refresh(parent)
    assert parent.state == "succeeded"
    kids = children_of(parent)
    assert len(kids) == 12 and {k.state for k in kids} == {"succeeded"}
    assert [k.parent_item.index for k in kids] == list(range(12))
    assert all(k.parent_attempt == 1 and k.parent_step_id is None for k in kids)
    # each child's output (its steps' outputs), in index order
    assert steps_of(parent)["squares"].output == [{"square": {"square": n * n}} for n in range(12)]
    # each child counted its parent's running children: the window held, and was used
    samples = [int(x) for x in ledger().lrange(f"fc:samples:{parent.pk}", 0, -1)]
    assert len(samples) == 12 and max(samples) == 5


def test_a_failed_child_fails_its_item_and_one_is_tolerated() -> None:
    parent = start("t_fc_parent", n=6, fail=[3])
    play(parent)
    parent = refresh(parent)
    assert parent.state == "succeeded"
    squares = steps_of(parent)["squares"]
    assert squares.output[3] is None and squares.output[4] == {"square": {"square": 16}}
    item = items_of(parent)[3]
    assert item.state == "failed"
    assert item.error["type"] == "signoff.ChildWorkflowFailed"
    assert "ended failed" in item.error["message"]


def test_one_failure_past_the_tolerance_fails_fast_and_cancels_running_children() -> None:
    parent = start("t_fc_parent", n=10, fail=[0, 1])
    # the children run one round: 0 and 1 fail, 2-4 succeed but are not told yet
    run_ready(parent)
    for item in items_of(parent):
        if item.state == "scheduled":
            item_execute(item_id=item.pk, attempt=item.attempt)
    for child in children_of(parent)[:2]:
        run_ready(child)
    for item in items_of(parent)[:2]:
        child_item_sync(item_id=item.pk, attempt=item.attempt)
    parent = refresh(parent)
    assert parent.state == "failed"
    squares = steps_of(parent)["squares"]
    assert squares.state == "failed" and squares.error["type"] == "signoff.MapItemFailed"
    states = [i.state for i in items_of(parent)]
    assert states[:2] == ["failed", "failed"] and set(states[2:]) == {"cancelled"}
    kids = children_of(parent)
    assert len(kids) == 5  # the window: nothing started after the failure
    assert [k.state for k in kids[2:]] == ["cancelled"] * 3


def test_cancelling_the_parent_cancels_running_children_and_their_sagas_unwind() -> None:
    parent = start("t_fc_parent_wait", customers=["a", "b", "c"])
    play(parent)
    kids = children_of(parent)
    assert len(kids) == 2  # concurrency 2; the third waits its turn
    assert all(steps_of(k)["go"].state == "waiting" for k in kids)
    engine.instance_cancel(instance_id=parent.pk, reason="stop", actor="test")
    for kid in kids:
        run_compensations(kid)
    assert refresh(parent).state == "cancelled"
    assert [refresh(k).state for k in kids] == ["compensated", "compensated"]
    assert all(ledger().hget(f"ledger:{k.pk}", "released") == b"1" for k in kids)
    assert {i.state for i in items_of(parent)} == {"cancelled"}
    # the children's end doorbells, late, change nothing
    for item in items_of(parent):
        assert child_item_sync(item_id=item.pk, attempt=item.attempt) == "stale"
    assert len(children_of(parent)) == 2


def test_a_repeated_item_doorbell_starts_no_second_child() -> None:
    parent = start("t_fc_parent_wait", customers=["a"])
    (item,) = items_of(parent)
    item_execute(item_id=item.pk, attempt=item.attempt)
    item_execute(item_id=item.pk, attempt=item.attempt)
    assert len(children_of(parent)) == 1
    assert MapItem.objects.get(pk=item.pk).state == "running"


def test_a_child_that_ends_after_a_signal_completes_its_item() -> None:
    parent = start("t_fc_parent_wait", customers=["a"])
    play(parent)
    (kid,) = children_of(parent)
    signal_send(instance_id=kid.pk, name="go", payload={"ok": True})
    play(parent)
    assert refresh(parent).state == "succeeded"
    assert steps_of(parent)["holds"].output == [{"go": steps_of(kid)["go"].output}]


def test_an_invalid_child_input_fails_the_item_and_writes_no_child(scratch: Any) -> None:
    wf = Workflow("t_fc_bad_input")
    map_children(
        wf,
        "each",
        workflow="t_fc_item",
        items=lambda ctx: [1, 2],
        input=lambda ctx, n: {"n": "not a number", "parent": "p"},
        tolerate_failures=2,
    )
    scratch(wf)
    parent = start("t_fc_bad_input")
    play(parent)
    assert refresh(parent).state == "succeeded"
    assert children_of(parent) == []
    assert [i.error["type"] for i in items_of(parent)] == ["signoff.ChildInputInvalid"] * 2
    assert steps_of(parent)["each"].output == [None, None]


def test_items_that_are_not_a_list_fail_the_step_and_start_no_child(scratch: Any) -> None:
    wf = Workflow("t_fc_not_list")
    wf.task(lambda ctx: {}, name="first")
    map_children(wf, "each", workflow="t_fc_item", items=lambda ctx: "abc", after=["first"])
    scratch(wf)
    parent = start("t_fc_not_list")
    play(parent)
    parent = refresh(parent)
    assert parent.state == "failed"
    assert steps_of(parent)["each"].error["type"] == "signoff.InvalidItems"
    assert WorkflowInstance.objects.filter(parent_item__isnull=False).count() == 0


def test_the_sweeper_tells_an_item_whose_child_ended_when_its_doorbell_was_lost() -> None:
    parent = start("t_fc_parent", n=2)
    play(parent, ring_children=False)
    assert {i.state for i in items_of(parent)} == {"running"}
    assert {c.state for c in children_of(parent)} == {"succeeded"}
    assert sweepers.sweep_waiting_deadlines() == 0  # within the doorbell's grace
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        assert sweepers.sweep_waiting_deadlines() == 2
        play(parent)
    assert refresh(parent).state == "succeeded"
    assert StepRun.objects.get(instance=parent, name="total").output == {"squares": [0, 1]}


# -- links -----------------------------------------------------------------------------------------


def test_a_map_child_links_to_its_parent_and_item_in_the_api_and_status_page(
    user: Any, client: Any, django_assert_max_num_queries: Any
) -> None:
    from tests.orchestration.test_api import INSTANCES, LIST_QUERY_BOUND, start_as, token_client

    parent = start_as(user, "t_fc_parent_wait", input={"customers": ["a", "b"]})
    play(parent)
    first, second = children_of(parent)
    api = token_client(user)
    body = api.get(f"{INSTANCES}{second.pk}/").json()
    assert body["parent"] == {
        "id": str(parent.pk),
        "workflow": "t_fc_parent_wait",
        "step": "holds",
        "item": 1,
    }
    with django_assert_max_num_queries(LIST_QUERY_BOUND + 1):
        listed = api.get(INSTANCES).json()["results"]
    assert {r["parent"]["item"] for r in listed if r["parent"]} == {0, 1}
    client.force_login(user)
    page = client.get(f"/instances/{first.pk}/").content.decode()
    assert 'id="parent-link"' in page and f"/instances/{parent.pk}/" in page
    assert "<code>holds</code> for item 0" in page


def test_a_failed_child_is_followed_by_a_new_one_under_the_retry_policy(scratch: Any) -> None:
    wf = Workflow("t_fc_retry")
    map_children(
        wf,
        "each",
        workflow="t_fc_item",
        items=lambda ctx: [2, 3],
        # the item's first child fails; its second succeeds
        input=lambda ctx, n: {"n": n, "parent": str(ctx.instance_id), "fail": ctx.attempt == 1},
        retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=1)),
    )
    scratch(wf)
    parent = start("t_fc_retry")
    play(parent)
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        play(parent)
        assert refresh(parent).state == "succeeded"
    kids = children_of(parent)
    assert [(k.parent_item.index, k.parent_attempt, k.state) for k in kids] == [
        (0, 1, "failed"),
        (0, 2, "succeeded"),
        (1, 1, "failed"),
        (1, 2, "succeeded"),
    ]
    assert steps_of(parent)["each"].output == [{"square": {"square": 4}}, {"square": {"square": 9}}]
    assert [i.attempt for i in items_of(parent)] == [2, 2]
