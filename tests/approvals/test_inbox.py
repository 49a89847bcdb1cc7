"""The HTML inbox: who sees what, filters, the decision forms and their refusals, bulk
decisions, out-of-office, and query counts that do not grow with the data."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from approvals import services
from approvals.definitions import approval
from approvals.models import ApprovalRequest, Decision, Delegation
from orchestration.definitions import Workflow, registry
from orchestration.models import Event, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db

AssignedGroup = ApprovalRequest.assignee_groups.through
AssignedUser = ApprovalRequest.assignee_users.through

# Queries for one inbox page whatever the number of rows: session, user, the user's delegators,
# the page, the page's assignee names (groups and users in one), the capped pending count (on
# the first pending page the count's walk also picks the page's rows), and the user's requests
# sent back for changes ("Revise and resubmit"; one more, who asked, when there are).
LIST_QUERIES = 7


def login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def listed(response: Any) -> list[int]:
    """The request ids on an inbox page, in order."""
    return [int(pk) for pk in re.findall(r'data-request="(\d+)"', response.content.decode())]


def row_html(response: Any, pk: int) -> str:
    html = response.content.decode()
    match = re.search(rf'<li class="([^"]*)" data-request="{pk}"[^>]*>(.*?)</li>', html, re.S)
    assert match, f"request {pk} is not listed"
    return match.group(1) + match.group(2)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def state_of(request: ApprovalRequest) -> str:
    return ApprovalRequest.objects.get(pk=request.pk).state


def history_length(request: ApprovalRequest) -> int:
    return Event.objects.filter(instance_id=request.instance_id).count()


def bulk_requests(
    count: int, *, group: Group | None = None, user: Any = None, offset: int = 0
) -> list[ApprovalRequest]:
    """``count`` pending requests in three statements plus one for assignees."""
    now = timezone.now()
    instance = WorkflowInstance.objects.create(
        workflow="expense_approval",
        version=1,
        input={"bulk": True},
        created_at=now,
        updated_at=now,
    )
    steps = StepRun.objects.bulk_create(
        StepRun(instance=instance, name=f"ask_{offset + i}", kind="approval", position=i)
        for i in range(count)
    )
    requests = [
        ApprovalRequest(
            step_run=step,
            instance=instance,
            workflow="expense_approval",
            business_key=f"BULK-{offset + i:05}",
            step_name=step.name,
            title=f"Bulk request {offset + i}",
            fields=[{"label": "Amount", "value": offset + i, "column": "amount"}],
            created_at=now - timedelta(seconds=offset + i),
            due_at=now + timedelta(hours=offset + i + 1),
        )
        for i, step in enumerate(steps)
    ]
    for request in requests:
        request.refresh_search(requester_name="")
    requests = ApprovalRequest.objects.bulk_create(requests)
    if group is not None:
        AssignedGroup.objects.bulk_create(
            AssignedGroup(approvalrequest_id=r.pk, group_id=group.pk) for r in requests
        )
    if user is not None:
        AssignedUser.objects.bulk_create(
            AssignedUser(approvalrequest_id=r.pk, user_id=user.pk) for r in requests
        )
    return requests


@pytest.fixture
def purchase_workflow() -> str:
    """A second workflow with an approval step for ``managers``."""
    wf = Workflow("t_inbox_purchase", description="a purchase order")
    approval(wf, "sign", groups=["managers"], title="Purchase {input[item]}", show=["input.item"])
    registry.register(wf)
    yield wf.name
    registry.unregister(wf.name, wf.version)


# -- access -------------------------------------------------------------------------------------


def test_inbox_pages_require_login(client: Client, expense: Any) -> None:
    request = expense()
    for url in ["/inbox/", f"/inbox/{request.pk}/", "/inbox/delegation/"]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={url}"
    response = client.post(f"/inbox/{request.pk}/decide/", {"outcome": "approve"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert state_of(request) == "pending"


def test_login_page_is_styled_and_logs_in_to_the_inbox(client: Client, people: Any) -> None:
    page = client.get("/accounts/login/?next=/inbox/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/approvals/signoff.css" in html
    assert 'name="csrfmiddlewaretoken"' in html
    response = client.post(
        "/accounts/login/",
        {"username": "bob", "password": "signoff-demo", "next": "/inbox/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/inbox/"
    wrong = Client().post("/accounts/login/", {"username": "bob", "password": "nope"})
    assert wrong.status_code == 200
    assert "enter a correct username and password" in wrong.content.decode()


def test_stylesheet_is_served_locally(client: Client) -> None:
    from django.contrib.staticfiles import finders

    path = finders.find("approvals/signoff.css")
    assert path is not None
    assert "@media" in open(path, encoding="utf-8").read()


def test_list_shows_only_what_the_user_may_decide(
    client: Client, people: Any, expense: Any
) -> None:
    taxi = expense(description="Taxi")
    laptop = expense(amount=1800, description="Laptop")
    # Direct assignment outside the user's groups is visible too.
    mine = bulk_requests(1, user=people["eve"])[0]

    assert listed(login(client, people["bob"]).get("/inbox/")) == [laptop.pk, taxi.pk]
    assert listed(login(Client(), people["dave"]).get("/inbox/")) == [laptop.pk, taxi.pk]
    # carol (finance) has nothing until a manager approves; alice cannot decide her own.
    assert listed(login(Client(), people["carol"]).get("/inbox/")) == []
    assert listed(login(Client(), people["alice"]).get("/inbox/")) == []
    assert listed(login(Client(), people["eve"]).get("/inbox/")) == [mine.pk]

    services.approval_decide(request_id=laptop.pk, user=people["bob"], outcome="approve")
    finance = ApprovalRequest.objects.get(instance=laptop.instance, step_name="finance_approval")
    assert listed(login(Client(), people["carol"]).get("/inbox/")) == [finance.pk]
    assert listed(client.get("/inbox/")) == [taxi.pk]


def test_navigation_shows_the_pending_count(client: Client, people: Any, expense: Any) -> None:
    expense()
    expense()
    html = login(client, people["bob"]).get("/inbox/delegation/").content.decode()
    assert re.search(r'<span class="badge"[^>]*>2</span>', html)
    html = login(Client(), people["eve"]).get("/inbox/delegation/").content.decode()
    assert 'class="badge"' not in html


def test_filters_by_workflow_state_and_business_key(
    client: Client, people: Any, expense: Any, purchase_workflow: str
) -> None:
    from orchestration import engine

    early = expense(business_key="EXP-2026-001")
    late = expense(business_key="EXP-2026-002")
    other = expense(business_key="TRIP-7")
    instance, _ = engine.instance_start(
        workflow=purchase_workflow, input={"item": "chairs"}, business_key="PO-1"
    )
    purchase = ApprovalRequest.objects.get(instance=instance)
    login(client, people["bob"])

    assert listed(client.get("/inbox/")) == [purchase.pk, other.pk, late.pk, early.pk]
    assert listed(client.get("/inbox/", {"workflow": purchase_workflow})) == [purchase.pk]
    assert listed(client.get("/inbox/", {"workflow": "expense_approval"})) == [
        other.pk,
        late.pk,
        early.pk,
    ]
    assert listed(client.get("/inbox/", {"q": "EXP-2026"})) == [late.pk, early.pk]
    assert listed(client.get("/inbox/", {"q": "EXP-2026-001"})) == [early.pk]
    assert listed(client.get("/inbox/", {"q": "nothing"})) == []
    assert "Nothing matches these filters" in client.get("/inbox/?q=zzz").content.decode()

    services.approval_decide(request_id=late.pk, user=people["bob"], outcome="approve")
    assert listed(client.get("/inbox/")) == [purchase.pk, other.pk, early.pk]
    assert listed(client.get("/inbox/", {"state": "decided"})) == [late.pk]
    assert listed(client.get("/inbox/", {"state": "all", "q": "EXP-2026"})) == [late.pk, early.pk]
    # dave decided nothing; the approved request no longer waits for him.
    dave = login(Client(), people["dave"])
    assert listed(dave.get("/inbox/", {"state": "decided"})) == []
    assert late.pk not in listed(dave.get("/inbox/"))
    # Unknown filter values fall back to the defaults instead of failing.
    response = client.get("/inbox/", {"state": "bogus", "sort": "x", "workflow": "nope"})
    assert response.status_code == 200
    assert listed(response) == [purchase.pk, other.pk, early.pk]
    # A search PostgreSQL cannot compare (NUL) is refused with the reason, never a 500.
    refused = client.get("/inbox/", {"q": "a\x00b"})
    assert refused.status_code == 400
    assert "search cannot contain NUL characters" in refused.content.decode()


def test_overdue_requests_are_marked_and_due_soonest_sorts_them_first(
    client: Client, people: Any, expense: Any
) -> None:
    overdue = expense(description="Hotel")
    fresh = expense(description="Train")
    no_due = bulk_requests(1, group=Group.objects.get(name="managers"))[0]
    ApprovalRequest.objects.filter(pk=no_due.pk).update(due_at=None)
    ApprovalRequest.objects.filter(pk=overdue.pk).update(due_at=timezone.now() - timedelta(hours=3))
    response = login(client, people["bob"]).get("/inbox/")
    assert "is-overdue" in row_html(response, overdue.pk)
    assert "Overdue" in row_html(response, overdue.pk)
    assert "Overdue" not in row_html(response, fresh.pk)
    assert "due in " in row_html(response, fresh.pk)
    assert listed(client.get("/inbox/", {"sort": "due"})) == [overdue.pk, fresh.pk, no_due.pk]
    detail = client.get(f"/inbox/{overdue.pk}/").content.decode()
    assert "overdue by 3\xa0hours" in detail


def test_keyset_pagination_walks_every_row_once_in_both_orders(client: Client, people: Any) -> None:
    rows = bulk_requests(60, group=Group.objects.get(name="managers"))
    login(client, people["bob"])
    for sort in ("newest", "due"):
        seen: list[int] = []
        url = f"/inbox/?sort={sort}"
        pages = []
        while url:
            response = client.get(url)
            pages.append(response)
            seen += listed(response)
            url = response.context["next_url"]
        assert [len(listed(p)) for p in pages] == [25, 25, 10]
        assert seen == [r.pk for r in rows]  # created newest first, due soonest first
        previous = client.get(pages[2].context["prev_url"])
        assert listed(previous) == listed(pages[1])
        first = client.get(pages[1].context["prev_url"])
        assert listed(first) == listed(pages[0])
        assert first.context["prev_url"] is None
    assert client.get("/inbox/?after=garbage&before=1_x").status_code == 200


def test_list_query_count_stays_constant_from_10_to_1000_pending(
    client: Client, people: Any, django_assert_max_num_queries: Any
) -> None:
    managers = Group.objects.get(name="managers")
    bulk_requests(5, group=managers)
    bulk_requests(5, user=people["bob"], offset=5)
    login(client, people["bob"])
    with django_assert_max_num_queries(LIST_QUERIES):
        small = client.get("/inbox/")
    assert len(listed(small)) == 10
    with django_assert_max_num_queries(LIST_QUERIES + 1):
        small_all = client.get("/inbox/?sort=due&state=all&q=BULK-00")
    assert len(listed(small_all)) == 10

    bulk_requests(495, group=managers, offset=10)
    bulk_requests(495, user=people["bob"], offset=505)
    assert ApprovalRequest.objects.filter(state="pending").count() == 1000
    with django_assert_max_num_queries(LIST_QUERIES):
        large = client.get("/inbox/")
    assert len(listed(large)) == 25
    assert large.context["pending_count"] == "99+"
    assert re.search(r'<span class="badge"[^>]*>99\+</span>', large.content.decode())
    with django_assert_max_num_queries(LIST_QUERIES):
        second = client.get(large.context["next_url"])
    assert len(listed(second)) == 25
    assert not set(listed(second)) & set(listed(large))
    # "All I can see" has one more query: visible_to reads the delegations itself.
    with django_assert_max_num_queries(LIST_QUERIES + 1):
        large_all = client.get("/inbox/?sort=due&state=all&q=BULK-00")
    assert len(listed(large_all)) == 25


# -- one request --------------------------------------------------------------------------------


def test_detail_shows_fields_context_history_and_the_decision_form(
    client: Client, people: Any, expense: Any
) -> None:
    request = expense(amount=4321.5, description="Conference <b>tickets</b>", business_key="EX-9")
    response = login(client, people["bob"]).get(f"/inbox/{request.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<dt>Amount</dt><dd>4321.5</dd>" in html
    assert "Conference &lt;b&gt;tickets&lt;/b&gt;" in html  # escaped
    assert "<b>tickets</b>" not in html
    assert "expense_approval</code> v1" in html
    assert "EX-9" in html
    assert "approval_requested" in html and "step_succeeded" in html
    assert f'href="/instances/{request.instance_id}/"' in html
    assert "What happens next" in html and "escalates to admin" in html
    assert f'action="/inbox/{request.pk}/decide/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert "No decisions yet." in html
    # The requester sees the request but no decision form.
    own = login(Client(), people["alice"]).get(f"/inbox/{request.pk}/").content.decode()
    assert "your own request" in own
    assert "/decide/" not in own


def test_detail_lists_other_decisions(client: Client, people: Any, expense: Any) -> None:
    request = expense()
    services.approval_decide(
        request_id=request.pk, user=people["dave"], outcome="approve", comment="Fine by me"
    )
    html = login(client, people["bob"]).get(f"/inbox/{request.pk}/").content.decode()
    assert "Fine by me" in html
    assert "<strong>dave</strong>" in html
    assert "This request was approved by dave." in html
    assert "/decide/" not in html


def test_approve_through_the_form_redirects_with_a_message(
    client: Client, people: Any, expense: Any
) -> None:
    request = expense(description="Taxi")
    login(client, people["bob"])
    response = client.post(
        f"/inbox/{request.pk}/decide/", {"outcome": "approve", "comment": "Have a good trip"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/inbox/"
    assert messages_of(client.get("/inbox/")) == ["Approved “Expense: 120 EUR for Taxi”."]
    assert state_of(request) == "approved"
    decision = Decision.objects.get(request=request)
    assert (decision.decided_by, decision.comment, decision.channel) == (
        people["bob"],
        "Have a good trip",
        "web",
    )
    steps = {s.name: s.state for s in StepRun.objects.filter(instance=request.instance)}
    assert steps["manager_approval"] == "succeeded"
    assert steps["finance_approval"] == "skipped"
    assert steps["pay"] == "scheduled"


def test_reject_without_a_comment_is_refused_and_changes_nothing(
    client: Client, people: Any, expense: Any
) -> None:
    request = expense()
    events = history_length(request)
    response = login(client, people["bob"]).post(
        f"/inbox/{request.pk}/decide/", {"outcome": "reject", "comment": "   "}
    )
    assert response.status_code == 400
    assert messages_of(response) == [
        "Your decision was not recorded: a comment is required to reject."
    ]
    assert state_of(request) == "pending"
    assert not Decision.objects.exists()
    assert history_length(request) == events

    response = client.post(
        f"/inbox/{request.pk}/decide/", {"outcome": "reject", "comment": "Use the train"}
    )
    assert response.status_code == 302
    assert messages_of(client.get("/inbox/")) == [
        "Rejected “Expense: 120 EUR for Taxi to the airport”."
    ]
    assert state_of(request) == "rejected"
    assert WorkflowInstance.objects.get(pk=request.instance_id).state == "failed"


def test_invalid_outcome_is_refused(client: Client, people: Any, expense: Any) -> None:
    request = expense()
    response = login(client, people["bob"]).post(
        f"/inbox/{request.pk}/decide/", {"outcome": "maybe"}
    )
    assert response.status_code == 400
    assert state_of(request) == "pending"


def test_non_assignee_post_is_forbidden_and_changes_nothing(
    client: Client, people: Any, expense: Any
) -> None:
    request = expense()
    events = history_length(request)
    for name in ("eve", "carol"):  # no part in the request: it does not exist for them
        response = login(Client(), people[name]).post(
            f"/inbox/{request.pk}/decide/", {"outcome": "approve", "comment": "sneaky"}
        )
        assert response.status_code == 404
        assert request.title not in response.content.decode()
    # The requester may see the request (the page says why it refused) but not decide it.
    response = login(client, people["alice"]).post(
        f"/inbox/{request.pk}/decide/", {"outcome": "approve"}
    )
    assert response.status_code == 403
    assert messages_of(response) == [
        "Your decision was not recorded: you are not an assignee of this request."
    ]
    assert state_of(request) == "pending"
    assert not Decision.objects.exists()
    assert history_length(request) == events


def test_post_without_csrf_token_is_refused(people: Any, expense: Any) -> None:
    request = expense()
    client = Client(enforce_csrf_checks=True)
    login(client, people["bob"])
    decided = client.post(f"/inbox/{request.pk}/decide/", {"outcome": "approve"})
    bulk = client.post("/inbox/bulk/", {"outcome": "approve", "ids": [request.pk]})
    away = client.post(
        "/inbox/delegation/",
        {"delegate": "dave", "starts_at": "2030-01-01T00:00", "ends_at": "2030-01-02T00:00"},
    )
    assert (decided.status_code, bulk.status_code, away.status_code) == (403, 403, 403)
    assert state_of(request) == "pending"
    assert not Delegation.objects.exists()
    # With the token from the page the same post goes through.
    page = client.get(f"/inbox/{request.pk}/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    ok = client.post(
        f"/inbox/{request.pk}/decide/", {"outcome": "approve", "csrfmiddlewaretoken": token}
    )
    assert ok.status_code == 302
    assert state_of(request) == "approved"


def test_bad_ids_are_404(client: Client, people: Any, expense: Any) -> None:
    request = expense()
    login(client, people["bob"])
    missing = request.pk + 1000
    for url in [
        f"/inbox/{missing}/",
        "/inbox/abc/",
        "/inbox/-1/",
        f"/inbox/{2**70}/",
    ]:
        assert client.get(url).status_code == 404, url
    assert client.post(f"/inbox/{missing}/decide/", {"outcome": "approve"}).status_code == 404
    assert client.post(f"/inbox/{2**70}/decide/", {"outcome": "approve"}).status_code == 404
    assert client.post("/inbox/delegation/99999/end/").status_code == 404
    # Someone who is not involved cannot even see that the request exists.
    assert login(Client(), people["eve"]).get(f"/inbox/{request.pk}/").status_code == 404
    assert state_of(request) == "pending"


def test_deciding_an_already_decided_request_says_who_decided(
    client: Client, people: Any, expense: Any
) -> None:
    request = expense()
    page = login(client, people["dave"]).get(f"/inbox/{request.pk}/")
    assert "Approve" in page.content.decode()
    # bob decides while dave still looks at the page
    services.approval_decide(request_id=request.pk, user=people["bob"], outcome="approve")
    response = client.post(f"/inbox/{request.pk}/decide/", {"outcome": "reject", "comment": "no"})
    assert response.status_code == 409
    [message] = messages_of(response)
    assert re.fullmatch(
        r"Your decision was not recorded: already approved by bob at \d{4}-\d\d-\d\d .+\.",
        message,
    )
    assert state_of(request) == "approved"
    assert Decision.objects.filter(request=request).count() == 1


# -- bulk ---------------------------------------------------------------------------------------


def test_bulk_decide_reports_which_succeeded_and_which_were_refused(
    client: Client, people: Any, expense: Any
) -> None:
    first = expense(description="Taxi")
    second = expense(description="Hotel")
    taken = expense(description="Lunch")
    services.approval_decide(request_id=taken.pk, user=people["dave"], outcome="approve")
    missing = taken.pk + 1000
    login(client, people["bob"])
    response = client.post(
        "/inbox/bulk/",
        {
            "outcome": "approve",
            "ids": [first.pk, taken.pk, second.pk, missing],
            "comment": "Batch of the week",
            "next": "/inbox/?sort=due",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/inbox/?sort=due"
    success, refused = messages_of(client.get("/inbox/"))
    assert success == (
        f"Approved 2: #{first.pk} “Expense: 120 EUR for Taxi”; "
        f"#{second.pk} “Expense: 120 EUR for Hotel”."
    )
    assert refused.startswith(f"Refused 2: #{taken.pk} “Expense: 120 EUR for Lunch”: already ")
    assert "already approved by dave at" in refused
    assert f"#{missing}: approval request not found" in refused
    assert state_of(first) == state_of(second) == "approved"
    assert Decision.objects.get(request=first).comment == "Batch of the week"
    assert Decision.objects.filter(request=taken).get().decided_by == people["dave"]


def test_bulk_reject_needs_a_comment_and_refuses_what_the_user_may_not_decide(
    client: Client, people: Any, expense: Any
) -> None:
    request = expense()
    login(client, people["bob"])
    client.post("/inbox/bulk/", {"outcome": "reject", "ids": [request.pk]})
    [message] = messages_of(client.get("/inbox/"))
    assert message.endswith("a comment is required to reject.")
    assert state_of(request) == "pending"

    login(Client(), people["eve"])
    eve = login(Client(), people["eve"])
    eve.post("/inbox/bulk/", {"outcome": "approve", "ids": [request.pk]})
    [message] = messages_of(eve.get("/inbox/"))
    # eve may not see the request: neither its title nor whether or by whom it was decided
    assert message == f"Refused 1: #{request.pk}: approval request not found."
    assert state_of(request) == "pending"
    bob = login(Client(), people["bob"])
    bob.post("/inbox/bulk/", {"outcome": "approve", "ids": [request.pk]})
    assert state_of(request) == "approved"
    eve.post("/inbox/bulk/", {"outcome": "approve", "ids": [request.pk]})
    [message] = messages_of(eve.get("/inbox/"))
    assert message == f"Refused 1: #{request.pk}: approval request not found."
    assert Decision.objects.filter(request=request).count() == 1


def test_bulk_without_a_selection_or_with_an_unsafe_next_is_harmless(
    client: Client, people: Any
) -> None:
    login(client, people["bob"])
    response = client.post("/inbox/bulk/", {"outcome": "approve", "next": "https://evil.test/"})
    assert response["Location"] == "/inbox/"
    assert messages_of(client.get("/inbox/")) == ["Select at least one request."]
    response = client.post("/inbox/bulk/", {"outcome": "approve", "ids": ["x"]})
    assert messages_of(client.get("/inbox/")) == ["Invalid request id."]
    assert client.get("/inbox/bulk/").status_code == 405


# -- out of office ------------------------------------------------------------------------------


def test_out_of_office_creates_and_ends_a_delegation(
    client: Client, people: Any, expense: Any
) -> None:
    request = expense(amount=2500)
    services.approval_decide(request_id=request.pk, user=people["bob"], outcome="approve")
    finance = ApprovalRequest.objects.get(instance=request.instance, step_name="finance_approval")
    eve = login(Client(), people["eve"])
    assert listed(eve.get("/inbox/")) == []

    carol = login(client, people["carol"])
    now = timezone.localtime()
    response = carol.post(
        "/inbox/delegation/",
        {
            "delegate": "eve",
            "starts_at": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
            "ends_at": (now + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M"),
        },
    )
    assert response.status_code == 302
    delegation = Delegation.objects.get(user=people["carol"])
    assert delegation.delegate == people["eve"]
    page = carol.get("/inbox/delegation/")
    assert messages_of(page)[0].startswith("eve can decide your requests from ")
    assert "End now" in page.content.decode()
    assert "carol" in eve.get("/inbox/delegation/").content.decode()
    assert listed(eve.get("/inbox/")) == [finance.pk]

    # Someone else cannot end carol's delegation.
    assert eve.post(f"/inbox/delegation/{delegation.pk}/end/").status_code == 404
    response = carol.post(f"/inbox/delegation/{delegation.pk}/end/")
    assert response.status_code == 302
    assert messages_of(carol.get("/inbox/delegation/")) == ["Delegation ended."]
    assert Delegation.objects.get(pk=delegation.pk).ends_at <= timezone.now()
    assert listed(eve.get("/inbox/")) == []


def test_out_of_office_refusals_are_shown(client: Client, people: Any) -> None:
    login(client, people["carol"])
    response = client.post(
        "/inbox/delegation/",
        {"delegate": "carol", "starts_at": "2030-01-02T00:00", "ends_at": "2030-01-03T00:00"},
    )
    assert response.status_code == 400
    assert messages_of(response) == ["Not saved: choose someone else as your delegate."]
    response = client.post(
        "/inbox/delegation/",
        {"delegate": "nobody", "starts_at": "2030-01-02T00:00", "ends_at": "2030-01-01T00:00"},
    )
    assert response.status_code == 400
    assert "No active user named “nobody”." in response.content.decode()
    response = client.post(
        "/inbox/delegation/",
        {"delegate": "eve", "starts_at": "2030-01-02T00:00", "ends_at": "2030-01-01T00:00"},
    )
    assert messages_of(response) == ["Not saved: the end must be after the start."]
    assert not Delegation.objects.exists()


def test_first_pending_page_shares_the_count_walk_and_lists_what_paging_lists(
    client: Client, people: Any
) -> None:
    from approvals import search, selectors
    from approvals.forms import PAGE_SIZE

    managers = Group.objects.get(name="managers")
    bulk_requests(30, group=managers)
    bulk_requests(5, user=people["bob"], offset=30)
    login(client, people["bob"])
    first = client.get("/inbox/")
    generic = search.paginate(
        selectors.decidable_by(people["bob"]), search.Sort("newest"), "", "", PAGE_SIZE
    )
    assert listed(first) == [r.pk for r in generic.rows]
    assert first.context["pending_count"] == "35"
    assert first.context["prev_url"] is None
    second = client.get(first.context["next_url"])
    assert len(listed(second)) == 10
    assert not set(listed(second)) & set(listed(first))
    # Assignee names come from one query for the page, groups first.
    assert "to managers</span>" in row_html(first, listed(first)[-1])
    decided = generic.rows[0]
    ApprovalRequest.objects.filter(pk=decided.pk).update(state="approved")
    again = client.get("/inbox/")
    assert decided.pk not in listed(again)
    assert again.context["pending_count"] == "34"
