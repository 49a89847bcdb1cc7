"""Claims ("I'm on it"): the services and every rule of the policy, races on PostgreSQL, idle
expiry with time travel (no sleeping) and the claim sweeper."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group, Permission
from django.db import connection, transaction
from django.test import override_settings

from approvals import claims, policy, services, sweepers
from approvals.definitions import approval
from approvals.models import ApprovalRequest, Decision, Delegation
from orchestration import engine
from orchestration.definitions import DefinitionError, Registry, Workflow, registry
from orchestration.errors import Conflict, InvalidInput, NotAllowed, NotFound
from orchestration.models import Event, WorkflowInstance

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def people(django_user_model) -> dict[str, Any]:
    """req asks; cat, dan and fay review (group reviewers); ann and ben are named users; eve
    is staff; ops is an operator who may override claims."""
    names = ["req", "ann", "ben", "cat", "dan", "fay", "eve", "ops"]
    users = {n: django_user_model.objects.create_user(n, email=f"{n}@example.com") for n in names}
    Group.objects.create(name="reviewers").user_set.add(users["cat"], users["dan"], users["fay"])
    users["eve"].is_staff = True
    users["eve"].save(update_fields=["is_staff"])
    ops = users["ops"]
    ops.is_staff = True
    ops.save(update_fields=["is_staff"])
    ops.user_permissions.add(
        Permission.objects.get(codename="operate_instance"),
        Permission.objects.get(codename="override_claim"),
    )
    return {n: django_user_model.objects.get(pk=u.pk) for n, u in users.items()}


@pytest.fixture
def flow():
    made = []

    def make(name: str, **kwargs: Any) -> str:
        kwargs.setdefault("groups", ["reviewers"])
        wf = Workflow(name)
        approval(wf, "decide", title="Decide", requester=lambda c: "req", **kwargs)
        wf.task(_noop, name="after", after=["decide"])
        registry.register(wf)
        made.append(wf)
        return name

    yield make
    for wf in made:
        registry.unregister(wf.name, wf.version)


def start(name: str) -> ApprovalRequest:
    instance, _ = engine.instance_start(workflow=name)
    return ApprovalRequest.objects.get(instance=instance)


def fresh(request: ApprovalRequest) -> ApprovalRequest:
    return ApprovalRequest.objects.select_related("claimed_by").get(pk=request.pk)


CLAIM_EVENTS = {
    "approval_claimed",
    "approval_released",
    "approval_claim_taken_over",
    "approval_claim_expired",
}


def events(request: ApprovalRequest) -> list[str]:
    """The request's claim events, in order."""
    return list(
        Event.objects.filter(instance_id=request.instance_id, type__in=CLAIM_EVENTS)
        .order_by("seq")
        .values_list("type", flat=True)
    )


def last(request: ApprovalRequest, type: str) -> Event:
    return Event.objects.filter(instance_id=request.instance_id, type=type).latest("seq")


def state(request: ApprovalRequest) -> tuple:
    """Everything a claim act could change."""
    row = fresh(request)
    return (
        row.state,
        row.claim_state,
        row.claimed_by_id,
        row.claimed_at,
        row.claim_expires_at,
        Event.objects.filter(instance_id=request.instance_id).count(),
        Decision.objects.filter(request=request).count(),
    )


def claim(request: ApprovalRequest, user: Any) -> ApprovalRequest:
    return claims.approval_claim(request_id=request.pk, user=user)


def approve(request: ApprovalRequest, user: Any) -> Decision:
    return services.approval_decide(request_id=request.pk, user=user, outcome="approve")


# -- claiming --------------------------------------------------------------------------------------


def test_a_group_member_claims_and_nobody_else_decides_until_released(people, flow) -> None:
    request = start(flow("t_cl_basic"))
    assert request.claim_mode == "soft" and request.claim_state == "unclaimed"
    claimed = claim(request, people["cat"])
    assert claimed.claimed_by == people["cat"] and claimed.claim_state == "claimed"
    event = last(request, "approval_claimed")
    assert event.actor == "user:cat"
    assert event.data["user"] == "cat" and event.data["mode"] == "soft"
    assert event.data["channel"] == "web"
    before = state(request)
    with pytest.raises(Conflict, match=r"^claimed by cat since \d{4}-\d\d-\d\d ") as refused:
        approve(request, people["dan"])
    assert refused.value.code == "claimed" and refused.value.status == 409
    with pytest.raises(Conflict, match="claimed by cat"):
        services.approval_decide(
            request_id=request.pk, user=people["dan"], outcome="reject", comment="no", channel="api"
        )
    assert state(request) == before
    claims.approval_release(request_id=request.pk, user=people["cat"])
    assert last(request, "approval_released").data == {"user": "cat", "channel": "web"}
    approve(request, people["dan"])
    assert fresh(request).state == "approved"


