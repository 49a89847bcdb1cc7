"""Starting a workflow from the web (issue 13 item 1): the start page lists what the user may
start, the form comes from the input schema (django-jsonform), errors come back next to their
fields with what was typed, files go with the start, a double submit starts one instance, and
nobody outside ``startable_by`` starts anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from orchestration import start
from orchestration.definitions import DefinitionError, Workflow, registry
from orchestration.models import Attachment, Event, WorkflowInstance
from tests.attachments_fixtures import (
    EXE,
    PDF,
    files_dir_fixture,  # noqa: F401 - the files_dir fixture
    upload,
)

pytestmark = pytest.mark.django_db

EXPENSE = {"amount": 120, "currency": "EUR", "description": "Taxi to the airport"}


@pytest.fixture
def employees(django_user_model: Any) -> dict[str, Any]:
    group, _ = Group.objects.get_or_create(name="employees")
    alice = django_user_model.objects.create_user("alice", email="alice@example.com")
    eve = django_user_model.objects.create_user("eve", email="eve@example.com")
    root = django_user_model.objects.create_superuser("root", email="root@example.com")
    group.user_set.add(alice)
    return {"alice": alice, "eve": eve, "root": root}


def web(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_key(client: Client, name: str = "expense_approval") -> str:
    response = client.get(f"/start/{name}/")
    assert response.status_code == 200
    return response.context["form"].initial["key"]


def post(client: Client, data: dict[str, Any], key: str, **extra: Any) -> Any:
    return client.post("/start/expense_approval/", {"input": json.dumps(data), "key": key, **extra})


def test_the_start_page_lists_only_what_the_user_may_start(employees: dict[str, Any]) -> None:
    alice_page = web(employees["alice"]).get("/start/").content.decode()
    assert "/start/expense_approval/" in alice_page
    assert "/start/customer_onboarding/" not in alice_page  # not offered on the web
    eve_page = web(employees["eve"]).get("/start/").content.decode()
    assert "/start/expense_approval/" not in eve_page
    assert "nothing you may start" in eve_page
    assert "/start/expense_approval/" in web(employees["root"]).get("/start/").content.decode()
    assert Client().get("/start/").status_code == 302  # to the login page


def test_the_form_is_generated_from_the_input_schema(employees: dict[str, Any]) -> None:
    response = web(employees["alice"]).get("/start/expense_approval/")
    html = response.content.decode()
    assert "django_jsonform/react-json-form.js" in html
    schema = start.form_schema(registry.get("expense_approval"))
    assert "requester" not in schema["properties"]  # filled by the engine: the person
    assert "receipts" not in schema["properties"]  # a file input of its own
    assert schema["properties"]["amount"]["help_text"] == "Over 1,000 finance checks it too."
    assert schema["properties"]["category"]["enum"][0] == "travel"
    assert schema["properties"]["spent_on"]["format"] == "date"
    assert "requester" not in schema["required"]
    assert 'type="file"' in html and 'name="files"' in html
    assert 'name="key"' in html and "csrfmiddlewaretoken" in html


def test_alice_starts_an_expense_with_a_receipt_and_lands_on_its_status_page(
    employees: dict[str, Any], files_dir: Path
) -> None:
    client = web(employees["alice"])
    key = form_key(client)
    response = post(
        client,
        {**EXPENSE, "category": "travel", "spent_on": "2026-12-01"},
        key,
        business_key="EXP-9",
        files=[upload("receipt.pdf", PDF)],
    )
    instance = WorkflowInstance.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/instances/{instance.pk}/"
    assert instance.started_by == employees["alice"]
    assert instance.business_key == "EXP-9"
    assert instance.input["requester"] == "alice"
    assert instance.input["category"] == "travel"
    assert [r["name"] for r in instance.input["receipts"]] == ["receipt.pdf"]
    assert Event.objects.get(instance=instance, type="instance_started").actor == "user:alice"


def test_a_double_submit_starts_one_instance(employees: dict[str, Any]) -> None:
    client = web(employees["alice"])
    key = form_key(client)
    first = post(client, EXPENSE, key)
    second = post(client, EXPENSE, key)
    assert WorkflowInstance.objects.count() == 1
    assert first["Location"] == second["Location"]
    page = client.get(second["Location"]).content.decode()
    assert "already sent" in page


def test_a_form_that_breaks_the_schema_shows_the_errors_at_the_fields_and_keeps_the_input(
    employees: dict[str, Any],
) -> None:
    client = web(employees["alice"])
    typed = {"amount": 120, "currency": "eur", "description": ""}
    response = post(client, typed, form_key(client), business_key="EXP-10")
    assert response.status_code == 400
    widget = response.context["form"].fields["input"].widget
    assert set(widget.error_map) == {"currency", "description"}
    html = response.content.decode()
    # What was typed comes back in the widget's data, and the reference too.
    assert "eur" in html and 'value="EXP-10"' in html
    assert "Please correct the errors below." in html
    assert WorkflowInstance.objects.count() == 0


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("[1, 2]", "must be an object"),
        ("{not json", "not valid JSON"),
        ("[" * 200 + "]" * 200, "not valid JSON"),
        ('{"amount": "\\u0000"}', ""),
    ],
)
def test_bad_form_data_is_refused_and_starts_nothing(
    employees: dict[str, Any], raw: str, why: str
) -> None:
    client = web(employees["alice"])
    response = client.post("/start/expense_approval/", {"input": raw, "key": form_key(client)})
    assert response.status_code == 400
    assert why in response.content.decode()
    assert WorkflowInstance.objects.count() == 0


def test_a_required_field_left_out_is_named(employees: dict[str, Any]) -> None:
    client = web(employees["alice"])
    response = post(client, {"currency": "EUR"}, form_key(client))
    assert response.status_code == 400
    error_map = response.context["form"].fields["input"].widget.error_map
    assert error_map["amount"] == ["This field is required."]
    assert error_map["description"] == ["This field is required."]


def test_a_refused_file_starts_nothing(employees: dict[str, Any], files_dir: Path) -> None:
    client = web(employees["alice"])
    response = post(client, EXPENSE, form_key(client), files=[upload("scan.pdf", EXE)])
    assert response.status_code == 400
    assert "scan.pdf" in response.content.decode()
    assert WorkflowInstance.objects.count() == 0
    assert Attachment.objects.count() == 0


def test_someone_not_in_startable_by_gets_403_and_starts_nothing(
    employees: dict[str, Any],
) -> None:
    client = web(employees["eve"])
    assert client.get("/start/expense_approval/").status_code == 403
    response = client.post("/start/expense_approval/", {"input": json.dumps(EXPENSE), "key": "k1"})
    assert response.status_code == 403
    assert WorkflowInstance.objects.count() == 0


def test_a_workflow_not_offered_on_the_web_or_unknown_is_404(employees: dict[str, Any]) -> None:
    client = web(employees["root"])
    assert client.get("/start/customer_onboarding/").status_code == 404
    assert client.get("/start/no_such_workflow/").status_code == 404
    assert client.post("/start/customer_onboarding/", {"key": "x"}).status_code == 404


def test_the_requester_field_cannot_be_filled_from_the_form(employees: dict[str, Any]) -> None:
    client = web(employees["alice"])
    post(client, {**EXPENSE, "requester": "root"}, form_key(client))
    assert WorkflowInstance.objects.get().input["requester"] == "alice"


def test_a_missing_key_or_csrf_token_is_refused(employees: dict[str, Any]) -> None:
    client = web(employees["alice"])
    assert (
        client.post("/start/expense_approval/", {"input": json.dumps(EXPENSE)}).status_code == 400
    )
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(employees["alice"])
    assert (
        strict.post(
            "/start/expense_approval/", {"input": json.dumps(EXPENSE), "key": "k"}
        ).status_code
        == 403
    )
    assert WorkflowInstance.objects.count() == 0


def test_startable_by_must_name_groups() -> None:
    def step(ctx: Any) -> dict[str, Any]:
        return {}

    for bad in ([], [""], "employees", [3]):
        wf = Workflow("t_startable_bad", startable_by=bad)
        wf.task(step, name="a")
        with pytest.raises(DefinitionError, match="startable_by"):
            wf.validate()
