"""Issue 13's "inbox that scales" in a real browser (Debian's headless Chromium, Playwright, a
real worker): bob finds an expense by text search, then by the amount column (sorted both
ways from its header), and approves it with the keyboard after the confirmation; a bad search
shows its reason and the page stays usable; nothing sticks out at 1280 or 390 px."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from approvals.models import ApprovalRequest
from tests.approvals.test_browser import assert_fits, log_in, shoot, start_expenses

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LAPTOP = "Expense: 1840 EUR for Laptop for the new designer"
TRAIN = "Expense: 312.9 EUR for Train tickets to Lyon"


def titles(page: Page) -> list[str]:
    return page.locator("li.request .request-title").all_inner_texts()


def test_bob_finds_an_expense_by_text_and_by_amount_and_approves_it_by_keyboard(
    page: Page, live_server: Any, worker: Any, people: dict[str, Any]
) -> None:
    laptop, lunch, train, taxi = start_expenses(people)
    base = live_server.url
    page.set_viewport_size({"width": 1280, "height": 900})
    log_in(page, base, "bob")

    # Text search: a word of the description, then the business key, then two words.
    page.get_by_label("Search").fill("lyon")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"[?&]q=lyon\b"))
    assert titles(page) == [TRAIN]
    page.get_by_label("Search").fill("exp-2026-0139")
    page.get_by_role("button", name="Apply").click()
    assert titles(page) == [LAPTOP]
    page.get_by_label("Search").fill("alice taxi")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("li.request")).to_have_count(1)
    expect(page.locator("li.request .col")).to_have_text("Amount 86.40")
    page.get_by_role("link", name="Clear").click()
    expect(page.locator("li.request")).to_have_count(4)

    # The amount column: its header sorts low to high, a second click high to low.
    header = page.locator(".list-head").get_by_role("link", name=re.compile("^Amount"))
    header.click()
    expect(page).to_have_url(re.compile(r"sort=col\.amount"))
    expect(page.locator("li.request .request-cols")).to_have_text(
        ["Amount 45.50", "Amount 86.40", "Amount 312.90", "Amount 1,840"]
    )
    page.locator(".list-head").get_by_role("link", name=re.compile("^Amount")).click()
    expect(page).to_have_url(re.compile(r"sort=-col\.amount"))
    assert titles(page)[0] == LAPTOP
    assert_fits(page)
    shoot(page, "inbox-search-amount-desktop.png")

    # The keyboard: j makes the largest the current row, a asks, Approve decides.
    page.keyboard.press("j")
    page.keyboard.press("a")
    dialog = page.locator("#decide-dialog")
    expect(dialog.get_by_role("heading")).to_have_text(f"Approve #{laptop.pk} “{LAPTOP}”?")
    assert ApprovalRequest.objects.get(pk=laptop.pk).state == "pending"
    dialog.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(".msg-success")).to_have_text(f"Approved “{LAPTOP}”.")
    expect(page).to_have_url(re.compile(r"/inbox/\?sort=-col\.amount$"))
    assert ApprovalRequest.objects.get(pk=laptop.pk).state == "approved"
    assert titles(page)[0] == TRAIN  # the next largest, in the same order

    # A bad filter says why, and nothing else happens; Clear brings the list back.
    page.get_by_label("Search").fill("x" * 200)
    page.get_by_label("Due before").fill("2026-12-31")
    page.get_by_label("Overdue only").check()
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("li.request")).to_have_count(0)
    expect(page.locator(".msg-error")).to_have_count(0)  # 200 characters are allowed
    page.goto(f"{base}/inbox/?due_before=someday")
    expect(page.locator(".msg-error")).to_have_text(
        re.compile("Nothing was searched: due before must be a date")
    )
    page.get_by_role("link", name="Clear").click()
    expect(page.locator("li.request")).to_have_count(3)
    pending = ApprovalRequest.objects.filter(state="pending", step_name="manager_approval")
    assert set(pending.values_list("pk", flat=True)) == {
        lunch.pk,
        train.pk,
        taxi.pk,
    }

    # A phone: the filters stack, the columns show inline with their label.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/inbox/?sort=col.amount")
    expect(page.locator("li.request .col").first).to_have_text("Amount 45.50")
    assert_fits(page)
    shoot(page, "inbox-search-phone.png")
