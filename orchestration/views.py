"""HTML pages of the engine: the home page and an instance's status page.

The status page (``/instances/<id>/``) shows the workflow graph (server-side SVG), the timeline
of the history, the operator actions for those allowed, and downloads of the history. It is a
thin layer: reads go through ``orchestration.selectors``, every action through one engine
service, and business errors become messages here, once (STYLE trait 7).

The operator actions are declared once below (:data:`INSTANCE_OPERATIONS`,
:data:`STEP_OPERATIONS`) and used by the status page and by the admin.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
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
from django.views.decorators.http import require_GET, require_http_methods

from . import engine, graph, jsonsafe, kinds, sealing, selectors
from .actors import actor_of
from .definitions import TaskStep, registry
from .errors import InvalidInput, NotAllowed, NotFound, SignoffError
from .models import Event, StepRun, WorkflowInstance

OPERATE_PERMISSION = "orchestration.operate_instance"
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
MASK = sealing.MASK
# What a reader sees: one door for every reader (see sealing.masked).
masked = sealing.masked


def home(request: HttpRequest) -> HttpResponse:
    # The example names the host and port this request came to, not the default one.
    start_url = request.build_absolute_uri(reverse("api-instances"))
    return render(request, "home.html", {"workflows": registry.all(), "start_url": start_url})


# -- presentation helpers (shared with the admin) --------------------------------------------------


def pretty_json(value: Any, *, reveal: bool = False) -> str:
    return json.dumps(masked(value, reveal=reveal), indent=2, ensure_ascii=False, default=str)


def compact_json(value: Any, *, reveal: bool = False) -> str:
    if value in (None, "", {}, []):
        return ""
    return json.dumps(
        masked(value, reveal=reveal), ensure_ascii=False, default=str, separators=(", ", ": ")
    )


def human_duration(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{round(seconds)} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def can_operate(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_active and user.has_perm(OPERATE_PERMISSION))


def status_url(instance: WorkflowInstance | Any) -> str:
    pk = getattr(instance, "pk", instance)
    return reverse("instances:detail", args=[pk])


# -- operator actions --------------------------------------------------------------------------


class ConfirmForm(forms.Form):
    """Nothing to fill in: the confirmation itself is the form."""


class CancelForm(forms.Form):
    reason = forms.CharField(
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Optional; recorded on the instance_cancelled event.",
    )


class CompleteStepForm(forms.Form):
    output = forms.CharField(
        label="Output (JSON)",
        initial="{}",
        max_length=100_000,
        widget=forms.Textarea(attrs={"rows": 6, "class": "mono", "spellcheck": "false"}),
        help_text="What the step would have returned; later steps read it.",
    )
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required: what you did by hand, for the audit trail.",
    )

    def clean_output(self) -> Any:
        # Operator input: parsed without recursion limits (a 2,000-deep value is a form error,
        # not a 500) and checked for what the step's output column can store.
        try:
            output = jsonsafe.loads(self.cleaned_data["output"])
        except jsonsafe.JSONInputError as exc:
            raise forms.ValidationError(str(exc)) from None
        problem = jsonsafe.storable_json_problem(output)
        if problem:
            raise forms.ValidationError(f"cannot be stored: {problem}")
        return output

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


@dataclass(frozen=True)
class Operation:
    """One operator action: its form, the service it calls, and when it is offered (the service
    re-checks under its lock; ``offered`` only decides which buttons are shown)."""

    name: str
    label: str
    done: str  # "{n} instance(s) retried" -> the past participle
    question: str
    form: type[forms.Form]
    run: Callable[[Any, Any, dict[str, Any]], Any]  # (target, user, form data)
    offered: Callable[[WorkflowInstance, StepRun | None], bool]
    danger: bool = False
    help: str = ""


def _open(instance: WorkflowInstance) -> bool:
    return instance.state == "running"


INSTANCE_OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation(
            name="retry",
            label="Retry failed steps",
            done="retried",
            question="Retry the failed, timed-out and cancelled steps, each with a fresh retry "
            "budget?",
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_retry(
                instance_id=i.pk, actor=actor_of(user), user=user
            ),
            offered=lambda i, s: i.state == "failed",
        ),
        Operation(
            name="resume",
            label="Resume (ring now)",
            done="resumed",
            question="Ring the doorbell of every scheduled or retrying step now, skipping "
            "backoffs (use after the broker lost its messages)?",
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_resume(
                instance_id=i.pk, actor=actor_of(user)
            ),
            offered=lambda i, s: _open(i) and i.paused_at is None,
        ),
        Operation(
            name="pause",
            label="Pause",
            done="paused",
            question="Pause: nothing new is scheduled or started until you unpause; running "
            "attempts finish.",
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_pause(instance_id=i.pk, actor=actor_of(user)),
            offered=lambda i, s: _open(i) and i.paused_at is None,
        ),
        Operation(
            name="unpause",
            label="Unpause",
            done="unpaused",
            question="Unpause: ring the waiting steps and schedule what became ready?",
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_unpause(
                instance_id=i.pk, actor=actor_of(user)
            ),
            offered=lambda i, s: i.paused_at is not None,
        ),
        Operation(
            name="cancel",
            label="Cancel",
            done="cancelled",
            question="Cancel: open steps are cancelled (pending approvals too); running attempts "
            "finish but their results are ignored.",
            form=CancelForm,
            run=lambda i, user, data: engine.instance_cancel(
                instance_id=i.pk, actor=actor_of(user), reason=data.get("reason", "")
            ),
            offered=lambda i, s: i.state in ("pending", "running", "failed"),
            danger=True,
        ),
    ]
}


def _task_step(instance: WorkflowInstance, step: StepRun | None) -> bool:
    definition = registry.get(instance.workflow, instance.version)
    spec = definition.steps.get(step.name) if definition and step else None
    return isinstance(spec, TaskStep)


STEP_OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation(
            name="retry-now",
            label="Retry now",
            done="scheduled again",
            question="Run this step again now (a retrying step skips the rest of its backoff; a "
            "failed one gets a fresh retry budget and its instance runs again)?",
            form=ConfirmForm,
            run=lambda s, user, data: engine.step_retry_now(step_run_id=s.pk, actor=actor_of(user)),
            offered=lambda i, s: (
                s is not None
                and _task_step(i, s)
                and (
                    (s.state == "retrying" and i.state == "running")
                    or (s.state in ("failed", "timed_out", "cancelled") and i.state == "failed")
                )
            ),
        ),
        Operation(
            name="complete",
            label="Complete by hand…",
            done="completed by hand",
            question="Mark this step succeeded with the output you give (after doing its work "
            "by hand). The flow continues from here.",
            form=CompleteStepForm,
            run=lambda s, user, data: engine.step_complete_manually(
                step_run_id=s.pk,
                output=data["output"],
                actor=actor_of(user),
                reason=data["reason"],
                user=user,
            ),
            offered=lambda i, s: (
                s is not None
                and i.state in ("running", "failed")
                and s.state
                in ("failed", "timed_out", "cancelled", "retrying", "scheduled", "waiting")
                and kinds.offers_operator(s.kind, "complete")
            ),
            help="Skip a step with a given output",
        ),
    ]
}


@dataclass
class Report:
    """What a (bulk) action did: how many succeeded, and which were refused and why."""

    done: list[Any] = field(default_factory=list)
    refused: list[tuple[Any, str]] = field(default_factory=list)

    def messages(self, op: Operation, noun: str = "instance") -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        if self.done:
            n = len(self.done)
            out.append((messages.SUCCESS, f"{n} {noun}{'s' if n != 1 else ''} {op.done}."))
        if self.refused:
            n = len(self.refused)
            shown = "; ".join(f"{label}: {why}" for label, why in self.refused[:20])
            more = f"; and {n - 20} more" if n > 20 else ""
            out.append(
                (
                    messages.WARNING if self.done else messages.ERROR,
                    f"{n} {noun}{'s' if n != 1 else ''} refused — {shown}{more}",
                )
            )
        return out


def short_label(instance: WorkflowInstance) -> str:
    key = f" {instance.business_key}" if instance.business_key else ""
    return f"{str(instance.pk)[:8]} ({instance.workflow}{key})"


def operate(
    op: Operation, targets: Iterable[Any], *, user: Any, data: dict[str, Any], label=short_label
) -> Report:
    """Run ``op`` on each target through its service; collect successes and refusals."""
    report = Report()
    for target in targets:
        try:
            op.run(target, user, data)
        except SignoffError as exc:
            report.refused.append((label(target), exc.message))
        else:
            report.done.append(target)
    return report


# -- status page -------------------------------------------------------------------------------


@dataclass
class TimelineEntry:
    event: Event
    offset: timedelta
    title: str
    tone: str  # ok | bad | warn | info | human | operator | muted
    detail: str = ""
    duration: timedelta | None = None
    data: str = ""
    traceback: str = ""

    @property
    def took(self) -> str:
        return human_duration(self.duration)

    @property
    def since_start(self) -> str:
        return "+" + (human_duration(self.offset) or "0 ms")


STEP_END = {"step_succeeded", "step_failed", "step_retrying", "step_timed_out"}
COMPENSATION_END = {
    "step_compensated",
    "step_compensation_retrying",
    "step_compensation_failed",
}


def _error_line(error: Any) -> str:
    if not isinstance(error, dict):
        return ""
    kind = str(error.get("type", "")).rsplit(".", 1)[-1]
    message = str(error.get("message", ""))
    return f"{kind}: {message}" if kind else message


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _revision_line(changes: Any) -> str:
    """An input diff in words: "amount 120 → 95; receipt added" (sealed and secret-looking
    values masked)."""
    if not isinstance(changes, dict):
        return ""
    parts = []
    for name, change in masked(changes).items():
        if not isinstance(change, dict):
            parts.append(f"{name} changed")
        elif change.get("added"):
            parts.append(f"{name} set to {_short(change.get('to'))}")
        else:
            parts.append(f"{name} {_short(change.get('from'))} → {_short(change.get('to'))}")
    return "; ".join(parts)


def _describe(event: Event) -> tuple[str, str, str]:
    """(title, tone, detail) of one event for people."""
    d = event.data if isinstance(event.data, dict) else {}
    t = event.type
    attempt = f" (attempt {event.attempt})" if event.attempt else ""
    if t == "instance_started":
        return "Instance started", "info", ""
    if t == "step_scheduled":
        if d.get("operator"):
            return "Scheduled now by an operator", "operator", ""
        return ("Scheduled again" if d.get("retry") else "Scheduled") + attempt, "muted", ""
    if t == "step_started":
        return f"Attempt {event.attempt} started", "info", ""
    if t == "step_succeeded":
        return "Succeeded" + attempt, "ok", ""
    if t == "step_retrying":
        delay = d.get("delay")
        when = f", next attempt in {human_duration(timedelta(seconds=delay))}" if delay else ""
        return (
            f"Attempt {event.attempt} failed{when}",
            "warn",
            _error_line(d.get("error")),
        )
    if t == "step_failed":
        reason = str(d.get("reason", "")).replace("_", " ")
        return (
            f"Failed{attempt}" + (f" — {reason}" if reason else ""),
            "bad",
            _error_line(d.get("error")),
        )
    if t == "step_timed_out":
        return f"Timed out{attempt}", "bad", f"exceeded {d.get('limit', 'its deadline')}"
    if t == "step_skipped":
        return "Skipped", "muted", str(d.get("reason", "")).replace("_", " ")
    if t == "step_cancelled":
        return "Cancelled", "muted", str(d.get("reason", "")).replace("_", " ")
    if t == "step_waiting":
        until = d.get("until")
        return "Waiting", "human", f"until {until}" if until else ""
    if t == "step_completed_manually":
        return "Completed by hand", "operator", str(d.get("reason", ""))
    if t == "approval_requested":
        who = ", ".join([*d.get("users", []), *[f"group {g}" for g in d.get("groups", [])]])
        title = "Approval requested" + (f" (round {d['round']})" if d.get("round") else "")
        return title, "human", f"from {who}" if who else ""
    if t == "approval_changes_requested":
        who = str(d.get("user", "?"))
        if d.get("for"):
            who += f" for {d['for']}"
        return (
            f"Changes requested by {who} via {d.get('channel', '?')}",
            "warn",
            str(d.get("comment") or ""),
        )
    if t == "approval_resubmitted":
        changed = d.get("changed") or []
        detail = "changed " + ", ".join(map(str, changed)) if changed else "nothing changed"
        return (
            f"Resubmitted by {d.get('user', '?')} for round {d.get('round', '?')}",
            "human",
            detail,
        )
    if t == "approval_withdrawn":
        return f"Withdrawn by {d.get('user', '?')}", "bad", str(d.get("reason", ""))
    if t == "instance_input_revised":
        return "Input revised", "human", _revision_line(d.get("changes"))
    if t == "approval_decided":
        verb = "Approved" if d.get("outcome") == "approve" else "Rejected"
        who = str(d.get("user", "?"))
        if d.get("for"):
            who += f" for {d['for']}"
        detail = str(d.get("comment") or "")
        if d.get("reason"):
            detail = (detail + " · " if detail else "") + f"on behalf, reason: {d['reason']}"
        tone = "ok" if d.get("outcome") == "approve" else "bad"
        return f"{verb} by {who} via {d.get('channel', '?')}", tone, detail
    if t == "approval_commented":
        role = f" ({d['role']})" if d.get("role") else ""
        return f"Comment by {d.get('user', '?')}{role}", "human", ""
    if t == "approval_resolved":
        return f"Approval {d.get('outcome', 'resolved')}", "human", ""
    if t == "approval_reassigned":
        who = ", ".join([*d.get("users", []), *[f"group {g}" for g in d.get("groups", [])]])
        return f"Reassigned to {who}", "operator", str(d.get("reason", ""))
    if t == "instance_succeeded":
        return "Instance succeeded", "ok", ""
    if t == "instance_failed":
        return "Instance failed", "bad", _error_line(d.get("error"))
    if t == "instance_cancelled":
        return "Instance cancelled", "bad", str(d.get("reason", ""))
    if t == "instance_compensating":
        return "Compensating (undoing finished steps)", "warn", str(d.get("reason", ""))
    if t == "instance_compensated":
        return "Instance compensated", "warn", ""
    if t == "step_compensating":
        # compensate_attempted: the step never succeeded, but an attempt may have acted
        detail = "never succeeded; undoing its attempts" if d.get("attempted") else ""
        return "Compensation scheduled", "warn", detail
    if t == "step_compensation_started":
        return f"Compensation attempt {event.attempt} started", "warn", ""
    if t == "step_compensated":
        return "Compensated", "warn", ""
    if t == "step_compensation_retrying":
        return (
            f"Compensation attempt {event.attempt} failed, retrying",
            "warn",
            _error_line(d.get("error")),
        )
    if t == "step_compensation_failed":
        return "Compensation failed", "bad", _error_line(d.get("error"))
    if t == "signal_received":
        return f"Signal {d.get('signal', '')} received", "human", str(d.get("source", "") or "")
    if t == "instance_erased":
        return "Sensitive fields erased", "operator", str(d.get("reason", ""))
    if t == "instance_retried" and d.get("phase") == "compensation":
        return "Compensation retried", "operator", ""
    if t in ("instance_paused", "instance_unpaused", "instance_resumed", "instance_retried"):
        detail = ""
        if t == "instance_resumed" and d.get("rung"):
            detail = "rang " + ", ".join(d["rung"])
        return t.replace("instance_", "").capitalize(), "operator", detail
    return t.replace("_", " ").capitalize(), "muted", ""


def build_timeline(
    instance: WorkflowInstance,
    events: list[Event],
    *,
    reveal: bool = False,
    details: dict[int, str] | None = None,
) -> list[TimelineEntry]:
    """Events in order, for people: what happened, how long attempts took, retries, decisions
    and how long an approval waited. ``details``: text for some events by ``seq``, from
    :func:`register_timeline_details` (a comment's text), in place of the computed one."""
    details = details or {}
    started: dict[tuple[str | None, int | None], datetime] = {}
    waiting: dict[str | None, datetime] = {}
    begin = instance.created_at
    entries = []
    for e in events:
        title, tone, detail = _describe(e)
        detail = details.get(e.seq, detail)
        duration = None
        key = (e.step, e.attempt)
        comp = (f"{e.step}/compensation", e.attempt)
        if e.type == "step_started":
            started[key] = e.at
        elif e.type in STEP_END and key in started:
            duration = e.at - started.pop(key)
        elif e.type == "step_compensation_started":
            started[comp] = e.at
        elif e.type in COMPENSATION_END and comp in started:
            duration = e.at - started.pop(comp)
        elif e.type == "step_waiting":
            waiting[e.step] = e.at
        elif e.type == "approval_resubmitted":
            waiting[e.step] = e.at  # the next round waits from the resubmission
        elif (
            e.type in ("approval_decided", "approval_resolved", "approval_changes_requested")
            and e.step in waiting
        ):
            duration = e.at - waiting[e.step]
        elif e.type in (
            "instance_succeeded",
            "instance_failed",
            "instance_cancelled",
            "instance_compensated",
        ):
            duration = e.at - begin
        data = e.data if isinstance(e.data, dict) else {}
        error = data.get("error") if isinstance(data.get("error"), dict) else None
        entries.append(
            TimelineEntry(
                event=e,
                offset=e.at - begin,
                title=title,
                tone=tone,
                detail=detail,
                duration=duration,
                data=compact_json({k: v for k, v in data.items() if k != "error"}, reveal=reveal),
                # the instance's own failure repeats its step's: one traceback is enough
                traceback=""
                if e.type.startswith("instance_")
                else (error or {}).get("traceback", "") or "",
            )
        )
    return entries


@dataclass
class StepRow:
    step: StepRun
    duration: timedelta | None
    error: str
    traceback: str
    operations: list[Operation]
    links: list[tuple[str, str]] = field(default_factory=list)  # from register_step_links

    @property
    def took(self) -> str:
        return human_duration(self.duration)


# Other apps add operator links to a step's row (approvals: reassign, decide on behalf) through
# this hook, so the engine neither imports them nor reads their tables.
StepLinks = Callable[[HttpRequest, WorkflowInstance], dict[int, list[tuple[str, str]]]]
_STEP_LINKS: list[StepLinks] = []


def register_step_links(provider: StepLinks) -> StepLinks:
    """Register ``provider(request, instance) -> {step id: [(label, url), ...]}``, called
    for operators' status pages (one call per page: keep it to a query or two)."""
    if provider not in _STEP_LINKS:
        _STEP_LINKS.append(provider)
    return provider


def _step_links(request: HttpRequest, instance: WorkflowInstance) -> dict[int, list]:
    links: dict[int, list[tuple[str, str]]] = {}
    for provider in _STEP_LINKS:
        for step_id, more in provider(request, instance).items():
            links.setdefault(step_id, []).extend(more)
    return links


# Other apps give the text of some of their events on the timeline (approvals: a comment's
# text, which its event does not carry) through this hook, for the events they may show.
TimelineDetails = Callable[[HttpRequest, WorkflowInstance, list[Event]], dict[int, str]]
_TIMELINE_DETAILS: list[TimelineDetails] = []


def register_timeline_details(provider: TimelineDetails) -> TimelineDetails:
    """Register ``provider(request, instance, events) -> {seq: text}``, called once per status
    page with the events shown (keep it to a query or two). It answers only for the events
    the page's user may read the text of."""
    if provider not in _TIMELINE_DETAILS:
        _TIMELINE_DETAILS.append(provider)
    return provider


def _timeline_details(
    request: HttpRequest, instance: WorkflowInstance, events: list[Event]
) -> dict[int, str]:
    details: dict[int, str] = {}
    for provider in _TIMELINE_DETAILS:
        details.update(provider(request, instance, events))
    return details


def page_context(request: HttpRequest, instance: WorkflowInstance) -> dict[str, Any]:
    now = timezone.now()
    steps = list(instance.steps.all())
    definition = registry.get(instance.workflow, instance.version)
    events = list(Event.objects.filter(instance=instance).order_by("-seq")[:TIMELINE_LIMIT])
    events.reverse()
    # A reader (someone another app lets read the instance: an assignee) reads only: no
    # operator action, sealed fields masked whatever their permissions.
    read_only = not selectors.is_owner(request.user, instance)
    operator = can_operate(request.user) and not read_only
    reveal = selectors.may_reveal(request.user, instance)
    step_links = _step_links(request, instance) if operator else {}
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
                error=_error_line(error),
                traceback=error.get("traceback", "") or "",
                operations=[op for op in STEP_OPERATIONS.values() if op.offered(instance, s)]
                if operator
                else [],
                links=step_links.get(s.pk, []),
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
            instance, events, reveal=reveal, details=_timeline_details(request, instance, events)
        ),
        "events_hidden": max(instance.last_seq - len(events), 0),
        "operations": [op for op in INSTANCE_OPERATIONS.values() if op.offered(instance, None)]
        if operator
        else [],
        "can_operate": operator,
        "read_only": read_only,
        "current": current,
        "elapsed": human_duration((instance.finished_at or now) - instance.created_at),
        "open": instance.state in OPEN_STATES,
        "input_json": pretty_json(instance.input, reveal=reveal),
        "output_json": (
            pretty_json(instance.output, reveal=reveal) if instance.output is not None else ""
        ),
        "error_line": _error_line(instance.error),
        "admin_url": _admin_url(request, instance),
        "now": now,
        "states": [(state, state.replace("_", " ")) for state in LEGEND],
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
def instance_status(request: HttpRequest, pk: Any) -> HttpResponse:
    instance = visible_instance(request, pk)
    return render(request, "instances/status.html", page_context(request, instance))


