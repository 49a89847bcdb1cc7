"""A decision goes back to the filtered inbox list it came from ("next", an inbox URL only)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from approvals.models import ApprovalRequest, Decision
from orchestration.models import Event

pytestmark = pytest.mark.django_db

UNSAFE_NEXT = {
    "another site": "https://evil.example/",
    "scheme-relative": "//evil.example",
    "another page of this site": "/admin/",
    "this site, absolute, outside the inbox": "http://testserver/admin/",
    "dot segments": "/inbox/../admin/",
    "encoded dot segments": "/inbox/%2e%2e/admin/",
    "backslash dot segments": "/inbox/..\\admin/",
    "backslash host": "/\\evil.example/inbox/",
    "empty": "",
    "oversized": "/inbox/?q=" + "x" * 3000,
}


def state_of(request: ApprovalRequest) -> str:
    return ApprovalRequest.objects.get(pk=request.pk).state


def test_decide_goes_back_to_the_filtered_list_named_in_next(
    client: Client, people: Any, expense: Any
) -> None:
    taxi = expense()
    client.force_login(people["bob"])
    back = "/inbox/?workflow=expense_approval&sort=due&q=EXP"
    response = client.post(f"/inbox/{taxi.pk}/decide/", {"outcome": "approve", "next": back})
    assert response.status_code == 302
    assert response["Location"] == back
    assert state_of(taxi) == "approved"
    page = client.get(back)
    assert [str(m) for m in page.context["messages"]] == [
        "Approved “Expense: 120 EUR for Taxi to the airport”."
    ]


def test_decide_without_next_goes_to_the_list_as_before(
    client: Client, people: Any, expense: Any
) -> None:
    taxi = expense()
    client.force_login(people["bob"])
    response = client.post(
        f"/inbox/{taxi.pk}/decide/", {"outcome": "reject", "comment": "Not this month"}
    )
    assert response["Location"] == "/inbox/"
    assert state_of(taxi) == "rejected"


@pytest.mark.parametrize("unsafe", list(UNSAFE_NEXT.values()), ids=list(UNSAFE_NEXT))
def test_decide_refuses_a_next_outside_the_inbox_and_falls_back_to_the_list(
    client: Client, people: Any, expense: Any, unsafe: str
) -> None:
    taxi = expense()
    client.force_login(people["bob"])
    response = client.post(f"/inbox/{taxi.pk}/decide/", {"outcome": "approve", "next": unsafe})
    assert response.status_code == 302
    assert response["Location"] == "/inbox/"
    assert state_of(taxi) == "approved"


@pytest.mark.parametrize("unsafe", ["/inbox/../admin/", "/inbox/%2e%2e/admin/"])
def test_bulk_refuses_a_next_that_climbs_out_of_the_inbox(
    client: Client, people: Any, unsafe: str
) -> None:
    client.force_login(people["bob"])
    response = client.post("/inbox/bulk/", {"outcome": "approve", "next": unsafe})
    assert response["Location"] == "/inbox/"


def test_a_refused_keyboard_decision_changes_nothing_and_does_not_follow_next(
    client: Client, people: Any, expense: Any
) -> None:
    taxi = expense()
    history = Event.objects.filter(instance_id=taxi.instance_id).count()
    client.force_login(people["bob"])
    back = "/inbox/?sort=due"
    response = client.post(f"/inbox/{taxi.pk}/decide/", {"outcome": "reject", "next": back})
    assert response.status_code == 400
    assert "a comment is required to reject" in response.content.decode()
    assert state_of(taxi) == "pending"
    assert not Decision.objects.filter(request=taxi).exists()
    assert Event.objects.filter(instance_id=taxi.instance_id).count() == history

    # eve may not see it: the same 404 with or without "next", and nothing written
    eve = Client()
    eve.force_login(people["eve"])
    response = eve.post(f"/inbox/{taxi.pk}/decide/", {"outcome": "approve", "next": back})
    assert response.status_code == 404
    assert state_of(taxi) == "pending"
    assert not Decision.objects.filter(request=taxi).exists()
