"""Accessible pages: every page a person uses passes axe-core's WCAG 2.1 A and AA rules with no
violation, in English and in German, and every action is reachable by keyboard with a visible
focus. Debian's headless Chromium through Playwright against the live server; axe-core is the
npm package vendored into build/axe by `make axe` (`make test` runs it first), injected from
that file: nothing is fetched while the tests run. The steps are played in-process (no worker).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from playwright.sync_api import Page, expect

from approvals import claims, mail_preferences, notifications
from approvals.models import ApprovalRequest, Decision

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AXE_JS = Path(settings.BASE_DIR) / "build" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE_JS.exists():
        pytest.fail(f"{AXE_JS} is missing: run `make axe` (make test does it first)")
    return AXE_JS.read_text()


def violations(page: Page, axe_source: str) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.1 AA violations on the page as it is now."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=axe_source)
    result = page.evaluate(
        "(tags) => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG_21_AA
    )
    return result["violations"]


def readable(page: Page, axe_source: str) -> list[dict[str, Any]]:
    found = violations(page, axe_source)
    return [
        {
            "rule": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
            "why": [n["failureSummary"] for n in v["nodes"]][:2],
        }
        for v in found
    ]


def assert_accessible(page: Page, axe_source: str, what: str) -> None:
    found = readable(page, axe_source)
    assert found == [], f"{what}: {json.dumps(found, indent=1)}"


def log_in(page: Page, base: str, user: Any) -> None:
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "url": base}]
    )


@pytest.fixture
def world(
    people: dict[str, Any], expense: Callable[..., ApprovalRequest], rung: list
) -> dict[str, Any]:
    """Two expenses waiting for bob (one claimed by dave), a comment, a delegation, and a
    preference: every part of the pages shows. No doorbell leaves the process (``rung``)."""
    Group.objects.get_or_create(name="employees")[0].user_set.add(people["alice"])
    laptop = expense(1840, "Laptop for the new designer", business_key="EXP-2026-0001")
    taxi = expense(86.4, "Taxi", business_key="EXP-2026-0002")
    claims.approval_claim(request_id=taxi.pk, user=people["dave"])
    mail_preferences.mail_preference_set(user=people["carol"], mode="digest", digest_hour=9)
    return {"laptop": laptop, "taxi": taxi, **people}


PAGES = [
    ("bob", "/inbox/", "Inbox"),
    ("bob", "/inbox/?state=all", "Inbox"),
    ("bob", "/inbox/{laptop}/", "Laptop"),
    ("bob", "/inbox/{taxi}/", "Taxi"),
    ("bob", "/inbox/delegation/", "Out of office"),
    ("bob", "/inbox/preferences/", "Preferences"),
    ("alice", "/instances/{instance}/", "expense_approval"),
    ("alice", "/requests/", "My requests"),
    ("alice", "/start/", "Start a request"),
    ("alice", "/start/expense_approval/", "Your request"),
    (None, "/accounts/login/", "Log in"),
    (None, "/", "Durable workflows"),
]


@pytest.mark.parametrize("language", ["en", "de"])
def test_every_page_passes_axe_wcag_21_aa(
    page: Page, live_server: Any, world: dict[str, Any], axe_source: str, language: str
) -> None:
    base = live_server.url
    page.set_viewport_size({"width": 1280, "height": 900})
    page.set_extra_http_headers({"Accept-Language": language})
    ids = {
        "laptop": world["laptop"].pk,
        "taxi": world["taxi"].pk,
        "instance": world["laptop"].instance_id,
    }
    found = {}
    for who, path, _ in PAGES:
        page.context.clear_cookies()
        if who:
            log_in(page, base, world[who])
        url = base + path.format(**ids)
        response = page.goto(url)
        assert response is not None and response.status == 200, url
        expect(page.locator("html")).to_have_attribute("lang", language)
        if problems := readable(page, axe_source):
            found[path] = problems
    assert found == {}, json.dumps(found, indent=1)


def test_the_email_link_pages_pass_axe(
    page: Page, live_server: Any, world: dict[str, Any], axe_source: str
) -> None:
    base = live_server.url
    page.set_viewport_size({"width": 1280, "height": 900})
    laptop = world["laptop"]
    token = notifications.token_issue(laptop, world["bob"], timezone.now(), "assigned")
    page.goto(f"{base}/a/{token}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Laptop")
    assert_accessible(page, axe_source, "action link: confirm")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Thank you — your decision was recorded"
    )
    assert_accessible(page, axe_source, "action link: done")
    page.goto(f"{base}/a/{token}/")  # used: refused
    assert_accessible(page, axe_source, "action link: refused")
    page.goto(f"{base}/a/not-a-token/")
    assert_accessible(page, axe_source, "action link: invalid")
    link = mail_preferences.preferences_url(world["carol"].pk).split("/mail/", 1)[1]
    page.goto(f"{base}/mail/{link}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Your mail from Signoff")
    assert_accessible(page, axe_source, "preferences link")
    page.get_by_role("button", name="Send each mail at once").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    assert_accessible(page, axe_source, "preferences link: saved")
    page.goto(f"{base}/mail/tampered/")
    assert_accessible(page, axe_source, "preferences link: refused")


def test_a_page_with_errors_and_messages_passes_axe(
    page: Page, live_server: Any, world: dict[str, Any], axe_source: str
) -> None:
    """The refusals and the messages (role=alert/status) are accessible too."""
    base = live_server.url
    log_in(page, base, world["bob"])
    page.goto(f"{base}/inbox/preferences/")
    page.select_option("#id_time_zone", "Europe/Berlin")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".messages")).to_contain_text("Saved")
    assert_accessible(page, axe_source, "preferences saved")
    page.goto(f"{base}/inbox/delegation/")
    page.get_by_label("Delegate").fill("nobody-at-all")
    page.get_by_role("button", name="Save delegation").click()
    assert_accessible(page, axe_source, "delegation refused")
    page.goto(f"{base}/inbox/{world['laptop'].pk}/")
    page.get_by_role("button", name="Reject").click()  # no comment: the browser asks
    assert_accessible(page, axe_source, "detail after a refused rejection")


# -- keyboard ----------------------------------------------------------------------------------

FOCUS_STYLE = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  return {
    tag: el.tagName.toLowerCase(),
    name: (el.innerText || el.value || el.getAttribute('aria-label') || '').trim().slice(0, 60),
    focusVisible: el.matches(':focus-visible') || el.matches(':focus-within'),
    type: el.type || '',
    id: el.id,
    outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
    outlineColor: style.outlineColor,
  };
}"""


