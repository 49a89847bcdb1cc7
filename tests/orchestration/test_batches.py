"""Batch operations, the services: the filter, the preview, creation and its refusals, the
runner (each instance once, outcomes, throttling, cancel) and the stale-batch sweeper."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from orchestration import batch_runner, batches, engine
from orchestration.batch_models import BatchItem, BatchOperation
from orchestration.errors import Conflict, InvalidInput, NotAllowed
from orchestration.models import Event, WorkflowInstance
from tests.orchestration.test_engine import refresh, run_ready

pytestmark = pytest.mark.django_db


def failed_instance(key: str = "", workflow: str = "t_nonretryable") -> WorkflowInstance:
    instance, _ = engine.instance_start(workflow=workflow, business_key=key)
    run_ready(instance)
    instance = refresh(instance)
    assert instance.state == "failed"
    return instance


def running_instance(key: str = "") -> WorkflowInstance:
    instance, _ = engine.instance_start(workflow="t_sequence", business_key=key)
    return refresh(instance)


def nothing_made() -> bool:
    return not BatchOperation.objects.exists() and not BatchItem.objects.exists()


def events(instance: WorkflowInstance, type: str) -> int:
    return Event.objects.filter(instance=instance, type=type).count()


# -- the filter ---------------------------------------------------------------------------------


def test_filter_selects_by_failed_step_error_type_and_key_prefix(operator: Any) -> None:
    a = failed_instance("INV-1")
    b = failed_instance("INV-2")
    failed_instance("PO-1")
    running_instance("INV-3")
    preview = batches.batch_create(
        action="retry",
        filter={
            "workflow": "t_nonretryable",
            "failed_step": "validate",
            "error_type": "ValueError",
            "business_key_prefix": "INV-",
            "state": "failed",
        },
        user=operator,
        dry_run=True,
    )
    assert isinstance(preview, batches.Preview)
    assert preview.count == 2
    assert {i.pk for i in preview.sample} == {a.pk, b.pk}
    assert nothing_made()
    assert batches.matching_instances({"error_type": "builtins.ValueError"}).count() == 3
    assert batches.matching_instances({"failed_step": "other"}).count() == 0


def test_filter_time_range_is_from_inclusive_to_exclusive(operator: Any) -> None:
    a = failed_instance()
    after = (a.created_at + timedelta(microseconds=1)).isoformat()
    at = a.created_at.isoformat()
    assert batches.matching_instances(batches.normalise_filter({"created_from": at})).count() == 1
    assert batches.matching_instances(batches.normalise_filter({"created_to": at})).count() == 0
    f = batches.normalise_filter({"created_from": at, "created_to": after})
    assert list(batches.matching_instances(f)) == [a]


@pytest.mark.parametrize(
    ("filter", "code"),
    [
        ({"flavour": "x"}, "invalid_filter"),
        ({"created_from": "yesterday"}, "invalid_time_range"),
        ({"created_from": "2026-12-05T10:00:00"}, "invalid_time_range"),  # no time zone
        (
            {"updated_from": "2026-12-05T10:00:00Z", "updated_to": "2026-12-05T09:00:00Z"},
            "invalid_time_range",
        ),
        ({"version": "1"}, "invalid_filter"),
        ({"state": "sleeping"}, "invalid_filter"),
        ({"workflow": ""}, "invalid_filter"),
        ({"workflow": "x" * 201}, "invalid_filter"),
        ({"ids": []}, "invalid_ids"),
        ({"ids": ["not-a-uuid"]}, "invalid_ids"),
        ({"ids": [str(uuid.uuid4())], "workflow": "x"}, "invalid_filter"),
        ({"ids": [str(uuid.uuid4())]}, "unknown_ids"),
        ({"workflow": "no_such_workflow"}, "nothing_selected"),
        ("workflow=x", "invalid_filter"),
    ],
)
def test_bad_filters_are_refused_and_nothing_is_made(operator: Any, filter: Any, code: str) -> None:
    failed_instance()
    with pytest.raises(InvalidInput) as exc:
        batches.batch_create(action="retry", filter=filter, user=operator, reason="fix")
    assert exc.value.code == code
    assert nothing_made()


def test_oversized_id_list_is_refused(operator: Any, settings: Any) -> None:
    settings.SIGNOFF_BATCH_MAX_INSTANCES = 3
    ids = [str(uuid.uuid4()) for _ in range(4)]
    with pytest.raises(InvalidInput) as exc:
        batches.batch_create(action="retry", filter={"ids": ids}, user=operator, reason="x")
    assert exc.value.code == "too_many_ids"
    assert nothing_made()


def test_a_filter_matching_more_than_the_cap_is_refused(operator: Any, settings: Any) -> None:
    settings.SIGNOFF_BATCH_MAX_INSTANCES = 1
    failed_instance()
    failed_instance()
    with pytest.raises(InvalidInput) as exc:
        batches.batch_create(action="retry", filter={"state": "failed"}, user=operator, reason="x")
    assert exc.value.code == "too_many_instances"
    assert nothing_made()


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"action": "explode"}, InvalidInput, "invalid_action"),
        ({"filter": {}}, InvalidInput, "confirm_all_required"),
        ({"filter": None}, InvalidInput, "confirm_all_required"),
        ({"reason": ""}, InvalidInput, "reason_required"),
        ({"reason": "   "}, InvalidInput, "reason_required"),
        ({"reason": "x" * 1001}, InvalidInput, "reason_required"),
        ({"rate": 0}, InvalidInput, "invalid"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_made(
    operator: Any, kwargs: dict[str, Any], error: type, code: str
) -> None:
    failed_instance()
    args = {"action": "retry", "filter": {"state": "failed"}, "user": operator, "reason": "fix"}
    with pytest.raises(error) as exc:
        batches.batch_create(**{**args, **kwargs})
    assert exc.value.code == code
    assert nothing_made()


def test_no_filter_with_all_confirmed_selects_every_instance(operator: Any) -> None:
    failed_instance()
    running_instance()
    batch = batches.batch_create(
        action="pause", filter={}, user=operator, reason="freeze", confirm_all=True
    )
    assert batch.total == 2 and batch.items.count() == 2


def test_without_the_permission_nothing_is_made(viewer: Any) -> None:
    failed_instance()
    with pytest.raises(NotAllowed):
        batches.batch_create(action="retry", filter={"state": "failed"}, user=viewer, reason="x")
    assert nothing_made()


def test_a_second_batch_on_the_same_instances_is_refused_with_409(operator: Any) -> None:
    a = failed_instance()
    b = failed_instance()
    first = batches.batch_create(
        action="retry", filter={"ids": [str(a.pk)]}, user=operator, reason="one"
    )
    with pytest.raises(Conflict) as exc:
        batches.batch_create(action="cancel", filter={"state": "failed"}, user=operator, reason="2")
    assert exc.value.code == "batch_overlap" and f"#{first.pk}" in exc.value.message
    assert BatchOperation.objects.count() == 1 and BatchItem.objects.count() == 1
    # another instance is free; and once the first batch ended, its instances are too
    batches.batch_create(action="retry", filter={"ids": [str(b.pk)]}, user=operator, reason="3")
    batches.batch_cancel(batch_id=first.pk, user=operator)
    batches.batch_create(action="retry", filter={"ids": [str(a.pk)]}, user=operator, reason="4")


# -- the runner ----------------------------------------------------------------------------------


def test_creation_sends_the_first_run_on_commit(
    operator: Any, django_capture_on_commit_callbacks: Any, monkeypatch: Any
) -> None:
    rung: list[tuple] = []
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: rung.append((pk, countdown)))
    failed_instance()
    with django_capture_on_commit_callbacks(execute=True):
        batch = batches.batch_create(
            action="retry", filter={"state": "failed"}, user=operator, reason="fix"
        )
    assert rung == [(batch.pk, 0)]
    assert batch.state == "queued" and batch.total == 1


def test_a_retry_batch_retries_each_failed_instance_once_and_skips_the_others(
    operator: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    failed = [failed_instance() for _ in range(3)]
    running = running_instance()
    ids = [str(i.pk) for i in [*failed, running]]
    batch = batches.batch_create(action="retry", filter={"ids": ids}, user=operator, reason="fix")
    assert batch_runner.batch_run_chunk(batch_id=batch.pk, chunk=2) == "more"
    batch.refresh_from_db()
    assert (batch.state, batch.done, batch.cursor) == ("running", 2, 2)
    assert batch.heartbeat_at is not None
    assert batch_runner.batch_run_chunk(batch_id=batch.pk, chunk=2) == "done"
    batch.refresh_from_db()
    assert (batch.state, batch.done, batch.skipped, batch.failed) == ("done", 3, 1, 0)
    assert batch.percent == 100
    for instance in failed:
        assert refresh(instance).state == "running"
        assert events(instance, "instance_retried") == 1
        assert Event.objects.get(instance=instance, type="instance_retried").actor == "user:oper"
    skipped = BatchItem.objects.get(batch=batch, instance=running)
    assert skipped.outcome == "skipped" and "only failed instances" in skipped.message
    # a redelivered message finds nothing to do
    assert batch_runner.batch_run_chunk(batch_id=batch.pk) == "inactive"
    assert sum(events(i, "instance_retried") for i in failed) == 3


def test_cancel_pause_and_resume_batches_use_the_engine_services(
    operator: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    a, b = running_instance("A"), running_instance("B")

    def run(action: str, reason: str, instance: WorkflowInstance) -> BatchOperation:
        batch = batches.batch_create(
            action=action, filter={"ids": [str(instance.pk)]}, user=operator, reason=reason
        )
        batch_runner.batch_run_chunk(batch_id=batch.pk)
        batch.refresh_from_db()
        return batch

    assert run("pause", "freeze", a).done == 1
    assert refresh(a).paused_at is not None
    assert run("resume", "thaw", a).done == 1
    assert refresh(a).paused_at is None
    assert run("cancel", "not needed", b).done == 1
    assert refresh(b).state == "cancelled"
    assert Event.objects.get(instance=b, type="instance_cancelled").data["reason"] == "not needed"


def test_a_refused_instance_is_failed_with_the_reason_and_the_batch_goes_on(
    operator: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    a, b = failed_instance(), failed_instance()
    retry = engine.instance_retry

    def refuse_a(*, instance_id: Any, actor: str, user: Any, reason: str = "") -> Any:
        if instance_id == a.pk:
            raise NotAllowed("you may not retry your own approval")
        return retry(instance_id=instance_id, actor=actor, user=user)

    monkeypatch.setattr(engine, "instance_retry", refuse_a)
    batch = batches.batch_create(
        action="retry", filter={"ids": [str(a.pk), str(b.pk)]}, user=operator, reason="fix"
    )
    assert batch_runner.batch_run_chunk(batch_id=batch.pk) == "done"
    batch.refresh_from_db()
    assert (batch.done, batch.failed) == (1, 1)
    item = BatchItem.objects.get(batch=batch, instance=a)
    assert item.outcome == "failed" and item.message == "you may not retry your own approval"
    assert refresh(a).state == "failed" and refresh(b).state == "running"


def test_a_batch_whose_creator_lost_the_permission_fails_and_acts_on_nothing(
    operator: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    a = failed_instance()
    batch = batches.batch_create(
        action="retry", filter={"ids": [str(a.pk)]}, user=operator, reason="x"
    )
    operator.is_active = False
    operator.save()
    assert batch_runner.batch_run_chunk(batch_id=batch.pk) == "failed"
    batch.refresh_from_db()
    assert batch.state == "failed" and "may no longer operate" in batch.error
    assert (batch.done, batch.failed) == (0, 0) and refresh(a).state == "failed"
    assert batch_runner.batch_run_chunk(batch_id=batch.pk) == "inactive"


def test_a_cancelled_batch_stops_before_its_next_instance(operator: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    instances = [failed_instance() for _ in range(3)]
    batch = batches.batch_create(
        action="retry", filter={"state": "failed"}, user=operator, reason="x"
    )
    batch_runner.batch_run_chunk(batch_id=batch.pk, chunk=1)
    batches.batch_cancel(batch_id=batch.pk, user=operator)
    assert batch_runner.batch_run_chunk(batch_id=batch.pk) == "inactive"
    batch.refresh_from_db()
    assert (batch.state, batch.done, batch.cancelled_by) == ("cancelled", 1, "user:oper")
    assert [refresh(i).state for i in instances].count("failed") == 2
    with pytest.raises(Conflict):
        batches.batch_cancel(batch_id=batch.pk, user=operator)


def test_the_next_chunk_is_throttled_to_the_rate(
    operator: Any, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    rung: list[tuple] = []
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: rung.append((pk, countdown)))
    for _ in range(3):
        failed_instance()
    batch = batches.batch_create(
        action="retry", filter={"state": "failed"}, user=operator, reason="x", rate=1
    )
    with django_capture_on_commit_callbacks(execute=True):
        batch_runner.batch_run_chunk(batch_id=batch.pk, chunk=2)
    ((pk, countdown),) = rung
    assert pk == batch.pk and 1.0 < countdown <= 2.0
    batch.refresh_from_db()
    assert batch.heartbeat_at > timezone.now()  # the next beat is due after the countdown


def test_the_sweeper_rings_a_stale_running_batch_once(
    operator: Any, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    rung: list[int] = []
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: rung.append(pk))
    failed_instance()
    batch = batches.batch_create(
        action="retry", filter={"state": "failed"}, user=operator, reason="x"
    )
    later = timezone.now() + timedelta(seconds=61)
    with django_capture_on_commit_callbacks(execute=True):
        assert batch_runner.sweep_stale_batches(now=timezone.now()) == 0
        assert batch_runner.sweep_stale_batches(now=later) == 1
        assert batch_runner.sweep_stale_batches(now=later) == 0
    assert rung == [batch.pk]
    batch_runner.batch_run_chunk(batch_id=batch.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert batch_runner.sweep_stale_batches(now=later + timedelta(hours=1)) == 0  # done


def test_the_stale_batch_sweeper_is_a_beat_task_and_the_runner_is_registered() -> None:
    from orchestration import tasks
    from orchestration.periodic import wanted_periodic_tasks

    assert ("orchestration.sweep_stale_batches", 30) in wanted_periodic_tasks()
    assert batches._RUN_TASK == [tasks.run_batch]


@pytest.mark.django_db(transaction=True)
def test_two_batches_created_at_once_on_the_same_instances_one_is_refused(
    operator: Any, monkeypatch: Any, rung: list
) -> None:
    # rung: these starts commit, and a worker left running by an earlier end-to-end test must
    # not take their steps while run_ready plays the worker.
    import threading

    from django.db import connection

    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    for _ in range(3):
        failed_instance()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def create(action: str) -> None:
        try:
            barrier.wait()
            batches.batch_create(
                action=action, filter={"state": "failed"}, user=operator, reason=action
            )
            outcomes.append("created")
        except Conflict as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(a,)) for a in ("retry", "cancel")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["batch_overlap", "created"]
    assert BatchOperation.objects.count() == 1 and BatchItem.objects.count() == 3
