"""HTML pages of the engine: the home page and an instance's status page.

The status page (``/instances/<id>/``) shows the workflow graph (server-side SVG), the timeline
of the history (:mod:`orchestration.timeline`), the operator actions for those allowed, and
downloads of the history. It is a thin layer: reads go through ``orchestration.selectors``, and
every action through the one confirm-and-run flow of :mod:`orchestration.operator_actions`
(shared with the admin), which calls one engine service and turns business errors into
messages.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods

from . import graph, selectors
from .definitions import registry
from .errors import NotFound
from .models import Event, StepRun, WorkflowInstance
from .operator_actions import (
    INSTANCE_OPERATIONS,
    STEP_OPERATIONS,
    Operation,
    can_operate,
    confirm_and_run,
    instance_operations,
    step_links,
    step_operations,
)
from .presentation import (
    child_links,
    error_line,
    human_duration,
    instance_state_label,
    masked,
    parent_link,
    pretty_json,
    status_url,
)
from .replica import replica_reads
from .timeline import build_timeline, timeline_details

TIMELINE_LIMIT = 500  # events shown on the page; the downloads hold them all
OPEN_STATES = ("pending", "running", "compensating")
LEGEND = [
    "pending",
    "scheduled",
    "running",
    "retrying",
    "waiting",
    "succeeded",
    "skipped",
    "failed",
    "timed_out",
    "cancelled",
]


def home(request: HttpRequest) -> HttpResponse:
    # The example names the host and port this request came to, not the default one.
    start_url = request.build_absolute_uri(reverse("api-instances"))
    return render(request, "home.html", {"workflows": registry.all(), "start_url": start_url})


# -- status page -------------------------------------------------------------------------------


@dataclass
class StepRow:
    step: StepRun
    duration: timedelta | None
    error: str
    traceback: str
    operations: list[Operation]
    links: list[tuple[str, str]] = field(default_factory=list)  # from register_step_links
    # A map step's items by outcome (selectors.map_item_counts): a summary, never a row per item.
    items: dict[str, int] | None = None

    @property
    def took(self) -> str:
        return human_duration(self.duration)


def page_context(request: HttpRequest, instance: WorkflowInstance) -> dict[str, Any]:
    now = timezone.now()
    steps = list(instance.steps.all())
    definition = registry.get(instance.workflow, instance.version)
    events = list(selectors.events_of(instance).order_by("-seq")[:TIMELINE_LIMIT])
    events.reverse()
    # A reader (someone another app lets read the instance: an assignee) reads only: no
    # operator action, sealed fields masked whatever their permissions.
    read_only = not selectors.is_owner(request.user, instance)
    operator = can_operate(request.user) and not read_only
    reveal = selectors.may_reveal(request.user, instance)
    links = step_links(request, instance) if operator else {}
    rows = []
    for s in steps:
        duration = None
        if s.started_at:
            duration = (s.finished_at or now) - s.started_at
        error = s.error if isinstance(s.error, dict) else {}
        rows.append(
            StepRow(
                step=s,
                duration=duration,
                error=error_line(error),
                traceback=error.get("traceback", "") or "",
                operations=step_operations(instance, s) if operator else [],
                links=links.get(s.pk, []),
                items=selectors.map_item_counts(s),
            )
        )
    current = [s.name for s in steps if s.state in ("running", "scheduled", "retrying", "waiting")]
    return {
        "instance": instance,
        "definition": definition,
        "svg": graph.render_svg(
            definition, steps, title=f"{instance.workflow} v{instance.version}"
        ),
        "rows": rows,
        "timeline": build_timeline(
            instance, events, reveal=reveal, details=timeline_details(request, instance, events)
        ),
        "events_hidden": max(instance.last_seq - len(events), 0),
        "operations": instance_operations(instance) if operator else [],
        "can_operate": operator,
        "read_only": read_only,
        "current": current,
        "elapsed": human_duration((instance.finished_at or now) - instance.created_at),
        "open": instance.state in OPEN_STATES,
        "input_json": pretty_json(instance.input, reveal=reveal),
        "output_json": (
            pretty_json(instance.output, reveal=reveal) if instance.output is not None else ""
        ),
        "error_line": error_line(instance.error),
        "parent": parent_link(instance),
        "children": child_links(instance),
        "admin_url": _admin_url(request, instance),
        "now": now,
        "states": [(state, state.replace("_", " ")) for state in LEGEND],
        "instance_state_label": instance_state_label(instance),
    }


def _admin_url(request: HttpRequest, instance: WorkflowInstance) -> str:
    if not request.user.is_staff:
        return ""
    try:
        return reverse("admin:orchestration_workflowinstance_change", args=[instance.pk])
    except NoReverseMatch:
        return ""


def visible_instance(request: HttpRequest, pk: Any) -> WorkflowInstance:
    """The instance if the user may see it (staff, operators, its starter, or someone a
    registered reader lets read it: see ``selectors.register_instance_reader``); 404
    otherwise."""
    try:
        return selectors.instance_get(user=request.user, instance_id=pk)
    except NotFound:
        raise Http404("No such instance.") from None


@login_required
@require_GET
@replica_reads
def instance_status(request: HttpRequest, pk: Any) -> HttpResponse:
    instance = visible_instance(request, pk)
    return render(request, "instances/status.html", page_context(request, instance))


@login_required
@require_GET
@replica_reads
def instance_live(request: HttpRequest, pk: Any) -> JsonResponse:
    """The live part of the status page, for the page's poll: ``changed`` is false (and no
    HTML is rendered) while the history has not moved past ``?seq=``."""
    instance = visible_instance(request, pk)
    open_ = instance.state in OPEN_STATES
    data: dict[str, Any] = {"seq": instance.last_seq, "state": instance.state, "open": open_}
    if request.GET.get("seq") == str(instance.last_seq):
        data["changed"] = False
    else:
        data["changed"] = True
        data["html"] = render_to_string(
            "instances/_live.html", page_context(request, instance), request=request
        )
    response = JsonResponse(data)
    response["Cache-Control"] = "no-store"
    return response


# -- history downloads ---------------------------------------------------------------------------


def _instance_record(instance: WorkflowInstance, reveal: bool) -> dict[str, Any]:
    return {
        "id": str(instance.pk),
        "workflow": instance.workflow,
        "version": instance.version,
        "state": instance.state,
        "business_key": instance.business_key,
        "started_by": instance.started_by.get_username() if instance.started_by else None,
        "created_at": instance.created_at.isoformat(),
        "started_at": instance.started_at.isoformat() if instance.started_at else None,
        "finished_at": instance.finished_at.isoformat() if instance.finished_at else None,
        "input": masked(instance.input, reveal=reveal),
        "output": masked(instance.output, reveal=reveal),
        "error": instance.error,
    }


def _events(instance: WorkflowInstance) -> Iterator[Event]:
    return selectors.events_of(instance).order_by("seq").iterator(chunk_size=2000)


def _event_record(e: Event, reveal: bool) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "at": e.at.isoformat(),
        "type": e.type,
        "step": e.step,
        "attempt": e.attempt,
        "actor": e.actor,
        "data": masked(e.data, reveal=reveal),
    }


def _filename(instance: WorkflowInstance, ext: str) -> str:
    return f"signoff-{instance.workflow}-{instance.pk}-history.{ext}"


@login_required
@require_GET
@replica_reads
def history_json(request: HttpRequest, pk: Any) -> StreamingHttpResponse:
    """The instance and its whole history as one JSON document (streamed)."""
    instance = visible_instance(request, pk)
    reveal = selectors.may_reveal(request.user, instance)
    head = {
        "instance": _instance_record(instance, reveal),
        "exported_at": timezone.now().isoformat(),
    }

    def stream() -> Iterator[str]:
        yield json.dumps(head, ensure_ascii=False)[:-1] + ', "events": ['
        for n, e in enumerate(_events(instance)):
            yield ("\n" if n == 0 else ",\n") + json.dumps(
                _event_record(e, reveal), ensure_ascii=False
            )
        yield "\n]}\n"

    response = StreamingHttpResponse(stream(), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{_filename(instance, "json")}"'
    return response


class _Echo:
    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> Any:
    # A spreadsheet would run a cell starting with one of these as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


CSV_COLUMNS = ["seq", "at", "type", "step", "attempt", "actor", "data"]


@login_required
@require_GET
@replica_reads
def history_csv(request: HttpRequest, pk: Any) -> StreamingHttpResponse:
    """The whole history as CSV, one event per row (``data`` as JSON)."""
    instance = visible_instance(request, pk)
    writer = csv.writer(_Echo())
    reveal = selectors.may_reveal(request.user, instance)

    def stream() -> Iterator[str]:
        yield writer.writerow(CSV_COLUMNS)
        for e in _events(instance):
            row = _event_record(e, reveal)
            row["data"] = json.dumps(row["data"], ensure_ascii=False, sort_keys=True)
            yield writer.writerow(
                [_cell(row[c]) if c in ("actor", "data") else row[c] for c in CSV_COLUMNS]
            )

    response = StreamingHttpResponse(stream(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename(instance, "csv")}"'
    return response


# -- actions from the status page ----------------------------------------------------------------


def _act(
    request: HttpRequest,
    instance: WorkflowInstance,
    op: Operation,
    target: Any,
    subject: str,
    action_url: str,
) -> HttpResponse:
    """The confirmation page, or the action done and back to the status page with a message
    (see :func:`operator_actions.confirm_and_run`)."""
    confirmation = confirm_and_run(
        request, op, target, subject=subject, refused=_("%(action)s refused") % {"action": op.title}
    )
    if confirmation is None:
        return redirect(status_url(instance))
    return render(
        request,
        "instances/confirm.html",
        {
            "instance": instance,
            "op": op,
            "form": confirmation.form,
            "subject": subject,
            "action_url": action_url,
            "target": target,
        },
        status=confirmation.status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def instance_action(request: HttpRequest, pk: Any, name: str) -> HttpResponse:
    instance = visible_instance(request, pk)
    op = INSTANCE_OPERATIONS.get(name)
    if op is None:
        raise Http404("No such action.")
    return _act(
        request,
        instance,
        op,
        instance,
        _("instance %(id)s") % {"id": str(instance.pk)[:8]},
        reverse("instances:action", args=[instance.pk, name]),
    )


@login_required
@require_http_methods(["GET", "POST"])
def step_action(request: HttpRequest, pk: Any, step_id: int, name: str) -> HttpResponse:
    instance = visible_instance(request, pk)
    op = STEP_OPERATIONS.get(name)
    step = next((s for s in instance.steps.all() if s.pk == step_id), None)
    if op is None or step is None:
        raise Http404("No such step or action.")
    return _act(
        request,
        instance,
        op,
        step,
        _("step %(name)s") % {"name": step.name},
        reverse("instances:step-action", args=[instance.pk, step.pk, name]),
    )
