"""Searching instances by error text and input field paths (orchestration.search): the API's
``?error=`` and ``?input.<path>[op]=`` parameters, the admin's search box, sealed fields
refused, bad input refused (400, nothing searched), the query count constant, the indexes
used on PostgreSQL, and the same rows found by the SQLite fallback's conditions."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from orchestration import engine, search
from orchestration.models import WorkflowInstance
from tests.orchestration.test_engine import run_ready
from tests.workflows import ledger

pytestmark = pytest.mark.django_db
API = "/api/v1/instances/"
ADMIN = "/admin/orchestration/workflowinstance/"


@pytest.fixture
def found(django_user_model: Any, rung: list) -> dict[str, Any]:
    """a and c failed (their lookup: "order N not found"), b succeeded; d is bob's."""
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    inputs = {
        "a": {
            "order": 1,
            "amount": 120,
            "card": "4111111111111111",
            "customer": {"country": "DE", "name": "ACME GmbH", "tags": ["vip", "eu"]},
        },
        "b": {"order": 2, "amount": "120", "customer": {"country": "FR", "name": "Bistro SA"}},
        "c": {"order": 3, "amount": 80.5, "customer": {"country": "DE", "vat": None}},
        "d": {"order": 4, "amount": 7, "customer": {"country": "DE"}},
    }
    out: dict[str, Any] = {"alice": alice, "bob": bob}
    for name, data in inputs.items():
        if name == "b":
            ledger().set("fixed:t_lookup", "1")
        try:
            instance, _ = engine.instance_start(
                workflow="t_lookup", input=data, started_by=bob if name == "d" else alice
            )
            run_ready(instance)
        finally:
            ledger().delete("fixed:t_lookup")
        out[name] = WorkflowInstance.objects.get(pk=instance.pk)
    assert [out[n].state for n in "abcd"] == ["failed", "succeeded", "failed", "failed"]
    return out


def api(user: Any, params: dict[str, str] | list[tuple[str, str]]) -> Any:
    client = APIClient()
    client.force_authenticate(user)
    return client.get(f"{API}?{urlencode(params)}")


def names(response: Any, world: dict[str, Any]) -> str:
    assert response.status_code == 200, response.content
    ids = {item["id"] for item in response.json()["results"]}
    return "".join(n for n in "abcd" if str(world[n].pk) in ids)


FINDS = [
    ({"input.customer.country": "DE"}, "acd"),
    ({"input.amount": "120"}, "ab"),
    ({"input.amount[gte]": "100"}, "a"),
    # The fallback's comparisons follow the database's JSON ordering; on PostgreSQL a string
    # ("120") sorts before every number, so it is "less than 100" there (jsonpath is strict).
    ({"input.amount[lt]": "100"}, "cd", "bcd"),
    ({"input.amount[gt]": "80.4", "input.amount[lte]": "80.5"}, "c"),
    ({"input.customer.name[contains]": "acme"}, "a"),
    ({"input.customer.tags[exists]": "true"}, "a"),
    ({"input.customer.vat[exists]": "false"}, "abd"),
    ({"input.customer.vat": "null"}, "c"),
    ({"input.customer.tags.0": "vip"}, "a"),
    ({"input.customer.country": "de"}, ""),  # equality is exact
    ({"error": "not found"}, "acd"),
    ({"error": "ORDER 3 NOT"}, "c"),
    ({"error": "100%"}, ""),  # % and _ are literal
    ({"error": "not found", "input.customer.country": "DE", "input.amount[lt]": "100"}, "cd"),
    ({"error": "not found", "workflow": "t_lookup", "state": "failed"}, "acd"),
]


@pytest.mark.parametrize("python", [False, True], ids=["postgresql", "fallback conditions"])
@pytest.mark.parametrize("case", FINDS, ids=[str(c[0]) for c in FINDS])
def test_the_api_finds_instances_by_error_text_and_input_paths(
    found: dict[str, Any],
    admin_user: Any,
    monkeypatch: pytest.MonkeyPatch,
    python: bool,
    case: tuple,
) -> None:
    params, expected = case[0], case[1]
    if python:  # the SQLite branch's conditions (Django JSON key lookups), run here
        monkeypatch.setattr(search.vendor, "is_postgresql", lambda *a: False)
        expected = case[-1]
    assert names(api(admin_user, params), found) == expected


def test_a_user_finds_only_instances_they_may_see(found: dict[str, Any]) -> None:
    assert names(api(found["bob"], {"error": "not found"}), found) == "d"
    assert names(api(found["alice"], {"input.customer.country": "DE"}), found) == "ac"


@pytest.mark.parametrize(
    "params",
    [
        {"input.card": "4111111111111111"},
        {"input.card[exists]": "true"},
        {"input.card.number": "1"},
        {"input.card[contains]": "4111"},
        {"input.customer.$sealed": "x"},
    ],
    ids=["equals", "exists", "below it", "contains", "a $sealed key"],
)
def test_a_sealed_field_cannot_be_searched(
    found: dict[str, Any], admin_user: Any, params: dict[str, str]
) -> None:
    response = api(admin_user, params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] in ("sealed_field", "invalid_search")
    if "$" not in next(iter(params)):
        assert body["code"] == "sealed_field"
        assert "input.card is a sealed (sensitive) field" in body["detail"]