def tab_to(page: Page, matches: Callable[[dict[str, Any]], bool], limit: int = 80) -> list:
    """Press Tab until the focused element matches; every stop on the way must show a visible
    focus (:focus-visible with an outline of at least 2 px). Returns the stops."""
    stops = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        here = page.evaluate(FOCUS_STYLE)
        stops.append(here)
        assert here["focusVisible"] and here["outline"], f"no visible focus on {here}"
        if matches(here):
            return stops
    raise AssertionError(f"not reached by Tab in {limit} presses: {stops[-5:]}")


def test_the_approve_button_is_reached_by_keyboard_with_a_visible_focus_and_decides(
    page: Page, live_server: Any, world: dict[str, Any]
) -> None:
    base = live_server.url
    page.set_viewport_size({"width": 1280, "height": 900})
    log_in(page, base, world["bob"])
    laptop = world["laptop"]
    page.goto(f"{base}/inbox/{laptop.pk}/")
    stops = tab_to(page, lambda s: s["tag"] == "button" and s["name"] == "Approve")
    assert any(s["name"] == "Inbox" or s["name"].startswith("Inbox") for s in stops)
    approve = page.get_by_role("button", name="Approve", exact=True)
    expect(approve).to_be_focused()
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineColor")
    assert outline not in ("transparent", "rgba(0, 0, 0, 0)")
    page.keyboard.press("Enter")  # the keyboard decides, as a click would
    expect(page.locator(".messages")).to_contain_text("Approved")
    assert Decision.objects.filter(request=laptop, outcome="approve").exists()
    assert ApprovalRequest.objects.get(pk=laptop.pk).state == "approved"


@pytest.mark.parametrize(
    ("who", "path", "target"),
    [
        ("bob", "/inbox/", lambda s: s["name"] == "Approve selected"),
        ("bob", "/inbox/delegation/", lambda s: s["name"] == "Save delegation"),
        ("bob", "/inbox/preferences/", lambda s: s["name"] == "Save"),
        ("alice", "/requests/", lambda s: s["tag"] == "a" and "Laptop" in s["name"]),
        ("alice", "/start/expense_approval/", lambda s: s["name"] == "Submit"),
        ("alice", "/instances/{instance}/", lambda s: s["name"] == "CSV"),
    ],
)
def test_every_action_is_reached_by_keyboard_with_a_visible_focus(
    page: Page, live_server: Any, world: dict[str, Any], who: str, path: str, target: Any
) -> None:
    base = live_server.url
    page.set_viewport_size({"width": 1280, "height": 900})
    log_in(page, base, world[who])
    page.goto(base + path.format(instance=world["laptop"].instance_id))
    stops = tab_to(page, target, limit=200)
    assert len(stops) > 3


@pytest.mark.docs  # not part of `make test`: `pytest -m docs` refreshes docs/inbox-de.png
def test_docs_screenshot_of_the_german_inbox(
    page: Page, live_server: Any, world: dict[str, Any], axe_source: str
) -> None:
    """README's German inbox: bob chose German and Berlin time."""
    mail_preferences.mail_preference_set(
        user=world["bob"], mode="immediate", language="de", time_zone="Europe/Berlin"
    )
    page.set_viewport_size({"width": 1280, "height": 800})
    log_in(page, live_server.url, world["bob"])
    page.goto(f"{live_server.url}/inbox/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Posteingang")
    assert_accessible(page, axe_source, "German inbox")
    page.screenshot(path=str(Path(settings.BASE_DIR) / "docs" / "inbox-de.png"))
