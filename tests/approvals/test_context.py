"""Issue 12, item 1 — context: who may open an instance's status page because of its approval
requests (read-only, masked), what the request page shows of the instance (every decision in
plain words, ``show=`` values as text), and the requester's mails (each step's decision as that
step's, the instance's end once, from the engine's lifecycle announcement)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from approvals import context, policy, services
from approvals.definitions import Escalation, approval
from approvals.models import ApprovalRequest, Delegation, PastAssignee
from approvals.templatetags.inbox import field_value
from integrations import mail
from integrations.models import OutboundEmail
from orchestration import engine, sealing
from orchestration.definitions import Workflow, registry
from orchestration.errors import NotFound
from orchestration.models import StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db


# -- helpers ----------------------------------------------------------------------------------


def web(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def run_scheduled(instance: WorkflowInstance) -> None:
    """Play the worker in-process: run every scheduled step until none is left."""
    for _ in range(20):
        due = list(StepRun.objects.filter(instance=instance, state="scheduled"))
        if not due:
            return
        for step in due:
            engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


def request_of(instance: Any, step: str) -> ApprovalRequest:
    return ApprovalRequest.objects.filter(instance_id=getattr(instance, "pk", instance)).get(
        step_name=step
    )


@pytest.fixture
def otto(django_user_model: Any) -> Any:
    """An operator: staff with orchestration.operate_instance."""
    user = django_user_model.objects.create_user("otto", email="otto@example.com", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="operate_instance"))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def big_expense(people: dict[str, Any], expense: Any) -> ApprovalRequest:
    """A 5,000 EUR expense: bob approved it for the managers ("fine by me"); it waits for
    finance (carol). Returns the finance request."""
    manager = expense(5000, "Conference in Lisbon")
    services.approval_decide(
        request_id=manager.pk, user=people["bob"], outcome="approve", comment="fine by me"
    )
    return request_of(manager.instance_id, "finance_approval")


def reassign(request: ApprovalRequest, operator: Any, users: list[str], groups: list[str]) -> None:
    services.approval_reassign(
        request_id=request.pk, operator=operator, users=users, groups=groups, reason="holiday"
    )


OPERATOR_BUTTONS = re.compile(r'action="/instances/[^"]+/(actions|steps)/')


# -- who may read the instance ------------------------------------------------------------------


def test_assignees_past_and_present_read_the_status_page_read_only(
    people: dict[str, Any], big_expense: ApprovalRequest, otto: Any
) -> None:
    """carol (finance, current), bob (decided the manager step), and — after finance is
    reassigned to dave — carol as a past assignee: all read the status page, with no
    operator button; eve (no part) gets a 404."""
    instance_url = f"/instances/{big_expense.instance_id}/"
    for name in ("carol", "bob"):
        page = web(people[name]).get(instance_url)
        assert page.status_code == 200, name
        html = page.content.decode()
        assert "Read-only" in html
        assert not OPERATOR_BUTTONS.search(html), name
        assert page.context["read_only"] is True and page.context["operations"] == []
    assert web(people["eve"]).get(instance_url).status_code == 404

    reassign(big_expense, otto, ["dave"], [])
    assert PastAssignee.objects.filter(request=big_expense, user=people["carol"]).exists()
    assert web(people["carol"]).get(instance_url).status_code == 200
    # ... and the request page, whose "Open the instance" link leads there.
    page = web(people["carol"]).get(f"/inbox/{big_expense.pk}/")
    assert page.status_code == 200
    assert f'href="{instance_url}"' in page.content.decode()
    # The operator still has the buttons; the starter keeps the page as before.
    assert OPERATOR_BUTTONS.search(web(otto).get(instance_url).content.decode())
    assert web(people["alice"]).get(instance_url).context["read_only"] is False


def test_a_delegate_reads_while_the_delegation_lasts(
    people: dict[str, Any], big_expense: ApprovalRequest
) -> None:
    now = timezone.now()
    delegation = Delegation.objects.create(
        user=people["carol"],
        delegate=people["eve"],
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(hours=1),
    )
    url = f"/instances/{big_expense.instance_id}/"
    assert web(people["eve"]).get(url).status_code == 200
    delegation.ends_at = now - timedelta(minutes=1)
    delegation.save(update_fields=["ends_at"])
    assert web(people["eve"]).get(url).status_code == 404


def test_readers_get_the_api_detail_and_history_but_may_not_act(
    people: dict[str, Any], big_expense: ApprovalRequest
) -> None:
    carol = api(people["carol"])
    instance = big_expense.instance_id
    assert carol.get(f"/api/v1/instances/{instance}/").status_code == 200
    history = carol.get(f"/api/v1/instances/{instance}/history/")
    assert history.status_code == 200
    assert any(e["type"] == "approval_decided" for e in history.json()["results"])
    # Reading is all: acting answers 403 (seen, not theirs), and changes nothing.
    before = WorkflowInstance.objects.get(pk=instance).last_seq
    refused = carol.post(f"/api/v1/instances/{instance}/cancel/", {}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert web(people["carol"]).post(f"/instances/{instance}/actions/cancel/").status_code == 403
    assert WorkflowInstance.objects.get(pk=instance).last_seq == before
    # Not listed: the list stays what one started (or everything, for operators).
    assert api(people["carol"]).get("/api/v1/instances/").json()["results"] == []
    # The approvals API links the instance for them now.
    detail = carol.get(f"/api/v1/approvals/{big_expense.pk}/").json()
    assert detail["links"]["instance"] == f"/api/v1/instances/{instance}/"
    # eve has no part: 404 everywhere.
    eve = api(people["eve"])
    assert eve.get(f"/api/v1/instances/{instance}/").status_code == 404
    assert eve.get(f"/api/v1/instances/{instance}/history/").status_code == 404


SEALED = "t_ctx_sealed"


@pytest.fixture
def sealed_flow(people: dict[str, Any]) -> Any:
    wf = Workflow(SEALED, sensitive=["input.iban"])
    approval(
        wf,
        "check",
        users=["carol"],
        title="Pay {input[name]}",
        show=[("Name", "input.name"), ("IBAN", "input.iban")],
    )
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)


def test_sealed_fields_stay_masked_for_readers_whatever_their_permissions(
    people: dict[str, Any], sealed_flow: Any
) -> None:
    """carol may see sensitive fields (orchestration.view_sensitive) where she owns the
    instance; as a reader of alice's instance she sees the mask on the page, the downloads
    and the API."""
    iban = "DE89370400440532013000"
    carol = people["carol"]
    carol.user_permissions.add(Permission.objects.get(codename="view_sensitive"))
    carol = type(carol).objects.get(pk=carol.pk)
    instance, _ = engine.instance_start(
        workflow=SEALED, input={"name": "Ada", "iban": iban}, started_by=people["alice"]
    )
    assert request_of(instance, "check")
    for path in ("", "live/", "history.json", "history.csv"):
        response = web(carol).get(f"/instances/{instance.pk}/{path}")
        assert response.status_code == 200, path
        body = (
            b"".join(response.streaming_content)
            if getattr(response, "streaming", False)
            else response.content
        ).decode()
        assert iban not in body, path
    page = web(carol).get(f"/instances/{instance.pk}/").content.decode()
    assert sealing.MASK in page
    detail = api(carol).get(f"/api/v1/instances/{instance.pk}/").json()
    assert detail["input"]["iban"] == sealing.MASK
    # The control: an operator who may see sensitive fields sees it opened.
    opener = type(carol).objects.create_user("opener", is_staff=True)
    opener.user_permissions.add(Permission.objects.get(codename="view_sensitive"))
    opener = type(carol).objects.get(pk=opener.pk)
    assert api(opener).get(f"/api/v1/instances/{instance.pk}/").json()["input"]["iban"] == iban


def test_the_policy_answers_view_instance(
    people: dict[str, Any], big_expense: ApprovalRequest, otto: Any
) -> None:
    instance = big_expense.instance
    for name in ("alice", "bob", "carol"):
        grant = policy.authorize(
            policy.Act.VIEW_INSTANCE, user=people[name], request=None, instance=instance
        )
        assert grant.act == policy.Act.VIEW_INSTANCE
    assert policy.authorize(policy.Act.VIEW_INSTANCE, user=otto, request=None, instance=instance)
    with pytest.raises(NotFound):
        policy.authorize(
            policy.Act.VIEW_INSTANCE, user=people["eve"], request=None, instance=instance
        )
    people["carol"].is_active = False
    with pytest.raises(Exception, match="deactivated"):
        policy.authorize(
            policy.Act.VIEW_INSTANCE, user=people["carol"], request=None, instance=instance
        )
    assert context.instance_reader(people["carol"], instance) is False


# -- the request page: decisions in plain words, values as text ----------------------------------


def test_the_finance_page_shows_the_managers_decision_and_the_fields_as_text(
    people: dict[str, Any], big_expense: ApprovalRequest
) -> None:
    page = web(people["carol"]).get(f"/inbox/{big_expense.pk}/")
    html = page.content.decode()
    assert "No decisions yet" not in html
    assert "#}" not in html and "{%" not in html  # no template syntax leaks into the page
    [line] = page.context["decision_lines"]
    assert (line.step, line.who, line.verb, line.channel, line.comment) == (
        "Manager approval",
        "bob",
        "approved",
        "web",
        "fine by me",
    )
    assert line.this_request is False
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))
    stamp = timezone.localtime(line.at).strftime("%-d %b %H:%M")
    said = f"bob approved on {stamp} (web, group managers): ‘fine by me’"
    assert f"Manager approval (another step or round): {said}" in text
    # show= values as text: Manager decision ["bob"] reads "bob".
    assert "<dt>Manager decision</dt><dd>bob</dd>" in html
    assert '["bob"]' not in html and "[&quot;bob&quot;]" not in html


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (["bob"], "bob"),
        (["bob", "dave"], "bob, dave"),
        ({"city": "Lisbon", "nights": 2}, "city: Lisbon; nights: 2"),
        ([{"a": 1}, [1, 2]], "(a: 1), (1, 2)"),
        ([], "—"),
        ({}, "—"),
        (None, "—"),
        (True, "yes"),
        (86.4, "86.4"),
        ("<b>", "<b>"),  # escaped by the template, not here
    ],
)
def test_field_values_read_as_text(value: Any, shown: str) -> None:
    assert field_value(value) == shown


def test_delegated_and_on_behalf_decisions_say_for_whom(
    people: dict[str, Any], expense: Any, otto: Any, settings: Any
) -> None:
    settings.SIGNOFF_DECIDE_ON_BEHALF = True
    manager = expense(5000)
    services.approval_decide_on_behalf(
        request_id=manager.pk,
        operator=otto,
        assignee=people["bob"],
        outcome="approve",
        comment="",
        reason="by phone",
    )
    finance = request_of(manager.instance_id, "finance_approval")
    [line] = context.decision_lines(finance)
    assert (line.who, line.channel, line.reason) == ("otto for bob", "admin", "by phone")


@pytest.fixture
def panel_flow(people: dict[str, Any], django_user_model: Any) -> Any:
    """A panel (named by the input) who must all approve (policy all), then carol."""
    panel = [f"panel{n}" for n in range(20)]
    for name in panel:
        django_user_model.objects.create_user(name, email=f"{name}@example.com")
    wf = Workflow("t_ctx_panel")
    approval(
        wf,
        "panel",
        assignees=lambda ctx: {"users": ctx.input["panel"]},
        policy="all",
        title="Panel",
    )
    approval(wf, "final", after=["panel"], users=["carol"], title="Final")
    registry.register(wf)
    yield wf, panel
    registry.unregister(wf.name, wf.version)


def test_request_page_queries_stay_constant_as_decisions_and_comments_grow(
    people: dict[str, Any], panel_flow: Any, django_user_model: Any
) -> None:
    """carol's page of the final step: after 1 decision and no comment, then after 20
    decisions and 60 comments (on both steps) — the same number of queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from approvals.comments import comment_post

    wf, panel = panel_flow
    users = {u.username: u for u in django_user_model.objects.filter(username__in=panel)}

    def final_page(deciders: int, comments: int) -> int:
        instance, _ = engine.instance_start(
            workflow=wf.name, input={"panel": panel[:deciders]}, started_by=people["alice"]
        )
        first = request_of(instance, "panel")
        for name in panel[:deciders]:
            services.approval_decide(request_id=first.pk, user=users[name], outcome="approve")
        final = request_of(instance, "final")
        for n in range(comments):
            comment_post(request_id=first.pk, user=people["alice"], body=f"p{n}")
            comment_post(request_id=final.pk, user=people["alice"], body=f"q{n}")
            comment_post(request_id=final.pk, user=people["carol"], body=f"a{n}")
        return final.pk

    client = web(people["carol"])
    small_pk = final_page(1, 1)  # a thread at all: its files are one more query
    client.get(f"/inbox/{small_pk}/")  # warm the caches (templates, content types)
    with CaptureQueriesContext(connection) as small:
        small_page = client.get(f"/inbox/{small_pk}/")
    small_count = len(small)  # now: the next request resets the connection's query log
    assert len(small_page.context["decision_lines"]) == 1
    large_pk = final_page(20, 20)
    with CaptureQueriesContext(connection) as large:
        large_page = client.get(f"/inbox/{large_pk}/")
    assert len(large_page.context["decision_lines"]) == 20
    assert len(large_page.context["thread"]) == 40
    assert len(large) == small_count, [q["sql"][:80] for q in large.captured_queries]


