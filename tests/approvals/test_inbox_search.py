"""Finding requests in a busy inbox (approvals.search): text search over the title, business
key, requester and shown fields; filters for workflow, step, requester, overdue and due
before; the columns a workflow marks (the expense's amount), sortable with keyset pages; bad
input answered 400 with the reason on the page and in the API, never a 500; query counts that
do not grow with the data."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.definitions import ApprovalStep, Show
from approvals.models import ApprovalRequest, search_document
from orchestration import sealing
from orchestration.definitions import StepContext
from tests.approvals.test_inbox import LIST_QUERIES, bulk_requests, listed, login

pytestmark = pytest.mark.django_db

APPROVALS = "/api/v1/approvals/"


def api_ids(client: APIClient, **params: Any) -> list[int]:
    response = client.get(APPROVALS, params)
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


@pytest.fixture
def three(expense: Any) -> dict[str, ApprovalRequest]:
    return {
        "taxi": expense(amount=42.5, description="Taxi to the airport", business_key="EXP-7"),
        "hotel": expense(amount=1850, description="Conference hotel", business_key="EXP-8"),
        "books": expense(amount=89.9, description="Books 100% off_list", business_key="B-9"),
    }


def test_the_search_text_holds_title_key_requester_and_shown_values(three: Any) -> None:
    taxi = three["taxi"]
    assert "taxi to the airport" in taxi.search_text
    assert "exp-7" in taxi.search_text
    assert "alice" in taxi.search_text  # the requester
    assert "42.5" in taxi.search_text  # a shown field: the amount
    assert taxi.columns == {"amount": 42.5}
    assert taxi.search_text == taxi.search_text.lower()


def test_sealed_values_never_reach_the_search_text_or_the_columns() -> None:
    step = ApprovalStep(
        name="ok",
        groups=("managers",),
        show=(Show("IBAN", "input.iban", column=True), Show("Amount", "input.amount", column=True)),
    )
    ctx = StepContext(
        instance_id="i",
        workflow="w",
        version=1,
        step="ok",
        attempt=1,
        input={"iban": "DE44500105175407324931", "amount": 7},
        outputs={},
        sensitive=("input.iban",),
    )
    request = ApprovalRequest(title="Pay", business_key="K", fields=step.render_fields(ctx))
    request.refresh_search(requester_name="alice")
    assert "de44500105175407324931" not in request.search_text
    assert sealing.MASK not in request.search_text
    assert request.columns == {"amount": 7}  # the sealed column is left out, not masked


def test_search_document_skips_files_objects_and_booleans() -> None:
    fields = [
        {"label": "Receipts", "value": [{"name": "r.pdf", "size": 3}]},
        {"label": "Meta", "value": {"a": 1}},
        {"label": "Urgent", "value": True},
        {"label": "Cost", "value": 12},
    ]
    assert search_document("T", "K", "bob", fields) == "t k bob 12"
    assert len(search_document("x" * 5000, "", "", [])) == 2000


def test_text_search_finds_by_word_key_requester_and_amount(
    client: Client, people: Any, three: Any
) -> None:
    login(client, people["bob"])
    taxi, hotel, books = (three[k].pk for k in ("taxi", "hotel", "books"))
    assert listed(client.get("/inbox/", {"q": "AIRPORT"})) == [taxi]
    assert listed(client.get("/inbox/", {"q": "exp-8"})) == [hotel]
    assert listed(client.get("/inbox/", {"q": "1850"})) == [hotel]
    assert sorted(listed(client.get("/inbox/", {"q": "alice"}))) == sorted([taxi, hotel, books])
    # Every word must match, anywhere, in any order.
    assert listed(client.get("/inbox/", {"q": "hotel  conference"})) == [hotel]
    assert listed(client.get("/inbox/", {"q": "hotel taxi"})) == []
    # %, _ and \ are characters, not wildcards.
    assert listed(client.get("/inbox/", {"q": "100%"})) == [books]
    assert listed(client.get("/inbox/", {"q": "off_list"})) == [books]
    assert listed(client.get("/inbox/", {"q": "f_l"})) == [books]
    assert listed(client.get("/inbox/", {"q": "o%t"})) == []
    assert listed(client.get("/inbox/", {"q": "\\"})) == []
    # Unicode and quotes are plain text.
    assert listed(client.get("/inbox/", {"q": "'; drop table x; --"})) == []
    assert listed(client.get("/inbox/", {"q": "Überweisung ✓"})) == []
    # Only what bob may decide: eve finds nothing, and the API agrees with the page.
    assert listed(login(Client(), people["eve"]).get("/inbox/", {"q": "alice"})) == []
    api = APIClient()
    api.force_authenticate(people["bob"])
    assert api_ids(api, search="AIRPORT") == [taxi]
    assert api_ids(api, search="hotel conference", state="all") == [hotel]
    assert api_ids(api, search="100%") == [books]


def test_filters_step_requester_overdue_and_due_before(
    client: Client, people: Any, three: Any
) -> None:
    login(client, people["bob"])
    taxi, hotel, books = (three[k] for k in ("taxi", "hotel", "books"))
    now = timezone.now()
    ApprovalRequest.objects.filter(pk=taxi.pk).update(due_at=now - timedelta(hours=1))
    ApprovalRequest.objects.filter(pk=hotel.pk).update(due_at=now + timedelta(days=3))
    ApprovalRequest.objects.filter(pk=books.pk).update(due_at=now + timedelta(days=30))
    everyone = sorted([taxi.pk, hotel.pk, books.pk])

    assert listed(client.get("/inbox/", {"overdue": "1"})) == [taxi.pk]
    page = client.get("/inbox/", {"overdue": "1"}).content.decode()
    assert 'id="f-overdue" type="checkbox" name="overdue" value="1" checked' in page
    in_a_week = (now + timedelta(days=7)).date().isoformat()
    assert sorted(listed(client.get("/inbox/", {"due_before": in_a_week}))) == sorted(
        [taxi.pk, hotel.pk]
    )
    moment = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert listed(client.get("/inbox/", {"due_before": moment})) == [taxi.pk]
    assert sorted(listed(client.get("/inbox/", {"requester": "alice"}))) == everyone
    assert listed(client.get("/inbox/", {"requester": "carol"})) == []
    assert sorted(listed(client.get("/inbox/", {"step": "manager_approval"}))) == everyone
    assert listed(client.get("/inbox/", {"step": "finance_approval"})) == []
    combined = {"q": "EXP", "overdue": "true", "requester": "alice", "workflow": "expense_approval"}
    assert listed(client.get("/inbox/", combined)) == [taxi.pk]
    # The pager and the tabs keep the filters.
    response = client.get("/inbox/", combined)
    assert "overdue=true" in response.context["current_url"]
    assert all("requester=alice" in url for _, _, url in response.context["tabs"])

    api = APIClient()
    api.force_authenticate(people["bob"])
    assert api_ids(api, overdue="true") == [taxi.pk]
    assert api_ids(api, overdue="false", requester="alice", step="manager_approval") == sorted(
        everyone, reverse=True
    )
    assert sorted(api_ids(api, due_before=in_a_week)) == sorted([taxi.pk, hotel.pk])


BAD = [
    ({"q": "x" * 201}, "search: at most 200 characters"),
    ({"q": "a\x00b"}, "search cannot contain NUL characters"),
    ({"requester": "a\x00"}, "requester cannot contain NUL characters"),
    ({"step": "s" * 151}, "step: at most 150 characters"),
    ({"due_before": "next tuesday"}, "due before must be a date"),
    ({"due_before": "2026-02-30"}, "due before must be a date"),
    ({"due_before": "9" * 41}, "due before: at most 40 characters"),
    ({"overdue": "maybe"}, "overdue must be true or false"),
]


@pytest.mark.parametrize(("params", "message"), BAD)
def test_bad_filters_answer_400_with_the_reason_and_change_nothing(
    client: Client, people: Any, three: Any, params: dict[str, str], message: str
) -> None:
    before = list(ApprovalRequest.objects.order_by("pk").values_list("pk", "state", "search_text"))
    login(client, people["bob"])
    response = client.get("/inbox/", params)
    assert response.status_code == 400
    page = response.content.decode()
    assert f"Nothing was searched: {message}" in page
    assert listed(response) == []
    assert 'id="f-q"' in page  # the form is there to correct it
    api = APIClient()
    api.force_authenticate(people["bob"])
    search_params = {("search" if k == "q" else k): v for k, v in params.items()}
    answer = api.get(APPROVALS, search_params)
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_filter"
    assert message in answer.json()["detail"]
    after = list(ApprovalRequest.objects.order_by("pk").values_list("pk", "state", "search_text"))
    assert after == before


def test_repeated_and_empty_parameters_are_normal_searches(
    client: Client, people: Any, three: Any
) -> None:
    login(client, people["bob"])
    # The last value of a repeated parameter counts; blank ones are no filter.
    response = client.get("/inbox/?q=nothing-matches&q=airport&overdue=&due_before=&step=")
    assert response.status_code == 200
    assert listed(response) == [three["taxi"].pk]
    assert len(listed(client.get("/inbox/?q=%20%20"))) == 3
    # An unknown order or a tampered cursor gives the default first page.
    assert client.get("/inbox/", {"sort": "-col.nope"}).status_code == 200
    assert client.get("/inbox/", {"sort": "-col.amount", "after": "!!"}).status_code == 200
    forged = base64.urlsafe_b64encode(json.dumps([{"x": 1}, 5]).encode()).decode()
    assert client.get("/inbox/", {"sort": "col.amount", "after": forged}).status_code == 200


def test_the_amount_column_is_shown_and_sorts_both_ways(
    client: Client, people: Any, three: Any
) -> None:
    login(client, people["bob"])
    taxi, hotel, books = (three[k].pk for k in ("taxi", "hotel", "books"))
    no_amount = bulk_requests(1, group=Group.objects.get(name="managers"))[0]
    ApprovalRequest.objects.filter(pk=no_amount.pk).update(columns={})
    response = client.get("/inbox/", {"sort": "col.amount"})
    assert listed(response) == [taxi, books, hotel, no_amount.pk]  # no value: last
    page = response.content.decode()
    assert 'data-sorted="ascending"' in page
    assert "1,850<" in page and "42.50<" in page  # an integer as it is, a fraction to cents
    assert response.context["columns"][0]["label"] == "Amount"
    # The header links to the other direction.
    assert "sort=-col.amount" in response.context["columns"][0]["url"]
    descending = client.get("/inbox/", {"sort": "-col.amount"})
    assert listed(descending) == [hotel, books, taxi, no_amount.pk]
    assert [label for _, label, _ in descending.context["sorts"]][-2:] == [
        "Amount, low to high",
        "Amount, high to low",
    ]


@pytest.mark.parametrize("order", ["col.amount", "-col.amount"])
def test_column_pages_walk_every_row_once_both_ways(
    client: Client, people: Any, order: str
) -> None:
    managers = Group.objects.get(name="managers")
    rows = bulk_requests(60, group=managers)
    # Ties and missing values: amounts 0..19 three times each, and five without one.
    for i, row in enumerate(rows):
        columns = {} if i < 5 else {"amount": i % 20}
        ApprovalRequest.objects.filter(pk=row.pk).update(columns=columns)
    login(client, people["bob"])
    valued = sorted(
        (r for r in ApprovalRequest.objects.filter(pk__in=[r.pk for r in rows]) if r.columns),
        key=lambda r: (r.columns["amount"], r.pk),
        reverse=order.startswith("-"),
    )
    missing = sorted((r.pk for r in rows[:5]), reverse=order.startswith("-"))
    expected = [r.pk for r in valued] + missing

    pages, seen = [], []
    response = client.get("/inbox/", {"sort": order})
    while True:
        pages.append(response)
        seen += listed(response)
        if not response.context["next_url"]:
            break
        response = client.get(response.context["next_url"])
    assert seen == expected
    assert len(pages) == 3
    back = client.get(pages[2].context["prev_url"])
    assert listed(back) == listed(pages[1])
    assert listed(client.get(back.context["prev_url"])) == listed(pages[0])


def test_query_counts_stay_constant_with_search_filters_and_column_order(
    client: Client, people: Any, django_assert_max_num_queries: Any
) -> None:
    managers = Group.objects.get(name="managers")
    bulk_requests(10, group=managers)
    login(client, people["bob"])
    api = APIClient()
    api.force_authenticate(people["bob"])
    heavy = {
        "q": "bulk request",
        "requester": "alice",
        "overdue": "",
        "due_before": "2999-01-01",
        "step": "",
        "sort": "-col.amount",
    }
    with django_assert_max_num_queries(LIST_QUERIES + 1):
        small = client.get("/inbox/", heavy)
    with django_assert_max_num_queries(3):
        api.get(APPROVALS, {"search": "bulk request", "due_before": "2999-01-01"})
    bulk_requests(500, group=managers, offset=10)
    with django_assert_max_num_queries(LIST_QUERIES + 1):
        large = client.get("/inbox/", {**heavy, "requester": ""})
    assert len(listed(large)) == 25
    with django_assert_max_num_queries(3):
        answer = api.get(APPROVALS, {"search": "bulk request", "due_before": "2999-01-01"})
    assert len(answer.json()["results"]) == 50
    assert listed(small) == []  # the bulk rows have no requester
