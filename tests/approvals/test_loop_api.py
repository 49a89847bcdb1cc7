"""The approval loop of issue 12 through the REST API alone, with a real Celery worker moving
the instance on: the same story as tests/approvals/test_loop_browser.py, as another system (or
a mobile client) would drive it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from demo.management.commands.seed_demo import receipt_pdf
from orchestration.models import Attachment, WorkflowInstance
from tests.attachments_fixtures import (
    PNG,
    files_dir_fixture,  # noqa: F401 - the files_dir fixture
    upload,
)
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

API = "/api/v1"
RECEIPT = receipt_pdf("Hotel Lumiere, 3 nights, 1850 EUR")
CORRECTED = receipt_pdf("Hotel Lumiere, 2 nights (business), 1650 EUR")
SENT_BACK = "The third night was private: take it off and attach the corrected invoice."
APPROVED = "Thanks, the corrected invoice matches."


def as_user(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def request_of(instance_id: str, step: str, round_no: int = 1) -> ApprovalRequest:
    return wait_for(
        lambda: ApprovalRequest.objects.filter(
            instance_id=instance_id, step_name=step, round=round_no
        ).first(),
        timeout=30,
        message=f"{step} round {round_no}",
    )


def test_the_whole_loop_through_the_api(
    worker: Any, people: dict[str, Any], files_dir: Path
) -> None:
    alice, bob, carol, dave = (as_user(people[n]) for n in ("alice", "bob", "carol", "dave"))

    # alice submits with the receipt.
    started = alice.post(
        f"{API}/instances/",
        {
            "workflow": "expense_approval",
            "input": json.dumps(
                {"amount": 1850, "currency": "EUR", "description": "Lyon", "requester": "alice"}
            ),
            "files": [upload("hotel-invoice.pdf", RECEIPT)],
        },
        format="multipart",
    )
    assert started.status_code == 201, started.content
    instance_id = started.json()["id"]
    first = request_of(instance_id, "manager_approval")

    # bob reads it and the receipt.
    detail = bob.get(f"{API}/approvals/{first.pk}/").json()
    shown = {f["label"]: f["value"] for f in detail["fields"]}
    [receipt] = shown["Receipts"]
    assert receipt["name"] == "hotel-invoice.pdf"
    assert detail["revisable"] == ["amount", "description", "receipts"]
    download = bob.get(f"{API}/files/{receipt['id']}/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == RECEIPT
    assert bob.get(f"{API}/instances/{instance_id}/").status_code == 200  # read-only context

    # bob claims; dave cannot decide meanwhile and is told who holds it.
    assert bob.post(f"{API}/approvals/{first.pk}/claim/").status_code == 200
    refused = dave.post(f"{API}/approvals/{first.pk}/approve/", {}, format="json")
    assert refused.status_code == 409 and "bob" in refused.json()["detail"]

    # a question with a marked-up scan, then the request for changes.
    asked = bob.post(
        f"{API}/approvals/{first.pk}/comments/",
        {"body": "Is the third night private?", "files": [upload("marked.png", PNG)]},
        format="multipart",
    )
    assert asked.status_code == 201 and asked.json()["files"][0]["name"] == "marked.png"
    answered = alice.post(
        f"{API}/approvals/{first.pk}/comments/", {"body": "Yes, it was."}, format="json"
    )
    assert answered.status_code == 201
    sent = bob.post(
        f"{API}/approvals/{first.pk}/request-changes/", {"comment": SENT_BACK}, format="json"
    )
    assert sent.status_code == 200 and sent.json()["state"] == "changes_requested"

    # alice finds it to revise, and resubmits a new amount with the corrected invoice.
    to_revise = alice.get(f"{API}/approvals/?state=revise").json()["results"]
    assert [r["id"] for r in to_revise] == [first.pk]
    resubmitted = alice.post(
        f"{API}/approvals/{first.pk}/resubmit/",
        {
            "input": json.dumps({"amount": 1650}),
            "files": [upload("hotel-invoice-corrected.pdf", CORRECTED)],
        },
        format="multipart",
    )
    assert resubmitted.status_code == 201, resubmitted.content
    second = resubmitted.json()
    assert second["round"] == 2
    assert [r["round"] for r in second["rounds"]] == [1]
    assert second["rounds"][0]["comment"] == SENT_BACK
    # The same resubmission again (a retry) starts no third round.
    again = alice.post(f"{API}/approvals/{first.pk}/resubmit/", {}, format="json")
    assert again.status_code == 409

    # bob approves round 2.
    approved = bob.post(
        f"{API}/approvals/{second['id']}/approve/", {"comment": APPROVED}, format="json"
    )
    assert approved.status_code == 200, approved.content

    # carol sees bob's comments and both rounds, and approves.
    finance = request_of(instance_id, "finance_approval")
    seen = carol.get(f"{API}/approvals/{finance.pk}/").json()
    assert [
        (d["step"], d["round"], d["who"], d["outcome"], d["comment"])
        for d in seen["workflow_decisions"]
    ] == [
        ("Manager approval", 1, "bob", "request_changes", SENT_BACK),
        ("Manager approval", 2, "bob", "approve", APPROVED),
    ]
    shown = {f["label"]: f["value"] for f in seen["fields"]}
    assert shown["Amount"] == 1650
    assert [r["name"] for r in shown["Receipts"]] == [
        "hotel-invoice.pdf",
        "hotel-invoice-corrected.pdf",
    ]
    files = carol.get(f"{API}/instances/{instance_id}/files/").json()
    assert sorted(f["name"] for f in files) == [
        "hotel-invoice-corrected.pdf",
        "hotel-invoice.pdf",
        "marked.png",
    ]
    assert (
        carol.post(f"{API}/approvals/{finance.pk}/approve/", {}, format="json").status_code == 200
    )

    instance = wait_for(
        lambda: WorkflowInstance.objects.filter(pk=instance_id, state="succeeded").first(),
        timeout=30,
        message="the expense paid and booked",
    )
    assert instance.input["amount"] == 1650
    assert Attachment.objects.filter(instance=instance).count() == 3
    history = [
        e["type"] for e in alice.get(f"{API}/instances/{instance_id}/history/").json()["results"]
    ]
    for event in (
        "approval_claimed",
        "approval_commented",
        "approval_changes_requested",
        "instance_input_revised",
        "approval_resubmitted",
        "instance_succeeded",
    ):
        assert event in history
