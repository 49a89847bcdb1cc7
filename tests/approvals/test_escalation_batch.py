"""The batched escalation sweep (PostgreSQL): the same outcome as the per-row sweep, once per
request under concurrency, never after a decision, and follow-up mails rendered exactly once."""

from __future__ import annotations

import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from aiosmtpd.controller import Controller
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from approvals import notifications, services, sweepers
from approvals.definitions import Escalation, approval
from approvals.models import ActionToken, ApprovalRequest, EscalationTimer
from integrations import webhooks
from integrations.mail import LINK_PLACEHOLDER
from integrations.models import OutboundEmail, WebhookDelivery, WebhookSubscription
from orchestration import engine
from orchestration.definitions import Workflow, registry
from orchestration.models import Event, StepRun, WorkflowInstance
from tests.conftest import Inbox, wait_for

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    users = {
        n: django_user_model.objects.create_user(n, email=f"{n}@example.com")
        for n in ["req", "ann", "fin1", "fin2", "boss"]
    }
    users["idle"] = django_user_model.objects.create_user(
        "idle", email="idle@example.com", is_active=False
    )
    users["mute"] = django_user_model.objects.create_user("mute", email="")
    finance = Group.objects.create(name="fin")
    # ann is assigned already, req asks (no self-approval), idle is inactive: no mail to them.
    finance.user_set.add(users["fin1"], users["fin2"], users["ann"], users["req"], users["idle"])
    return users


@pytest.fixture
def flow() -> Any:
    made: list[Workflow] = []

    def make(name: str, *, parallel: bool = False, **kwargs: Any) -> str:
        wf = Workflow(name)
        approval(wf, "decide", users=["ann"], title="Decide", requester=lambda c: "req", **kwargs)
        after = ["decide"]
        if parallel:
            approval(
                wf, "second", users=["ann"], title="Second", requester=lambda c: "req", **kwargs
            )
            after.append("second")
        wf.task(_noop, name="after", after=after)
        registry.register(wf)
        made.append(wf)
        return name

    yield make
    for wf in made:
        registry.unregister(wf.name, wf.version)


LEVELS = [
    Escalation(after=timedelta(hours=1), users=["boss", "idle", "mute", "ghost"], groups=["fin"]),
    Escalation(after=timedelta(hours=5), users=["fin1"]),
]


def at(moment: datetime) -> Any:
    return time_machine.travel(moment, tick=False)


def start(name: str, moment: datetime = T0) -> WorkflowInstance:
    with at(moment):
        return engine.instance_start(workflow=name, input={"n": 1})[0]


def render_all() -> int:
    """Play the worker's phase 2 for every unrendered mail."""
    ids = list(OutboundEmail.objects.filter(status="rendering").values_list("pk", flat=True))
    return notifications.mails_render(email_ids=ids)


ACTION_LINK = re.compile(r"/a/[^/\s\"'<>&]+/")


def outbox_dump() -> str:
    """Every column of every outbox row, as text."""
    return "\n".join(str(value) for row in OutboundEmail.objects.values() for value in row.values())


def assert_no_link_stored(escalated: Any) -> None:
    """Rendered escalation mails: the placeholder and what to make at delivery, no token, and
    nothing in any column of the outbox that opens /a/."""
    for m in escalated:
        assert m.status == "queued", m
        assert LINK_PLACEHOLDER in m.body_text and LINK_PLACEHOLDER in m.body_html
        assert m.link_ref["minter"] == notifications.LINK_MINTER
        assert (m.link_ref["request"], m.link_ref["purpose"]) == (m.request_id, "escalated")
    assert not ActionToken.objects.filter(purpose="escalated").exists()
    assert not ACTION_LINK.search(outbox_dump())


