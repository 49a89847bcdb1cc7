"""The batch operation pages in headless Chromium at 1280 px: the instance list's batch
confirmation, the batch-by-filter page with its preview, the batches list and a batch's page
with its progress bar — none wider than the viewport."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from orchestration import batch_runner, batches, engine
from tests.orchestration.test_engine import run_ready
from tests.test_screens_browser import DESKTOP, fits, log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LONG_KEY = "CUSTOMER-ONBOARDING-ACME-CORPORATION-INTERNATIONAL-HOLDINGS-2026-EMEA-"


def test_batch_pages_fit_1280(
    page: Page, live_server: Any, django_user_model: Any, rung: list, monkeypatch: Any
) -> None:
    monkeypatch.setattr(batches, "ring", lambda pk, countdown=0: None)
    ops = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-123")
    failed = []
    for i in range(3):
        instance, _ = engine.instance_start(
            workflow="t_nonretryable", business_key=f"{LONG_KEY}{i:04d}"
        )
        run_ready(instance)
        failed.append(instance)
    running, _ = engine.instance_start(workflow="t_sequence", business_key=f"{LONG_KEY}RUN")
    finished = batches.batch_create(
        action="retry",
        filter={"ids": [str(failed[0].pk), str(running.pk)]},
        user=ops,
        reason="The payment provider's endpoint was fixed in deploy 4711; retry everything "
        "that failed on it during the outage window of this morning.",
    )
    batch_runner.batch_run_chunk(batch_id=finished.pk)  # one done, one skipped with a message

    page.set_viewport_size(DESKTOP)
    base = live_server.url
    log_in(page, base, ops)

    # the instance list: tick two failed instances, "Retry selected (as a batch)"
    page.goto(f"{base}/admin/orchestration/workflowinstance/?state__exact=failed")
    page.locator(f'input.action-select[value="{failed[1].pk}"]').check()
    page.locator(f'input.action-select[value="{failed[2].pk}"]').check()
    page.select_option("select[name=action]", "batch_retry")
    page.locator("button[name=index]").first.click()
    expect(page.locator("textarea[name=reason]")).to_be_visible()
    fits(page, "batch-confirm")
    page.fill("textarea[name=reason]", "fixed")
    page.locator("input[type=submit].default").click()
    expect(page.locator(".so-progress")).to_be_visible()
    fits(page, "batch-change-queued")

    # the batch by filter page, with a preview
    page.goto(
        f"{base}/admin/orchestration/batchoperation/new/?action=cancel&workflow=t_sequence"
        "&business_key_prefix=CUSTOMER-"
    )
    page.locator("input[name=preview]").click()
    expect(page.locator("#so-preview")).to_contain_text("1 instance")
    fits(page, "batch-by-filter")

    page.goto(f"{base}/admin/orchestration/batchoperation/")
    expect(page.locator("#result_list .so-progress")).to_have_count(2)
    fits(page, "batches")
    inner, outer = page.evaluate(
        "(() => { const r = document.querySelector('#changelist .results');"
        " return [r.scrollWidth, r.clientWidth]; })()"
    )
    assert inner <= outer, f"the batches table is {inner} px in {outer} px"

    page.goto(f"{base}/admin/orchestration/batchoperation/{finished.pk}/change/")
    expect(page.locator(".so-problems li")).to_have_count(1)
    fits(page, "batch-change-done")
