"""Alerts: the notices (signed webhook, masked mail, group recipients), the read API, two
sweepers at once, and the whole path with a real worker whose mail goes over real SMTP.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook

from integrations import webhooks
from integrations.alerts import conditions, delivery, services
from integrations.models import Alert, OutboundEmail, open_secret
from orchestration import engine
from orchestration.models import WorkflowInstance
from tests.conftest import WorkerProcess, wait_for
from tests.integrations.alert_helpers import (
    alert_mails,
    expect_one_resolved_mail,
    instance_row,
    rule,
)
from tests.integrations.test_webhooks import Endpoint, endpoint  # noqa: F401 - fixture
from tests.workflows import ledger

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]


# -- delivery: signed webhook, masked content ------------------------------------------------------


def test_the_webhook_notice_is_signed_masked_and_retried(
    endpoint: Callable[..., Endpoint],  # noqa: F811
    django_capture_on_commit_callbacks: Any,
    sent: dict[str, list],
    settings: Any,
) -> None:
    settings.SIGNOFF_WEBHOOK_BACKOFF_SECONDS = 0  # the retry is due at once
    server = endpoint(500)
    hook = rule("instance_failed", webhook_url=server.url)
    finding = conditions.Finding(
        subject="instance:s",
        title="failed",
        details={"error": {"message": "boom"}, "api_token": "tok-very-secret"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        alert = services.alert_fire(rule=hook, finding=finding)
    assert sent["webhook"] == [(alert.pk, "fired", None)] and sent["mail"] == []
    assert delivery.alert_webhook_deliver(alert_id=alert.pk, notice="fired") == "retrying"
    assert sent["webhook"][-1][:2] == (alert.pk, "fired")
    assert delivery.alert_webhook_deliver(alert_id=alert.pk, notice="fired") == "delivered"
    assert delivery.alert_webhook_deliver(alert_id=alert.pk, notice="fired") == "skipped"
    assert len(server.requests) == 2
    request = server.requests[-1]
    assert webhooks.verify_signature(
        open_secret(hook.webhook_secret), request["headers"]["X-Signoff-Signature"], request["body"]
    )
    assert request["headers"]["X-Signoff-Delivery"] == f"alert-{alert.pk}-fired"
    # Standard Webhooks too, verified as a receiver would.
    assert request["headers"]["webhook-id"] == f"alert-{alert.pk}-fired"
    Webhook(open_secret(hook.webhook_secret)).verify(request["body"], request["headers"])
    assert b"tok-very-secret" not in request["body"]
    document = json.loads(request["body"])
    assert document["event"] == "alert_fired" and document["alert"]["subject"] == "instance:s"
    alert.refresh_from_db()
    webhook = alert.deliveries["fired"]["webhook"]
    assert webhook["status"] == "delivered" and webhook["attempts"] == 2


def test_a_lost_webhook_message_is_rung_again_by_the_sweeper_once(
    django_capture_on_commit_callbacks: Any, sent: dict[str, list]
) -> None:
    hook = rule("schedule_missed", webhook_url="https://hooks.example.com/alerts")
    alert = services.alert_fire(rule=hook, finding=conditions.Finding(subject="s", title="t"))
    assert sent["webhook"] == []  # the message was lost (never sent: no commit here)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_alerts() == 0  # within the grace period: left alone
    assert sent["webhook"] == []
    later = timezone.now() + timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        services.sweep_alerts(now=later)
        services.sweep_alerts(now=later)  # rung just now: not again
    assert sent["webhook"] == [(alert.pk, "fired", None)]
    # An early duplicate of a claimed attempt does nothing.
    Alert.objects.filter(pk=alert.pk).update(
        deliveries={"fired": {"webhook": {"status": "pending", "due": later.isoformat()}}}
    )
    assert delivery.alert_webhook_deliver(alert_id=alert.pk, notice="fired") == "not_due"


def test_mail_holds_no_sealed_or_secret_value() -> None:
    watching = rule("instance_failed")
    finding = conditions.Finding(
        subject="instance:m",
        title="failed",
        details={"password": "hunter2", "error": {"message": "ok"}},
    )
    alert = services.alert_fire(rule=watching, finding=finding)
    [email] = alert_mails()
    assert "hunter2" not in email.body_text + email.body_html
    assert "hunter2" not in json.dumps(alert.details)


def test_group_members_with_an_address_are_mailed(django_user_model: Any) -> None:
    group = Group.objects.create(name="oncall")
    for name, email, active in (("a", "a@x.io", True), ("b", "", True), ("c", "c@x.io", False)):
        group.user_set.add(
            django_user_model.objects.create_user(name, email=email, is_active=active)
        )
    watching = rule("instance_failed", mail_group=group, mail_to="lead@x.io")
    services.alert_fire(rule=watching, finding=conditions.Finding(subject="s", title="t"))
    assert alert_mails()[0].to == ["a@x.io", "lead@x.io"]


# -- two sweepers at once --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweepers_fire_one_alert_and_send_one_mail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watching = rule("instance_failed")
    instance_row("failed", finished_at=timezone.now(), error={"type": "E"})
    both_found = threading.Barrier(2, timeout=10)
    original = conditions.get_condition("instance_failed")

    def find(rule: Any, now: Any, limit: int) -> list[conditions.Finding]:
        found = list(original.find(rule, now, limit))
        both_found.wait()  # both runs have looked before either writes
        return found

    patched = conditions.Condition(**{**original.__dict__, "find": find})
    monkeypatch.setitem(conditions._conditions, "instance_failed", patched)
    results: list[Any] = []

    def sweep() -> None:
        try:
            results.append(services.sweep_alerts())
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(results) == [0, 1], results
    assert watching.alerts.count() == 1 and len(alert_mails()) == 1


# -- the whole path: a real worker, real SMTP ------------------------------------------------------


class MailingWorker(WorkerProcess):
    """The test worker, its mail going to the test's SMTP server."""

    def __init__(self, db_name: str, email_url: str) -> None:
        super().__init__(db_name)
        self.email_url = email_url

    def env(self) -> dict[str, str]:
        return {**super().env(), "EMAIL_URL": self.email_url}