def outcome(instance: WorkflowInstance) -> dict[str, Any]:
    """What an escalation left for one instance, with ids and random link tokens masked."""
    requests = ApprovalRequest.objects.filter(instance=instance).order_by("step_name")
    ids = {str(r.pk): r.step_name for r in requests}

    def mask(text: str) -> str:
        text = re.sub(r"/a/[^/\s\"'<]+/", "/a/<token>/", text)
        text = re.sub(r"/inbox/(\d+)/", lambda m: f"/inbox/{ids[m.group(1)]}/", text)
        return re.sub(
            r"\.(\d+)\.(\d+)\.(\d+)@", lambda m: f".{ids[m.group(1)]}.{m.group(2)}.@", text
        )

    instance.refresh_from_db()
    events = list(Event.objects.filter(instance=instance).order_by("seq"))
    return {
        "requests": [
            (
                r.step_name,
                r.level,
                r.next_escalation_at,
                sorted(r.assignee_users.values_list("username", flat=True)),
                sorted(r.assignee_groups.values_list("name", flat=True)),
            )
            for r in requests
        ],
        "last_seq": instance.last_seq,
        "updated_at": instance.updated_at,
        "seqs": [e.seq for e in events],
        "events": sorted(
            (e.type, e.step, e.attempt, e.actor, repr(e.data), e.at)
            for e in events
            if e.type == "approval_escalated"
        ),
        "mails": sorted(
            (
                mask(m.message_id),
                m.kind,
                m.to,
                m.subject,
                mask(m.body_text),
                mask(m.body_html),
                m.status,
                m.render_context,
                m.link_ref and {**m.link_ref, "request": ids[str(m.link_ref["request"])]},
            )
            for m in OutboundEmail.objects.filter(instance_id=instance.pk)
        ),
        "tokens": sorted(
            (ids[str(t.request_id)], t.user.username, t.purpose, t.expires_at - t.created_at)
            for t in ActionToken.objects.filter(request__instance=instance)
        ),
    }


