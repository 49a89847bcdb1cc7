"""Personal links in outbound mail: the outbox stores a placeholder and a reference, the
registered minter makes the link at delivery (once per attempt, under the row's lock), and the
body with the link is sent, never saved. Tested with a minter of the test's own: integrations
knows nothing of approvals."""

from __future__ import annotations

import ast
import smtplib
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from integrations import mail
from integrations.models import OutboundEmail

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def minted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A registered minter ``test.link`` that records each call (and whether it ran under the
    row's lock, in a transaction) and returns a new URL each time."""
    calls: list[dict[str, Any]] = []

    def mint(ref: dict[str, Any]) -> str:
        calls.append({**ref, "in_transaction": connection.in_atomic_block})
        return f"https://links.example/l/{len(calls)}/?who={ref['who']}&n={len(calls)}"

    monkeypatch.setitem(mail._link_minters, "test.link", mint)
    return calls


def queue(title: str = "Taxi", *, message_id: str = "<p1@test>") -> OutboundEmail:
    return mail.email_queue(
        message_id=message_id,
        kind="test",
        to=["ann@example.com"],
        template="approval_reminder",
        context={"request": {"title": title, "fields": []}, "user": None},
        link_ref={"minter": "test.link", "who": "ann"},
    )


def stored(email: OutboundEmail) -> str:
    email.refresh_from_db()
    return " ".join(
        str(v) for v in OutboundEmail.objects.filter(pk=email.pk).values().get().values()
    )


def test_the_row_keeps_a_placeholder_and_the_sent_mail_carries_the_minted_link(
    smtp_server: Any, minted: list[dict[str, Any]]
) -> None:
    email = queue()
    assert mail.LINK_PLACEHOLDER in email.body_text
    assert f'href="{mail.LINK_PLACEHOLDER}"' in email.body_html
    assert email.link_ref == {"minter": "test.link", "who": "ann"}
    assert minted == []  # nothing is made before delivery

    assert mail.email_deliver(email_id=email.pk) == "sent"
    assert minted == [{"minter": "test.link", "who": "ann", "in_transaction": True}]
    (message,) = smtp_server.messages
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert "https://links.example/l/1/?who=ann&n=1" in text
    assert 'href="https://links.example/l/1/?who=ann&amp;n=1"' in html  # escaped for HTML
    assert mail.LINK_PLACEHOLDER not in text + html
    # what stays behind is the placeholder, never the link
    row = stored(email)
    assert "links.example" not in row and mail.LINK_PLACEHOLDER in row
    assert email.status == "sent"

    # a repeated task: nothing sent, nothing made
    assert mail.email_deliver(email_id=email.pk) == "skipped"
    assert len(smtp_server.messages) == 1 and len(minted) == 1


def test_a_placeholder_written_into_the_content_never_becomes_a_link(
    smtp_server: Any, minted: list[dict[str, Any]]
) -> None:
    email = queue(title=f"Pay me {mail.LINK_PLACEHOLDER} now")
    assert email.body_text.count(mail.LINK_PLACEHOLDER) == 1  # the template's, only
    assert f"Pay me {mail.LINK_PLACEHOLDER_DEFUSED} now" in email.body_text
    assert mail.LINK_PLACEHOLDER not in email.subject
    mail.email_deliver(email_id=email.pk)
    text = smtp_server.messages[0].get_body(preferencelist=("plain",)).get_content()
    assert text.count("https://links.example/") == 1
    assert f"Pay me {mail.LINK_PLACEHOLDER_DEFUSED} now" in text


def test_a_mail_without_a_link_ref_is_sent_as_stored(
    smtp_server: Any, minted: list[dict[str, Any]]
) -> None:
    email = mail.email_queue(
        message_id="<plain@test>",
        kind="test",
        to=["ann@example.com"],
        template="approval_reminder",
        context={"request": {"title": "T", "fields": []}, "link": "https://fixed.example/"},
    )
    assert email.link_ref is None and "https://fixed.example/" in email.body_text
    assert mail.email_deliver(email_id=email.pk) == "sent"
    assert minted == []
    assert "https://fixed.example/" in smtp_server.messages[0].get_body(("plain",)).get_content()


def test_each_attempt_asks_for_its_own_link_and_a_retry_sends_the_new_one(
    smtp_server: Any, minted: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    email = queue()
    real = mail.EmailMultiAlternatives.send
    tried: list[str] = []

    def flaky(self: Any, *args: Any, **kwargs: Any) -> int:
        tried.append(self.body)
        if len(tried) == 1:
            raise smtplib.SMTPServerDisconnected("connection lost after DATA")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mail.EmailMultiAlternatives, "send", flaky)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        mail.email_deliver(email_id=email.pk)
    email.refresh_from_db()
    assert (email.status, email.attempts, len(minted)) == ("queued", 1, 1)
    assert "links.example" not in stored(email)

    assert mail.email_deliver(email_id=email.pk) == "sent"
    assert len(minted) == 2
    assert "/l/1/" in tried[0] and "/l/2/" in tried[1]
    assert "/l/2/" in smtp_server.messages[0].get_body(("plain",)).get_content()
    assert "links.example" not in stored(email)


def test_a_row_whose_minter_is_gone_fails_visibly_and_sends_nothing(
    smtp_server: Any, minted: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    email = queue()
    monkeypatch.delitem(mail._link_minters, "test.link")
    assert mail.emails_deliver(email_ids=[email.pk])["failed"] == [email.pk]
    email.refresh_from_db()
    assert email.status == "failed" and "test.link" in email.last_error
    assert smtp_server.messages == []


def test_queueing_for_an_unknown_minter_is_refused() -> None:
    with pytest.raises(ValueError, match="no.such"):
        mail.email_queue(
            message_id="<x@test>",
            kind="test",
            to=["ann@example.com"],
            template="approval_reminder",
            context={"request": {"title": "T", "fields": []}},
            link_ref={"minter": "no.such"},
        )
    assert not OutboundEmail.objects.exists()


def test_integrations_imports_nothing_of_approvals() -> None:
    """The hook's reason to exist: approvals may call integrations, never the reverse."""
    for path in (ROOT / "integrations").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] == "approvals"], path
        assert 'get_model("approvals"' not in path.read_text(), path