def test_a_sealed_field_of_another_workflow_is_searchable_with_workflow_given(
    found: dict[str, Any], admin_user: Any
) -> None:
    # Without workflow= any registered workflow's sealed fields are refused (t_lookup's card);
    # naming a workflow that does not seal it lets the search through.
    assert api(admin_user, {"input.card": "1"}).status_code == 400
    response = api(admin_user, {"input.card": "1", "workflow": "t_sequence"})
    assert names(response, found) == ""


BAD = [
    [("input.", "x")],
    [("input.a..b", "x")],
    [("input.a b", "x")],
    [("input.a__b", "x")],
    [("input." + ".".join("k" * 9), "x")],
    [("input." + "k" * 65, "x")],
    [("input.a[like]", "x")],
    [("input.a[]", "x")],
    [("input.a", "x" * 201)],
    [("input.a", "nul\x00")],
    [("input.a[gt]", "abc")],
    [("input.a[gt]", "1e99")],
    [("input.a[exists]", "maybe")],
    [("input.a[contains]", "")],
    [("error", "ab")],
    [("error", "x" * 201)],
    [("error", "abc"), ("error", "def")],
    [("input.a", "1"), ("input.a", "2")],
    [(f"input.k{i}", "1") for i in range(6)],
]


@pytest.mark.parametrize("params", BAD, ids=[repr(p)[:60] for p in BAD])
def test_bad_search_input_is_refused(
    found: dict[str, Any], admin_user: Any, params: list[tuple[str, str]]
) -> None:
    response = api(admin_user, params)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_search"
    assert response.json()["detail"]


def test_searching_keeps_the_list_query_count_constant(
    found: dict[str, Any], admin_user: Any, django_assert_max_num_queries: Any
) -> None:
    params = {"error": "not found", "input.customer.country": "DE"}
    with django_assert_max_num_queries(10) as few:
        assert names(api(admin_user, params), found) == "acd"
    for i in range(5):
        instance, _ = engine.instance_start(
            workflow="t_lookup", input={"order": 10 + i, "customer": {"country": "DE"}}
        )
        run_ready(instance)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = api(admin_user, params)
    assert len(response.json()["results"]) == 8


def test_the_schema_documents_the_search_parameters(admin_user: Any) -> None:
    client = APIClient()
    client.force_authenticate(admin_user)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    params = {p["name"] for p in schema["paths"]["/api/v1/instances/"]["get"]["parameters"]}
    assert {"error", "input.<path>"} <= params


def _plan(qs: Any) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = qs.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_postgresql_serves_the_search_from_its_indexes(found: dict[str, Any]) -> None:
    base = WorkflowInstance.objects.all()
    plan = _plan(search.apply(base, search.parse_params({"error": "not found"})))
    assert "instance_error_trgm" in plan and "steprun_error_trgm" in plan, plan
    plan = _plan(search.apply(base, search.parse_params({"input.customer.country": "DE"})))
    assert "instance_input_path_gin" in plan, plan


def test_jsonpath_quotes_keys_and_values() -> None:
    condition = search.parse_condition("input.a-b.0", 'x" || true || "')
    assert search.jsonpath_of(condition) == '$."a-b"[0] ? (@ == "x\\" || true || \\"")'


# -- the admin's search box ---------------------------------------------------------------------


def _rows(response: Any, world: dict[str, Any]) -> str:
    assert response.status_code == 200
    shown = {str(obj.pk) for obj in response.context["cl"].result_list}
    return "".join(n for n in "abcd" if str(world[n].pk) in shown)


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("input.customer.country=DE", "acd"),
        ('error:"not found" input.amount[gte]=100', "a"),
        ("error:ORDER", "acd"),
        ("input.customer.name[contains]=bistro", "b"),
    ],
)
def test_the_admin_search_box_finds_by_error_and_input(
    found: dict[str, Any], admin_client: Client, term: str, expected: str
) -> None:
    assert _rows(admin_client.get(ADMIN, {"q": term}), found) == expected


@pytest.mark.parametrize(
    ("term", "why"),
    [
        ("input.card=4111111111111111", "sealed"),
        ("input.a[like]=x", "unknown operator"),
        ("error:ab", "3 to 200 characters"),
        ("ACME input.a=1", "write error:<text>"),
    ],
)
def test_the_admin_search_box_refuses_bad_searches_with_a_reason(
    found: dict[str, Any], admin_client: Client, term: str, why: str
) -> None:
    response = admin_client.get(ADMIN, {"q": term})
    assert _rows(response, found) == ""
    assert any(why in m for m in _messages(response)), _messages(response)


def test_the_admin_search_box_still_finds_ids_and_business_keys(
    found: dict[str, Any], admin_client: Client
) -> None:
    assert _rows(admin_client.get(ADMIN, {"q": str(found["c"].pk)[:8]}), found) == "c"
