"""The whole approval loop of issue 12 in a real browser (Debian's headless Chromium driven by
Playwright against the live server, a real Celery worker moving the instance on):

alice submits an expense with a receipt; bob opens it, reads the receipt, claims it and asks
for changes; alice revises the amount, adds the corrected invoice and resubmits; bob approves
round 2; carol (finance) sees bob's comments and both rounds and approves; the expense is paid.

``pytest -m docs tests/approvals/test_loop_browser.py`` refreshes docs/inbox-rounds.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest, Decision
from demo.management.commands.seed_demo import receipt_pdf
from orchestration.models import Attachment, Event, WorkflowInstance
from tests.approvals.conftest import PASSWORD
from tests.attachments_fixtures import files_dir_fixture  # noqa: F401 - the files_dir fixture
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS = ROOT / "docs"

RECEIPT = receipt_pdf("Hotel Lumiere, 3 nights, 1850 EUR")
CORRECTED = receipt_pdf("Hotel Lumiere, 2 nights (business), 1650 EUR")
SENT_BACK = "The third night was private: take it off and attach the corrected invoice."
APPROVED = "Thanks, the corrected invoice matches."


def submit_expense(people: dict[str, Any]) -> ApprovalRequest:
    """alice submits through the API (multipart, with the receipt); the worker validates it
    and the managers are asked."""
    client = APIClient()
    client.force_authenticate(people["alice"])
    response = client.post(
        "/api/v1/instances/",
        {
            "workflow": "expense_approval",
            "input": json.dumps(
                {
                    "amount": 1850,
                    "currency": "EUR",
                    "description": "Conference hotel in Lyon",
                    "requester": "alice",
                }
            ),
            "business_key": "EXP-2026-0200",
            "files": [_upload("hotel-invoice.pdf", RECEIPT)],
        },
        format="multipart",
    )
    assert response.status_code == 201, response.content
    instance_id = response.json()["id"]
    return wait_for(
        lambda: ApprovalRequest.objects.filter(
            instance_id=instance_id, step_name="manager_approval"
        ).first(),
        timeout=30,
        message="the manager approval request",
    )


def _upload(name: str, data: bytes) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="application/pdf")


def signed_in(browser: Browser, base: str, username: str) -> Page:
    """A browser context of its own for ``username``, logged in on the inbox."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{base}/inbox/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/inbox/")
    return page


def shoot(page: Page, folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)