def test_the_claimant_decides_their_claimed_request(people, flow) -> None:
    request = start(flow("t_cl_own"))
    claim(request, people["cat"])
    approve(request, people["cat"])
    assert fresh(request).state == "approved"


def test_claiming_again_renews_the_claim_without_a_new_event(people, flow) -> None:
    request = start(flow("t_cl_renew", claim_idle=timedelta(hours=1)))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    with time_machine.travel(T0 + timedelta(minutes=50), tick=False):
        renewed = claim(request, people["cat"])
    assert renewed.claimed_at == T0  # since when: unchanged
    assert renewed.claim_active_at == T0 + timedelta(minutes=50)
    assert renewed.claim_expires_at == T0 + timedelta(minutes=110)
    assert events(request) == ["approval_claimed"]


@pytest.mark.parametrize(
    ("who", "error", "code"),
    [
        ("req", NotAllowed, "self_approval"),  # the requester
        ("ann", NotFound, "not_found"),  # no part in it: the request does not exist for them
        ("eve", NotAllowed, "not_assignee"),  # staff sees it, may not decide it
        ("ops", NotAllowed, "not_assignee"),  # an operator is no assignee either
    ],
)
def test_only_someone_who_may_decide_may_claim(people, flow, who, error, code) -> None:
    request = start(flow(f"t_cl_who_{who}", users=["req"]))  # the requester is assigned too
    before = state(request)
    with pytest.raises(error) as refused:
        claim(request, people[who])
    assert refused.value.code == code
    assert state(request) == before


def test_a_deactivated_member_may_not_claim(people, flow) -> None:
    request = start(flow("t_cl_inactive"))
    people["cat"].is_active = False
    people["cat"].save(update_fields=["is_active"])
    with pytest.raises(NotAllowed) as refused:
        claim(request, people["cat"])
    assert refused.value.code == "inactive"


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"claim": None}, "takes no claims"),
        ({"groups": [], "users": ["ann"]}, "one person alone"),
        ({"policy": "all"}, "takes no claims"),
        ({"policy": "quorum", "quorum": 2}, "takes no claims"),
    ],
    ids=["claim=None", "one user", "policy all", "quorum 2"],
)
def test_requests_that_take_no_claims_refuse_them(people, flow, kwargs, why) -> None:
    request = start(flow(f"t_cl_none_{len(kwargs)}_{kwargs.get('policy', '')}", **kwargs))
    who = people["ann"] if "users" in kwargs else people["cat"]
    before = state(request)
    with pytest.raises(Conflict, match=why) as refused:
        claim(request, who)
    assert refused.value.code == "not_claimable"
    assert state(request) == before


def test_two_named_users_make_a_claimable_request(people, flow) -> None:
    request = start(flow("t_cl_two", groups=[], users=["ann", "ben"]))
    claim(request, people["ann"])
    with pytest.raises(Conflict, match="claimed by ann"):
        approve(request, people["ben"])


def test_someone_elses_claim_is_refused_with_who_and_since(people, flow) -> None:
    request = start(flow("t_cl_taken"))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
        before = state(request)
        with pytest.raises(Conflict) as refused:
            claim(request, people["dan"])
    assert refused.value.code == "claimed"
    assert refused.value.message == "claimed by cat since 2026-03-02 08:00:00 UTC"
    assert state(request) == before


def test_claiming_a_decided_request_is_409(people, flow) -> None:
    request = start(flow("t_cl_decided"))
    approve(request, people["dan"])
    before = state(request)
    with pytest.raises(Conflict, match="already approved by dan") as refused:
        claim(request, people["cat"])
    assert refused.value.code == "already_decided"
    assert state(request) == before


def test_bad_ids_are_not_found(people) -> None:
    for bad in (0, "x", None, 2**70):
        with pytest.raises(NotFound):
            claims.approval_claim(request_id=bad, user=people["cat"])


# -- releasing -------------------------------------------------------------------------------------


