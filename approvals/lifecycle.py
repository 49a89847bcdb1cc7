"""The requester hears once about the end of their request's workflow.

The engine announces every committed event (``orchestration.signals.event_committed``, after
the commit, in the process that committed it). When an instance that asked someone for an
approval ends — succeeded, failed, cancelled, or compensated after a failure or a
cancellation — its requester gets one mail saying so, whatever step came last (a flow whose
last step is a task tells them too). Each step's decision is told on its own, as that step's
(``approval_decided`` mail, :func:`approvals.deciding._resolve`).

The mail's Message-ID is fixed per instance, end event and person, so a repeated announcement
queues nothing twice; an instance retried after a failure and ending again is a new end.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from integrations.mail import email_queue
from orchestration.definitions import registry

from . import notifications
from .kind import ApprovalKind
from .models import ApprovalRequest

log = logging.getLogger("signoff.approvals")

END_EVENTS = {
    "instance_succeeded": "succeeded",
    "instance_failed": "failed",
    "instance_cancelled": "was cancelled",
    "instance_compensated": "was undone",
}
DETAIL_LENGTH = 500


def on_event_committed(sender: Any, event: Any, **kwargs: Any) -> None:
    """``event_committed`` receiver: an end event queues the requester's mail. Never raises
    (a failure is logged; the engine goes on)."""
    if event.type not in END_EVENTS or _holds_no_requests(event):
        return
    try:
        instance_end_notify(event=event)
    except Exception:  # noqa: BLE001 - a listener never breaks the engine
        log.exception("end notice for instance %s not queued", event.instance_id)


def _holds_no_requests(event: Any) -> bool:
    """Whether ``event``'s instance certainly has no approval request: the version of its
    workflow it runs declares no approval step (only approval steps open requests). Answered
    from the registry, with the instance the engine announced the event with: the worker's
    profile showed this receiver's two queries at every instance's end in a third of a
    task-only workflow's step time. Unknown (another caller's event, an unregistered version):
    False, and the database is asked."""
    descriptor = getattr(type(event), "instance", None)
    if descriptor is None or not descriptor.is_cached(event):
        return False
    instance = event.instance
    definition = registry.get(instance.workflow, instance.version)
    if definition is None:
        return False
    return not any(spec.kind == ApprovalKind.name for spec in definition.steps.values())


def _summary(event: Any, instance: Any) -> tuple[str, str]:
    """What happened, in a sentence, and the detail worth quoting (an error, a reason)."""
    data = event.data if isinstance(event.data, dict) else {}
    error = instance.error if isinstance(instance.error, dict) else {}
    if event.type == "instance_succeeded":
        return "every step is done.", ""
    if event.type == "instance_failed":
        failure = data.get("error") if isinstance(data.get("error"), dict) else error
        return "it failed and stopped.", str(failure.get("message", ""))[:DETAIL_LENGTH]
    if event.type == "instance_cancelled":
        return "it was cancelled.", str(data.get("reason", ""))[:DETAIL_LENGTH]
    # compensated: what was done is undone, after a failure or a cancellation
    if error:
        return (
            "it failed, and the steps already done were undone.",
            str(error.get("message", ""))[:DETAIL_LENGTH],
        )
    return "it was cancelled, and the steps already done were undone.", ""


def instance_end_notify(*, event: Any) -> bool:
    """Queue the end notice of ``event``'s instance for its requester (the requester of its
    first approval request that names one; with ``SIGNOFF_STARTER_IS_REQUESTER`` the starter
    when none does). No approval request, no requester or no address: nothing."""
    requests = (
        ApprovalRequest.objects.filter(instance_id=event.instance_id)
        .select_related("requester", "instance", "instance__started_by")
        .order_by("created_at", "pk")
    )
    # The first request that names a requester (its title names the whole request, as the
    # first step saw it), else the first.
    request = requests.filter(requester__isnull=False).first() or requests.first()
    if request is None:
        return False
    person = request.requester
    if person is None and settings.SIGNOFF_STARTER_IS_REQUESTER:
        person = request.instance.started_by
    if person is None or not person.is_active or not person.email:
        return False
    summary, detail = _summary(event, request.instance)
    ending = END_EVENTS[event.type]
    mail = email_queue(
        message_id=(
            f"<signoff.finished.{event.instance_id}.{event.seq}.{person.pk}"
            f"@{notifications._domain()}>"
        ),
        kind="approval_finished",
        to=[person.email],
        template="approval_finished",
        context=notifications._context(
            request, user=person, ending=ending, summary=summary, detail=detail
        ),
        instance_id=event.instance_id,
        request_id=request.pk,
        recipient_id=person.pk,
    )
    return mail is not None
