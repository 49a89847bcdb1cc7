"""The workflow and instance REST API: every endpoint, auth, visibility, idempotency, query
counts and the OpenAPI schema.

No worker here: instances stay where the engine put them (doorbells are ``on_commit``
callbacks, which never run inside the test transaction). Tests that need a step to run call
the engine's ``step_execute`` in-process, standing in for the worker.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orchestration import engine
from orchestration.models import Event, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db

INSTANCES = "/api/v1/instances/"


# -- helpers (also used by the other test_api_* modules) ----------------------------------------


def token_client(user: Any) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def snapshot() -> dict[str, Any]:
    """Every row the engine writes, with the columns a transition changes: equal snapshots
    mean no row was inserted, updated or deleted."""
    return {
        "instances": sorted(
            WorkflowInstance.objects.values_list(
                "id", "state", "updated_at", "last_seq", "idempotency_key", "error"
            )
        ),
        "steps": sorted(
            StepRun.objects.values_list("id", "state", "attempt", "next_attempt_at", "finished_at")
        ),
        "events": sorted(Event.objects.values_list("instance_id", "seq", "type")),
    }


def row_counts() -> tuple[int, int, int]:
    return (WorkflowInstance.objects.count(), StepRun.objects.count(), Event.objects.count())


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the API's JSON error shape with this status (and code)."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) <= {"detail", "code", "fields"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["code"], str) and body["code"]
    if code is not None:
        assert body["code"] == code, body
    return body


def run_scheduled(instance_id: Any) -> None:
    """Execute the instance's scheduled steps in-process until none is left."""
    while True:
        due = list(StepRun.objects.filter(instance_id=instance_id, state="scheduled"))
        if not due:
            return
        for step in due:
            engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


def start_as(user: Any, workflow: str = "t_sequence", **kwargs: Any) -> WorkflowInstance:
    instance, _ = engine.instance_start(
        workflow=workflow, started_by=user, actor=f"user:{user.username}", **kwargs
    )
    return instance


def succeeded_instance(user: Any) -> WorkflowInstance:
    instance = start_as(user, "t_sequence")
    run_scheduled(instance.pk)
    instance.refresh_from_db()
    assert instance.state == "succeeded"
    return instance


def failed_instance(user: Any) -> WorkflowInstance:
    instance = start_as(user, "t_nonretryable")
    run_scheduled(instance.pk)
    instance.refresh_from_db()
    assert instance.state == "failed"
    return instance


@pytest.fixture
def api(user: Any) -> APIClient:
    return token_client(user)


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


