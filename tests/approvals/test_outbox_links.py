"""Links that cannot be lifted: the outbox keeps the mail with a placeholder where the action
link goes, the token is issued when the mail is sent (so it exists only as its hash and in the
mail that left over SMTP), a mail sent after its link died carries the inbox URL instead, and
the outbox admin shows the placeholder to everyone, superusers included."""

from __future__ import annotations

import hashlib
import re
import smtplib
import threading
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.core.mail import EmailMultiAlternatives
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals import notifications, services, sweepers
from approvals.definitions import Escalation, approval
from approvals.models import ActionToken, ApprovalRequest, Decision
from integrations import mail, tasks
from integrations.models import OutboundEmail
from orchestration import engine
from orchestration.definitions import Workflow, registry
from orchestration.models import Event

pytestmark = pytest.mark.django_db
LINK = re.compile(r"/a/([^/\s\"'<>&]+)/")


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    return {
        n: django_user_model.objects.create_user(n, email=f"{n}@example.com")
        for n in ["req", "ann", "bob", "boss"]
    }


@pytest.fixture
def flow() -> Any:
    wf = Workflow("t_outbox_links")
    approval(
        wf,
        "decide",
        users=["ann", "bob"],
        title="Buy a {input[thing]}",
        show=[("Thing", "input.thing")],
        requester=lambda c: "req",
        due=timedelta(days=3),
        escalate=[Escalation(after=timedelta(days=1), users=["boss"], replace=True)],
    )
    wf.task(_noop, name="after", after=["decide"])
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)
    cache.clear()


def start() -> ApprovalRequest:
    instance, _ = engine.instance_start(workflow="t_outbox_links", input={"thing": "laptop"})
    return ApprovalRequest.objects.get(instance=instance)


def mail_to(user: Any, kind: str = "approval_assigned") -> OutboundEmail:
    return OutboundEmail.objects.get(to=[user.email], kind=kind)


def delivered(smtp_server: Any, email: OutboundEmail) -> tuple[str, str]:
    """Deliver one outbox row through the test SMTP server; the text and HTML received."""
    count = len(smtp_server.messages)
    assert mail.email_deliver(email_id=email.pk) == "sent"
    assert len(smtp_server.messages) == count + 1
    message = smtp_server.messages[-1]
    return (
        message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n"),
        message.get_body(preferencelist=("html",)).get_content().replace("\r\n", "\n"),
    )


def link_path(text: str) -> str:
    """The action link of a received mail, as a path for the test client."""
    return f"/a/{LINK.search(text).group(1)}/"


def outbox_dump() -> str:
    """Every column of every outbox row, as text."""
    return "\n".join(str(value) for row in OutboundEmail.objects.values() for value in row.values())


def snapshot() -> tuple:
    return (
        list(Decision.objects.values_list("pk", flat=True)),
        Event.objects.count(),
        list(ApprovalRequest.objects.values_list("state", flat=True)),
        list(ActionToken.objects.order_by("pk").values_list("pk", "used_at", "superseded_at")),
        list(OutboundEmail.objects.order_by("pk").values()),
    )


def confirm_and_decide(path: str) -> Any:
    client = Client(enforce_csrf_checks=True)
    page = client.get(path)
    assert page.status_code == 200 and b"Buy a laptop" in page.content
    csrf = client.cookies["csrftoken"].value
    return client, client.post(
        path, {"outcome": "approve", "comment": "ok", "csrfmiddlewaretoken": csrf}
    )


