"""Files in a real browser (Debian's headless Chromium, Playwright, the live server): bob opens
alice's expense, downloads her receipt and adds a file of his own; a refused file is named.
Screenshots land in tests/artifacts/ (git-ignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.models import Attachment
from tests.approvals.test_browser import VIEWPORTS, assert_fits, log_in, shoot
from tests.attachments_fixtures import (
    ELF,
    PDF,
    PNG,
    files_dir_fixture,  # noqa: F401 - the files_dir fixture
    upload,
)

# Steps run in this process: no doorbell may reach a worker left running by an earlier
# end-to-end test (it would race this test, and its teardown flush).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("rung"),
]


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_bob_reads_the_receipt_and_adds_a_file(
    page: Page,
    live_server: Any,
    people: dict[str, Any],
    files_dir: Path,
    tmp_path: Path,
    viewport: str,
) -> None:
    page.set_viewport_size(VIEWPORTS[viewport])
    instance, _ = engine.instance_start(
        workflow="t_receipts",
        input={"amount": 86.4},
        files=[upload("taxi-receipt.pdf", PDF)],
        started_by=people["alice"],
    )
    request = ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")
    base = live_server.url
    log_in(page, base, "bob")
    page.goto(f"{base}/inbox/{request.pk}/")
    files = page.locator("#files")
    expect(files).to_contain_text("taxi-receipt.pdf")
    expect(files).to_contain_text("PDF")
    expect(files).to_contain_text("with the start")

    with page.expect_download() as download:
        files.get_by_role("link", name="taxi-receipt.pdf").click()
    assert download.value.suggested_filename == "taxi-receipt.pdf"
    saved = tmp_path / "receipt.pdf"
    download.value.save_as(saved)
    assert saved.read_bytes() == PDF

    photo = tmp_path / "meter.png"
    photo.write_bytes(PNG)
    files.get_by_label("Add a file").set_input_files(str(photo))
    files.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(f"{base}/inbox/{request.pk}/")
    expect(page.locator(".msg-success")).to_have_text("Added “meter.png”.")
    expect(files.locator("li")).to_have_count(2)
    expect(files).to_contain_text(f"on request #{request.pk}")
    assert Attachment.objects.filter(context=f"request:{request.pk}").count() == 1
    assert_fits(page)
    shoot(page, f"inbox-files-{viewport}.png")

    bad = tmp_path / "invoice.pdf"
    bad.write_bytes(ELF)
    page.locator("#files").get_by_label("Add a file").set_input_files(str(bad))
    page.locator("#files").get_by_role("button", name="Upload").click()
    expect(page.locator("body")).to_contain_text(
        "Your file was not added: invoice.pdf: its content is an executable (ELF)"
    )
    assert Attachment.objects.count() == 2