def test_only_the_claimant_releases_and_only_a_claimed_request(people, flow) -> None:
    request = start(flow("t_cl_release"))
    with pytest.raises(Conflict) as refused:
        claims.approval_release(request_id=request.pk, user=people["cat"])
    assert refused.value.code == "not_claimed"
    claim(request, people["cat"])
    before = state(request)
    with pytest.raises(NotAllowed, match="only they may release it; take it over") as refused:
        claims.approval_release(request_id=request.pk, user=people["dan"])
    assert refused.value.code == "not_claimant"
    with pytest.raises(NotAllowed):  # staff without the permission
        claims.approval_release(request_id=request.pk, user=people["eve"])
    assert state(request) == before


def test_an_override_claim_holder_forces_a_release_recorded_as_such(people, flow) -> None:
    request = start(flow("t_cl_forced", claim="hard"))
    claim(request, people["cat"])
    with pytest.raises(InvalidInput):
        claims.approval_release(request_id=request.pk, user=people["ops"], note=["no"])
    claims.approval_release(
        request_id=request.pk, user=people["ops"], note="cat is away", channel="admin"
    )
    event = last(request, "approval_released")
    assert event.actor == "user:ops"
    assert event.data == {
        "user": "cat",
        "channel": "admin",
        "forced": True,
        "note": "cat is away",
    }
    assert fresh(request).claim_state == "unclaimed"


def test_nobody_forces_the_release_of_a_claim_on_their_own_request(people, flow) -> None:
    request = start(flow("t_cl_own_release"))
    req = people["req"]
    req.user_permissions.add(Permission.objects.get(codename="override_claim"))
    claim(request, people["cat"])
    before = state(request)
    with pytest.raises(NotAllowed) as refused:
        claims.approval_release(request_id=request.pk, user=type(req).objects.get(pk=req.pk))
    assert refused.value.code == "own_request"
    assert state(request) == before


# -- taking over -----------------------------------------------------------------------------------


def test_a_soft_claim_is_taken_over_by_another_assignee_with_a_note(people, flow) -> None:
    request = start(flow("t_cl_soft"))
    claim(request, people["cat"])
    with pytest.raises(InvalidInput, match="a note is required") as refused:
        claims.approval_take_over(request_id=request.pk, user=people["dan"], note="  ")
    assert refused.value.code == "note_required"
    with pytest.raises(InvalidInput, match="longer than 500"):
        claims.approval_take_over(request_id=request.pk, user=people["dan"], note="x" * 501)
    claims.approval_take_over(
        request_id=request.pk, user=people["dan"], note="cat is on holiday", channel="api"
    )
    row = fresh(request)
    assert row.claimed_by == people["dan"]
    event = last(request, "approval_claim_taken_over")
    assert event.actor == "user:dan"
    assert {k: event.data[k] for k in ("from", "user", "mode", "note", "channel")} == {
        "from": "cat",
        "user": "dan",
        "mode": "soft",
        "note": "cat is on holiday",
        "channel": "api",
    }
    with pytest.raises(Conflict, match="claimed by dan"):
        approve(request, people["cat"])
    approve(request, people["dan"])


def test_take_over_refusals(people, flow) -> None:
    request = start(flow("t_cl_take_refused"))
    with pytest.raises(Conflict) as refused:
        claims.approval_take_over(request_id=request.pk, user=people["dan"], note="mine")
    assert refused.value.code == "not_claimed"
    claim(request, people["cat"])
    before = state(request)
    cases = [
        ("cat", Conflict, "own_claim"),
        ("req", NotAllowed, "not_assignee"),  # the requester sees it, is no assignee
        ("eve", NotAllowed, "not_assignee"),
        ("ops", NotAllowed, "not_assignee"),  # may override claims, may not decide it
        ("ann", NotFound, "not_found"),
    ]
    for who, error, code in cases:
        with pytest.raises(error) as refused:
            claims.approval_take_over(request_id=request.pk, user=people[who], note="mine")
        assert refused.value.code == code, who
    assert state(request) == before


def test_a_take_over_from_someone_who_no_longer_holds_the_claim_is_refused(people, flow) -> None:
    """dan saw cat's claim; fay took it over first: dan is told fay holds it."""
    request = start(flow("t_cl_expected"))
    claim(request, people["cat"])
    claims.approval_take_over(
        request_id=request.pk, user=people["fay"], note="mine", expected_claimant="cat"
    )
    before = state(request)
    with pytest.raises(Conflict, match="^claimed by fay since") as refused:
        claims.approval_take_over(
            request_id=request.pk, user=people["dan"], note="mine", expected_claimant="cat"
        )
    assert refused.value.code == "claimed"
    assert state(request) == before


