"""The inbox list's keyboard decisions, server side: the list gives each row what the dialog
needs (only rows the user may decide get a decide URL), the dialog posts the ordinary decision
form with the CSRF token, and a decision goes back to the filtered list it came from ("next",
an inbox URL only). The keys themselves are tested in test_inbox_keys_browser.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from approvals import claims, services
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


def row_tag(page: str, pk: int) -> str:
    match = re.search(rf'<li class="[^"]*" data-request="{pk}"[^>]*>', page)
    assert match, f"request {pk} is not listed"
    return match.group(0)


def test_list_rows_carry_what_the_dialog_needs_for_requests_the_user_may_decide(
    client: Client, people: Any, expense: Any
) -> None:
    taxi = expense(description="Taxi")
    hotel = expense(description="Hotel")
    ApprovalRequest.objects.filter(pk=hotel.pk).update(reject_requires_comment=False)
    claimed = expense(description="Lunch")
    claims.approval_claim(request_id=claimed.pk, user=people["dave"])
    client.force_login(people["bob"])
    page = client.get("/inbox/?sort=due").content.decode()

    tag = row_tag(page, taxi.pk)
    assert 'data-title="Expense: 120 EUR for Taxi"' in tag
    assert f'data-decide-url="/inbox/{taxi.pk}/decide/"' in tag
    assert 'data-reject-needs-comment="true"' in tag
    assert 'data-reject-needs-comment="false"' in row_tag(page, hotel.pk)
    # Claimed by dave: no checkbox, and nothing for "a" or "r" to post to.
    assert "data-decide-url" not in row_tag(page, claimed.pk)
    assert f'id="pick-{claimed.pk}"' not in page

    assert '<script src="/static/approvals/inbox-keys.js" defer></script>' in page
    assert "Select all on this page" in page
    assert "Keyboard: <kbd>j</kbd>/<kbd>k</kbd> move" in page
    dialog = re.search(r'<dialog class="keys-dialog" id="decide-dialog".*?</dialog>', page, re.S)
    assert dialog, "the decision dialog is on the page"
    assert 'name="csrfmiddlewaretoken"' in dialog.group(0)
    assert '<input type="hidden" name="next" value="/inbox/?sort=due">' in dialog.group(0)
    assert page.count('id="decide-dialog"') == 1


def test_decided_rows_offer_no_decision_and_an_empty_list_no_keys(
    client: Client, people: Any, expense: Any
) -> None:
    taxi = expense()
    services.approval_decide(request_id=taxi.pk, user=people["bob"], outcome="approve")
    client.force_login(people["bob"])
    decided = client.get("/inbox/?state=decided").content.decode()
    assert "data-decide-url" not in row_tag(decided, taxi.pk)
    assert "Select all on this page" not in decided  # nothing on the page can be selected
    assert 'id="decide-dialog"' in decided  # j/k/o and the help still work
    empty = client.get("/inbox/").content.decode()
    assert "All caught up" in empty
    assert 'id="decide-dialog"' not in empty and "Keyboard:" not in empty


def test_the_keyboard_script_is_served_locally(client: Client) -> None:
    response = client.get("/static/approvals/inbox-keys.js")
    assert response.status_code == 200
    assert b"showModal" in b"".join(response.streaming_content)


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
