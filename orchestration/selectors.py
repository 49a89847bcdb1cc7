"""Reads used by the API and the pages."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.utils.translation import gettext_noop

from . import sealing
from . import search as searching
from .definitions import registry
from .errors import InvalidInput, Message, NotAllowed, NotFound
from .fanout_models import MapItem
from .fanout_runners import item_states, summary
from .models import (
    KEY_OWNER,
    Event,
    FireOutcome,
    InstanceState,
    Schedule,
    ScheduleFire,
    StepRun,
    WorkflowInstance,
)

log = logging.getLogger("signoff.engine")


def can_see_all_instances(user: Any) -> bool:
    """Staff and holders of ``orchestration.operate_instance`` see every instance."""
    return bool(user.is_staff or user.has_perm("orchestration.operate_instance"))


def instances_visible_to(user: Any) -> QuerySet[WorkflowInstance]:
    """Every instance for operators; the instances they started for everyone else."""
    qs = WorkflowInstance.objects.all()
    if not can_see_all_instances(user):
        qs = qs.filter(started_by=user)
    return qs


def instances_started_by(user: Any) -> QuerySet[WorkflowInstance]:
    """The instances ``user`` started (not those they may see as an operator): the base of
    the "My requests" page, which the approvals app widens with the instances naming them
    the requester. Walks the ``started_by`` foreign-key index."""
    return WorkflowInstance.objects.filter(started_by_id=user.pk)


def _with_steps(qs: QuerySet[WorkflowInstance]) -> QuerySet[WorkflowInstance]:
    # Two queries whatever the number of instances: the instances (with their starter and,
    # for a child, the parent's step and instance) and all their steps (with a map step's
    # counter row, joined).
    steps = Prefetch(
        "steps", queryset=StepRun.objects.select_related("map_run").order_by("position")
    )
    return qs.select_related(
        "started_by", "parent_step__instance", "parent_item__step_run__instance"
    ).prefetch_related(steps)


def attach_children(instances: Iterable[WorkflowInstance]) -> list[WorkflowInstance]:
    """Set ``child_links`` on each instance: the child workflows its ``child`` steps started,
    as ``(child, step name)`` by step and attempt. One query for the whole page, and none
    when no instance's definition has a ``child`` step (read from the registry, so a fresh
    instance's steps are not read again)."""
    instances = list(instances)
    parents = [i for i in instances if _may_have_children(i)]
    found: dict[int, list[WorkflowInstance]] = {}
    if parents:
        rows = (
            WorkflowInstance.objects.filter(parent_step__instance__in=parents)
            .select_related("parent_step")
            .only(
                "id",
                "workflow",
                "version",
                "state",
                "parent_attempt",
                "parent_step__name",
                "parent_step__instance",
            )
            .order_by("parent_step__position", "parent_attempt")
        )
        for child in rows:
            found.setdefault(child.parent_step.instance_id, []).append(child)
    for instance in instances:
        instance.child_links = [(c, c.parent_step.name) for c in found.get(instance.pk, [])]
    return instances


def _may_have_children(instance: WorkflowInstance) -> bool:
    definition = registry.get(instance.workflow, instance.version)
    if definition is None:
        return True  # not registered (any more): look
    return any(spec.kind == "child" for spec in definition.steps.values())


