"""The instance API's hand-built representations (``InstanceSerializer`` and
``StepRunSerializer``'s ``to_representation``) against DRF's generic loop over the declared
fields, and a start's 201 answer (built from the rows the engine wrote, no read-back) against
the same instance read back by ``GET``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone
from rest_framework import serializers

from orchestration import sealing
from orchestration.api.serializers import InstanceSerializer, StepRunSerializer, step_data
from orchestration.models import StepRun, WorkflowInstance
from tests.orchestration.test_api import INSTANCES, token_client

AT = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def generic_instance(obj: WorkflowInstance, context: dict[str, Any]) -> dict[str, Any]:
    return serializers.ModelSerializer.to_representation(InstanceSerializer(context=context), obj)


def generic_step(step: StepRun, context: dict[str, Any]) -> dict[str, Any]:
    return serializers.ModelSerializer.to_representation(StepRunSerializer(context=context), step)


def steps_of(instance: WorkflowInstance) -> list[StepRun]:
    sealed = sealing.seal_value("the step's secret")
    return [
        StepRun(pk=1, instance=instance, name="plain", kind="task", state="pending"),
        StepRun(
            pk=2,
            instance=instance,
            name="done",
            kind="task",
            state="succeeded",
            attempt=3,
            scheduled_at=AT,
            started_at=AT + timedelta(seconds=1),
            finished_at=AT + timedelta(seconds=2),
            output={"total": 12.5, "token": "abc", "code": sealed, "rows": [{"password": "x"}]},
        ),
        StepRun(
            pk=3,
            instance=instance,
            name="broken",
            kind="task",
            state="retrying",
            attempt=2,
            next_attempt_at=AT + timedelta(minutes=5),
            timeout_at=AT + timedelta(minutes=1),
            error={"type": "ValueError", "message": "no", "traceback": "..."},
        ),
        StepRun(
            pk=4,
            instance=instance,
            name="undo",
            kind="task",
            state="compensating",
            comp_phase="failed",
        ),
        StepRun(pk=5, instance=instance, name="fan", kind="map", state="running"),
        StepRun(pk=6, instance=instance, name="wait", kind="signal", state="waiting", output=[]),
    ]


def instances(user: Any) -> list[WorkflowInstance]:
    parent = WorkflowInstance(id=uuid.uuid4(), workflow="parent_wf")
    parent_step = StepRun(pk=99, instance=parent, name="kyc", kind="child")
    plain = WorkflowInstance(
        id=uuid.uuid4(),
        workflow="t_sequence",
        version=2,
        state="running",
        input={"amount": 10, "nested": {"api_key": "k", "ok": [1, 2]}},
        business_key="",
        created_at=AT,
        updated_at=AT,
    )
    full = WorkflowInstance(
        id=uuid.uuid4(),
        workflow="t_sentinel",
        version=1,
        state="failed",
        input={"secret": sealing.seal_value("s3cret"), "who": "ann"},
        output={"result": "x", "session": "y"},
        error={"type": "RuntimeError", "message": "boom", "step": "broken"},
        business_key="PO-1",
        idempotency_key="key-1",
        started_by=user,
        created_at=AT,
        started_at=AT,
        finished_at=AT + timedelta(hours=1),
        deadline_at=AT + timedelta(days=2),
        updated_at=AT + timedelta(hours=1),
        schedule_id=7,
        scheduled_for=AT - timedelta(minutes=1),
        parent_step=parent_step,
        parent_attempt=1,
    )
    child = WorkflowInstance(id=uuid.uuid4(), workflow="kid", state="succeeded", parent_attempt=2)
    for instance, links in ((plain, []), (full, [(child, "kyc")])):
        instance._prefetched_objects_cache = {"steps": steps_of(instance)}
        instance.child_links = links
    return [plain, full]


@pytest.mark.django_db
@pytest.mark.parametrize("reveal", [False, True], ids=["masked", "revealed"])
@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_the_hand_built_representations_equal_the_generic_ones(
    django_user_model: Any, reveal: bool, zone: str
) -> None:
    user = django_user_model.objects.create_user("ann")
    counts = {5: {"total": 3, "pending": 1, "succeeded": 2}}
    with timezone.override(zone):
        for context in ({"reveal": reveal}, {"reveal": reveal, "map_counts": counts}):
            for instance in instances(user):
                for step in instance.steps.all():
                    if step.kind == "map" and "map_counts" not in context:
                        continue  # without the page's counts it is one query (tested below)
                    fast = step_data(step, context)
                    assert fast == generic_step(step, context)
                    assert list(fast) == list(generic_step(step, context))
                if "map_counts" not in context:
                    continue
                fast = InstanceSerializer(context=context).to_representation(instance)
                generic = generic_instance(instance, context)
                assert fast == generic
                assert list(fast) == list(generic)  # the same order of keys
    # The values really differ between the cases compared: masking, revealing, time zones.
    shown = InstanceSerializer(context={"reveal": reveal, "map_counts": counts}).to_representation(
        instances(user)[1]
    )
    assert shown["input"]["secret"] == ("s3cret" if reveal else sealing.MASK)
    assert shown["parent"] == {"id": shown["parent"]["id"], "workflow": "parent_wf", "step": "kyc"}
    assert shown["children"][0]["step"] == "kyc"
    assert [s["undo_failed"] for s in shown["steps"]] == [False, False, False, True, False, False]
    assert shown["steps"][4]["items"] == counts[5]


@pytest.mark.django_db
def test_a_map_step_without_the_pages_counts_reads_them_as_the_generic_field_does(
    django_user_model: Any,
) -> None:
    instance = instances(django_user_model.objects.create_user("ann"))[0]
    fan = [s for s in instance.steps.all() if s.kind == "map"][0]
    assert step_data(fan, {}) == generic_step(fan, {})
    assert step_data(fan, {})["items"] is None  # no items stored for it


@pytest.mark.django_db
def test_a_starts_answer_is_the_instance_as_read_back(django_user_model: Any) -> None:
    # The 201 is built from what the engine wrote (no query for the steps); a GET of the same
    # instance reads the rows back: they must agree to the microsecond.
    user = django_user_model.objects.create_user("starter", password="pw-starter-123")
    client = token_client(user)
    with time_machine.travel(AT, tick=False):
        for body in (
            {"workflow": "t_sequence", "input": {"n": 1}, "business_key": "B-1"},
            {"workflow": "t_parallel", "input": {}},
        ):
            started = client.post(
                INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="k" + body["workflow"]
            )
            assert started.status_code == 201, started.content
            read = client.get(f"{INSTANCES}{started.json()['id']}/")
            assert read.status_code == 200
            assert started.json() == read.json()
            assert started.json()["steps"][0]["state"] == "scheduled"
            # A repeat answers 200 with the same body, read back.
            again = client.post(
                INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="k" + body["workflow"]
            )
            assert again.status_code == 200
            assert again.json() == read.json()


@pytest.mark.django_db
def test_a_start_with_a_sealed_input_answers_masked(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("starter", password="pw-starter-123")
    answer = token_client(user).post(
        INSTANCES,
        {"workflow": "t_sentinel", "input": {"secret": "hunter2"}},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    assert answer.json()["input"]["secret"] == sealing.MASK
    assert "hunter2" not in answer.content.decode()


@pytest.mark.django_db
def test_a_starts_statement_is_parsed_once_per_workflow_shape(django_user_model: Any) -> None:
    # psycopg keeps the parsed form of statements up to the limits orchestration.apps raises
    # (its own: 4,096 bytes, 50 parameters); the start's one INSERT has about 100 parameters.
    from psycopg import _queries

    from orchestration.apps import STATEMENT_CACHE_MAX_PARAMS

    assert _queries.MAX_CACHED_STATEMENT_PARAMS >= STATEMENT_CACHE_MAX_PARAMS > 50
    client = token_client(django_user_model.objects.create_user("starter", password="pw-123456"))
    body = {"workflow": "t_sequence", "input": {"n": 1}}
    assert client.post(INSTANCES, body, format="json").status_code == 201
    before = _queries._query2pg_client.cache_info()
    for _ in range(3):
        assert client.post(INSTANCES, body, format="json").status_code == 201
    after = _queries._query2pg_client.cache_info()
    assert after.misses == before.misses  # nothing parsed again
    assert after.hits >= before.hits + 3
