"""The inbox in a real browser: Debian's headless Chromium driven by Playwright against the live
server, with a real Celery worker on the test database moving the instances on.

Screenshots of the inbox and the detail page land in tests/artifacts/ (git-ignored) on each run.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from approvals.models import ApprovalRequest, Decision
from orchestration import engine
from orchestration.models import StepRun, WorkflowInstance
from tests.approvals.conftest import PASSWORD, expense_input
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
VIEWPORTS = {
    "desktop": {"width": 1280, "height": 900},
    "phone": {"width": 375, "height": 812},
}
# (amount, description, business key), oldest first; the last one is the one bob approves.
EXPENSES = [
    (1840, "Laptop for the new designer", "EXP-2026-0139"),
    (45.5, "Team lunch after the release", "EXP-2026-0140"),
    (312.9, "Train tickets to Lyon", "EXP-2026-0141"),
    (86.4, "Taxi to the airport", "EXP-2026-0142"),
]


def start_expenses(people: dict[str, Any]) -> list[ApprovalRequest]:
    """Start the expenses one after the other (so the inbox order is known) and wait for the
    worker to run each ``validate`` and ask the managers."""
    requests = []
    for amount, description, key in EXPENSES:
        instance, _ = engine.instance_start(
            workflow="expense_approval",
            input=expense_input(amount, description),
            business_key=key,
            started_by=people["alice"],
        )
        requests.append(
            wait_for(
                lambda instance=instance: ApprovalRequest.objects.filter(instance=instance).first(),
                timeout=30,
                message=f"the manager approval request of {key}",
            )
        )
    return requests


def log_in(page: Page, base: str, username: str, screenshot: str = "") -> None:
    page.goto(f"{base}/inbox/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/inbox/$"))
    if screenshot:
        shoot(page, screenshot)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/inbox/")


def assert_fits(page: Page) -> None:
    """Nothing sticks out sideways (the phone layout must not scroll horizontally)."""
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the viewport"


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_bob_approves_an_expense_in_the_browser_and_the_instance_finishes(
    page: Page, live_server: Any, worker: Any, people: dict[str, Any], viewport: str
) -> None:
    page.set_viewport_size(VIEWPORTS[viewport])
    *others, taxi = start_expenses(people)
    lunch = others[1]
    ApprovalRequest.objects.filter(pk=lunch.pk).update(due_at=timezone.now() - timedelta(hours=5))
    base = live_server.url

    log_in(page, base, "bob", screenshot=f"login-{viewport}.png")
    rows = page.locator(".request")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text("Expense: 86.4 EUR for Taxi to the airport")
    expect(page.locator(".badge")).to_have_text("4")
    expect(page.locator(f'[data-request="{lunch.pk}"] .pill-overdue')).to_have_text("Overdue")
    assert_fits(page)
    shoot(page, f"inbox-{viewport}.png")

    page.get_by_role("link", name="Expense: 86.4 EUR for Taxi to the airport").click()
    expect(page).to_have_url(f"{base}/inbox/{taxi.pk}/")
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Expense: 86.4 EUR for Taxi to the airport"
    )
    expect(page.locator("dl.fields")).to_contain_text("Taxi to the airport")
    expect(page.locator(".history")).to_contain_text("approval_requested")
    assert_fits(page)
    shoot(page, f"inbox-detail-{viewport}.png")

    page.get_by_label("Comment").fill("Fine, thanks for taking the early flight.")
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page).to_have_url(f"{base}/inbox/")
    expect(page.locator(".msg-success")).to_have_text(
        "Approved “Expense: 86.4 EUR for Taxi to the airport”."
    )
    expect(rows).to_have_count(3)
    expect(page.locator(".badge")).to_have_text("3")

    wait_for(
        lambda: WorkflowInstance.objects.get(pk=taxi.instance_id).state == "succeeded",
        timeout=30,
        message="the approved expense to be paid and finish",
    )
    steps = {s.name: s for s in StepRun.objects.filter(instance_id=taxi.instance_id)}
    assert steps["manager_approval"].output["decided_by"] == ["bob"]
    assert steps["finance_approval"].state == "skipped"
    assert steps["pay"].state == "succeeded"
    assert steps["book"].state == "succeeded"
    decision = Decision.objects.get(request=taxi)
    assert (decision.comment, decision.channel) == (
        "Fine, thanks for taking the early flight.",
        "web",
    )


def test_bulk_approval_and_a_refused_rejection_in_the_browser(
    page: Page, live_server: Any, worker: Any, people: dict[str, Any]
) -> None:
    laptop, lunch, train, taxi = start_expenses(people)
    base = live_server.url
    log_in(page, base, "dave")

    # Rejecting needs a comment: the browser itself refuses the empty form (no JavaScript).
    page.goto(f"{base}/inbox/{lunch.pk}/")
    page.get_by_role("button", name="Reject", exact=True).click()
    expect(page).to_have_url(f"{base}/inbox/{lunch.pk}/")
    assert ApprovalRequest.objects.get(pk=lunch.pk).state == "pending"

    page.goto(f"{base}/inbox/")
    page.get_by_label("Select “Expense: 45.5 EUR for Team lunch after the release”").check()
    page.get_by_label("Select “Expense: 312.9 EUR for Train tickets to Lyon”").check()
    page.get_by_label("Comment").fill("Approved in the weekly batch")
    page.get_by_role("button", name="Approve selected").click()
    # In the order of the list: newest first.
    expect(page.locator(".msg-success")).to_have_text(
        f"Approved 2: #{train.pk} “Expense: 312.9 EUR for Train tickets to Lyon”; "
        f"#{lunch.pk} “Expense: 45.5 EUR for Team lunch after the release”."
    )
    expect(page.locator(".request")).to_have_count(2)
    wait_for(
        lambda: (
            set(
                WorkflowInstance.objects.filter(
                    pk__in=[lunch.instance_id, train.instance_id]
                ).values_list("state", flat=True)
            )
            == {"succeeded"}
        ),
        timeout=30,
        message="both approved expenses to finish",
    )

    page.get_by_role("link", name="Out of office").click()
    page.get_by_label("Delegate").fill("bob")
    page.get_by_role("button", name="Save delegation").click()
    expect(page.locator(".msg-success")).to_contain_text("bob can decide your requests from")
    shoot(page, "out-of-office-desktop.png")

    # Log out from the navigation.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="You are logged out")).to_be_visible()
    still = ApprovalRequest.objects.filter(pk__in=[laptop.pk, taxi.pk])
    assert set(still.values_list("state", flat=True)) == {"pending"}
