"""Reads used by the API and the pages."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Prefetch, Q, QuerySet

from .errors import InvalidInput, NotAllowed, NotFound
from .models import KEY_OWNER, Event, InstanceState, StepRun, WorkflowInstance


def can_see_all_instances(user: Any) -> bool:
    """Staff and holders of ``orchestration.operate_instance`` see every instance."""
    return bool(user.is_staff or user.has_perm("orchestration.operate_instance"))


def instances_visible_to(user: Any) -> QuerySet[WorkflowInstance]:
    """Every instance for operators; the instances they started for everyone else."""
    qs = WorkflowInstance.objects.all()
    if not can_see_all_instances(user):
        qs = qs.filter(started_by=user)
    return qs


def _with_steps(qs: QuerySet[WorkflowInstance]) -> QuerySet[WorkflowInstance]:
    # Two queries whatever the number of instances: the instances (with their starter) and
    # all their steps.
    steps = Prefetch("steps", queryset=StepRun.objects.order_by("position"))
    return qs.select_related("started_by").prefetch_related(steps)


def _filter_value(name: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        # PostgreSQL cannot compare text with NUL; answer 400 rather than a 500.
        raise InvalidInput(f"{name} must not contain NUL characters", code="invalid_filter")
    return value


def instance_list(
    *,
    user: Any,
    workflow: str | None = None,
    state: str | None = None,
    business_key: str | None = None,
) -> QuerySet[WorkflowInstance]:
    """Instances ``user`` may see, filtered; an unknown ``state`` is :class:`InvalidInput`.
    The query count does not grow with the number of instances."""
    qs = instances_visible_to(user)
    if state is not None:
        # An empty ?state= is not a state either: 400, as the schema's enum says.
        if state not in InstanceState.values:
            raise InvalidInput(
                f"unknown state {state!r}; one of {', '.join(InstanceState.values)}",
                code="invalid_filter",
            )
        qs = qs.filter(state=state)
    if _filter_value("workflow", workflow):
        qs = qs.filter(workflow=workflow)
    if _filter_value("business_key", business_key):
        qs = qs.filter(business_key=business_key)
    return _with_steps(qs)


def instance_get(*, user: Any, instance_id: Any) -> WorkflowInstance:
    """The instance with its steps if ``user`` may see it; :class:`NotFound` otherwise (also
    for ids that are not UUIDs), so a caller cannot probe for others' instances."""
    try:
        pk = uuid.UUID(str(instance_id))
    except ValueError:
        raise NotFound("instance not found") from None
    instance = _with_steps(instances_visible_to(user).filter(pk=pk)).first()
    if instance is None:
        raise NotFound("instance not found")
    return instance


OPERATE_PERMISSION = "orchestration.operate_instance"


def instance_for_action(*, user: Any, instance_id: Any) -> WorkflowInstance:
    """The instance if ``user`` may act on it (cancel, retry, signal): its starter, or a holder
    of ``orchestration.operate_instance``. :class:`NotFound` for an instance the user may not
    see; :class:`NotAllowed` for one they may only see (staff without the permission: they
    see but do not act, as in the admin and on the status page)."""
    instance = instance_get(user=user, instance_id=instance_id)
    if instance.started_by_id is not None and instance.started_by_id == user.pk:
        return instance
    if not user.has_perm(OPERATE_PERMISSION):
        raise NotAllowed(
            f"acting on an instance you did not start needs the {OPERATE_PERMISSION} permission",
            code="permission_denied",
        )
    return instance


def instance_with_idempotency_key(*, user: Any, workflow: str, key: str) -> WorkflowInstance | None:
    """The instance of ``workflow`` that ``user`` started with ``key`` (keys are per caller)."""
    return (
        WorkflowInstance.objects.alias(owner=KEY_OWNER)
        .filter(workflow=workflow, owner=user.pk or 0, idempotency_key=key)
        .first()
    )


def instance_history(*, instance: WorkflowInstance) -> QuerySet[Event]:
    """The instance's events, oldest first (``seq`` counts from 1 without gaps)."""
    return Event.objects.filter(instance=instance).order_by("seq")


def stuck_q(now: Any = None) -> Q:
    """Instances that need an operator's look: a running step past its attempt deadline, a
    scheduled step whose doorbell is overdue, a step retrying for more than an hour, or a
    running instance with no event for ``SIGNOFF_STUCK_AFTER_SECONDS``."""
    from datetime import timedelta

    from django.conf import settings
    from django.db.models import Exists, OuterRef
    from django.utils import timezone

    now = now or timezone.now()
    quiet = now - timedelta(seconds=settings.SIGNOFF_STUCK_AFTER_SECONDS)
    grace = now - timedelta(seconds=settings.SIGNOFF_DOORBELL_GRACE_SECONDS)
    steps = StepRun.objects.filter(instance=OuterRef("pk"))
    return Q(state="running") & (
        Q(Exists(steps.filter(state="running", timeout_at__lt=now)))
        | Q(Exists(steps.filter(state="scheduled", next_attempt_at__lt=grace)))
        | Q(Exists(steps.filter(state="retrying", scheduled_at__lt=now - timedelta(hours=1))))
        | Q(updated_at__lt=quiet)
    )


def stuck_instances(now: Any = None) -> QuerySet[WorkflowInstance]:
    return WorkflowInstance.objects.filter(stuck_q(now)).order_by("updated_at")


def instance_for_signature(*, instance_id: Any) -> WorkflowInstance:
    """The instance a signed callback names (the signature, checked next, authorises it)."""
    try:
        pk = uuid.UUID(str(instance_id))
    except ValueError:
        raise NotFound("instance not found") from None
    instance = WorkflowInstance.objects.filter(pk=pk).first()
    if instance is None:
        raise NotFound("instance not found")
    return instance