def test_batched_escalation_writes_what_the_per_row_sweep_writes(
    people, flow, settings, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    # After-commit work runs, except what would reach the broker (these tests play phase 2).
    monkeypatch.setattr("integrations.mail._enqueue", lambda pk: None)
    monkeypatch.setattr(sweepers, "mails_dispatch", lambda ids: None)
    monkeypatch.setattr(webhooks, "_enqueue", lambda pk, eta=None: None)
    monkeypatch.setattr("orchestration.journal.ring_doorbells", lambda bells: None)
    name = flow("t_eb_same", parallel=True, due=timedelta(days=2), escalate=LEVELS)
    subscription = WebhookSubscription.objects.create(
        name="esc", url="http://127.0.0.1:9/hook", event_types=["approval_escalated"]
    )
    webhooks.forget_subscriptions()
    results = {}
    for batched in (False, True):
        settings.SIGNOFF_ESCALATION_BATCHED = batched
        instance = start(name)
        with at(T0 + timedelta(hours=2)), django_capture_on_commit_callbacks(execute=True):
            assert sweepers.sweep_escalations() == 2  # both parallel approvals
        if batched:
            assert OutboundEmail.objects.filter(status="rendering").count() == 6
            with at(T0 + timedelta(hours=2)):
                assert render_all() == 6
                assert render_all() == 0
            assert_no_link_stored(
                OutboundEmail.objects.filter(instance_id=instance.pk, kind="approval_escalated")
            )
        results[batched] = outcome(instance)
        deliveries = WebhookDelivery.objects.filter(
            subscription=subscription, instance_id=instance.pk
        )
        results[batched]["webhooks"] = sorted(
            (d.event_seq, {k: v for k, v in d.payload.items() if k != "instance"})
            for d in deliveries
        )
        results[batched]["webhook_instances"] = [d.payload["instance"]["state"] for d in deliveries]
    per_row, batched = results[False], results[True]
    assert per_row == batched
    # and what that is: the second level is timed, boss and fin1/fin2 were mailed once each
    assert per_row["requests"][0][1:3] == (1, T0 + timedelta(hours=5))
    assert sorted({m[2][0] for m in per_row["mails"] if m[1] == "approval_escalated"}) == [
        "boss@example.com",
        "fin1@example.com",
        "fin2@example.com",
    ]
    assert per_row["seqs"] == list(range(1, per_row["last_seq"] + 1))
    assert len(per_row["webhooks"]) == 2


def test_a_level_the_batch_cannot_express_goes_the_per_row_way(people, flow) -> None:
    name = flow(
        "t_eb_replace",
        due=timedelta(days=2),
        escalate=[
            Escalation(after=timedelta(hours=1), groups=["fin"]),
            Escalation(after=timedelta(hours=2), users=["boss"], replace=True),
        ],
    )
    instance = start(name)
    with at(T0 + timedelta(hours=1)):
        assert sweepers.sweep_escalations() == 1
    with at(T0 + timedelta(hours=2)):
        assert sweepers.sweep_escalations() == 1
    request = ApprovalRequest.objects.get(instance=instance)
    assert request.level == 2 and request.next_escalation_at is None
    assert list(request.assignee_users.values_list("username", flat=True)) == ["boss"]
    boss_mail = OutboundEmail.objects.get(to=["boss@example.com"])
    assert boss_mail.status == "queued"  # per-row: rendered at once
    assert OutboundEmail.objects.filter(status="rendering").count() == 2  # fin1, fin2
    assert [e.data["level"] for e in Event.objects.filter(type="approval_escalated")] == [1, 2]


def test_per_row_path_when_the_database_is_not_postgresql(people, flow, monkeypatch) -> None:
    name = flow("t_eb_sqlite", due=timedelta(days=2), escalate=LEVELS[:1])
    instance = start(name)
    monkeypatch.setattr(connection, "vendor", "sqlite")
    assert not sweepers._batched()
    with at(T0 + timedelta(hours=1)):
        assert sweepers.sweep_escalations() == 1
    monkeypatch.undo()
    assert not OutboundEmail.objects.filter(status="rendering").exists()
    assert OutboundEmail.objects.filter(kind="approval_escalated").count() == 3
    assert_no_link_stored(OutboundEmail.objects.filter(kind="approval_escalated"))
    assert ApprovalRequest.objects.get(instance=instance).level == 1


def test_requests_in_many_chunks_and_a_request_with_nothing_left(people, flow) -> None:
    name = flow("t_eb_chunks", due=timedelta(days=2), escalate=LEVELS[:1])
    instances = [start(name) for _ in range(7)]
    # One request whose definition lost its levels (a new version would keep it): cleared.
    stale = ApprovalRequest.objects.get(instance=instances[0])
    ApprovalRequest.objects.filter(pk=stale.pk).update(level=1)
    with at(T0 + timedelta(hours=1)):
        assert sweepers.escalations_batch(now=timezone.now(), chunk=3) == 6
        assert sweepers.escalations_batch(now=timezone.now(), chunk=3) == 0
    stale.refresh_from_db()
    assert stale.next_escalation_at is None and stale.level == 1
    assert Event.objects.filter(type="approval_escalated").count() == 6
    assert OutboundEmail.objects.filter(status="rendering").count() == 18


def test_phase_two_renders_once_and_a_crashed_render_is_dispatched_again(
    people, flow, monkeypatch
) -> None:
    name = flow("t_eb_render", due=timedelta(days=2), escalate=LEVELS[:1])
    start(name)
    dispatched: list[list[int]] = []
    monkeypatch.setattr(sweepers, "mails_dispatch", lambda ids: dispatched.append(list(ids)))
    with at(T0 + timedelta(hours=1)):
        assert sweepers.sweep_escalations() == 1
    ids = list(OutboundEmail.objects.filter(status="rendering").values_list("pk", flat=True))
    assert len(ids) == 3

    # A render that dies half-way leaves nothing behind: no token, the rows still to render.
    real = notifications.email_render
    calls = {"n": 0}

    def dying(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed")
        return real(**kwargs)

    monkeypatch.setattr(notifications, "email_render", dying)
    with pytest.raises(RuntimeError):
        notifications.mails_render(email_ids=ids)
    monkeypatch.setattr(notifications, "email_render", real)
    assert OutboundEmail.objects.filter(status="rendering").count() == 3
    assert not ActionToken.objects.filter(purpose="escalated").exists()

    # The next sweep within the grace leaves them to their task; after it, sends them again.
    with at(T0 + timedelta(hours=1, seconds=30)):
        sweepers.sweep_escalations()
    assert dispatched == []
    with at(T0 + timedelta(hours=1, minutes=2)):
        assert sweepers.sweep_escalations() == 0
    assert sorted(dispatched[0]) == sorted(ids)

    enqueued: list[list[int]] = []
    monkeypatch.setattr(notifications, "emails_enqueue", lambda ids: enqueued.append(ids))
    assert notifications.mails_render(email_ids=ids) == 3
    assert notifications.mails_render(email_ids=ids) == 0  # a redelivered task
    assert_no_link_stored(OutboundEmail.objects.filter(pk__in=ids))  # tokens: at delivery


@pytest.mark.django_db(transaction=True)
def test_two_batched_sweeps_at_once_escalate_each_request_once(people, flow, monkeypatch) -> None:
    monkeypatch.setattr(sweepers, "mails_dispatch", lambda ids: None)
    name = flow("t_eb_race", parallel=True, due=timedelta(days=2), escalate=LEVELS[:1])
    instances = [start(name) for _ in range(30)]
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def run() -> None:
        barrier.wait()
        try:
            with at(T0 + timedelta(hours=1)):
                counts.append(sweepers.escalations_batch(now=timezone.now(), chunk=7))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with at(T0 + timedelta(hours=1)):
        counts.append(sweepers.sweep_escalations())  # what both skipped, if anything
    assert sum(counts) == 60
    assert ApprovalRequest.objects.filter(level=1).count() == 60
    assert Event.objects.filter(type="approval_escalated").count() == 60
    assert OutboundEmail.objects.filter(kind="approval_escalated").count() == 180
    for instance in instances:
        instance.refresh_from_db()
        seqs = list(Event.objects.filter(instance=instance).values_list("seq", flat=True))
        assert sorted(seqs) == list(range(1, instance.last_seq + 1))


@pytest.mark.django_db(transaction=True)
def test_a_decision_holding_the_instance_wins_over_the_sweep(people, flow, monkeypatch) -> None:
    monkeypatch.setattr(sweepers, "mails_dispatch", lambda ids: None)
    name = flow("t_eb_decide", due=timedelta(days=2), escalate=LEVELS[:1])
    deciding, other = start(name), start(name)
    request = ApprovalRequest.objects.get(instance=deciding)
    locked, release = threading.Event(), threading.Event()

    def decide() -> None:
        try:
            with transaction.atomic():
                # The decision's own lock order: the instance, then the request.
                engine.lock_instance(instance_id=deciding.pk)
                locked.set()
                release.wait(10)
            with at(T0 + timedelta(hours=1)):
                services.approval_decide(
                    request_id=request.pk, user=people["ann"], outcome="approve"
                )
        finally:
            connection.close()

    thread = threading.Thread(target=decide)
    thread.start()
    assert locked.wait(10)
    with at(T0 + timedelta(hours=1)):
        assert sweepers.sweep_escalations() == 1  # the other one; the held one is skipped
    release.set()
    thread.join()
    with at(T0 + timedelta(hours=1, minutes=1)):
        assert sweepers.sweep_escalations() == 0  # decided meanwhile: not escalated
    assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"
    assert ApprovalRequest.objects.get(pk=request.pk).level == 0
    assert ApprovalRequest.objects.get(instance=other).level == 1
    assert not Event.objects.filter(instance=deciding, type="approval_escalated").exists()


@pytest.mark.django_db(transaction=True)
def test_a_row_referring_to_the_request_does_not_hide_it_from_the_sweep(
    people, flow, monkeypatch
) -> None:
    """A transaction that refers to the request (a mail delivery minting its token takes a
    KEY SHARE lock on it when it commits) must not make the sweep skip the request: the sweep
    locks FOR NO KEY UPDATE, which KEY SHARE does not block. Here another connection holds
    that lock for the whole sweep."""
    monkeypatch.setattr(sweepers, "mails_dispatch", lambda ids: None)
    name = flow("t_eb_keyshare", due=timedelta(days=2), escalate=LEVELS[:1])
    instance = start(name)
    request = ApprovalRequest.objects.get(instance=instance)
    holding, release = threading.Event(), threading.Event()

    def hold_key_share() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM approvals_approvalrequest WHERE id = %s FOR KEY SHARE",
                    [request.pk],
                )
                holding.set()
                release.wait(20)
        finally:
            connection.close()

    thread = threading.Thread(target=hold_key_share)
    thread.start()
    try:
        assert holding.wait(10)
        with at(T0 + timedelta(hours=1)):
            assert sweepers.sweep_escalations() == 1
    finally:
        release.set()
        thread.join()
    assert ApprovalRequest.objects.get(pk=request.pk).level == 1


@pytest.mark.django_db(transaction=True)
def test_the_sweep_holding_the_instance_makes_a_decision_wait_not_fail(
    people, flow, monkeypatch
) -> None:
    monkeypatch.setattr(sweepers, "mails_dispatch", lambda ids: None)
    name = flow("t_eb_wait", due=timedelta(days=2), escalate=LEVELS[:1])
    instance = start(name)
    request = ApprovalRequest.objects.get(instance=instance)
    real = sweepers._escalate_chunk
    inside, decided = threading.Event(), threading.Event()

    def slow_chunk(rows: Any) -> Any:
        inside.set()
        decided.wait(1)  # the decision blocks on our lock meanwhile
        return real(rows)

    monkeypatch.setattr(sweepers, "_escalate_chunk", slow_chunk)

    def decide() -> None:
        try:
            inside.wait(10)
            services.approval_decide(request_id=request.pk, user=people["boss"], outcome="approve")
            decided.set()
        finally:
            connection.close()

    thread = threading.Thread(target=decide)
    thread.start()
    with at(T0 + timedelta(hours=1)):
        assert sweepers.sweep_escalations() == 1
    thread.join()
    # boss could decide only once escalated to: the decision waited for the sweep's commit.
    request.refresh_from_db()
    assert request.state == "approved" and request.level == 1
    seqs = list(Event.objects.filter(instance=instance).values_list("seq", flat=True))
    assert sorted(seqs) == list(range(1, len(seqs) + 1))


@pytest.fixture
def worker_mailbox(worker: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real worker, restarted to send its mail to an SMTP server on loopback (aiosmtpd):
    what it delivered, as received. Restarted again afterwards with the usual settings."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("EMAIL_URL", f"smtp://127.0.0.1:{port}")
    worker.restart()
    try:
        yield inbox
    finally:
        monkeypatch.undo()
        worker.restart()
        controller.stop()


def _received(inbox: Any, to: str) -> list[Any]:
    return [m for m in inbox.messages if m["To"] == to]


@pytest.mark.e2e
def test_worker_renders_the_follow_ups_and_the_escalated_persons_link_decides(
    django_user_model, worker_mailbox
) -> None:
    # The demo expense (the worker knows its definition): managers, then admin after 2 days.
    users = {
        n: django_user_model.objects.create_user(n, email=f"{n}@example.com")
        for n in ["alice", "bob", "admin"]
    }
    Group.objects.create(name="managers").user_set.add(users["bob"])
    Group.objects.create(name="finance")
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 80, "currency": "EUR", "description": "Taxi", "requester": "alice"},
        started_by=users["alice"],
    )
    request = wait_for(
        lambda: ApprovalRequest.objects.filter(instance=instance).first(),
        message="the manager approval requested",
    )
    wait_for(lambda: _received(worker_mailbox, "bob@example.com"), message="bob's mail sent")
    later = request.next_escalation_at + timedelta(minutes=1)
    assert sweepers.sweep_escalations(now=later) == 1
    escalated = OutboundEmail.objects.filter(kind="approval_escalated")
    wait_for(
        lambda: escalated.exists() and not escalated.exclude(status="sent").exists(),
        message="escalation mail rendered and sent by the worker",
    )
    mail = escalated.get()
    assert mail.to == ["admin@example.com"]
    assert mail.message_id.startswith(f"<signoff.escalated.{request.pk}.{users['admin'].pk}.1@")
    assert mail.subject == "Escalated to you: Expense: 80 EUR for Taxi"
    assert ActionToken.objects.filter(purpose="escalated", user=users["admin"]).count() == 1
    # the link comes from the mail received over SMTP; the outbox holds the placeholder only
    (received,) = _received(worker_mailbox, "admin@example.com")
    assert received["Message-ID"] == mail.message_id
    text = received.get_body(preferencelist=("plain",)).get_content()
    url = ACTION_LINK.search(text).group(0)
    (bob_received,) = _received(worker_mailbox, "bob@example.com")
    bob_url = ACTION_LINK.search(bob_received.get_body(("plain",)).get_content()).group(0)
    assert LINK_PLACEHOLDER in mail.body_text
    dump = outbox_dump()
    assert not ACTION_LINK.search(dump)
    assert url.split("/")[2] not in dump and bob_url.split("/")[2] not in dump

    client = Client(enforce_csrf_checks=True)
    page = client.get(url)
    assert page.status_code == 200 and b"Taxi" in page.content
    csrf = client.cookies["csrftoken"].value
    done = client.post(url, {"outcome": "approve", "comment": "ok", "csrfmiddlewaretoken": csrf})
    assert done.status_code == 200
    again = client.post(url, {"outcome": "approve", "comment": "ok", "csrfmiddlewaretoken": csrf})
    assert again.status_code == 410
    request.refresh_from_db()
    assert request.state == "approved"
    assert request.decisions.get().decided_by == users["admin"]
    # bob's link (still assigned, unused) now says the request is closed
    assert Client().get(bob_url).status_code == 410
    wait_for(
        lambda: WorkflowInstance.objects.get(pk=instance.pk).state == "succeeded",
        message="instance finished after the mailed decision",
    )
    assert StepRun.objects.get(instance=instance, name="pay").state == "succeeded"


