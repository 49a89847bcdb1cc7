"""A missed schedule fire alerts over real SMTP once, and the alert resolves when the schedule
fires on time again: a real worker (sending the mail and running the scheduled instance) on
Redis and PostgreSQL, the schedule and alert sweepers run by this process under time-machine
(standing in for beat), the mail received by a real SMTP server."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from integrations.alerts import services
from integrations.models import Alert
from orchestration import schedules, sweepers
from orchestration.models import ScheduleFire, WorkflowInstance
from tests.conftest import wait_for
from tests.integrations.alert_helpers import expect_one_resolved_mail, rule
from tests.integrations.test_alerts_delivery import MailingWorker, mailing_worker  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_e2e_a_missed_schedule_mails_one_alert_then_resolves_when_it_fires_on_time(
    mailing_worker: MailingWorker,  # noqa: F811
    smtp_server: Any,
) -> None:
    rule("schedule_missed", mail_to="oncall@example.com")
    # Hours back: the fire times below are then in the worker's past (it claims no step whose
    # due time is ahead of its clock).
    begin = timezone.now() - timedelta(hours=3)
    with time_machine.travel(begin, tick=False):
        schedule = schedules.schedule_create(
            values={
                "name": "nightly export",
                "workflow": "t_scheduled",
                "input": {"report": "export"},
                "interval_seconds": 3600,
                "catchup_window_seconds": 60,
            }
        )
    first = schedule.next_fire_at
    # Down past the catch-up window: the fire is recorded missed, and the alert mailed.
    with time_machine.travel(first + timedelta(minutes=10), tick=False):
        assert sweepers.sweep_schedules() == 1
    assert not WorkflowInstance.objects.filter(schedule=schedule).exists()
    wait_for(lambda: len(smtp_server.messages) >= 1, timeout=40, message="the alert mail")
    [message] = smtp_server.messages
    assert message["To"] == "oncall@example.com"
    assert message["Subject"].startswith("[Alert]") and "nightly export" in message["Subject"]
    alert = Alert.objects.get()
    assert (alert.state, alert.subject) == ("firing", f"schedule:{schedule.pk}")
    # Beat runs the alert sweeper again: the schedule has not fired on time yet, no new mail.
    with time_machine.travel(first + timedelta(minutes=11), tick=False):
        assert services.sweep_alerts() == 0
    # On time again: the next fire starts its instance (run by the worker), and the alert
    # sweeper resolves the alert: one resolved notice.
    schedule.refresh_from_db()
    second = schedule.next_fire_at
    assert second == first + timedelta(hours=1)
    with time_machine.travel(second + timedelta(seconds=2), tick=False):
        assert sweepers.sweep_schedules() == 1
        assert services.sweep_alerts() == 1
        assert services.sweep_alerts() == 0
    wait_for(
        lambda: WorkflowInstance.objects.filter(schedule=schedule, state="succeeded").exists(),
        message="the scheduled instance to succeed",
    )
    expect_one_resolved_mail(smtp_server)
    alert.refresh_from_db()
    assert alert.state == "resolved" and Alert.objects.count() == 1
    assert list(
        ScheduleFire.objects.filter(schedule=schedule)
        .order_by("fire_time")
        .values_list("fire_time", "outcome")
    ) == [(first, "missed"), (second, "started")]
