"""Send back for changes through every channel: the inbox (a third button, "Revise and
resubmit" at the top of the list, the revise page, withdraw), bulk (refused), the REST API,
email links (a third button on the confirmation page), the status page's timeline, and query
counts that do not grow with the rounds."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from approvals import notifications, services
from approvals.models import ActionToken, ApprovalRequest, Decision
from integrations.models import OutboundEmail
from orchestration import engine
from orchestration.models import Event, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db

EXPENSE = {"amount": 120, "description": "Taxi to the airport", "category": "travel"}
API = "/api/v1/approvals/"


def start(people: dict[str, Any], workflow: str = "t_revisable", **extra: Any) -> ApprovalRequest:
    instance, _ = engine.instance_start(
        workflow=workflow, input={**EXPENSE, **extra}, started_by=people["alice"]
    )
    reserve = StepRun.objects.get(instance=instance, name="reserve")
    engine.step_execute(step_run_id=reserve.pk, attempt=1)
    return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")


def send_back(request: ApprovalRequest, user: Any, comment: str = "receipt missing") -> None:
    services.approval_request_changes(request_id=request.pk, user=user, comment=comment)


def rounds(people: dict[str, Any], n: int, workflow: str = "t_revisable_long") -> ApprovalRequest:
    """A request in round ``n`` (sent back and resubmitted n - 1 times)."""
    request = start(people, workflow=workflow)
    for number in range(1, n):
        send_back(request, people["bob"], f"round {number}: not yet")
        request = services.approval_resubmit(
            request_id=request.pk, user=people["alice"], changes={"amount": 100 + number}
        )
    return ApprovalRequest.objects.get(pk=request.pk)


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def token_client(user: Any) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def post_json(client: APIClient, path: str, body: Any) -> Any:
    return client.generic("POST", path, json.dumps(body), content_type="application/json")


def snapshot() -> tuple:
    return (
        sorted(WorkflowInstance.objects.values_list("state", "input")),
        sorted(StepRun.objects.values_list("name", "state")),
        Event.objects.count(),
        sorted(ApprovalRequest.objects.values_list("round", "state")),
        Decision.objects.count(),
        OutboundEmail.objects.count(),
        ActionToken.objects.filter(used_at__isnull=False).count(),
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


# -- the inbox ----------------------------------------------------------------------------------


def test_the_request_page_offers_a_third_button_and_it_needs_a_comment(people) -> None:
    request = start(people)
    bob = login(people["bob"])
    page = bob.get(f"/inbox/{request.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="request_changes"' in html and "Request changes" in html
    # The requester sees no decision buttons (and no third one).
    assert (
        'value="request_changes"'
        not in login(people["alice"]).get(f"/inbox/{request.pk}/").content.decode()
    )

    before = snapshot()
    refused = bob.post(f"/inbox/{request.pk}/decide/", {"outcome": "request_changes"})
    assert refused.status_code == 400
    assert "a comment is required to request changes" in refused.content.decode()
    assert snapshot() == before

    done = bob.post(
        f"/inbox/{request.pk}/decide/",
        {"outcome": "request_changes", "comment": "Attach the receipt, please."},
    )
    assert done.status_code == 302 and done["Location"] == "/inbox/"
    assert messages_of(done) == [
        "Sent “Expense 120 for Taxi to the airport” back to alice for changes."
    ]
    assert ApprovalRequest.objects.get(pk=request.pk).state == "changes_requested"
    decision = Decision.objects.get(request=request)
    assert (decision.outcome, decision.channel) == ("request_changes", "web")
    page = bob.get(f"/inbox/{request.pk}/").content.decode()
    assert "Changes requested" in page and "Attach the receipt, please." in page
    assert "waiting for the requester to revise and resubmit" in page


def test_the_last_round_offers_no_third_button(people) -> None:
    request = start(people, workflow="t_revisable_once")
    html = login(people["bob"]).get(f"/inbox/{request.pk}/").content.decode()
    assert 'value="approve"' in html and 'value="request_changes"' not in html
    before = snapshot()
    response = login(people["bob"]).post(
        f"/inbox/{request.pk}/decide/", {"outcome": "request_changes", "comment": "x"}
    )
    assert response.status_code == 409
    assert "the last: changes can no longer be requested" in response.content.decode()
    assert snapshot() == before


def test_bulk_refuses_request_changes_clearly(people) -> None:
    request = start(people)
    before = snapshot()
    response = login(people["bob"]).post(
        "/inbox/bulk/",
        {"outcome": "request_changes", "ids": [request.pk], "comment": "no", "next": "/inbox/"},
    )
    assert response.status_code == 302
    assert any("one request at a time" in m for m in messages_of(response))
    assert snapshot() == before


def test_the_requester_revises_and_resubmits_from_the_inbox(people) -> None:
    request = start(people, iban="DE00 1234 5678")
    send_back(request, people["bob"], "The receipt is missing.")
    alice = login(people["alice"])
    inbox = alice.get("/inbox/").content.decode()
    section = re.search(r'<section class="card revise-list".*?</section>', inbox, re.S).group(0)
    assert "Revise and resubmit" in section
    assert f'href="/inbox/{request.pk}/revise/"' in section
    assert "changes requested by bob" in section and "The receipt is missing." in section
    detail = alice.get(f"/inbox/{request.pk}/").content.decode()
    assert f'href="/inbox/{request.pk}/revise/"' in detail

    page = alice.get(f"/inbox/{request.pk}/revise/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "The receipt is missing." in html
    assert re.search(r'name="amount"[^>]*value="120"', html)
    assert re.search(r'name="description"[^>]*>\s*Taxi to the airport</textarea>', html)
    assert '<option value="travel" selected>' in html
    # The sealed field is offered empty: its value never reaches the page.
    assert 'name="iban"' in html and "DE00 1234 5678" not in html
    assert 'name="requester"' not in html  # not revisable

    done = alice.post(
        f"/inbox/{request.pk}/revise/",
        {
            "amount": "95.50",
            "description": "Taxi to the airport",
            "category": "travel",
            "iban": "",
            "receipt": "R-17",
            "items": "",
        },
    )
    second = ApprovalRequest.objects.get(instance_id=request.instance_id, round=2)
    assert done.status_code == 302 and done["Location"] == f"/inbox/{second.pk}/"
    instance = WorkflowInstance.objects.get(pk=request.instance_id)
    assert instance.input["amount"] == 95.5 and instance.input["receipt"] == "R-17"
    revised = Event.objects.get(instance=instance, type="instance_input_revised")
    assert set(revised.data["changes"]) == {"amount", "receipt"}  # iban kept, not "changed"
    # The next round's page shows the earlier round.
    html = login(people["bob"]).get(f"/inbox/{second.pk}/").content.decode()
    round_one = re.search(r'<li data-round="1">(.*?)</li>', html, re.S).group(1)
    assert "Round 1" in round_one and "changes requested by <strong>bob</strong>" in round_one
    assert "The receipt is missing." in round_one and "Resubmitted by alice" in round_one
    assert 'value="request_changes"' in html  # round 2 of 3
    # The round sent back points to the next one.
    old = login(people["bob"]).get(f"/inbox/{request.pk}/").content.decode()
    assert f'href="/inbox/{second.pk}/"' in old and "resubmitted it as round 2" in old


def test_a_revision_that_breaks_the_schema_is_shown_on_its_field_and_changes_nothing(
    people,
) -> None:
    request = start(people)
    send_back(request, people["bob"])
    before = snapshot()
    alice = login(people["alice"])
    form = {"amount": "-5", "description": "Taxi", "category": "travel"}
    response = alice.post(f"/inbox/{request.pk}/revise/", form)
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert "amount" in errors and "less than or equal to the minimum" in str(errors["amount"])
    for bad in ({"amount": "a lot"}, {"amount": "NaN"}, {"items": "[" * 200 + "]" * 200}):
        response = alice.post(f"/inbox/{request.pk}/revise/", {**form, "amount": "5", **bad})
        assert response.status_code == 400
    assert snapshot() == before


def test_only_the_requester_opens_the_revise_page(people) -> None:
    request = start(people)
    # Not sent back yet: nothing to revise.
    response = login(people["alice"]).get(f"/inbox/{request.pk}/revise/")
    assert response.status_code == 409
    send_back(request, people["bob"])
    before = snapshot()
    assert login(people["bob"]).get(f"/inbox/{request.pk}/revise/").status_code == 403
    assert login(people["carol"]).get(f"/inbox/{request.pk}/revise/").status_code == 404
    assert login(people["bob"]).post(f"/inbox/{request.pk}/revise/", {}).status_code == 403
    assert login(people["bob"]).post(f"/inbox/{request.pk}/withdraw/", {}).status_code == 403
    assert login(people["carol"]).post(f"/inbox/{request.pk}/withdraw/", {}).status_code == 404
    assert Client().get(f"/inbox/{request.pk}/revise/").status_code == 302  # log in first
    assert snapshot() == before


def test_the_requester_withdraws_from_the_inbox(people) -> None:
    request = start(people)
    send_back(request, people["bob"])
    response = login(people["alice"]).post(
        f"/inbox/{request.pk}/withdraw/", {"reason": "bought it myself"}
    )
    assert response.status_code == 302 and response["Location"] == "/inbox/"
    assert messages_of(response) == [
        "Withdrew “Expense 120 for Taxi to the airport”; the workflow was cancelled."
    ]
    assert ApprovalRequest.objects.get(pk=request.pk).state == "withdrawn"
    assert WorkflowInstance.objects.get(pk=request.instance_id).state == "compensating"
    again = login(people["alice"]).post(f"/inbox/{request.pk}/withdraw/", {})
    assert again.status_code == 409 and b"already withdrawn by alice" in again.content


# -- the REST API -------------------------------------------------------------------------------


def test_api_request_changes_resubmit_and_the_rounds(people) -> None:
    request = start(people)
    bob, alice = token_client(people["bob"]), token_client(people["alice"])
    detail = bob.get(f"{API}{request.pk}/").json()
    assert detail["round"] == 1 and detail["max_rounds"] == 3
    assert detail["can_decide"] is True and detail["can_request_changes"] is True
    assert detail["revisable"] == ["amount", "description", "category", "iban", "receipt", "items"]

    before = snapshot()
    for body, code in (
        ({}, "invalid"),
        ({"comment": "  "}, "invalid"),
        ({"comment": 5}, "invalid"),
    ):
        response = post_json(bob, f"{API}{request.pk}/request-changes/", body)
        assert response.status_code == 400 and response.json()["code"] == code, response.content
    response = post_json(bob, f"{API}{request.pk}/request-changes/", {"comment": "x", "y": 1})
    assert response.status_code == 400 and "y" in response.json()["fields"]
    assert (
        post_json(alice, f"{API}{request.pk}/request-changes/", {"comment": "x"}).status_code == 403
    )
    assert snapshot() == before

    response = post_json(bob, f"{API}{request.pk}/request-changes/", {"comment": "receipt?"})
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "changes_requested"
    again = post_json(
        token_client(people["dave"]), f"{API}{request.pk}/request-changes/", {"comment": "x"}
    )
    assert again.status_code == 409 and again.json()["code"] == "already_decided"
    assert "changes were already requested by bob" in again.json()["detail"]

    listed = alice.get(API, {"state": "revise"}).json()["results"]
    assert [item["id"] for item in listed] == [request.pk]
    assert listed[0]["round"] == 1
    assert alice.get(f"{API}{request.pk}/").json()["can_resubmit"] is True
    assert bob.get(f"{API}{request.pk}/").json()["can_resubmit"] is False

    before = snapshot()
    bad = post_json(alice, f"{API}{request.pk}/resubmit/", {"input": {"amount": -1}})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_input"
    assert "amount" in bad.json()["fields"]["input"][0]
    bad = post_json(alice, f"{API}{request.pk}/resubmit/", {"input": {"requester": "bob"}})
    assert bad.status_code == 400 and bad.json()["code"] == "not_revisable"
    bad = post_json(alice, f"{API}{request.pk}/resubmit/", {"input": [1]})
    assert bad.status_code == 400
    bad = post_json(alice, f"{API}{request.pk}/resubmit/", {"changes": {}})
    assert bad.status_code == 400 and "changes" in bad.json()["fields"]
    assert post_json(bob, f"{API}{request.pk}/resubmit/", {"input": {}}).status_code == 403
    assert snapshot() == before

    response = post_json(alice, f"{API}{request.pk}/resubmit/", {"input": {"amount": 95}})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"] != request.pk and body["round"] == 2 and body["state"] == "pending"
    assert response["Location"] == f"{API}{body['id']}/"
    assert body["title"] == "Expense 95 for Taxi to the airport"
    assert [r["round"] for r in body["rounds"]] == [1]
    first = body["rounds"][0]
    assert first["id"] == request.pk and first["state"] == "resubmitted"
    assert first["changes_requested_by"] == "bob" and first["comment"] == "receipt?"
    assert first["answered_by"] == "alice"
    assert first["decisions"][0]["outcome"] == "request_changes"
    double = post_json(alice, f"{API}{request.pk}/resubmit/", {"input": {"amount": 90}})
    assert double.status_code == 409 and double.json()["code"] == "already_resubmitted"

    # The history shows the input change as a diff.
    history = alice.get(f"/api/v1/instances/{request.instance_id}/history/").json()
    items = history["results"] if isinstance(history, dict) else history
    revised = next(e for e in items if e["type"] == "instance_input_revised")
    assert revised["data"]["changes"] == {"amount": {"from": 120, "to": 95}}
    assert revised["actor"] == "user:alice"

    approve = post_json(bob, f"{API}{body['id']}/approve/", {})
    assert approve.status_code == 200 and approve.json()["state"] == "approved"


def test_api_max_rounds_and_withdraw(people) -> None:
    request = start(people, workflow="t_revisable_once")
    bob, alice = token_client(people["bob"]), token_client(people["alice"])
    assert bob.get(f"{API}{request.pk}/").json()["can_request_changes"] is False
    before = snapshot()
    response = post_json(bob, f"{API}{request.pk}/request-changes/", {"comment": "x"})
    assert response.status_code == 409 and response.json()["code"] == "max_rounds"
    assert snapshot() == before

    request = start(people)
    post_json(bob, f"{API}{request.pk}/request-changes/", {"comment": "why?"})
    assert post_json(bob, f"{API}{request.pk}/withdraw/", {}).status_code == 403
    bad = post_json(alice, f"{API}{request.pk}/withdraw/", {"reason": "x" * 501})
    assert bad.status_code == 400
    response = post_json(alice, f"{API}{request.pk}/withdraw/", {"reason": "never mind"})
    assert response.status_code == 200 and response.json()["state"] == "withdrawn"
    assert WorkflowInstance.objects.get(pk=request.instance_id).state == "compensating"
    again = post_json(alice, f"{API}{request.pk}/withdraw/", {})
    assert again.status_code == 409 and again.json()["code"] == "already_withdrawn"


def test_the_new_endpoints_are_in_the_openapi_schema(people) -> None:
    schema = json.loads(token_client(people["bob"]).get("/api/schema/", {"format": "json"}).content)
    for action, code in (("request-changes", "200"), ("resubmit", "201"), ("withdraw", "200")):
        operation = schema["paths"][f"/api/v1/approvals/{{id}}/{action}/"]["post"]
        assert operation["operationId"] == f"approvals_{action.replace('-', '_')}"
        assert {code, "400", "401", "403", "404", "409"} <= set(operation["responses"])
    detail = schema["components"]["schemas"]["ApprovalRequestDetail"]["properties"]
    assert {"round", "max_rounds", "revisable", "rounds", "can_request_changes"} <= set(detail)


# -- email links --------------------------------------------------------------------------------


def link_for(request: ApprovalRequest, user: Any) -> str:
    return f"/a/{notifications.token_issue(request, user, timezone.now(), 'assigned')}/"


def csrf_post(client: Client, url: str, data: dict[str, str]) -> Any:
    client.get(url)
    return client.post(url, {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value})


def test_the_email_link_page_has_a_third_button_that_needs_a_comment(people) -> None:
    cache.clear()
    request = start(people)
    url = link_for(request, people["bob"])
    client = Client(enforce_csrf_checks=True)
    page = client.get(url).content.decode()
    assert 'value="request_changes"' in page and "required to reject or to request changes" in page
    before = snapshot()
    refused = csrf_post(client, url, {"outcome": "request_changes", "comment": ""})
    assert refused.status_code == 400
    assert "a comment is required to request changes" in refused.content.decode()
    assert 'value="request_changes"' in refused.content.decode()  # the form again
    assert snapshot() == before
    done = csrf_post(client, url, {"outcome": "request_changes", "comment": "Which trip?"})
    assert done.status_code == 200
    assert "back to its requester for changes" in done.content.decode()
    request.refresh_from_db()
    assert request.state == "changes_requested"
    decision = Decision.objects.get(request=request)
    assert (decision.decided_by, decision.channel) == (people["bob"], "email")
    assert ActionToken.objects.get(request=request, user=people["bob"]).used_at is not None
    # dave's link now says the request was sent back, by whom.
    gone = Client().get(link_for(request, people["dave"]))
    assert (
        gone.status_code == 410 and b"changes were already requested by bob" in gone.content.lower()
    )


def test_the_email_link_in_the_last_round_offers_two_buttons(people) -> None:
    cache.clear()
    request = start(people, workflow="t_revisable_once")
    url = link_for(request, people["bob"])
    client = Client(enforce_csrf_checks=True)
    page = client.get(url).content.decode()
    assert 'value="approve"' in page and 'value="request_changes"' not in page
    before = snapshot()
    response = csrf_post(client, url, {"outcome": "request_changes", "comment": "x"})
    assert response.status_code == 409
    assert "the last: changes can no longer be requested" in response.content.decode()
    assert 'value="approve"' in response.content.decode()  # still open: decide it
    assert snapshot() == before


# -- the status page ----------------------------------------------------------------------------


def test_the_status_page_tells_the_rounds_in_words(people) -> None:
    request = start(people)
    send_back(request, people["bob"], "receipt missing")
    second = services.approval_resubmit(
        request_id=request.pk, user=people["alice"], changes={"amount": 95, "receipt": "R-1"}
    )
    html = login(people["alice"]).get(f"/instances/{request.instance_id}/").content.decode()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "Changes requested by bob via web" in text and "receipt missing" in text
    assert "Input revised" in text and "amount 120 → 95; receipt set to R-1" in text
    assert "Resubmitted by alice for round 2" in text and "changed amount, receipt" in text
    assert "Approval requested (round 2)" in text
    send_back(ApprovalRequest.objects.get(pk=second.pk), people["bob"], "still no")
    services.approval_withdraw(request_id=second.pk, user=people["alice"], reason="enough")
    html = login(people["alice"]).get(f"/instances/{request.instance_id}/").content.decode()
    assert "Withdrawn by alice" in re.sub(r"<[^>]+>", " ", html)


# -- query counts do not grow with the rounds ----------------------------------------------------


def count_queries(fn: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = fn()
    assert response.status_code == 200, response.content[:300]
    return len(captured)


def test_request_page_and_api_detail_cost_the_same_in_round_3_and_round_7(people) -> None:
    two, six = rounds(people, 3), rounds(people, 7)
    bob, alice = login(people["bob"]), login(people["alice"])
    page = [count_queries(lambda r=r: bob.get(f"/inbox/{r.pk}/")) for r in (two, six)]
    assert page[0] == page[1], page
    api = token_client(people["bob"])
    detail = [count_queries(lambda r=r: api.get(f"{API}{r.pk}/")) for r in (two, six)]
    assert detail[0] == detail[1], detail
    # The requester's view of a request sent back, and its revise page, likewise.
    send_back(two, people["bob"])
    send_back(six, people["bob"])
    mine = [count_queries(lambda r=r: alice.get(f"/inbox/{r.pk}/")) for r in (two, six)]
    assert mine[0] == mine[1], mine
    revise = [count_queries(lambda r=r: alice.get(f"/inbox/{r.pk}/revise/")) for r in (two, six)]
    assert revise[0] == revise[1], revise
    # An earlier round's page (a round sent back and resubmitted: rounds 2 and 6) too.
    earlier = [
        ApprovalRequest.objects.get(step_run_id=r.step_run_id, round=r.round - 1)
        for r in (two, six)
    ]
    old = [count_queries(lambda r=r: bob.get(f"/inbox/{r.pk}/")) for r in earlier]
    assert old[0] == old[1], old


def test_the_inbox_list_costs_the_same_with_1_or_6_requests_to_revise(people) -> None:
    from tests.approvals.test_inbox import LIST_QUERIES

    alice = login(people["alice"])
    send_back(start(people), people["bob"])
    one = count_queries(lambda: alice.get("/inbox/"))
    for n in range(2, 7):
        send_back(rounds(people, n), people["bob"])
    response = alice.get("/inbox/")
    assert response.content.decode().count("data-revise=") == 6
    six = count_queries(lambda: alice.get("/inbox/"))
    assert one == six <= LIST_QUERIES + 1  # + who asked for the changes


# -- the admin ----------------------------------------------------------------------------------


def test_the_admin_shows_the_round_and_never_records_changes_on_someones_behalf(
    people, django_user_model, settings
) -> None:
    settings.SIGNOFF_DECIDE_ON_BEHALF = True
    request = rounds(people, 2)
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    admin = login(root)
    listing = admin.get("/admin/approvals/approvalrequest/")
    assert listing.status_code == 200
    page = admin.get(f"/admin/approvals/approvalrequest/{request.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Max rounds" in html and "Answered by" in html
    form = admin.get(f"/admin/approvals/approvalrequest/{request.pk}/decide/")
    assert form.status_code == 200
    assert 'value="approve"' in form.content.decode()
    assert 'value="request_changes"' not in form.content.decode()


def test_the_revise_form_as_it_comes_changes_nothing(people) -> None:
    """Submitting the prefilled form untouched (an optional choice never set, an empty JSON
    field, a sealed field left empty) resubmits without an input change."""
    instance, _ = engine.instance_start(
        workflow="t_revisable",
        input={"amount": 120, "description": "Taxi", "iban": "DE00 1234 5678"},
        started_by=people["alice"],
    )
    engine.step_execute(
        step_run_id=StepRun.objects.get(instance=instance, name="reserve").pk, attempt=1
    )
    request = ApprovalRequest.objects.get(instance=instance)
    send_back(request, people["bob"])
    alice = login(people["alice"])
    form = alice.get(f"/inbox/{request.pk}/revise/").context["form"]
    assert form["category"].value() in (None, "")
    data = {name: form[name].value() or "" for name in form.fields}
    assert data["items"] == "" and data["iban"] == ""
    response = alice.post(f"/inbox/{request.pk}/revise/", data)
    assert response.status_code == 302, response.content[:500]
    assert not Event.objects.filter(instance=instance, type="instance_input_revised").exists()
    assert WorkflowInstance.objects.get(pk=instance.pk).input == instance.input