def test_the_outbox_holds_no_working_link_and_the_mailed_one_works_once(
    smtp_server: Any, people: dict[str, Any], flow: Any
) -> None:
    request = start()
    ann_mail = mail_to(people["ann"])
    # queued: a placeholder and what to make, no token yet, nothing that opens /a/
    assert not ActionToken.objects.exists()
    assert mail.LINK_PLACEHOLDER in ann_mail.body_text
    assert mail.LINK_PLACEHOLDER in ann_mail.body_html
    assert ann_mail.link_ref == {
        "minter": notifications.LINK_MINTER,
        "request": request.pk,
        "user": people["ann"].pk,
        "purpose": "assigned",
    }
    assert not LINK.search(outbox_dump())

    text, html = delivered(smtp_server, ann_mail)
    path = link_path(text)
    assert path in html
    signed = path.removeprefix("/a/").removesuffix("/")
    raw = notifications.token_unsign(signed)
    token = ActionToken.objects.get()
    assert (token.user, token.purpose) == (people["ann"], "assigned")
    assert token.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    # sent: still only the placeholder; neither the signed nor the raw token is stored
    dump = outbox_dump()
    assert signed not in dump and raw not in dump and not LINK.search(dump)
    ann_mail.refresh_from_db()
    assert ann_mail.status == "sent" and mail.LINK_PLACEHOLDER in ann_mail.body_text

    # the received link: GET shows the confirm page and changes nothing, POST decides, once
    before = snapshot()
    assert Client().get(path).status_code == 200
    assert snapshot() == before
    client, done = confirm_and_decide(path)
    assert done.status_code == 200
    decision = Decision.objects.get()
    assert (decision.decided_by, decision.channel) == (people["ann"], "email")
    again = client.post(
        path,
        {
            "outcome": "reject",
            "comment": "no",
            "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
        },
    )
    assert again.status_code == 410
    assert Decision.objects.count() == 1


@pytest.mark.parametrize("who", ["viewer", "superuser"])
def test_the_outbox_admin_shows_the_placeholder_and_nothing_on_it_opens_a_link(
    smtp_server: Any, people: dict[str, Any], flow: Any, django_user_model: Any, who: str
) -> None:
    if who == "viewer":
        user = django_user_model.objects.create_user("vera", is_staff=True)
        user.user_permissions.add(
            Permission.objects.get(
                content_type__app_label="integrations", codename="view_outboundemail"
            )
        )
    else:
        user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    start()
    sent, queued = mail_to(people["ann"]), mail_to(people["bob"])
    text, _ = delivered(smtp_server, sent)
    live = link_path(text)  # a link that works (the one ann received)
    client = Client()
    client.force_login(user)
    before = snapshot()

    pages = [client.get(reverse("admin:integrations_outboundemail_changelist"))]
    for email in (sent, queued):
        pages.append(
            client.get(reverse("admin:integrations_outboundemail_change", args=[email.pk]))
        )
    assert [page.status_code for page in pages] == [200, 200, 200]
    for page in pages[1:]:
        content = page.content.decode()
        assert mail.LINK_PLACEHOLDER in content
        assert "Inserted when the mail is sent" in content  # says what the placeholder is
        assert "<mark" in content
    for page in pages:
        content = page.content.decode()
        assert live not in content
        # nothing on the page opens an action link
        found = LINK.findall(content)
        assert found == []
        for candidate in found:
            assert Client().get(f"/a/{candidate}/").status_code != 200
    assert snapshot() == before


@pytest.mark.parametrize("what", ["decided", "deactivated", "removed"])
def test_a_mail_sent_after_its_link_died_carries_the_inbox_url_and_no_token(
    smtp_server: Any, people: dict[str, Any], flow: Any, settings: Any, what: str
) -> None:
    t0 = timezone.now()
    with time_machine.travel(t0, tick=False):
        request = start()
    ann_mail = mail_to(people["ann"])
    if what == "decided":
        services.approval_decide(request_id=request.pk, user=people["bob"], outcome="approve")
    elif what == "deactivated":
        people["ann"].is_active = False
        people["ann"].save(update_fields=["is_active"])
    else:
        with time_machine.travel(t0 + timedelta(days=1, minutes=1), tick=False):
            assert sweepers.sweep_escalations() == 1  # boss replaces ann and bob
        assert not request.assignee_users.filter(pk=people["ann"].pk).exists()

    text, html = delivered(smtp_server, ann_mail)
    inbox = f"{settings.SIGNOFF_BASE_URL.rstrip('/')}/inbox/{request.pk}/"
    assert f"confirm; it works once, for you only):\n{inbox}" in text
    assert f'href="{inbox}"' in html
    assert not LINK.search(text + html)
    assert not ActionToken.objects.filter(user=people["ann"]).exists()

    if what == "removed":  # the one who replaced her gets a link that works
        text, _ = delivered(smtp_server, mail_to(people["boss"], "approval_escalated"))
        assert Client().get(link_path(text)).status_code == 200
        assert ActionToken.objects.filter(user=people["boss"]).count() == 1


