"""The operator's repair actions as the admin and the status page offer them: edit the input or
a step's output, skip a failed step, re-run from a step (reset), retry or resolve a failed undo.

Declared as :class:`~orchestration.operator_actions.Operation` and added to its
``INSTANCE_OPERATIONS`` / ``STEP_OPERATIONS`` when this module loads (the app's ``ready``
imports it), so they run through the one confirm-and-run flow (operator check, confirmation
with a reason, one service call with the operator as the actor, errors worded once). The
services are in :mod:`orchestration.engine.repairing`.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy

from . import engine, jsonsafe, kinds, sealing
from .actors import actor_of
from .models import STEP_DONE, STEP_RETRYABLE, WorkflowInstance
from .operator_actions import (
    INSTANCE_OPERATIONS,
    STEP_OPERATIONS,
    ConfirmForm,
    Operation,
    undo_failed,
)

MAX_JSON_TEXT = 100_000


def editable(instance: WorkflowInstance) -> bool:
    """Edits are offered on a failed instance (its forward run) or a paused running one."""
    if undo_failed(instance):
        return False
    return instance.state == "failed" or (
        instance.state == "running" and instance.paused_at is not None
    )


# -- forms -------------------------------------------------------------------------------------


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=gettext_lazy("Required: why, for the audit trail (recorded with your name)."),
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


class JSONValueForm(ReasonForm):
    """A JSON value to edit (shown as it is now, sealed and secret-looking fields masked: leave
    ``••••••`` to keep one) and the reason."""

    value = forms.CharField(
        label=gettext_lazy("Value (JSON)"),
        max_length=MAX_JSON_TEXT,
        widget=forms.Textarea(attrs={"rows": 10, "class": "mono", "spellcheck": "false"}),
        help_text=f"Sealed fields show as {sealing.MASK}: leave that to keep the value.",
    )
    field_order = ["value", "reason"]

    def __init__(self, *args: Any, current: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if current is not None:
            self.fields["value"].initial = json.dumps(
                sealing.masked(current), indent=2, ensure_ascii=False
            )

    def clean_value(self) -> Any:
        try:
            value = jsonsafe.loads(self.cleaned_data["value"])
        except jsonsafe.JSONInputError as exc:
            raise forms.ValidationError(str(exc)) from None
        problem = jsonsafe.storable_json_problem(value)
        if problem:
            raise forms.ValidationError(f"cannot be stored: {problem}")
        return value


class SkipForm(JSONValueForm):
    def __init__(self, *args: Any, current: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["value"].label = gettext_lazy("Output (JSON)")
        self.fields["value"].initial = "{}"
        self.fields["value"].help_text = "What later steps read in place of this step's output."


# -- the actions -------------------------------------------------------------------------------


def instance_repairs() -> list[Operation]:
    """The instance actions: edit the input, retry the failed undo."""
    return [
        Operation(
            name="edit-input",
            label=gettext_lazy("Edit input…"),
            done=gettext_lazy("input edited"),
            question=gettext_lazy(
                "Replace the instance's input (checked against the workflow's schema; "
                "sensitive fields sealed again). Nothing runs: retry afterwards."
            ),
            form=JSONValueForm,
            form_kwargs=lambda i: {"current": i.input},
            run=lambda i, user, data: engine.instance_edit_input(
                instance_id=i.pk,
                input=data["value"],
                actor=actor_of(user),
                reason=data["reason"],
                user=user,
            ),
            offered=lambda i, s: editable(i),
            bulk=False,
        ),
        Operation(
            name="retry-undo",
            label=gettext_lazy("Retry the undo"),
            done=gettext_lazy("undo retried"),
            question=gettext_lazy(
                "Run the failed compensations (the undo of finished steps) again, each "
                "with a fresh retry budget? No forward step runs again."
            ),
            form=ConfirmForm,
            run=lambda i, user, data: engine.instance_retry(
                instance_id=i.pk, actor=actor_of(user), user=user
            ),
            offered=lambda i, s: undo_failed(i),
        ),
    ]


def step_repairs() -> list[Operation]:
    """The step actions: edit a finished step's output, skip a failed step, re-run from a
    step, resolve a failed undo by hand."""
    return [
        Operation(
            name="edit-output",
            label=gettext_lazy("Edit output…"),
            done=gettext_lazy("output edited"),
            question=gettext_lazy(
                "Replace this finished step's output (sensitive fields sealed again). "
                "Steps that run after your retry read the new one."
            ),
            form=JSONValueForm,
            form_kwargs=lambda s: {"current": s.output},
            run=lambda s, user, data: engine.step_edit_output(
                step_run_id=s.pk,
                output=data["value"],
                actor=actor_of(user),
                reason=data["reason"],
                user=user,
            ),
            offered=lambda i, s: (
                s is not None
                and editable(i)
                and s.state in STEP_DONE
                and kinds.offers_operator(s.kind, "edit")
            ),
        ),
        Operation(
            name="skip",
            label=gettext_lazy("Skip…"),
            done=gettext_lazy("skipped"),
            question=gettext_lazy(
                "Skip this step: it ends skipped (nothing to undo) with the output you "
                "give, and the instance goes on from here."
            ),
            form=SkipForm,
            run=lambda s, user, data: engine.step_skip(
                step_run_id=s.pk,
                output=data["value"],
                actor=actor_of(user),
                reason=data["reason"],
                user=user,
            ),
            offered=lambda i, s: (
                s is not None
                and not undo_failed(i)
                and (
                    (i.state == "failed" and s.state in STEP_RETRYABLE)
                    or (i.state == "running" and s.state == "retrying")
                )
                and kinds.offers_operator(s.kind, "skip")
            ),
        ),
        Operation(
            name="reset",
            label=gettext_lazy("Re-run from here…"),
            done=gettext_lazy("reset: the instance runs again from it"),
            question=gettext_lazy(
                "Reset this step and every step after it to pending and run them again "
                "(what they did before is not undone). Other failed steps are retried."
            ),
            form=ReasonForm,
            run=lambda s, user, data: engine.instance_reset(
                instance_id=s.instance_id,
                step=s.name,
                actor=actor_of(user),
                reason=data["reason"],
                user=user,
            ),
            offered=lambda i, s: (
                s is not None
                and i.state == "failed"
                and not undo_failed(i)
                and s.state in (*STEP_DONE, *STEP_RETRYABLE)
            ),
            danger=True,
        ),
        Operation(
            name="resolve-undo",
            label=gettext_lazy("Mark undone by hand…"),
            done=gettext_lazy("marked undone by hand"),
            question=gettext_lazy(
                "Its compensation failed for good. Mark the step undone (you reverted "
                "its effect by hand); the rest of the undo goes on."
            ),
            form=ReasonForm,
            run=lambda s, user, data: engine.compensation_resolve(
                step_run_id=s.pk, actor=actor_of(user), reason=data["reason"], user=user
            ),
            offered=lambda i, s: (
                s is not None and undo_failed(i) and s.shown_state == "undo_failed"
            ),
        ),
    ]


INSTANCE_OPERATIONS.update((op.name, op) for op in instance_repairs())
STEP_OPERATIONS.update((op.name, op) for op in step_repairs())
