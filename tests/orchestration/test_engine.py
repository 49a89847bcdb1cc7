"""Engine services, in process: the step functions run in the test, doorbells are not sent
(the test transaction never commits). The same paths with a real worker are in test_e2e.py."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from orchestration import engine, sweepers
from orchestration.definitions import RetryPolicy, Workflow, registry
from orchestration.errors import Conflict, InvalidInput, NotFound
from orchestration.journal import Doorbell, ring_doorbells
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.workflows import ledger

pytestmark = pytest.mark.django_db


def steps_of(instance: WorkflowInstance) -> dict[str, StepRun]:
    return {s.name: s for s in StepRun.objects.filter(instance=instance)}


def event_types(instance: WorkflowInstance) -> list[str]:
    return list(
        Event.objects.filter(instance=instance).order_by("seq").values_list("type", flat=True)
    )


def run_ready(instance: WorkflowInstance, limit: int = 50) -> None:
    """Play the worker: execute every scheduled or due step until none is left."""
    for _ in range(limit):
        due = [
            s
            for s in steps_of(instance).values()
            if s.state in ("scheduled", "retrying") and s.next_attempt_at <= timezone.now()
        ]
        if not due:
            return
        for step in due:
            engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


def refresh(instance: WorkflowInstance) -> WorkflowInstance:
    return WorkflowInstance.objects.get(pk=instance.pk)


@pytest.fixture
def slow_retry_workflow():
    wf = Workflow("t_unit_slow_retry")

    def call(ctx):  # noqa: ANN001, ANN202
        if ctx.attempt == 1:
            raise RuntimeError("down")
        return {"ok": ctx.attempt}

    wf.task(
        call,
        name="call",
        retry=RetryPolicy(
            max_attempts=3,
            initial_interval=timedelta(minutes=10),
            max_interval=timedelta(hours=1),
            jitter=0,
        ),
        start_to_close=timedelta(minutes=1),
        schedule_to_close=timedelta(minutes=15),
    )
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)


def test_transitions_are_protected_and_guarded() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    with pytest.raises(AttributeError):
        instance.state = "succeeded"
    step = StepRun.objects.get(instance=instance, name="b")
    assert step.state == "pending"
    with pytest.raises(TransitionNotAllowed):
        step.succeed()
    with pytest.raises(TransitionNotAllowed):
        step.claim()


def test_start_writes_instance_steps_and_events_and_rings_after_commit(
    django_capture_on_commit_callbacks, rung
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        instance, created = engine.instance_start(
            workflow="t_parallel", input={"n": 1}, business_key="order-7"
        )
    assert created
    assert instance.state == "running"
    steps = steps_of(instance)
    assert steps["start"].state == "scheduled" and steps["start"].attempt == 1
    assert all(steps[f"branch_{i}"].state == "pending" for i in range(4))
    assert event_types(instance) == ["instance_started", "step_scheduled"]
    assert rung == []  # nothing before commit
    for callback in callbacks:
        callback()
    assert [(b.step_run_id, b.attempt) for b in rung] == [(steps["start"].pk, 1)]


def test_services_refuse_to_run_outside_a_transaction() -> None:
    from orchestration.journal import Journal

    instance = WorkflowInstance(workflow="x", version=1)
    with mock.patch("orchestration.journal.connection") as conn:
        conn.in_atomic_block = False
        with pytest.raises(RuntimeError, match="inside transaction.atomic"):
            Journal(instance)


def test_sequence_runs_to_success_with_outputs_in_context() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    run_ready(instance)
    instance = refresh(instance)
    assert instance.state == "succeeded"
    steps = steps_of(instance)
    assert steps["c"].output == {"step": "c", "attempt": 1, "saw": ["a", "b"]}
    assert instance.output == {"c": steps["c"].output}
    assert event_types(instance) == [
        "instance_started",
        "step_scheduled",
        "step_started",
        "step_succeeded",
        "step_scheduled",
        "step_started",
        "step_succeeded",
        "step_scheduled",
        "step_started",
        "step_succeeded",
        "instance_succeeded",
    ]


def test_parallel_branches_fan_out_and_join_once() -> None:
    instance, _ = engine.instance_start(workflow="t_parallel")
    run_ready(instance)
    assert refresh(instance).state == "succeeded"
    scheduled = Event.objects.filter(instance=instance, type="step_scheduled", step="join")
    assert scheduled.count() == 1
    assert steps_of(instance)["join"].output["saw"] == [
        "branch_0",
        "branch_1",
        "branch_2",
        "branch_3",
        "start",
    ]


def test_false_when_skips_the_step_and_later_steps_still_run() -> None:
    instance, _ = engine.instance_start(workflow="t_when", input={"skip": True})
    run_ready(instance)
    instance = refresh(instance)
    steps = steps_of(instance)
    assert instance.state == "succeeded"
    assert steps["b"].state == "skipped"
    assert steps["c"].state == "succeeded"
    assert "step_skipped" in event_types(instance)
    other, _ = engine.instance_start(workflow="t_when", input={"skip": False})
    run_ready(other)
    assert steps_of(other)["b"].state == "succeeded"


def test_retryable_error_backs_off_then_succeeds(slow_retry_workflow) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_unit_slow_retry")
        step = steps_of(instance)["call"]
        assert engine.step_execute(step_run_id=step.pk, attempt=1) == "failed"
        step.refresh_from_db()
        assert step.state == "retrying"
        assert step.attempt == 2
        assert step.next_attempt_at == start + timedelta(minutes=10)
        assert step.error["type"] == "builtins.RuntimeError"
        # An early doorbell does nothing.
        assert engine.step_execute(step_run_id=step.pk, attempt=2) == "stale"
    with time_machine.travel(start + timedelta(minutes=10), tick=False):
        assert engine.step_execute(step_run_id=step.pk, attempt=2) == "succeeded"
    assert refresh(instance).state == "succeeded"
    retrying = Event.objects.get(instance=instance, type="step_retrying")
    assert retrying.attempt == 1
    assert retrying.data["next_attempt"] == 2
    assert retrying.data["delay"] == 600.0


def test_same_message_twice_runs_the_step_once() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    step = steps_of(instance)["a"]
    assert engine.step_execute(step_run_id=step.pk, attempt=1) == "succeeded"
    assert engine.step_execute(step_run_id=step.pk, attempt=1) == "stale"
    assert engine.step_execute(step_run_id=step.pk, attempt=7) == "stale"
    assert ledger().hgetall(f"ledger:{instance.pk}") == {b"a:1": b"1"}


def test_non_retryable_error_fails_the_instance_at_once() -> None:
    instance, _ = engine.instance_start(workflow="t_nonretryable")
    run_ready(instance)
    instance = refresh(instance)
    steps = steps_of(instance)
    assert instance.state == "failed"
    assert steps["validate"].state == "failed" and steps["validate"].attempt == 1
    assert steps["never"].state == "pending"
    assert instance.error["reason"] == "non_retryable"
    assert event_types(instance)[-2:] == ["step_failed", "instance_failed"]


def test_exhausted_attempts_fail_the_instance() -> None:
    instance, _ = engine.instance_start(workflow="t_flaky", input={"fail_times": 10})
    start = timezone.now()
    for minute in range(6):
        with time_machine.travel(start + timedelta(minutes=minute), tick=False):
            run_ready(instance)
    instance = refresh(instance)
    assert instance.state == "failed"
    assert steps_of(instance)["call"].attempt == 4  # FAST allows four attempts
    assert instance.error["reason"] == "attempts_exhausted"


def test_start_to_close_timeout_is_swept_and_retried(slow_retry_workflow) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_unit_slow_retry")
        step = steps_of(instance)["call"]
        claimed = engine.step_claim(step_run_id=step.pk, attempt=1)
        assert claimed is not None  # the worker then dies without a word
        assert sweepers.sweep_step_timeouts() == 0
    with time_machine.travel(start + timedelta(minutes=1, seconds=1), tick=False):
        assert sweepers.sweep_step_timeouts() == 1
        assert sweepers.sweep_step_timeouts() == 0
    step.refresh_from_db()
    assert step.state == "retrying" and step.attempt == 2
    types = event_types(instance)
    assert types[-2:] == ["step_timed_out", "step_retrying"]
    # The dead attempt's late result is ignored.
    assert not engine.step_complete(step_run_id=step.pk, attempt=1, output={"late": True})


def test_schedule_to_close_ends_retries(slow_retry_workflow) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_unit_slow_retry")
        step = steps_of(instance)["call"]
        engine.step_execute(step_run_id=step.pk, attempt=1)  # retry in 10 min
    with time_machine.travel(start + timedelta(minutes=10), tick=False):
        assert engine.step_claim(step_run_id=step.pk, attempt=2) is not None
    # attempt 2 hangs; schedule-to-close (15 min) cuts it before start-to-close would retry
    with time_machine.travel(start + timedelta(minutes=15, seconds=1), tick=False):
        assert sweepers.sweep_step_timeouts() == 1
    step.refresh_from_db()
    instance = refresh(instance)
    assert step.state == "timed_out"
    assert instance.state == "failed"
    assert instance.error["type"] == "signoff.StepTimeout"
    timed_out = Event.objects.get(instance=instance, type="step_timed_out")
    assert timed_out.data == {"limit": "schedule_to_close"}


def test_workflow_deadline_fails_the_instance_and_cancels_waiting_steps() -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_fixable")
        assert instance.deadline_at == start + timedelta(hours=1)
    with time_machine.travel(start + timedelta(minutes=59), tick=False):
        assert sweepers.sweep_instance_deadlines() == 0
    with time_machine.travel(start + timedelta(hours=1, seconds=1), tick=False):
        assert sweepers.sweep_instance_deadlines() == 1
    instance = refresh(instance)
    assert instance.state == "failed"
    assert instance.error["type"] == "signoff.DeadlineExceeded"
    assert steps_of(instance)["first"].state == "cancelled"
    assert event_types(instance)[-2:] == ["step_cancelled", "instance_failed"]


def test_doorbell_sweeper_rings_only_overdue_steps_once_per_grace(
    django_capture_on_commit_callbacks, rung
) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        instance, _ = engine.instance_start(workflow="t_sequence")
    grace = timedelta(seconds=30)
    with time_machine.travel(start + timedelta(seconds=10), tick=False):
        assert sweepers.sweep_doorbells(grace=grace) == 0
    with time_machine.travel(start + timedelta(seconds=31), tick=False):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            assert sweepers.sweep_doorbells(grace=grace) == 1
            assert sweepers.sweep_doorbells(grace=grace) == 0
    for callback in callbacks:
        callback()
    step = steps_of(instance)["a"]
    assert [(b.step_run_id, b.attempt) for b in rung] == [(step.pk, 1)]
    assert step.rung_at == start + timedelta(seconds=31)
    assert step.state == "scheduled" and step.attempt == 1
    # Ringing is not a state change: no event.
    assert event_types(instance) == ["instance_started", "step_scheduled"]


def test_cancel_cancels_open_steps_and_ignores_late_results() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    step = steps_of(instance)["a"]
    assert engine.step_claim(step_run_id=step.pk, attempt=1) is not None
    engine.instance_cancel(instance_id=instance.pk, actor="user:ops", reason="customer left")
    instance = refresh(instance)
    assert instance.state == "cancelled"
    assert {s.state for s in steps_of(instance).values()} == {"cancelled"}
    assert not engine.step_complete(step_run_id=step.pk, attempt=1, output={})
    last = Event.objects.filter(instance=instance).order_by("-seq").first()
    assert (last.type, last.actor, last.data) == (
        "instance_cancelled",
        "user:ops",
        {"reason": "customer left"},
    )
    with pytest.raises(Conflict):
        engine.instance_cancel(instance_id=instance.pk)


def test_failed_instance_retries_from_its_failed_step() -> None:
    instance, _ = engine.instance_start(workflow="t_fixable")
    run_ready(instance)
    assert refresh(instance).state == "failed"
    ledger().set(f"fixed:{instance.pk}", 1)
    engine.instance_retry(instance_id=instance.pk, actor="user:ops")
    run_ready(instance)
    instance = refresh(instance)
    steps = steps_of(instance)
    assert instance.state == "succeeded"
    assert steps["first"].attempt == 1
    assert steps["fragile"].attempt == 2
    assert "instance_retried" in event_types(instance)


def test_only_failed_instances_can_be_retried() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    with pytest.raises(Conflict, match="only failed instances"):
        engine.instance_retry(instance_id=instance.pk)
    with pytest.raises(NotFound):
        engine.instance_retry(instance_id="00000000-0000-0000-0000-000000000000")


def test_history_is_gap_free_and_ordered() -> None:
    instance, _ = engine.instance_start(workflow="t_parallel")
    run_ready(instance)
    seqs = list(
        Event.objects.filter(instance=instance).order_by("seq").values_list("seq", flat=True)
    )
    assert seqs == list(range(1, len(seqs) + 1))
    assert refresh(instance).last_seq == len(seqs)


def test_events_are_append_only() -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    event = Event.objects.filter(instance=instance).first()
    event.type = "tampered"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()


def test_idempotency_key_returns_same_instance_or_conflicts() -> None:
    first, created = engine.instance_start(
        workflow="t_sequence", input={"a": 1}, idempotency_key="k-1"
    )
    again, created_again = engine.instance_start(
        workflow="t_sequence", input={"a": 1}, idempotency_key="k-1"
    )
    assert created and not created_again and again.pk == first.pk
    with pytest.raises(Conflict):
        engine.instance_start(workflow="t_sequence", input={"a": 2}, idempotency_key="k-1")
    assert WorkflowInstance.objects.count() == 1


def test_bad_start_input_changes_nothing() -> None:
    with pytest.raises(InvalidInput, match="unknown workflow"):
        engine.instance_start(workflow="nope")
    with pytest.raises(InvalidInput, match="customer"):
        engine.instance_start(workflow="customer_onboarding", input={})
    with pytest.raises(InvalidInput):
        engine.instance_start(
            workflow="customer_onboarding", input={"customer": "x"}, idempotency_key="k" * 201
        )
    assert WorkflowInstance.objects.count() == 0
    assert Event.objects.count() == 0


def test_lost_broker_at_commit_is_logged_not_raised(caplog) -> None:
    with mock.patch(
        "orchestration.tasks.run_step.apply_async", side_effect=ConnectionError("redis down")
    ):
        ring_doorbells([Doorbell(1, 1, None, None, None)])
    assert "the sweeper will ring it" in caplog.text


def test_rolled_back_transaction_rings_nothing(django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            engine.instance_start(workflow="t_sequence")
            raise RuntimeError("boom")
    assert callbacks == []
    assert WorkflowInstance.objects.count() == 0


def test_worker_runs_the_next_step_at_once_without_a_broker_round_trip(
    django_capture_on_commit_callbacks, rung
) -> None:
    import time

    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    with django_capture_on_commit_callbacks(execute=True):
        outcome = engine.step_execute(
            step_run_id=a.pk, attempt=1, chain_until=time.monotonic() + 3600
        )
    assert outcome == "succeeded"
    assert refresh(instance).state == "succeeded"  # a, b and c in one call
    assert rung == []  # b and c were never sent to the broker
    assert ledger().hgetall(f"ledger:{instance.pk}") == {b"a:1": b"1", b"b:1": b"1", b"c:1": b"1"}


def test_chaining_stops_when_the_next_step_would_outlive_the_message(
    django_capture_on_commit_callbacks, rung
) -> None:
    import time

    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    with django_capture_on_commit_callbacks(execute=True):
        engine.step_execute(step_run_id=a.pk, attempt=1, chain_until=time.monotonic() + 5)
    steps = steps_of(instance)
    assert steps["a"].state == "succeeded" and steps["b"].state == "scheduled"
    assert [(b.step_run_id, b.attempt) for b in rung] == [(steps["b"].pk, 1)]


def test_a_chained_step_is_claimed_by_the_completing_transaction(
    django_capture_on_commit_callbacks, rung
) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    assert engine.step_claim(step_run_id=a.pk, attempt=1) is not None
    seq_before = refresh(instance).last_seq
    with django_capture_on_commit_callbacks(execute=True):
        ok, claimed = engine._complete(a.pk, 1, {"x": 1}, hold=None)
    b = steps_of(instance)["b"]
    assert ok and claimed is not None and rung == []  # nothing sent to the broker
    assert (claimed.step_run_id, claimed.attempt) == (b.pk, 1)
    assert claimed.context.outputs == {"a": {"x": 1}}
    assert b.state == "running" and b.timeout_at is not None
    # One transaction, one event per state change, gap-free.
    events = list(instance.events.filter(seq__gt=seq_before).values_list("seq", "type", "step"))
    assert events == [
        (seq_before + 1, "step_succeeded", "a"),
        (seq_before + 2, "step_scheduled", "b"),
        (seq_before + 3, "step_started", "b"),
    ]


def test_a_chained_step_whose_worker_died_is_retried_after_its_start_to_close(
    django_capture_on_commit_callbacks, rung
) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    assert engine.step_claim(step_run_id=a.pk, attempt=1) is not None
    with django_capture_on_commit_callbacks(execute=True):
        ok, claimed = engine._complete(a.pk, 1, {"x": 1}, hold=None)
    assert ok and claimed is not None  # claimed for this worker, which now dies
    start = timezone.now()
    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            assert sweepers.sweep_doorbells(grace=timedelta(seconds=30)) == 0  # it is running
            assert sweepers.sweep_step_timeouts() == 0
    with time_machine.travel(start + timedelta(minutes=5, seconds=1), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            assert sweepers.sweep_step_timeouts() == 1
    b = steps_of(instance)["b"]
    assert b.attempt == 2 and b.state in ("retrying", "scheduled")
    assert [(bell.step_run_id, bell.attempt) for bell in rung] == [(b.pk, 2)]
    with time_machine.travel(b.next_attempt_at + timedelta(seconds=1), tick=False):
        engine.step_execute(step_run_id=b.pk, attempt=2)
    assert steps_of(instance)["b"].state == "succeeded"


def test_no_step_is_chained_when_the_instance_was_paused_meanwhile(
    django_capture_on_commit_callbacks, rung
) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    assert engine.step_claim(step_run_id=a.pk, attempt=1) is not None
    engine.instance_pause(instance_id=instance.pk, actor="op")
    with django_capture_on_commit_callbacks(execute=True):
        ok, claimed = engine._complete(a.pk, 1, {"x": 1}, hold=None)
    b = steps_of(instance)["b"]
    assert ok and claimed is None and rung == []
    assert b.state == "pending"  # nothing new is scheduled while paused


def test_a_when_predicate_that_raises_fails_its_step_and_the_instance() -> None:
    instance, _ = engine.instance_start(workflow="t_broken_when")
    run_ready(instance)
    steps = steps_of(instance)
    assert steps["a"].state == "succeeded"
    assert steps["b"].state == "failed" and steps["b"].attempt == 0
    assert steps["b"].error["message"] == "predicate broke"
    assert refresh(instance).state == "failed"
    failed = instance.events.get(type="step_failed")
    assert (failed.step, failed.data["reason"]) == ("b", "when_raised")
    seqs = list(instance.events.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_flush_writes_two_copies_of_one_step_in_order() -> None:
    from orchestration.journal import Journal

    instance, _ = engine.instance_start(workflow="t_sequence")
    with transaction.atomic():
        locked = WorkflowInstance.objects.select_for_update().get(pk=instance.pk)
        first = StepRun.objects.get(instance=instance, name="a")
        second = StepRun.objects.get(instance=instance, name="a")
        journal = Journal(locked, actor="test")
        first.rung_at = timezone.now() - timedelta(hours=1)
        journal.record("step_scheduled", step=first)
        second.rung_at = timezone.now()
        journal.record("step_scheduled", step=second)
        journal.flush()
    a = steps_of(instance)["a"]
    assert abs((a.rung_at - second.rung_at).total_seconds()) < 0.001  # the later copy wins
    seqs = list(instance.events.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_flush_on_postgresql_writes_what_the_orm_would(
    django_capture_on_commit_callbacks,
) -> None:
    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    claimed = engine.step_claim(step_run_id=a.pk, attempt=1)
    assert claimed is not None
    row = StepRun.objects.get(pk=a.pk)
    assert (row.state, row.attempt) == ("running", 1)
    assert row.started_at is not None and row.timeout_at > row.started_at
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.step_complete(step_run_id=a.pk, attempt=1, output={"nested": {"x": [1, 2]}})
    row.refresh_from_db()
    assert row.state == "succeeded" and row.output == {"nested": {"x": [1, 2]}}
    assert row.timeout_at is None and row.finished_at is not None
    fresh = refresh(instance)
    assert fresh.last_seq == fresh.events.count()
    assert steps_of(instance)["b"].state == "scheduled"


@pytest.mark.django_db(transaction=True)
def test_a_worker_skips_the_health_check_of_a_connection_it_just_used(settings) -> None:
    import time

    from django.db import connections

    from orchestration import tasks

    connection = connections["default"]
    settings.SIGNOFF_DB_HEALTH_CHECK_IDLE_SECONDS = 1.0
    connection.ensure_connection()
    tasks._note_task_end()
    tasks._reuse_database_connections()
    assert connection.connection is not None and connection.health_check_done is True
    tasks._last_task_end = time.monotonic() - 5  # idle for a while: check it again
    tasks._reuse_database_connections()
    assert connection.health_check_done is False
    settings.SIGNOFF_DB_HEALTH_CHECK_IDLE_SECONDS = 0  # 0: always check
    tasks._note_task_end()
    tasks._reuse_database_connections()
    assert connection.health_check_done is False
    # A connection that failed is closed before the next task and never trusted.
    connection.errors_occurred = True
    tasks._note_task_end()
    settings.SIGNOFF_DB_HEALTH_CHECK_IDLE_SECONDS = 1.0
    with mock.patch.object(type(connection), "is_usable", return_value=False):
        tasks._reuse_database_connections()
    assert connection.connection is None


@pytest.mark.django_db(transaction=True)
def test_a_claim_on_a_connection_the_server_dropped_reconnects_once(rung, caplog) -> None:
    import psycopg
    from django.db import connections

    instance, _ = engine.instance_start(workflow="t_sequence")
    a = steps_of(instance)["a"]
    conn = connections["default"]
    conn.ensure_connection()
    pid = conn.connection.info.backend_pid
    params = conn.get_connection_params()
    admin = psycopg.connect(
        host=params.get("host"),
        port=params.get("port"),
        user=params.get("user"),
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    conn.health_check_done = True  # as a worker does for a connection it used a moment ago
    assert engine.step_execute(step_run_id=a.pk, attempt=1) == "succeeded"
    assert "failed on a dropped connection; reconnecting" in caplog.text
    steps = steps_of(instance)
    assert steps["a"].state == "succeeded" and steps["a"].attempt == 1
    # a's doorbell at the start, then b's when a completed
    assert [bell.step_run_id for bell in rung] == [steps["a"].pk, steps["b"].pk]
