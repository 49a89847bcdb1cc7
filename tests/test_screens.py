"""The finishing touches of the screens that need no browser: a favicon, a home page naming the
host it was reached on, and start-up banners that say who may log in where."""

from __future__ import annotations

import io
import re

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from orchestration.management.commands.runall import up_banner

pytestmark = pytest.mark.django_db


# -- favicon ---------------------------------------------------------------------------------


def test_favicon_ico_redirects_to_the_svg_icon_which_is_served(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    icon = client.get(response["Location"])
    assert icon.status_code == 200
    assert icon["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in b"".join(icon.streaming_content)


@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/admin/login/"])
def test_pages_link_the_favicon(client: Client, path: str) -> None:
    page = client.get(path).content.decode()
    assert re.search(r'<link rel="icon" href="[^"]*/approvals/favicon\.svg"', page), path


def test_admin_pages_link_the_favicon(admin_client: Client) -> None:
    page = admin_client.get("/admin/orchestration/workflowinstance/").content.decode()
    assert 'rel="icon"' in page


# -- home page -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "secure", "expected"),
    [
        ("testserver:9000", False, "http://testserver:9000/api/v1/instances/"),
        ("signoff.example.com", True, "https://signoff.example.com/api/v1/instances/"),
    ],
)
def test_home_page_example_names_the_host_and_port_it_was_reached_on(
    client: Client, settings, host: str, secure: bool, expected: str
) -> None:
    settings.ALLOWED_HOSTS = ["testserver", "signoff.example.com"]
    page = client.get("/", HTTP_HOST=host, secure=secure).content.decode()
    assert f"curl -X POST {expected} " in page
    assert "127.0.0.1:8000" not in page


# -- banners ---------------------------------------------------------------------------------


def test_seed_demo_banner_sends_staff_to_the_admin_and_everyone_to_the_inbox() -> None:
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    banner = out.getvalue()
    base = settings.SIGNOFF_BASE_URL
    inbox = re.search(rf"inbox\s+{re.escape(base)}/inbox/\s+everyone: (.+)", banner)
    admin = re.search(rf"admin\s+{re.escape(base)}/admin/\s+staff only: (.+)", banner)
    assert inbox and admin, banner
    assert inbox.group(1) == (
        "admin, alice (employees), bob (employees, managers), carol (employees, finance)"
    )
    assert admin.group(1) == "admin"
    assert not re.search(r"/admin/ as .*alice", banner)  # the old, false promise

    # The banner tells the truth: each named user gets through the door it names.
    for name in ["admin", "alice", "bob", "carol"]:
        client = Client()
        assert client.login(username=name, password=settings.DEMO_PASSWORD)
        assert client.get("/inbox/").status_code == 200, name
        admin_index = client.get("/admin/")
        if name == "admin":
            assert admin_index.status_code == 200
        else:
            assert admin_index.status_code == 302, name
            assert admin_index["Location"].startswith("/admin/login/")


def test_runall_banner_names_the_inbox_for_everyone_and_the_admin_for_staff() -> None:
    banner = up_banner("http://127.0.0.1:9000", "default")
    assert banner.startswith("Signoff is up on http://127.0.0.1:9000/ ")
    assert "Inbox: http://127.0.0.1:9000/inbox/ (every user)" in banner
    assert "Admin: http://127.0.0.1:9000/admin/ (staff only)" in banner
    assert banner.endswith("Ctrl-C stops all of it.")