def test_a_retry_after_an_smtp_error_issues_a_new_link_and_the_first_stays_valid(
    smtp_server: Any, people: dict[str, Any], flow: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented choice: an SMTP error does not prove the mail was not accepted (the
    connection may drop after DATA), and the retry carries the same Message-ID, which the
    receiving side may drop as a duplicate. So the first attempt's link is kept: both links
    work, each once, and the person still decides once."""
    start()
    ann_mail = mail_to(people["ann"])
    real = mail.EmailMultiAlternatives.send
    attempts: list[str] = []

    def drops_the_first(self: Any, *args: Any, **kwargs: Any) -> int:
        attempts.append(self.body)
        if len(attempts) == 1:
            raise smtplib.SMTPServerDisconnected("connection lost after DATA")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mail.EmailMultiAlternatives, "send", drops_the_first)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        mail.email_deliver(email_id=ann_mail.pk)
    ann_mail.refresh_from_db()
    assert (ann_mail.status, ann_mail.attempts) == ("queued", 1)
    first = link_path(attempts[0])
    assert ActionToken.objects.filter(used_at=None, superseded_at=None).count() == 1

    text, _ = delivered(smtp_server, ann_mail)
    second = link_path(text)
    assert second != first
    assert ActionToken.objects.filter(user=people["ann"], used_at=None).count() == 2
    assert not LINK.search(outbox_dump())

    assert Client().get(first).status_code == 200
    assert Client().get(second).status_code == 200
    _, done = confirm_and_decide(first)
    assert done.status_code == 200
    response = Client().post(second, {"outcome": "approve"})
    assert response.status_code == 410
    assert Decision.objects.count() == 1


def test_the_delivery_task_run_twice_sends_once_and_issues_one_token(
    smtp_server: Any, people: dict[str, Any], flow: Any
) -> None:
    start()
    ann_mail = mail_to(people["ann"])
    assert tasks.send_email(ann_mail.pk) == "sent"
    assert tasks.send_email(ann_mail.pk) == "skipped"
    assert tasks.send_emails([ann_mail.pk]) == {"sent": 0, "skipped": 1, "retry": 0, "failed": 0}
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0]["Message-ID"] == ann_mail.message_id
    assert ActionToken.objects.count() == 1


def test_the_per_row_escalation_stores_a_placeholder_too(people: dict[str, Any], flow: Any) -> None:
    t0 = timezone.now()
    with time_machine.travel(t0, tick=False):
        start()
    with time_machine.travel(t0 + timedelta(days=1, minutes=1), tick=False):
        assert sweepers.sweep_escalations() == 1
    escalated = mail_to(people["boss"], "approval_escalated")
    assert mail.LINK_PLACEHOLDER in escalated.body_text
    assert escalated.link_ref["purpose"] == "escalated"
    assert not ActionToken.objects.exists()
    assert not LINK.search(outbox_dump())


@pytest.mark.django_db(transaction=True)
def test_a_mail_being_delivered_does_not_make_a_decision_wait(
    people: dict[str, Any], flow: Any, monkeypatch: pytest.MonkeyPatch, worker: Any
) -> None:
    # ``worker``: the live test worker runs the step the decision schedules, and is quiet
    # before the flush.
    """The delivery's transaction holds the token it minted while SMTP talks, which may take
    seconds. A decision on that request meanwhile must not wait for it (the token's reference
    to the request is checked at commit, and the request is locked FOR NO KEY UPDATE, which
    such a check does not block). A 3 s lock timeout turns waiting into an error."""
    # This test delivers the mail itself: no task for a live worker to take it first.
    monkeypatch.setattr(mail, "_enqueue", lambda email_id: None)
    request = start()
    email = mail_to(people["ann"])
    sending, release = threading.Event(), threading.Event()
    real_send = EmailMultiAlternatives.send

    def slow_send(message: Any, *args: Any, **kwargs: Any) -> Any:
        sending.set()
        release.wait(20)
        return real_send(message, *args, **kwargs)

    monkeypatch.setattr(EmailMultiAlternatives, "send", slow_send)

    def deliver() -> None:
        try:
            mail.email_deliver(email_id=email.pk)
        finally:
            connection.close()

    thread = threading.Thread(target=deliver)
    thread.start()
    try:
        assert sending.wait(10)
        assert ActionToken.objects.count() == 0  # minted, not committed yet
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")
        decision = services.approval_decide(
            request_id=request.pk, user=people["bob"], outcome="approve"
        )
        assert decision.request.state == "approved"
    finally:
        release.set()
        thread.join()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert OutboundEmail.objects.get(pk=email.pk).status == "sent"
    assert ActionToken.objects.filter(user=people["ann"]).count() == 1