def every_page(client: APIClient, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        items.extend(body["results"])
        url = body["next"]
        pages += 1
        assert pages < 100
    return items


# -- authentication -----------------------------------------------------------------------------


ENDPOINTS = [
    ("get", "/api/v1/workflows/"),
    ("get", INSTANCES),
    ("post", INSTANCES),
    ("get", INSTANCES + "{id}/"),
    ("get", INSTANCES + "{id}/history/"),
    ("post", INSTANCES + "{id}/cancel/"),
    ("post", INSTANCES + "{id}/retry/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_answers_401_json_to_anonymous_callers(
    method: str, path: str, user: Any
) -> None:
    instance = start_as(user)
    before = snapshot()
    response = getattr(APIClient(), method)(
        path.format(id=instance.pk), {"workflow": "t_sequence"}, format="json"
    )
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"
    assert snapshot() == before


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_a_wrong_token_is_401(method: str, path: str, user: Any) -> None:
    instance = start_as(user)
    before = snapshot()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = getattr(client, method)(
        path.format(id=instance.pk), {"workflow": "t_sequence"}, format="json"
    )
    assert_error(response, 401, "authentication_failed")
    assert snapshot() == before


def test_a_deactivated_users_token_is_401_and_writes_nothing(user: Any) -> None:
    client = token_client(user)
    assert client.get(INSTANCES).status_code == 200
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    before = snapshot()
    response = client.post(INSTANCES, {"workflow": "t_sequence"}, format="json")
    assert_error(response, 401, "authentication_failed")
    assert "inactive" in response.json()["detail"]
    assert snapshot() == before


def test_the_token_lookup_gives_the_user_and_its_stored_token(user: Any) -> None:
    # orchestration.api.authentication's fixed SQL returns what DRF's ORM lookup returned.
    from orchestration.api.authentication import ThrottledTokenAuthentication

    token, _ = Token.objects.get_or_create(user=user)
    found_user, found_token = ThrottledTokenAuthentication().authenticate_credentials(token.key)
    assert (found_user.pk, found_user.get_username(), found_user.email) == (
        user.pk,
        user.get_username(),
        user.email,
    )
    assert found_user.password == user.password and found_user.is_active
    assert (found_token.pk, found_token.user_id, found_token.created) == (
        token.pk,
        user.pk,
        token.created,
    )


def test_token_authentication_starts_and_reads_an_instance(user: Any) -> None:
    client = token_client(user)
    created = client.post(INSTANCES, {"workflow": "t_sequence"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["started_by"] == "alice"
    detail = client.get(f"{INSTANCES}{created.json()['id']}/")
    assert detail.status_code == 200


def test_session_authentication_starts_and_reads_an_instance(user: Any) -> None:
    client = Client()
    assert client.login(username="alice", password="pw-alice-123")
    created = client.post(INSTANCES, {"workflow": "t_sequence"}, content_type="application/json")
    assert created.status_code == 201, created.content
    listed = client.get(INSTANCES)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["results"]] == [created.json()["id"]]


def test_session_post_without_csrf_token_is_refused_and_writes_nothing(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="alice", password="pw-alice-123")
    before = snapshot()
    response = client.post(INSTANCES, {"workflow": "t_sequence"}, content_type="application/json")
    body = assert_error(response, 403, "permission_denied")
    assert "CSRF" in body["detail"]
    assert snapshot() == before


def test_unknown_api_path_is_404_json(api: APIClient) -> None:
    assert_error(api.get("/api/v1/nothing-here/"), 404, "not_found")


# -- workflows ----------------------------------------------------------------------------------


def test_workflow_list_describes_registered_definitions(api: APIClient) -> None:
    response = api.get("/api/v1/workflows/")
    assert response.status_code == 200
    by_name = {(wf["name"], wf["version"]): wf for wf in response.json()}
    onboarding = by_name[("customer_onboarding", 1)]
    assert [s["name"] for s in onboarding["steps"]] == [
        "create_account",
        "provision_infrastructure",
        "send_welcome_email",
        "enable_billing",
    ]
    assert onboarding["steps"][3]["after"] == ["provision_infrastructure", "send_welcome_email"]
    assert onboarding["steps"][0]["kind"] == "task"
    assert onboarding["steps"][0]["retry"]["max_attempts"] == 5
    assert onboarding["input_schema"]["required"] == ["customer"]
    assert onboarding["deadline"] == 86400
    parallel = by_name[("t_parallel", 1)]
    assert len(parallel["steps"]) == 6
    assert parallel["description"] == "fan-out and join"


# -- start --------------------------------------------------------------------------------------


def test_start_answers_201_with_the_instance_and_its_first_step_scheduled(
    api: APIClient,
) -> None:
    response = api.post(
        INSTANCES,
        {"workflow": "t_sequence", "input": {"n": 1}, "business_key": "order-7"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    instance = WorkflowInstance.objects.get()
    assert body["id"] == str(instance.pk)
    assert body["workflow"] == "t_sequence"
    assert body["version"] == 1
    assert body["state"] == "running"
    assert body["input"] == {"n": 1}
    assert body["business_key"] == "order-7"
    assert body["output"] is None
    assert body["started_by"] == "alice"
    assert body["links"]["history"] == f"/api/v1/instances/{instance.pk}/history/"
    steps = {s["name"]: s for s in body["steps"]}
    assert [s["name"] for s in body["steps"]] == ["a", "b", "c"]
    assert steps["a"]["state"] == "scheduled"
    assert steps["a"]["attempt"] == 1
    assert steps["a"]["scheduled_at"] is not None
    assert steps["b"]["state"] == steps["c"]["state"] == "pending"
    assert steps["b"]["attempt"] == 0
    assert row_counts() == (1, 3, 2)  # instance_started, step_scheduled


def test_start_answers_with_the_written_instance_without_reading_it_back(
    api: APIClient, user: Any
) -> None:
    # The answer is the instance as the detail endpoint shows it, built from what the engine
    # wrote: beyond the engine's own queries only the token lookup and one read of the steps
    # (no permission queries, no second read of the instance).
    with CaptureQueriesContext(connection) as engine_only:
        start_as(user, "t_sequence", input={"n": 0})
    engine_queries = [q for q in engine_only if "SAVEPOINT" not in q["sql"]]
    with CaptureQueriesContext(connection) as queries:
        response = api.post(
            INSTANCES, {"workflow": "t_sequence", "input": {"n": 1, "b": [2]}}, format="json"
        )
    assert response.status_code == 201, response.content
    api_queries = [q for q in queries if "SAVEPOINT" not in q["sql"]]
    assert not [q for q in api_queries if "auth_permission" in q["sql"]]
    assert len(api_queries) <= len(engine_queries) + 2, [q["sql"] for q in api_queries]
    body = response.json()
    assert body == api.get(f"{INSTANCES}{body['id']}/").json()


def test_start_pins_the_requested_version(api: APIClient) -> None:
    response = api.post(
        INSTANCES,
        {
            "workflow": "customer_onboarding",
            "version": 1,
            "input": {"customer": "Acme", "plan": "team"},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["version"] == 1
    assert WorkflowInstance.objects.get().input == {"customer": "Acme", "plan": "team"}


def test_start_without_a_key_creates_a_new_instance_each_time(api: APIClient) -> None:
    first = api.post(INSTANCES, {"workflow": "t_sequence"}, format="json")
    second = api.post(INSTANCES, {"workflow": "t_sequence"}, format="json")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert WorkflowInstance.objects.count() == 2


# -- idempotency --------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_same_instance_and_writes_nothing(
    api: APIClient,
) -> None:
    body = {"workflow": "t_sequence", "input": {"order": 42}, "business_key": "o-42"}
    first = api.post(INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert first.status_code == 201, first.content
    before = snapshot()
    # The same body with its keys in another order is the same request.
    again = api.post(
        INSTANCES,
        {"business_key": "o-42", "input": {"order": 42}, "workflow": "t_sequence"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="key-1",
    )
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["idempotency_key"] == "key-1"
    assert snapshot() == before


@pytest.mark.parametrize(
    "other",
    [
        {"workflow": "t_sequence", "input": {"order": 43}, "business_key": "o-42"},
        {"workflow": "t_sequence", "input": {"order": 42}, "business_key": "o-43"},
        {"workflow": "t_sequence", "input": {"order": 42}, "business_key": "o-42", "version": 1},
    ],
)
def test_same_idempotency_key_with_another_body_is_409_and_writes_nothing(
    api: APIClient,
    other: dict[str, Any],
) -> None:
    body = {"workflow": "t_sequence", "input": {"order": 42}, "business_key": "o-42"}
    first = api.post(INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert first.status_code == 201
    before = snapshot()
    response = api.post(INSTANCES, other, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    error = assert_error(response, 409, "idempotency_conflict")
    assert first.json()["id"] in error["detail"]  # the caller's own instance is named
    assert snapshot() == before


def test_idempotency_keys_are_unique_per_workflow(api: APIClient) -> None:
    first = api.post(
        INSTANCES, {"workflow": "t_sequence"}, format="json", HTTP_IDEMPOTENCY_KEY="shared"
    )
    other = api.post(
        INSTANCES, {"workflow": "t_parallel"}, format="json", HTTP_IDEMPOTENCY_KEY="shared"
    )
    assert first.status_code == other.status_code == 201
    assert first.json()["id"] != other.json()["id"]


@pytest.mark.parametrize("same_body", [True, False])
def test_idempotency_keys_are_per_caller(api: APIClient, bob: Any, same_body: bool) -> None:
    """Another caller's key is neither found (bob does not get alice's instance back, nor
    learn it exists) nor squatted (his own start with that key is his own instance); each
    caller's repeat still answers 200 with their own instance."""
    first = api.post(
        INSTANCES,
        {"workflow": "t_sequence", "input": {"x": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert first.status_code == 201
    body = {"workflow": "t_sequence", "input": {"x": 1 if same_body else 2}}
    response = token_client(bob).post(INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 201, response.content
    assert response.json()["id"] != first.json()["id"]
    assert first.json()["id"] not in response.content.decode()
    assert WorkflowInstance.objects.get(pk=response.json()["id"]).started_by == bob
    before = snapshot()
    again = token_client(bob).post(INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert (again.status_code, again.json()["id"]) == (200, response.json()["id"])
    mine = api.post(
        INSTANCES,
        {"workflow": "t_sequence", "input": {"x": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert (mine.status_code, mine.json()["id"]) == (200, first.json()["id"])
    other_body = token_client(bob).post(
        INSTANCES,
        {"workflow": "t_sequence", "input": {"x": 3}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    error = assert_error(other_body, 409, "idempotency_conflict")
    assert first.json()["id"] not in error["detail"]
    assert snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_start_one_instance(user: Any, worker: Any) -> None:
    # `worker`: the live test worker runs these steps, and is quiet before the flush.
    body = {"workflow": "t_sequence", "input": {"order": 1}}
    barrier = threading.Barrier(4)
    responses: list[Any] = []

    def post() -> None:
        client = token_client(user)
        try:
            barrier.wait(timeout=10)
            responses.append(
                client.post(INSTANCES, body, format="json", HTTP_IDEMPOTENCY_KEY="race")
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert WorkflowInstance.objects.count() == 1
    assert StepRun.objects.count() == 3


# -- list ---------------------------------------------------------------------------------------


def test_list_is_paginated_newest_first(api: APIClient, user: Any) -> None:
    ids = [str(start_as(user).pk) for _ in range(5)]
    first = api.get(INSTANCES, {"page_size": 2})
    assert first.status_code == 200
    page = first.json()
    assert set(page) == {"next", "previous", "results"}
    assert len(page["results"]) == 2
    assert page["previous"] is None and page["next"]
    listed = every_page(api, f"{INSTANCES}?page_size=2")
    assert [item["id"] for item in listed] == list(reversed(ids))
    assert all(len(item["steps"]) == 3 for item in listed)


def test_list_filters_by_workflow_state_and_business_key(api: APIClient, user: Any) -> None:
    seq_a = start_as(user, "t_sequence", business_key="a")
    start_as(user, "t_sequence", business_key="b")
    par = start_as(user, "t_parallel", business_key="a")
    done = succeeded_instance(user)

    def ids(**params: str) -> set[str]:
        response = api.get(INSTANCES, params)
        assert response.status_code == 200, response.content
        return {item["id"] for item in response.json()["results"]}

    assert ids(workflow="t_parallel") == {str(par.pk)}
    assert ids(business_key="a") == {str(seq_a.pk), str(par.pk)}
    assert ids(workflow="t_sequence", business_key="a") == {str(seq_a.pk)}
    assert ids(state="succeeded") == {str(done.pk)}
    assert len(ids(state="running")) == 3
    assert ids(workflow="no_such_workflow") == set()


LIST_QUERY_BOUND = 5  # token, user permissions, group permissions, instances, steps


@pytest.mark.parametrize("staff_caller", [False, True])
def test_instance_list_query_count_does_not_grow_with_instances(
    user: Any,
    staff: Any,
    staff_caller: bool,
    django_assert_max_num_queries: Any,
) -> None:
    client = token_client(staff if staff_caller else user)
    for _ in range(3):
        start_as(user, "t_parallel")
    with django_assert_max_num_queries(LIST_QUERY_BOUND):
        response = client.get(INSTANCES)
    assert len(response.json()["results"]) == 3
    with CaptureQueriesContext(connection) as few:
        client.get(INSTANCES)
    for _ in range(27):
        start_as(user, "t_parallel")
    with django_assert_max_num_queries(LIST_QUERY_BOUND):
        response = client.get(INSTANCES)
    assert len(response.json()["results"]) == 30
    assert all(len(item["steps"]) == 6 for item in response.json()["results"])
    with CaptureQueriesContext(connection) as many:
        client.get(INSTANCES)
    assert len(many) == len(few)


def test_detail_and_history_query_counts_do_not_grow_with_steps_or_events(
    api: APIClient,
    user: Any,
    django_assert_max_num_queries: Any,
) -> None:
    small = succeeded_instance(user)
    big = start_as(user, "t_parallel")
    run_scheduled(big.pk)
    for instance in (small, big):
        with django_assert_max_num_queries(LIST_QUERY_BOUND):
            assert api.get(f"{INSTANCES}{instance.pk}/").status_code == 200
        with django_assert_max_num_queries(LIST_QUERY_BOUND + 1):
            assert api.get(f"{INSTANCES}{instance.pk}/history/").status_code == 200


# -- visibility ---------------------------------------------------------------------------------


def test_non_staff_users_see_only_instances_they_started(
    api: APIClient, user: Any, bob: Any
) -> None:
    mine = start_as(user)
    theirs = start_as(bob)
    listed = api.get(INSTANCES).json()["results"]
    assert [item["id"] for item in listed] == [str(mine.pk)]
    assert api.get(f"{INSTANCES}{mine.pk}/").status_code == 200
    before = snapshot()
    for method, path in ENDPOINTS[3:]:
        response = getattr(api, method)(path.format(id=theirs.pk), format="json")
        assert_error(response, 404, "not_found")
    assert snapshot() == before
    theirs.refresh_from_db()
    assert theirs.state == "running"


def test_staff_see_every_instance_but_acting_needs_the_operate_permission(
    user: Any, staff: Any, bob: Any
) -> None:
    client = token_client(staff)
    ids = {str(start_as(user).pk), str(start_as(bob).pk)}
    assert {item["id"] for item in client.get(INSTANCES).json()["results"]} == ids
    for instance_id in ids:
        assert client.get(f"{INSTANCES}{instance_id}/").status_code == 200
        assert client.get(f"{INSTANCES}{instance_id}/history/").status_code == 200
    target = ids.pop()
    refused = client.post(f"{INSTANCES}{target}/cancel/", format="json")
    assert_error(refused, 403, "permission_denied")
    staff.user_permissions.add(Permission.objects.get(codename="operate_instance"))
    cancelled = token_client(type(staff).objects.get(pk=staff.pk)).post(
        f"{INSTANCES}{target}/cancel/", format="json"
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"


def test_operate_instance_permission_sees_every_instance(user: Any, bob: Any) -> None:
    bob.user_permissions.add(Permission.objects.get(codename="operate_instance"))
    theirs = start_as(user)
    client = token_client(bob)
    assert [i["id"] for i in client.get(INSTANCES).json()["results"]] == [str(theirs.pk)]
    assert client.get(f"{INSTANCES}{theirs.pk}/").status_code == 200


# -- detail and history -------------------------------------------------------------------------


def test_detail_shows_steps_with_state_attempt_times_and_error(api: APIClient, user: Any) -> None:
    instance = failed_instance(user)
    response = api.get(f"{INSTANCES}{instance.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "failed"
    assert body["finished_at"] is not None
    assert body["error"]["step"] == "validate"
    validate = body["steps"][0]
    assert validate["name"] == "validate"
    assert validate["kind"] == "task"
    assert validate["state"] == "failed"
    assert validate["attempt"] == 1
    assert validate["started_at"] and validate["finished_at"]
    assert validate["error"]["type"] == "builtins.ValueError"
    assert validate["error"]["message"] == "this input can never work"
    assert body["steps"][1]["name"] == "never"
    assert body["steps"][1]["state"] == "pending"


def test_history_lists_events_in_order_with_gap_free_seq_from_one(
    api: APIClient, user: Any
) -> None:
    instance = succeeded_instance(user)
    response = api.get(f"{INSTANCES}{instance.pk}/history/")
    assert response.status_code == 200
    events = response.json()["results"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [(e["type"], e["step"]) for e in events] == [
        ("instance_started", None),
        ("step_scheduled", "a"),
        ("step_started", "a"),
        ("step_succeeded", "a"),
        ("step_scheduled", "b"),
        ("step_started", "b"),
        ("step_succeeded", "b"),
        ("step_scheduled", "c"),
        ("step_started", "c"),
        ("step_succeeded", "c"),
        ("instance_succeeded", None),
    ]
    first = events[0]
    assert set(first) == {"seq", "type", "step", "attempt", "actor", "at", "data"}
    assert first["actor"] == "user:alice"
    assert first["data"]["workflow"] == "t_sequence"
    assert events[2]["attempt"] == 1
    assert events[2]["actor"] == "worker"


def test_history_pages_join_without_gaps(api: APIClient, user: Any) -> None:
    instance = start_as(user, "t_parallel")
    run_scheduled(instance.pk)
    full = api.get(f"{INSTANCES}{instance.pk}/history/").json()["results"]
    assert len(full) > 10
    paged = every_page(api, f"{INSTANCES}{instance.pk}/history/?page_size=3")
    assert paged == full
    assert [e["seq"] for e in paged] == list(range(1, len(full) + 1))


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_cancels_a_running_instance_and_its_open_steps(api: APIClient, user: Any) -> None:
    instance = start_as(user)
    response = api.post(
        f"{INSTANCES}{instance.pk}/cancel/", {"reason": "customer left"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "cancelled"
    assert body["finished_at"] is not None
    assert {s["state"] for s in body["steps"]} == {"cancelled"}
    events = api.get(f"{INSTANCES}{instance.pk}/history/").json()["results"]
    assert events[-1]["type"] == "instance_cancelled"
    assert events[-1]["actor"] == "user:alice"
    assert events[-1]["data"] == {"reason": "customer left"}
    assert [e["type"] for e in events[-4:-1]] == ["step_cancelled"] * 3


def test_cancel_without_a_body_works(api: APIClient, user: Any) -> None:
    instance = start_as(user)
    response = api.post(f"{INSTANCES}{instance.pk}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "cancelled"


def test_cancel_of_a_failed_instance_is_allowed(api: APIClient, user: Any) -> None:
    instance = failed_instance(user)
    response = api.post(f"{INSTANCES}{instance.pk}/cancel/", format="json")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "cancelled"


def test_repeated_cancel_is_409_and_changes_nothing(api: APIClient, user: Any) -> None:
    instance = start_as(user)
    assert api.post(f"{INSTANCES}{instance.pk}/cancel/", format="json").status_code == 200
    before = snapshot()
    response = api.post(f"{INSTANCES}{instance.pk}/cancel/", format="json")
    assert_error(response, 409, "invalid_state")
    assert snapshot() == before


def test_cancel_of_a_succeeded_instance_is_409_and_changes_nothing(
    api: APIClient, user: Any
) -> None:
    instance = succeeded_instance(user)
    before = snapshot()
    response = api.post(f"{INSTANCES}{instance.pk}/cancel/", format="json")
    assert "succeeded" in assert_error(response, 409, "invalid_state")["detail"]
    assert snapshot() == before


# -- retry --------------------------------------------------------------------------------------


def test_retry_schedules_a_failed_instance_from_its_failed_step(api: APIClient, user: Any) -> None:
    instance = failed_instance(user)
    response = api.post(f"{INSTANCES}{instance.pk}/retry/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "running"
    assert body["error"] is None
    validate = body["steps"][0]
    assert (validate["state"], validate["attempt"]) == ("scheduled", 2)
    assert validate["error"] is None
    events = api.get(f"{INSTANCES}{instance.pk}/history/").json()["results"]
    assert [e["type"] for e in events[-2:]] == ["instance_retried", "step_scheduled"]
    assert events[-2]["actor"] == "user:alice"
    assert events[-1]["data"] == {"retry": True}


@pytest.mark.parametrize("make", [start_as, succeeded_instance])
def test_retry_of_an_instance_that_is_not_failed_is_409_and_changes_nothing(
    api: APIClient,
    user: Any,
    make: Any,
) -> None:
    instance = make(user)
    before = snapshot()
    response = api.post(f"{INSTANCES}{instance.pk}/retry/")
    assert_error(response, 409, "invalid_state")
    assert snapshot() == before


# -- OpenAPI ------------------------------------------------------------------------------------


def test_openapi_schema_generates_and_validates_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in [
        "/api/v1/workflows/",
        "/api/v1/instances/",
        "/api/v1/instances/{id}/",
        "/api/v1/instances/{id}/history/",
        "/api/v1/instances/{id}/cancel/",
        "/api/v1/instances/{id}/retry/",
    ]:
        assert f"  {path}:" in text, path
    assert "PaginatedInstanceList" in text
    assert "Idempotency-Key" in text


def test_schema_and_docs_are_served(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/instances/{id}/history/" in spec["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()


def test_instance_ids_are_uuids(api: APIClient, user: Any) -> None:
    response = api.post(INSTANCES, {"workflow": "t_sequence"}, format="json")
    assert uuid.UUID(response.json()["id"])