@pytest.fixture
def mailing_worker(worker: WorkerProcess, smtp_server: Any, settings: Any) -> Iterator[Any]:
    """Stands in for the shared worker (stopped meanwhile, so that no other worker takes the
    mail tasks; the ``worker`` fixture starts it again afterwards)."""
    worker.stop()
    own = MailingWorker(
        settings.DATABASES["default"]["NAME"], f"smtp://127.0.0.1:{settings.EMAIL_PORT}"
    )
    own.start()
    yield own
    own.quiesce()
    own.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_e2e_a_failed_workflow_mails_one_alert_then_one_resolved_notice(
    mailing_worker: MailingWorker, smtp_server: Any
) -> None:
    rule("instance_failed", workflow="t_fixable", mail_to="oncall@example.com")
    key = f"E2E-{uuid.uuid4().hex[:6]}"
    instance, _ = engine.instance_start(workflow="t_fixable", business_key=key)

    wait_for(lambda: len(smtp_server.messages) >= 1, timeout=40, message="the alert mail")
    [message] = smtp_server.messages
    assert message["To"] == "oncall@example.com"
    assert message["Subject"].startswith("[Alert]") and key in message["Subject"]
    assert f"/instances/{instance.pk}/" in message.get_body(("plain",)).get_content()
    alert = Alert.objects.get()
    assert alert.state == "firing"

    # The sweeper (beat) runs again: the same failure, no second mail.
    assert services.sweep_alerts() == 0
    assert OutboundEmail.objects.filter(kind__startswith="alert_").count() == 1

    ledger().set(f"fixed:{instance.pk}", 1)
    engine.instance_retry(instance_id=instance.pk)
    wait_for(
        lambda: WorkflowInstance.objects.get(pk=instance.pk).state == "succeeded",
        timeout=40,
        message="the retried instance to succeed",
    )
    wait_for(lambda: len(smtp_server.messages) >= 2, timeout=40, message="the resolved mail")
    assert services.sweep_alerts() == 0
    expect_one_resolved_mail(smtp_server)
    alert.refresh_from_db()
    assert alert.state == "resolved"


# -- the read API ----------------------------------------------------------------------------------


def test_the_alerts_api_lists_filters_and_refuses(
    django_user_model: Any, django_assert_max_num_queries: Any
) -> None:
    from django.contrib.auth.models import Permission
    from rest_framework.test import APIClient

    watching = rule("schedule_missed")
    for n in range(5):
        services.alert_fire(rule=watching, finding=conditions.Finding(subject=f"s{n}", title="t"))
    services.alert_resolve(alert_id=Alert.objects.order_by("pk").first().pk)
    viewer = django_user_model.objects.create_user("vera", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_alert"))
    client = APIClient()
    client.force_authenticate(django_user_model.objects.get(pk=viewer.pk))
    with django_assert_max_num_queries(4):
        body = client.get("/api/v1/alerts/").json()
    assert len(body["results"]) == 5 and body["results"][0]["rule"] == watching.name
    firing = client.get("/api/v1/alerts/?state=firing").json()["results"]
    assert len(firing) == 4 and {a["state"] for a in firing} == {"firing"}
    assert len(client.get(f"/api/v1/alerts/?rule={watching.pk}").json()["results"]) == 5
    for bad in ("state=burning", "rule=abc", "condition=nope", "page_size=0"):
        response = client.get(f"/api/v1/alerts/?{bad}")
        assert response.status_code == 400 and response.json()["code"], bad
    plain = APIClient()
    plain.force_authenticate(django_user_model.objects.create_user("sam", is_staff=True))
    response = plain.get("/api/v1/alerts/")
    assert response.status_code == 403 and response.json()["code"] == "permission_denied"
    assert APIClient().get("/api/v1/alerts/").status_code == 401