@login_required
@require_GET
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
    return Event.objects.filter(instance=instance).order_by("seq").iterator(chunk_size=2000)


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
    """GET (or a POST without ``confirm``) shows the confirmation page; POST with ``confirm``
    calls the service once and returns to the status page with a message."""
    if not can_operate(request.user):
        raise PermissionDenied("You may not operate workflow instances.")
    confirmed = request.method == "POST" and "confirm" in request.POST
    form = op.form(request.POST if confirmed else None)
    status = 200
    if confirmed and form.is_valid():
        try:
            op.run(target, request.user, form.cleaned_data)
        except (InvalidInput, NotAllowed) as exc:
            # Bad input (400) or a refusal of the policy (403): the form again, with why.
            form.add_error(None, exc.message)
            status = exc.status
        except SignoffError as exc:
            messages.error(request, f"{op.label.rstrip('…')} refused: {exc.message}")
            return redirect(status_url(instance))
        else:
            messages.success(request, f"{subject[:1].upper()}{subject[1:]} {op.done}.")
            return redirect(status_url(instance))
    elif confirmed:
        status = 400
    return render(
        request,
        "instances/confirm.html",
        {
            "instance": instance,
            "op": op,
            "form": form,
            "subject": subject,
            "action_url": action_url,
            "target": target,
        },
        status=status,
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
        f"instance {str(instance.pk)[:8]}",
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
        f"step {step.name}",
        reverse("instances:step-action", args=[instance.pk, step.pk, name]),
    )
