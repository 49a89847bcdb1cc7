"""A refused bulk decision gives the selection back: the inbox comes back with the same
requests ticked and the comment still typed, so fixing what was missing is all it takes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from approvals import services
from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db


def ticked(page: str) -> set[int]:
    return {
        int(pk)
        for pk in re.findall(r'<input type="checkbox" name="ids" value="(\d+)"[^>]* checked>', page)
    }


def typed_comment(page: str) -> str:
    found = re.search(r'<textarea id="bulk-comment"[^>]*>(.*?)</textarea>', page, re.S)
    assert found is not None
    return found.group(1)


def test_bulk_reject_refused_for_a_missing_comment_keeps_the_selection(
    client: Client, people: Any, expense: Any
) -> None:
    taxi, hotel, lunch = (expense(description=d) for d in ("Taxi", "Hotel", "Lunch"))
    client.force_login(people["bob"])
    response = client.post(
        "/inbox/bulk/", {"outcome": "reject", "ids": [taxi.pk, lunch.pk], "next": "/inbox/"}
    )
    assert response["Location"] == "/inbox/"
    page = client.get("/inbox/").content.decode()
    assert "a comment is required to reject" in page
    assert ticked(page) == {taxi.pk, lunch.pk}
    assert hotel.pk not in ticked(page)
    # Once only: the next visit starts clean.
    assert ticked(client.get("/inbox/").content.decode()) == set()

    client.post(
        "/inbox/bulk/", {"outcome": "reject", "ids": [taxi.pk, lunch.pk], "comment": "Too dear"}
    )
    assert ticked(client.get("/inbox/").content.decode()) == set()
    assert {ApprovalRequest.objects.get(pk=r.pk).state for r in (taxi, lunch)} == {"rejected"}


def test_refused_bulk_form_keeps_the_ticks_and_the_typed_comment(
    client: Client, people: Any, expense: Any
) -> None:
    taxi, hotel = expense(description="Taxi"), expense(description="Hotel")
    client.force_login(people["bob"])
    client.post(
        "/inbox/bulk/",
        {"outcome": "request_changes", "ids": [taxi.pk, hotel.pk], "comment": "Receipts, please"},
    )
    page = client.get("/inbox/").content.decode()
    assert "Changes are requested one request at a time" in page
    assert ticked(page) == {taxi.pk, hotel.pk}
    assert typed_comment(page) == "Receipts, please"


def test_only_the_refused_requests_stay_ticked_and_only_if_still_decidable(
    client: Client, people: Any, expense: Any
) -> None:
    taxi, taken = expense(description="Taxi"), expense(description="Lunch")
    later = expense(description="Hotel")  # left alone: the bulk form is still offered
    services.approval_decide(request_id=taken.pk, user=people["dave"], outcome="approve")
    client.force_login(people["bob"])
    client.post(
        "/inbox/bulk/",
        {"outcome": "approve", "ids": [taxi.pk, taken.pk], "comment": "Batch of the week"},
    )
    page = client.get("/inbox/").content.decode()
    assert "Refused 1" in page
    assert f'value="{later.pk}"' in page
    assert ticked(page) == set()  # taxi was approved; lunch is no longer bob's to decide
    assert typed_comment(page) == "Batch of the week"