def timer_of(request: ApprovalRequest) -> datetime | None:
    row = EscalationTimer.objects.filter(request_id=request.pk).first()
    return row.due_at if row else None


def test_the_timer_row_follows_the_request_on_every_path(people, flow) -> None:
    name = flow("t_eb_timer", due=timedelta(days=2), escalate=LEVELS)
    batched, per_row, decided, sent_back = (start(name) for _ in range(4))
    requests = {i: ApprovalRequest.objects.get(instance=i) for i in (batched, per_row, decided)}
    for request in requests.values():
        assert timer_of(request) == request.next_escalation_at == T0 + timedelta(hours=1)
    # Decided: the request leaves pending, its timer stays until due, then the sweep drops it.
    services.approval_decide(
        request_id=requests[decided].pk, user=people["ann"], outcome="approve", comment=""
    )
    assert timer_of(requests[decided]) is not None
    # Sent back for changes: gone at once.
    back = ApprovalRequest.objects.get(instance=sent_back)
    services.approval_request_changes(
        request_id=back.pk, user=people["ann"], comment="fix it", channel="web"
    )
    assert timer_of(back) is None
    with at(T0 + timedelta(hours=1)):
        assert sweepers.escalations_batch(now=timezone.now()) == 2
    for request in requests.values():
        request.refresh_from_db()
    assert timer_of(requests[decided]) is None
    for request in (requests[batched], requests[per_row]):
        assert request.level == 1 and request.next_escalation_at == T0 + timedelta(hours=5)
        assert timer_of(request) == request.next_escalation_at
    # The per-row path (the batch's fallback, SQLite) keeps it too; the last level clears it.
    row = requests[per_row]
    with at(T0 + timedelta(hours=5)):
        assert sweepers._escalate_rows([(row.pk, row.step_run_id)], timezone.now()) == 1
    row.refresh_from_db()
    assert row.level == 2 and row.next_escalation_at is None and timer_of(row) is None
    with at(T0 + timedelta(hours=6)):
        assert sweepers.sweep_escalations() == 1
    requests[batched].refresh_from_db()
    assert requests[batched].level == 2 and requests[batched].next_escalation_at is None
    assert not EscalationTimer.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_on_two_connections_each_escalate_each_request_exactly_once(
    people, flow, monkeypatch
) -> None:
    """Two whole sweeps at once (as two beat processes would run them), each running its
    chunks on two connections: four connections competing for the same 40 due requests."""
    monkeypatch.setattr(sweepers, "mails_dispatch", lambda ids: None)
    name = flow("t_eb_race2", parallel=True, due=timedelta(days=2), escalate=LEVELS[:1])
    instances = [start(name) for _ in range(20)]
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def run() -> None:
        barrier.wait()
        try:
            counts.append(
                sweepers.escalations_batch(now=T0 + timedelta(hours=1), chunk=3, connections=2)
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with at(T0 + timedelta(hours=1)):
        counts.append(sweepers.sweep_escalations())  # what all of them skipped, if anything
    assert sum(counts) == 40
    assert ApprovalRequest.objects.filter(level=1).count() == 40
    events = Event.objects.filter(type="approval_escalated")
    assert events.count() == 40
    assert len({(e.instance_id, e.step) for e in events}) == 40  # each request once
    assert OutboundEmail.objects.filter(kind="approval_escalated").count() == 120
    assert not EscalationTimer.objects.exists()  # the last level: no timer left
    for instance in instances:
        instance.refresh_from_db()
        seqs = list(Event.objects.filter(instance=instance).values_list("seq", flat=True))
        assert sorted(seqs) == list(range(1, instance.last_seq + 1))
