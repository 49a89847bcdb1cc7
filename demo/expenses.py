"""Demo ``expense_approval`` v1: validate → manager approval → finance approval (only over
1,000) → pay → book the payment. Receipts come as files with the start; either approver may
send the expense back for a changed amount, description or receipts. The requester hears of
each decision and of the end from the approvals app's mails (no mail step here)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model

from approvals.definitions import Escalation, Show, approval
from orchestration.attachments import REFS_SCHEMA
from orchestration.definitions import (
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    registry,
)

FINANCE_THRESHOLD = 1000

expenses = Workflow(
    "expense_approval",
    version=1,
    description="An expense approved by a manager, and by finance above 1,000, then paid.",
    deadline=timedelta(days=30),
    # A person starting an expense is its requester (filled in when left out); naming
    # someone else needs orchestration.start_on_behalf.
    requester_input="requester",
    # Receipts: files sent with the start (multipart), listed in input.receipts.
    attachments="receipts",
    # Anyone in the demo's "employees" group may submit one from the web (/start/).
    startable_by=["employees"],
    input_schema={
        "type": "object",
        "required": ["amount", "currency", "description", "requester"],
        "properties": {
            "amount": {
                "type": "number",
                "title": "Amount",
                "description": "Over 1,000 finance checks it too.",
            },
            "currency": {
                "type": "string",
                "title": "Currency",
                "pattern": "^[A-Z]{3}$",
                "description": "Three capital letters: EUR, USD, GBP...",
            },
            "description": {
                "type": "string",
                "title": "What for",
                "minLength": 1,
                "maxLength": 500,
            },
            "category": {
                "type": "string",
                "title": "Category",
                "enum": ["travel", "meals", "equipment", "training", "other"],
            },
            "spent_on": {"type": "string", "format": "date", "title": "Date of the expense"},
            "requester": {"type": "string", "minLength": 1, "maxLength": 150},
            "receipts": {**REFS_SCHEMA, "title": "Receipts"},
        },
    },
)

# What the requester may change when an approver sends the expense back.
REVISABLE = ["amount", "description", "receipts"]

SHOW = [
    Show("Amount", "input.amount", column=True),  # a sortable column of the inbox list
    ("Currency", "input.currency"),
    ("Description", "input.description"),
    ("Requester", "input.requester"),
    ("Receipts", "input.receipts"),
]


@expenses.task(retry=RetryPolicy(max_attempts=3), start_to_close=timedelta(seconds=30))
def validate(ctx: StepContext) -> dict[str, Any]:
    amount = ctx.input["amount"]
    if amount <= 0:
        raise NonRetryableError(f"amount must be positive, got {amount}")
    user = get_user_model().objects.filter(username=ctx.input["requester"], is_active=True).first()
    if user is None:
        raise NonRetryableError(f"unknown requester {ctx.input['requester']!r}")
    return {"requester_email": user.email, "needs_finance": amount > FINANCE_THRESHOLD}


approval(
    expenses,
    "manager_approval",
    after=["validate"],
    groups=["managers"],
    policy="any",
    due=timedelta(days=3),
    remind_every=timedelta(days=1),
    # Nobody in managers decided within two days: the admin gets it too.
    escalate=[Escalation(after=timedelta(days=2), users=["admin"])],
    on_expire="reject",
    title="Expense: {input[amount]} {input[currency]} for {input[description]}",
    show=SHOW,
    requester=lambda ctx: ctx.input["requester"],
    revisable=REVISABLE,
)

approval(
    expenses,
    "finance_approval",
    after=["manager_approval"],
    when=lambda ctx: ctx.input["amount"] > FINANCE_THRESHOLD,
    groups=["finance"],
    policy="any",
    due=timedelta(days=2),
    title="Finance check: {input[amount]} {input[currency]} for {input[description]}",
    show=[*SHOW, ("Manager decision", "outputs.manager_approval.decided_by")],
    requester=lambda ctx: ctx.input["requester"],
    revisable=REVISABLE,
)


def refund(ctx: StepContext, output: dict[str, Any]) -> dict[str, Any]:
    """Undo ``pay`` when a later step fails or the expense is cancelled after payment."""
    return {"refunded": output["payment_id"], "amount": output["amount"]}


@expenses.task(
    after=["finance_approval"],
    retry=RetryPolicy(max_attempts=5),
    start_to_close=timedelta(seconds=30),
    compensate=refund,
)
def pay(ctx: StepContext) -> dict[str, Any]:
    # A real payment call would pass ctx.idempotency_key so a retry never pays twice.
    return {
        "payment_id": f"pay-{ctx.idempotency_key}",
        "amount": ctx.input["amount"],
        "currency": ctx.input["currency"],
    }


@expenses.task(
    after=["pay"], retry=RetryPolicy(max_attempts=5), start_to_close=timedelta(seconds=30)
)
def book(ctx: StepContext) -> dict[str, Any]:
    """Book the payment in the expense ledger (a real one would post to accounting with
    ctx.idempotency_key, so a retry books once)."""
    pay = ctx.outputs["pay"]
    return {
        "entry": f"book-{ctx.idempotency_key}",
        "payment": pay["payment_id"],
        "amount": pay["amount"],
        "currency": pay["currency"],
        "receipts": len(ctx.input.get("receipts") or []),
    }


registry.register(expenses)