def test_the_migration_scrubs_live_links_from_rows_written_before() -> None:
    import importlib

    from django.apps import apps
    from django.utils import timezone

    live = "http://127.0.0.1:8000/a/AbC-d_e:1tQx2y:Zz-9_Q/"
    body = f"Review and decide:\n{live}\n\nOr decide in your inbox"
    html = f'<a href="{live}">Review and decide</a>'
    rows = {
        status: OutboundEmail.objects.create(
            message_id=f"<old.{status}@test>",
            kind="approval_assigned",
            to=["ann@example.com"],
            subject="Approval needed",
            body_text=body,
            body_html=html,
            status=status,
            created_at=timezone.now(),
            request_id=42,
        )
        for status in ("queued", "sent", "failed")
    }
    untouched = mail.email_queue(
        message_id="<new@test>",
        kind="test",
        to=["bob@example.com"],
        template="approval_reminder",
        context={"request": {"title": "T", "fields": []}, "link": "https://x.example/inbox/"},
    )
    migration = importlib.import_module("integrations.migrations.0004_outbox_link_ref")
    migration.scrub_live_links(apps, None)
    for status, row in rows.items():
        row.refresh_from_db()
        assert "/a/" not in row.body_text + row.body_html
        shown = "http://127.0.0.1:8000/inbox/42/" if status == "queued" else mail.LINK_PLACEHOLDER
        assert row.body_text == f"Review and decide:\n{shown}\n\nOr decide in your inbox"
        assert row.body_html == f'<a href="{shown}">Review and decide</a>'
    before = untouched.body_text
    untouched.refresh_from_db()
    assert untouched.body_text == before
