"""The web start in a real browser (Debian's headless Chromium, Playwright): alice fills the
form django-jsonform generates from the expense's input schema, gets a validation error next to
the field with what she typed kept, corrects it, attaches a receipt and lands on the status
page of the one instance she started; the worker moves it on to the managers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import Page, expect

from approvals.models import ApprovalRequest
from orchestration.models import WorkflowInstance
from tests.approvals.conftest import PASSWORD
from tests.attachments_fixtures import PDF, files_dir_fixture  # noqa: F401
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def log_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/start/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/start/")


def test_alice_submits_an_expense_from_the_web_form(
    page: Page, live_server: Any, worker: Any, people: dict[str, Any], files_dir: Path
) -> None:
    Group.objects.get_or_create(name="employees")[0].user_set.add(people["alice"])
    base = live_server.url
    page.set_viewport_size({"width": 1280, "height": 900})
    log_in(page, base, "alice")
    page.get_by_role("link", name=re.compile("An expense approved by a manager")).click()
    expect(page).to_have_url(f"{base}/start/expense_approval/")
    form = page.locator(".start-form")
    form.get_by_label("Amount").fill("86.40")
    form.get_by_label("Currency").fill("eur")  # lower case: the schema's pattern refuses it
    form.get_by_label("What for").fill("Taxi to the airport")
    form.get_by_label("Category").select_option("travel")
    form.get_by_label("Date of the expense").fill("2026-12-01")
    page.get_by_label(re.compile("^Reference")).fill("EXP-2026-0300")
    page.get_by_role("button", name="Submit").click()

    expect(page.locator(".errorlist").first).to_contain_text("Please correct the errors below.")
    expect(form).to_contain_text("Not in the expected format.")
    expect(form.get_by_label("Currency")).to_have_value("eur")
    expect(form.get_by_label("What for")).to_have_value("Taxi to the airport")
    expect(page.get_by_label(re.compile("^Reference"))).to_have_value("EXP-2026-0300")
    assert WorkflowInstance.objects.count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "start-form-error.png"), full_page=True)

    form.get_by_label("Currency").fill("EUR")
    page.get_by_label(re.compile("^Files")).set_input_files(
        files=[{"name": "taxi.pdf", "mimeType": "application/pdf", "buffer": PDF}]
    )
    page.get_by_role("button", name="Submit").click()
    instance = wait_for(lambda: WorkflowInstance.objects.first(), message="the instance")
    expect(page).to_have_url(f"{base}/instances/{instance.pk}/")
    expect(page.locator(".messages")).to_contain_text("Started expense_approval")
    assert instance.input == {
        "amount": 86.4,
        "currency": "EUR",
        "description": "Taxi to the airport",
        "category": "travel",
        "spent_on": "2026-12-01",
        "requester": "alice",
        "receipts": instance.input["receipts"],
    }
    assert [r["name"] for r in instance.input["receipts"]] == ["taxi.pdf"]
    assert instance.business_key == "EXP-2026-0300"
    wait_for(
        lambda: ApprovalRequest.objects.filter(instance=instance).exists(),
        timeout=30,
        message="the managers asked",
    )
    # Back to the form: a fresh key, so a new submission is a new request; the browser's
    # back-and-resubmit of the same page would start nothing new (tested without a browser).
    assert WorkflowInstance.objects.count() == 1
