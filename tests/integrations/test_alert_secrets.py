"""Alert rules' webhook secrets: sealed at rest (no plaintext in the column), shown whole once
(in the admin message after a rule with a webhook is made, or its secret rotated), masked on
every page after (list, change page, history, the admin log), and alert POSTs signed with the
unsealed secret, by both secrets during a rotation's overlap."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.apps import apps
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from integrations import webhooks
from integrations.alerts import conditions, delivery, services
from integrations.models import AlertRule, open_secret
from tests.integrations.alert_helpers import rule
from tests.integrations.test_webhooks import Endpoint, endpoint  # noqa: F401 - fixture

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]

RULES = "/admin/integrations/alertrule/"
HOOKED = {
    "name": "hooked",
    "condition": "instance_failed",
    "workflow": "",
    "enabled": "on",
    "webhook_url": "http://127.0.0.1:9/alert",
}


def _columns(pk: int) -> str:
    """The raw stored secret columns of rule ``pk``, as the database holds them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT webhook_secret, webhook_previous_secret FROM integrations_alertrule "
            "WHERE id = %s",
            [pk],
        )
        return " ".join(cursor.fetchone())


def test_the_column_holds_no_plaintext_secret_before_or_after_a_rotation() -> None:
    made = rule("instance_failed", webhook_url="http://127.0.0.1:9/a")
    secret = open_secret(made.webhook_secret)
    assert secret.startswith("whsec_") and len(secret) > 40
    stored = _columns(made.pk)
    assert "whsec_" not in stored and secret.removeprefix("whsec_") not in stored
    new = services.alert_rule_secret_rotate(rule_id=made.pk)
    stored = _columns(made.pk)
    assert new != secret and "whsec_" not in stored
    for whole in (secret, new):
        assert whole.removeprefix("whsec_") not in stored
    made.refresh_from_db()
    assert open_secret(made.webhook_previous_secret) == secret


def test_an_unknown_rule_is_not_rotated_and_nothing_changes() -> None:
    made = rule("instance_failed", webhook_url="http://127.0.0.1:9/a")
    before = list(AlertRule.objects.values_list("pk", "webhook_secret", "webhook_previous_secret"))
    with pytest.raises(AlertRule.DoesNotExist):
        services.alert_rule_secret_rotate(rule_id=made.pk + 999)
    after = list(AlertRule.objects.values_list("pk", "webhook_secret", "webhook_previous_secret"))
    assert after == before


def test_the_admin_shows_the_secret_whole_once_then_only_masked(admin_client: Any) -> None:
    response = admin_client.post(f"{RULES}add/", HOOKED, follow=True)
    made = AlertRule.objects.get()
    secret = open_secret(made.webhook_secret)
    body = response.content.decode()
    assert response.status_code == 200 and body.count(secret) == 1 and "not shown again" in body

    # An edit: nothing whole in its answer, the secret kept.
    response = admin_client.post(
        f"{RULES}{made.pk}/change/", {**HOOKED, "name": "hooked again"}, follow=True
    )
    assert response.status_code == 200 and secret not in response.content.decode()
    made.refresh_from_db()
    assert made.name == "hooked again" and open_secret(made.webhook_secret) == secret

    for url in (RULES, f"{RULES}{made.pk}/change/", f"{RULES}{made.pk}/history/"):
        page = admin_client.get(url)
        assert page.status_code == 200 and secret not in page.content.decode(), url
    page = admin_client.get(f"{RULES}{made.pk}/change/").content.decode()
    assert f"whsec_••••••{secret[-4:]}" in page
    # The admin log (history) keeps which fields changed, never the secret.
    entries = list(LogEntry.objects.values_list("change_message", "object_repr"))
    assert len(entries) == 2
    assert all(secret not in message + shown for message, shown in entries)