def test_a_hard_claim_is_taken_over_only_with_override_claim(people, flow) -> None:
    request = start(flow("t_cl_hard", claim="hard"))
    claim(request, people["cat"])
    before = state(request)
    with pytest.raises(NotAllowed, match="hard claim") as refused:
        claims.approval_take_over(request_id=request.pk, user=people["dan"], note="mine")
    assert refused.value.code == "hard_claim"
    with pytest.raises(NotAllowed) as refused:
        claims.approval_release(request_id=request.pk, user=people["dan"])
    assert refused.value.code == "not_claimant"
    assert "take it over" not in refused.value.message
    assert state(request) == before
    people["dan"].user_permissions.add(Permission.objects.get(codename="override_claim"))
    dan = type(people["dan"]).objects.get(pk=people["dan"].pk)
    claims.approval_take_over(request_id=request.pk, user=dan, note="escalated to me")
    assert fresh(request).claimed_by == dan
    assert last(request, "approval_claim_taken_over").data["mode"] == "hard"
    claims.approval_release(request_id=request.pk, user=dan)  # the claimant releases
    assert fresh(request).claim_state == "unclaimed"


# -- every way to decide respects the claim --------------------------------------------------------


def test_a_delegate_claims_for_the_assignee_who_then_waits_for_them(people, flow) -> None:
    request = start(flow("t_cl_delegate", groups=[], users=["ann", "ben"]))
    Delegation.objects.create(
        user=people["ann"],
        delegate=people["eve"],
        starts_at=T0 - timedelta(days=1),
        ends_at=datetime(2100, 1, 1, tzinfo=UTC),
    )
    claim(request, people["eve"])
    assert fresh(request).claimed_by == people["eve"]
    with pytest.raises(Conflict, match="claimed by eve"):
        approve(request, people["ann"])
    decision = approve(request, people["eve"])
    assert (decision.assignee, decision.decided_by) == (people["ann"], people["eve"])


@override_settings(SIGNOFF_DECIDE_ON_BEHALF=True)
def test_an_on_behalf_decision_counts_only_for_the_claimant(people, flow) -> None:
    """An operator records the claimant's decision (given by phone); anyone else's waits
    until the claim ends — the operator does not take it over (documented)."""
    request = start(flow("t_cl_behalf"))
    claim(request, people["cat"])
    before = state(request)
    with pytest.raises(Conflict, match="claimed by cat") as refused:
        services.approval_decide_on_behalf(
            request_id=request.pk,
            operator=people["ops"],
            assignee=people["dan"],
            outcome="approve",
            reason="by phone",
        )
    assert refused.value.code == "claimed"
    assert state(request) == before
    services.approval_decide_on_behalf(
        request_id=request.pk,
        operator=people["ops"],
        assignee=people["cat"],
        outcome="approve",
        reason="by phone",
    )
    assert fresh(request).state == "approved"


def test_decision_policy_answers_claimed_for_every_channel(people, flow) -> None:
    """The one rule: the email link page and the API ask the same policy."""
    request = start(flow("t_cl_policy"))
    claim(request, people["cat"])
    row = fresh(request)
    with pytest.raises(Conflict) as refused:
        policy.authorize(policy.Act.DECIDE, user=people["dan"], request=row)
    assert refused.value.code == "claimed"
    assert (
        policy.authorize(policy.Act.DECIDE, user=people["cat"], request=row).principal
        == (people["cat"])
    )


def test_claim_buttons_follow_the_policy(people, flow) -> None:
    request = start(flow("t_cl_buttons"))
    row = fresh(request)
    assert policy.claim_actions(people["cat"], row, may_decide=True) == {"claim"}
    assert policy.claim_actions(people["eve"], row, may_decide=False) == set()
    claim(request, people["cat"])
    row = fresh(request)
    assert policy.claim_actions(people["cat"], row, may_decide=True) == {"claim", "release"}
    assert policy.claim_actions(people["dan"], row, may_decide=True) == {"take_over"}
    assert policy.claim_actions(people["ops"], row, may_decide=False) == {"release"}
    assert policy.claim_actions(people["req"], row, may_decide=False) == set()
    hard = start(flow("t_cl_buttons_hard", claim="hard"))
    claim(hard, people["cat"])
    assert policy.claim_actions(people["dan"], fresh(hard), may_decide=True) == set()


