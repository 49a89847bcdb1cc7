"""REST API for the operator's repair actions: edit an instance's input or a finished step's
output, skip a failed step, reset (re-run) from a step, resolve a failed undo by hand.

Each needs ``orchestration.operate_instance`` (the instance's starter alone may not), a
``reason``, and calls one service of :mod:`orchestration.engine.repairing`; the answer is the
instance as the detail endpoint shows it. Errors are ``{"detail", "code"}`` (400 bad input,
403, 404, 409 the state does not allow it or nothing would change)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from orchestration import engine, selectors

from .serializers import InstanceSerializer, RejectUnknownFieldsMixin, StrictCharField
from .views import INSTANCE_ID, ApiView, _errors, actor_of

STEP = OpenApiParameter("step", OpenApiTypes.STR, OpenApiParameter.PATH, description="Step name")
WHO = (
    " Needs orchestration.operate_instance. Writes one event with the actor, the reason and "
    "the change."
)


class ReasonSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    reason = StrictCharField(
        max_length=1000, help_text="Why (required): recorded on the event with your name."
    )


class EditInputSerializer(ReasonSerializer):
    input = serializers.JSONField(
        help_text="The whole new input (an object), checked against the workflow's "
        "input_schema. A field sent as the mask the API shows for sealed values keeps its "
        "value."
    )


class OutputSerializer(ReasonSerializer):
    output = serializers.JSONField(help_text="The step's output (any JSON value).")


class ResetSerializer(ReasonSerializer):
    step = StrictCharField(max_length=100, help_text="The step to run again from.")


def _answer(request: Request, instance_id: object) -> Response:
    instance = selectors.instance_get(user=request.user, instance_id=instance_id)
    reveal = selectors.may_reveal(request.user, instance)
    return Response(InstanceSerializer(instance, context={"reveal": reveal}).data)


def _valid(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _with_output(action: Any, request: Request, pk: str, step: str) -> Response:
    """A step repair that takes an operator's output (edit output, skip): ``action`` on the
    named step of an instance the caller may operate."""
    instance = selectors.instance_for_operator(user=request.user, instance_id=pk)
    data = _valid(OutputSerializer, request)
    action(
        step_run_id=engine.step_by_name(instance_id=instance.pk, name=step),
        output=data["output"],
        actor=actor_of(request),
        reason=data["reason"],
        user=request.user,
    )
    return _answer(request, instance.pk)


class InstanceEditInputView(ApiView):
    @extend_schema(
        summary="Edit a failed (or paused) instance's input before a retry",
        tags=["operators"],
        description="Replaces the input of a failed instance (its forward run) or a paused "
        "running one; sensitive fields are sealed again and the history shows a diff with "
        "sealed values masked. Nothing runs: retry afterwards. 409 in another state, when "
        "the instance failed while undoing (code undo_failed) or when nothing changes "
        "(code unchanged)." + WHO,
        parameters=[INSTANCE_ID],
        request=EditInputSerializer,
        responses={200: InstanceSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_for_operator(user=request.user, instance_id=pk)
        data = _valid(EditInputSerializer, request)
        engine.instance_edit_input(
            instance_id=instance.pk,
            input=data["input"],
            actor=actor_of(request),
            reason=data["reason"],
            user=request.user,
        )
        return _answer(request, instance.pk)


class StepEditOutputView(ApiView):
    @extend_schema(
        summary="Edit a finished step's output before a retry",
        tags=["operators"],
        description="Replaces the output of a succeeded or skipped step of a failed (or "
        "paused) instance: the steps that run after the retry read it. 409 otherwise." + WHO,
        parameters=[INSTANCE_ID, STEP],
        request=OutputSerializer,
        responses={200: InstanceSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: str, step: str) -> Response:
        return _with_output(engine.step_edit_output, request, pk, step)


class StepSkipView(ApiView):
    @extend_schema(
        summary="Skip a failed step with an output",
        tags=["operators"],
        description="A failed, timed-out or cancelled step of a failed instance (or a retrying "
        "step of a running one) ends skipped with the given output, which later steps read; "
        "the instance runs again when no other step failed. 409 for a step in another state "
        "(running, succeeded...)." + WHO,
        parameters=[INSTANCE_ID, STEP],
        request=OutputSerializer,
        responses={200: InstanceSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: str, step: str) -> Response:
        return _with_output(engine.step_skip, request, pk, step)


class InstanceResetView(ApiView):
    @extend_schema(
        summary="Re-run a failed instance from a step (reset)",
        tags=["operators"],
        description="The step and every step after it (its dependents, transitively) go "
        "back to pending and run again with a fresh retry budget; other failed steps are "
        "retried. What they did before is not undone. 400 for an unknown step; 409 unless "
        "the instance failed (forward run) and the step's dependencies succeeded." + WHO,
        parameters=[INSTANCE_ID],
        request=ResetSerializer,
        responses={200: InstanceSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_for_operator(user=request.user, instance_id=pk)
        data = _valid(ResetSerializer, request)
        engine.instance_reset(
            instance_id=instance.pk,
            step=data["step"],
            actor=actor_of(request),
            reason=data["reason"],
            user=request.user,
        )
        return _answer(request, instance.pk)


class StepResolveCompensationView(ApiView):
    @extend_schema(
        summary="Mark a step whose undo failed as undone by hand",
        tags=["operators"],
        description="For a step whose compensation failed for good (the instance failed "
        "while undoing): it ends compensated with your note as the reason; when no other "
        "undo failed the instance compensates again and ends compensated once the rest is "
        "undone. 409 for any other step." + WHO,
        parameters=[INSTANCE_ID, STEP],
        request=ReasonSerializer,
        responses={200: InstanceSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: str, step: str) -> Response:
        instance = selectors.instance_for_operator(user=request.user, instance_id=pk)
        data = _valid(ReasonSerializer, request)
        engine.compensation_resolve(
            step_run_id=engine.step_by_name(instance_id=instance.pk, name=step),
            actor=actor_of(request),
            reason=data["reason"],
            user=request.user,
        )
        return _answer(request, instance.pk)
