"""Batch operations over HTTP: the API (create, preview, list, progress, cancel, errors) and
the admin (the instance list's batch actions, the batch-by-filter page, the batches)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from orchestration import batch_runner, batches
from orchestration.batch_models import BatchItem, BatchOperation
from orchestration.models import WorkflowInstance
from tests.orchestration.test_batches import failed_instance, running_instance

pytestmark = pytest.mark.django_db

INSTANCES = "/admin/orchestration/workflowinstance/"
BATCHES = "/admin/orchestration/batchoperation/"


@pytest.fixture(autouse=True)
def _no_ring(monkeypatch: Any) -> None:
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def post(client: APIClient, path: str, body: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


# -- API ---------------------------------------------------------------------------------------


def test_api_previews_then_creates_a_batch_and_reports_progress(operator: Any) -> None:
    a, b = failed_instance("K-1"), failed_instance("K-2")
    client = api(operator)
    body = {"action": "retry", "filter": {"business_key_prefix": "K-"}, "dry_run": True}
    preview = post(client, "/api/v1/batches/", body)
    assert preview.status_code == 200
    assert preview.json()["count"] == 2
    assert {s["id"] for s in preview.json()["sample"]} == {str(a.pk), str(b.pk)}
    assert not BatchOperation.objects.exists()

    body = {"action": "retry", "filter": {"business_key_prefix": "K-"}, "reason": "fixed"}
    created = post(client, "/api/v1/batches/", body)
    assert created.status_code == 202, created.content
    batch_id = created.json()["id"]
    assert created.json()["state"] == "queued" and created.json()["total"] == 2
    batch_runner.batch_run_chunk(batch_id=batch_id)
    got = client.get(f"/api/v1/batches/{batch_id}/").json()
    assert (got["state"], got["done"], got["percent"], got["problems"]) == ("done", 2, 100, [])
    listed = client.get("/api/v1/batches/").json()["results"]
    assert [row["id"] for row in listed] == [batch_id]


def test_api_lists_ticked_ids_as_a_count_and_the_batch_in_full(operator: Any) -> None:
    a = failed_instance()
    client = api(operator)
    body = {"action": "cancel", "filter": {"ids": [str(a.pk)]}, "reason": "x"}
    batch_id = post(client, "/api/v1/batches/", body).json()["id"]
    assert client.get("/api/v1/batches/").json()["results"][0]["filter"] == {"ids_count": 1}
    assert client.get(f"/api/v1/batches/{batch_id}/").json()["filter"] == {"ids": [str(a.pk)]}


def test_api_cancel_stops_a_batch_and_a_second_cancel_is_409(operator: Any) -> None:
    failed_instance()
    client = api(operator)
    body = {"action": "retry", "filter": {"state": "failed"}, "reason": "x"}
    batch_id = post(client, "/api/v1/batches/", body).json()["id"]
    response = client.post(f"/api/v1/batches/{batch_id}/cancel/")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    again = client.post(f"/api/v1/batches/{batch_id}/cancel/")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"action": "retry", "reason": "x"}, 400, "confirm_all_required"),
        ({"action": "explode", "filter": {"state": "failed"}, "reason": "x"}, 400, "invalid"),
        ({"action": "retry", "filter": {"colour": "red"}, "reason": "x"}, 400, "invalid_filter"),
        (
            {"action": "retry", "filter": {"created_from": "2026-13-01T00:00:00Z"}, "reason": "x"},
            400,
            "invalid_time_range",
        ),
        ({"action": "retry", "filter": {"state": "failed"}}, 400, "reason_required"),
        (
            {"action": "retry", "filter": {"ids": [str(uuid.uuid4())]}, "reason": "x"},
            400,
            "unknown_ids",
        ),
        (
            {"action": "retry", "filter": {"state": "failed"}, "reason": "x", "extra": 1},
            400,
            "invalid",
        ),
        ({"action": "retry", "filter": "state=failed", "reason": "x"}, 400, "invalid"),
    ],
)
def test_api_bad_input_is_a_clear_error_and_nothing_is_made(
    operator: Any, body: dict[str, Any], status: int, code: str
) -> None:
    failed_instance()
    response = post(api(operator), "/api/v1/batches/", body)
    assert response.status_code == status, response.content
    assert response.json()["code"] == code and response.json()["detail"]
    assert not BatchOperation.objects.exists() and not BatchItem.objects.exists()


def test_api_oversized_id_list_is_refused(operator: Any, settings: Any) -> None:
    settings.SIGNOFF_BATCH_MAX_INSTANCES = 10
    ids = [str(uuid.uuid4()) for _ in range(11)]
    body = {"action": "retry", "filter": {"ids": ids}, "reason": "x"}
    response = post(api(operator), "/api/v1/batches/", body)
    assert response.status_code == 400 and response.json()["code"] == "too_many_ids"
    assert not BatchOperation.objects.exists()


def test_api_overlapping_batch_is_409_and_nothing_is_made(operator: Any) -> None:
    failed_instance()
    client = api(operator)
    body = {"action": "retry", "filter": {"state": "failed"}, "reason": "x"}
    assert post(client, "/api/v1/batches/", body).status_code == 202
    second = post(client, "/api/v1/batches/", {**body, "action": "cancel"})
    assert second.status_code == 409 and second.json()["code"] == "batch_overlap"
    assert BatchOperation.objects.count() == 1


def test_api_needs_the_operate_permission(viewer: Any) -> None:
    failed_instance()
    client = api(viewer)
    body = {"action": "retry", "filter": {"state": "failed"}, "reason": "x"}
    assert post(client, "/api/v1/batches/", body).status_code == 403
    assert client.get("/api/v1/batches/").status_code == 403
    assert client.get("/api/v1/batches/1/").status_code == 403
    assert not BatchOperation.objects.exists()
    assert APIClient().get("/api/v1/batches/").status_code == 401


def test_api_unknown_batch_is_404(operator: Any) -> None:
    client = api(operator)
    assert client.get("/api/v1/batches/999999/").status_code == 404
    assert client.get("/api/v1/batches/abc/").status_code == 404
    assert client.post("/api/v1/batches/999999/cancel/").status_code == 404


def test_api_list_has_a_constant_query_count(
    operator: Any, django_assert_max_num_queries: Any
) -> None:
    for i in range(6):
        instance = failed_instance(f"Q-{i}")
        batch = batches.batch_create(
            action="retry", filter={"ids": [str(instance.pk)]}, user=operator, reason="x"
        )
        batches.batch_cancel(batch_id=batch.pk, user=operator)
    client = api(operator)
    with django_assert_max_num_queries(4):
        assert len(client.get("/api/v1/batches/").json()["results"]) == 6


def test_the_schema_documents_the_batch_endpoints(operator: Any) -> None:
    client = Client()
    client.force_login(operator)
    schema = client.get("/api/schema/?format=json").json()
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/batches/"])
    assert "get" in paths["/api/v1/batches/{id}/"]
    assert "post" in paths["/api/v1/batches/{id}/cancel/"]


# -- admin -------------------------------------------------------------------------------------


def admin_client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_batch_action_asks_a_reason_then_starts_a_batch(operator: Any) -> None:
    a, b = failed_instance(), failed_instance()
    client = admin_client(operator)
    selected = {"action": "batch_retry", "_selected_action": [str(a.pk), str(b.pk)]}
    page = client.post(INSTANCES, selected)
    assert page.status_code == 200
    html = page.content.decode()
    assert "csrfmiddlewaretoken" in html and 'name="reason"' in html
    assert "<strong>2</strong>" in html
    assert not BatchOperation.objects.exists()
    without_reason = client.post(INSTANCES, {**selected, "confirm": "1", "reason": ""})
    assert without_reason.status_code == 400 and not BatchOperation.objects.exists()
    done = client.post(INSTANCES, {**selected, "confirm": "1", "reason": "endpoint fixed"})
    batch = BatchOperation.objects.get()
    assert done.status_code == 302 and done["Location"] == f"{BATCHES}{batch.pk}/change/"
    assert (batch.action, batch.total, batch.reason) == ("retry", 2, "endpoint fixed")


def test_admin_batch_action_overlap_shows_the_refusal(operator: Any) -> None:
    a = failed_instance()
    batches.batch_create(action="retry", filter={"ids": [str(a.pk)]}, user=operator, reason="1")
    response = admin_client(operator).post(
        INSTANCES,
        {"action": "batch_cancel", "_selected_action": [str(a.pk)], "confirm": "1", "reason": "2"},
    )
    assert response.status_code == 409
    assert "already acts on instance" in response.content.decode()
    assert BatchOperation.objects.count() == 1


def test_admin_batch_action_is_403_for_a_viewer(viewer: Any) -> None:
    a = failed_instance()
    response = admin_client(viewer).post(
        INSTANCES,
        {"action": "batch_retry", "_selected_action": [str(a.pk)], "confirm": "1", "reason": "x"},
    )
    assert response.status_code == 403 and not BatchOperation.objects.exists()


def test_admin_by_filter_page_previews_then_starts(operator: Any) -> None:
    failed_instance("F-1")
    failed_instance("F-2")
    running_instance("F-3")
    client = admin_client(operator)
    url = f"{BATCHES}new/"
    page = client.get(url + "?action=retry&workflow=t_nonretryable&failed_step=validate")
    assert page.status_code == 200 and 'value="t_nonretryable"' in page.content.decode()
    form = {"action": "retry", "workflow": "t_nonretryable", "failed_step": "validate"}
    preview = client.post(url, {**form, "preview": "1"})
    assert preview.status_code == 200
    assert "<strong>2</strong> instances match" in preview.content.decode()
    assert not BatchOperation.objects.exists()
    refused = client.post(url, {**form, "start": "1"})  # no reason
    assert refused.status_code == 400 and not BatchOperation.objects.exists()
    no_filter = client.post(url, {"action": "retry", "reason": "x", "start": "1"})
    assert no_filter.status_code == 400 and "all" in no_filter.content.decode()
    started = client.post(url, {**form, "reason": "deploy 42 fixed it", "start": "1"})
    batch = BatchOperation.objects.get()
    assert started.status_code == 302 and batch.total == 2
    assert batch.filter == {"workflow": "t_nonretryable", "failed_step": "validate"}


def test_admin_batch_pages_show_progress_and_cancel(operator: Any, viewer: Any) -> None:
    a = failed_instance()
    running = running_instance()
    batch = batches.batch_create(
        action="retry", filter={"ids": [str(a.pk), str(running.pk)]}, user=operator, reason="x"
    )
    client = admin_client(operator)
    listing = client.get(BATCHES).content.decode()
    assert 'class="so-progress"' in listing and 'http-equiv="refresh"' in listing
    page = client.get(f"{BATCHES}{batch.pk}/change/").content.decode()
    assert "Cancel this batch" in page and 'aria-valuenow="0"' in page
    batch_runner.batch_run_chunk(batch_id=batch.pk)
    page = client.get(f"{BATCHES}{batch.pk}/change/").content.decode()
    assert 'aria-valuenow="100"' in page and "only failed instances" in page
    assert 'http-equiv="refresh"' not in page
    assert admin_client(viewer).get(BATCHES).status_code == 403


def test_admin_cancel_batch_action_confirms_then_cancels(operator: Any, viewer: Any) -> None:
    a = failed_instance()
    batch = batches.batch_create(
        action="retry", filter={"ids": [str(a.pk)]}, user=operator, reason="x"
    )
    selected = {"action": "cancel_batches", "_selected_action": [str(batch.pk)]}
    assert admin_client(viewer).post(BATCHES, {**selected, "confirm": "1"}).status_code == 403
    client = admin_client(operator)
    assert client.post(BATCHES, selected).status_code == 200  # the confirmation
    assert BatchOperation.objects.get().state == "queued"
    assert client.post(BATCHES, {**selected, "confirm": "1"}).status_code == 302
    assert BatchOperation.objects.get().state == "cancelled"
    assert WorkflowInstance.objects.get(pk=a.pk).state == "failed"


def test_admin_batch_action_across_a_filtered_list_takes_every_match(operator: Any) -> None:
    a, b = running_instance("SEL-1"), running_instance("SEL-2")
    failed_instance("SEL-3")
    response = admin_client(operator).post(
        INSTANCES + "?state__exact=running",
        {
            "action": "batch_pause",
            "select_across": "1",
            "_selected_action": [str(a.pk)],
            "confirm": "1",
            "reason": "freeze for the migration",
        },
    )
    assert response.status_code == 302
    batch = BatchOperation.objects.get()
    assert batch.action == "pause" and set(batch.filter["ids"]) == {str(a.pk), str(b.pk)}