# -- reassignment ----------------------------------------------------------------------------------


def test_reassigning_drops_the_claim_of_someone_no_longer_assigned(people, flow) -> None:
    request = start(flow("t_cl_reassign"))
    claim(request, people["cat"])
    services.approval_reassign(
        request_id=request.pk, operator=people["ops"], users=["ann", "ben"], groups=[], reason="x"
    )
    row = fresh(request)
    assert row.claim_state == "unclaimed" and row.claimed_by is None
    event = last(request, "approval_released")
    assert event.data == {"user": "cat", "reason": "reassigned"}
    assert event.actor == "user:ops"
    seqs = dict(Event.objects.filter(instance_id=request.instance_id).values_list("type", "seq"))
    assert seqs["approval_reassigned"] < seqs["approval_released"]
    approve(request, people["ann"])


def test_reassigning_keeps_the_claim_of_someone_still_assigned(people, flow) -> None:
    request = start(flow("t_cl_reassign_keep"))
    claim(request, people["cat"])
    services.approval_reassign(
        request_id=request.pk,
        operator=people["ops"],
        users=["ann"],
        groups=["reviewers"],
        reason="x",
        channel="api",
    )
    assert fresh(request).claimed_by == people["cat"]
    assert "approval_released" not in events(request)
    assert last(request, "approval_reassigned").data["channel"] == "api"


def test_reassign_asks_whether_the_caller_may_before_looking_names_up(people, flow) -> None:
    """An assignee probing usernames through reassign learns nothing: 403 whatever names."""
    request = start(flow("t_cl_probe"))
    before = state(request)
    for users in (["nobody-such"], ["ann"], []):
        with pytest.raises(NotAllowed) as refused:
            services.approval_reassign(
                request_id=request.pk, operator=people["cat"], users=users, groups=[], reason="x"
            )
        assert refused.value.code == "permission_denied"
    with pytest.raises(InvalidInput) as refused:  # an operator is told
        services.approval_reassign(
            request_id=request.pk,
            operator=people["ops"],
            users=["nobody-such"],
            groups=[],
            reason="x",
        )
    assert refused.value.code == "unknown_assignee"
    with pytest.raises(InvalidInput) as refused:
        services.approval_reassign(
            request_id=request.pk, operator=people["ops"], users=[], groups=[], reason="x"
        )
    assert refused.value.code == "no_assignee"
    assert state(request) == before


def test_a_deactivated_claimants_claim_no_longer_counts(people, flow) -> None:
    request = start(flow("t_cl_deactivated"))
    claim(request, people["cat"])
    people["cat"].is_active = False
    people["cat"].save(update_fields=["is_active"])
    policy.authorize(policy.Act.DECIDE, user=people["dan"], request=fresh(request))
    claim(request, people["dan"])
    assert fresh(request).claimed_by == people["dan"]
    assert events(request) == ["approval_claimed", "approval_released", "approval_claimed"]
    released = last(request, "approval_released")
    assert released.actor == "system"
    assert released.data == {"user": "cat", "reason": "claimant deactivated"}


# -- idle expiry -----------------------------------------------------------------------------------


def test_an_idle_claim_stops_counting_at_its_expiry_and_the_sweeper_records_it(
    people, flow
) -> None:
    request = start(flow("t_cl_idle", claim_idle=timedelta(hours=1)))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    assert fresh(request).claim_expires_at == T0 + timedelta(hours=1)
    with time_machine.travel(T0 + timedelta(minutes=59), tick=False):
        assert sweepers.sweep_claims() == 0
        with pytest.raises(Conflict, match="claimed by cat"):
            approve(request, people["dan"])
    with time_machine.travel(T0 + timedelta(hours=1), tick=False):
        # Idle past its expiry: it no longer counts, even before the sweeper ran.
        row = fresh(request)
        assert row.claim_holder_id(T0 + timedelta(hours=1)) is None
        policy.authorize(policy.Act.DECIDE, user=people["dan"], request=row)
        assert sweepers.sweep_claims() == 1
        assert sweepers.sweep_claims() == 0  # once
    row = fresh(request)
    assert row.claim_state == "unclaimed" and row.claimed_by is None
    event = last(request, "approval_claim_expired")
    assert event.actor == "system"
    assert event.data == {
        "user": "cat",
        "claimed_at": T0.isoformat(),
        "last_active_at": T0.isoformat(),
    }


