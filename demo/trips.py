"""Demo ``trip_booking`` v1, the classic saga: book a flight, a hotel and a car; when a later
booking fails (or the trip is cancelled), cancel the earlier ones, newest first.

Input: ``{"traveller": "...", "destination": "...", "fail_at": "book_car"}`` fails that step
for good; ``"fail_compensation": "book_hotel"`` makes that step's cancellation keep failing
(the instance then ends ``failed`` with the compensation error, retryable by an operator);
``"slow": true`` makes each booking take two seconds (to cancel one mid-flight).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from orchestration.definitions import (
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    registry,
)

STEPS = ["book_flight", "book_hotel", "book_car"]

trips = Workflow(
    "trip_booking",
    version=1,
    description="Book flight, hotel and car; cancel what was booked when a booking fails.",
    deadline=timedelta(hours=1),
    input_schema={
        "type": "object",
        "required": ["traveller"],
        "properties": {
            "traveller": {"type": "string", "minLength": 1, "maxLength": 200},
            "destination": {"type": "string", "maxLength": 200},
            "fail_at": {"enum": STEPS},
            "fail_compensation": {"enum": STEPS},
            "slow": {"type": "boolean"},
        },
    },
)

RETRY = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=500))
UNDO_RETRY = RetryPolicy(
    max_attempts=3, initial_interval=timedelta(milliseconds=300), max_interval=timedelta(seconds=2)
)


def _book(ctx: StepContext, what: str) -> dict[str, Any]:
    if ctx.input.get("slow"):
        time.sleep(2)
    if ctx.input.get("fail_at") == ctx.step:
        raise NonRetryableError(f"no {what} available for {ctx.input.get('destination', '?')}")
    # A real booking call passes ctx.idempotency_key so a retry never books twice.
    return {"booking": f"{what}-{ctx.idempotency_key}", "traveller": ctx.input["traveller"]}


def _cancel(ctx: StepContext, output: dict[str, Any]) -> dict[str, Any]:
    if ctx.input.get("fail_compensation") == ctx.step:
        raise RuntimeError(f"the {ctx.step} supplier does not answer; cannot cancel yet")
    return {"cancelled": output["booking"]}


def cancel_flight(ctx: StepContext, output: dict[str, Any]) -> dict[str, Any]:
    return _cancel(ctx, output)


def cancel_hotel(ctx: StepContext, output: dict[str, Any]) -> dict[str, Any]:
    return _cancel(ctx, output)


def cancel_car(ctx: StepContext, output: dict[str, Any]) -> dict[str, Any]:
    return _cancel(ctx, output)


@trips.task(
    retry=RETRY,
    compensate=cancel_flight,
    compensate_retry=UNDO_RETRY,
    start_to_close=timedelta(seconds=30),
)
def book_flight(ctx: StepContext) -> dict[str, Any]:
    return _book(ctx, "flight")


@trips.task(
    after=["book_flight"],
    retry=RETRY,
    compensate=cancel_hotel,
    compensate_retry=UNDO_RETRY,
    start_to_close=timedelta(seconds=30),
)
def book_hotel(ctx: StepContext) -> dict[str, Any]:
    return _book(ctx, "hotel")


@trips.task(
    after=["book_hotel"],
    retry=RETRY,
    compensate=cancel_car,
    compensate_retry=UNDO_RETRY,
    start_to_close=timedelta(seconds=30),
)
def book_car(ctx: StepContext) -> dict[str, Any]:
    return _book(ctx, "car")


registry.register(trips)
