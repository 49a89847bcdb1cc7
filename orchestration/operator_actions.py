"""What an operator may do to an instance or a step, and the one way it is done.

The actions are declared once (:data:`INSTANCE_OPERATIONS`, :data:`STEP_OPERATIONS`: a label,
the confirm question, the form, the engine service it calls, when it is offered) and run
through one confirm-and-run flow, :func:`confirm_and_run` (one target: the status page's
buttons and the admin's per-instance and per-step pages) or :func:`confirm_and_run_each` (the
admin's bulk actions): the permission check, the confirmation form (a reason where one is
asked), one service call per target with the operator as the actor, and business errors
mapped once to what the operator reads (STYLE trait 7). Each page only says where to go back
to and how its confirmation page looks.

Other apps add links to a step's row on the status page (approvals: reassign, decide on
behalf) through :func:`register_step_links`.

A presentation module: only views, admins, forms, template tags and urls import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.utils.translation import gettext, gettext_lazy, ngettext

from . import engine, jsonsafe, kinds
from .actors import actor_of
from .definitions import TaskStep, registry
from .errors import InvalidInput, NotAllowed, SignoffError, localized
from .models import StepRun, WorkflowInstance
from .selectors import OPERATE_PERMISSION


def can_operate(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_active and user.has_perm(OPERATE_PERMISSION))


def require_operator(user: Any) -> None:
    """403 unless ``user`` may operate workflow instances."""
    if not can_operate(user):
        raise PermissionDenied("You may not operate workflow instances.")


# -- forms -------------------------------------------------------------------------------------


class ConfirmForm(forms.Form):
    """Nothing to fill in: the confirmation itself is the form."""


class CancelForm(forms.Form):
    reason = forms.CharField(
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=gettext_lazy("Optional; recorded on the instance_cancelled event."),
    )


class CompleteStepForm(forms.Form):
    output = forms.CharField(
        label=gettext_lazy("Output (JSON)"),
        initial="{}",
        max_length=100_000,
        widget=forms.Textarea(attrs={"rows": 6, "class": "mono", "spellcheck": "false"}),
        help_text=gettext_lazy("What the step would have returned; later steps read it."),
    )
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=gettext_lazy("Required: what you did by hand, for the audit trail."),
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


# -- the actions -------------------------------------------------------------------------------


def _always(*args: Any) -> bool:
    return True


@dataclass(frozen=True)
class Operation:
    """One operator action: its form, the service it calls, and when it is offered (the service
    re-checks under its lock; ``offered`` only decides which buttons are shown).

    Another app's actions (approvals: reassign, decide on behalf, release a claim) use the
    optional parts: ``form_kwargs(target)``, more arguments of the form for one target (initial
    values, choices; a bulk action builds its form without them); ``success(target, data)``,
    the message when it ran on one target, if not "<Subject> <done>."; ``operators_only``
    False, when anyone who may see the target may ask and the service's policy answers."""

    name: str
    label: str
    done: str  # "{n} instance(s) retried" -> the past participle (gettext_lazy)
    question: str
    form: type[forms.Form]
    run: Callable[[Any, Any, dict[str, Any]], Any]  # (target, user, form data)
    offered: Callable[[WorkflowInstance, StepRun | None], bool] = _always
    danger: bool = False
    help: str = ""
    form_kwargs: Callable[[Any], dict[str, Any]] | None = None
    success: Callable[[Any, dict[str, Any]], str] | None = None
    operators_only: bool = True
    bulk: bool = True  # also an admin bulk action (False: it needs one target's form)

    @property
    def title(self) -> str:
        """The label without its "…" (a page's heading)."""
        return self.label.rstrip("…")


def _open(instance: WorkflowInstance) -> bool:
    return instance.state == "running"


def undo_failed(instance: WorkflowInstance) -> bool:
    """The instance failed while undoing its steps (a compensation failed for good): "Retry
    the undo" and "Mark undone by hand" (:mod:`orchestration.repair_actions`) apply."""
    return instance.state == "failed" and (instance.error or {}).get("phase") == "compensation"


