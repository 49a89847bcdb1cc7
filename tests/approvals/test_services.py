"""Approval services: policies, who may decide, delegation, races."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from approvals import selectors, services
from approvals.definitions import approval
from approvals.models import ApprovalRequest, Decision, PastAssignee
from orchestration import engine
from orchestration.definitions import DefinitionError, Registry, Workflow, registry
from orchestration.errors import Conflict, InvalidInput, NotAllowed, NotFound
from orchestration.models import Event, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def people(django_user_model):
    names = ["req", "ann", "ben", "cat", "dan", "eve"]
    users = {n: django_user_model.objects.create_user(n, email=f"{n}@example.com") for n in names}
    reviewers = Group.objects.create(name="reviewers")
    reviewers.user_set.add(users["cat"], users["dan"])
    return users


@pytest.fixture
def operator(people, settings):
    """eve as an operator (staff, orchestration.operate_instance), where decisions on
    behalf of assignees are turned on (off by default)."""
    settings.SIGNOFF_DECIDE_ON_BEHALF = True
    eve = people["eve"]
    eve.is_staff = True
    eve.save(update_fields=["is_staff"])
    eve.user_permissions.add(Permission.objects.get(codename="operate_instance"))
    return type(eve).objects.get(pk=eve.pk)


@pytest.fixture
def make_flow():
    created = []

    def make(name: str, **kwargs) -> str:  # noqa: ANN003
        wf = Workflow(name)
        wf.task(_noop, name="prepare")
        approval(
            wf,
            "decide",
            after=["prepare"],
            title="Decide {input[what]}",
            show=[("What", "input.what")],
            requester=lambda ctx: "req",
            **kwargs,
        )
        wf.task(_noop, name="after", after=["decide"])
        registry.register(wf)
        created.append(wf)
        return name

    yield make
    for wf in created:
        registry.unregister(wf.name, wf.version)


def start(workflow: str) -> tuple[WorkflowInstance, ApprovalRequest]:
    instance, _ = engine.instance_start(workflow=workflow, input={"what": "the budget"})
    prepare = StepRun.objects.get(instance=instance, name="prepare")
    engine.step_execute(step_run_id=prepare.pk, attempt=1)
    # In a transactional test a live test worker may win the claim: wait for its request.
    from tests.conftest import wait_for

    return instance, wait_for(
        lambda: ApprovalRequest.objects.filter(instance=instance).first(),
        timeout=30,
        message="the approval request",
    )


def state_of(instance: WorkflowInstance) -> tuple[str, str]:
    instance = WorkflowInstance.objects.get(pk=instance.pk)
    return instance.state, StepRun.objects.get(instance=instance, name="decide").state


def test_ready_approval_step_waits_and_creates_the_request(people, make_flow) -> None:
    instance, request = start(make_flow("t_ap_any", users=["ann", "ghost"], groups=["reviewers"]))
    assert request.title == "Decide the budget"
    assert request.fields == [{"label": "What", "value": "the budget"}]
    assert request.requester == people["req"]
    assert set(request.assignee_users.values_list("username", flat=True)) == {"ann"}
    assert list(request.assignee_groups.values_list("name", flat=True)) == ["reviewers"]
    assert state_of(instance) == ("running", "waiting")
    requested = Event.objects.get(instance=instance, type="approval_requested")
    assert requested.data["unknown_assignees"] == ["ghost"]


def test_any_first_approval_resolves_and_the_workflow_goes_on(people, make_flow) -> None:
    instance, request = start(make_flow("t_ap_any2", groups=["reviewers"]))
    services.approval_decide(
        request_id=request.pk, user=people["cat"], outcome="approve", comment="fine"
    )
    request.refresh_from_db()
    assert request.state == "approved"
    assert state_of(instance) == ("running", "succeeded")
    step = StepRun.objects.get(instance=instance, name="decide")
    assert step.output["decision"] == "approved"
    assert step.output["decided_by"] == ["cat"]
    assert step.output["comments"] == ["fine"]
    assert StepRun.objects.get(instance=instance, name="after").state == "scheduled"
    with pytest.raises(Conflict, match=r"already approved by cat at \d{4}-"):
        services.approval_decide(request_id=request.pk, user=people["dan"], outcome="approve")
    assert Decision.objects.count() == 1


def test_any_rejection_fails_the_instance_by_default(people, make_flow) -> None:
    instance, request = start(make_flow("t_ap_rej", users=["ann"]))
    with pytest.raises(InvalidInput, match="comment is required"):
        services.approval_decide(request_id=request.pk, user=people["ann"], outcome="reject")
    services.approval_decide(
        request_id=request.pk, user=people["ann"], outcome="reject", comment="too expensive"
    )
    assert state_of(instance) == ("failed", "failed")
    instance.refresh_from_db()
    assert instance.error["message"] == "rejected by ann: too expensive"
    assert instance.error["reason"] == "rejected"


def test_rejection_can_continue_with_the_decision_in_the_context(people, make_flow) -> None:
    instance, request = start(
        make_flow("t_ap_cont", users=["ann"], on_reject="continue", reject_requires_comment=False)
    )
    services.approval_decide(request_id=request.pk, user=people["ann"], outcome="reject")
    assert state_of(instance) == ("running", "succeeded")
    step = StepRun.objects.get(instance=instance, name="decide")
    assert step.output["decision"] == "rejected"


def test_all_needs_every_user_and_one_member_of_every_group(people, make_flow) -> None:
    instance, request = start(
        make_flow("t_ap_all", policy="all", users=["ann", "ben"], groups=["reviewers"])
    )
    services.approval_decide(request_id=request.pk, user=people["ann"], outcome="approve")
    services.approval_decide(request_id=request.pk, user=people["cat"], outcome="approve")
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"
    with pytest.raises(Conflict, match="already decided"):
        services.approval_decide(request_id=request.pk, user=people["ann"], outcome="approve")
    services.approval_decide(request_id=request.pk, user=people["ben"], outcome="approve")
    assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"
    assert state_of(instance) == ("running", "succeeded")


def test_all_is_rejected_by_any_rejection(people, make_flow) -> None:
    instance, request = start(make_flow("t_ap_all_rej", policy="all", users=["ann", "ben"]))
    services.approval_decide(request_id=request.pk, user=people["ann"], outcome="approve")
    services.approval_decide(
        request_id=request.pk, user=people["ben"], outcome="reject", comment="no"
    )
    assert ApprovalRequest.objects.get(pk=request.pk).state == "rejected"
    assert state_of(instance) == ("failed", "failed")


@pytest.mark.parametrize(
    ("veto", "votes", "expected"),
    [
        (True, ["approve", "approve"], "approved"),
        (True, ["approve", "reject"], "rejected"),
        (True, ["approve"], "pending"),
        (False, ["reject", "approve", "approve"], "approved"),
        (False, ["reject", "approve", "reject"], "rejected"),
        (False, ["reject"], "pending"),
    ],
)
def test_quorum_counts_distinct_approvals(people, make_flow, veto, votes, expected) -> None:
    _, request = start(
        make_flow(
            f"t_ap_q_{int(veto)}_{len(votes)}_{votes[-1]}",
            policy="quorum",
            quorum=2,
            veto=veto,
            users=["ann", "ben", "eve"],
            reject_requires_comment=False,
        )
    )
    for voter, vote in zip(["ann", "ben", "eve"], votes, strict=False):
        services.approval_decide(request_id=request.pk, user=people[voter], outcome=vote)
    assert ApprovalRequest.objects.get(pk=request.pk).state == expected


def test_non_assignee_and_requester_are_refused_and_nothing_changes(people, make_flow) -> None:
    instance, request = start(make_flow("t_ap_who", users=["ann", "req"]))
    before = Event.objects.filter(instance=instance).count()
    # eve has no part in it: for her the request does not exist
    with pytest.raises(NotFound):
        services.approval_decide(request_id=request.pk, user=people["eve"], outcome="approve")
    people["ben"].is_staff = True  # staff see every request, and may still not decide it
    people["ben"].save(update_fields=["is_staff"])
    with pytest.raises(NotAllowed, match="not an assignee"):
        services.approval_decide(request_id=request.pk, user=people["ben"], outcome="approve")
    with pytest.raises(NotAllowed, match="your own request"):
        services.approval_decide(request_id=request.pk, user=people["req"], outcome="approve")
    with pytest.raises(NotFound):
        services.approval_decide(request_id=999999, user=people["ann"], outcome="approve")
    with pytest.raises(NotFound):
        services.approval_decide(request_id="abc", user=people["ann"], outcome="approve")
    with pytest.raises(InvalidInput):
        services.approval_decide(request_id=request.pk, user=people["ann"], outcome="maybe")
    with pytest.raises(InvalidInput):
        services.approval_decide(
            request_id=request.pk, user=people["ann"], outcome="approve", comment="x" * 5001
        )
    assert Decision.objects.count() == 0
    assert Event.objects.filter(instance=instance).count() == before
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"


def test_self_approval_when_the_step_allows_it(people, make_flow) -> None:
    _, request = start(make_flow("t_ap_self", users=["req"], allow_self_approval=True))
    services.approval_decide(request_id=request.pk, user=people["req"], outcome="approve")
    assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"


def test_delegation_only_inside_its_window(people, make_flow) -> None:
    _, request = start(make_flow("t_ap_deleg", users=["ann"]))
    now = timezone.now()
    services.delegation_create(
        user=people["ann"],
        delegate=people["eve"],
        starts_at=now + timedelta(days=1),
        ends_at=now + timedelta(days=2),
    )
    assert request not in selectors.decidable_by(people["eve"])
    with pytest.raises(NotFound):  # not yet her delegator's request, so not hers to see
        services.approval_decide(request_id=request.pk, user=people["eve"], outcome="approve")
    assert request in selectors.decidable_by(people["eve"], now + timedelta(days=1, hours=1))
    assert request not in selectors.decidable_by(people["eve"], now + timedelta(days=3))
    services.delegation_create(
        user=people["ann"],
        delegate=people["eve"],
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(hours=1),
    )
    assert request in selectors.decidable_by(people["eve"])
    decision = services.approval_decide(
        request_id=request.pk, user=people["eve"], outcome="approve"
    )
    assert (decision.decided_by, decision.assignee) == (people["eve"], people["ann"])
    step = StepRun.objects.get(pk=request.step_run_id)
    assert step.output["decisions"][0]["user"] == "eve"
    assert step.output["decisions"][0]["for"] == "ann"


def test_bad_delegations_are_refused(people) -> None:
    now = timezone.now()
    with pytest.raises(InvalidInput):
        services.delegation_create(
            user=people["ann"],
            delegate=people["ann"],
            starts_at=now,
            ends_at=now + timedelta(days=1),
        )
    with pytest.raises(InvalidInput):
        services.delegation_create(
            user=people["ann"],
            delegate=people["eve"],
            starts_at=now,
            ends_at=now - timedelta(days=1),
        )


def test_inbox_selector_shows_only_what_the_user_may_decide(people, make_flow) -> None:
    name = make_flow("t_ap_sel", groups=["reviewers"])
    _, first = start(name)
    _, second = start(name)
    assert set(selectors.decidable_by(people["cat"])) == {first, second}
    assert list(selectors.decidable_by(people["ann"])) == []
    assert list(selectors.decidable_by(people["req"])) == []  # their own requests
    services.approval_decide(request_id=first.pk, user=people["cat"], outcome="approve")
    assert set(selectors.decidable_by(people["dan"])) == {second}
    assert set(selectors.decided_by(people["cat"])) == {first}


def test_cancelling_the_instance_cancels_its_open_request(people, make_flow) -> None:
    instance, request = start(make_flow("t_ap_cancel", users=["ann"]))
    engine.instance_cancel(instance_id=instance.pk)
    request.refresh_from_db()
    assert request.state == "cancelled"
    assert "approval_cancelled" in Event.objects.filter(instance=instance).values_list(
        "type", flat=True
    )
    with pytest.raises(Conflict, match="already cancelled"):
        services.approval_decide(request_id=request.pk, user=people["ann"], outcome="approve")


def test_bad_approval_definitions_are_refused() -> None:
    wf = Workflow("t_ap_bad")
    approval(wf, "decide", users=["ann"], policy="most")
    with pytest.raises(DefinitionError, match="step 'decide': policy must be one of"):
        Registry().register(wf)
    wf = Workflow("t_ap_bad2")
    approval(wf, "decide")
    with pytest.raises(DefinitionError, match="needs users, groups or an assignees function"):
        Registry().register(wf)


@pytest.mark.django_db(transaction=True)
def test_two_people_deciding_at_once_get_one_resolution(people, make_flow, rung) -> None:
    # `rung`: no Celery message leaves, so no live test worker (which does not know this
    # test-only workflow) can claim its steps.
    _, request = start(make_flow("t_ap_race", groups=["reviewers"]))
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def decide(name: str) -> None:
        barrier.wait()
        try:
            services.approval_decide(request_id=request.pk, user=people[name], outcome="approve")
            results[name] = "decided"
        except Conflict as exc:
            results[name] = str(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=(n,)) for n in ("cat", "dan")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values())[0].startswith("already approved by")
    assert list(results.values()).count("decided") == 1
    assert Decision.objects.filter(request=request).count() == 1
    assert Event.objects.filter(instance=request.instance, type="approval_resolved").count() == 1


def test_seed_demo_is_idempotent_and_fills_the_inbox() -> None:
    from django.core.management import call_command

    call_command("seed_demo")
    call_command("seed_demo")
    assert WorkflowInstance.objects.filter(workflow="expense_approval").count() == 4
    from django.contrib.auth import get_user_model

    User = get_user_model()  # noqa: N806
    assert User.objects.get(username="bob").groups.filter(name="managers").exists()
    assert User.objects.get(username="admin").is_superuser
    assert User.objects.get(username="alice").check_password("signoff-demo")


def test_operator_decides_on_behalf_with_a_mandatory_reason(people, make_flow, operator) -> None:
    instance, request = start(make_flow("t_ap_behalf", users=["ann"]))
    ops = operator
    with pytest.raises(InvalidInput, match="reason is required"):
        services.approval_decide_on_behalf(
            request_id=request.pk,
            operator=ops,
            assignee=people["ann"],
            outcome="approve",
            reason="",
        )
    with pytest.raises(NotAllowed, match="ben is not an assignee"):
        services.approval_decide_on_behalf(
            request_id=request.pk,
            operator=ops,
            assignee=people["ben"],
            outcome="approve",
            reason="phone",
        )
    assert Decision.objects.count() == 0
    decision = services.approval_decide_on_behalf(
        request_id=request.pk,
        operator=ops,
        assignee=people["ann"],
        outcome="approve",
        reason="ann approved by phone",
    )
    assert (decision.decided_by, decision.assignee, decision.channel, decision.reason) == (
        ops,
        people["ann"],
        "admin",
        "ann approved by phone",
    )
    event = Event.objects.get(instance=instance, type="approval_decided")
    assert event.data["reason"] == "ann approved by phone" and event.data["for"] == "ann"
    assert event.data["on_behalf"] is True
    assert state_of(instance) == ("running", "succeeded")


def test_reassign_replaces_the_assignees(people, make_flow, operator) -> None:
    _, request = start(make_flow("t_ap_reassign", users=["ann"]))
    ops = operator
    with pytest.raises(InvalidInput, match="unknown users or groups: ghost"):
        services.approval_reassign(
            request_id=request.pk, operator=ops, users=["ghost"], groups=[], reason="ann left"
        )
    services.approval_reassign(
        request_id=request.pk, operator=ops, users=["ben"], groups=["reviewers"], reason="ann left"
    )
    # No longer hers to decide; as a past assignee she still sees it (read-only).
    with pytest.raises(NotAllowed, match="not an assignee"):
        services.approval_decide(request_id=request.pk, user=people["ann"], outcome="approve")
    assert list(PastAssignee.objects.filter(request=request).values_list("user", "cause")) == [
        (people["ann"].pk, "reassigned")
    ]
    services.approval_decide(request_id=request.pk, user=people["dan"], outcome="approve")
    assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"
    reassigned = Event.objects.get(type="approval_reassigned")
    assert reassigned.data == {"users": ["ben"], "groups": ["reviewers"], "reason": "ann left"}


@pytest.mark.parametrize("starter_is_requester", [True, False])
def test_the_fixed_sql_decidable_list_is_the_orm_conditions(
    people, make_flow, settings, starter_is_requester
) -> None:
    # selectors.Decidable (fixed SQL) against the ORM lookups it replaced, for every person
    # over requests that differ in each condition: assigned to a user or a group, the
    # person's own (requester or starter), allowed self-approval, already decided by them,
    # decided by someone else, delegated, and not pending.
    settings.SIGNOFF_STARTER_IS_REQUESTER = starter_is_requester
    groups = make_flow("t_ap_eq_groups", groups=["reviewers"], policy="all")
    users = make_flow("t_ap_eq_users", users=["ann", "cat"], policy="all")
    selfish = make_flow("t_ap_eq_self", users=["req", "cat"], allow_self_approval=True)
    requests = [start(name)[1] for name in (groups, groups, users, users, selfish, selfish)]
    ApprovalRequest.objects.filter(pk=requests[1].pk).update(requester=people["cat"])
    WorkflowInstance.objects.filter(pk=requests[3].instance_id).update(started_by=people["ann"])
    ApprovalRequest.objects.filter(pk=requests[3].pk).update(requester=None)
    services.approval_decide(request_id=requests[2].pk, user=people["ann"], outcome="approve")
    services.approval_decide(request_id=requests[0].pk, user=people["dan"], outcome="approve")
    ApprovalRequest.objects.filter(pk=requests[5].pk).update(state="rejected")
    now = timezone.now()
    services.delegation_create(
        user=people["cat"], delegate=people["eve"], starts_at=now, ends_at=now + timedelta(days=1)
    )
    seen = {}
    for name, user in people.items():
        ids = selectors.principal_ids(user)
        orm = ApprovalRequest.objects.filter(state="pending").filter(
            selectors.assigned_filter(ids)
            & ~(selectors.own_filter(user) & Q(allow_self_approval=False))
            & ~Exists(Decision.objects.filter(request=OuterRef("pk"), decided_by=user))
        )
        fixed = selectors.decidable_by(user)
        assert sorted(fixed.values_list("pk", flat=True)) == sorted(
            orm.values_list("pk", flat=True)
        )
        # The same rows when the query is a subquery of another (its tables renamed).
        nested = ApprovalRequest.objects.filter(pk__in=fixed.values("pk"))
        assert set(nested) == set(orm)
        assert fixed.values("pk")[:100].count() == orm.count()
        seen[name] = {r.pk for r in fixed}
    # The cases really differ (the comparison above is not between two empty lists).
    assert seen["cat"] >= {requests[4].pk} and requests[1].pk not in seen["cat"]
    assert seen["eve"] == seen["cat"] | seen["eve"]  # eve decides for cat
    assert requests[2].pk not in seen["ann"] and requests[3].pk in seen["cat"]
    assert (requests[3].pk in seen["ann"]) is not starter_is_requester
    assert requests[4].pk in seen["req"]  # allowed to approve their own
    assert requests[5].pk not in set().union(*seen.values())


@pytest.mark.parametrize("starter_is_requester", [True, False])
def test_the_fixed_sql_visibility_check_is_the_orm_conditions(
    people, make_flow, settings, starter_is_requester
) -> None:
    # selectors.sees_request (fixed SQL, what policy.can_see asks) against the ORM form
    # (seeing_filter) for every person and request: assigned to a user or a group, decided,
    # a past assignee, the requester, the starter, delegated, and none of these.
    settings.SIGNOFF_STARTER_IS_REQUESTER = starter_is_requester
    groups = make_flow("t_ap_see_groups", groups=["reviewers"], policy="all")
    users = make_flow("t_ap_see_users", users=["ann"], policy="all")
    requests = [start(name)[1] for name in (groups, groups, users, users)]
    ApprovalRequest.objects.filter(pk=requests[1].pk).update(requester=None)
    WorkflowInstance.objects.filter(pk=requests[1].instance_id).update(started_by=people["ben"])
    services.approval_decide(request_id=requests[0].pk, user=people["dan"], outcome="approve")
    PastAssignee.objects.create(request=requests[2], user=people["ben"], removed_at=timezone.now())
    now = timezone.now()
    services.delegation_create(
        user=people["ann"], delegate=people["eve"], starts_at=now, ends_at=now + timedelta(days=1)
    )
    seen = {}
    for name, user in people.items():
        for request in requests:
            orm = (
                ApprovalRequest.objects.filter(pk=request.pk)
                .filter(selectors.seeing_filter(user))
                .exists()
            )
            assert selectors.sees_request(user, request.pk) is orm, (name, request.pk)
            seen[name, request.pk] = orm
    # The cases differ: someone sees each request, and someone does not.
    assert all(any(seen[n, r.pk] for n in people) for r in requests)
    assert not all(seen.values())
    assert seen["ben", requests[1].pk] is starter_is_requester  # the starter
    assert seen["ben", requests[2].pk]  # a past assignee
    assert seen["eve", requests[2].pk]  # through ann's delegation
    assert not seen["ben", requests[3].pk]
