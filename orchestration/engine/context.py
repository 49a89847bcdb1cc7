"""What a step sees and what is stored of it: the step context, stored outputs, error info,
request fingerprints. Reads and pure transformations only; nothing here writes."""

from __future__ import annotations

import hashlib
import hmac
import json
import traceback
from typing import TYPE_CHECKING, Any

from django.conf import settings

from .. import sealing
from ..definitions import StepContext, Workflow, registry
from ..models import StepRun, StepState, WorkflowInstance

if TYPE_CHECKING:
    from ..journal import Journal

S = StepState


def definition_of(instance: WorkflowInstance) -> Workflow | None:
    return registry.get(instance.workflow, instance.version)


def error_info(exc: BaseException) -> dict[str, str]:
    klass = type(exc)
    return {
        "type": f"{klass.__module__}.{klass.__qualname__}",
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }


def scrubbed_error(
    instance: WorkflowInstance, steps: dict[str, StepRun], error: dict[str, Any]
) -> dict[str, Any]:
    """``error`` as it may be stored (step, instance, events, webhooks): every copy of the
    instance's sealed values in its message and traceback masked, so an exception that quotes
    its input does not unseal it."""
    scrubber = sealing.scrubber_for(instance.input, *(s.output for s in steps.values()))
    return scrubber.json(error)[0] if scrubber else error


def sealed_derived(instance: WorkflowInstance, steps: dict[str, StepRun], output: Any) -> Any:
    """A workflow's own ``output=`` result as it may be stored: each top-level value (or the
    whole result, when it is not an object) that holds a copy of one of the instance's sealed
    values is sealed too, so deriving from a sealed field never unseals it."""
    scrubber = sealing.scrubber_for(instance.input, *(s.output for s in steps.values()))
    if not scrubber:
        return output
    if not isinstance(output, dict):
        return sealing.seal_value(output) if scrubber.json(output)[1] else output
    return {k: sealing.seal_value(v) if scrubber.json(v)[1] else v for k, v in output.items()}


def step_context(journal: Journal, step: StepRun) -> StepContext:
    """The context a step (or a kind handler deciding about it) sees, inside a service."""
    return context_of(journal.instance, journal.steps, step)


def context_of(instance: WorkflowInstance, steps: dict[str, StepRun], step: StepRun) -> StepContext:
    """The step's view of the instance, with sealed fields opened (raises SealError)."""
    definition = definition_of(instance)
    return StepContext(
        instance_id=str(instance.pk),
        workflow=instance.workflow,
        version=instance.version,
        step=step.name,
        attempt=max(step.attempt, 1),
        input=sealing.open_fields(instance.input, where="input"),
        outputs={
            name: sealing.open_fields(s.output, where=f"outputs.{name}")
            for name, s in steps.items()
            # a step undone for its attempts only (saga) never had an output
            if (s.state in (S.SUCCEEDED, S.COMPENSATING, S.COMPENSATED) and not s.comp_attempted)
            # a step an operator skipped with an output stands in for the step's result
            or (s.state == S.SKIPPED and s.output is not None)
        },
        business_key=instance.business_key,
        scheduled_for=instance.scheduled_for,
        sensitive=definition.sensitive if definition else frozenset(),
    )


def jsonable(value: Any) -> Any:
    """Round-trip through JSON so what is stored is exactly what later steps read."""
    return json.loads(json.dumps(value))


def request_fingerprint(payload: dict[str, Any]) -> str:
    """Keyed (HMAC with SECRET_KEY): the stored hash of a request reveals nothing about
    sensitive input."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(settings.SECRET_KEY.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def stored_output(instance: WorkflowInstance, step_name: str, output: Any) -> Any:
    """A step's output as stored: JSON, with the workflow's sensitive fields sealed (and, in a
    child workflow, every top-level field holding a copy of a sealed input value)."""
    definition = definition_of(instance)
    fields = sealing.output_fields(definition.sensitive, step_name) if definition else set()
    stored = sealing.seal_fields(jsonable(output), fields)
    is_child = instance.parent_step_id is not None or instance.parent_item_id is not None
    if is_child and isinstance(stored, dict):
        # A child workflow may hold its parent's sealed values in fields it does not declare
        # sensitive (orchestration.children seals them in its input): a step echoing one
        # keeps it sealed. Only children pay for this look.
        scrubber = sealing.scrubber_for(instance.input)
        if scrubber:
            stored = {
                k: v if sealing.is_sealed(v) or not scrubber.json(v)[1] else sealing.seal_value(v)
                for k, v in stored.items()
            }
    return stored