def _filter_value(name: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        # PostgreSQL cannot compare text with NUL; answer 400 rather than a 500.
        raise InvalidInput(
            Message(gettext_noop("%(name)s must not contain NUL characters"), name=name),
            code="invalid_filter",
        )
    return value


def instance_list(
    *,
    user: Any,
    workflow: str | None = None,
    state: str | None = None,
    business_key: str | None = None,
    schedule: str | None = None,
    search: Any = None,
) -> QuerySet[WorkflowInstance]:
    """Instances ``user`` may see, filtered (``schedule``: the id of the schedule that started
    them); an unknown ``state`` or a ``schedule`` that is not an id is :class:`InvalidInput`.
    ``search`` (an :class:`orchestration.search.InstanceSearch`) narrows by error text and
    input fields; a sealed field in it is :class:`InvalidInput`. The query count does not
    grow with the number of instances."""
    qs = instances_visible_to(user)
    if state is not None:
        # An empty ?state= is not a state either: 400, as the schema's enum says.
        if state not in InstanceState.values:
            raise InvalidInput(
                Message(
                    gettext_noop("unknown state %(state)s; one of %(states)s"),
                    state=repr(state),
                    states=", ".join(InstanceState.values),
                ),
                code="invalid_filter",
            )
        qs = qs.filter(state=state)
    if _filter_value("workflow", workflow):
        qs = qs.filter(workflow=workflow)
    if _filter_value("business_key", business_key):
        qs = qs.filter(business_key=business_key)
    if schedule is not None:
        if not schedule.isascii() or not schedule.isdigit() or len(schedule) > 18:
            raise InvalidInput(
                gettext_noop("schedule must be a schedule's id"), code="invalid_filter"
            )
        qs = qs.filter(schedule_id=int(schedule))
    if search:
        searching.refuse_sealed(search, workflow or None)
        qs = searching.apply(qs, search)
    return _with_steps(qs)


# -- readers: people other apps let read an instance ---------------------------------------------

# Other apps let people with a part in an instance read it (approvals: the assignees, past
# assignees and requester of its approval requests) through this hook, so the engine neither
# imports them nor reads their tables. A reader answers for one user and one instance.
InstanceReader = Callable[[Any, WorkflowInstance], bool]
_READERS: list[InstanceReader] = []


def register_instance_reader(reader: InstanceReader) -> InstanceReader:
    """Register ``reader(user, instance) -> bool``: whether ``user`` may read ``instance``
    (its status page, history downloads, API detail and history) although they neither
    started it nor operate instances. Such readers read only: no operator action, sealed
    fields masked whatever their permissions. Asked only when the user is no owner (one call
    per page or API call: keep it to a query or two); a reader that raises counts as no."""
    if reader not in _READERS:
        _READERS.append(reader)
    return reader


def is_owner(user: Any, instance: WorkflowInstance) -> bool:
    """Staff, operators and the instance's starter: who saw an instance before readers."""
    return can_see_all_instances(user) or (
        instance.started_by_id is not None and instance.started_by_id == user.pk
    )


def is_reader(user: Any, instance: WorkflowInstance) -> bool:
    """Whether a registered reader lets ``user`` read ``instance``."""
    for reader in _READERS:
        try:
            if reader(user, instance):
                return True
        except Exception:  # noqa: BLE001 - a broken hook denies, never breaks the page
            log.exception("instance reader %r failed", reader)
    return False


def can_read(user: Any, instance: WorkflowInstance) -> bool:
    return is_owner(user, instance) or is_reader(user, instance)


def may_reveal(user: Any, instance: WorkflowInstance) -> bool:
    """Whether ``user`` sees the instance's sealed fields opened: holders of
    ``orchestration.view_sensitive`` who own it (readers never do)."""
    return sealing.can_view(user) and is_owner(user, instance)


def instance_get(*, user: Any, instance_id: Any) -> WorkflowInstance:
    """The instance with its steps if ``user`` may see it — an owner (:func:`is_owner`) or a
    registered reader lets them (:func:`register_instance_reader`); :class:`NotFound`
    otherwise (also for ids that are not UUIDs), so a caller cannot probe for others'
    instances."""
    try:
        pk = uuid.UUID(str(instance_id))
    except ValueError:
        raise NotFound(gettext_noop("instance not found")) from None
    instance = _with_steps(instances_visible_to(user).filter(pk=pk)).first()
    if instance is None and _READERS and getattr(user, "is_authenticated", False):
        candidate = _with_steps(WorkflowInstance.objects.filter(pk=pk)).first()
        if candidate is not None and is_reader(user, candidate):
            instance = candidate
    if instance is None:
        raise NotFound(gettext_noop("instance not found"))
    attach_children([instance])
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
            Message(
                gettext_noop(
                    "acting on an instance you did not start needs the %(permission)s permission"
                ),
                permission=OPERATE_PERMISSION,
            ),
            code="permission_denied",
        )
    return instance


