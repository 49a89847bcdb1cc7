"""Mail templates with hostile text: a title, a field, a comment or a name taken from workflow
input can neither add markup or links to an approver's mail nor break its subject line.

Every template under templates/email/ is rendered with the same hostile values and its HTML
is parsed (``html.parser``): the only tags are the layout's own and the only links ours.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group

from approvals.models import ApprovalRequest
from integrations import mail
from integrations.mail import LINK_PLACEHOLDER
from integrations.models import OutboundEmail
from integrations.templatetags.mailtext import oneline
from orchestration import engine
from orchestration.models import StepRun

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "email"
MAILS = sorted(p.stem for p in TEMPLATES.glob("approval_*.txt"))

BASE = "https://signoff.example"
LINK = f"{BASE}/a/our-own-token/"
INBOX = f"{BASE}/inbox/7/"
REVISE = f"{BASE}/inbox/7/revise/"
OUR_LINKS = {LINK, INBOX, REVISE, f"{BASE}/inbox/"}

HOSTILE = [
    '<a href="https://evil.example/pay">Approve here</a>',
    "</title><script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    '" onmouseover="alert(3)',
    "Taxi\r\nBcc: victim@example.com\n\nReview and decide: https://evil.example/x",
    "Split\u2028line\x0bwith\x85breaks",
    "{{ link }} {% now 'Y' %} {# x #}",
]
TAGS = {"html", "head", "meta", "title", "body", "table", "tr", "td", "p", "a", "strong"}
TAGS |= {"blockquote"}


class Parsed(HTMLParser):
    """Tags, attributes, links and the <title> text of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title = ""
        self._in_title = False
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        self.text.append(data)

    @property
    def links(self) -> set[str]:
        return {a.get("href") or "" for t, a in self.tags if t == "a"} | {
            a.get("src") or "" for _, a in self.tags if "src" in a
        }


class Person:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_username(self) -> str:
        return self.name


def context_with(hostile: str, name: str = "") -> dict[str, Any]:
    request = {
        "title": f"Expense: 80 EUR for {hostile}",
        "fields": [
            {"label": "Description", "value": hostile},
            {"label": hostile, "value": 80},
        ],
        "due_at": None,
        "workflow": hostile,
    }
    return {
        "request": request,
        # approval_digest: the pending requests, each with its inbox page
        "items": [{"request": request, "inbox_url": INBOX, "overdue": True}],
        "total": 1,
        "more": 0,
        "time_zone": "Europe/Berlin",
        "user": Person(f"bob{hostile}"),
        "link": LINK,
        "inbox_url": INBOX,
        "base_url": BASE,
        "level": 1,
        "action": hostile,
        "outcome": {"decision": "rejected", "decided_by": [hostile], "comments": [hostile]},
        # approval_changes_requested: who sent it back, their comment, the revise page
        "by": hostile,
        "comment": {"body": hostile} if name == "approval_commented" else hostile,
        "revise_url": REVISE,
        # approval_decided: the step; approval_commented: who wrote what; approval_finished
        "step": hostile,
        "author": hostile,
        "role": hostile,
        "ending": hostile,
        "summary": hostile,
        "detail": hostile,
    }


def test_every_mail_template_is_covered() -> None:
    assert MAILS == [
        "approval_assigned",
        "approval_changes_requested",
        "approval_commented",
        "approval_decided",
        "approval_digest",
        "approval_escalated",
        "approval_expired",
        "approval_finished",
        "approval_reminder",
    ]
    for name in MAILS:
        assert (TEMPLATES / f"{name}.html").exists(), name


