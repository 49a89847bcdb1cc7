"""The demo's ``vendor_onboarding`` (demo/vendors.py), with the workflow test kit: two fan-outs
(document checks as tasks, contact invitations as child workflows) and a child KYC workflow
with a compliance approval, decided as a finance user."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from approvals.testing import decide, pending_requests
from orchestration.models import WorkflowInstance

pytestmark = pytest.mark.django_db


@pytest.fixture
def carol(django_user_model: Any) -> Any:
    """In the finance group: the KYC's compliance approver."""
    user = django_user_model.objects.create_user("carol", email="carol@example.com")
    Group.objects.get_or_create(name="finance")[0].user_set.add(user)
    return user


def vendor(**changes: Any) -> dict[str, Any]:
    return {
        "vendor": "Acme Supplies",
        "country": "DE",
        "documents": [{"name": "vat-certificate"}, {"name": "bank-letter"}, {"name": "iso-9001"}],
        "contacts": [
            {"name": "Ann", "email": "ann@acme.example"},
            {"name": "Ben", "email": "ben@acme.example"},
            {"name": "Cy", "email": "cy@acme.example"},
        ],
        **changes,
    }


def kyc_child(handle: Any) -> Any:
    from orchestration.testing import WorkflowHandle

    child = WorkflowInstance.objects.get(parent_step__instance_id=handle.id)
    return WorkflowHandle(handle.kit, child.pk)


def test_a_vendor_is_onboarded_after_compliance_approves_its_kyc(signoff_kit, carol) -> None:
    handle = signoff_kit.start("vendor_onboarding", vendor()).run_until_idle()
    # the fan-outs ran while the KYC child waits for compliance
    assert handle.step("check_documents").state == "succeeded"
    assert [d["document"] for d in handle.step_output("check_documents")] == [
        "vat-certificate",
        "bank-letter",
        "iso-9001",
    ]
    invites = handle.step_output("invite_contacts")
    assert [i["send_invite"]["invited"] for i in invites] == [
        "ann@acme.example",
        "ben@acme.example",
        "cy@acme.example",
    ]
    assert (
        WorkflowInstance.objects.filter(
            parent_item__step_run__instance_id=handle.id, workflow="vendor_contact"
        ).count()
        == 3
    )
    assert handle.step("kyc").state == "waiting"
    kyc = kyc_child(handle)
    assert kyc.step("compliance_approval").state == "waiting"
    (request,) = pending_requests(user=carol)
    assert request.title == "Vendor KYC: Acme Supplies (DE)"
    decide(kyc, "compliance_approval", as_user=carol)
    handle.run_until_idle()
    assert kyc.state == "succeeded" and handle.state == "succeeded"
    assert handle.output["activate"] == {
        "vendor_id": "vendor-acme-supplies",
        "documents_checked": 3,
        "contacts_invited": 3,
        "kyc_approved_by": ["carol"],
    }
    handle.assert_history("child_started:kyc", "step_succeeded:kyc", "instance_succeeded")


def test_one_bad_contact_is_tolerated(signoff_kit, carol) -> None:
    contacts = [{"name": "Ann", "email": "ann@acme.example"}, {"name": "Bo", "email": "nope"}]
    handle = signoff_kit.start("vendor_onboarding", vendor(contacts=contacts)).run_until_idle()
    decide(kyc_child(handle), "compliance_approval", as_user=carol)
    handle.run_until_idle()
    assert handle.state == "succeeded"
    assert handle.step_output("invite_contacts")[1] is None
    assert handle.output["activate"]["contacts_invited"] == 1


def test_an_expired_document_fails_the_onboarding_and_cancels_the_kyc(signoff_kit) -> None:
    documents = [{"name": "vat-certificate"}, {"name": "old-licence", "expired": True}]
    handle = signoff_kit.start("vendor_onboarding", vendor(documents=documents))
    handle.run_until_idle()
    assert handle.state == "failed"
    assert "old-licence has expired" in handle.step("check_documents").error["message"]
    kyc = kyc_child(handle)
    assert kyc.state == "cancelled"  # the parent failed: its waiting child was cancelled
    assert pending_requests(kyc) == []


def test_compliance_rejecting_the_kyc_fails_the_onboarding(signoff_kit, carol) -> None:
    handle = signoff_kit.start("vendor_onboarding", vendor()).run_until_idle()
    decide(
        kyc_child(handle),
        "compliance_approval",
        as_user=carol,
        outcome="reject",
        comment="unclear ownership",
    )
    handle.run_until_idle()
    assert handle.state == "failed"
    assert handle.step("kyc").error["type"] == "signoff.ChildWorkflowFailed"
    assert handle.step("activate").state != "succeeded"


def test_a_sanctioned_vendor_fails_its_screening(signoff_kit) -> None:
    handle = signoff_kit.start("vendor_onboarding", vendor(vendor="Sanctioned Trading"))
    handle.run_until_idle()
    assert handle.state == "failed"
    assert kyc_child(handle).step("screen").error["message"].endswith("on the sanctions list")
