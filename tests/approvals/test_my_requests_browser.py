"""“My requests” in a real browser (Debian's headless Chromium, Playwright): alice finds her
expense by text and opens its status page. The steps run in-process (no worker needed)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.models import StepRun
from tests.approvals.conftest import expense_input
from tests.approvals.test_browser import assert_fits, log_in, shoot

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_alice_finds_her_expense_in_my_requests_and_opens_its_status_page(
    page: Page, live_server: Any, people: dict[str, Any], rung: list
) -> None:
    made = []
    for amount, description, key in [
        (1840, "Laptop for the new designer", "EXP-2026-0139"),
        (86.4, "Taxi to the airport", "EXP-2026-0142"),
    ]:
        instance, _ = engine.instance_start(
            workflow="expense_approval",
            input=expense_input(amount, description),
            business_key=key,
            started_by=people["alice"],
        )
        validate = StepRun.objects.get(instance=instance, name="validate")
        assert engine.step_execute(step_run_id=validate.pk, attempt=1) == "succeeded"
        made.append(ApprovalRequest.objects.get(instance=instance))
    laptop, taxi = made
    base = live_server.url

    log_in(page, base, "alice")
    page.get_by_role("link", name="My requests").click()
    expect(page).to_have_url(f"{base}/requests/")
    expect(page.get_by_role("link", name="My requests")).to_have_attribute("aria-current", "page")
    rows = page.locator(".my-requests .request")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("Expense: 86.4 EUR for Taxi to the airport")
    for row in (rows.first, rows.nth(1)):
        expect(row).to_contain_text("with group managers")
        expect(row).to_contain_text("Manager approval")
        expect(row.locator(".pill")).to_have_text(re.compile("running", re.I))
    assert_fits(page)
    shoot(page, "my-requests-desktop.png")

    page.get_by_label("Search").fill("laptop")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("EXP-2026-0139")

    page.get_by_role("link", name="Expense: 1840 EUR for Laptop for the new designer").click()
    expect(page).to_have_url(f"{base}/instances/{laptop.instance_id}/")
    expect(page.locator("body")).to_contain_text("expense_approval")
    assert taxi.instance_id != laptop.instance_id
