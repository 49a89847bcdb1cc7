"""Mail that respects time: immediate mail or one daily digest at the person's hour in their
time zone, and the signed preferences link in every mail (time travel, no sleeping)."""

from __future__ import annotations

import re
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core import signing
from django.db import connection, transaction
from django.test import Client

from approvals import mail_preferences, notifications, services, sweepers
from approvals.definitions import Escalation, approval
from approvals.models import ApprovalRequest, MailPreference, time_zone_validate
from integrations import mail
from integrations.models import OutboundEmail
from orchestration import engine
from orchestration.definitions import Workflow, registry
from orchestration.errors import InvalidInput

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # a Monday: 06:00 in Berlin, 00:00 in New York
BASE = "https://signoff.example"


def _noop(ctx):  # noqa: ANN001, ANN202
    return {"ok": True}


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    users = {
        n: django_user_model.objects.create_user(n, email=f"{n}@example.com", password="pw-123")
        for n in ["req", "ann", "bob", "boss", "carol"]
    }
    Group.objects.create(name="mailfin").user_set.add(users["carol"])
    return users


@pytest.fixture
def flow():  # noqa: ANN201
    made = []

    def make(name: str, users: tuple[str, ...] = ("ann", "bob"), **kwargs: Any) -> str:
        wf = Workflow(name)
        approval(
            wf,
            "decide",
            users=list(users),
            title="Request {input[n]}",
            requester=lambda c: "req",
            **kwargs,
        )
        wf.task(_noop, name="after", after=["decide"])
        registry.register(wf)
        made.append(wf)
        return name

    yield make
    for wf in made:
        registry.unregister(wf.name, wf.version)


def at(moment: datetime):  # noqa: ANN201
    return time_machine.travel(moment, tick=False)


def start(workflow: str, n: str) -> ApprovalRequest:
    instance, _ = engine.instance_start(workflow=workflow, input={"n": n})
    return ApprovalRequest.objects.get(instance=instance)


def mails(kind: str | None = None) -> list[tuple[str, str]]:
    qs = OutboundEmail.objects.order_by("id")
    if kind:
        qs = qs.filter(kind=f"approval_{kind}")
    return [(m.kind.removeprefix("approval_"), m.to[0]) for m in qs]


def digest_for(user: Any, hour: int, zone: str) -> MailPreference:
    return mail_preferences.mail_preference_set(
        user=user, mode="digest", digest_hour=hour, time_zone=zone
    )


# -- the preference ------------------------------------------------------------------------------


