"""Reads used by the API and the pages."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet

from .errors import InvalidInput, NotFound
from .models import Event, InstanceState, StepRun, WorkflowInstance


def can_see_all_instances(user: Any) -> bool:
    return bool(user.is_staff or user.has_perm("orchestration.operate_instance"))


def instances_visible_to(user: Any) -> QuerySet[WorkflowInstance]:
    qs = WorkflowInstance.objects.all()
    if not can_see_all_instances(user):
        qs = qs.filter(started_by=user)
    return qs


def instance_list(*, user: Any, workflow: str | None = None, state: str | None = None,
                  business_key: str | None = None) -> QuerySet[WorkflowInstance]:
    qs = instances_visible_to(user)
    if state:
        if state not in InstanceState.values:
            raise InvalidInput(
                f"unknown state {state!r}; one of {', '.join(InstanceState.values)}",
                code="invalid_filter",
            )
        qs = qs.filter(state=state)
    if workflow:
        qs = qs.filter(workflow=workflow)
    if business_key:
        qs = qs.filter(business_key=business_key)
    return qs.prefetch_related(
        _steps_prefetch()
    ).select_related("started_by")


def _steps_prefetch() -> Any:
    from django.db.models import Prefetch

    return Prefetch("steps", queryset=StepRun.objects.order_by("position"))


def instance_get(*, user: Any, instance_id: Any) -> WorkflowInstance:
    """The instance if ``user`` may see it; :class:`NotFound` otherwise (also for ids that are
    not UUIDs), so a caller cannot probe for others' instances."""
    try:
        pk = uuid.UUID(str(instance_id))
    except ValueError:
        raise NotFound("instance not found") from None
    instance = (instances_visible_to(user).filter(pk=pk)
                .prefetch_related(_steps_prefetch()).select_related("started_by").first())
    if instance is None:
        raise NotFound("instance not found")
    return instance


def instance_history(*, instance: WorkflowInstance) -> QuerySet[Event]:
    return Event.objects.filter(instance=instance).order_by("seq")