def test_a_rule_without_a_webhook_shows_no_secret_and_one_given_later_a_fresh_one_once(
    admin_client: Any,
) -> None:
    mail_only = {**HOOKED, "webhook_url": "", "mail_to": "ops@example.com"}
    response = admin_client.post(f"{RULES}add/", mail_only, follow=True)
    assert response.status_code == 200 and "not shown again" not in response.content.decode()
    made = AlertRule.objects.get()
    unused = open_secret(made.webhook_secret)

    response = admin_client.post(
        f"{RULES}{made.pk}/change/",
        {**mail_only, "webhook_url": HOOKED["webhook_url"]},
        follow=True,
    )
    made.refresh_from_db()
    secret = open_secret(made.webhook_secret)
    body = response.content.decode()
    assert secret != unused and body.count(secret) == 1 and "not shown again" in body

    response = admin_client.post(
        f"{RULES}{made.pk}/change/",
        {**mail_only, "webhook_url": HOOKED["webhook_url"], "name": "renamed"},
        follow=True,
    )
    made.refresh_from_db()
    assert secret not in response.content.decode() and open_secret(made.webhook_secret) == secret


def test_rotation_from_the_admin_shows_the_new_secret_once_and_both_sign_during_the_overlap(
    admin_client: Any,
    endpoint: Callable[..., Endpoint],  # noqa: F811
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    settings.SIGNOFF_WEBHOOK_SECRET_OVERLAP_HOURS = 24
    server = endpoint(200)
    hook = rule("instance_failed", webhook_url=server.url)
    old = open_secret(hook.webhook_secret)
    response = admin_client.post(
        RULES,
        {"action": "rotate_webhook_secret", "_selected_action": [str(hook.pk)]},
        follow=True,
    )
    hook.refresh_from_db()
    new = open_secret(hook.webhook_secret)
    body = response.content.decode()
    assert new != old and body.count(new) == 1 and old not in body
    assert "signs too for 24 hours" in body
    page = admin_client.get(f"{RULES}{hook.pk}/change/").content.decode()
    assert new not in page and old not in page and "the previous secret signs too until" in page

    finding = conditions.Finding(subject="instance:r", title="failed")
    with django_capture_on_commit_callbacks(execute=True):
        alert = services.alert_fire(rule=hook, finding=finding)
    assert delivery.alert_webhook_deliver(alert_id=alert.pk, notice="fired") == "delivered"
    request = server.requests[-1]
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(request["body"], request["headers"])
    Webhook(new).verify(request["body"], request["headers"])
    assert webhooks.verify_signature(
        new, request["headers"]["X-Signoff-Signature"], request["body"]
    )
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(request["body"], request["headers"])

    # After the overlap only the new one signs, and the sweeper forgets the old one.
    with time_machine.travel(timezone.now() + timedelta(hours=24, seconds=1), tick=False):
        assert hook.signing_secrets() == [new]
        webhooks.sweep_webhooks()
    hook.refresh_from_db()
    assert (hook.webhook_previous_secret, hook.webhook_previous_secret_expires_at) == ("", None)


def test_the_migration_seals_clear_secrets_and_its_reverse_opens_them() -> None:
    made = rule("instance_failed", webhook_url="http://127.0.0.1:9/a")
    secret = open_secret(made.webhook_secret)
    AlertRule.objects.filter(pk=made.pk).update(webhook_secret=secret)  # as before 0008
    migration = importlib.import_module("integrations.migrations.0008_alert_webhook_secrets_sealed")
    migration.seal_secrets(apps, None)
    stored = _columns(made.pk)
    assert "whsec_" not in stored
    made.refresh_from_db()
    assert open_secret(made.webhook_secret) == secret
    migration.seal_secrets(apps, None)  # sealed rows are left alone
    made.refresh_from_db()
    assert open_secret(made.webhook_secret) == secret
    migration.open_secrets(apps, None)
    assert AlertRule.objects.values_list("webhook_secret", flat=True).get(pk=made.pk) == secret
