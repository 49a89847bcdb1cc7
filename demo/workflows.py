"""Demo workflows, an ordinary user of the DSL. Listed in ``SIGNOFF_WORKFLOW_MODULES``.

``customer_onboarding`` v1: ``create_account`` → in parallel ``provision_infrastructure`` and
``send_welcome_email`` → ``enable_billing``. Input switches show the engine's behaviour:
``{"fail_times": {"<step>": N}}`` fails a step transiently N times before it succeeds, and
``{"fail_permanently": "<step>"}`` raises a non-retryable error there. Steps call nothing
external; they record what they would have done in their output.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from orchestration.definitions import (
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    registry,
)
from orchestration.waits import signal_step

ONBOARDING_STEPS = [
    "create_account",
    "provision_infrastructure",
    "send_welcome_email",
    "enable_billing",
]


class TransientDemoError(Exception):
    """A pretend outage of the system a step talks to."""


onboarding = Workflow(
    "customer_onboarding",
    version=1,
    description="Create an account, provision infrastructure and send a welcome mail in "
    "parallel, then enable billing.",
    deadline=timedelta(days=1),
    input_schema={
        "type": "object",
        "required": ["customer"],
        "properties": {
            "customer": {"type": "string", "minLength": 1, "maxLength": 200},
            "email": {"type": "string", "maxLength": 254},
            "plan": {"enum": ["free", "team", "enterprise"]},
            "region": {"type": "string", "maxLength": 50},
            "fail_times": {
                "type": "object",
                "propertyNames": {"enum": ONBOARDING_STEPS},
                "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 10},
            },
            "fail_permanently": {"enum": ONBOARDING_STEPS},
        },
    },
)

DEMO_RETRY = RetryPolicy(
    max_attempts=5,
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=10),
)


def _misbehave(ctx: StepContext) -> None:
    if ctx.input.get("fail_permanently") == ctx.step:
        raise NonRetryableError(f"{ctx.step}: permanent failure requested by the input")
    wanted = int(ctx.input.get("fail_times", {}).get(ctx.step, 0))
    if ctx.attempt <= wanted:
        raise TransientDemoError(
            f"{ctx.step}: transient failure {ctx.attempt} of {wanted} requested by the input"
        )


@onboarding.task(retry=DEMO_RETRY, start_to_close=timedelta(seconds=30))
def create_account(ctx: StepContext) -> dict[str, Any]:
    _misbehave(ctx)
    customer = ctx.input["customer"]
    slug = "".join(c if c.isalnum() else "-" for c in customer.lower()).strip("-") or "customer"
    return {
        "account_id": f"acct-{slug}",
        "plan": ctx.input.get("plan", "team"),
        "idempotency_key": ctx.idempotency_key,
    }


@onboarding.task(after=["create_account"], retry=DEMO_RETRY, start_to_close=timedelta(seconds=30))
def provision_infrastructure(ctx: StepContext) -> dict[str, Any]:
    _misbehave(ctx)
    account = ctx.outputs["create_account"]["account_id"]
    return {"tenant": f"{account}.{ctx.input.get('region', 'eu-west')}", "databases": 1}


@onboarding.task(after=["create_account"], retry=DEMO_RETRY, start_to_close=timedelta(seconds=30))
def send_welcome_email(ctx: StepContext) -> dict[str, Any]:
    _misbehave(ctx)
    to = ctx.input.get("email") or f"admin@{ctx.outputs['create_account']['account_id']}.example"
    return {"to": to, "template": "welcome", "message_id": f"<{ctx.idempotency_key}@signoff>"}


@onboarding.task(
    after=["provision_infrastructure", "send_welcome_email"],
    retry=DEMO_RETRY,
    start_to_close=timedelta(seconds=30),
    when=lambda ctx: ctx.input.get("plan") != "free",
)
def enable_billing(ctx: StepContext) -> dict[str, Any]:
    _misbehave(ctx)
    return {
        "billing_account": f"bill-{ctx.outputs['create_account']['account_id']}",
        "plan": ctx.outputs["create_account"]["plan"],
    }


registry.register(onboarding)


# Version 2: billing waits until the customer finished setting up (an external callback:
# POST /api/v1/instances/<id>/signals/setup_completed/), at most 7 days, else the onboarding is
# cancelled. Instances started on version 1 finish on version 1.
onboarding_v2 = Workflow(
    "customer_onboarding",
    version=2,
    description="Version 1, plus: billing waits for the customer's setup_completed callback "
    "(7 days, then the onboarding is cancelled).",
    deadline=timedelta(days=8),
    input_schema=onboarding.input_schema,
)
onboarding_v2.task(create_account, retry=DEMO_RETRY, start_to_close=timedelta(seconds=30))
for _fn in (provision_infrastructure, send_welcome_email):
    onboarding_v2.task(
        _fn, after=["create_account"], retry=DEMO_RETRY, start_to_close=timedelta(seconds=30)
    )
signal_step(
    onboarding_v2,
    "setup_completed",
    after=["provision_infrastructure", "send_welcome_email"],
    timeout=timedelta(days=7),
    on_timeout="cancel",
    schema={
        "type": "object",
        "properties": {
            "admin_email": {"type": "string", "maxLength": 254},
            "seats": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": True,
    },
)
onboarding_v2.task(
    enable_billing,
    after=["setup_completed"],
    retry=DEMO_RETRY,
    start_to_close=timedelta(seconds=30),
    when=lambda ctx: ctx.input.get("plan") != "free",
)
registry.register(onboarding_v2)
