"""What the alert tests share: the rule and instance factories (the ``sent`` fixture is in
this folder's conftest)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from integrations.models import AlertRule, OutboundEmail
from orchestration import engine
from orchestration.models import StepRun, WorkflowInstance


def rule(condition: str = "instance_failed", **fields: Any) -> AlertRule:
    fields.setdefault("name", f"rule-{AlertRule.objects.count() + 1}")
    if "webhook_url" not in fields and "mail_group" not in fields:
        fields.setdefault("mail_to", "ops@example.com")
    made = AlertRule(condition=condition, **fields)
    made.full_clean()
    made.save()
    return made


def instance_row(state: str, *, quiet_for: timedelta = timedelta(0), **fields: Any) -> Any:
    """An instance row in ``state``, last changed ``quiet_for`` ago (the conditions read rows
    only)."""
    at = timezone.now() - quiet_for
    fields.setdefault("workflow", "t_sequence")
    return WorkflowInstance.objects.create(
        version=1, state=state, created_at=at, updated_at=at, **fields
    )


def run_scheduled(capture: Any, instance: Any) -> None:
    """Play the worker in-process, committing (and announcing) after each attempt."""
    for _ in range(10):
        due = list(StepRun.objects.filter(instance=instance, state="scheduled"))
        if not due:
            return
        for step in due:
            with capture(execute=True):
                engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


def alert_mails() -> list[OutboundEmail]:
    return list(OutboundEmail.objects.filter(kind__startswith="alert_").order_by("pk"))


def expect_one_resolved_mail(smtp_server: Any) -> None:
    """Wait for the second mail and the outbox to drain: an alert, then one resolved notice."""
    from tests.conftest import wait_for

    wait_for(lambda: len(smtp_server.messages) >= 2, timeout=40, message="the resolved mail")
    wait_for(
        lambda: not OutboundEmail.objects.filter(status="queued").exists(),
        timeout=20,
        message="the outbox to drain",
    )
    subjects = [m["Subject"] for m in smtp_server.messages]
    assert len(subjects) == 2 and subjects[1].startswith("[Resolved]"), subjects