def test_renewing_moves_the_expiry_so_the_sweeper_leaves_it(people, flow) -> None:
    request = start(flow("t_cl_idle_renew", claim_idle=timedelta(hours=1)))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
        claim(request, people["cat"])
    with time_machine.travel(T0 + timedelta(hours=1), tick=False):
        assert sweepers.sweep_claims() == 0
    with time_machine.travel(T0 + timedelta(minutes=90), tick=False):
        assert sweepers.sweep_claims() == 1


@override_settings(SIGNOFF_CLAIM_IDLE_SECONDS=600)
def test_the_idle_time_comes_from_the_setting_without_claim_idle(people, flow) -> None:
    request = start(flow("t_cl_idle_setting"))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    assert fresh(request).claim_expires_at == T0 + timedelta(minutes=10)


@override_settings(SIGNOFF_CLAIM_IDLE_SECONDS=0)
def test_claims_never_expire_with_an_idle_time_of_zero(people, flow) -> None:
    request = start(flow("t_cl_idle_never"))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    assert fresh(request).claim_expires_at is None
    with time_machine.travel(T0 + timedelta(days=365), tick=False):
        assert sweepers.sweep_claims() == 0
        with pytest.raises(Conflict, match="claimed by cat"):
            approve(request, people["dan"])


def test_a_new_claim_on_an_idle_one_records_its_expiry_first(people, flow) -> None:
    request = start(flow("t_cl_idle_reclaim", claim_idle=timedelta(hours=1)))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    with time_machine.travel(T0 + timedelta(hours=2), tick=False):
        claim(request, people["dan"])
    assert fresh(request).claimed_by == people["dan"]
    types = list(
        Event.objects.filter(instance_id=request.instance_id, type__startswith="approval_claim")
        .order_by("seq")
        .values_list("type", flat=True)
    )
    assert types == ["approval_claimed", "approval_claim_expired", "approval_claimed"]


def test_a_refused_act_on_an_idle_claim_records_nothing(people, flow) -> None:
    """The expiry written before asking the policy is rolled back with the refusal."""
    request = start(flow("t_cl_idle_refused", claim_idle=timedelta(hours=1)))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    before = state(request)
    with time_machine.travel(T0 + timedelta(hours=2), tick=False):
        with pytest.raises(Conflict) as refused:
            claims.approval_take_over(request_id=request.pk, user=people["dan"], note="mine")
    assert refused.value.code == "not_claimed"
    assert state(request) == before


def test_the_sweeper_leaves_decided_requests_and_works_in_bounded_batches(people, flow) -> None:
    name = flow("t_cl_sweep_batch", claim_idle=timedelta(hours=1))
    requests = [start(name) for _ in range(3)]
    with time_machine.travel(T0, tick=False):
        for request in requests:
            claim(request, people["cat"])
        approve(requests[0], people["cat"])
    with time_machine.travel(T0 + timedelta(hours=2), tick=False):
        assert sweepers.sweep_claims(batch=1) == 1
        assert sweepers.sweep_claims() == 1
        assert sweepers.sweep_claims() == 0
    assert fresh(requests[0]).claim_state == "claimed"  # decided: left as it was


def test_the_sweep_query_reads_the_partial_index(people, flow) -> None:
    """Its cost grows with due claims, not with all requests."""
    name = flow("t_cl_sweep_plan", claim_idle=timedelta(hours=1))
    claim(start(name), people["cat"])
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT id, step_run_id FROM approvals_approvalrequest "
            "WHERE state = 'pending' AND claim_state = 'claimed' AND claim_expires_at <= now() "
            "ORDER BY claim_expires_at LIMIT 500"
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "approval_claim_expiry" in plan, plan


# -- the DSL ---------------------------------------------------------------------------------------


def test_bad_claim_definitions_are_refused() -> None:
    cases = [
        ({"claim": "maybe"}, "claim must be 'soft', 'hard' or None"),
        ({"claim": "hard", "policy": "all"}, "claim='hard' needs a request one decision"),
        ({"claim_idle": timedelta(seconds=5)}, "claim_idle must be a timedelta of at least"),
        ({"claim_idle": 60}, "claim_idle must be a timedelta of at least"),
    ]
    for number, (kwargs, message) in enumerate(cases):
        wf = Workflow(f"t_cl_bad_{number}")
        approval(wf, "decide", groups=["reviewers"], **kwargs)
        with pytest.raises(DefinitionError, match=message):
            Registry().register(wf)


