"""The orchestration side of a German page (issue 19 item 4): the start form's checks and file
refusals, batch and schedule refusals in the admin, the engine's refusals on the status page,
all in the page's language, while the API answers the same refusals in English."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client

from orchestration.models import Attachment, WorkflowInstance
from tests.attachments_fixtures import (
    EXE,
    files_dir_fixture,  # noqa: F401 - the files_dir fixture
    upload,
)

pytestmark = pytest.mark.django_db
MO = Path(settings.BASE_DIR) / "locale" / "de" / "LC_MESSAGES" / "django.mo"
EXPENSE = {"amount": 120, "currency": "EUR", "description": "Taxi to the airport"}


@pytest.fixture(autouse=True)
def compiled() -> None:
    """The German catalogue is built by `make messages` (make test does it first)."""
    if not MO.exists() or MO.stat().st_mtime < MO.with_suffix(".po").stat().st_mtime:
        pytest.fail(f"{MO} is missing or older than the .po: run `make messages`")


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    group, _ = Group.objects.get_or_create(name="employees")
    user = django_user_model.objects.create_user("alice", email="alice@example.com")
    group.user_set.add(user)
    return user


@pytest.fixture
def root(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


def browser(user: Any, language: str = "de") -> Client:
    """A logged-in browser asking for ``language`` (the person chose none)."""
    client = Client(HTTP_ACCEPT_LANGUAGE=language)
    client.force_login(user)
    return client


def start(client: Client, data: dict[str, Any], **extra: Any) -> Any:
    key = client.get("/start/expense_approval/").context["form"].initial["key"]
    return client.post("/start/expense_approval/", {"input": json.dumps(data), "key": key, **extra})


# -- the start form ------------------------------------------------------------------------------


def test_the_start_forms_file_refusals_are_in_the_pages_language(
    alice: Any, files_dir: Path
) -> None:
    german = browser(alice)
    form = german.get("/start/expense_approval/").content.decode()
    assert "Referenz" in form and "Optional: Ihre eigene Referenz" in form
    page = start(german, EXPENSE, files=[upload("scan.pdf", EXE), upload("empty.pdf", b"")])
    assert page.status_code == 400
    html = page.content.decode()
    assert "scan.pdf: der Inhalt ist ein ausführbares Windows-Programm" in html
    assert "das wird nicht angenommen; angenommen: " in html
    assert "empty.pdf: die Datei ist leer" in html
    assert "which is not accepted" not in html and "the file is empty" not in html
    assert WorkflowInstance.objects.count() == 0 and Attachment.objects.count() == 0
    # The same refusal in English reads as before.
    html = start(browser(alice, "en"), EXPENSE, files=[upload("empty.pdf", b"")]).content.decode()
    assert "empty.pdf: the file is empty" in html
    assert "die Datei ist leer" not in html


def test_the_start_forms_input_checks_are_in_the_pages_language(alice: Any) -> None:
    german = browser(alice)
    page = start(german, {"amount": 5, "currency": "eur"})
    assert page.status_code == 400
    html = page.content.decode()
    assert "Bitte korrigieren Sie die Fehler unten." in html
    error_map = page.context["form"].fields["input"].widget.error_map
    assert error_map["description"] == ["Dieses Feld ist zwingend erforderlich."]
    assert error_map["currency"] == ["Nicht im erwarteten Format."]
    page = german.post("/start/expense_approval/", {"input": "[1]", "key": "k"})
    assert "Die Daten des Formulars müssen ein Objekt sein." in page.content.decode()
    assert WorkflowInstance.objects.count() == 0
    english = start(browser(alice, "en"), {"currency": "EUR"})
    assert "Please correct the errors below." in english.content.decode()


def test_the_api_refuses_a_start_in_english_whatever_the_language(alice: Any) -> None:
    answer = browser(alice).post(
        "/api/v1/instances/",
        {"workflow": "no_such_workflow", "input": {}},
        content_type="application/json",
    )
    assert answer.status_code == 400
    assert answer.json()["detail"] == "unknown workflow 'no_such_workflow'"


# -- batches and schedules in the admin ----------------------------------------------------------


def test_a_batch_refusal_in_the_german_admin_is_german(
    root: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration import batches
    from orchestration.batch_models import BatchOperation
    from tests.orchestration.test_batches import failed_instance

    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    instance = failed_instance()
    batches.batch_create(action="retry", filter={"ids": [str(instance.pk)]}, user=root, reason="1")
    instances = "/admin/orchestration/workflowinstance/"
    selected = {"action": "batch_cancel", "_selected_action": [str(instance.pk)]}
    german = browser(root)
    confirm = german.post(instances, selected).content.decode()
    assert "Ausgewählte Instanzen als Stapel abbrechen: bestätigen" in confirm
    assert "Ein Hintergrundauftrag erledigt das" in confirm
    refused = german.post(instances, {**selected, "confirm": "1", "reason": "2"})
    assert refused.status_code == 409
    html = refused.content.decode()
    assert f"wirkt bereits auf Instanz {instance.pk}" in html
    assert "already acts on instance" not in html
    by_filter = german.post(
        "/admin/orchestration/batchoperation/new/",
        {"action": "retry", "workflow": "no_such_workflow", "reason": "x", "start": "1"},
    )
    assert by_filter.status_code == 400
    html = by_filter.content.decode()
    assert "der Filter trifft keine Instanz" in html and "Vorschau" in html
    assert BatchOperation.objects.count() == 1
    # The same refusal in English reads as before.
    english = browser(root, "en").post(instances, {**selected, "confirm": "1", "reason": "2"})
    assert "already acts on instance" in english.content.decode()


SCHEDULE_FORM = {
    "name": "nightly",
    "workflow": "t_scheduled",
    "version": "",
    "business_key_template": "",
    "cron": "0 2 * *",
    "interval_seconds": "",
    "time_zone": "Europe/Berlin",
    "jitter_seconds": "0",
    "overlap": "skip",
    "catchup_window_seconds": "3600",
    "new_input": '{"report": "nightly"}',
}


def test_a_schedule_refusal_in_the_german_admin_is_german(root: Any) -> None:
    from orchestration import schedules
    from orchestration.models import Schedule

    add = "/admin/orchestration/schedule/add/"
    german = browser(root)
    page = german.post(add, SCHEDULE_FORM)
    assert page.status_code == 200  # the form again, with the error at the field
    html = page.content.decode()
    assert "cron &#x27;0 2 * *&#x27; muss 5 Felder haben" in html
    assert "must have 5 fields" not in html
    page = german.post(add, {**SCHEDULE_FORM, "cron": "0 2 * * *", "time_zone": "Mars/Base"})
    assert "ist keine bekannte IANA-Zeitzone" in page.content.decode()
    assert not Schedule.objects.exists()
    schedules.schedule_create(
        values={
            "name": "often",
            "workflow": "t_scheduled",
            "input": {"report": "x"},
            "interval_seconds": 7200,
        }
    )
    listed = german.get("/admin/orchestration/schedule/").content.decode()
    assert "alle 2 Stunden" in listed
    english = browser(root, "en")
    assert "every 2 hours" in english.get("/admin/orchestration/schedule/").content.decode()
    html = english.post(add, SCHEDULE_FORM).content.decode()
    assert "must have 5 fields" in html


def test_the_api_refuses_a_schedule_in_english_whatever_the_language(root: Any) -> None:
    answer = browser(root).post(
        "/api/v1/schedules/",
        {"name": "n", "workflow": "t_scheduled", "cron": "0 2 * *"},
        content_type="application/json",
    )
    assert answer.status_code == 400
    assert "must have 5 fields" in json.dumps(answer.json())


# -- the engine's refusals on the status page and in the admin ---------------------------------


def test_the_engines_refusals_on_a_german_status_page_are_german(operator: Any, user: Any) -> None:
    from django.urls import reverse

    from tests.orchestration.test_engine import steps_of
    from tests.orchestration.test_repair_pages import undo_failed

    instance = undo_failed(user)
    pay = steps_of(instance)["pay"]
    german = browser(operator)
    page = german.get(reverse("instances:detail", args=[instance.pk])).content.decode()
    assert "Rückgängigmachen fehlgeschlagen" in page  # the step's state
    assert "Fehlgeschlagen: Rückgängigmachen fehlgeschlagen" in page  # the instance's
    skip = reverse("instances:step-action", args=[instance.pk, pay.pk, "skip"])
    refused = german.post(skip, {"confirm": "1", "value": "{}", "reason": "r"}, follow=True)
    html = refused.content.decode()
    assert "die Instanz ist beim Rückgängigmachen ihrer Schritte fehlgeschlagen" in html
    assert "the instance failed while undoing its steps" not in html
    # In the admin too.
    admin_skip = reverse(
        "admin:orchestration_workflowinstance_step_operate", args=[instance.pk, pay.pk, "skip"]
    )
    html = german.post(
        admin_skip, {"confirm": "1", "value": "{}", "reason": "r"}, follow=True
    ).content.decode()
    assert "die Instanz ist beim Rückgängigmachen ihrer Schritte fehlgeschlagen" in html
    assert steps_of(instance)["pay"].state == pay.state  # nothing changed
    # The same refusal on an English page reads as before.
    english = browser(operator, "en").post(
        skip, {"confirm": "1", "value": "{}", "reason": "r"}, follow=True
    )
    assert "the instance failed while undoing its steps" in english.content.decode()


def test_a_bad_search_in_the_german_admin_is_german(root: Any) -> None:
    page = browser(root).get(
        "/admin/orchestration/workflowinstance/", {"q": "input.amount[gte]=lots"}
    )
    html = page.content.decode()
    assert "gte vergleicht Zahlen (wie 12 oder -3.5)" in html
    assert "compares numbers" not in html
    assert "Eine Instanz-ID (oder ihre ersten 8 Zeichen)" in html  # the search box's help
