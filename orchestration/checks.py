"""Start-up checks: every definition version that unfinished instances run on must still be
registered, or those instances could never finish; every active schedule should start a
registered workflow (or its fires are recorded failed) — these two run with `manage.py check
--database default`, before `migrate`, and when `runall` and workers start; and every child
step's workflow must be registered, and the business calendars must name known countries,
subdivisions and time zones (every `manage.py check`)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError

from .calendar import calendar_problems
from .definitions import registry
from .models import InstanceState, Schedule, WorkflowInstance

OPEN = [
    InstanceState.PENDING,
    InstanceState.RUNNING,
    InstanceState.COMPENSATING,
    InstanceState.FAILED,
]


def missing_definitions() -> list[tuple[str, int, int]]:
    """(workflow, version, open instances) for versions in use but not registered."""
    # order_by(): the model's default ordering would put created_at into the DISTINCT and
    # report each version once per instance.
    rows = (
        WorkflowInstance.objects.filter(state__in=OPEN)
        .order_by()
        .values_list("workflow", "version")
        .distinct()
    )
    missing = []
    for workflow, version in rows:
        if registry.get(workflow, version) is None:
            count = WorkflowInstance.objects.filter(
                workflow=workflow, version=version, state__in=OPEN
            ).count()
            missing.append((workflow, version, count))
    return missing


@register(Tags.database)
def check_definitions_in_use(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Error]:
    if not databases:
        return []
    try:
        missing = missing_definitions()
    except DatabaseError:
        return []  # tables not migrated yet
    return [
        Error(
            f"workflow {workflow} version {version} is used by {count} unfinished instance(s) "
            "but is not registered",
            hint="Keep the old definition registered (list its module in "
            "SIGNOFF_WORKFLOW_MODULES) until its instances finish, or cancel them.",
            id="signoff.E001",
        )
        for workflow, version, count in missing
    ]


@register()
def check_child_workflows(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Every ``child`` step (:mod:`orchestration.children`), and every map step over child
    workflows (:mod:`orchestration.fanout_children`), names a registered workflow: one
    may have been unregistered or replaced after its parent registered."""
    errors = []
    for workflow in registry.all():
        for spec in workflow.steps.values():
            name, version = getattr(spec, "workflow", None), getattr(spec, "version", None)
            starts = spec.kind == "child" or getattr(spec, "runner", None) == "child"
            if starts and registry.get(name, version) is None:
                errors.append(
                    Error(
                        f"{workflow.label}: step {spec.name!r} starts {name}"
                        + (f" v{version}" if version else "")
                        + ", which is not registered",
                        hint="List the child workflow's module in SIGNOFF_WORKFLOW_MODULES.",
                        id="signoff.E010",
                    )
                )
    return errors


@register(Tags.database)
def check_schedules_startable(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Warning]:
    """A warning per active schedule whose workflow (or pinned version) is not registered."""
    if not databases:
        return []
    try:
        rows = list(
            Schedule.objects.filter(paused=False).values_list("name", "workflow", "version")
        )
    except DatabaseError:
        return []  # tables not migrated yet
    return [
        Warning(
            f"schedule {name!r} starts workflow {workflow}"
            + (f" version {version}" if version else "")
            + ", which is not registered: its fires will be recorded failed",
            hint="Register the workflow (SIGNOFF_WORKFLOW_MODULES), or pause or change the "
            "schedule.",
            id="signoff.W001",
        )
        for name, workflow, version in rows
        if registry.get(workflow, version) is None
    ]


@register()
def check_business_calendars(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The default business calendar (SIGNOFF_BUSINESS_*) and the named ones
    (SIGNOFF_BUSINESS_CALENDARS): a country or subdivision the ``holidays`` library does not
    know, a time zone, days, hours or a holiday that does not parse stops start-up."""
    return [
        Error(
            problem,
            hint="SIGNOFF_BUSINESS_COUNTRY takes an ISO 3166 code (DE, FR, US, ...), "
            "SIGNOFF_BUSINESS_SUBDIVISION one of its subdivisions (BY, ...); README "
            '"Business calendars".',
            id="signoff.E031",
        )
        for problem in calendar_problems()
    ]