def test_soft_is_the_default_and_several_deciders_get_no_claims() -> None:
    wf = Workflow("t_cl_describe")
    step = approval(wf, "decide", groups=["g"])
    assert step.claim_mode == "soft"
    assert step.describe()["claim"] == "soft" and step.describe()["claim_idle"] is None
    assert approval(wf, "all", groups=["g"], policy="all").claim_mode == ""
    assert approval(wf, "q1", groups=["g"], policy="quorum", quorum=1).claim_mode == "soft"
    assert approval(wf, "none", groups=["g"], claim=None).describe()["claim"] is None


# -- races (threads on PostgreSQL) -----------------------------------------------------------------


def _race(*calls: Any) -> list[Any]:
    """Run the calls at the same moment, each in its own thread and connection; returns what
    each returned or raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:  # noqa: BLE001 - the result under test
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_two_people_claiming_at_once_one_wins_the_other_is_told_who(people, flow, rung) -> None:
    # `rung`: no Celery message leaves, so no live test worker takes this test's steps.
    for attempt in range(3):
        request = start(flow(f"t_cl_race_{attempt}"))
        results = _race(
            lambda r=request: claim(r, people["cat"]), lambda r=request: claim(r, people["dan"])
        )
        won = [r for r in results if isinstance(r, ApprovalRequest)]
        lost = [r for r in results if isinstance(r, Exception)]
        assert len(won) == 1 and len(lost) == 1, results
        winner = won[0].claimed_by.get_username()
        assert isinstance(lost[0], Conflict) and lost[0].code == "claimed"
        assert str(lost[0]).startswith(f"claimed by {winner} since")
        assert fresh(request).claimed_by.get_username() == winner
        assert events(request) == ["approval_claimed"]


@pytest.mark.django_db(transaction=True)
def test_a_claim_and_a_decision_at_once_one_wins(people, flow, rung) -> None:
    request = start(flow("t_cl_race_decide"))
    results = _race(lambda: claim(request, people["cat"]), lambda: approve(request, people["dan"]))
    claimed, decided = results
    if isinstance(claimed, ApprovalRequest):  # the claim came first: dan is told cat has it
        assert isinstance(decided, Conflict) and decided.code == "claimed"
        assert str(decided).startswith("claimed by cat since")
        assert fresh(request).state == "pending"
    else:  # the decision came first: the claim is refused, decided
        assert isinstance(decided, Decision)
        assert isinstance(claimed, Conflict) and claimed.code == "already_decided"
        assert fresh(request).claim_state == "unclaimed"


@pytest.mark.django_db(transaction=True)
def test_two_take_overs_at_once_one_wins_the_other_is_told_who(people, flow, rung) -> None:
    request = start(flow("t_cl_race_take"))
    claim(request, people["cat"])

    def take(name: str) -> Any:
        return lambda: claims.approval_take_over(
            request_id=request.pk, user=people[name], note="mine", expected_claimant="cat"
        )

    results = _race(take("dan"), take("fay"))
    won = [r for r in results if isinstance(r, ApprovalRequest)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 1, results
    winner = won[0].claimed_by.get_username()
    assert isinstance(lost[0], Conflict) and str(lost[0]).startswith(f"claimed by {winner}")
    assert (
        Event.objects.filter(
            instance_id=request.instance_id, type="approval_claim_taken_over"
        ).count()
        == 1
    )


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_skips_a_request_whose_instance_is_locked(people, flow, rung) -> None:
    request = start(flow("t_cl_sweep_locked", claim_idle=timedelta(hours=1)))
    with time_machine.travel(T0, tick=False):
        claim(request, people["cat"])
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                WorkflowInstance.objects.select_for_update().get(pk=request.instance_id)
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    try:
        with time_machine.travel(T0 + timedelta(hours=2), tick=False):
            assert sweepers.sweep_claims() == 0  # left for the next run, not waited for
    finally:
        release.set()
        holder.join()
    with time_machine.travel(T0 + timedelta(hours=2), tick=False):
        assert sweepers.sweep_claims() == 1
