"""Demo ``vendor_onboarding`` v1: a child workflow and two fan-outs.

``register`` → in parallel: ``check_documents`` (a map step: one task per document, three at a
time), ``invite_contacts`` (a map step over child workflows: one ``vendor_contact`` child per
contact, two at a time, one failed invitation tolerated) and ``kyc`` (a child ``vendor_kyc``
workflow: a sanctions screening, then a compliance approval by the finance group) →
``activate``.

Input switches: a document with ``"expired": true`` fails its check for good (fail fast: the
onboarding fails); a contact whose ``email`` has no ``@`` fails its invitation (tolerated
once); a vendor whose name contains ``sanctioned`` fails the screening (the KYC child fails,
and the onboarding with it). Steps call nothing external.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from approvals.definitions import approval
from orchestration.children import child_step
from orchestration.definitions import (
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    registry,
)
from orchestration.fanout import ItemContext, map_step
from orchestration.fanout_children import map_children

RETRY = RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1))

# -- the children --------------------------------------------------------------------------------

kyc = Workflow(
    "vendor_kyc",
    version=1,
    description="Screen a vendor against the sanctions list, then compliance approves it.",
    deadline=timedelta(days=10),
    input_schema={
        "type": "object",
        "required": ["vendor", "country"],
        "properties": {
            "vendor": {"type": "string", "minLength": 1, "maxLength": 200},
            "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
        },
    },
)


@kyc.task(retry=RETRY, start_to_close=timedelta(seconds=30))
def screen(ctx: StepContext) -> dict[str, Any]:
    vendor = ctx.input["vendor"]
    if "sanctioned" in vendor.lower():
        raise NonRetryableError(f"{vendor} is on the sanctions list")
    return {"screened": vendor, "list": "demo-sanctions-2026", "hits": 0}


approval(
    kyc,
    "compliance_approval",
    after=["screen"],
    groups=["finance"],
    policy="any",
    due=timedelta(days=5),
    title="Vendor KYC: {input[vendor]} ({input[country]})",
    show=[("Vendor", "input.vendor"), ("Country", "input.country")],
)


@kyc.task(after=["compliance_approval"], retry=RETRY, start_to_close=timedelta(seconds=30))
def record(ctx: StepContext) -> dict[str, Any]:
    decision = ctx.outputs["compliance_approval"]
    return {"kyc_passed": True, "approved_by": decision.get("decided_by")}


registry.register(kyc)

contact = Workflow(
    "vendor_contact",
    version=1,
    description="Invite one of a vendor's contacts to the supplier portal.",
    input_schema={
        "type": "object",
        "required": ["vendor", "name", "email"],
        "properties": {
            "vendor": {"type": "string", "minLength": 1, "maxLength": 200},
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "email": {"type": "string", "maxLength": 254},
        },
    },
)


@contact.task(retry=RETRY, start_to_close=timedelta(seconds=30))
def send_invite(ctx: StepContext) -> dict[str, Any]:
    if "@" not in ctx.input["email"]:
        raise NonRetryableError(f"cannot invite {ctx.input['name']}: no valid email address")
    # A real mail passes ctx.idempotency_key as its message id: a retry sends it once.
    return {"invited": ctx.input["email"], "message_id": f"<{ctx.idempotency_key}@signoff>"}


registry.register(contact)

# -- the parent ----------------------------------------------------------------------------------

onboarding = Workflow(
    "vendor_onboarding",
    version=1,
    description="Check a vendor's documents and invite its contacts (fan-outs) while a child "
    "KYC workflow screens it and compliance approves; then activate it.",
    deadline=timedelta(days=14),
    input_schema={
        "type": "object",
        "required": ["vendor", "country", "documents", "contacts"],
        "properties": {
            "vendor": {"type": "string", "minLength": 1, "maxLength": 200},
            "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
            "documents": {
                "type": "array",
                "maxItems": 50,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "expired": {"type": "boolean"},
                    },
                },
            },
            "contacts": {
                "type": "array",
                "maxItems": 50,
                "items": {
                    "type": "object",
                    "required": ["name", "email"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "email": {"type": "string", "maxLength": 254},
                    },
                },
            },
        },
    },
)


@onboarding.task(retry=RETRY, start_to_close=timedelta(seconds=30))
def register(ctx: StepContext) -> dict[str, Any]:
    slug = "".join(c if c.isalnum() else "-" for c in ctx.input["vendor"].lower()).strip("-")
    return {"vendor_id": f"vendor-{slug or 'vendor'}"}


@map_step(
    onboarding,
    "check_documents",
    items=lambda ctx: ctx.input["documents"],
    after=["register"],
    concurrency=3,
    max_items=50,
    retry=RETRY,
    start_to_close=timedelta(seconds=30),
)
def check_document(ctx: ItemContext, document: dict[str, Any]) -> dict[str, Any]:
    if document.get("expired"):
        raise NonRetryableError(f"document {document['name']} has expired")
    return {"document": document["name"], "valid": True}


map_children(
    onboarding,
    "invite_contacts",
    workflow="vendor_contact",
    items=lambda ctx: ctx.input["contacts"],
    after=["register"],
    input=lambda ctx, person: {"vendor": ctx.input["vendor"], **person},
    concurrency=2,
    max_items=50,
    tolerate_failures=1,
)

child_step(
    onboarding,
    "kyc",
    workflow="vendor_kyc",
    after=["register"],
    input=lambda ctx: {"vendor": ctx.input["vendor"], "country": ctx.input["country"]},
)


@onboarding.task(
    after=["check_documents", "invite_contacts", "kyc"],
    retry=RETRY,
    start_to_close=timedelta(seconds=30),
)
def activate(ctx: StepContext) -> dict[str, Any]:
    invited = [c for c in ctx.outputs["invite_contacts"] if c is not None]
    return {
        "vendor_id": ctx.outputs["register"]["vendor_id"],
        "documents_checked": len(ctx.outputs["check_documents"]),
        "contacts_invited": len(invited),
        "kyc_approved_by": ctx.outputs["kyc"]["record"]["approved_by"],
    }


registry.register(onboarding)
