"""Email action links: mail through a real SMTP server, scanner-safe GET, single-use POST, and
every bad-token case changing nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from approvals import sweepers
from approvals.definitions import Escalation, approval
from approvals.models import ActionToken, ApprovalRequest, Decision
from integrations import mail
from integrations.models import OutboundEmail
from orchestration import engine
from orchestration.definitions import Workflow, registry
from orchestration.models import Event, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def people(django_user_model):
    return {
        n: django_user_model.objects.create_user(n, email=f"{n}@example.com")
        for n in ["req", "ann", "boss"]
    }


@pytest.fixture
def flow():
    wf = Workflow("t_links")
    approval(
        wf,
        "decide",
        users=["ann"],
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


def deliver_all() -> None:
    for pk in OutboundEmail.objects.filter(status="queued").values_list("pk", flat=True):
        mail.email_deliver(email_id=pk)


def link_in(message) -> str:  # noqa: ANN001
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.search(r"http://[^\s]+/a/[^\s]+/", text).group(0).split("127.0.0.1:8000", 1)[1]


def snapshot() -> tuple:
    return (
        Decision.objects.count(),
        Event.objects.count(),
        list(ApprovalRequest.objects.values_list("state", flat=True)),
        list(ActionToken.objects.order_by("pk").values_list("used_at", flat=True)),
        list(WorkflowInstance.objects.values_list("state", flat=True)),
    )


def start(flow) -> tuple[WorkflowInstance, ApprovalRequest]:  # noqa: ANN001
    instance, _ = engine.instance_start(workflow="t_links", input={"thing": "laptop"})
    return instance, ApprovalRequest.objects.get(instance=instance)


def test_mailed_link_get_changes_nothing_post_decides_once(smtp_server, people, flow) -> None:
    instance, request = start(flow)
    deliver_all()
    assert len(smtp_server.messages) == 1
    message = smtp_server.messages[0]
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Approval needed: Buy a laptop"
    assert message["Message-ID"] == OutboundEmail.objects.get().message_id
    assert message.get_body(preferencelist=("html",)) is not None
    url = link_in(message)

    client = Client(enforce_csrf_checks=True)
    before = snapshot()
    page = client.get(url)
    assert page.status_code == 200
    assert b"Buy a laptop" in page.content and b"laptop" in page.content
    assert client.head(url).status_code == 200
    assert snapshot() == before  # a scanner opening the link changes nothing
    assert "_auth_user_id" not in client.session  # and nobody is logged in

    csrf = client.cookies["csrftoken"].value
    done = client.post(url, {"outcome": "approve", "comment": "ok", "csrfmiddlewaretoken": csrf})
    assert done.status_code == 200
    assert b"your decision was recorded" in done.content
    decision = Decision.objects.get()
    assert (decision.decided_by, decision.channel, decision.comment) == (
        people["ann"],
        "email",
        "ok",
    )
    assert StepRun.objects.get(instance=instance, name="decide").state == "succeeded"

    again = client.post(url, {"outcome": "reject", "comment": "no", "csrfmiddlewaretoken": csrf})
    assert again.status_code == 410
    assert b"lready approved by ann" in again.content
    assert Decision.objects.count() == 1
    deliver_all()  # the requester hears about it
    assert smtp_server.messages[-1]["To"] == "req@example.com"
    assert "approved" in smtp_server.messages[-1]["Subject"]


def test_post_without_the_pages_csrf_token_is_refused(people, flow) -> None:
    _, request = start(flow)
    from approvals import notifications

    raw_signed = notifications.token_issue(request, people["ann"], timezone.now(), "t")
    url = f"/a/{raw_signed}/"
    client = Client(enforce_csrf_checks=True)
    before = snapshot()
    assert client.post(url, {"outcome": "approve"}).status_code == 403
    assert snapshot() == before


def test_every_bad_link_shows_why_and_changes_nothing(people, flow) -> None:
    from approvals import notifications

    _, request = start(flow)
    now = timezone.now()
    good = notifications.token_issue(request, people["ann"], now, "t")
    from django.core import signing

    tampered = good[:-3] + ("xyz" if not good.endswith("xyz") else "abc")
    unknown = signing.TimestampSigner(salt=notifications.LINK_SALT).sign("no-such-token")
    expired = notifications.token_issue(request, people["ann"], now - timedelta(days=8), "t")
    used = notifications.token_issue(request, people["ann"], now, "t")
    ActionToken.objects.filter(pk=ActionToken.objects.latest("pk").pk).update(used_at=now)

    client = Client()
    before = snapshot()
    cases = {
        "tampered": client.get(f"/a/{tampered}/"),
        "garbage": client.get("/a/not-a-token/"),
        "unknown": client.get(f"/a/{unknown}/"),
        "expired": client.get(f"/a/{expired}/"),
        "used": client.get(f"/a/{used}/"),
        "used_post": client.post(f"/a/{used}/", {"outcome": "approve"}),
        "tampered_post": client.post(f"/a/{tampered}/", {"outcome": "approve"}),
        "put": client.put(f"/a/{good}/"),
    }
    assert snapshot() == before

    assert cases["tampered"].status_code == 400
    assert b"not valid" in cases["tampered"].content
    assert cases["garbage"].status_code == 400
    assert cases["unknown"].status_code == 404
    assert cases["expired"].status_code == 410 and b"expired" in cases["expired"].content
    assert cases["used"].status_code == 410 and b"already used" in cases["used"].content
    assert cases["used_post"].status_code == 410
    assert cases["tampered_post"].status_code == 400
    assert cases["put"].status_code == 405
    for response in cases.values():
        if response.status_code != 405:
            assert b"Nothing was changed" in response.content


def test_superseded_and_resolved_links_are_refused(people, flow) -> None:
    from approvals import notifications

    start_time = timezone.now()
    with time_machine.travel(start_time, tick=False):
        instance, request = start(flow)
        ann_link = notifications.token_issue(request, people["ann"], start_time, "t")
    with time_machine.travel(start_time + timedelta(days=1, minutes=1), tick=False):
        assert sweepers.sweep_escalations() == 1  # boss replaces ann
        response = Client().get(f"/a/{ann_link}/")
        assert response.status_code == 410 and b"no longer applies" in response.content
        boss_link = notifications.token_issue(request, people["boss"], timezone.now(), "t")
        other = notifications.token_issue(request, people["boss"], timezone.now(), "t")
        client = Client()
        client.get(f"/a/{boss_link}/")
        client.post(f"/a/{boss_link}/", {"outcome": "approve"})
        assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"
        # another unused link of the same person, after resolution
        response = client.get(f"/a/{other}/")
        assert response.status_code == 410 and b"already closed" in response.content


def test_reject_without_comment_keeps_the_link_usable(people, flow) -> None:
    from approvals import notifications

    _, request = start(flow)
    link = notifications.token_issue(request, people["ann"], timezone.now(), "t")
    client = Client()
    response = client.post(f"/a/{link}/", {"outcome": "reject"})
    assert response.status_code == 400 and b"comment is required" in response.content
    assert Decision.objects.count() == 0
    response = client.post(f"/a/{link}/", {"outcome": "maybe"})
    assert response.status_code == 400
    response = client.post(f"/a/{link}/", {"outcome": "reject", "comment": "too dear"})
    assert response.status_code == 200
    assert ApprovalRequest.objects.get(pk=request.pk).state == "rejected"


def test_failures_are_rate_limited_per_ip(people, flow, settings) -> None:
    settings.SIGNOFF_LINK_FAILURES_PER_IP = 3
    client = Client(REMOTE_ADDR="10.9.8.7")
    for _ in range(3):
        assert client.get("/a/bad-token/").status_code == 400
    assert client.get("/a/bad-token/").status_code == 429
    assert Client(REMOTE_ADDR="10.9.8.8").get("/a/bad-token/").status_code == 400


def test_delivery_is_once_even_when_the_task_runs_twice(smtp_server, people, flow) -> None:
    start(flow)
    pk = OutboundEmail.objects.get().pk
    assert mail.email_deliver(email_id=pk) == "sent"
    assert mail.email_deliver(email_id=pk) == "skipped"
    assert len(smtp_server.messages) == 1
    assert ActionToken.objects.count() == 1  # the repeated task made no second link


def test_smtp_failure_is_recorded_and_retried(people, flow, settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens
    settings.EMAIL_TIMEOUT = 2
    start(flow)
    email_row = OutboundEmail.objects.get()
    with pytest.raises(OSError):
        mail.email_deliver(email_id=email_row.pk)
    email_row.refresh_from_db()
    assert email_row.status == "queued" and email_row.attempts == 1
    assert "Error" in email_row.last_error or "refused" in email_row.last_error.lower()
    # the attempt's link is kept (it may have gone out: see test_outbox_links); the row
    # still holds only the placeholder
    assert ActionToken.objects.count() == 1
    assert "/a/" not in email_row.body_text + email_row.body_html