def test_without_a_choice_everyone_gets_each_mail_at_once(people: dict[str, Any]) -> None:
    preference = mail_preferences.preference_of(people["ann"])
    assert preference.pk is None and preference.mode == "immediate"
    assert preference.digest_due_at(T0) is None
    assert mail_preferences.digest_user_ids({people["ann"].pk}) == set()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mode": "weekly"}, "mode"),
        ({"mode": "digest", "digest_hour": 24}, "digest_hour"),
        ({"mode": "digest", "digest_hour": -1}, "digest_hour"),
        ({"mode": "digest", "digest_hour": True}, "digest_hour"),
        ({"mode": "digest", "time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"mode": "digest", "time_zone": "../../etc/passwd"}, "time_zone"),
        ({"mode": "digest", "time_zone": ""}, "time_zone"),
    ],
)
def test_a_bad_mode_hour_or_time_zone_is_refused_and_changes_nothing(
    people: dict[str, Any], changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        mail_preferences.mail_preference_set(user=people["ann"], **changes)
    assert field in refused.value.errors
    assert not MailPreference.objects.exists()


def test_the_model_validates_the_time_zone_with_zoneinfo(people: dict[str, Any]) -> None:
    time_zone_validate("Europe/Berlin")
    time_zone_validate("UTC")
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        time_zone_validate("Europe/Atlantis")
    row = MailPreference(user=people["ann"], mode="digest", digest_hour=30, time_zone="Nowhere")
    with pytest.raises(ValidationError) as invalid:
        row.full_clean()
    assert {"digest_hour", "time_zone"} <= set(invalid.value.message_dict)


def test_the_next_digest_is_the_chosen_hour_in_the_persons_zone(people: dict[str, Any]) -> None:
    with at(T0):
        berlin = digest_for(people["ann"], 8, "Europe/Berlin")
        new_york = digest_for(people["bob"], 8, "America/New_York")
    assert berlin.next_digest_at == datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    assert new_york.next_digest_at == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
    # Today's sent: tomorrow. A day whose hour does not exist (DST starts in New York on
    # 8 March at 02:00) falls an hour later.
    new_york.last_digest_on = date(2026, 3, 7)
    new_york.digest_hour = 2
    assert new_york.digest_due_at(datetime(2026, 3, 7, 12, 0, tzinfo=UTC)) == datetime(
        2026, 3, 8, 7, 0, tzinfo=UTC
    )
    # Chosen after today's hour without a digest today: due at once.
    with at(T0 + timedelta(hours=5)):
        late = digest_for(people["carol"], 8, "Europe/Berlin")
    assert late.next_digest_at == datetime(2026, 3, 2, 7, 0, tzinfo=UTC)


# -- which mails wait for the digest -------------------------------------------------------------


def test_new_request_and_reminder_mails_wait_for_a_digest_reader_only(
    people: dict[str, Any], flow: Any
) -> None:
    name = flow("t_mp_held", remind_every=timedelta(days=1), due=timedelta(days=3))
    with at(T0):
        digest_for(people["ann"], 8, "Europe/Berlin")
        start(name, "1")
    assert mails() == [("assigned", "bob@example.com")]
    with at(T0 + timedelta(days=1)):
        assert sweepers.sweep_reminders() == 1
    assert mails("reminder") == [("reminder", "bob@example.com")]


def test_a_request_due_before_the_next_digest_is_mailed_at_once(
    people: dict[str, Any], flow: Any
) -> None:
    urgent = flow("t_mp_urgent", users=("ann",), due=timedelta(hours=1))
    relaxed = flow("t_mp_relaxed", users=("ann",), due=timedelta(hours=3))
    with at(T0):  # 06:00 in Berlin; ann's digest at 08:00 (07:00 UTC)
        digest_for(people["ann"], 8, "Europe/Berlin")
        start(urgent, "1")  # due 06:00 UTC
        start(relaxed, "2")  # due 08:00 UTC: waits for the digest
    assert mails() == [("assigned", "ann@example.com")]
    assert OutboundEmail.objects.get().subject.endswith("Request 1")


def test_escalations_comments_and_the_requesters_news_stay_immediate(
    people: dict[str, Any], flow: Any
) -> None:
    name = flow(
        "t_mp_esc",
        users=("ann",),
        due=timedelta(days=3),
        escalate=[Escalation(after=timedelta(hours=12), users=["boss"])],
    )
    with at(T0):
        for person in ("ann", "boss", "req"):
            digest_for(people[person], 8, "Europe/Berlin")
        request = start(name, "1")
    assert mails() == []  # ann reads the digest
    with at(T0 + timedelta(hours=12)):
        assert sweepers.sweep_escalations() == 1
    assert mails("escalated") == [("escalated", "boss@example.com")]
    with at(T0 + timedelta(hours=13)):
        services.approval_decide(request_id=request.pk, user=people["boss"], outcome="approve")
    assert mails("decided") == [("decided", "req@example.com")]


# -- the digest sweeper --------------------------------------------------------------------------


def test_one_digest_per_local_day_at_the_chosen_hour_in_two_time_zones(
    people: dict[str, Any], flow: Any
) -> None:
    name = flow("t_mp_zones", due=timedelta(days=5))
    with at(T0):
        digest_for(people["ann"], 8, "Europe/Berlin")  # 07:00 UTC
        digest_for(people["bob"], 8, "America/New_York")  # 13:00 UTC
        digest_for(people["carol"], 8, "Europe/Berlin")  # nothing pending for her
        start(name, "1")

    def sweep(moment: datetime) -> list[str]:
        digests = OutboundEmail.objects.filter(kind="approval_digest").order_by("id")
        before = digests.count()
        with at(moment):
            sweepers.sweep_digests()
        return [m.to[0] for m in digests[before:]]

    day = datetime(2026, 3, 2, tzinfo=UTC)
    assert sweep(day + timedelta(hours=6, minutes=59)) == []  # 07:59 in Berlin
    assert sweep(day + timedelta(hours=7)) == ["ann@example.com"]
    assert sweep(day + timedelta(hours=7, minutes=5)) == []  # the same day: nothing
    assert sweep(day + timedelta(hours=12, minutes=59)) == []  # 07:59 in New York
    assert sweep(day + timedelta(hours=13, minutes=4)) == ["bob@example.com"]
    assert sweep(day + timedelta(hours=23, minutes=30)) == []  # 00:30 in Berlin, before 8
    assert sweep(day + timedelta(days=1, hours=7, minutes=2)) == ["ann@example.com"]
    assert sweep(day + timedelta(days=1, hours=13)) == ["bob@example.com"]
    ids = sorted(OutboundEmail.objects.filter(kind="approval_digest").values_list("message_id"))
    assert [re.sub(r"@.*", "", i[0]).split(".", 2)[2] for i in ids] == sorted(
        [
            f"{people['ann'].pk}.2026-03-02",
            f"{people['bob'].pk}.2026-03-02",
            f"{people['ann'].pk}.2026-03-03",
            f"{people['bob'].pk}.2026-03-03",
        ]
    )
    # Nothing pending for carol: no mail, and her day counts as done.
    carol = MailPreference.objects.get(user=people["carol"])
    assert carol.last_digest_on == date(2026, 3, 3)
    assert carol.next_digest_at == datetime(2026, 3, 4, 7, 0, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rung")  # no doorbell to a worker left running by an earlier test
def test_a_repeated_or_concurrent_sweep_sends_one_digest(
    people: dict[str, Any], flow: Any, django_db_blocker: Any
) -> None:
    name = flow("t_mp_once", due=timedelta(days=5))
    with at(T0):
        preference = digest_for(people["ann"], 8, "Europe/Berlin")
        start(name, "1")
    moment = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with django_db_blocker.unblock(), transaction.atomic():
            MailPreference.objects.select_for_update().get(pk=preference.pk)
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        with at(moment):
            assert sweepers.sweep_digests() == 0  # held by another sweep: skipped, not waited
    finally:
        release.set()
        holder.join()
    with at(moment):
        assert sweepers.sweep_digests() == 1
        assert sweepers.sweep_digests() == 0
    # The Message-ID is fixed per person and day: queueing that day's digest again adds nothing.
    with at(moment):
        notifications.notify_digest(
            people["ann"],
            list(ApprovalRequest.objects.all()),
            day=date(2026, 3, 2),
            total=1,
            now=moment,
            time_zone="Europe/Berlin",
        )
    assert mails("digest") == [("digest", "ann@example.com")]


def test_back_to_immediate_means_no_digest(people: dict[str, Any], flow: Any) -> None:
    name = flow("t_mp_back", due=timedelta(days=5))
    with at(T0):
        digest_for(people["ann"], 8, "Europe/Berlin")
        start(name, "1")
        mail_preferences.mail_preference_set(user=people["ann"], mode="immediate")
    with at(T0 + timedelta(hours=3)):
        assert sweepers.sweep_digests() == 0
        start(name, "2")
    assert sorted(mails("assigned")) == [
        ("assigned", "ann@example.com"),
        ("assigned", "bob@example.com"),
        ("assigned", "bob@example.com"),
    ]


# -- the signed preferences link ------------------------------------------------------------------


def link_of(user: Any) -> str:
    return f"/mail/{mail_preferences.preferences_token(user.pk)}/"


def state() -> list[tuple[Any, ...]]:
    return sorted(
        MailPreference.objects.values_list(
            "user_id", "mode", "digest_hour", "time_zone", "last_digest_on"
        )
    )


def test_the_link_shows_the_preference_and_get_changes_nothing(people: dict[str, Any]) -> None:
    client = Client()
    response = client.get(link_of(people["ann"]))
    assert response.status_code == 200
    assert b"each mail at once" in response.content and b"ann" in response.content
    assert b'value="digest"' in response.content
    assert state() == []
    assert "_auth_user_id" not in client.session  # no login made


def test_a_post_through_the_link_changes_only_that_persons_mode(people: dict[str, Any]) -> None:
    mail_preferences.mail_preference_set(
        user=people["ann"], mode="immediate", digest_hour=17, time_zone="Asia/Tokyo"
    )
    digest_for(people["bob"], 9, "Europe/Berlin")
    before_bob = [row for row in state() if row[0] == people["bob"].pk]
    client = Client(enforce_csrf_checks=True)
    link = link_of(people["ann"])
    client.get(link)
    token = client.cookies["csrftoken"].value
    response = client.post(link, {"mode": "digest", "csrfmiddlewaretoken": token})
    assert response.status_code == 200 and b"Saved: one daily digest" in response.content
    ann = MailPreference.objects.get(user=people["ann"])
    assert (ann.mode, ann.digest_hour, ann.time_zone) == ("digest", 17, "Asia/Tokyo")
    assert [row for row in state() if row[0] == people["bob"].pk] == before_bob
    assert "_auth_user_id" not in client.session
    # Without the page's CSRF token: refused, nothing changed.
    before = state()
    assert Client(enforce_csrf_checks=True).post(link, {"mode": "immediate"}).status_code == 403
    assert state() == before


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_tampered_link_is_refused_and_changes_nothing(
    people: dict[str, Any], method: str
) -> None:
    token = mail_preferences.preferences_token(people["ann"].pk)
    payload, _, signature = token.partition(":")
    # Someone else's id under ann's signature, a cut signature, garbage, a different salt.
    forged = signing.dumps({"u": people["bob"].pk}, salt="signoff.approvals.action-link")
    for bad in (
        f"{payload}:{signature[:-2]}xx",
        token[:-5],
        "not-a-token",
        forged,
        token.replace(payload[:4], "eyJ9"),
    ):
        response = getattr(Client(), method)(f"/mail/{bad}/", {"mode": "digest"})
        assert response.status_code == 400, bad
        assert b"This link is not valid" in response.content and b"Nothing was changed" in (
            response.content
        )
    assert state() == []


def test_an_expired_link_is_refused_and_changes_nothing(people: dict[str, Any]) -> None:
    with at(T0):
        link = link_of(people["ann"])
    with at(T0 + timedelta(days=59)):
        assert Client().get(link).status_code == 200
    with at(T0 + timedelta(days=61)):
        response = Client().post(link, {"mode": "digest"})
    assert response.status_code == 410 and b"This link has expired" in response.content
    assert state() == []


def test_the_link_of_a_deactivated_person_or_a_bad_choice_changes_nothing(
    people: dict[str, Any],
) -> None:
    link = link_of(people["ann"])
    response = Client().post(link, {"mode": "weekly"})
    assert response.status_code == 400 and state() == []
    people["ann"].is_active = False
    people["ann"].save()
    assert Client().post(link, {"mode": "digest"}).status_code == 400
    assert state() == []


def test_every_mail_carries_the_link_at_delivery_and_the_outbox_keeps_none(
    people: dict[str, Any], flow: Any, smtp_server: Any, settings: Any
) -> None:
    settings.SIGNOFF_BASE_URL = BASE
    name = flow("t_mp_footer", users=("bob",))
    request = start(name, f"{{signoff:preferences-link:{people['ann'].pk}}}")
    (row,) = OutboundEmail.objects.filter(kind="approval_assigned")
    placeholder = mail.preferences_placeholder(people["bob"].pk)
    assert placeholder in row.body_text and placeholder in row.body_html
    assert "/mail/" not in row.body_text + row.body_html
    # A placeholder quoted in the content (the title) is defused, never a link.
    assert mail.preferences_placeholder(people["ann"].pk) not in row.body_text + row.subject
    assert mail.emails_deliver(email_ids=[row.pk])["sent"] == [row.pk]
    row.refresh_from_db()
    stored = " ".join(
        str(v) for v in OutboundEmail.objects.filter(pk=row.pk).values().get().values()
    )
    assert "/mail/" not in stored  # nothing usable kept
    (message,) = smtp_server.messages
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    header = str(message["List-Unsubscribe"]).strip()
    found = re.fullmatch(rf"<({BASE}/mail/([^/]+)/)>", header)
    assert found, header
    assert found[1] in text and f'href="{found[1]}"' in html
    assert mail_preferences.preferences_token_read(found[2]) == (people["bob"], "ok")
    page = Client().get(found[1].removeprefix(BASE))
    assert page.status_code == 200 and b"bob" in page.content
    assert request.pk  # the request's own links are untouched by the footer
    assert f"{BASE}/a/" in text


# -- the preferences page in the inbox ------------------------------------------------------------


def test_the_preferences_page_saves_a_valid_choice(people: dict[str, Any]) -> None:
    client = Client()
    client.force_login(people["ann"])
    page = client.get("/inbox/preferences/")
    assert page.status_code == 200
    assert b'href="/inbox/preferences/" aria-current="page"' in page.content  # in the header
    with at(T0):
        response = client.post(
            "/inbox/preferences/",
            {"mode": "digest", "digest_hour": "7", "time_zone": "America/Sao_Paulo"},
        )
    assert response.status_code == 302 and response["Location"] == "/inbox/preferences/"
    ann = MailPreference.objects.get(user=people["ann"])
    assert (ann.mode, ann.digest_hour, ann.time_zone) == ("digest", 7, "America/Sao_Paulo")
    assert ann.next_digest_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "data",
    [
        {"mode": "digest", "digest_hour": "24", "time_zone": "UTC"},
        {"mode": "digest", "digest_hour": "x", "time_zone": "UTC"},
        {"mode": "digest", "digest_hour": "8", "time_zone": "Mars/Olympus_Mons"},
        {"mode": "hourly", "digest_hour": "8", "time_zone": "UTC"},
        {"digest_hour": "8", "time_zone": "UTC"},
    ],
)
def test_bad_input_on_the_preferences_page_changes_nothing(
    people: dict[str, Any], data: dict[str, str]
) -> None:
    digest_for(people["ann"], 9, "Europe/Berlin")
    before = state()
    client = Client()
    client.force_login(people["ann"])
    response = client.post("/inbox/preferences/", data)
    assert response.status_code == 400 and b"errorlist" in response.content
    assert state() == before


def test_the_preferences_page_needs_a_login_and_a_csrf_token(people: dict[str, Any]) -> None:
    anonymous = Client()
    assert anonymous.get("/inbox/preferences/")["Location"].startswith("/accounts/login/")
    response = anonymous.post("/inbox/preferences/", {"mode": "digest"})
    assert response.status_code == 302 and state() == []
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["ann"])
    data = {"mode": "digest", "digest_hour": "8", "time_zone": "UTC"}
    assert client.post("/inbox/preferences/", data).status_code == 403
    assert state() == []


