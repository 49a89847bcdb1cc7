"""Map steps as people see them (the API's ``items``, the status page's summary) and their
sealed items; in process, as test_fanout.py."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import engine
from orchestration.definitions import Workflow, registry
from orchestration.fanout import map_step
from orchestration.fanout_items import item_execute
from orchestration.sealing import is_sealed
from tests.orchestration.test_fanout import (  # noqa: F401 - fixtures
    _item,
    calls,
    drive,
    items_of,
    plan,
    refresh,
    steps_of,
    workflows,
)

pytestmark = pytest.mark.django_db


def test_api_step_resource_counts_the_items(
    workflows: Any,  # noqa: F811 - the fixture imported above
    rung: list,
    django_user_model: Any,
    django_assert_max_num_queries: Any,
) -> None:
    from django.urls import reverse  # noqa: F401 - keeps the url conf loaded
    from rest_framework.test import APIClient

    starter = django_user_model.objects.create_user("mapper", password="pw-mapper-123")
    workflows("t_unit_map_api", concurrency=2, tolerate_failures=1)
    plan[0] = ["fatal"]
    instance, _ = engine.instance_start(
        workflow="t_unit_map_api", input={"values": list(range(5))}, started_by=starter
    )
    engine.step_execute(step_run_id=steps_of(instance)["source"].pk, attempt=1)
    for item in items_of(instance)[:2]:
        item_execute(item_id=item.pk, attempt=1)
    client = APIClient()
    client.force_authenticate(starter)
    body = client.get(f"/api/v1/instances/{instance.pk}/").json()
    steps = {s["name"]: s for s in body["steps"]}
    assert steps["source"]["items"] is None
    assert steps["each"]["kind"] == "map" and steps["each"]["state"] == "waiting"
    assert steps["each"]["items"] == {
        "total": 5,
        "pending": 1,
        "scheduled": 2,
        "running": 0,
        "retrying": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "in_flight": 2,
    }
    # the list carries the counts too, in a constant number of queries
    for _ in range(3):
        engine.instance_start(workflow="t_unit_map_api", input={"values": [1]}, started_by=starter)
    with django_assert_max_num_queries(8):
        listed = client.get("/api/v1/instances/?workflow=t_unit_map_api").json()
    assert len(listed["results"]) == 4
    counted = [s["items"] for i in listed["results"] for s in i["steps"] if s["name"] == "each"]
    assert [c and c["total"] for c in counted].count(None) == 3  # no items yet
    assert [c for c in counted if c] == [steps["each"]["items"]]


def test_status_page_shows_an_items_summary_not_a_row_per_item(
    workflows: Any,  # noqa: F811 - the fixture imported above
    rung: list,
    client: Any,
    django_user_model: Any,
) -> None:
    starter = django_user_model.objects.create_user("mapper", password="pw-mapper-123")
    workflows("t_unit_map_page", concurrency=5)
    instance, _ = engine.instance_start(
        workflow="t_unit_map_page", input={"values": list(range(300))}, started_by=starter
    )
    engine.step_execute(step_run_id=steps_of(instance)["source"].pk, attempt=1)
    for item in items_of(instance)[:3]:
        item_execute(item_id=item.pk, attempt=1)
    client.force_login(starter)
    page = client.get(f"/instances/{instance.pk}/").content.decode()
    assert "3 of 300 items done · 0 failed · 5 in flight" in page
    assert page.count("<tr") < 40  # bounded: no row per item


def _sealed_map(name: str) -> Any:
    """A map over the sealed input field ``cards``, registered (unregister it after), and an
    instance of it over [4111, 5500]."""
    wf = Workflow(name, sensitive=["input.cards"])
    map_step(wf, "each", items=lambda ctx: ctx.input["cards"], concurrency=2)(_item)
    registry.register(wf)
    calls.clear()
    plan.clear()
    return engine.instance_start(workflow=name, input={"cards": [4111, 5500]})[0]


def test_items_of_a_workflow_with_sealed_fields_are_stored_sealed(rung: list) -> None:
    try:
        instance = _sealed_map("t_unit_map_sealed_items")
        stored = [i.item for i in items_of(instance)]
        assert all(is_sealed(value) for value in stored)
        assert "4111" not in str(stored)
        drive(instance)
        assert refresh(instance).state == "succeeded"
        assert steps_of(instance)["each"].output == [
            {"i": 0, "double": 8222},
            {"i": 1, "double": 11000},
        ]
    finally:
        registry.unregister("t_unit_map_sealed_items", 1)


def test_key_rotation_reencrypts_sealed_map_items(rung: list, settings: Any) -> None:
    # `manage.py signoff rotate-keys` covers map items: after the old key is removed the
    # items still open, and the map runs to the end.
    from cryptography.fernet import Fernet

    from orchestration import sealing
    from orchestration.retention import rotate_keys

    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SIGNOFF_ENCRYPTION_KEYS = first
    try:
        instance = _sealed_map("t_unit_map_rotated_items")
        before = [i.item for i in items_of(instance)]
        settings.SIGNOFF_ENCRYPTION_KEYS = f"{second},{first}"
        assert rotate_keys() >= 3  # the instance's input and the two items
        settings.SIGNOFF_ENCRYPTION_KEYS = second  # the old key removed
        after = [i.item for i in items_of(instance)]
        assert all(is_sealed(value) for value in after) and after != before
        assert [sealing.open_value(value) for value in after] == [4111, 5500]
        drive(instance)
        assert refresh(instance).state == "succeeded"
    finally:
        registry.unregister("t_unit_map_rotated_items", 1)
