"""Send back for changes (issue 12, item 2): request changes, revise and resubmit (the next
round of the same step), withdraw, max_rounds, races, timers per round, and the engine's
input revision. Inbox, API and email links: tests/approvals/test_changes_channels.py."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from approvals import services, sweepers
from approvals.definitions import approval
from approvals.models import ApprovalRequest, Decision
from integrations.models import OutboundEmail
from orchestration import engine, saga, sealing
from orchestration.definitions import DefinitionError, Registry, Workflow
from orchestration.errors import Conflict, InvalidInput, NotAllowed, NotFound
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.workflows import REVISABLE_SCHEMA

pytestmark = pytest.mark.django_db

EXPENSE = {"amount": 120, "description": "Taxi to the airport", "category": "travel"}


def start(people: dict[str, Any], workflow: str = "t_revisable", **extra: Any) -> ApprovalRequest:
    """alice's expense, its `reserve` step run in-process: the manager's round-1 request."""
    instance, _ = engine.instance_start(
        workflow=workflow, input={**EXPENSE, **extra}, started_by=people["alice"]
    )
    reserve = StepRun.objects.get(instance=instance, name="reserve")
    assert engine.step_execute(step_run_id=reserve.pk, attempt=1) == "succeeded"
    return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")


def send_back(request: ApprovalRequest, user: Any, comment: str = "receipt missing") -> None:
    services.approval_request_changes(request_id=request.pk, user=user, comment=comment)


@pytest.fixture
def quiet(monkeypatch, rung) -> None:
    """For transactional tests: no Celery message leaves (steps, mail, webhooks), so no live
    test worker takes part."""
    from integrations import webhooks

    monkeypatch.setattr("integrations.mail._enqueue", lambda pk: None)
    monkeypatch.setattr(webhooks, "_enqueue", lambda pk, eta=None: None)


def events(instance_id: Any) -> list[str]:
    return list(
        Event.objects.filter(instance_id=instance_id).order_by("seq").values_list("type", flat=True)
    )


def snapshot(instance_id: Any) -> tuple:
    """Everything an act on the instance's requests could change."""
    return (
        WorkflowInstance.objects.filter(pk=instance_id).values_list("state", "input").get(),
        sorted(StepRun.objects.filter(instance_id=instance_id).values_list("name", "state")),
        events(instance_id),
        sorted(
            ApprovalRequest.objects.filter(instance_id=instance_id).values_list(
                "round", "state", "answered_by_id", "next_reminder_at", "next_escalation_at"
            )
        ),
        sorted(
            Decision.objects.filter(request__instance_id=instance_id).values_list(
                "outcome", "decided_by_id"
            )
        ),
        OutboundEmail.objects.count(),
    )


# -- request changes --------------------------------------------------------------------------


def test_request_changes_sends_the_round_back_and_the_step_keeps_waiting(people) -> None:
    request = start(people)
    assert request.round == 1 and request.max_rounds == 3
    assert request.revisable == ["amount", "description", "category", "iban", "receipt", "items"]
    send_back(request, people["bob"], "  The receipt is missing.  ")
    request.refresh_from_db()
    assert request.state == "changes_requested"
    assert request.resolved_at is not None
    assert request.next_reminder_at is None and request.next_escalation_at is None
    decision = Decision.objects.get(request=request)
    assert decision.outcome == "request_changes" and decision.comment == "The receipt is missing."
    assert decision.decided_by == people["bob"] and decision.via_group.name == "managers"
    step = StepRun.objects.get(pk=request.step_run_id)
    assert step.state == "waiting" and step.output is None
    assert WorkflowInstance.objects.get(pk=request.instance_id).state == "running"
    event = Event.objects.get(instance=request.instance, type="approval_changes_requested")
    assert event.step == "manager_approval" and event.actor == "user:bob"
    assert event.data == {
        "user": "bob",
        "for": None,
        "comment": "The receipt is missing.",
        "channel": "web",
        "round": 1,
    }
    assert events(request.instance_id)[-1] == "approval_changes_requested"
    # One mail, to the requester, with the revise page (no action link).
    mail = OutboundEmail.objects.get(kind="approval_changes_requested")
    assert mail.to == ["alice@example.com"]
    assert mail.subject == "Changes requested: Expense 120 for Taxi to the airport"
    assert "bob sent your request back for changes (round 1 of 3)" in mail.body_text
    assert "  > The receipt is missing." in mail.body_text
    assert f"/inbox/{request.pk}/revise/" in mail.body_text
    assert "/a/" not in mail.body_text and mail.link_ref is None


