from __future__ import annotations

from celery import shared_task

from . import sweepers


@shared_task(name="approvals.sweep_reminders", ignore_result=True)
def sweep_reminders() -> int:
    return sweepers.sweep_reminders()


@shared_task(name="approvals.sweep_escalations", ignore_result=True)
def sweep_escalations() -> int:
    return sweepers.sweep_escalations()


@shared_task(name="approvals.sweep_expiry", ignore_result=True)
def sweep_expiry() -> int:
    return sweepers.sweep_expiry()
