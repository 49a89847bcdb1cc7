"""The approvals' Celery tasks, thin: the beat sweepers (:mod:`approvals.sweepers`,
:mod:`approvals.digests`) and the render task of the batched escalation's mails. The sweepers
send the render task by name (:data:`approvals.sweepers.RENDER_MAILS`), never importing this
module."""

from __future__ import annotations

from celery import shared_task

from . import notifications, sweepers


@shared_task(name="approvals.sweep_reminders", ignore_result=True)
def sweep_reminders() -> int:
    return sweepers.sweep_reminders()


@shared_task(name="approvals.sweep_escalations", ignore_result=True)
def sweep_escalations() -> int:
    return sweepers.sweep_escalations()


@shared_task(name="approvals.sweep_expiry", ignore_result=True)
def sweep_expiry() -> int:
    return sweepers.sweep_expiry()


@shared_task(name="approvals.sweep_claims", ignore_result=True)
def sweep_claims() -> int:
    return sweepers.sweep_claims()


@shared_task(name="approvals.sweep_digests", ignore_result=True)
def sweep_digests() -> int:
    return sweepers.sweep_digests()


@shared_task(name=sweepers.RENDER_MAILS, acks_late=True, ignore_result=True)
def render_mails(email_ids: list[int]) -> int:
    return notifications.mails_render(email_ids=email_ids)
