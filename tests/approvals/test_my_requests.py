"""“My requests” (/requests/): the instances a person asked for, who has them now, search and
paging that never 500, and a query count that does not grow with the data."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals import services
from approvals.models import ApprovalRequest
from approvals.request_views import PAGE_SIZE
from orchestration import engine
from orchestration.models import StepRun, WorkflowInstance
from tests.approvals.conftest import expense_input

pytestmark = pytest.mark.django_db
URL = "/requests/"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def rows(response: Any) -> list[str]:
    """The instance ids listed, in order."""
    return re.findall(r'data-instance="([0-9a-f-]{36})"', response.content.decode())


def start_expense(
    by: Any, *, key: str = "", amount: float = 120, description: str = "Taxi", requester: str = ""
) -> ApprovalRequest:
    """An expense by ``by`` (for ``requester`` when given), waiting for the managers."""
    payload = {**expense_input(amount, description), "requester": requester or by.username}
    instance, _ = engine.instance_start(
        workflow="expense_approval", input=payload, business_key=key, started_by=by
    )
    validate = StepRun.objects.get(instance=instance, name="validate")
    assert engine.step_execute(step_run_id=validate.pk, attempt=1) == "succeeded"
    return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")


@pytest.fixture
def alices(people: dict[str, Any]) -> Callable[..., ApprovalRequest]:
    def make(**kwargs: Any) -> ApprovalRequest:
        return start_expense(people["alice"], **kwargs)

    return make


def test_anonymous_visitors_are_sent_to_log_in(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/requests/")


def test_the_page_lists_only_the_users_own_requests_newest_first(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest]
) -> None:
    first = alices(key="EXP-1")
    second = alices(key="EXP-2")
    carols = start_expense(people["carol"], key="EXP-CAROL")
    response = client_for(people["alice"]).get(URL)
    assert response.status_code == 200
    assert rows(response) == [str(second.instance_id), str(first.instance_id)]
    assert "EXP-CAROL" not in response.content.decode()
    # Nobody else sees alice's rows: not carol, not an assignee, not staff.
    people["eve"].is_staff = True
    people["eve"].save()
    for name in ("carol", "bob", "eve"):
        listed = rows(client_for(people[name]).get(URL))
        assert str(first.instance_id) not in listed and str(second.instance_id) not in listed
    assert rows(client_for(people["carol"]).get(URL)) == [str(carols.instance_id)]


def test_a_row_shows_state_current_step_who_has_it_due_and_last_change(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest]
) -> None:
    request = alices(key="EXP-9", amount=45.5, description="Team lunch")
    html = client_for(people["alice"]).get(URL).content.decode()
    row = html[html.index(f'data-instance="{request.instance_id}"') :]
    row = row[: row.index("</li>")]
    assert f'href="/instances/{request.instance_id}/"' in row
    assert "Expense: 45.5 EUR for Team lunch" in row
    assert "EXP-9" in row
    assert '<span class="pill state-running">Running</span>' in row
    assert "Manager approval" in row and "(waiting)" in row
    assert "with group managers" in row
    assert "due in 2" in row  # three days, minus the moment
    assert "changed just now" in row
    assert "Overdue" not in row


def test_an_overdue_claimed_request_says_so(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest]
) -> None:
    request = alices()
    request.assignee_users.add(people["dave"])
    now = timezone.now()
    ApprovalRequest.objects.filter(pk=request.pk).update(
        due_at=now - timedelta(hours=5),
        claim_mode="soft",
        claim_state="claimed",
        claimed_by=people["bob"],
        claimed_at=now,
        claim_active_at=now,
    )
    html = client_for(people["alice"]).get(URL).content.decode()
    assert "with group managers, dave" in html
    assert "claimed by bob" in html
    assert '<span class="pill pill-overdue">Overdue</span>' in html
    assert "due 5\xa0hours ago" in html


def test_finished_instances_show_their_state_and_no_one_holding_them(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest]
) -> None:
    request = alices()
    engine.instance_cancel(instance_id=request.instance_id, actor="alice")
    html = client_for(people["alice"]).get(URL).content.decode()
    assert '<span class="pill state-cancelled">Cancelled</span>' in html
    assert "with group managers" not in html and "due in" not in html


def test_instances_started_on_the_users_behalf_are_theirs_too(people: dict[str, Any]) -> None:
    carol = people["carol"]
    carol.user_permissions.add(
        Permission.objects.get(content_type__app_label="orchestration", codename="start_on_behalf")
    )
    carol = type(carol).objects.get(pk=carol.pk)  # forget the permission cache
    request = start_expense(carol, key="FOR-ALICE", requester="alice")
    assert request.requester == people["alice"]
    assert rows(client_for(people["alice"]).get(URL)) == [str(request.instance_id)]
    assert rows(client_for(carol).get(URL)) == [str(request.instance_id)]  # and the starter's


def test_filter_by_state(people: dict[str, Any], alices: Callable[..., ApprovalRequest]) -> None:
    running = alices(key="RUN")
    cancelled = alices(key="CAN")
    engine.instance_cancel(instance_id=cancelled.instance_id, actor="alice")
    client = client_for(people["alice"])
    assert rows(client.get(URL, {"state": "running"})) == [str(running.instance_id)]
    assert rows(client.get(URL, {"state": "cancelled"})) == [str(cancelled.instance_id)]
    assert rows(client.get(URL, {"state": "succeeded"})) == []
    assert len(rows(client.get(URL, {"state": ""}))) == 2


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("exp-2026-0139", ["laptop"]),  # business key, any case
        ("  2026-0140  ", ["lunch"]),  # trimmed
        ("LYON", ["train"]),  # the approval's title
        ("expense_approval", ["train", "lunch", "laptop", "discount"]),  # the workflow's name
        ("EUR for L", ["lunch", "laptop"]),
        ("50%", ["discount"]),  # % is a character, not a wildcard
        ("0_", []),  # and so is _
        ("nothing like it", []),
    ],
)
def test_search_by_text(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest], q: str, expected: list[str]
) -> None:
    made = {
        "discount": alices(key="PROMO", description="Hotel at 50% off"),
        "laptop": alices(key="EXP-2026-0139", description="Laptop"),
        "lunch": alices(key="EXP-2026-0140", description="Lunch"),
        "train": alices(key="EXP-2026-0141", description="Train to Lyon"),
    }
    start_expense(people["carol"], key="EXP-2026-0139-CAROL", description="Laptop")
    response = client_for(people["alice"]).get(URL, {"q": q})
    assert response.status_code == 200
    assert rows(response) == [str(made[name].instance_id) for name in expected]


@pytest.mark.parametrize(
    ("q", "found"),
    [
        ("' OR 1=1 --", False),
        ('"; DROP TABLE orchestration_workflowinstance; --', False),
        ("%", False),
        ("_", True),  # in the workflow's name, expense_approval
        ("\\", False),
        ("%_%\\%", False),
        ("Ünïcødé ✓ \u202ertl", False),
        ("<script>alert(1)</script>", False),
        ("x" * 200, False),
        ("🚕", True),
    ],
)
def test_odd_searches_give_normal_results(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest], q: str, found: bool
) -> None:
    request = alices(description="Taxi 🚕")
    response = client_for(people["alice"]).get(URL, {"q": q})
    assert response.status_code == 200
    assert rows(response) == ([str(request.instance_id)] if found else [])
    assert "<script>alert(1)</script>" not in response.content.decode()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"q": "x" * 201}, "Search for at most 200 characters."),
        ({"q": "y" * 100_000}, "Search for at most 200 characters."),
        ({"q": "taxi\x00"}, "The search cannot contain NUL characters."),
        ({"state": "exploded"}, "Select a valid choice."),
        ({"state": "running'; --"}, "Select a valid choice."),
    ],
)
def test_bad_filters_answer_400_with_the_reason(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest], params: dict, message: str
) -> None:
    alices()
    response = client_for(people["alice"]).get(URL, params)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    assert rows(response) == []


@pytest.mark.parametrize("cursor", ["", "garbage", "1_2", "99999999999999999999_zz", "\x00", "-1_"])
def test_a_broken_cursor_gives_the_first_page(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest], cursor: str
) -> None:
    request = alices()
    client = client_for(people["alice"])
    for name in ("after", "before"):
        response = client.get(URL, {name: cursor})
        assert response.status_code in (200, 400)
        if response.status_code == 200:
            assert rows(response) == [str(request.instance_id)]


def test_pages_go_back_and_forth_by_cursor(people: dict[str, Any]) -> None:
    alice = people["alice"]
    now = timezone.now()
    made = [
        WorkflowInstance.objects.create(
            workflow="expense_approval",
            version=1,
            business_key=f"K{i:02}",
            started_by=alice,
            created_at=now - timedelta(minutes=i),
            updated_at=now,
        )
        for i in range(PAGE_SIZE + 5)
    ]
    ids = [str(i.pk) for i in made]  # newest first
    client = client_for(alice)
    first = client.get(URL)
    assert rows(first) == ids[:PAGE_SIZE]
    older = re.search(r'href="([^"]+)" rel="next"', first.content.decode()).group(1)
    second = client.get(older.replace("&amp;", "&"))
    assert rows(second) == ids[PAGE_SIZE:]
    assert 'rel="next"' not in second.content.decode()
    newer = re.search(r'href="([^"]+)" rel="prev"', second.content.decode()).group(1)
    assert rows(client.get(newer.replace("&amp;", "&"))) == ids[:PAGE_SIZE]


def test_filters_survive_paging(people: dict[str, Any]) -> None:
    alice = people["alice"]
    now = timezone.now()
    for i in range(PAGE_SIZE + 1):
        WorkflowInstance.objects.create(
            workflow="expense_approval",
            version=1,
            business_key=f"KEEP-{i}",
            started_by=alice,
            created_at=now - timedelta(minutes=i),
            updated_at=now,
        )
    page = client_for(alice).get(URL, {"q": "keep", "state": "pending"}).content.decode()
    older = re.search(r'href="([^"]+)" rel="next"', page).group(1)
    assert "q=keep" in older and "state=pending" in older


def test_revise_and_resubmit_tasks_come_first(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest]
) -> None:
    request = alices(description="Hotel")
    services.approval_request_changes(
        request_id=request.pk, user=people["bob"], comment="Add the receipt"
    )
    html = client_for(people["alice"]).get(URL).content.decode()
    assert "Revise and resubmit" in html
    assert html.index(f'data-revise="{request.pk}"') < html.index('class="requests my-requests"')
    assert "Add the receipt" in html
    # The row itself says the request waits for alice.
    assert f'href="/inbox/{request.pk}/revise/">revise and resubmit</a>' in html
    assert "with group managers" not in html


def page_queries(client: Client, **params: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(URL, params)
    assert response.status_code == 200
    return len(queries)


def test_the_query_count_does_not_grow_with_the_requests(
    people: dict[str, Any], alices: Callable[..., ApprovalRequest]
) -> None:
    client = client_for(people["alice"])
    for _ in range(2):
        alices()
    # One request sent back, so the revise list (and its "who asked") is on the page.
    services.approval_request_changes(
        request_id=alices().pk, user=people["bob"], comment="Add the receipt"
    )
    few = page_queries(client)
    searched = page_queries(client, q="taxi", state="running")
    for i in range(17):
        request = alices(key=f"MORE-{i}")
        request.assignee_users.add(people["dave"])
    services.approval_request_changes(
        request_id=alices().pk, user=people["bob"], comment="And this one"
    )
    assert len(rows(client.get(URL))) == 21
    many = page_queries(client)
    assert many == few
    assert page_queries(client, q="taxi", state="running") == searched
    # session, user, the navigation's count (2), revise list (+ who asked), the page, its
    # steps, its requests, their assignees
    assert many <= 10, many