def test_every_inbox_page_shows_what_waits_for_the_user(people: dict[str, Any], flow: Any) -> None:
    name = flow("t_mp_count", users=("ann",))
    for n in ("1", "2"):
        start(name, n)
    decided = start(name, "3")
    services.approval_decide(request_id=decided.pk, user=people["ann"], outcome="approve")
    client = Client()
    client.force_login(people["ann"])
    for path in ("/inbox/", "/inbox/preferences/", "/inbox/delegation/"):
        page = client.get(path).content.decode()
        assert re.search(r'<span class="badge" title="2 waiting for you">2</span>', page), path


# -- end to end: the digest over real SMTP -------------------------------------------------------


def test_the_digest_goes_out_over_smtp_at_the_chosen_hour_with_exactly_the_pending_requests(
    people: dict[str, Any], flow: Any, smtp_server: Any, settings: Any
) -> None:
    """bob reads a 09:00 digest in Berlin (08:00 UTC in March). Three requests wait for him,
    one he decided: the digest lists exactly the three, overdue first, then the one due
    soonest, then the oldest without a due time; links to the inbox, none that acts."""
    settings.SIGNOFF_BASE_URL = BASE
    soon = flow("t_mp_e2e_soon", users=("bob",), due=timedelta(hours=1))
    later = flow("t_mp_e2e_later", users=("bob",), due=timedelta(days=3))
    whenever = flow("t_mp_e2e_none", users=("bob",))
    day = datetime(2026, 3, 2, tzinfo=UTC)
    with at(day):
        digest_for(people["bob"], 9, "Europe/Berlin")
    with at(day + timedelta(hours=5)):
        oldest = start(whenever, "without a due time")
    with at(day + timedelta(hours=6)):
        decided = start(later, "decided already")
    with at(day + timedelta(hours=6, minutes=30)):
        overdue = start(soon, "overdue since 08:30 CET")
        services.approval_decide(request_id=decided.pk, user=people["bob"], outcome="approve")
    with at(day + timedelta(hours=7)):
        due_soon = start(later, "due in three days")
    # Held for the digest, but for the one due (07:30 UTC) before it (08:00 UTC): mailed at once.
    assert [
        (m.to, m.request_id) for m in OutboundEmail.objects.filter(kind="approval_assigned")
    ] == [(["bob@example.com"], overdue.pk)]

    with at(day + timedelta(hours=7, minutes=59)):
        assert sweepers.sweep_digests() == 0
    with at(day + timedelta(hours=8, minutes=3)):
        assert sweepers.sweep_digests() == 1
        (digest,) = OutboundEmail.objects.filter(kind="approval_digest")
        assert mail.emails_deliver(email_ids=[digest.pk])["sent"] == [digest.pk]
    with at(day + timedelta(hours=10)):
        assert sweepers.sweep_digests() == 0

    (message,) = smtp_server.messages
    assert message["To"] == "bob@example.com"
    # (a folded header keeps its leading space when parsed back)
    assert str(message["Subject"]).strip() == "3 requests waiting for your decision — daily digest"
    assert (
        message["Message-ID"] == f"<signoff.digest.{people['bob'].pk}.2026-03-02@signoff.example>"
    )
    text = message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    html = message.get_body(preferencelist=("html",)).get_content()
    listed = re.findall(r"^\d+\. (?:\[OVERDUE\] )?(Request .+)$", text, re.M)
    assert listed == [
        "Request overdue since 08:30 CET",
        "Request due in three days",
        "Request without a due time",
    ]
    assert "[OVERDUE] Request overdue since 08:30 CET" in text
    assert "decided already" not in text + html
    pages = re.findall(rf"{BASE}/inbox/(\d+)/", text)
    assert pages == [str(r.pk) for r in (overdue, due_soon, oldest)]
    assert "due Thu 5 Mar 2026, 08:00 CET" in text  # 07:00 UTC, in bob's zone
    assert f"{BASE}/a/" not in text + html  # no action link in a digest
    assert str(message["List-Unsubscribe"]).strip().startswith(f"<{BASE}/mail/")
