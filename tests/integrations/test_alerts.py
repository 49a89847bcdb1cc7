"""Alerts: rules, conditions, deduplication, recovery, the admin.

The tests run the engine in-process (no doorbells, ``rung``) and record the Celery messages
the notices would send (the ``sent`` fixture). Delivery, the API, concurrency and the
end-to-end test are in ``test_alerts_delivery``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.utils import timezone

from integrations.alerts import conditions, services
from integrations.models import Alert, AlertRule, open_secret
from orchestration import engine
from orchestration.models import WorkflowInstance
from orchestration.signals import schedule_missed
from tests.integrations.alert_helpers import alert_mails, instance_row, rule, run_scheduled
from tests.workflows import ledger

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]


# -- rules: bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"mail_to": ""}, "__all__", "at least one channel"),
        ({"condition": "instance_stuck", "stuck_after": None}, "stuck_after", "Required"),
        ({"condition": "instance_stuck", "stuck_after": timedelta(0)}, "stuck_after", "Required"),
        ({"condition": "instance_stuck", "stuck_after": -timedelta(hours=1)}, "stuck_after", "neg"),
        ({"condition": "approval_overdue", "overdue_grace": -timedelta(1)}, "overdue_grace", "neg"),
        ({"condition": "instance_exploded"}, "condition", "instance_exploded"),
        ({"webhook_url": "http://hooks.example.com/x"}, "webhook_url", "https://"),
        ({"webhook_url": "ftp://hooks.example.com/x"}, "webhook_url", "https://"),
        ({"webhook_url": "https://user:pw@hooks.example.com/"}, "webhook_url", "password"),
        ({"mail_to": "ops@example.com, not-an-address"}, "mail_to", "not-an-address"),
    ],
)
def test_a_bad_rule_is_refused_with_the_field_named(
    fields: dict[str, Any], field: str, text: str
) -> None:
    values = {"name": "bad", "condition": "instance_failed", "mail_to": "ops@example.com"}
    values.update(fields)
    with pytest.raises(ValidationError) as caught:
        AlertRule(**values).full_clean()
    errors = caught.value.message_dict
    assert field in errors, errors
    assert text.lower() in " ".join(errors[field]).lower()
    assert AlertRule.objects.count() == 0


def test_a_group_or_a_webhook_is_a_channel_too() -> None:
    group = Group.objects.create(name="oncall")
    AlertRule(name="g", condition="instance_failed", mail_group=group).full_clean()
    AlertRule(name="w", condition="instance_failed", webhook_url="https://h.example/x").full_clean()


def test_the_admin_refuses_a_bad_rule_and_saves_a_good_one(admin_client: Any) -> None:
    url = "/admin/integrations/alertrule/add/"
    form = admin_client.get(url).content.decode()
    for condition in ("instance_failed", "instance_stuck", "approval_overdue", "schedule_missed"):
        assert f'value="{condition}"' in form
    base = {"name": "stuck", "condition": "instance_stuck", "workflow": "", "enabled": "on"}
    response = admin_client.post(
        url, {**base, "stuck_after": "-01:00:00", "mail_to": "ops@example.com"}
    )
    assert response.status_code == 200 and b"cannot be negative" in response.content
    response = admin_client.post(url, {**base, "stuck_after": "01:00:00"})
    assert response.status_code == 200 and b"at least one channel" in response.content
    assert AlertRule.objects.count() == 0
    response = admin_client.post(
        url, {**base, "stuck_after": "01:00:00", "mail_to": "ops@example.com"}
    )
    assert response.status_code == 302
    made = AlertRule.objects.get()
    secret = open_secret(made.webhook_secret)
    assert made.stuck_after == timedelta(hours=1) and secret.startswith("whsec_")
    listing = admin_client.get("/admin/integrations/alertrule/")
    assert listing.status_code == 200 and b"stuck" in listing.content
    page = admin_client.get(f"/admin/integrations/alertrule/{made.pk}/change/")
    # Sealed and masked: the whole secret is shown only when a webhook is given.
    assert page.status_code == 200 and secret.encode() not in page.content
    assert f"whsec_••••••{secret[-4:]}".encode() in page.content


# -- instance_failed: fired by the event, deduplicated, resolved by the retry ----------------------


def test_a_failed_instance_alerts_once_and_its_retry_resolves_it_once(
    rung: list, django_capture_on_commit_callbacks: Any, sent: dict[str, list]
) -> None:
    watching = rule("instance_failed", workflow="t_fixable")
    rule("instance_failed", name="other workflow", workflow="t_sequence")
    with django_capture_on_commit_callbacks(execute=True):
        instance, _ = engine.instance_start(workflow="t_fixable", business_key="ORDER-7")
    run_scheduled(django_capture_on_commit_callbacks, instance)
    instance.refresh_from_db()
    assert instance.state == "failed"

    alert = Alert.objects.get()  # only the rule for t_fixable fired
    assert (alert.rule, alert.state, alert.subject) == (
        watching,
        "firing",
        f"instance:{instance.pk}",
    )
    assert "ORDER-7" in alert.title and alert.details["error"]["type"].endswith("NonRetryableError")
    [fired] = alert_mails()
    assert fired.to == ["ops@example.com"] and fired.subject.startswith("[Alert]")
    assert f"/instances/{instance.pk}/" in fired.body_text
    assert f"/admin/integrations/alert/{alert.pk}/change/" in fired.body_text
    assert sent["mail"] == [fired.pk]

    # The sweeper finds the same failure: seen again, no second alert, no second mail.
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_alerts() == 0
        assert services.sweep_alerts() == 0
    alert.refresh_from_db()
    assert alert.times_seen == 3 and len(alert_mails()) == 1

    ledger().set(f"fixed:{instance.pk}", 1)
    with django_capture_on_commit_callbacks(execute=True):
        engine.instance_retry(instance_id=instance.pk)
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_by == "system"
    run_scheduled(django_capture_on_commit_callbacks, instance)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_alerts() == 0
    mails = alert_mails()
    assert [m.kind for m in mails] == ["alert_fired", "alert_resolved"]
    assert mails[1].subject.startswith("[Resolved]")
    assert set(alert.deliveries) == {"fired", "resolved"}
    # Resolving twice does nothing and sends nothing.
    assert services.alert_resolve(alert_id=alert.pk) is False
    assert len(alert_mails()) == 2 and Alert.objects.count() == 1


def test_a_new_failure_after_recovery_fires_a_new_alert() -> None:
    watching = rule("instance_failed")
    failed = instance_row("failed", finished_at=timezone.now(), error={"type": "E"})
    assert services.sweep_alerts() == 1
    WorkflowInstance.objects.filter(pk=failed.pk).update(state="running")
    assert services.sweep_alerts() == 1  # resolved
    WorkflowInstance.objects.filter(pk=failed.pk).update(state="failed", finished_at=timezone.now())
    assert services.sweep_alerts() == 1  # fired again: a new alert, the old one stays resolved
    assert sorted(watching.alerts.values_list("state", flat=True)) == ["firing", "resolved"]


def test_repeated_firing_of_one_subject_keeps_one_alert() -> None:
    watching = rule("instance_failed")
    finding = conditions.Finding(subject="instance:x", title="t")
    assert services.alert_fire(rule=watching, finding=finding) is not None
    for _ in range(3):
        assert services.alert_fire(rule=watching, finding=finding) is None
    alert = Alert.objects.get()
    assert alert.times_seen == 4 and len(alert_mails()) == 1


def test_the_database_refuses_a_second_firing_alert_for_one_subject() -> None:
    from django.db import IntegrityError, transaction

    watching = rule("instance_failed")
    first = services.alert_fire(rule=watching, finding=conditions.Finding(subject="x", title="t"))
    now = timezone.now()
    row = {"rule": watching, "condition": "instance_failed", "subject": "x", "title": "t"}
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(**row, first_fired_at=now, last_seen_at=now)
    services.alert_resolve(alert_id=first.pk)
    Alert.objects.create(**row, first_fired_at=now, last_seen_at=now)  # resolved ones don't count


def test_failures_before_the_rule_existed_are_not_news() -> None:
    instance_row("failed", finished_at=timezone.now() - timedelta(hours=1))
    rule("instance_failed")
    assert services.sweep_alerts() == 0 and not Alert.objects.exists()


# -- compensation_failed ---------------------------------------------------------------------------


class FakeEvent:
    def __init__(self, instance: Any, type: str, data: dict[str, Any]) -> None:
        self.instance, self.instance_id, self.type, self.data = instance, instance.pk, type, data
        self.pk = 1


def test_compensation_failed_fires_for_a_saga_that_could_not_undo_and_resolves_on_retry() -> None:
    rule("compensation_failed")
    error = {"phase": "compensation", "step": "charge", "type": "Boom", "message": "no refund"}
    saga = instance_row("failed", finished_at=timezone.now(), error=error)
    plain = instance_row("failed", finished_at=timezone.now(), error={"type": "E"})
    services.on_event_committed(None, FakeEvent(plain, "instance_failed", {"error": {"t": 1}}))
    assert not Alert.objects.exists()  # an ordinary failure is not a compensation failure
    services.on_event_committed(None, FakeEvent(saga, "instance_failed", {"error": error}))
    alert = Alert.objects.get()
    assert alert.subject == f"instance:{saga.pk}" and "compensation failed" in alert.title
    assert alert.details["error"]["step"] == "charge"
    assert services.sweep_alerts() == 0  # the sweeper finds the same one: deduplicated
    WorkflowInstance.objects.filter(pk=saga.pk).update(state="compensating")
    services.on_event_committed(None, FakeEvent(saga, "instance_retried", {}))
    alert.refresh_from_db()
    assert alert.state == "resolved"


# -- instance_stuck --------------------------------------------------------------------------------


def test_a_quiet_instance_alerts_and_resolves_when_it_progresses() -> None:
    rule("instance_stuck", stuck_after=timedelta(hours=2))
    stuck = instance_row("running", quiet_for=timedelta(hours=3))
    instance_row("running", quiet_for=timedelta(hours=1))  # quiet, but not for long enough
    instance_row("succeeded", quiet_for=timedelta(days=3))  # done, not stuck
    instance_row("running", quiet_for=timedelta(hours=3), paused_at=timezone.now())  # paused
    assert services.sweep_alerts() == 1
    alert = Alert.objects.get()
    assert alert.subject == f"instance:{stuck.pk}" and alert.state == "firing"
    assert services.sweep_alerts() == 0  # still stuck: no second alert
    WorkflowInstance.objects.filter(pk=stuck.pk).update(updated_at=timezone.now())
    assert services.sweep_alerts() == 1
    alert.refresh_from_db()
    assert alert.state == "resolved"
    assert [m.kind for m in alert_mails()] == ["alert_fired", "alert_resolved"]


def test_firing_alerts_are_counted_on_metrics() -> None:
    from integrations.metrics import alert_metrics

    rule("instance_stuck", stuck_after=timedelta(hours=2))
    instance_row("running", quiet_for=timedelta(hours=3))
    services.sweep_alerts()
    [family] = alert_metrics()
    counts = {sample.labels["condition"]: sample.value for sample in family.samples}
    assert counts["instance_stuck"] == 1 and counts["instance_failed"] == 0


def test_an_alert_resolved_by_hand_is_not_fired_again_for_the_same_trouble() -> None:
    rule("instance_stuck", stuck_after=timedelta(hours=2))
    stuck = instance_row("running", quiet_for=timedelta(hours=3))
    services.sweep_alerts()
    alert = Alert.objects.get()
    assert services.alert_resolve(alert_id=alert.pk, actor="user:otto") is True
    assert services.sweep_alerts() == 0  # the same quiet spell
    WorkflowInstance.objects.filter(pk=stuck.pk).update(updated_at=timezone.now())
    later = timezone.now() + timedelta(hours=2, minutes=1)
    assert services.sweep_alerts(now=later) == 1  # it moved, then got stuck again: news


# -- approval_overdue (registered by approvals) ----------------------------------------------------


@pytest.fixture
def expense(
    rung: list, django_capture_on_commit_callbacks: Any, django_user_model: Any
) -> WorkflowInstance:
    alice = django_user_model.objects.create_user("alice", email="alice@example.com")
    bob = django_user_model.objects.create_user("bob", email="bob@example.com")
    Group.objects.create(name="managers").user_set.add(bob)
    django_user_model.objects.create_user("admin", email="admin@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        instance, _ = engine.instance_start(
            workflow="expense_approval",
            input={"amount": 80, "currency": "EUR", "description": "Taxi", "requester": "alice"},
            started_by=alice,
        )
    run_scheduled(django_capture_on_commit_callbacks, instance)
    return instance


def test_an_overdue_approval_alerts_after_its_grace_and_resolves_when_cancelled(
    expense: WorkflowInstance, django_capture_on_commit_callbacks: Any
) -> None:
    assert "approval_overdue" in conditions.registered_conditions()
    rule("approval_overdue", overdue_grace=timedelta(hours=6), workflow="expense_approval")
    rule("approval_overdue", name="elsewhere", workflow="t_sequence")
    now = timezone.now()
    assert services.sweep_alerts(now=now + timedelta(days=3, hours=1)) == 0  # within the grace
    assert services.sweep_alerts(now=now + timedelta(days=3, hours=7)) == 1
    alert = Alert.objects.get()
    assert alert.subject.startswith("approval:") and "manager_approval overdue" in alert.title
    assert alert.instance_id == expense.pk
    with django_capture_on_commit_callbacks(execute=True):
        engine.instance_cancel(instance_id=expense.pk, reason="withdrawn")
    alert.refresh_from_db()
    assert alert.state == "resolved"  # rechecked on the approval_cancelled event


# -- schedule_missed (orchestration.signals.schedule_missed) ---------------------------------------


def test_a_missed_schedule_alerts_once_until_resolved_by_hand() -> None:
    rule("schedule_missed")
    fire = timezone.now().replace(microsecond=0)
    for reason in ("overlap: skip", "overlap: skip"):
        schedule_missed.send(
            sender=None, schedule_id=7, schedule_name="nightly", fire_time=fire, reason=reason
        )
    alert = Alert.objects.get()
    assert (alert.subject, alert.times_seen) == ("schedule:7", 2)
    assert "nightly" in alert.title and alert.details["reason"] == "overlap: skip"
    assert services.sweep_alerts() == 0  # nothing recovers a missed fire on its own
    assert services.alert_resolve(alert_id=alert.pk, actor="user:otto")
    schedule_missed.send(
        sender=None, schedule_id=7, schedule_name="nightly", fire_time=fire, reason="down"
    )
    assert Alert.objects.filter(state="firing").count() == 1
    assert len(alert_mails()) == 3  # fired, resolved, fired again


# -- the admin -------------------------------------------------------------------------------------


def test_resolve_now_in_the_admin_resolves_once(admin_client: Any) -> None:
    watching = rule("schedule_missed")
    alert = services.alert_fire(rule=watching, finding=conditions.Finding(subject="s", title="t"))
    post = {"action": "resolve_now", "_selected_action": [str(alert.pk)], "index": "0"}
    response = admin_client.post("/admin/integrations/alert/", post, follow=True)
    assert "1 alerts resolved" in response.content.decode()
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_by.endswith("admin")
    response = admin_client.post("/admin/integrations/alert/", post, follow=True)
    assert "already resolved" in response.content.decode()
    assert len(alert_mails()) == 2  # fired, resolved: not a second resolved notice
    page = admin_client.get(f"/admin/integrations/alert/{alert.pk}/change/")
    assert page.status_code == 200 and b"resolved" in page.content
    listing = admin_client.get("/admin/integrations/alert/?state__exact=firing")
    assert listing.status_code == 200
