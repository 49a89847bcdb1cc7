"""New instances (single, batch, child) and attachments get time-ordered UUIDv7 ids, so their
index entries land at the end of the key's indexes (README "Cost as the work grows")."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from orchestration import engine
from orchestration.engine.batch_starting import instances_start_batch
from orchestration.ids import new_id
from orchestration.models import Attachment, WorkflowInstance

pytestmark = pytest.mark.django_db


def test_new_ids_are_version_7_and_ordered_by_creation() -> None:
    ids = [new_id() for _ in range(1000)]
    assert all(isinstance(i, uuid.UUID) and i.version == 7 for i in ids)
    assert len(set(ids)) == 1000
    # The first 48 bits are the milliseconds: never decreasing from one id to the next.
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)
    assert new_id() > ids[0] or (new_id().int >> 80) >= millis[0]


def test_a_start_and_a_batch_give_version_7_ids_in_start_order(rung: list) -> None:
    first, _ = engine.instance_start(workflow="t_sequence", input={"n": 1})
    results = instances_start_batch(
        items=[{"workflow": "t_sequence", "input": {"n": n}} for n in range(2, 5)]
    )
    later = [result.instance for result in results]
    assert [r.status for r in results] == [201, 201, 201]
    for instance in (first, *later):
        stored = WorkflowInstance.objects.get(pk=instance.pk)
        assert stored.id.version == 7, stored.id
    assert (first.id.int >> 80) <= min(i.id.int >> 80 for i in later)


def test_attachment_rows_default_to_version_7(user: Any) -> None:
    field = Attachment._meta.get_field("id")
    assert field.default is new_id
    assert WorkflowInstance._meta.get_field("id").default is new_id
