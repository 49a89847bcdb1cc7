"""The inbox list's keyboard shortcuts and "Select all on this page" in a real browser (Debian's
headless Chromium, Playwright, a real worker): no key decides anything by itself, a decision
comes back to the same filtered list, a rejection asks for its comment, select all ticks only
what the user may decide, and keys typed into the filters stay text."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from approvals import claims
from approvals.models import ApprovalRequest, Decision
from tests.approvals.test_browser import assert_fits, log_in, shoot, start_expenses

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Due soonest first: the oldest expense first (each is due three days after it was started).
FILTERED = "/inbox/?workflow=expense_approval&sort=due"
LUNCH = "Expense: 45.5 EUR for Team lunch after the release"
LAPTOP = "Expense: 1840 EUR for Laptop for the new designer"


def state_of(request: ApprovalRequest) -> str:
    return ApprovalRequest.objects.get(pk=request.pk).state


def test_keyboard_decisions_ask_first_and_come_back_to_the_filtered_list(
    page: Page, live_server: Any, worker: Any, people: dict[str, Any]
) -> None:
    laptop, lunch, train, taxi = start_expenses(people)
    claims.approval_claim(request_id=taxi.pk, user=people["dave"])  # not bob's to decide now
    base = live_server.url
    page.set_viewport_size({"width": 1280, "height": 900})
    log_in(page, base, "bob")
    page.goto(f"{base}{FILTERED}")
    rows = page.locator("li.request")
    expect(rows).to_have_count(4)
    expect(page.locator(".keys-hint")).to_have_text(
        "Keyboard: j/k move, o open, a approve, r reject, x select, ? help"
    )

    # "?" shows every shortcut; Escape closes the help.
    help_dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    page.keyboard.press("?")
    expect(help_dialog).to_be_visible()
    for text in ["j / k", "o or Enter", "x", "a", "r", "?", "Esc"]:
        expect(help_dialog.locator("dt", has_text=text).first).to_be_visible()
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()

    # j twice: the second row is the current one, and its title has the focus.
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_class(re.compile(r"\bis-current\b"))
    expect(rows.nth(1)).to_have_attribute("aria-current", "true")
    expect(rows.nth(0)).not_to_have_attribute("aria-current", "true")
    expect(page.get_by_role("link", name=LUNCH)).to_be_focused()

    # "a" only asks. Cancel and Escape leave the request pending.
    dialog = page.locator("#decide-dialog")
    page.keyboard.press("a")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text(f"Approve #{lunch.pk} “{LUNCH}”?")
    approve = dialog.get_by_role("button", name="Approve", exact=True)
    expect(approve).to_be_focused()
    shoot(page, "inbox-keys-approve-desktop.png")
    assert state_of(lunch) == "pending"
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert state_of(lunch) == "pending"
    page.keyboard.press("a")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert state_of(lunch) == "pending"
    assert not Decision.objects.filter(request=lunch).exists()

    # Confirmed: approved, and back on the same filtered list with the message.
    page.keyboard.press("a")
    dialog.get_by_label("Comment").fill("Enjoy")
    approve.click()
    expect(page).to_have_url(f"{base}{FILTERED}")
    expect(page.locator(".msg-success")).to_have_text(f"Approved “{LUNCH}”.")
    expect(rows).to_have_count(3)
    assert state_of(lunch) == "approved"
    decision = Decision.objects.get(request=lunch)
    assert (decision.decided_by, decision.comment, decision.channel) == (
        people["bob"],
        "Enjoy",
        "web",
    )

    # "r" focuses the comment; the browser refuses an empty rejection.
    page.keyboard.press("j")
    expect(rows.nth(0)).to_have_attribute("aria-current", "true")
    page.keyboard.press("r")
    expect(dialog.get_by_role("heading")).to_have_text(f"Reject #{laptop.pk} “{LAPTOP}”?")
    expect(dialog).to_contain_text("A rejection needs a comment.")
    comment = dialog.get_by_label("Comment")
    expect(comment).to_be_focused()
    reject = dialog.get_by_role("button", name="Reject", exact=True)
    reject.click()
    expect(dialog).to_be_visible()
    assert comment.evaluate("field => field.validity.valueMissing")
    assert state_of(laptop) == "pending"
    comment.fill("Over the budget for this quarter")
    reject.click()
    expect(page).to_have_url(f"{base}{FILTERED}")
    expect(page.locator(".msg-success")).to_have_text(f"Rejected “{LAPTOP}”.")
    assert state_of(laptop) == "rejected"
    assert Decision.objects.get(request=laptop).comment == "Over the budget for this quarter"

    # dave's claim: no checkbox, and "a" says why instead of asking.
    expect(rows).to_have_count(2)
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_attribute("aria-current", "true")
    page.keyboard.press("a")
    expect(page.locator("#keys-notice")).to_have_text("You cannot decide this request here")
    expect(dialog).to_be_hidden()
    assert state_of(taxi) == "pending"
    assert state_of(train) == "pending"


def test_select_all_ticks_every_selectable_row_and_keys_in_the_filters_stay_text(
    page: Page, live_server: Any, worker: Any, people: dict[str, Any]
) -> None:
    laptop, lunch, train, taxi = start_expenses(people)
    claims.approval_claim(request_id=taxi.pk, user=people["dave"])
    base = live_server.url
    page.set_viewport_size({"width": 375, "height": 812})  # a phone: the tools wrap
    log_in(page, base, "bob")
    page.goto(f"{base}{FILTERED}")
    select_all = page.get_by_label("Select all on this page")
    count = page.locator("#selected-count")
    boxes = page.locator('input[name="ids"]')
    expect(boxes).to_have_count(3)  # taxi is claimed by dave: no checkbox
    expect(count).to_have_text("0 selected")
    expect(count).to_have_attribute("aria-live", "polite")

    # x ticks the current row; some ticked: the box says so.
    page.keyboard.press("j")
    page.keyboard.press("x")
    expect(page.locator(f"#pick-{laptop.pk}")).to_be_checked()
    expect(count).to_have_text("1 selected")
    expect(select_all).to_have_js_property("indeterminate", True)
    expect(select_all).not_to_be_checked()
    assert_fits(page)
    shoot(page, "inbox-keys-select-phone.png")

    select_all.check()
    for request in (laptop, lunch, train):
        expect(page.locator(f"#pick-{request.pk}")).to_be_checked()
    expect(count).to_have_text("3 selected")
    expect(select_all).to_have_js_property("indeterminate", False)
    page.get_by_label(f"Select “{LUNCH}”").uncheck()  # a click still counts
    expect(count).to_have_text("2 selected")
    expect(select_all).to_have_js_property("indeterminate", True)
    select_all.click()
    expect(count).to_have_text("3 selected")
    select_all.click()
    expect(count).to_have_text("0 selected")
    for index in range(3):
        expect(boxes.nth(index)).not_to_be_checked()

    # The selection goes to the bulk form as before.
    select_all.check()
    page.get_by_role("button", name="Approve selected").click()
    expect(page).to_have_url(f"{base}{FILTERED}")
    expect(page.locator(".msg-success")).to_contain_text("Approved 3:")
    assert {state_of(r) for r in (laptop, lunch, train)} == {"approved"}
    assert state_of(taxi) == "pending"

    # Keys typed into a filter are text: nothing moves, nothing opens.
    page.get_by_label("Search").press_sequentially("jjxa?r")
    expect(page.get_by_label("Search")).to_have_value("jjxa?r")
    expect(page.locator("li.request.is-current")).to_have_count(0)
    expect(page.locator("dialog[open]")).to_have_count(0)
    page.get_by_label("Workflow").focus()
    page.keyboard.press("j")
    expect(page.locator("li.request.is-current")).to_have_count(0)
    assert state_of(taxi) == "pending"