def drive_the_loop(browser: Browser, base: str, people: dict[str, Any], shots: Path) -> None:
    first = submit_expense(people)
    instance_id = first.instance_id

    # bob opens it, reads the receipt, claims it, asks for changes.
    bob = signed_in(browser, base, "bob")
    bob.get_by_role("link", name=re.compile("Conference hotel in Lyon")).click()
    expect(bob).to_have_url(f"{base}/inbox/{first.pk}/")
    expect(bob.locator("dl.fields")).to_contain_text("hotel-invoice.pdf")
    with bob.expect_download() as download:
        bob.locator("#files").get_by_role("link", name="hotel-invoice.pdf").click()
    assert Path(download.value.path()).read_bytes() == RECEIPT
    bob.get_by_role("button", name="Claim: I'm on it").click()
    expect(bob.locator(".claim-status")).to_contain_text("Claimed by you")
    bob.get_by_label(re.compile("^Comment")).fill(SENT_BACK)
    bob.get_by_role("button", name="Request changes").click()
    expect(bob.locator(".messages")).to_contain_text("changes")
    first.refresh_from_db()
    assert first.state == "changes_requested"

    # alice revises the amount, adds the corrected invoice and resubmits.
    alice = signed_in(browser, base, "alice")
    revise = alice.locator(f'[data-revise="{first.pk}"]')
    expect(revise).to_contain_text(SENT_BACK)
    revise.get_by_role("link").click()
    expect(alice.get_by_role("heading", level=1)).to_have_text("Revise and resubmit")
    expect(alice.locator(".changes-comment")).to_have_text(SENT_BACK)
    alice.get_by_label("Amount").fill("1650")
    alice.get_by_label(re.compile("^Add files")).set_input_files(
        files=[
            {
                "name": "hotel-invoice-corrected.pdf",
                "mimeType": "application/pdf",
                "buffer": CORRECTED,
            }
        ]
    )
    alice.get_by_role("button", name="Resubmit").click()
    expect(alice.locator(".messages")).to_contain_text("round 2 waits for a decision")
    second = ApprovalRequest.objects.get(
        instance_id=instance_id, step_name="manager_approval", round=2
    )
    expect(alice).to_have_url(f"{base}/inbox/{second.pk}/")

    # bob approves round 2, seeing round 1 and both files.
    bob.goto(f"{base}/inbox/")
    bob.get_by_role("link", name=re.compile("1650 EUR for Conference hotel")).click()
    expect(bob).to_have_url(f"{base}/inbox/{second.pk}/")
    rounds = bob.locator("ol.rounds")
    expect(rounds.locator('[data-round="1"]')).to_contain_text("changes requested by bob")
    expect(rounds.locator('[data-round="1"]')).to_contain_text(SENT_BACK)
    expect(bob.locator("dl.fields")).to_contain_text("hotel-invoice-corrected.pdf")
    expect(bob.locator("#files")).to_contain_text("with resubmission 2")
    shoot(bob, shots, "inbox-rounds.png")
    bob.get_by_label(re.compile("^Comment")).fill(APPROVED)
    bob.get_by_role("button", name="Approve").click()
    expect(bob.locator(".messages")).to_contain_text("Approved")

    # carol (finance, over 1,000) sees bob's comments and both rounds, and approves.
    finance = wait_for(
        lambda: ApprovalRequest.objects.filter(
            instance_id=instance_id, step_name="finance_approval"
        ).first(),
        timeout=30,
        message="the finance approval request",
    )
    carol = signed_in(browser, base, "carol")
    carol.goto(f"{base}/inbox/{finance.pk}/")
    decisions = carol.locator("ul.decisions").first
    expect(decisions).to_contain_text("bob asked for changes")
    expect(decisions).to_contain_text(SENT_BACK)
    expect(decisions).to_contain_text("Manager approval, round 2")
    expect(decisions).to_contain_text(APPROVED)
    expect(carol.locator("#files")).to_contain_text("hotel-invoice.pdf")
    expect(carol.locator("#files")).to_contain_text("hotel-invoice-corrected.pdf")
    carol.get_by_role("button", name="Approve").click()
    expect(carol.locator(".messages")).to_contain_text("Approved")

    instance = wait_for(
        lambda: WorkflowInstance.objects.filter(pk=instance_id, state="succeeded").first(),
        timeout=30,
        message="the expense paid and booked",
    )
    assert instance.input["amount"] == 1650
    assert [r["name"] for r in instance.input["receipts"]] == [
        "hotel-invoice.pdf",
        "hotel-invoice-corrected.pdf",
    ]
    assert Attachment.objects.filter(instance=instance).count() == 2
    assert [
        (d.request.round, d.decided_by.username, d.outcome)
        for d in Decision.objects.filter(request__instance=instance).order_by("at")
    ] == [(1, "bob", "request_changes"), (2, "bob", "approve"), (1, "carol", "approve")]
    types = set(Event.objects.filter(instance=instance).values_list("type", flat=True))
    assert {
        "approval_claimed",
        "approval_changes_requested",
        "instance_input_revised",
        "approval_resubmitted",
        "attachments_added",
        "instance_succeeded",
    } <= types
    for page in (alice, bob, carol):
        page.context.close()


pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.e2e
def test_the_whole_loop_in_the_browser(
    browser: Browser, live_server: Any, worker: Any, people: dict[str, Any], files_dir: Path
) -> None:
    drive_the_loop(browser, live_server.url, people, ARTIFACTS)


@pytest.mark.docs  # not part of `make test`: `pytest -m docs` refreshes docs/inbox-rounds.png
def test_docs_screenshot_of_a_request_with_its_rounds(
    browser: Browser, live_server: Any, worker: Any, people: dict[str, Any], files_dir: Path
) -> None:
    drive_the_loop(browser, live_server.url, people, DOCS)
