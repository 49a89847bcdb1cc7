"""Outbox delivery in slices: one SMTP connection and one broker message per slice of rows,
each row still delivered once, a failing row retried on its own."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from integrations import mail
from integrations.models import OutboundEmail

pytestmark = pytest.mark.django_db


def queued(n: int, *, prefix: str = "m") -> list[int]:
    return [
        mail.email_queue(
            message_id=f"<{prefix}{i}@test>",
            kind="test",
            to=[f"user{i}@example.com"],
            template="approval_reminder",
            context={"request": {"title": f"Request {i}", "fields": []}, "link": "x"},
        ).pk
        for i in range(n)
    ]


def test_a_slice_goes_over_one_smtp_connection_and_each_row_once(smtp_server: Any) -> None:
    ids = queued(5)
    outcome = mail.emails_deliver(email_ids=ids)
    assert outcome == {"sent": ids, "skipped": [], "retry": [], "failed": []}
    assert len(smtp_server.messages) == 5
    assert len(smtp_server.sessions) == 1
    assert sorted(m["Message-ID"] for m in smtp_server.messages) == sorted(
        f"<m{i}@test>" for i in range(5)
    )
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {"sent"}
    # The same slice again (a redelivered task): nothing is sent twice.
    assert mail.emails_deliver(email_ids=ids) == {
        "sent": [],
        "skipped": ids,
        "retry": [],
        "failed": [],
    }
    assert len(smtp_server.messages) == 5


def test_a_failing_row_is_recorded_and_handed_back_the_rest_still_go(
    smtp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = queued(3)
    real = mail.EmailMultiAlternatives.send

    def send(self: Any, *args: Any, **kwargs: Any) -> int:
        if self.extra_headers["Message-ID"] == "<m1@test>":
            raise ConnectionResetError("peer went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mail.EmailMultiAlternatives, "send", send)
    outcome = mail.emails_deliver(email_ids=ids)
    assert outcome == {"sent": [ids[0], ids[2]], "skipped": [], "retry": [ids[1]], "failed": []}
    failed = OutboundEmail.objects.get(pk=ids[1])
    assert (failed.status, failed.attempts) == ("queued", 1)
    assert "peer went away" in failed.last_error
    assert len(smtp_server.messages) == 2


def test_unknown_and_missing_rows_are_skipped(smtp_server: Any) -> None:
    nothing: dict[str, list[int]] = {"sent": [], "skipped": [], "retry": [], "failed": []}
    assert mail.emails_deliver(email_ids=[]) == nothing
    assert mail.emails_deliver(email_ids=[10**9]) == {**nothing, "skipped": [10**9]}
    assert smtp_server.messages == []


def test_the_task_retries_a_failed_row_on_its_own(
    smtp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integrations import tasks

    ids = queued(2)
    retried: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(
        tasks.send_email, "apply_async", lambda args, **kw: retried.append((args, kw))
    )
    monkeypatch.setattr(
        mail,
        "email_deliver",
        lambda *, email_id, connection=None: (
            (_ for _ in ()).throw(OSError("down")) if email_id == ids[0] else "sent"
        ),
    )
    assert tasks.send_emails(ids) == {"sent": 1, "skipped": 0, "retry": 1, "failed": 0}
    assert retried == [((ids[0],), {"countdown": 5})]


def test_enqueue_sends_one_task_per_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    from integrations import tasks

    sent: list[list[int]] = []
    monkeypatch.setattr(
        tasks.send_emails, "apply_async", lambda args, **kw: sent.append(list(args[0]))
    )
    ids = list(range(1, 2 * mail.DELIVERY_SLICE + 6))
    mail.emails_enqueue(ids)
    assert [len(s) for s in sent] == [mail.DELIVERY_SLICE, mail.DELIVERY_SLICE, 5]
    assert [pk for s in sent for pk in s] == ids


def test_the_outbox_sweeper_sends_lost_rows_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    from integrations import tasks

    ids = queued(3)
    OutboundEmail.objects.update(created_at=timezone.now() - timezone.timedelta(minutes=5))
    sent: list[list[int]] = []
    monkeypatch.setattr(
        tasks.send_emails, "apply_async", lambda args, **kw: sent.append(list(args[0]))
    )
    assert mail.sweep_outbox() == 3
    assert sent == [ids]