def test_request_changes_needs_a_comment_and_changes_nothing(people) -> None:
    request = start(people)
    before = snapshot(request.instance_id)
    for comment in ("", "   "):
        with pytest.raises(InvalidInput) as caught:
            send_back(request, people["bob"], comment)
        assert caught.value.code == "comment_required"
    with pytest.raises(InvalidInput):
        send_back(request, people["bob"], "x" * 5001)
    assert snapshot(request.instance_id) == before


def test_request_changes_asks_the_decision_policy(people) -> None:
    request = start(people)
    before = snapshot(request.instance_id)
    with pytest.raises(NotAllowed) as caught:
        send_back(request, people["alice"])  # her own request (she is no manager)
    assert caught.value.code == "not_assignee"
    with pytest.raises(NotFound):
        send_back(request, people["carol"])  # finance: no part in it, cannot see it
    people["dave"].is_active = False
    people["dave"].save(update_fields=["is_active"])
    with pytest.raises(NotAllowed) as caught:
        send_back(request, people["dave"])
    assert caught.value.code == "inactive"
    assert snapshot(request.instance_id) == before
    people["dave"].is_active = True
    people["dave"].save(update_fields=["is_active"])
    services.approval_decide(request_id=request.pk, user=people["bob"], outcome="approve")
    with pytest.raises(Conflict, match="already approved by bob"):
        send_back(ApprovalRequest.objects.get(pk=request.pk), people["dave"])


def test_approve_and_reject_never_take_the_third_outcome(people) -> None:
    """request_changes has its own service: the decide service (inbox, bulk, API approve,
    on behalf) refuses it."""
    request = start(people)
    with pytest.raises(InvalidInput) as caught:
        services.approval_decide(
            request_id=request.pk, user=people["bob"], outcome="request_changes", comment="x"
        )
    assert caught.value.code == "invalid_outcome"
    assert not Decision.objects.exists()


# -- resubmit -----------------------------------------------------------------------------------


def test_resubmit_starts_the_next_round_of_the_same_step(people) -> None:
    first = start(people)
    send_back(first, people["bob"])
    mails_before = OutboundEmail.objects.count()
    second = services.approval_resubmit(
        request_id=first.pk, user=people["alice"], changes={"amount": 95, "receipt": "R-17"}
    )
    first.refresh_from_db()
    assert first.state == "resubmitted"
    assert first.answered_by == people["alice"] and first.answered_at is not None
    second = ApprovalRequest.objects.get(pk=second.pk)
    assert second.pk != first.pk and second.step_run_id == first.step_run_id
    assert second.round == 2 and second.state == "pending"
    assert second.title == "Expense 95 for Taxi to the airport"
    assert {"label": "Amount", "value": 95} in second.fields
    assert list(second.assignee_groups.values_list("name", flat=True)) == ["managers"]
    assert second.requester == people["alice"]
    instance = WorkflowInstance.objects.get(pk=first.instance_id)
    assert instance.state == "running"
    assert instance.input["amount"] == 95 and instance.input["receipt"] == "R-17"
    assert StepRun.objects.get(pk=first.step_run_id).state == "waiting"
    assert events(instance.pk)[-4:] == [
        "approval_changes_requested",
        "instance_input_revised",
        "approval_resubmitted",
        "approval_requested",
    ]
    revised = Event.objects.get(instance=instance, type="instance_input_revised")
    assert revised.actor == "user:alice" and revised.step is None
    assert revised.data == {
        "changes": {
            "amount": {"from": 120, "to": 95},
            "receipt": {"from": None, "to": "R-17", "added": True},
        },
        "reason": "resubmitted for round 2 of manager_approval",
    }
    resubmitted = Event.objects.get(instance=instance, type="approval_resubmitted")
    assert resubmitted.data == {
        "user": "alice",
        "round": 2,
        "changed": ["amount", "receipt"],
        "channel": "web",
    }
    requested = Event.objects.filter(instance=instance, type="approval_requested").last()
    assert requested.data["round"] == 2 and requested.data["groups"] == ["managers"]
    # The managers are asked again (bob and dave, one mail each).
    assigned = OutboundEmail.objects.filter(request_id=second.pk, kind="approval_assigned")
    assert OutboundEmail.objects.count() == mails_before + 2
    assert sorted(m.to[0] for m in assigned) == ["bob@example.com", "dave@example.com"]


