"""Nobody waits forever: reminders, escalations and expiry, with time travel (no sleeping)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.db import connection
from django.test import override_settings

from approvals import services, sweepers
from approvals.definitions import Escalation, approval
from approvals.models import ActionToken, ApprovalRequest
from integrations import mail
from integrations.models import OutboundEmail
from orchestration import engine
from orchestration.calendar import add_duration
from orchestration.definitions import DefinitionError, Registry, Workflow, registry
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def people(django_user_model):
    users = {
        n: django_user_model.objects.create_user(n, email=f"{n}@example.com")
        for n in ["req", "ann", "fin1", "fin2", "boss"]
    }
    finance = Group.objects.create(name="fin")
    finance.user_set.add(users["fin1"], users["fin2"])
    return users


@pytest.fixture
def flow():
    made = []

    def make(name: str, **kwargs) -> str:  # noqa: ANN003
        wf = Workflow(name)
        approval(wf, "decide", users=["ann"], title="Decide", requester=lambda c: "req", **kwargs)
        wf.task(_noop, name="after", after=["decide"])
        registry.register(wf)
        made.append(wf)
        return name

    yield make
    for wf in made:
        registry.unregister(wf.name, wf.version)


def mails(kind: str | None = None) -> list[tuple[str, str]]:
    qs = OutboundEmail.objects.order_by("id")
    if kind:
        qs = qs.filter(kind=f"approval_{kind}")
    return [(m.kind.removeprefix("approval_"), m.to[0]) for m in qs]


def events(instance: WorkflowInstance, prefix: str = "approval_") -> list[str]:
    return [
        e.type
        for e in Event.objects.filter(instance=instance, type__startswith=prefix).order_by("seq")
    ]


def at(hours: float):  # noqa: ANN201
    return time_machine.travel(T0 + timedelta(hours=hours), tick=False)


def sweep(hours: float) -> dict[str, int]:
    with at(hours):
        return sweepers.sweep_all()


def test_due_reminders_and_two_escalation_levels_at_each_moment(people, flow) -> None:
    name = flow(
        "t_tm_full",
        due=timedelta(days=2),
        remind_every=timedelta(days=1),
        escalate=[
            Escalation(after=timedelta(hours=12), groups=["fin"]),
            Escalation(after=timedelta(hours=36), users=["boss"], replace=True),
        ],
    )
    with at(0):
        instance, _ = engine.instance_start(workflow=name)
    request = ApprovalRequest.objects.get(instance=instance)
    assert request.due_at == T0 + timedelta(days=2)
    assert request.next_reminder_at == T0 + timedelta(days=1)
    assert request.next_escalation_at == T0 + timedelta(hours=12)
    assert mails() == [("assigned", "ann@example.com")]

    assert sweep(11.9) == {"reminders": 0, "escalations": 0, "expiry": 0}
    assert sweep(12) == {"reminders": 0, "escalations": 1, "expiry": 0}
    assert sorted(mails("escalated")) == [
        ("escalated", "fin1@example.com"),
        ("escalated", "fin2@example.com"),
    ]
    assert sweep(12.5) == {"reminders": 0, "escalations": 0, "expiry": 0}  # once only

    assert sweep(24) == {"reminders": 1, "escalations": 0, "expiry": 0}
    assert sorted(mails("reminder")) == [
        ("reminder", "ann@example.com"),
        ("reminder", "fin1@example.com"),
        ("reminder", "fin2@example.com"),
    ]

    # ann's mails leave (their links are minted at delivery): the escalation that replaces
    # her must kill those links.
    with at(30):
        mail.emails_deliver(
            email_ids=list(
                OutboundEmail.objects.filter(to=["ann@example.com"]).values_list("pk", flat=True)
            )
        )
    old_links = set(ActionToken.objects.filter(user__username="ann").values_list("pk", flat=True))
    assert len(old_links) == 2  # assigned, reminder
    assert sweep(36) == {"reminders": 0, "escalations": 1, "expiry": 0}
    assert mails("escalated")[-1] == ("escalated", "boss@example.com")
    request.refresh_from_db()
    assert request.level == 2 and request.next_escalation_at is None
    assert set(request.assignee_users.values_list("username", flat=True)) == {"boss"}
    assert not request.assignee_groups.exists()
    assert all(ActionToken.objects.get(pk=pk).superseded_at for pk in old_links)
    # the second daily reminder would fall on the due time: none is sent
    assert request.next_reminder_at is None
    assert sweep(47.9) == {"reminders": 0, "escalations": 0, "expiry": 0}

    assert sweep(48) == {"reminders": 0, "escalations": 0, "expiry": 1}
    request.refresh_from_db()
    instance.refresh_from_db()
    assert request.state == "expired"
    assert instance.state == "failed" and instance.error["reason"] == "expired"
    assert mails("expired") == [("expired", "req@example.com")]
    assert events(instance) == [
        "approval_requested",
        "approval_escalated",
        "approval_reminded",
        "approval_escalated",
        "approval_expired",
    ]
    assert sweep(100) == {"reminders": 0, "escalations": 0, "expiry": 0}


@pytest.mark.parametrize(
    ("on_expire", "instance_state", "step_state"),
    [
        ("reject", "failed", "failed"),
        ("fail", "failed", "failed"),
        ("approve", "running", "succeeded"),
        ("cancel_instance", "cancelled", "cancelled"),
    ],
)
def test_each_on_expire_action(people, flow, on_expire, instance_state, step_state) -> None:
    name = flow(f"t_tm_exp_{on_expire}", due=timedelta(hours=4), on_expire=on_expire)
    with at(0):
        instance, _ = engine.instance_start(workflow=name)
    assert sweep(4) == {"reminders": 0, "escalations": 0, "expiry": 1}
    instance.refresh_from_db()
    step = StepRun.objects.get(instance=instance, name="decide")
    assert (instance.state, step.state) == (instance_state, step_state)
    if on_expire == "approve":
        assert step.output["decision"] == "approved" and step.output["expired"] is True
        assert StepRun.objects.get(instance=instance, name="after").state == "scheduled"


def test_rejection_that_continues_also_continues_on_expiry(people, flow, signoff_kit) -> None:
    name = flow("t_tm_exp_cont", due=timedelta(hours=1), on_reject="continue")
    handle = signoff_kit.start(name).run_until_idle()
    signoff_kit.skip(timedelta(hours=1))
    step = handle.step("decide")
    assert step.state == "succeeded" and step.output["decision"] == "rejected"
    assert handle.state == "succeeded"  # and the step after it ran
    handle.assert_history("approval_expired:decide", "step_succeeded:after", "instance_succeeded")


def test_a_decision_between_timers_stops_the_later_ones(people, flow) -> None:
    name = flow(
        "t_tm_stop",
        due=timedelta(days=2),
        remind_every=timedelta(hours=6),
        escalate=[Escalation(after=timedelta(hours=12), groups=["fin"])],
    )
    with at(0):
        instance, _ = engine.instance_start(workflow=name)
    assert sweep(6)["reminders"] == 1
    request = ApprovalRequest.objects.get(instance=instance)
    with at(7):
        services.approval_decide(request_id=request.pk, user=people["ann"], outcome="approve")
    for hours in (12, 18, 48, 96):
        assert sweep(hours) == {"reminders": 0, "escalations": 0, "expiry": 0}
    assert mails("escalated") == []
    assert mails("decided") == [("decided", "req@example.com")]
    assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"


def test_business_hours_due_on_friday_afternoon_falls_on_tuesday() -> None:
    friday = datetime(2026, 3, 6, 15, 0, tzinfo=UTC)
    assert add_duration(friday, timedelta(days=2), business=True) == datetime(
        2026, 3, 10, 15, 0, tzinfo=UTC
    )
    assert add_duration(friday, timedelta(hours=3), business=True) == datetime(
        2026, 3, 9, 10, 0, tzinfo=UTC
    )
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    assert add_duration(saturday, timedelta(hours=1), business=True) == datetime(
        2026, 3, 9, 10, 0, tzinfo=UTC
    )
    with override_settings(SIGNOFF_HOLIDAYS=["2026-03-09"]):
        assert add_duration(friday, timedelta(days=1), business=True) == datetime(
            2026, 3, 10, 15, 0, tzinfo=UTC
        )


def test_business_hours_apply_to_approval_timers(people, flow) -> None:
    name = flow("t_tm_biz", due=timedelta(days=2), business_hours=True)
    with time_machine.travel(datetime(2026, 3, 6, 15, 0, tzinfo=UTC), tick=False):
        instance, _ = engine.instance_start(workflow=name)
    request = ApprovalRequest.objects.get(instance=instance)
    assert request.due_at == datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def test_bad_timer_definitions_are_refused() -> None:
    wf = Workflow("t_tm_bad")
    approval(
        wf,
        "decide",
        users=["a"],
        due=timedelta(hours=1),
        escalate=[Escalation(after=timedelta(hours=2), users=["b"])],
    )
    with pytest.raises(DefinitionError, match="escalation level 1 must come before due"):
        Registry().register(wf)
    wf = Workflow("t_tm_bad2")
    approval(wf, "decide", users=["a"], on_expire="shrug")
    with pytest.raises(DefinitionError, match="on_expire must be one of"):
        Registry().register(wf)
    wf = Workflow("t_tm_bad3")
    approval(
        wf,
        "decide",
        users=["a"],
        escalate=[
            Escalation(after=timedelta(hours=2), users=["b"]),
            Escalation(after=timedelta(hours=1), users=["c"]),
        ],
    )
    with pytest.raises(DefinitionError, match="level 2 must come after the previous one"):
        Registry().register(wf)


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_escalate_each_request_once(people, flow, worker) -> None:
    name = flow(
        "t_tm_race",
        due=timedelta(days=2),
        escalate=[Escalation(after=timedelta(hours=1), users=["boss"])],
    )
    with at(0):
        instances = [engine.instance_start(workflow=name)[0] for _ in range(20)]
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def run() -> None:
        barrier.wait()
        try:
            with at(2):
                counts.append(sweepers.sweep_escalations())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    remaining = 20 - sum(counts)
    if remaining:  # rows one sweep skipped (locked by the other) are handled by the next run
        assert sweep(2)["escalations"] == remaining
    assert ApprovalRequest.objects.filter(level=1).count() == 20
    assert Event.objects.filter(type="approval_escalated").count() == 20
    assert len(mails("escalated")) == 20
    for instance in instances:
        seqs = list(Event.objects.filter(instance=instance).values_list("seq", flat=True))
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    # The worker renders and delivers the 20 mails after the sweeps: let it finish, or its
    # writes race the teardown's TRUNCATE (a deadlock seen once in CI).
    wait_for(
        lambda: not OutboundEmail.objects.filter(status__in=["rendering", "queued"]).exists(),
        timeout=60,
        message="the escalation mails delivered",
    )


def test_upcoming_timers_say_what_happens_when(people, flow) -> None:
    from approvals.selectors import upcoming_timers

    name = flow(
        "t_tm_upcoming",
        due=timedelta(days=2),
        remind_every=timedelta(days=1),
        escalate=[Escalation(after=timedelta(hours=3), groups=["fin"])],
    )
    with at(0):
        instance, _ = engine.instance_start(workflow=name)
    request = ApprovalRequest.objects.get(instance=instance)
    assert [(i["at"] - T0, i["what"]) for i in upcoming_timers(request)] == [
        (timedelta(hours=3), "escalates to fin"),
        (timedelta(days=1), "reminder to the assignees"),
        (timedelta(days=2), "expires: rejected"),
    ]


def test_demo_time_factor_compresses_timers(people, flow, settings) -> None:
    settings.SIGNOFF_DEMO_TIME_FACTOR = 1440  # a day becomes a minute
    name = flow("t_tm_demo", due=timedelta(days=2))
    with at(0):
        instance, _ = engine.instance_start(workflow=name)
    assert ApprovalRequest.objects.get(instance=instance).due_at == T0 + timedelta(minutes=2)
