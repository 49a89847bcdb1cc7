"""Every finished screen fits its viewport: the admin instance list and change page, the inbox
and the status page at 1280 px, and the status page, the inbox and a request at 390 px (a
phone). Headless Chromium (Debian's) through Playwright against the live server; the steps
are played in-process, so no worker is needed (about 15 s for both tests).

Each screen is shot to tests/artifacts/screen-<name>-<width>.png (git-ignored) and must be
exactly as wide as the viewport: ``scrollWidth == clientWidth``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client
from playwright.sync_api import Page, expect

from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.models import StepRun
from tests.approvals.conftest import expense_input
from tests.orchestration.test_engine import run_ready

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def screens(django_user_model: Any, rung: list) -> dict[str, Any]:
    """A superuser, bob the manager, two expenses waiting for bob and a failed onboarding with
    a long business key (operations, an error row and a wide graph). No doorbell leaves the
    process (``rung``): a worker left running by another test must not take the steps."""
    ops = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-123")
    alice = django_user_model.objects.create_user("alice", email="alice@example.com")
    bob = django_user_model.objects.create_user("bob", email="bob@example.com")
    Group.objects.get_or_create(name="managers")[0].user_set.add(bob)
    Group.objects.get_or_create(name="finance")
    requests = []
    for amount, description in [(1840, "Laptop for the new designer"), (86.4, "Taxi")]:
        instance, _ = engine.instance_start(
            workflow="expense_approval",
            input=expense_input(amount, description),
            business_key=f"EXP-2026-{int(amount):04d}",
            started_by=alice,
        )
        validate = StepRun.objects.get(instance=instance, name="validate")
        assert engine.step_execute(step_run_id=validate.pk, attempt=1) == "succeeded"
        requests.append(ApprovalRequest.objects.get(instance=instance))
    failed, _ = engine.instance_start(
        workflow="customer_onboarding",
        version=1,
        input={
            "customer": "Acme Corporation International Holdings",
            "plan": "enterprise",
            "fail_permanently": "provision_infrastructure",
        },
        business_key="CUSTOMER-ONBOARDING-ACME-CORPORATION-INTERNATIONAL-2026",
        started_by=ops,
    )
    run_ready(failed)
    return {"ops": ops, "bob": bob, "requests": requests, "failed": failed}


def log_in(page: Page, base: str, user: Any) -> None:
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "url": base}]
    )


def fits(page: Page, name: str) -> None:
    """Shoot the page, then check that it is exactly as wide as the viewport."""
    ARTIFACTS.mkdir(exist_ok=True)
    width = page.viewport_size["width"]
    page.screenshot(path=str(ARTIFACTS / f"screen-{name}-{width}.png"), full_page=True)
    scroll, client = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert (scroll, client) == (width, width), f"{name} at {width} px is {scroll} px wide"


def box(page: Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not shown"
    return found


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def inside_viewport(page: Page, selector: str) -> None:
    """Every matching element starts and ends within the page's width (reachable without
    scrolling the page sideways; a container of its own may scroll)."""
    width = page.viewport_size["width"]
    for element in page.locator(selector).all():
        element.scroll_into_view_if_needed()
        found = element.bounding_box()
        assert found is not None
        assert found["x"] >= 0 and found["x"] + found["width"] <= width, (
            f"{selector} at x={found['x']:.0f}..{found['x'] + found['width']:.0f}"
        )


def test_desktop_screens_fit_1280(page: Page, live_server: Any, screens: dict[str, Any]) -> None:
    page.set_viewport_size(DESKTOP)
    base = live_server.url
    failed = screens["failed"]
    log_in(page, base, screens["ops"])

    page.goto(f"{base}/admin/orchestration/workflowinstance/")
    expect(page.locator("#result_list")).to_be_visible()
    fits(page, "admin-instances")

    page.goto(f"{base}/admin/orchestration/workflowinstance/{failed.pk}/change/")
    expect(page.locator(".object-tools")).to_be_visible()
    fits(page, "admin-instance")
    # The operation buttons cover neither the title nor the object's name under it.
    titles = [box(page, "#content > h1"), box(page, "#content > h2")]
    tools = page.locator(".object-tools li")
    expect(tools.filter(has_text="Retry failed steps")).to_have_count(1)
    for tool in tools.all():
        found = tool.bounding_box()
        assert found is not None
        for title in titles:
            assert not overlaps(found, title), f"{tool.inner_text()!r} covers the title"

    page.goto(f"{base}/instances/{failed.pk}/")
    expect(page.locator("svg.wf-graph g.step")).to_have_count(4)
    fits(page, "status")

    log_in(page, base, screens["bob"])
    page.goto(f"{base}/inbox/")
    expect(page.locator(".request")).to_have_count(2)
    fits(page, "inbox")


def test_phone_screens_fit_390(page: Page, live_server: Any, screens: dict[str, Any]) -> None:
    page.set_viewport_size(PHONE)
    base = live_server.url
    failed = screens["failed"]
    log_in(page, base, screens["ops"])

    page.goto(f"{base}/instances/{failed.pk}/")
    expect(page.locator("svg.wf-graph g.step")).to_have_count(4)
    fits(page, "status")
    inside_viewport(page, ".st-op-buttons .btn")
    # The steps table scrolls inside its own box; its actions are reachable there.
    wrap = box(page, ".st-table-wrap")
    assert wrap["x"] >= 0 and wrap["x"] + wrap["width"] <= PHONE["width"]
    retry = page.locator("#step-provision_infrastructure .st-row-actions .btn").first
    retry.scroll_into_view_if_needed()
    found = retry.bounding_box()
    assert found is not None and found["x"] + found["width"] <= PHONE["width"]
    # The graph keeps a readable size (its smallest label at least 10 px on screen) and
    # scrolls sideways inside its card rather than widening the page.
    smallest = page.evaluate(
        """() => { const svg = document.querySelector('svg.wf-graph');
                   const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
                   const sizes = [...svg.querySelectorAll('text')]
                       .map(t => parseFloat(getComputedStyle(t).fontSize));
                   return Math.min(...sizes) * scale; }"""
    )
    assert smallest >= 10, f"the graph's smallest label is {smallest:.1f} px"
    card = box(page, ".st-graph")
    assert card["x"] >= 0 and card["x"] + card["width"] <= PHONE["width"]

    log_in(page, base, screens["bob"])
    page.goto(f"{base}/inbox/")
    expect(page.locator(".request")).to_have_count(2)
    fits(page, "inbox")
    page.goto(f"{base}/inbox/{screens['requests'][0].pk}/")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    fits(page, "request")


def test_refused_bulk_reject_comes_back_with_the_same_ticks(
    page: Page, live_server: Any, screens: dict[str, Any]
) -> None:
    page.set_viewport_size(PHONE)
    base = live_server.url
    laptop, taxi = screens["requests"]
    log_in(page, base, screens["bob"])
    page.goto(f"{base}/inbox/")
    page.locator(f"#pick-{taxi.pk}").check()
    page.get_by_role("button", name="Reject selected").click()
    expect(page.locator(".msg-error")).to_contain_text("a comment is required to reject")
    expect(page.locator(f"#pick-{taxi.pk}")).to_be_checked()
    expect(page.locator(f"#pick-{laptop.pk}")).not_to_be_checked()
    fits(page, "inbox-refused")
    page.get_by_label("Comment").fill("No taxis this quarter.")
    page.get_by_role("button", name="Reject selected").click()
    expect(page.locator(".msg-success")).to_contain_text("Rejected 1")
    expect(page.locator(".request")).to_have_count(1)


def test_failures_page_fits_1280(page: Page, live_server: Any, screens: dict[str, Any]) -> None:
    """The admin's Failures page, with a long unbroken message and a long workflow name, and
    its "retry all" confirmation, fit 1280 px."""
    from tests.orchestration.test_failures import failed_rows

    failed_rows(12, message="order {i} not found (request {id}) " + "x" * 400)
    failed_rows(3, workflow="a_workflow_with_a_rather_long_name_for_a_column", step="s" * 90)
    page.set_viewport_size(DESKTOP)
    base = live_server.url
    log_in(page, base, screens["ops"])
    page.goto(f"{base}/admin/orchestration/failuregroupproxy/")
    expect(page.locator("tr.so-group")).to_have_count(3)
    expect(page.locator("tr.so-group").first).to_have_attribute("data-count", "12")
    fits(page, "admin-failures")
    inside_viewport(page, ".so-retry-group")
    page.locator(".so-retry-group").first.click()
    expect(page.locator(".so-question")).to_contain_text("Retry every failed instance")
    fits(page, "admin-failures-retry")