def test_resubmit_as_it_is_changes_no_input(people) -> None:
    first = start(people)
    send_back(first, people["bob"], "Which project is this for? Say it in a comment.")
    second = services.approval_resubmit(request_id=first.pk, user=people["alice"], changes={})
    assert second.round == 2
    assert "instance_input_revised" not in events(first.instance_id)
    resubmitted = Event.objects.get(instance_id=first.instance_id, type="approval_resubmitted")
    assert resubmitted.data["changed"] == []
    # The same value again is no change either.
    send_back(second, people["bob"])
    services.approval_resubmit(
        request_id=second.pk, user=people["alice"], changes={"amount": 120.0}
    )
    assert "instance_input_revised" not in events(first.instance_id)


@pytest.mark.parametrize(
    ("changes", "code", "names"),
    [
        ({"amount": -5}, "invalid_input", "amount"),
        ({"amount": "95"}, "invalid_input", "amount"),
        ({"description": ""}, "invalid_input", "description"),
        ({"category": "jewellery"}, "invalid_input", "category"),
        ({"receipt": "x" * 101}, "invalid_input", "receipt"),
        ({"requester": "bob"}, "not_revisable", "requester"),
        ({"currency": "USD"}, "not_revisable", "currency"),
        ({"amount": 95, "approved": True}, "not_revisable", "approved"),
        ({"description": "nul \x00 inside"}, "invalid_input", "NUL"),
    ],
)
def test_a_resubmit_that_breaks_the_schema_or_touches_other_fields_changes_nothing(
    people, changes, code, names
) -> None:
    request = start(people)
    send_back(request, people["bob"])
    before = snapshot(request.instance_id)
    with pytest.raises(InvalidInput) as caught:
        services.approval_resubmit(request_id=request.pk, user=people["alice"], changes=changes)
    assert caught.value.code == code
    assert names in caught.value.message
    assert snapshot(request.instance_id) == before


def test_a_resubmit_that_is_not_an_object_is_refused(people) -> None:
    request = start(people)
    send_back(request, people["bob"])
    with pytest.raises(InvalidInput):
        services.approval_resubmit(request_id=request.pk, user=people["alice"], changes=["x"])


def test_only_the_requester_resubmits_or_withdraws_and_only_a_request_sent_back(
    people, django_user_model
) -> None:
    request = start(people)
    before = snapshot(request.instance_id)
    for act in (services.approval_resubmit, services.approval_withdraw):
        with pytest.raises(Conflict) as caught:
            act(request_id=request.pk, user=people["alice"])
        assert caught.value.code == "not_changes_requested"
    send_back(request, people["bob"])
    before = snapshot(request.instance_id)
    for act in (services.approval_resubmit, services.approval_withdraw):
        with pytest.raises(NotAllowed) as caught:
            act(request_id=request.pk, user=people["bob"])  # may see it: an assignee
        assert caught.value.code == "not_requester"
        with pytest.raises(NotFound):
            act(request_id=request.pk, user=people["carol"])  # may not see it
        with pytest.raises(NotFound):
            act(request_id=10**12, user=people["alice"])
    staff = django_user_model.objects.create_user("sam", is_staff=True)
    with pytest.raises(NotAllowed) as caught:
        services.approval_resubmit(request_id=request.pk, user=staff)
    assert caught.value.code == "not_requester"
    people["alice"].is_active = False
    people["alice"].save(update_fields=["is_active"])
    with pytest.raises(NotAllowed) as caught:
        services.approval_resubmit(request_id=request.pk, user=people["alice"])
    assert caught.value.code == "inactive"
    assert snapshot(request.instance_id) == before