INSTANCE_OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation(
            name="retry",
            label=gettext_lazy("Retry failed steps"),
            done=gettext_lazy("retried"),
            question=gettext_lazy(
                "Retry the failed, timed-out and cancelled steps, each with a fresh retry budget?"
            ),
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_retry(
                instance_id=i.pk, actor=actor_of(user), user=user
            ),
            # a failed undo is retried by "Retry the undo" (repair_actions), worded for it
            offered=lambda i, s: i.state == "failed" and not undo_failed(i),
        ),
        Operation(
            name="resume",
            label=gettext_lazy("Resume (ring now)"),
            done=gettext_lazy("resumed"),
            question=gettext_lazy(
                "Ring the doorbell of every scheduled or retrying step now, skipping "
                "backoffs (use after the broker lost its messages)?"
            ),
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_resume(
                instance_id=i.pk, actor=actor_of(user)
            ),
            offered=lambda i, s: _open(i) and i.paused_at is None,
        ),
        Operation(
            name="pause",
            label=gettext_lazy("Pause"),
            done=gettext_lazy("paused"),
            question=gettext_lazy(
                "Pause: nothing new is scheduled or started until you unpause; running "
                "attempts finish."
            ),
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_pause(instance_id=i.pk, actor=actor_of(user)),
            offered=lambda i, s: _open(i) and i.paused_at is None,
        ),
        Operation(
            name="unpause",
            label=gettext_lazy("Unpause"),
            done=gettext_lazy("unpaused"),
            question=gettext_lazy(
                "Unpause: ring the waiting steps and schedule what became ready?"
            ),
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_unpause(
                instance_id=i.pk, actor=actor_of(user)
            ),
            offered=lambda i, s: i.paused_at is not None,
        ),
        Operation(
            name="cancel",
            label=gettext_lazy("Cancel"),
            done=gettext_lazy("cancelled"),
            question=gettext_lazy(
                "Cancel: open steps are cancelled (pending approvals too); running attempts "
                "finish but their results are ignored."
            ),
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
            label=gettext_lazy("Retry now"),
            done=gettext_lazy("scheduled again"),
            question=gettext_lazy(
                "Run this step again now (a retrying step skips the rest of its backoff; a "
                "failed one gets a fresh retry budget and its instance runs again)?"
            ),
            form=ConfirmForm,
            run=lambda s, user, data: engine.step_retry_now(step_run_id=s.pk, actor=actor_of(user)),
            offered=lambda i, s: (
                s is not None
                and _task_step(i, s)
                and not undo_failed(i)
                and (
                    (s.state == "retrying" and i.state == "running")
                    or (s.state in ("failed", "timed_out", "cancelled") and i.state == "failed")
                )
            ),
        ),
        Operation(
            name="complete",
            label=gettext_lazy("Complete by hand…"),
            done=gettext_lazy("completed by hand"),
            question=gettext_lazy(
                "Mark this step succeeded with the output you give (after doing its work "
                "by hand). The flow continues from here."
            ),
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
                and not undo_failed(i)
                and s.state
                in ("failed", "timed_out", "cancelled", "retrying", "scheduled", "waiting")
                and kinds.offers_operator(s.kind, "complete")
            ),
            help=gettext_lazy(
                "Mark the step succeeded with a given output (its work was done by hand)"
            ),
        ),
    ]
}


def instance_operations(instance: WorkflowInstance) -> list[Operation]:
    """The instance actions offered for ``instance`` now."""
    return [op for op in INSTANCE_OPERATIONS.values() if op.offered(instance, None)]


def step_operations(instance: WorkflowInstance, step: StepRun) -> list[Operation]:
    """The step actions offered for ``step`` of ``instance`` now."""
    return [op for op in STEP_OPERATIONS.values() if op.offered(instance, step)]


# -- confirm and run ---------------------------------------------------------------------------


@dataclass
class Report:
    """What a (bulk) action did: how many succeeded, and which were refused and why."""

    done: list[Any] = field(default_factory=list)
    refused: list[tuple[Any, str]] = field(default_factory=list)

    def messages(
        self, op: Operation, noun: str = "instance", *, refused_noun: str | None = None
    ) -> list[tuple[int, str]]:
        """The lines: "3 instances retried." and "2 instances refused — <label>: <why>; …" (20
        named at most); ``refused_noun`` words the second ("" for "2 refused — …")."""
        out: list[tuple[int, str]] = []
        if self.done:
            out.append((messages.SUCCESS, done_line(_count(len(self.done), noun), op)))
        if self.refused:
            n = len(self.refused)
            shown = "; ".join(f"{label}: {why}" for label, why in self.refused[:20])
            if n > 20:
                shown += gettext("; and %(count)s more") % {"count": n - 20}
            counted = _count(n, noun if refused_noun is None else refused_noun)
            out.append(
                (
                    messages.WARNING if self.done else messages.ERROR,
                    gettext("%(counted)s refused — %(refusals)s")
                    % {"counted": counted, "refusals": shown},
                )
            )
        return out


