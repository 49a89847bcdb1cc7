"""Claims in every channel: the inbox (buttons, the "claimed by" badge, refusals, a list query
count that does not grow with claimed rows), the REST API (claim, release, take over, reassign,
the approval resource), email links (a claimed request shows who and no form) and the admin.

The demo's expense waits for ``managers`` (bob and dave), policy any: soft claims by default.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from approvals import claims, notifications
from approvals.models import ActionToken, ApprovalRequest, Decision
from orchestration.models import Event
from tests.approvals.test_inbox import LIST_QUERIES, bulk_requests, listed, row_html

pytestmark = pytest.mark.django_db


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def token_client(user: Any) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def snapshot(request: ApprovalRequest) -> tuple:
    row = ApprovalRequest.objects.get(pk=request.pk)
    return (
        row.state,
        row.claim_state,
        row.claimed_by_id,
        row.claimed_at,
        Event.objects.filter(instance_id=request.instance_id).count(),
        Decision.objects.filter(request=request).count(),
        sorted(row.assignee_users.values_list("username", flat=True)),
        sorted(row.assignee_groups.values_list("name", flat=True)),
        ActionToken.objects.filter(used_at__isnull=False).count(),
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


@pytest.fixture
def operator(people: dict[str, Any]) -> Any:
    """eve as an operator who may override claims."""
    eve = people["eve"]
    eve.is_staff = True
    eve.save(update_fields=["is_staff"])
    eve.user_permissions.add(
        *Permission.objects.filter(
            codename__in=[
                "operate_instance",
                "override_claim",
                "view_approvalrequest",
                "view_decision",
            ]
        )
    )
    return type(eve).objects.get(pk=eve.pk)


# -- the inbox -------------------------------------------------------------------------------------


def test_claim_in_the_inbox_others_see_who_and_cannot_decide(people, expense) -> None:
    request = expense()
    bob, dave = login(people["bob"]), login(people["dave"])
    page = bob.get(f"/inbox/{request.pk}/").content.decode()
    assert f'action="/inbox/{request.pk}/claim/"' in page
    assert "Nobody has claimed this request" in page
    response = bob.post(f"/inbox/{request.pk}/claim/")
    assert response.status_code == 302 and response["Location"] == f"/inbox/{request.pk}/"
    assert messages_of(response) == ["You claimed this request: others see that you are on it."]
    mine = bob.get(f"/inbox/{request.pk}/").content.decode()
    assert "Claimed by you" in mine
    assert f'action="/inbox/{request.pk}/release/"' in mine
    assert "Keep my claim" in mine  # claiming again renews it
    assert f'action="/inbox/{request.pk}/decide/"' in mine  # bob decides

    theirs = dave.get(f"/inbox/{request.pk}/").content.decode()
    assert re.search(r"Claimed by bob</span>\s*since", theirs)
    assert f'action="/inbox/{request.pk}/decide/"' not in theirs  # no decision form
    assert "Claimed by bob since" in theirs  # why not
    assert f'action="/inbox/{request.pk}/take-over/"' in theirs
    assert '<input type="hidden" name="claimant" value="bob">' in theirs
    assert f'action="/inbox/{request.pk}/release/"' not in theirs

    before = snapshot(request)
    refused = dave.post(f"/inbox/{request.pk}/decide/", {"outcome": "approve"})
    assert refused.status_code == 409
    assert any("claimed by bob since" in m for m in messages_of(refused))
    bulk = dave.post("/inbox/bulk/", {"outcome": "approve", "ids": [request.pk]})
    assert bulk.status_code == 302
    assert any(m.startswith("Refused 1") and "claimed by bob" in m for m in messages_of(bulk))
    again = dave.post(f"/inbox/{request.pk}/claim/")
    assert again.status_code == 409
    assert any(m.startswith("Not claimed: claimed by bob since") for m in messages_of(again))
    assert snapshot(request) == before


def test_the_list_shows_the_claim_and_offers_no_bulk_for_someone_elses(people, expense) -> None:
    claimed, free = expense(description="Claimed"), expense(description="Free")
    claims.approval_claim(request_id=claimed.pk, user=people["bob"])
    dave = login(people["dave"]).get("/inbox/")
    assert set(listed(dave)) == {claimed.pk, free.pk}  # still listed: dave may take it over
    row = row_html(dave, claimed.pk)
    assert "Claimed by bob</span>" in row and "since " in row
    assert f'name="ids" value="{claimed.pk}"' not in row
    assert f'name="ids" value="{free.pk}"' in row_html(dave, free.pk)
    assert "Claimed by" not in row_html(dave, free.pk)
    bob = login(people["bob"]).get("/inbox/")
    mine = row_html(bob, claimed.pk)
    assert "Claimed by you</span>" in mine and f'name="ids" value="{claimed.pk}"' in mine


def test_take_over_and_release_in_the_inbox(people, expense) -> None:
    request = expense()
    claims.approval_claim(request_id=request.pk, user=people["bob"])
    dave = login(people["dave"])
    before = snapshot(request)
    no_note = dave.post(f"/inbox/{request.pk}/take-over/", {"note": " ", "claimant": "bob"})
    assert no_note.status_code == 400
    assert any("A note is required" in m for m in messages_of(no_note))
    stale = dave.post(f"/inbox/{request.pk}/take-over/", {"note": "mine", "claimant": "carol"})
    assert stale.status_code == 409
    assert any("claimed by bob since" in m for m in messages_of(stale))
    not_his = dave.post(f"/inbox/{request.pk}/release/")
    assert not_his.status_code == 403
    assert snapshot(request) == before
    taken = dave.post(f"/inbox/{request.pk}/take-over/", {"note": "bob is away", "claimant": "bob"})
    assert taken.status_code == 302
    assert ApprovalRequest.objects.get(pk=request.pk).claimed_by == people["dave"]
    event = Event.objects.get(instance_id=request.instance_id, type="approval_claim_taken_over")
    assert event.data["note"] == "bob is away" and event.data["from"] == "bob"
    # bob now sees dave's claim and the history says what happened
    page = login(people["bob"]).get(f"/inbox/{request.pk}/").content.decode()
    assert "Claimed by dave" in page and "approval_claim_taken_over" in page
    released = dave.post(f"/inbox/{request.pk}/release/")
    assert released.status_code == 302
    assert ApprovalRequest.objects.get(pk=request.pk).claim_state == "unclaimed"


def test_claim_posts_by_people_without_a_part_are_refused(people, expense) -> None:
    request = expense()
    before = snapshot(request)
    assert login(people["eve"]).post(f"/inbox/{request.pk}/claim/").status_code == 404
    assert login(people["alice"]).post(f"/inbox/{request.pk}/claim/").status_code == 403
    assert login(people["bob"]).post("/inbox/999999/claim/").status_code == 404
    assert login(people["bob"]).post(f"/inbox/{2**64}/claim/").status_code == 404
    assert login(people["bob"]).get(f"/inbox/{request.pk}/claim/").status_code == 405
    assert Client().post(f"/inbox/{request.pk}/claim/").status_code == 302  # to the login
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(people["bob"])
    assert csrf.post(f"/inbox/{request.pk}/claim/").status_code == 403
    assert snapshot(request) == before


def test_a_decided_request_shows_no_claim(people, expense) -> None:
    request = expense()
    claims.approval_claim(request_id=request.pk, user=people["bob"])
    login(people["bob"]).post(f"/inbox/{request.pk}/decide/", {"outcome": "approve"})
    page = login(people["dave"]).get(f"/inbox/{request.pk}/").content.decode()
    assert "Claimed by" not in page and 'id="claim"' not in page
    refused = login(people["dave"]).post(f"/inbox/{request.pk}/claim/")
    assert refused.status_code == 409


def test_list_query_count_stays_constant_with_claimed_rows(
    client, people, django_assert_max_num_queries
) -> None:
    managers = Group.objects.get(name="managers")
    claimants = [people["bob"], people["dave"]]

    def claim_all() -> None:
        # Claimed by two different people: no query per claimant either.
        for n, request in enumerate(ApprovalRequest.objects.filter(claim_state="unclaimed")):
            ApprovalRequest.objects.filter(pk=request.pk).update(
                claim_mode="soft",
                claim_state="claimed",
                claimed_by=claimants[n % 2],
                claimed_at=timezone.now(),
                claim_expires_at=timezone.now() + timedelta(hours=1),
            )

    bulk_requests(10, group=managers)
    claim_all()
    client.force_login(people["dave"])
    counts = []
    for more in (0, 490):
        if more:
            bulk_requests(more, group=managers, offset=10)
            claim_all()
        with django_assert_max_num_queries(LIST_QUERIES):
            with CaptureQueriesContext(connection) as queries:
                page = client.get("/inbox/")
        html = page.content.decode()
        assert html.count("Claimed by bob</span>") + html.count("Claimed by you</span>") == len(
            listed(page)
        )
        counts.append(len(queries))
    assert counts[0] == counts[1]


# The request page for an assignee: session, user, request, decisions, events, steps,
# assignees, the pending check, its capped count, timers... and, for the claim, the override
# permission (claimed) or whether the request takes claims (unclaimed). Fixed, whoever holds
# the claim.
DETAIL_QUERIES = 29  # with the files, rounds, context and thread cards; constant in the data


def test_request_page_query_count_is_bounded_claimed_or_not(
    people, expense, django_assert_max_num_queries
) -> None:
    request = expense()
    dave = login(people["dave"])
    with django_assert_max_num_queries(DETAIL_QUERIES):
        assert dave.get(f"/inbox/{request.pk}/").status_code == 200
    claims.approval_claim(request_id=request.pk, user=people["bob"])
    with django_assert_max_num_queries(DETAIL_QUERIES):
        assert "Claimed by bob" in dave.get(f"/inbox/{request.pk}/").content.decode()
    claims.approval_take_over(request_id=request.pk, user=people["dave"], note="mine")
    with django_assert_max_num_queries(DETAIL_QUERIES):
        assert "Claimed by you" in dave.get(f"/inbox/{request.pk}/").content.decode()


# -- the REST API ----------------------------------------------------------------------------------


def test_claim_release_take_over_through_the_api(people, expense) -> None:
    request = expense()
    url = f"/api/v1/approvals/{request.pk}/"
    bob, dave = token_client(people["bob"]), token_client(people["dave"])
    detail = bob.get(url).json()
    assert detail["claimed_by"] is None and detail["claimed_at"] is None
    assert detail["claim"] == "soft" and detail["claim_expires_at"] is None

    claimed = bob.post(f"{url}claim/", {}, format="json")
    assert claimed.status_code == 200, claimed.content
    body = claimed.json()
    assert body["claimed_by"] == "bob" and body["claimed_at"] and body["claim_expires_at"]
    assert body["can_decide"] is True
    assert (
        Event.objects.get(instance_id=request.instance_id, type="approval_claimed").data["channel"]
        == "api"
    )

    listed_for_dave = dave.get("/api/v1/approvals/").json()["results"]
    [item] = [r for r in listed_for_dave if r["id"] == request.pk]
    assert item["claimed_by"] == "bob" and item["claimed_at"] == body["claimed_at"]
    assert dave.get(url).json()["can_decide"] is False

    before = snapshot(request)
    refused = dave.post(f"{url}approve/", {}, format="json")
    assert refused.status_code == 409
    assert refused.json()["code"] == "claimed"
    assert refused.json()["detail"].startswith("claimed by bob since ")
    assert dave.post(f"{url}claim/", {}, format="json").json()["code"] == "claimed"
    assert dave.post(f"{url}release/", {}, format="json").json()["code"] == "not_claimant"
    assert dave.post(f"{url}take-over/", {}, format="json").status_code == 400
    assert dave.post(f"{url}take-over/", {"note": ""}, format="json").status_code == 400
    assert dave.post(f"{url}take-over/", {"note": "x", "extra": 1}, format="json").status_code == (
        400
    )
    assert dave.post(f"{url}claim/", {"force": True}, format="json").status_code == 400
    assert dave.post(f"{url}claim/", [1], format="json").status_code == 400
    assert snapshot(request) == before

    taken = dave.post(f"{url}take-over/", {"note": "bob is away", "claimant": "bob"}, format="json")
    assert taken.status_code == 200 and taken.json()["claimed_by"] == "dave"
    assert (
        bob.post(f"{url}take-over/", {"note": "n", "claimant": "bob"}, format="json").json()["code"]
        == "claimed"
    )
    assert bob.post(f"{url}approve/", {}, format="json").json()["code"] == "claimed"
    released = dave.post(f"{url}release/", {}, format="json")
    assert released.status_code == 200 and released.json()["claimed_by"] is None
    assert dave.post(f"{url}release/", {}, format="json").json()["code"] == "not_claimed"
    assert bob.post(f"{url}approve/", {}, format="json").status_code == 200


def test_api_claim_refusals_by_role(people, expense) -> None:
    request = expense()
    url = f"/api/v1/approvals/{request.pk}/claim/"
    before = snapshot(request)
    assert APIClient().post(url, {}, format="json").status_code == 401
    assert token_client(people["eve"]).post(url, {}, format="json").status_code == 404
    own = token_client(people["alice"]).post(url, {}, format="json")
    assert own.status_code == 403 and own.json()["code"] == "not_assignee"  # the requester
    assert (
        token_client(people["bob"])
        .post("/api/v1/approvals/999999/claim/", {}, format="json")
        .status_code
        == 404
    )
    assert snapshot(request) == before


def test_claiming_a_decided_request_through_the_api_is_409(people, expense) -> None:
    request = expense()
    token_client(people["dave"]).post(f"/api/v1/approvals/{request.pk}/approve/", {}, format="json")
    refused = token_client(people["bob"]).post(
        f"/api/v1/approvals/{request.pk}/claim/", {}, format="json"
    )
    assert refused.status_code == 409 and refused.json()["code"] == "already_decided"


def test_reassign_through_the_api(people, expense, operator) -> None:
    request = expense()
    claims.approval_claim(request_id=request.pk, user=people["bob"])
    url = f"/api/v1/approvals/{request.pk}/reassign/"
    ops = token_client(operator)
    before = snapshot(request)
    bad_bodies = [
        ({"users": ["carol"]}, "reason"),
        ({"users": "carol", "reason": "x"}, "users"),
        ({"users": [1], "reason": "x"}, "users"),
        ({"users": ["carol"], "reason": ""}, "reason"),
        ({"users": ["carol"], "reason": "x", "note": "?"}, "note"),
        ({"users": ["carol"] * 101, "reason": "x"}, "users"),
    ]
    for body, field in bad_bodies:
        response = ops.post(url, body, format="json")
        assert response.status_code == 400, body
        assert field in response.json()["fields"], body
    unknown = ops.post(url, {"users": ["nobody"], "reason": "x"}, format="json")
    assert unknown.status_code == 400 and unknown.json()["code"] == "unknown_assignee"
    nobody = ops.post(url, {"users": [], "groups": [], "reason": "x"}, format="json")
    assert nobody.status_code == 400 and nobody.json()["code"] == "no_assignee"
    self_assign = ops.post(url, {"users": ["eve"], "reason": "x"}, format="json")
    assert self_assign.status_code == 403 and self_assign.json()["code"] == "self_assignment"
    # An assignee may not reassign, and cannot probe usernames with it.
    bob = token_client(people["bob"])
    for body in ({"users": ["nobody"], "reason": "x"}, {"users": ["carol"], "reason": "x"}):
        refused = bob.post(url, body, format="json")
        assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert (
        token_client(people["alice"])
        .post(url, {"users": ["carol"], "reason": "x"}, format="json")
        .status_code
        == 403
    )
    assert APIClient().post(
        url, {"users": ["carol"], "reason": "x"}, format="json"
    ).status_code == (401)
    assert snapshot(request) == before

    done = ops.post(url, {"users": ["carol"], "groups": [], "reason": "bob left"}, format="json")
    assert done.status_code == 200, done.content
    body = done.json()
    assert body["assignees"] == {"users": ["carol"], "groups": []}
    assert body["claimed_by"] is None  # bob may no longer decide it: his claim went
    event = Event.objects.get(instance_id=request.instance_id, type="approval_reassigned")
    assert event.actor == "user:eve"
    assert event.data == {"users": ["carol"], "groups": [], "reason": "bob left", "channel": "api"}
    released = Event.objects.get(instance_id=request.instance_id, type="approval_released")
    assert released.data == {"user": "bob", "reason": "reassigned"}

    token_client(people["carol"]).post(
        f"/api/v1/approvals/{request.pk}/approve/", {}, format="json"
    )
    decided = ops.post(url, {"users": ["dave"], "reason": "x"}, format="json")
    assert decided.status_code == 409 and decided.json()["code"] == "already_decided"


def test_api_list_query_count_stays_constant_with_claimed_rows(people) -> None:
    managers = Group.objects.get(name="managers")
    dave = token_client(people["dave"])
    counts = []
    for count, offset in ((5, 0), (100, 5)):
        requests = bulk_requests(count, group=managers, offset=offset)
        ApprovalRequest.objects.filter(pk__in=[r.pk for r in requests]).update(
            claim_mode="soft",
            claim_state="claimed",
            claimed_by=people["bob"],
            claimed_at=timezone.now(),
        )
        with CaptureQueriesContext(connection) as queries:
            response = dave.get("/api/v1/approvals/", {"page_size": 200})
        results = response.json()["results"]
        assert len(results) == offset + count
        assert {r["claimed_by"] for r in results} == {"bob"}
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_the_schema_documents_every_claim_operation(client) -> None:
    schema = client.get("/api/schema/?format=json").json()
    for op, statuses in {
        "claim": {"200", "400", "401", "403", "404", "409", "413", "429"},
        "release": {"200", "400", "401", "403", "404", "409", "413", "429"},
        "take-over": {"200", "400", "401", "403", "404", "409", "413", "429"},
        "reassign": {"200", "400", "401", "403", "404", "409", "413", "429"},
    }.items():
        post = schema["paths"][f"/api/v1/approvals/{{id}}/{op}/"]["post"]
        assert set(post["responses"]) == statuses, op
    detail = schema["components"]["schemas"]["ApprovalRequestDetail"]["properties"]
    assert {"claimed_by", "claimed_at", "claim", "claim_expires_at"} <= set(detail)
    listed_item = schema["components"]["schemas"]["ApprovalRequest"]["properties"]
    assert {"claimed_by", "claimed_at"} <= set(listed_item)


# -- email links -----------------------------------------------------------------------------------


def _csrf_post(client: Client, url: str, data: dict[str, str]) -> Any:
    client.get(url)
    return client.post(url, {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value})


def test_a_link_to_a_request_someone_else_claimed_shows_who_and_no_form(people, expense) -> None:
    cache.clear()
    request = expense()
    now = timezone.now()
    dave_link = f"/a/{notifications.token_issue(request, people['dave'], now, 'assigned')}/"
    bob_link = f"/a/{notifications.token_issue(request, people['bob'], now, 'assigned')}/"
    claims.approval_claim(request_id=request.pk, user=people["bob"])
    before = snapshot(request)
    page = Client(enforce_csrf_checks=True).get(dave_link)
    assert page.status_code == 409
    html = page.content.decode()
    assert "Claimed by bob since" in html and 'data-reason="claimed"' in html
    assert 'name="outcome"' not in html
    posted = _csrf_post(Client(enforce_csrf_checks=True), dave_link, {"outcome": "approve"})
    assert posted.status_code == 409 and 'name="outcome"' not in posted.content.decode()
    assert snapshot(request) == before
    # bob's own link works while he holds the claim
    assert 'name="outcome"' in Client().get(bob_link).content.decode()
    # dave's link is good again once the claim is released
    claims.approval_release(request_id=request.pk, user=people["bob"])
    assert (
        _csrf_post(Client(enforce_csrf_checks=True), dave_link, {"outcome": "approve"}).status_code
        == 200
    )
    assert Decision.objects.get(request=request).decided_by == people["dave"]


# -- the admin -------------------------------------------------------------------------------------


def test_the_admin_shows_the_claim_and_lets_an_override_holder_release_it(
    people, expense, operator
) -> None:
    request = expense()
    claims.approval_claim(request_id=request.pk, user=people["bob"])
    admin = login(operator)
    change = f"/admin/approvals/approvalrequest/{request.pk}/change/"
    page = admin.get(change).content.decode()
    assert "claimed by bob since" in page and "(soft, expires if idle at" in page
    release_url = f"/admin/approvals/approvalrequest/{request.pk}/release-claim/"
    assert release_url in page
    assert "take-over-claim" not in page  # eve may not decide it
    assert admin.get(release_url).status_code == 200
    done = admin.post(release_url, {"confirm": "1", "note": "bob is on leave"})
    assert done.status_code == 302 and done["Location"] == change
    assert ApprovalRequest.objects.get(pk=request.pk).claim_state == "unclaimed"
    event = Event.objects.get(instance_id=request.instance_id, type="approval_released")
    assert event.data == {
        "user": "bob",
        "channel": "admin",
        "forced": True,
        "note": "bob is on leave",
    }
    assert "unclaimed (soft claims)" in admin.get(change).content.decode()


def test_the_admin_refuses_claim_acts_the_policy_refuses(people, expense, operator) -> None:
    request = expense()
    claims.approval_claim(request_id=request.pk, user=people["bob"])
    operator.user_permissions.remove(Permission.objects.get(codename="override_claim"))
    admin = login(type(operator).objects.get(pk=operator.pk))
    before = snapshot(request)
    release = admin.post(
        f"/admin/approvals/approvalrequest/{request.pk}/release-claim/", {"confirm": "1"}
    )
    assert release.status_code == 403 and "only they may release it" in release.content.decode()
    take = admin.post(
        f"/admin/approvals/approvalrequest/{request.pk}/take-over-claim/",
        {"confirm": "1", "note": "mine"},
    )
    assert take.status_code == 403
    no_note = admin.post(
        f"/admin/approvals/approvalrequest/{request.pk}/take-over-claim/", {"confirm": "1"}
    )
    assert no_note.status_code == 400
    assert snapshot(request) == before