# -- the requester's mails ----------------------------------------------------------------------


@pytest.fixture
def queued(monkeypatch: Any, rung: list) -> list[int]:
    """Outbox rows queued after commit (ids), instead of delivery tasks (a live worker must
    not take them first); doorbells go to ``rung``."""
    ids: list[int] = []
    monkeypatch.setattr("integrations.mail._enqueue", ids.append)
    return ids


def requester_mail(kind: str) -> list[OutboundEmail]:
    return list(
        OutboundEmail.objects.filter(kind=kind, to=["alice@example.com"]).order_by("created_at")
    )


def test_the_requester_hears_each_steps_decision_and_the_end_once(
    people: dict[str, Any],
    expense: Any,
    queued: list[int],
    smtp_server: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """A 5,000 EUR expense: the manager's approval is told as the manager step's decision
    ("Manager approval: approved by bob"), not as the request's; finance's likewise; then the
    end — after the last task — once, from the lifecycle announcement."""
    manager = expense(5000)
    with django_capture_on_commit_callbacks(execute=True):
        services.approval_decide(
            request_id=manager.pk, user=people["bob"], outcome="approve", comment="fine by me"
        )
    [first] = requester_mail("approval_decided")
    assert first.subject.startswith("Manager approval: approved by bob — Expense: 5000 EUR")
    assert "Your request was approved" not in first.body_text
    assert "one more mail when the whole request has finished" in first.body_text
    assert requester_mail("approval_finished") == []

    finance = request_of(manager.instance_id, "finance_approval")
    with django_capture_on_commit_callbacks(execute=True):
        services.approval_decide(request_id=finance.pk, user=people["carol"], outcome="approve")
    decided = requester_mail("approval_decided")
    assert [m.subject.split(" — ")[0] for m in decided] == [
        "Manager approval: approved by bob",
        "Finance approval: approved by carol",
    ]
    assert requester_mail("approval_finished") == []  # pay and book still run

    instance = WorkflowInstance.objects.get(pk=manager.instance_id)
    with django_capture_on_commit_callbacks(execute=True):
        run_scheduled(instance)
    assert WorkflowInstance.objects.get(pk=instance.pk).state == "succeeded"
    [end] = requester_mail("approval_finished")
    assert end.subject.startswith("Your request succeeded: Expense: 5000 EUR")
    assert end.message_id.startswith(f"<signoff.finished.{instance.pk}.")

    # Announced again (a redelivered announcement): nothing new.
    from orchestration.journal import announce_events
    from orchestration.models import Event

    announce_events(list(Event.objects.filter(instance=instance, type="instance_succeeded")))
    assert len(requester_mail("approval_finished")) == 1

    # Over SMTP: three Signoff mails for alice, distinct Message-IDs, no action link in any.
    mails = requester_mail("approval_decided") + requester_mail("approval_finished")
    mail.emails_deliver(email_ids=[m.pk for m in mails])
    # Nothing else writes to her: two step decisions, one end.
    to_alice = [m for m in smtp_server.messages if m["To"] == "alice@example.com"]
    assert len(to_alice) == 3
    assert all(m["X-Signoff-Kind"] is not None for m in to_alice)
    assert len({m["Message-ID"] for m in to_alice}) == 3
    for message in to_alice:
        assert "/a/" not in message.as_string()


def test_a_rejection_tells_the_step_and_the_failure(
    people: dict[str, Any],
    expense: Any,
    queued: list[int],
    django_capture_on_commit_callbacks: Any,
) -> None:
    manager = expense(120)
    with django_capture_on_commit_callbacks(execute=True):
        services.approval_decide(
            request_id=manager.pk, user=people["bob"], outcome="reject", comment="not a trip"
        )
    [decided] = requester_mail("approval_decided")
    assert decided.subject.startswith("Manager approval: rejected by bob")
    [end] = requester_mail("approval_finished")
    assert end.subject.startswith("Your request failed")
    assert "rejected by bob: not a trip" in end.body_text


def test_a_cancelled_instance_tells_the_requester_once(
    people: dict[str, Any],
    expense: Any,
    otto: Any,
    queued: list[int],
    django_capture_on_commit_callbacks: Any,
) -> None:
    manager = expense(120)
    with django_capture_on_commit_callbacks(execute=True):
        engine.instance_cancel(instance_id=manager.instance_id, actor="user:otto", reason="dup")
    assert requester_mail("approval_decided") == []
    [end] = requester_mail("approval_finished")
    assert end.subject.startswith("Your request was cancelled")
    assert "  > dup" in end.body_text


def test_an_instance_without_approvals_mails_nobody(
    people: dict[str, Any], queued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        instance, _ = engine.instance_start(workflow="t_sequence", started_by=people["alice"])
    with django_capture_on_commit_callbacks(execute=True):
        run_scheduled(instance)
    assert WorkflowInstance.objects.get(pk=instance.pk).state == "succeeded"
    assert not OutboundEmail.objects.exists()


def test_past_assignees_are_recorded_by_replacing_escalations(
    people: dict[str, Any], django_user_model: Any
) -> None:
    """An escalation level with replace takes the request off the managers: bob and dave
    become past assignees (members one by one) and keep reading it."""
    wf = Workflow("t_ctx_replace")
    approval(
        wf,
        "ask",
        groups=["managers"],
        due=timedelta(days=3),
        escalate=[Escalation(after=timedelta(days=1), users=["carol"], replace=True)],
        title="Ask",
    )
    registry.register(wf)
    try:
        instance, _ = engine.instance_start(workflow=wf.name, started_by=people["alice"])
        request = request_of(instance, "ask")
        from approvals import sweepers

        assert sweepers.sweep_escalations(now=timezone.now() + timedelta(days=1, minutes=1)) == 1
        past = set(
            PastAssignee.objects.filter(request=request).values_list("user__username", "cause")
        )
        assert past == {("bob", "escalated"), ("dave", "escalated")}
        assert web(people["dave"]).get(f"/instances/{instance.pk}/").status_code == 200
        # A newcomer to the group was never asked.
        Group.objects.get(name="managers").user_set.add(people["eve"])
        assert web(people["eve"]).get(f"/instances/{instance.pk}/").status_code == 404
    finally:
        registry.unregister(wf.name, wf.version)


def test_the_end_of_a_workflow_without_approval_steps_costs_the_end_notice_no_query(
    people: dict[str, Any],
    expense: Any,
    queued: list[int],
    django_assert_num_queries: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """The worker announces every instance's end; a workflow that declares no approval step
    cannot have a request, so approvals' receiver answers from the registry. One that does
    (or an event whose instance is not at hand) still asks the database."""
    from approvals.lifecycle import on_event_committed
    from orchestration.models import Event

    with django_capture_on_commit_callbacks(execute=True):
        instance, _ = engine.instance_start(workflow="t_sequence", started_by=people["alice"])
    with django_capture_on_commit_callbacks(execute=True):
        run_scheduled(instance)
    end = Event.objects.select_related("instance").get(instance=instance, type="instance_succeeded")
    with django_assert_num_queries(0):
        on_event_committed(sender=Event, event=end)
    bare = Event.objects.get(pk=end.pk)
    with django_assert_num_queries(2):  # not at hand: asked
        on_event_committed(sender=Event, event=bare)

    manager = expense(120)
    with django_capture_on_commit_callbacks(execute=True):
        engine.instance_cancel(instance_id=manager.instance_id, actor="user:otto", reason="dup")
    cancelled = Event.objects.select_related("instance").get(
        instance_id=manager.instance_id, type="instance_cancelled"
    )
    OutboundEmail.objects.all().delete()
    on_event_committed(sender=Event, event=cancelled)
    assert requester_mail("approval_finished") != []
