"""Parent and child link to each other: the instance API (``parent``, ``children``, with a
query count that does not grow with the page), the status page and the admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from orchestration import engine
from orchestration.models import WorkflowInstance
from tests.orchestration.test_api import INSTANCES, LIST_QUERY_BOUND, start_as, token_client
from tests.orchestration.test_children import children_of, play

pytestmark = pytest.mark.django_db


def test_api_links_a_parent_to_its_children_and_back(user: Any) -> None:
    parent = start_as(user, "child_parent", input={"customer": "acme", "fail_first": True})
    play(parent)
    first, second = children_of(parent)
    client = token_client(user)
    body = client.get(f"{INSTANCES}{parent.pk}/").json()
    assert body["parent"] is None
    assert body["children"] == [
        {
            "id": str(first.pk),
            "workflow": "child_kyc",
            "state": "compensated",
            "step": "verify",
            "attempt": 1,
        },
        {
            "id": str(second.pk),
            "workflow": "child_kyc",
            "state": "succeeded",
            "step": "verify",
            "attempt": 2,
        },
    ]
    child = client.get(f"{INSTANCES}{second.pk}/").json()  # started by the same person
    assert child["parent"] == {"id": str(parent.pk), "workflow": "child_parent", "step": "verify"}
    assert child["children"] == []


def test_instance_list_query_count_does_not_grow_with_children(
    user: Any, staff: Any, django_assert_max_num_queries: Any
) -> None:
    client = token_client(staff)
    start_as(user, "t_sequence")
    with django_assert_max_num_queries(LIST_QUERY_BOUND):
        client.get(INSTANCES)  # no child steps on the page: no children query
    for _ in range(2):
        start_as(user, "child_parent_wait")
    with CaptureQueriesContext(connection) as few:
        response = client.get(INSTANCES)
    assert len(few) <= LIST_QUERY_BOUND + 1  # one query for every page's children
    for _ in range(8):
        start_as(user, "child_parent_wait")
    with CaptureQueriesContext(connection) as many:
        response = client.get(INSTANCES)
    assert len(many) == len(few)
    results = response.json()["results"]
    parents = [r for r in results if r["workflow"] == "child_parent_wait"]
    kids = [r for r in results if r["workflow"] == "child_wait"]
    assert len(parents) == 10 and len(kids) == 10
    assert all(len(p["children"]) == 1 for p in parents)
    assert {k["parent"]["id"] for k in kids} == {p["id"] for p in parents}


def test_status_page_links_parent_and_child_both_ways(client: Client, staff: Any) -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait", started_by=staff)
    (child,) = children_of(parent)
    client.force_login(staff)
    page = client.get(f"/instances/{parent.pk}/").content.decode()
    assert 'id="children"' in page and f"/instances/{child.pk}/" in page
    assert "child_wait" in page and "attempt 1" in page
    assert "Child workflow child_wait started" in page  # the timeline
    page = client.get(f"/instances/{child.pk}/").content.decode()
    assert 'id="parent-link"' in page and f"/instances/{parent.pk}/" in page
    assert "<code>hold</code>" in page


def test_admin_shows_parent_and_children(client: Client, superuser: Any) -> None:
    parent, _ = engine.instance_start(workflow="child_parent_wait")
    (child,) = children_of(parent)
    client.force_login(superuser)
    url = "/admin/orchestration/workflowinstance/{}/change/"
    page = client.get(url.format(parent.pk)).content.decode()
    assert url.format(child.pk) in page
    page = client.get(url.format(child.pk)).content.decode()
    assert url.format(parent.pk) in page and "<code>hold</code>" in page


def test_a_sealed_value_copied_into_a_child_is_masked_in_the_api(user: Any) -> None:
    parent = start_as(user, "child_parent_sealed", input={"ssn": "123-45-6789"})
    (child,) = children_of(parent)
    body = token_client(user).get(f"{INSTANCES}{child.pk}/").json()
    assert body["input"]["tax_id"] == "••••••" and body["input"]["note"] == "plain"
    assert "123-45-6789" not in str(body)
    assert WorkflowInstance.objects.filter(pk=child.pk).exists()