def test_no_mail_template_marks_input_safe() -> None:
    """``|safe`` and autoescape-off belong only where the code built the text itself: no HTML
    mail template has either."""
    for path in TEMPLATES.glob("*.html"):
        source = path.read_text()
        assert "|safe" not in source, path.name
        assert "autoescape off" not in source, path.name
        assert "safeseq" not in source, path.name


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("name", MAILS)
def test_hostile_text_is_escaped_in_the_html_and_adds_no_tag_or_link(name, hostile) -> None:
    subject, text, html = mail.email_render(template=name, context=context_with(hostile, name))
    parsed = Parsed(html)
    assert {tag for tag, _ in parsed.tags} <= TAGS, sorted({t for t, _ in parsed.tags} - TAGS)
    for tag, attrs in parsed.tags:
        assert not any(key.startswith("on") for key in attrs), (tag, attrs)
    assert parsed.links <= OUR_LINKS, parsed.links - OUR_LINKS
    # The hostile text is there, as text (on one line in titles and fields).
    shown = "".join(parsed.text)
    assert oneline(hostile) in shown or hostile in shown
    if "<" in hostile:
        assert "&lt;" in html
    # The <title> holds the subject's text and nothing else.
    assert "\n" not in parsed.title.strip() and "\r" not in parsed.title
    if "{{" in hostile:
        assert "{{ link }}" in shown and "{% now" in shown  # shown, never evaluated
        assert "{{ link }}" in text


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("name", MAILS)
def test_hostile_text_cannot_break_the_subject_or_fake_lines_in_the_text(name, hostile) -> None:
    subject, text, _ = mail.email_render(template=name, context=context_with(hostile, name))
    assert not re.search(r"[\r\n\x0b\x0c\x85\u2028\u2029]", subject), repr(subject)
    if "title" in subject.lower() or "Expense" in subject:
        assert oneline(f"Expense: 80 EUR for {hostile}") in subject
    for line in text.splitlines():
        # No line of input text starts a line of its own that could pass for ours.
        assert not line.startswith("Bcc:"), line
        assert not line.startswith("Review and decide: https://evil"), line
    # Our own action link (where the template has one) is on a line of its own.
    if "{{ link }}" in (TEMPLATES / f"{name}.txt").read_text():
        assert LINK in text.splitlines()


# -- the real path: an expense description in the mail bob receives ------------------------------


@pytest.mark.django_db
def test_an_expense_description_cannot_put_markup_in_the_approvers_mail(
    django_user_model, smtp_server, settings
) -> None:
    settings.SIGNOFF_BASE_URL = BASE
    managers, _ = Group.objects.get_or_create(name="managers")
    django_user_model.objects.create_user("alice", email="alice@example.com", password="x")
    bob = django_user_model.objects.create_user("bob", email="bob@example.com", password="x")
    managers.user_set.add(bob)
    description = (
        '</title><a href="https://evil.example/pay">Urgent: pay now</a>\r\nBcc: all@example.com'
    )
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 80, "currency": "EUR", "description": description, "requester": "alice"},
    )
    validate = StepRun.objects.get(instance=instance, name="validate")
    assert engine.step_execute(step_run_id=validate.pk, attempt=1) == "succeeded"
    request = ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")
    assigned = OutboundEmail.objects.get(request_id=request.pk, to=["bob@example.com"])
    parsed = Parsed(assigned.body_html)
    assert {tag for tag, _ in parsed.tags} <= TAGS
    links = parsed.links
    # Stored: our links, and the placeholders the personal link and the preferences link
    # replace at delivery.
    placeholders = {LINK_PLACEHOLDER, mail.preferences_placeholder(bob.pk)}
    assert all(link.startswith(f"{BASE}/") or link in placeholders for link in links), links
    assert not any("evil.example" in link for link in links)
    assert "&lt;/title&gt;&lt;a href=" in assigned.body_html
    assert "\n" not in assigned.subject and "\r" not in assigned.subject
    # Delivered over SMTP: one Subject header on one line, no header smuggled in.
    mail.emails_deliver(email_ids=[assigned.pk])
    message = smtp_server.messages[-1]
    assert message["Bcc"] is None
    assert message["Subject"].startswith("Approval needed: ")
    assert "Bcc: all@example.com" in message["Subject"]  # as text, on the subject's one line
    assert message.get_all("Subject") and len(message.get_all("Subject")) == 1
    # Delivered: every link in the HTML part is ours, the personal link included.
    html_part = next(p for p in message.walk() if p.get_content_type() == "text/html")
    delivered = Parsed(html_part.get_content())
    assert {tag for tag, _ in delivered.tags} <= TAGS
    assert delivered.links and all(link.startswith(f"{BASE}/") for link in delivered.links)
    assert any("/a/" in link for link in delivered.links), delivered.links
