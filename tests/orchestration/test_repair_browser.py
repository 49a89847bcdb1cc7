"""The repair actions in Debian's headless Chromium at 1280 px (and a phone's 390 px): the
status page of a failed instance with its repair buttons, the edit form, the admin's instance
page, and an "undo failed" instance — without horizontal overflow."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from orchestration.models import Event, WorkflowInstance
from tests.orchestration.test_api import start_as
from tests.orchestration.test_engine import refresh, run_ready
from tests.orchestration.test_saga import play
from tests.orchestration.test_status_browser import log_in, shoot

# Steps run in this process: no doorbell may reach a worker left running by an earlier
# end-to-end test (it would race this test, and its teardown flush).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("rung"),
]


def no_overflow(page: Page) -> bool:
    return page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )


def failed_repair(user: Any) -> WorkflowInstance:
    instance = start_as(user, "t_repair", input={"amount": -1, "card": "4111-secret"})
    run_ready(instance)
    return refresh(instance)


@pytest.mark.parametrize("width", [1280, 390])
def test_edit_input_from_the_status_page_in_a_browser(
    page: Page, live_server: Any, operator: Any, width: int
) -> None:
    instance = failed_repair(operator)
    page.set_viewport_size({"width": width, "height": 900})
    base = live_server.url
    log_in(page, base, operator)
    page.goto(f"{base}/instances/{instance.pk}/")
    expect(page.locator("#instance-state")).to_have_text("Failed")
    expect(page.get_by_role("button", name="Skip…")).to_be_visible()
    expect(page.get_by_role("button", name="Re-run from here…").first).to_be_visible()
    assert no_overflow(page), "the status page scrolls sideways"
    shoot(page, f"repair-failed-{width}.png")
    page.get_by_role("button", name="Edit input…").click()
    textarea = page.locator("textarea[name=value]")
    expect(textarea).to_contain_text("••••••")
    assert "4111" not in page.content()
    assert no_overflow(page), "the edit form scrolls sideways"
    textarea.fill('{"amount": 5, "card": "••••••"}')
    page.locator("textarea[name=reason]").fill("the customer typed a minus")
    page.get_by_role("button", name="Yes, edit input").click()
    expect(page.locator(".st-timeline")).to_contain_text("Input edited")
    expect(page.locator(".st-timeline")).to_contain_text("amount -1 → 5")
    assert Event.objects.get(instance=instance, type="instance_input_edited").data["reason"] == (
        "the customer typed a minus"
    )


def test_admin_instance_page_with_repairs_fits_1280(
    page: Page, live_server: Any, operator: Any
) -> None:
    instance = failed_repair(operator)
    page.set_viewport_size({"width": 1280, "height": 900})
    base = live_server.url
    log_in(page, base, operator)
    page.goto(f"{base}/admin/orchestration/workflowinstance/{instance.pk}/change/")
    expect(page.get_by_role("link", name="Skip…")).to_be_visible()
    assert no_overflow(page), "the admin's instance page scrolls sideways"
    shoot(page, "repair-admin-1280.png")
    page.get_by_role("link", name="Edit output…").click()
    expect(page.locator("textarea[name=value]")).to_contain_text("••••••")
    assert no_overflow(page), "the admin's edit form scrolls sideways"
    shoot(page, "repair-admin-edit-output-1280.png")


def test_undo_failed_reads_as_such_and_offers_its_actions(
    page: Page, live_server: Any, operator: Any
) -> None:
    instance = start_as(operator, "t_repair_saga", input={"behave": {"pay": "doom"}})
    play(instance)
    page.set_viewport_size({"width": 1280, "height": 900})
    base = live_server.url
    log_in(page, base, operator)
    page.goto(f"{base}/instances/{instance.pk}/")
    expect(page.locator("#instance-state")).to_have_text("Failed: undo failed")
    expect(page.locator("#step-book .st-pill")).to_have_text("Undo failed")
    expect(page.get_by_role("button", name="Retry the undo")).to_be_visible()
    expect(page.get_by_role("button", name="Retry failed steps")).to_have_count(0)
    assert no_overflow(page)
    shoot(page, "repair-undo-failed-1280.png")
    page.get_by_role("button", name="Mark undone by hand…").click()
    page.locator("textarea[name=reason]").fill("cancelled the booking by phone")
    page.get_by_role("button", name="Yes, mark undone by hand").click()
    expect(page.locator("#step-book .st-pill")).to_have_text("Compensated")