def test_the_starter_may_answer_for_a_request_started_on_someone_elses_behalf(
    people, settings
) -> None:
    """bob (with start_on_behalf) starts alice's expense: alice is the requester, bob the
    starter; either may revise. dave, the other manager, sends it back."""
    from django.contrib.auth.models import Permission

    people["bob"].user_permissions.add(Permission.objects.get(codename="start_on_behalf"))
    bob = get_user_model().objects.get(pk=people["bob"].pk)
    instance, _ = engine.instance_start(
        workflow="t_revisable", input={**EXPENSE, "requester": "alice"}, started_by=bob
    )
    engine.step_execute(
        step_run_id=StepRun.objects.get(instance=instance, name="reserve").pk, attempt=1
    )
    request = ApprovalRequest.objects.get(instance=instance)
    assert request.requester == people["alice"]
    send_back(request, people["dave"])
    second = services.approval_resubmit(request_id=request.pk, user=bob, changes={"amount": 99})
    assert second.round == 2


def test_two_resubmits_in_a_row_make_one_round(people) -> None:
    request = start(people)
    send_back(request, people["bob"])
    services.approval_resubmit(request_id=request.pk, user=people["alice"], changes={"amount": 90})
    before = snapshot(request.instance_id)
    with pytest.raises(Conflict, match=r"already resubmitted by alice at \d{4}-") as caught:
        services.approval_resubmit(
            request_id=request.pk, user=people["alice"], changes={"amount": 80}
        )
    assert caught.value.code == "already_resubmitted"
    with pytest.raises(Conflict) as caught:
        services.approval_withdraw(request_id=request.pk, user=people["alice"])
    assert caught.value.code == "already_resubmitted"
    assert snapshot(request.instance_id) == before
    assert ApprovalRequest.objects.filter(instance_id=request.instance_id).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_double_click_on_resubmit_makes_one_round(people, quiet) -> None:
    """Two resubmits at the same moment (a double click): one round; the other is told who
    resubmitted and when."""
    request = start(people)
    send_back(request, people["bob"])
    barrier = threading.Barrier(2)
    results: list[str] = []

    def resubmit(amount: int) -> None:
        barrier.wait()
        try:
            services.approval_resubmit(
                request_id=request.pk, user=people["alice"], changes={"amount": amount}
            )
            results.append("resubmitted")
        except Conflict as exc:
            results.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=resubmit, args=(n,)) for n in (90, 80)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[0].startswith("already resubmitted by alice at")
    assert results.count("resubmitted") == 1
    assert ApprovalRequest.objects.filter(instance_id=request.instance_id).count() == 2
    assert events(request.instance_id).count("approval_resubmitted") == 1
    assert events(request.instance_id).count("instance_input_revised") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("second", ["approve", "request_changes"])