def instance_for_operator(*, user: Any, instance_id: Any) -> WorkflowInstance:
    """The instance if ``user`` holds ``orchestration.operate_instance`` (the repair actions:
    edit, skip, reset, resolve an undo — the starter alone may not). :class:`NotFound` for
    an instance the user may not see; :class:`NotAllowed` for one they may only see."""
    instance = instance_get(user=user, instance_id=instance_id)
    if not user.has_perm(OPERATE_PERMISSION):
        raise NotAllowed(
            Message(
                gettext_noop("repairing an instance needs the %(permission)s permission"),
                permission=OPERATE_PERMISSION,
            ),
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


# How far before its instance's creation an event's time may lie: events are stamped by the
# process that writes them, whose clock may be a little behind the one that started the
# instance. Far more than any real skew; small next to a history partition (a week or month).
EVENT_CLOCK_MARGIN = timedelta(days=1)


def events_of(instance: WorkflowInstance) -> QuerySet[Event]:
    """The instance's events (unordered), bounded below by its creation time so that
    PostgreSQL skips the history partitions before it (a read costs one index probe per
    partition it cannot skip: ``README``, "History that scales")."""
    return Event.objects.filter(instance=instance, at__gte=instance.created_at - EVENT_CLOCK_MARGIN)


def instance_history(*, instance: WorkflowInstance) -> QuerySet[Event]:
    """The instance's events, oldest first (``seq`` counts from 1 without gaps)."""
    return events_of(instance).order_by("seq")


def stuck_q(now: Any = None) -> Q:
    """Instances that need an operator's look: a running step past its attempt deadline, a
    scheduled step whose doorbell is overdue, a step retrying for more than an hour, or a
    running instance with no event for ``SIGNOFF_STUCK_AFTER_SECONDS``."""
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
        raise NotFound(gettext_noop("instance not found")) from None
    instance = WorkflowInstance.objects.filter(pk=pk).first()
    if instance is None:
        raise NotFound(gettext_noop("instance not found"))
    return instance


# -- for watchers (the alert rules in integrations) ----------------------------------------------

_BRIEF = ("id", "workflow", "version", "state", "error", "business_key", "updated_at", "paused_at")


def instances_by_id(ids: list[Any]) -> dict[str, WorkflowInstance]:
    """The named instances (a few columns), keyed by their id as text; unknown ids are left
    out. One query."""
    return {
        str(i.pk): i
        for i in WorkflowInstance.objects.filter(pk__in=list(ids)).only(*_BRIEF).order_by()
    }


def quiet_instances(*, before: Any, workflow: str = "", limit: int = 200) -> list[WorkflowInstance]:
    """Pending or running instances, not paused, whose last event is older than ``before``
    (no progress since), oldest first, at most ``limit``."""
    qs = WorkflowInstance.objects.filter(
        state__in=(InstanceState.PENDING, InstanceState.RUNNING),
        paused_at__isnull=True,
        updated_at__lt=before,
    )
    if workflow:
        qs = qs.filter(workflow=workflow)
    return list(qs.only(*_BRIEF).order_by("updated_at")[:limit])


def failed_instances(*, since: Any, workflow: str = "", limit: int = 200) -> list[WorkflowInstance]:
    """Failed instances that finished at or after ``since``, oldest first, at most ``limit``."""
    qs = WorkflowInstance.objects.filter(state=InstanceState.FAILED, finished_at__gte=since)
    if workflow:
        qs = qs.filter(workflow=workflow)
    return list(qs.only(*_BRIEF, "finished_at").order_by("finished_at")[:limit])


# -- schedules --------------------------------------------------------------------------------

SCHEDULE_PERMISSIONS = {
    "view": "orchestration.view_schedule",
    "add": "orchestration.add_schedule",
    "change": "orchestration.change_schedule",
    "delete": "orchestration.delete_schedule",
}


def may_schedule(user: Any, action: str) -> bool:
    """Whether ``user`` may ``action`` (view, add, change, delete) schedules: the model
    permission; staff may also view, as they see every instance (pause, resume and trigger
    are changes)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if action == "view" and (user.is_staff or user.has_perm(SCHEDULE_PERMISSIONS["change"])):
        return True
    return user.has_perm(SCHEDULE_PERMISSIONS[action])


def schedule_list(*, user: Any) -> QuerySet[Schedule]:
    """Every schedule, by name, for a user who may view schedules (:class:`NotAllowed`
    otherwise), with what its resource shows loaded in the same query."""
    if not may_schedule(user, "view"):
        raise NotAllowed(
            gettext_noop("viewing schedules needs orchestration.view_schedule or staff")
        )
    return Schedule.objects.select_related("created_by").order_by("name")


def schedule_get(*, user: Any, schedule_id: Any) -> Schedule:
    schedule = schedule_list(user=user).filter(pk=_schedule_pk(schedule_id)).first()
    if schedule is None:
        raise NotFound(gettext_noop("no such schedule"), code="not_found")
    return schedule


def schedule_fires(*, schedule: Schedule, limit: int = 50) -> list[ScheduleFire]:
    """The schedule's newest fire records."""
    return list(schedule.fires.order_by("-fire_time")[:limit])


def schedules_on_time_again(schedule_ids: Iterable[Any]) -> set[int]:
    """Of ``schedule_ids``, the schedules whose newest fire record says ``started``: after a
    miss, a fire on time again (what a ``schedule missed`` alert recovers on). One query."""
    ids = [pk for pk in map(_schedule_pk, schedule_ids) if pk]
    if not ids:
        return set()
    newest = ScheduleFire.objects.filter(schedule=OuterRef("pk")).order_by("-fire_time")
    return set(
        Schedule.objects.filter(pk__in=ids)
        .annotate(newest=Subquery(newest.values("outcome")[:1]))
        .filter(newest=FireOutcome.STARTED)
        .values_list("pk", flat=True)
    )


def _schedule_pk(value: Any) -> int:
    text = str(value)
    return int(text) if text.isdigit() and len(text) < 19 else 0


def map_item_counts(step: StepRun) -> dict[str, int] | None:
    """A map step's items by state, with their ``total`` (one grouped count); None for other
    kinds or before the step has items."""
    if step.kind != "map":
        return None
    counts = item_states(step.pk)
    return summary(counts) if counts else None


def map_item_counts_for(instances: Any) -> dict[int, dict[str, int]]:
    """:func:`map_item_counts` of every map step of ``instances`` (their steps prefetched), in
    one query (none without map steps): for lists."""
    ids = [s.pk for i in instances for s in i.steps.all() if s.kind == "map"]
    if not ids:
        return {}
    found: dict[int, dict[str, int]] = {}
    rows = (
        MapItem.objects.filter(step_run_id__in=ids)
        .order_by()
        .values_list("step_run_id", "state")
        .annotate(n=Count("pk"))
        .values_list("step_run_id", "state", "n")
    )
    for step_id, state, n in rows:
        found.setdefault(step_id, {})[state] = n
    return {step_id: summary(counts) for step_id, counts in found.items()}


def parent_step_of(instance: WorkflowInstance) -> tuple[StepRun | None, int | None]:
    """``(the parent's step that started this child, the map item's index or None)``; a
    top-level instance: ``(None, None)``."""
    if instance.parent_step_id:
        return instance.parent_step, None
    if instance.parent_item_id:
        return instance.parent_item.step_run, instance.parent_item.index
    return None, None