def done_line(subject: str, op: Operation) -> str:
    """ "Instance 1a2b3c4d retried." (or "3 instances retried."), in the active language."""
    return gettext("%(subject)s %(done)s.") % {
        "subject": f"{subject[:1].upper()}{subject[1:]}",
        "done": op.done,
    }


def _count(n: int, noun: str) -> str:
    if noun == "instance":
        return ngettext("%(count)d instance", "%(count)d instances", n) % {"count": n}
    if noun == "request":
        return ngettext("%(count)d request", "%(count)d requests", n) % {"count": n}
    return f"{n} {noun}{'s' if n != 1 else ''}" if noun else str(n)


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
            report.refused.append((label(target), localized(exc)))
        else:
            report.done.append(target)
    return report


@dataclass
class Confirmation:
    """The confirmation page to show: the form (empty, or with what was wrong) and the HTTP
    status to answer with."""

    form: forms.Form
    status: int = 200


def _confirmation_form(
    request: HttpRequest, op: Operation, kwargs: dict[str, Any] | None = None
) -> tuple[forms.Form, bool]:
    """The operator check (unless ``op`` is not for operators only), then ``op``'s form, bound
    when the confirmation was posted."""
    if op.operators_only:
        require_operator(request.user)
    confirmed = request.method == "POST" and "confirm" in request.POST
    return op.form(request.POST if confirmed else None, **(kwargs or {})), confirmed


def confirm_and_run(
    request: HttpRequest,
    op: Operation,
    target: Any,
    *,
    subject: str,
    refused: str | None = None,
    invalid_status: int = 400,
) -> Confirmation | None:
    """``op`` on one target (an instance or a step), asked first: a GET, or a POST without
    ``confirm`` (a page's button), gets the :class:`Confirmation` to show; a POST with
    ``confirm`` and a valid form calls the service once.

    Returns None when it ran ("<Subject> <done>.", or ``op.success``, as a success message) or
    the service refused it ("<refused>: <why>" as an error message; by default "Refused"):
    the caller goes back to its page. Bad input (400) or a refusal of the decision policy
    (403) shows the form again with why; an invalid form answers ``invalid_status``. The
    lines and the refusals are in the active language.
    """
    form, confirmed = _confirmation_form(
        request, op, op.form_kwargs(target) if op.form_kwargs else None
    )
    if not confirmed:
        return Confirmation(form)
    if not form.is_valid():
        return Confirmation(form, invalid_status)
    try:
        op.run(target, request.user, form.cleaned_data)
    except (InvalidInput, NotAllowed) as exc:
        form.add_error(None, localized(exc))
        return Confirmation(form, exc.status)
    except SignoffError as exc:
        messages.error(
            request,
            gettext("%(refused)s: %(why)s")
            % {"refused": refused or gettext("Refused"), "why": localized(exc)},
        )
        return None
    if op.success is not None:
        messages.success(request, op.success(target, form.cleaned_data))
    else:
        messages.success(request, done_line(subject, op))
    return None


def confirm_and_run_each(
    request: HttpRequest,
    op: Operation,
    targets: Iterable[Any],
    *,
    noun: str = "instance",
    refused_noun: str | None = None,
    label: Callable[[Any], str] = short_label,
) -> Confirmation | None:
    """``op`` on many targets (a bulk action), asked first like :func:`confirm_and_run`; once
    confirmed, one service call per target, in order. Returns None when it ran, with one
    message for those done and one naming those refused (by ``label``) and why (worded by
    :meth:`Report.messages`)."""
    form, confirmed = _confirmation_form(request, op)
    if not (confirmed and form.is_valid()):
        return Confirmation(form, 400 if confirmed else 200)
    report = operate(op, list(targets), user=request.user, data=form.cleaned_data, label=label)
    for level, text in report.messages(op, noun, refused_noun=refused_noun):
        messages.add_message(request, level, text)
    return None


# -- other apps' links on a step's row -----------------------------------------------------------

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


def step_links(request: HttpRequest, instance: WorkflowInstance) -> dict[int, list]:
    """The registered providers' links for ``instance``'s steps, by step id."""
    links: dict[int, list[tuple[str, str]]] = {}
    for provider in _STEP_LINKS:
        for step_id, more in provider(request, instance).items():
            links.setdefault(step_id, []).extend(more)
    return links