def test_approving_and_requesting_changes_at_once_one_wins(people, quiet, second) -> None:
    """bob requests changes while dave approves (or also requests changes): one outcome; the
    other is told who was first."""
    request = start(people)
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def act(name: str, outcome: str) -> None:
        barrier.wait()
        try:
            if outcome == "request_changes":
                send_back(request, people[name], f"{name} wants changes")
            else:
                services.approval_decide(request_id=request.pk, user=people[name], outcome=outcome)
            results[name] = "done"
        except Conflict as exc:
            results[name] = str(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=act, args=("bob", "request_changes")),
        threading.Thread(target=act, args=("dave", second)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(results.values()).count("done") == 1
    loser = next(v for v in results.values() if v != "done")
    winner = next(k for k, v in results.items() if v == "done")
    assert loser.startswith(
        ("already approved by dave", f"changes were already requested by {winner}")
    )
    assert Decision.objects.filter(request=request).count() == 1
    request.refresh_from_db()
    assert request.state in ("approved", "changes_requested")


# -- withdraw -----------------------------------------------------------------------------------


def test_withdraw_cancels_the_instance_and_runs_its_compensations(people) -> None:
    request = start(people)
    send_back(request, people["bob"])
    withdrawn = services.approval_withdraw(
        request_id=request.pk, user=people["alice"], reason="bought it myself"
    )
    assert withdrawn.state == "withdrawn" and withdrawn.answered_by == people["alice"]
    instance = WorkflowInstance.objects.get(pk=request.instance_id)
    assert instance.state == "compensating"
    history = events(instance.pk)
    assert history[history.index("approval_withdrawn") :] == [
        "approval_withdrawn",
        "step_cancelled",  # manager_approval
        "step_cancelled",  # pay
        "instance_compensating",
        "step_compensating",  # reserve
    ]
    withdrawn_event = Event.objects.get(instance=instance, type="approval_withdrawn")
    assert withdrawn_event.data == {
        "user": "alice",
        "round": 1,
        "channel": "web",
        "reason": "bought it myself",
    }
    steps = {s.name: s for s in StepRun.objects.filter(instance=instance)}
    assert steps["manager_approval"].state == "cancelled"
    assert steps["reserve"].state == "compensating"
    # The compensation runs (a worker would): the reservation is released.
    reserve = steps["reserve"]
    assert (
        saga.execute_compensation(step_run_id=reserve.pk, attempt=reserve.comp_attempt)
        == "compensated"
    )
    instance.refresh_from_db()
    assert instance.state == "compensated"  # a cancelled saga ends compensated
    assert events(instance.pk)[-2:] == ["step_compensated", "instance_compensated"]
    compensating = Event.objects.get(instance=instance, type="instance_compensating")
    assert compensating.data["cause"] == "cancelled"
    assert compensating.data["reason"] == "withdrawn by alice: bought it myself"
    assert ApprovalRequest.objects.get(pk=request.pk).state == "withdrawn"
    with pytest.raises(Conflict) as caught:
        services.approval_resubmit(request_id=request.pk, user=people["alice"])
    assert caught.value.code == "already_withdrawn"


def test_withdraw_with_nothing_to_undo_cancels_the_instance(people, all_flow) -> None:
    request = start(people, workflow="t_chg_all")
    send_back(request, people["bob"])
    services.approval_withdraw(request_id=request.pk, user=people["alice"])
    instance = WorkflowInstance.objects.get(pk=request.instance_id)
    assert instance.state == "cancelled"
    history = events(instance.pk)
    assert history[history.index("approval_withdrawn") :] == [
        "approval_withdrawn",
        "step_cancelled",
        "step_cancelled",
        "instance_cancelled",
    ]
    cancelled = Event.objects.get(instance=instance, type="instance_cancelled")
    assert cancelled.data == {"reason": "withdrawn by alice"}


def test_nothing_is_resubmitted_once_the_instance_stopped(people) -> None:
    request = start(people)
    send_back(request, people["bob"])
    engine.instance_cancel(instance_id=request.instance_id, actor="user:ops")
    request.refresh_from_db()
    # The cancellation closed the request sent back too.
    assert request.state == "cancelled"
    assert "approval_cancelled" in events(request.instance_id)
    for act in (services.approval_resubmit, services.approval_withdraw):
        with pytest.raises(Conflict):
            act(request_id=request.pk, user=people["alice"])


# -- rounds -------------------------------------------------------------------------------------


def test_max_rounds_bounds_the_rounds_and_the_last_one_refuses_request_changes(people) -> None:
    request = start(people)
    for expected in (1, 2):
        assert request.round == expected
        send_back(request, people["bob"], f"round {expected}: not yet")
        request = services.approval_resubmit(
            request_id=request.pk, user=people["alice"], changes={"amount": 100 - expected}
        )
    assert request.round == 3
    before = snapshot(request.instance_id)
    with pytest.raises(Conflict, match="round 3 of 3, the last") as caught:
        send_back(request, people["bob"])
    assert caught.value.code == "max_rounds"
    assert snapshot(request.instance_id) == before
    services.approval_decide(request_id=request.pk, user=people["bob"], outcome="approve")
    step = StepRun.objects.get(pk=request.step_run_id)
    assert step.state == "succeeded"
    # The step's output shows the rounds.
    assert step.output["decision"] == "approved" and step.output["round"] == 3
    rounds = step.output["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["state"] == "resubmitted"
    assert rounds[0]["changes_requested_by"] == "bob"
    assert rounds[0]["comment"] == "round 1: not yet"
    assert rounds[0]["answered_by"] == "alice"
    assert rounds[0]["decisions"][0]["outcome"] == "request_changes"
    assert step.output["decisions"][0]["outcome"] == "approve"
    assert StepRun.objects.get(instance_id=request.instance_id, name="pay").state == "scheduled"


def test_max_rounds_1_never_sends_back(people) -> None:
    request = start(people, workflow="t_revisable_once")
    with pytest.raises(Conflict) as caught:
        send_back(request, people["bob"])
    assert caught.value.code == "max_rounds"


def test_a_request_nobody_could_revise_is_never_sent_back(people) -> None:
    """An instance the system started for nobody (no requester, no starter): sending it back
    would strand it, so it is refused (409 no_requester) and not offered."""
    instance, _ = engine.instance_start(
        workflow="t_revisable", input={**EXPENSE, "requester": "a system"}
    )
    engine.step_execute(
        step_run_id=StepRun.objects.get(instance=instance, name="reserve").pk, attempt=1
    )
    request = ApprovalRequest.objects.get(instance=instance)
    assert request.requester is None and not request.can_be_sent_back
    before = snapshot(instance.pk)
    with pytest.raises(Conflict) as caught:
        send_back(request, people["bob"])
    assert caught.value.code == "no_requester"
    assert snapshot(instance.pk) == before


def test_a_round_one_step_output_says_round_1(people) -> None:
    request = start(people)
    services.approval_decide(request_id=request.pk, user=people["bob"], outcome="approve")
    output = StepRun.objects.get(pk=request.step_run_id).output
    assert output["round"] == 1 and output["rounds"] == []


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def all_flow():
    """Policy all over ann and ben (and quorum 2 over three), registered for this test."""
    from orchestration.definitions import registry

    made = []
    for name, options in (
        ("t_chg_all", {"users": ["bob", "dave"], "policy": "all", "veto": False}),
        ("t_chg_quorum", {"users": ["bob", "dave", "carol"], "policy": "quorum", "quorum": 2}),
    ):
        wf = Workflow(name, input_schema=REVISABLE_SCHEMA, requester_input="requester")
        wf.task(_noop, name="reserve")
        approval(wf, "manager_approval", after=["reserve"], revisable=["amount"], **options)
        wf.task(_noop, name="pay", after=["manager_approval"])
        registry.register(wf)
        made.append(wf)
    yield
    for wf in made:
        registry.unregister(wf.name, wf.version)


@pytest.mark.parametrize("workflow", ["t_chg_all", "t_chg_quorum"])
def test_under_all_and_quorum_one_request_for_changes_sends_it_back_at_once(
    people, all_flow, rung, workflow
) -> None:
    """One request for changes ends the round at once (like a veto, even with veto off);
    decisions others made in it stay recorded; round 2 needs everyone again."""
    request = start(people, workflow=workflow)
    services.approval_decide(request_id=request.pk, user=people["bob"], outcome="approve")
    send_back(request, people["dave"], "split the taxi and the hotel")
    request.refresh_from_db()
    assert request.state == "changes_requested"
    assert sorted(request.decisions.values_list("decided_by__username", "outcome")) == [
        ("bob", "approve"),
        ("dave", "request_changes"),
    ]
    second = services.approval_resubmit(
        request_id=request.pk, user=people["alice"], changes={"amount": 60}
    )
    services.approval_decide(request_id=second.pk, user=people["bob"], outcome="approve")
    assert ApprovalRequest.objects.get(pk=second.pk).state == "pending"  # dave still owes
    services.approval_decide(request_id=second.pk, user=people["dave"], outcome="approve")
    assert ApprovalRequest.objects.get(pk=second.pk).state == "approved"
    output = StepRun.objects.get(pk=request.step_run_id).output
    assert [d["user"] for d in output["rounds"][0]["decisions"]] == ["bob", "dave"]


# -- sealed fields ------------------------------------------------------------------------------


def test_a_sealed_revisable_field_stays_sealed(people) -> None:
    request = start(people, iban="DE00 OLD 1111")
    send_back(request, people["bob"], "wrong account")
    services.approval_resubmit(
        request_id=request.pk, user=people["alice"], changes={"iban": "DE99 NEW SECRET 42"}
    )
    instance = WorkflowInstance.objects.get(pk=request.instance_id)
    assert sealing.is_sealed(instance.input["iban"])
    assert sealing.open_value(instance.input["iban"]) == "DE99 NEW SECRET 42"
    revised = Event.objects.get(instance=instance, type="instance_input_revised")
    assert revised.data["changes"] == {
        "iban": {"from": sealing.MASK, "to": sealing.MASK, "sealed": True}
    }
    for text in ("DE99 NEW SECRET 42", "DE00 OLD 1111"):
        assert not Event.objects.filter(data__icontains=text).exists()
        assert not ApprovalRequest.objects.filter(title__icontains=text).exists()
        assert not OutboundEmail.objects.filter(body_text__icontains=text).exists()


# -- timers restart per round -------------------------------------------------------------------


@pytest.mark.parametrize("batched", [True, False])
def test_reminders_escalation_and_due_restart_from_the_resubmission(
    people, django_user_model, settings, batched
) -> None:
    """Round 1 created at T0 and sent back at T0+1h; resubmitted at T0+30h. Nothing fires for
    round 1 (sent back: not pending), and round 2's reminder, escalation and expiry count from
    the resubmission, on the batched escalation path and the per-row one."""
    settings.SIGNOFF_ESCALATION_BATCHED = batched
    django_user_model.objects.create_user("admin", email="admin@example.com")
    t0 = timezone.now().replace(microsecond=0)
    with time_machine.travel(t0, tick=False) as clock:
        first = start(people)
        assert first.due_at == t0 + timedelta(days=3)
        clock.shift(timedelta(hours=1))
        send_back(first, people["bob"])
        # Past round 1's reminder, escalation and due: a request sent back has no timers.
        clock.shift(timedelta(hours=29))
        later = t0 + timedelta(days=4)
        assert sweepers.sweep_reminders(now=later) == 0
        assert sweepers.sweep_escalations(now=later) == 0
        assert sweepers.sweep_expiry(now=later) == 0
        resubmitted_at = t0 + timedelta(hours=30)
        assert timezone.now() == resubmitted_at
        second = services.approval_resubmit(
            request_id=first.pk, user=people["alice"], changes={"amount": 80}
        )
        second = ApprovalRequest.objects.get(pk=second.pk)
        assert second.created_at == resubmitted_at
        assert second.due_at == resubmitted_at + timedelta(days=3)
        assert second.next_reminder_at == resubmitted_at + timedelta(days=1)
        assert second.next_escalation_at == resubmitted_at + timedelta(days=2)
        assert second.level == 0 and second.reminders_sent == 0
        # Round 1's escalation time (T0+2d) passes: nothing yet for round 2.
        assert sweepers.sweep_escalations(now=t0 + timedelta(days=2, hours=1)) == 0
        clock.shift(timedelta(days=1, minutes=1))
        assert sweepers.sweep_reminders() == 1
        clock.shift(timedelta(days=1))
        assert sweepers.sweep_escalations() == 1
        second.refresh_from_db()
        assert second.level == 1
        assert second.assignee_users.filter(username="admin").exists()
        clock.shift(timedelta(days=1))
        assert sweepers.sweep_expiry() == 1
        second.refresh_from_db()
        assert second.state == "expired"
        first.refresh_from_db()
        assert first.state == "resubmitted" and first.level == 0 and first.reminders_sent == 0
        output = StepRun.objects.get(pk=first.step_run_id).output
        assert output["expired"] is True and output["round"] == 2


def test_the_workflow_deadline_is_not_extended_by_a_round(people) -> None:
    """The instance deadline bounds the whole process, revision time included."""
    wf_deadline = timedelta(days=5)
    from orchestration.definitions import registry

    definition = registry.get("t_revisable")
    definition.deadline = wf_deadline
    try:
        request = start(people)
        deadline = WorkflowInstance.objects.get(pk=request.instance_id).deadline_at
        send_back(request, people["bob"])
        services.approval_resubmit(request_id=request.pk, user=people["alice"])
        assert WorkflowInstance.objects.get(pk=request.instance_id).deadline_at == deadline
    finally:
        definition.deadline = None


# -- the engine's input revision ----------------------------------------------------------------


def test_instance_revise_input_records_a_diff_under_the_lock(people) -> None:
    request = start(people)
    diff = engine.instance_revise_input(
        instance_id=request.instance_id,
        changes={"amount": 99.5, "items": [{"what": "taxi"}]},
        actor="user:alice",
        reason="typo",
    )
    assert diff == {
        "amount": {"from": 120, "to": 99.5},
        "items": {"from": None, "to": [{"what": "taxi"}], "added": True},
    }
    event = Event.objects.filter(instance_id=request.instance_id).last()
    assert event.type == "instance_input_revised" and event.data["reason"] == "typo"
    # No change: nothing written.
    count = Event.objects.count()
    assert (
        engine.instance_revise_input(instance_id=request.instance_id, changes={"amount": 99.5})
        == {}
    )
    assert Event.objects.count() == count
    with pytest.raises(InvalidInput) as caught:
        engine.instance_revise_input(instance_id=request.instance_id, changes={"requester": "x"})
    assert caught.value.code == "not_revisable"
    with pytest.raises(InvalidInput) as caught:
        engine.instance_revise_input(instance_id=request.instance_id, changes={"amount": 0})
    assert caught.value.code == "invalid_input"
    with pytest.raises(NotFound):
        engine.instance_revise_input(instance_id="00000000-0000-0000-0000-000000000000", changes={})
    engine.instance_cancel(instance_id=request.instance_id)
    with pytest.raises(Conflict):
        engine.instance_revise_input(instance_id=request.instance_id, changes={"amount": 5})


# -- the definition -----------------------------------------------------------------------------


def test_revisable_and_max_rounds_are_checked_at_registration() -> None:
    def flow(schema: dict | None = REVISABLE_SCHEMA, **options: Any) -> Workflow:
        wf = Workflow("t_chg_bad", input_schema=schema, requester_input="requester")
        approval(wf, "decide", users=["bob"], **options)
        return wf

    cases = [
        ({"revisable": ["amount", "colour"]}, "revisable field 'colour' is not a top-level"),
        ({"revisable": ["requester"]}, "names the requester"),
        ({"revisable": ["items.0"]}, "must name a top-level input field"),
        ({"revisable": ["amount", "amount"]}, "lists a field twice"),
        ({"max_rounds": 0}, "max_rounds must be an integer from 1 to 50"),
        ({"max_rounds": 51}, "max_rounds must be an integer"),
        ({"max_rounds": True}, "max_rounds must be an integer"),
    ]
    for options, message in cases:
        with pytest.raises(DefinitionError, match=message):
            Registry().register(flow(**options))
    # Without an input schema any top-level name goes; the default is 3 rounds.
    wf = Registry().register(flow(None, revisable=["anything"]))
    assert wf.steps["decide"].max_rounds == 3
    assert wf.describe()["steps"][0]["revisable"] == ["anything"]
