"""The status page in a real browser: Debian's headless Chromium driven by Playwright against
the live server, with a real Celery worker moving the instance on while the page watches.

Screenshots land in tests/artifacts/ (git-ignored). `pytest -m docs` runs the last test, which
refreshes the operators' screenshots committed under docs/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from playwright.sync_api import Page, expect

from orchestration import engine
from orchestration.models import StepRun, WorkflowInstance
from tests.conftest import wait_for
from tests.orchestration.test_engine import refresh, run_ready, steps_of

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS = ROOT / "docs"
ONBOARDING = {"workflow": "customer_onboarding", "version": 1}


def log_in(page: Page, base: str, user: Any) -> None:
    """Share a server-side session with the browser (the login form is tested elsewhere)."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "url": base}]
    )


def shoot(page: Page, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def graph_states(page: Page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('svg.wf-graph g.step')]
            .map(g => [g.dataset.step, g.dataset.state]))"""
    )


def test_status_page_follows_a_running_instance_to_succeeded_without_reload(
    page: Page, live_server: Any, worker: Any, operator: Any
) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    instance, _ = engine.instance_start(
        **ONBOARDING,
        input={"customer": "Acme Corp", "plan": "team", "fail_times": {"send_welcome_email": 1}},
        business_key="CUST-1042",
        started_by=operator,
    )
    # Hold it while the page loads: nothing new starts until unpaused.
    engine.instance_pause(instance_id=instance.pk, actor="user:oper")
    base = live_server.url
    log_in(page, base, operator)
    page.goto(f"{base}/instances/{instance.pk}/")
    state = page.locator("#instance-state")
    expect(state).to_have_text("Running")
    expect(page.locator(".st-pill.st-paused")).to_be_visible()
    expect(page.locator("svg.wf-graph g.step")).to_have_count(4)
    assert set(graph_states(page)) == {
        "create_account",
        "provision_infrastructure",
        "send_welcome_email",
        "enable_billing",
    }
    # A marker that a reload would wipe out.
    page.evaluate("window.__stillTheSamePage = true")
    shoot(page, "status-paused.png")

    engine.instance_unpause(instance_id=instance.pk, actor="user:oper")
    # The page sees the retry go by, then the end, by itself.
    expect(page.locator(".st-timeline")).to_contain_text("Attempt 1 failed", timeout=30_000)
    expect(state).to_have_text("Succeeded", timeout=30_000)
    assert page.evaluate("window.__stillTheSamePage === true")
    assert refresh(instance).state == "succeeded"
    assert set(graph_states(page).values()) == {"succeeded"}
    expect(page.locator(".st-live")).to_have_count(0)  # polling stopped
    expect(page.locator(".st-timeline")).to_contain_text("Instance succeeded")
    expect(page.locator("#step-send_welcome_email")).to_contain_text("2")  # attempts
    shoot(page, "status-succeeded.png")


def test_an_operator_fixes_a_failed_step_from_the_status_page(
    page: Page, live_server: Any, worker: Any, operator: Any
) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    instance, _ = engine.instance_start(
        **ONBOARDING,
        input={"customer": "Globex", "fail_permanently": "provision_infrastructure"},
        business_key="CUST-1043",
    )
    wait_for(lambda: refresh(instance).state == "failed", message="the onboarding to fail")
    base = live_server.url
    log_in(page, base, operator)
    page.goto(f"{base}/instances/{instance.pk}/")
    expect(page.locator("#instance-state")).to_have_text("Failed")
    row = page.locator("#step-provision_infrastructure")
    error = page.locator("#step-provision_infrastructure-error")
    expect(error.locator("summary")).to_contain_text("permanent failure requested")
    error.locator("summary").click()
    expect(error.locator("pre")).to_contain_text("NonRetryableError")
    assert page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    ), "the traceback must not widen the page"
    shoot(page, "status-failed.png")
    row.get_by_role("button", name="Complete by hand…").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Complete by hand")
    page.get_by_label("Output (JSON)").fill('{"tenant": "acct-globex.eu-west", "databases": 1}')
    page.get_by_label("Reason").fill("Provisioned by hand in the console (ticket OPS-88)")
    shoot(page, "status-confirm.png")
    page.get_by_role("button", name=re.compile("^Yes")).click()
    expect(page.locator(".msg-success")).to_contain_text("completed by hand")
    expect(page.locator("#instance-state")).to_have_text("Succeeded", timeout=30_000)
    steps = steps_of(instance)
    assert steps["provision_infrastructure"].output["tenant"] == "acct-globex.eu-west"
    assert steps["enable_billing"].state == "succeeded"


@pytest.mark.docs  # not part of `make test`: `pytest -m docs` refreshes docs/*.png
def test_docs_screenshots(
    page: Page, live_server: Any, operator: Any, django_user_model: Any
) -> None:
    """The operators' screenshots of README.md, from instances moved on in-process."""
    DOCS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1360, "height": 900})
    base = live_server.url
    ada = django_user_model.objects.create_user("ada", password="pw-ada-12345")

    def onboarding(customer: str, key: str, **extra: Any) -> WorkflowInstance:
        return engine.instance_start(
            **ONBOARDING,
            input={"customer": customer, "plan": "team", **extra},
            business_key=key,
            started_by=ada,
        )[0]

    done = []
    for customer, key in [("Initech", "CUST-1031"), ("Umbrella", "CUST-1034")]:
        instance = onboarding(customer, key)
        run_ready(instance)
        done.append(instance)
    failed = onboarding("Globex", "CUST-1043", fail_permanently="provision_infrastructure")
    run_ready(failed)
    # running: create_account done, provisioning in flight, the welcome mail waiting to retry
    running = onboarding("Acme Corp", "CUST-1042", fail_times={"send_welcome_email": 2})
    steps = steps_of(running)
    engine.step_execute(step_run_id=steps["create_account"].pk, attempt=1)
    steps = steps_of(running)
    engine.step_execute(step_run_id=steps["send_welcome_email"].pk, attempt=1)
    engine.step_claim(step_run_id=steps["provision_infrastructure"].pk, attempt=1)
    flaky, _ = engine.instance_start(
        workflow="t_flaky", input={"fail_times": 3}, business_key="SYNC-7"
    )
    engine.step_execute(step_run_id=steps_of(flaky)["call"].pk, attempt=1)
    parallel, _ = engine.instance_start(workflow="t_parallel", business_key="BATCH-2026-11")
    run_ready(parallel)
    managers, _ = Group.objects.get_or_create(name="managers")
    managers.user_set.add(django_user_model.objects.create_user("bob", password="pw-bob-1234"))
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    expense, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 86.4, "currency": "EUR", "description": "Taxi", "requester": "alice"},
        business_key="EXP-2026-0142",
    )
    engine.step_execute(step_run_id=steps_of(expense)["validate"].pk, attempt=1)
    # backdate a little so the ages read naturally
    for minutes, instance in [(95, done[0]), (64, done[1]), (12, parallel)]:
        WorkflowInstance.objects.filter(pk=instance.pk).update(
            created_at=instance.created_at - timezone.timedelta(minutes=minutes)
        )

    log_in(page, base, operator)
    page.goto(f"{base}/instances/{running.pk}/")
    expect(page.locator("#instance-state")).to_have_text("Running")
    page.locator("#live").evaluate("el => el.setAttribute('data-open', '0')")  # hold still
    page.screenshot(path=str(DOCS / "status-running.png"), full_page=True)

    page.goto(f"{base}/instances/{failed.pk}/")
    page.locator("#step-provision_infrastructure-error summary").click()
    page.screenshot(path=str(DOCS / "status-failed.png"), full_page=True)

    page.set_viewport_size({"width": 1440, "height": 760})
    page.goto(f"{base}/admin/orchestration/workflowinstance/")
    if page.locator("#nav-sidebar").is_visible():
        page.locator("#toggle-nav-sidebar").click()  # remembered for the next pages
        page.reload()
    page.locator("#searchbar").blur()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(DOCS / "admin-instances.png"))
    # a bulk action on the whole list: a confirmation, then a report of what was refused
    page.locator("#action-toggle").check()
    page.locator("select[name=action]").select_option("op_pause")
    page.locator("button[name=index]").click()
    expect(page.locator(".so-question")).to_be_visible()
    page.set_viewport_size({"width": 1440, "height": 560})
    page.screenshot(path=str(DOCS / "admin-confirm.png"))
    page.get_by_role("button", name=re.compile("Yes")).click()
    expect(page.locator("ul.messagelist")).to_contain_text("refused")
    page.set_viewport_size({"width": 1440, "height": 760})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(DOCS / "admin-bulk-report.png"))
    for instance in WorkflowInstance.objects.filter(paused_at__isnull=False):
        engine.instance_unpause(instance_id=instance.pk, actor="user:oper")

    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{base}/admin/orchestration/workflowinstance/{failed.pk}/change/")
    page.locator(".so-tb summary").first.click()
    page.screenshot(path=str(DOCS / "admin-instance.png"), full_page=True)

    fragile = StepRun.objects.get(instance=failed, name="provision_infrastructure")
    page.goto(
        f"{base}/admin/orchestration/workflowinstance/{failed.pk}/steps/{fragile.pk}/complete/"
    )
    page.get_by_label("Output (JSON)").fill('{"tenant": "acct-globex.eu-west", "databases": 1}')
    page.get_by_label("Reason").fill("Provisioned by hand in the console (ticket OPS-88)")
    page.set_viewport_size({"width": 1440, "height": 560})
    page.screenshot(path=str(DOCS / "admin-skip-step.png"))
    page.set_viewport_size({"width": 1360, "height": 900})
    page.get_by_role("button", name=re.compile("Yes")).click()
    run_ready(failed)
    assert refresh(failed).state == "succeeded"
    page.goto(f"{base}/instances/{failed.pk}/")
    expect(page.locator("#instance-state")).to_have_text("Succeeded")
    page.screenshot(path=str(DOCS / "status-succeeded.png"), full_page=True)
