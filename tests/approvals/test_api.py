"""The approvals REST API: the caller's inbox, one request, approve and reject; auth,
visibility, bad input that changes nothing, and a query count that does not grow.

No worker here: the expense's ``validate`` step runs in-process (``engine.step_execute``),
which creates the ``manager_approval`` request assigned to the group ``managers``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest, Decision, Delegation
from orchestration import engine
from orchestration.models import Event, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db

APPROVALS = "/api/v1/approvals/"
User = get_user_model()
AssignedUser = ApprovalRequest.assignee_users.through
AssignedGroup = ApprovalRequest.assignee_groups.through


# -- helpers ------------------------------------------------------------------------------------


def token_client(user: Any) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


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


def rows() -> dict[str, Any]:
    """What a decision writes: equal snapshots mean nothing was decided or resolved."""
    return {
        "decisions": Decision.objects.count(),
        "events": Event.objects.count(),
        "requests": sorted(ApprovalRequest.objects.values_list("id", "state", "resolved_at")),
        "steps": sorted(StepRun.objects.values_list("id", "state")),
        "instances": sorted(WorkflowInstance.objects.values_list("id", "state", "last_seq")),
    }


def post_json(client: APIClient, path: str, body: Any) -> Any:
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.generic("POST", path, raw, content_type="application/json")


def start_expense(requester: Any, amount: int = 50, business_key: str = "") -> ApprovalRequest:
    """An expense waiting for its manager approval."""
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": amount, "currency": "EUR", "description": "taxi"},  # theirs
        business_key=business_key,
        started_by=requester,
        actor=f"user:{requester.username}",
    )
    validate = StepRun.objects.get(instance=instance, name="validate")
    engine.step_execute(step_run_id=validate.pk, attempt=1)
    return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")


def bulk_pending(n: int, *, group: Group, also_user: Any, requester: Any) -> list[int]:
    """``n`` pending requests assigned to ``group`` and directly to ``also_user``, written
    with bulk inserts (instance, step, request and both assignment tables)."""
    now = timezone.now()
    instances = WorkflowInstance.objects.bulk_create(
        WorkflowInstance(
            workflow="expense_approval",
            version=1,
            state="running",
            input={},
            business_key=f"bulk-{k}",
            started_by=requester,
            created_at=now,
            updated_at=now,
        )
        for k in range(n)
    )
    steps = StepRun.objects.bulk_create(
        StepRun(instance=i, name="manager_approval", kind="approval", state="waiting")
        for i in instances
    )
    requests = ApprovalRequest.objects.bulk_create(
        ApprovalRequest(
            step_run=s,
            instance=s.instance,
            workflow="expense_approval",
            business_key=f"bulk-{k}",
            step_name="manager_approval",
            title=f"Expense {k}",
            fields=[{"label": "Amount", "value": k}],
            requester=requester,
            created_at=now - timedelta(seconds=k),
            due_at=now + timedelta(days=1),
        )
        for k, s in enumerate(steps)
    )
    AssignedGroup.objects.bulk_create(
        AssignedGroup(approvalrequest_id=r.pk, group_id=group.pk) for r in requests
    )
    AssignedUser.objects.bulk_create(
        AssignedUser(approvalrequest_id=r.pk, user_id=also_user.pk) for r in requests
    )
    return [r.pk for r in requests]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def demo() -> dict[str, Any]:
    """admin (staff), alice (the requester), bob and dave (managers), carol (finance)."""
    call_command("seed_demo", stdout=open("/dev/null", "w"))  # noqa: SIM115
    users = {u.username: u for u in User.objects.all()}
    users["dave"] = User.objects.create_user("dave")
    users["dave"].groups.add(Group.objects.get(name="managers"))
    return users


@pytest.fixture
def expense(demo: dict[str, Any]) -> ApprovalRequest:
    return start_expense(demo["alice"], business_key="EXP-1")


@pytest.fixture
def bob(demo: dict[str, Any]) -> APIClient:
    return token_client(demo["bob"])


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("get", "{id}/"), ("post", "{id}/approve/"), ("post", "{id}/reject/")],
)
def test_every_endpoint_requires_authentication(
    expense: ApprovalRequest, method: str, suffix: str
) -> None:
    before = rows()
    path = APPROVALS + suffix.format(id=expense.pk)
    response = getattr(APIClient(), method)(path, {"comment": "x"}, format="json")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"
    bad_token = APIClient()
    bad_token.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = getattr(bad_token, method)(path, {"comment": "x"}, format="json")
    assert_error(response, 401, "authentication_failed")
    assert rows() == before


def test_token_auth_lists_the_expense_for_a_manager(expense: ApprovalRequest, bob) -> None:
    response = bob.get(APPROVALS)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["next"] is None and body["previous"] is None
    [item] = body["results"]
    assert item["id"] == expense.pk
    assert item["title"] == "Expense: 50 EUR for taxi"
    assert item["workflow"] == "expense_approval"
    assert item["business_key"] == "EXP-1"
    assert item["step"] == "manager_approval"
    assert item["state"] == "pending"
    assert item["policy"] == "any"
    assert item["requester"] == "alice"
    assert item["assignees"] == {"users": [], "groups": ["managers"]}
    assert {"label": "Amount", "value": 50} in item["fields"]
    assert item["due_at"] is not None and item["overdue"] is False
    assert item["resolved_at"] is None
    assert item["instance"] == str(expense.instance_id)
    assert item["links"] == {
        "self": f"{APPROVALS}{expense.pk}/",
        "approve": f"{APPROVALS}{expense.pk}/approve/",
        "reject": f"{APPROVALS}{expense.pk}/reject/",
        "request_changes": f"{APPROVALS}{expense.pk}/request-changes/",
        "resubmit": f"{APPROVALS}{expense.pk}/resubmit/",
        "withdraw": f"{APPROVALS}{expense.pk}/withdraw/",
        "comments": f"{APPROVALS}{expense.pk}/comments/",
        "inbox": f"/inbox/{expense.pk}/",
    }


def test_session_auth_works(expense: ApprovalRequest, demo) -> None:
    client = APIClient()
    client.force_login(demo["bob"])
    response = client.get(APPROVALS)
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["results"]] == [expense.pk]


def test_session_auth_post_needs_the_csrf_token(expense: ApprovalRequest, demo) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(demo["bob"])
    before = rows()
    response = client.post(f"{APPROVALS}{expense.pk}/approve/", {}, format="json")
    assert_error(response, 403, "permission_denied")
    assert "CSRF" in response.json()["detail"]
    assert rows() == before


# -- who sees what ------------------------------------------------------------------------------


def test_a_user_sees_only_what_they_may_decide(expense: ApprovalRequest, demo) -> None:
    def pending_ids(name: str) -> list[int]:
        response = token_client(demo[name]).get(APPROVALS, {"state": "pending"})
        assert response.status_code == 200
        return [r["id"] for r in response.json()["results"]]

    assert pending_ids("bob") == [expense.pk]
    assert pending_ids("dave") == [expense.pk]
    assert pending_ids("carol") == []  # finance, not managers
    assert pending_ids("alice") == []  # her own request
    assert pending_ids("admin") == []  # staff sees everything, but decides nothing here


def test_a_delegate_sees_and_decides_for_the_assignee(expense: ApprovalRequest, demo) -> None:
    now = timezone.now()
    Delegation.objects.create(
        user=demo["bob"],
        delegate=demo["carol"],
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=1),
    )
    carol = token_client(demo["carol"])
    assert [r["id"] for r in carol.get(APPROVALS).json()["results"]] == [expense.pk]
    response = carol.post(f"{APPROVALS}{expense.pk}/approve/", {"comment": "ok"}, format="json")
    assert response.status_code == 200, response.content
    [decision] = response.json()["decisions"]
    assert decision["user"] == "carol"
    assert decision["on_behalf_of"] == "bob"


def test_state_filter_decided_and_all(expense: ApprovalRequest, demo, bob) -> None:
    other = start_expense(demo["alice"], business_key="EXP-2")
    bob.post(f"{APPROVALS}{expense.pk}/approve/", {}, format="json")

    def ids(client: APIClient, **query: str) -> list[int]:
        response = client.get(APPROVALS, query)
        assert response.status_code == 200, response.content
        return [r["id"] for r in response.json()["results"]]

    assert ids(bob) == [other.pk]
    assert ids(bob, state="decided") == [expense.pk]
    assert ids(bob, state="all") == [other.pk, expense.pk]  # newest first
    dave = token_client(demo["dave"])
    assert ids(dave, state="decided") == []
    assert ids(dave, state="all") == [other.pk, expense.pk]
    decided = bob.get(APPROVALS, {"state": "decided"}).json()["results"][0]
    assert decided["state"] == "approved" and decided["resolved_at"] is not None


def test_workflow_and_business_key_filters(expense: ApprovalRequest, demo, bob) -> None:
    other = start_expense(demo["alice"], business_key="EXP-2")

    def ids(**query: str) -> list[int]:
        response = bob.get(APPROVALS, query)
        assert response.status_code == 200, response.content
        return [r["id"] for r in response.json()["results"]]

    assert ids(business_key="EXP-1") == [expense.pk]
    assert ids(business_key="EXP-2", workflow="expense_approval") == [other.pk]
    assert ids(business_key="nope") == []
    assert ids(workflow="customer_onboarding") == []
    assert ids(workflow="expense_approval") == [other.pk, expense.pk]
    assert ids(workflow="", business_key="") == [other.pk, expense.pk]  # empty = no filter


@pytest.mark.parametrize(
    "query",
    [{"state": "approved"}, {"state": "PENDING"}, {"workflow": "a\x00b"}, {"business_key": "\x00"}],
    ids=["state_not_a_filter", "state_upper_case", "nul_workflow", "nul_business_key"],
)
def test_bad_filters_are_400(expense: ApprovalRequest, bob, query: dict[str, str]) -> None:
    assert_error(bob.get(APPROVALS, query), 400, "invalid_filter")


def test_tampered_cursor_is_404(expense: ApprovalRequest, bob) -> None:
    assert_error(bob.get(APPROVALS, {"cursor": "not-base64!"}), 404, "not_found")


def test_pages_follow_the_cursor_without_gaps_or_repeats(demo, bob) -> None:
    ids = bulk_pending(
        60,
        group=Group.objects.get(name="managers"),
        also_user=demo["carol"],
        requester=demo["alice"],
    )
    first = bob.get(APPROVALS).json()
    assert len(first["results"]) == 50 and first["previous"] is None
    second = bob.get(first["next"]).json()
    assert second["next"] is None
    seen = [r["id"] for r in first["results"] + second["results"]]
    assert seen == ids  # created newest first
    assert [r["id"] for r in bob.get(APPROVALS, {"page_size": 7}).json()["results"]] == ids[:7]


def test_all_pages_in_creation_order(demo, bob) -> None:
    ids = bulk_pending(
        12, group=Group.objects.get(name="managers"), also_user=demo["carol"], requester=None
    )
    first = bob.get(APPROVALS, {"state": "all", "page_size": 5}).json()
    second = bob.get(first["next"]).json()
    third = bob.get(second["next"]).json()
    seen = [r["id"] for page in (first, second, third) for r in page["results"]]
    assert seen == sorted(ids, reverse=True)
    assert third["next"] is None
    # a cursor of one order is refused by the other, not misread
    assert_error(bob.get(first["next"].replace("state=all", "state=pending")), 404, "not_found")


# -- detail -------------------------------------------------------------------------------------


def test_detail_for_an_assignee(expense: ApprovalRequest, bob) -> None:
    response = bob.get(f"{APPROVALS}{expense.pk}/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == expense.pk
    assert body["state"] == "pending"
    assert body["can_decide"] is True
    assert body["decisions"] == []
    assert body["reject_requires_comment"] is True
    assert body["veto"] is True
    assert body["fields"] == [{"label": f["label"], "value": f["value"]} for f in expense.fields]
    assert body["columns"] == {"amount": 50}
    assert body["assignees"] == {"users": [], "groups": ["managers"]}
    assert body["instance"] == str(expense.instance_id)
    # bob did not start the instance, and the instance API would not show it to him
    # An assignee reads the instance too, read-only (issue 12).
    assert body["links"]["instance"] == f"/api/v1/instances/{expense.instance_id}/"


def test_detail_for_the_requester_links_the_instance(expense: ApprovalRequest, demo) -> None:
    body = token_client(demo["alice"]).get(f"{APPROVALS}{expense.pk}/").json()
    assert body["can_decide"] is False
    assert body["links"]["instance"] == f"/api/v1/instances/{expense.instance_id}/"
    instance = token_client(demo["alice"]).get(body["links"]["instance"])
    assert instance.status_code == 200


@pytest.mark.parametrize(
    "suffix",
    ["999999/", "abc/", "1.0/", "-1/", "0x1/", "١/", "99999999999999999999999999/", "1/extra/"],
)
def test_detail_of_a_bad_or_unknown_id_is_404(expense: ApprovalRequest, bob, suffix: str) -> None:
    assert_error(bob.get(APPROVALS + suffix), 404, "not_found")


def test_detail_of_a_request_the_caller_may_not_see_is_404(expense: ApprovalRequest, demo) -> None:
    assert_error(token_client(demo["carol"]).get(f"{APPROVALS}{expense.pk}/"), 404, "not_found")


# -- deciding -----------------------------------------------------------------------------------


def test_approve_resolves_and_the_workflow_goes_on(expense: ApprovalRequest, bob) -> None:
    response = bob.post(
        f"{APPROVALS}{expense.pk}/approve/", {"comment": "  fine by me "}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "approved"
    assert body["can_decide"] is False
    assert body["resolved_at"] is not None
    [decision] = body["decisions"]
    assert decision["user"] == "bob"
    assert decision["on_behalf_of"] is None
    assert decision["via_group"] == "managers"
    assert decision["outcome"] == "approve"
    assert decision["comment"] == "fine by me"
    assert decision["channel"] == "api"
    stored = Decision.objects.get(request=expense)
    assert (stored.channel, stored.decided_by.username) == ("api", "bob")
    step = StepRun.objects.get(instance=expense.instance, name="manager_approval")
    assert step.state == "succeeded"
    assert StepRun.objects.get(instance=expense.instance, name="pay").state == "scheduled"
    decided = Event.objects.get(instance=expense.instance, type="approval_decided")
    assert decided.data["channel"] == "api" and decided.actor == "user:bob"
    # gone from bob's pending list, and from dave's (policy any)
    assert bob.get(APPROVALS).json()["results"] == []


def test_approve_without_a_body_is_fine(expense: ApprovalRequest, bob) -> None:
    response = bob.generic("POST", f"{APPROVALS}{expense.pk}/approve/")
    assert response.status_code == 200, response.content
    assert response.json()["decisions"][0]["comment"] == ""


def test_reject_with_a_comment_fails_the_instance(expense: ApprovalRequest, bob) -> None:
    response = bob.post(
        f"{APPROVALS}{expense.pk}/reject/", {"comment": "not a business trip"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "rejected"
    assert body["decisions"][0]["outcome"] == "reject"
    assert body["decisions"][0]["comment"] == "not a business trip"
    instance = WorkflowInstance.objects.get(pk=expense.instance_id)
    assert instance.state == "failed"
    assert instance.error["message"] == "rejected by bob: not a business trip"


BAD_BODIES = [
    pytest.param("approve", '{"comment": "ok"', 400, "parse_error", id="malformed_json"),
    pytest.param("approve", '{"comment": "ok"} x', 400, "parse_error", id="trailing_garbage"),
    pytest.param("approve", "[" * 100_000, 400, "parse_error", id="nested_beyond_the_decoder"),
    pytest.param("approve", {"comment": 42}, 400, "invalid", id="comment_number"),
    pytest.param("approve", {"comment": None}, 400, "invalid", id="comment_null"),
    pytest.param("approve", {"comment": ["ok"]}, 400, "invalid", id="comment_list"),
    pytest.param("approve", {"comment": {"a": 1}}, 400, "invalid", id="comment_object"),
    pytest.param("approve", {"comment": True}, 400, "invalid", id="comment_bool"),
    pytest.param("approve", {"comment": "x" * 5001}, 400, "invalid", id="comment_too_long"),
    # The length as sent (the schema's maxLength), not after trimming: found by the fuzzer.
    pytest.param(
        "approve", {"comment": "\x1c" + "x" * 5000}, 400, "invalid", id="too_long_as_sent"
    ),
    pytest.param("approve", {"comment": "a\x00b"}, 400, "invalid", id="comment_nul"),
    pytest.param("approve", '{"comment": "\\ud800"}', 400, "invalid", id="lone_surrogate"),
    pytest.param("approve", {"coment": "typo"}, 400, "invalid", id="unknown_field"),
    pytest.param("approve", ["ok"], 400, "invalid", id="array_body"),
    pytest.param("approve", '"ok"', 400, "invalid", id="string_body"),
    pytest.param("approve", "null", 400, "invalid", id="null_body"),
    pytest.param("reject", {}, 400, "comment_required", id="reject_without_comment"),
    pytest.param("reject", {"comment": "   "}, 400, "comment_required", id="reject_blank_comment"),
    pytest.param("reject", "", 400, "comment_required", id="reject_empty_body"),
]


@pytest.mark.parametrize(("action", "body", "status", "code"), BAD_BODIES)
def test_bad_input_is_a_4xx_and_changes_nothing(
    expense: ApprovalRequest, bob, action: str, body: Any, status: int, code: str
) -> None:
    before = rows()
    response = post_json(bob, f"{APPROVALS}{expense.pk}/{action}/", body)
    error = assert_error(response, status, code)
    if code == "invalid" and "fields" in error:
        assert set(error["fields"]) <= {"comment", "coment", "non_field_errors"}
    assert rows() == before


def test_not_json_is_415_and_changes_nothing(expense: ApprovalRequest, bob) -> None:
    before = rows()
    response = bob.post(f"{APPROVALS}{expense.pk}/approve/", {"comment": "ok"})  # multipart
    assert_error(response, 415, "unsupported_media_type")
    response = bob.generic("POST", f"{APPROVALS}{expense.pk}/approve/", "comment=ok", "text/plain")
    assert_error(response, 415, "unsupported_media_type")
    assert rows() == before


def test_an_oversized_body_is_413_and_changes_nothing(expense: ApprovalRequest, bob) -> None:
    before = rows()
    body = {"comment": "x" * (300 * 1024)}
    response = post_json(bob, f"{APPROVALS}{expense.pk}/approve/", body)
    assert_error(response, 413, "request_too_large")
    assert rows() == before


@pytest.mark.parametrize("action", ["approve", "reject"])
@pytest.mark.parametrize("suffix", ["999999/", "abc/", "99999999999999999999999999/"])
def test_deciding_an_unknown_or_bad_id_is_404(
    expense: ApprovalRequest, bob, action: str, suffix: str
) -> None:
    before = rows()
    response = post_json(bob, f"{APPROVALS}{suffix}{action}/", {"comment": "x"})
    assert_error(response, 404, "not_found")
    assert rows() == before


def test_deciding_twice_is_409_saying_who_decided_and_when(expense: ApprovalRequest, demo) -> None:
    bob = token_client(demo["bob"])
    assert bob.post(f"{APPROVALS}{expense.pk}/approve/", {}, format="json").status_code == 200
    before = rows()
    for client, action in [
        (bob, "approve"),
        (bob, "reject"),
        (token_client(demo["dave"]), "approve"),
        (token_client(demo["dave"]), "reject"),
    ]:
        response = post_json(client, f"{APPROVALS}{expense.pk}/{action}/", {"comment": "late"})
        error = assert_error(response, 409, "already_decided")
        assert error["detail"].startswith("already approved by bob at 20")
    assert rows() == before


def test_a_non_assignee_is_refused_and_changes_nothing(expense: ApprovalRequest, demo) -> None:
    """Staff see the request but may not decide it (403); someone with no part in it may
    not even see it, so it does not exist for them (404, as in GET)."""
    before = rows()
    for name, status, code in [("carol", 404, "not_found"), ("admin", 403, "not_assignee")]:
        for action in ["approve", "reject"]:
            response = post_json(
                token_client(demo[name]), f"{APPROVALS}{expense.pk}/{action}/", {"comment": "x"}
            )
            assert_error(response, status, code)
            assert token_client(demo[name]).get(f"{APPROVALS}{expense.pk}/").status_code == (
                status if status == 404 else 200
            )
    assert rows() == before


def test_a_non_assignee_does_not_learn_who_decided(expense: ApprovalRequest, demo, bob) -> None:
    bob.post(f"{APPROVALS}{expense.pk}/approve/", {}, format="json")
    response = post_json(token_client(demo["carol"]), f"{APPROVALS}{expense.pk}/approve/", {})
    body = assert_error(response, 404, "not_found")
    assert "bob" not in body["detail"] and "approved" not in body["detail"]


def test_the_requester_may_not_decide_their_own_request(demo) -> None:
    # A manager's own expense: bob is its requester and one of its assignees.
    request = start_expense(demo["bob"])
    ApprovalRequest.objects.filter(pk=request.pk).update(requester=demo["bob"])
    before = rows()
    for action in ["approve", "reject"]:
        response = post_json(
            token_client(demo["bob"]), f"{APPROVALS}{request.pk}/{action}/", {"comment": "me"}
        )
        assert_error(response, 403, "self_approval")
    assert rows() == before
    assert token_client(demo["bob"]).get(APPROVALS).json()["results"] == []


def test_alice_may_not_decide_her_own_expense(expense: ApprovalRequest, demo) -> None:
    # She may read it (her request) but is not one of its assignees.
    before = rows()
    response = post_json(token_client(demo["alice"]), f"{APPROVALS}{expense.pk}/approve/", {})
    assert_error(response, 403, "not_assignee")
    assert rows() == before


# -- query count --------------------------------------------------------------------------------


LIST_QUERY_BOUND = 5  # token, delegations, the page, the page's assignees (+1 spare)


@pytest.mark.parametrize("state", ["pending", "all", "decided"])
def test_list_query_count_does_not_grow_with_the_requests(
    demo, django_assert_max_num_queries, state: str
) -> None:
    managers = Group.objects.get(name="managers")
    bob = token_client(demo["bob"])
    counts = []
    for total in (10, 200):
        have = ApprovalRequest.objects.count()
        bulk_pending(total - have, group=managers, also_user=demo["carol"], requester=demo["alice"])
        if state == "decided":
            Decision.objects.bulk_create(
                Decision(
                    request_id=pk,
                    assignee=demo["bob"],
                    decided_by=demo["bob"],
                    outcome="approve",
                    channel="api",
                    at=timezone.now(),
                )
                for pk in ApprovalRequest.objects.exclude(decisions__isnull=False).values_list(
                    "pk", flat=True
                )
            )
        with django_assert_max_num_queries(LIST_QUERY_BOUND):
            with CaptureQueriesContext(connection) as queries:
                response = bob.get(APPROVALS, {"state": state, "page_size": 200})
        assert response.status_code == 200
        results = response.json()["results"]
        assert len(results) == total
        assert all(r["assignees"] == {"users": ["carol"], "groups": ["managers"]} for r in results)
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_detail_query_count_does_not_grow_with_decisions(demo, django_assert_max_num_queries):
    [pk] = bulk_pending(
        1, group=Group.objects.get(name="managers"), also_user=demo["bob"], requester=demo["alice"]
    )
    ApprovalRequest.objects.filter(pk=pk).update(policy="all")
    bob = token_client(demo["bob"])
    counts = []
    for name in ["dave", "carol"]:
        Decision.objects.create(
            request_id=pk,
            assignee=demo[name],
            decided_by=demo[name],
            outcome="approve",
            channel="web",
            at=timezone.now(),
        )
        with django_assert_max_num_queries(12):
            with CaptureQueriesContext(connection) as queries:
                response = bob.get(f"{APPROVALS}{pk}/")
        assert response.status_code == 200
        counts.append(len(queries))
    assert len(response.json()["decisions"]) == 2
    assert counts[0] == counts[1]


def test_the_fast_list_item_equals_the_generic_representation(demo) -> None:
    from rest_framework import serializers

    from approvals.api.serializers import ApprovalRequestSerializer
    from approvals.api.views import attach_assignees

    ids = bulk_pending(
        3, group=Group.objects.get(name="managers"), also_user=demo["carol"], requester=None
    )
    ApprovalRequest.objects.filter(pk=ids[0]).update(due_at=None, fields=[])
    ApprovalRequest.objects.filter(pk=ids[1]).update(
        due_at=timezone.now() - timedelta(hours=1), resolved_at=timezone.now()
    )
    expense = start_expense(demo["alice"])
    requests = attach_assignees(list(ApprovalRequest.objects.filter(pk__in=[*ids, expense.pk])))
    serializer = ApprovalRequestSerializer(context={})
    for request in requests:
        fast = serializer.to_representation(request)
        generic = serializers.ModelSerializer.to_representation(serializer, request)
        assert fast == dict(generic)
        assert list(fast) == list(generic)


# -- schema -------------------------------------------------------------------------------------


def test_the_endpoints_are_in_the_openapi_schema(demo) -> None:
    response = token_client(demo["bob"]).get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    paths = schema["paths"]
    assert paths["/api/v1/approvals/"]["get"]["operationId"] == "approvals_list"
    assert paths["/api/v1/approvals/{id}/"]["get"]["operationId"] == "approvals_retrieve"
    for action in ["approve", "reject"]:
        operation = paths[f"/api/v1/approvals/{{id}}/{action}/"]["post"]
        assert operation["operationId"] == f"approvals_{action}"
        assert {"400", "401", "403", "404", "409"} <= set(operation["responses"])
    assert schema["components"]["schemas"]["ApprovalState"]["enum"] == [
        "pending",
        "approved",
        "rejected",
        "expired",
        "cancelled",
        "changes_requested",
        "resubmitted",
        "withdrawn",
    ]


def test_the_schema_validates_without_warnings(tmp_path: Path) -> None:
    # The approvals views are part of the schema; a warning from any of them fails this.
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert "/api/v1/approvals/{id}/approve/" in out.read_text()


def test_a_rejected_expense_retried_asks_the_managers_again_in_a_new_round(
    expense: ApprovalRequest, demo, bob
) -> None:
    """Retrying an instance whose approval was rejected asks again: the step waits once more
    and round 2 is a fresh request (round 1 and its rejection kept); the retry decides nothing.
    (It used to answer 500: the step could not wait again from failed.)"""
    rejected = post_json(bob, f"{APPROVALS}{expense.pk}/reject/", {"comment": "too dear"})
    assert rejected.status_code == 200, rejected.content
    instance = WorkflowInstance.objects.get(pk=expense.instance_id)
    assert instance.state == "failed"
    alice = token_client(demo["alice"])
    retried = post_json(alice, f"/api/v1/instances/{instance.pk}/retry/", {})
    assert retried.status_code == 200, retried.content
    rounds = list(ApprovalRequest.objects.filter(step_run_id=expense.step_run_id).order_by("round"))
    assert [(r.round, r.state) for r in rounds] == [(1, "rejected"), (2, "pending")]
    assert StepRun.objects.get(pk=expense.step_run_id).state == "waiting"
    approved = post_json(bob, f"{APPROVALS}{rounds[1].pk}/approve/", {})
    assert approved.status_code == 200, approved.content
    assert StepRun.objects.get(pk=expense.step_run_id).state == "succeeded"
