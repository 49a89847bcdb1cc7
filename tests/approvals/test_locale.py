"""Each person's time zone and language: the preference (page, validation), the language of
every page (preference, then the browser's Accept-Language), every time shown in the person's
zone, the mail in its recipient's language and zone over a real SMTP server, a constant query
count, and a complete German translation (every msgid of the sources has a German msgstr)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from approvals import locale, mail_preferences
from approvals.models import ApprovalRequest, MailPreference
from integrations import mail
from integrations.models import OutboundEmail
from orchestration.errors import InvalidInput

pytestmark = pytest.mark.django_db
ROOT = Path(settings.BASE_DIR)
PO = ROOT / "locale" / "de" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")
T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # 13:00 in Berlin, 07:00 in New York


@pytest.fixture(autouse=True)
def compiled() -> None:
    """The German catalogue is built by `make messages` (make test does it first)."""
    if not MO.exists() or MO.stat().st_mtime < PO.stat().st_mtime:
        pytest.fail(f"{MO} is missing or older than the .po: run `make messages`")


def prefer(user: Any, *, language: str = "", time_zone: str = "UTC") -> MailPreference:
    return mail_preferences.mail_preference_set(
        user=user, mode="immediate", language=language, time_zone=time_zone
    )


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)  # the login signal keeps the person's pair in the session
    return client


@pytest.fixture
def root(django_user_model: Any) -> Any:
    """A superuser: the status page's operator actions and our admin."""
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def waiting(expense: Callable[..., ApprovalRequest]) -> ApprovalRequest:
    """An expense waiting for bob, asked at T0 and due three days later."""
    with time_machine.travel(T0, tick=False):
        approval = expense(1840, "Laptop for the new designer", business_key="EXP-1")
    assert approval.created_at == T0
    return approval


# -- the language of the pages -----------------------------------------------------------------


def test_a_german_user_gets_the_german_inbox(people: Any, waiting: ApprovalRequest) -> None:
    prefer(people["bob"], language="de")
    page = logged_in(people["bob"]).get("/inbox/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<html lang="de">' in html
    assert "<h1>Posteingang</h1>" in html
    assert "Anfragen, die auf Ihre Entscheidung warten." in html
    assert "Ausgewählte genehmigen" in html
    assert "Laptop for the new designer" in html  # the content stays as written
    assert "Requests waiting for your decision." not in html
    assert page["Content-Language"] == "de"


def test_the_browser_language_counts_when_the_person_chose_none(
    people: Any, waiting: ApprovalRequest
) -> None:
    client = logged_in(people["bob"])
    german = client.get("/inbox/", HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9,en;q=0.5")
    assert "<h1>Posteingang</h1>" in german.content.decode()
    assert "Accept-Language" in german["Vary"]
    english = client.get("/inbox/", HTTP_ACCEPT_LANGUAGE="en")
    assert "<h1>Inbox</h1>" in english.content.decode()
    unknown = client.get("/inbox/", HTTP_ACCEPT_LANGUAGE="tlh")  # Klingon: the default
    assert "<h1>Inbox</h1>" in unknown.content.decode()


def test_the_preference_wins_over_the_browser(people: Any, waiting: ApprovalRequest) -> None:
    prefer(people["bob"], language="en")
    html = logged_in(people["bob"]).get("/inbox/", HTTP_ACCEPT_LANGUAGE="de").content.decode()
    assert "<h1>Inbox</h1>" in html and '<html lang="en">' in html


def test_every_page_of_a_german_user_is_german(people: Any, waiting: ApprovalRequest) -> None:
    prefer(people["bob"], language="de")
    prefer(people["alice"], language="de")
    bob, alice = logged_in(people["bob"]), logged_in(people["alice"])
    expected = {
        (bob, f"/inbox/{waiting.pk}/"): ["Ihre Entscheidung", "Genehmigen", "Ablehnen"],
        (bob, "/inbox/delegation/"): ["<h1>Abwesenheit</h1>", "Neue Vertretung"],
        (bob, "/inbox/preferences/"): ["<h1>Einstellungen</h1>", "Zeitzone", "Sprache"],
        (alice, "/requests/"): ["<h1>Meine Anfragen</h1>"],
        (alice, "/start/"): ["<h1>Eine Anfrage starten</h1>"],
        (alice, f"/instances/{waiting.instance_id}/"): ["Zeitleiste", "Übersicht", "Schritte"],
    }
    for (client, path), words in expected.items():
        page = client.get(path)
        assert page.status_code == 200, path
        html = page.content.decode()
        for word in words:
            assert word in html, (path, word)


# -- times in the person's zone ----------------------------------------------------------------


def test_times_are_shown_in_the_persons_zone(people: Any, waiting: ApprovalRequest) -> None:
    prefer(people["bob"], time_zone="America/New_York")
    prefer(people["alice"], time_zone="Europe/Berlin")
    bob, alice = logged_in(people["bob"]), logged_in(people["alice"])
    detail = bob.get(f"/inbox/{waiting.pk}/").content.decode()
    assert ">2026-01-15 07:00 EST</time>" in detail
    assert 'title="2026-01-15 07:00 EST"' in bob.get("/inbox/").content.decode()
    status = alice.get(f"/instances/{waiting.instance_id}/").content.decode()
    assert "2026-01-15 13:00:00 CET" in status
    mine = alice.get("/requests/").content.decode()
    assert 'title="2026-01-18 13:00 CET"' in mine  # due three days after T0, in Berlin
    # Without a preference: the site's zone (UTC).
    prefer(people["dave"])
    assert (
        ">2026-01-15 12:00 UTC</time>"
        in logged_in(people["dave"]).get(f"/inbox/{waiting.pk}/").content.decode()
    )


def test_a_session_from_before_the_preference_existed_reads_it_once(
    people: Any, waiting: ApprovalRequest
) -> None:
    client = logged_in(people["bob"])
    session = client.session
    del session[locale.SESSION_KEY]
    session.save()
    prefer(people["bob"], language="de", time_zone="America/New_York")
    html = client.get(f"/inbox/{waiting.pk}/").content.decode()
    assert "Ihre Entscheidung" in html and "07:00 EST" in html
    assert client.session[locale.SESSION_KEY] == [people["bob"].pk, "de", "America/New_York"]


def test_the_inbox_costs_no_query_more_with_a_zone_and_a_language(
    people: Any, expense: Callable[..., ApprovalRequest]
) -> None:
    for n in range(5):
        expense(100 + n)
    counts = []
    for name, language, zone in [("bob", "", "UTC"), ("dave", "de", "Asia/Tokyo")]:
        prefer(people[name], language=language, time_zone=zone)
        client = logged_in(people[name])
        client.get("/inbox/")  # warm (the session, the workflow registry)
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/inbox/").status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


# -- the preference page -----------------------------------------------------------------------


def test_the_page_saves_zone_and_language_and_the_next_page_uses_them(
    people: Any, waiting: ApprovalRequest
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["bob"])
    page = client.get("/inbox/preferences/")
    token = page.cookies["csrftoken"].value
    form = {
        "mode": "immediate",
        "digest_hour": "8",
        "time_zone": "Asia/Tokyo",
        "language": "de",
        "csrfmiddlewaretoken": token,
    }
    saved = client.post("/inbox/preferences/", form)
    assert saved.status_code == 302
    preference = MailPreference.objects.get(user=people["bob"])
    assert (preference.language, preference.time_zone) == ("de", "Asia/Tokyo")
    html = client.get(f"/inbox/{waiting.pk}/").content.decode()
    assert "Ihre Entscheidung" in html and "2026-01-15 21:00 JST" in html
    # Without the CSRF token: refused, nothing changed.
    refused = client.post(
        "/inbox/preferences/", {**form, "csrfmiddlewaretoken": "", "language": ""}
    )
    assert refused.status_code == 403
    assert MailPreference.objects.get(user=people["bob"]).language == "de"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("time_zone", "Mars/Olympus_Mons", "Unknown time zone: choose one from the list."),
        ("time_zone", "", "This field is required."),
        ("time_zone", "Europe/Berlin" * 100, "Unknown time zone: choose one from the list."),
        ("language", "tlh", "Unknown language: choose one from the list."),
        ("language", "de" * 500, "Unknown language: choose one from the list."),
        ("language", "de-AT", "Unknown language: choose one from the list."),
    ],
)
def test_a_bad_preference_is_refused_and_nothing_is_saved(
    people: Any, field: str, value: str, message: str
) -> None:
    before = prefer(people["bob"], language="en", time_zone="Europe/Berlin")
    client = logged_in(people["bob"])
    form = {"mode": "digest", "digest_hour": "9", "time_zone": "UTC", "language": "de"}
    page = client.post("/inbox/preferences/", {**form, field: value})
    assert page.status_code == 400
    assert message in page.content.decode()
    after = MailPreference.objects.get(user=people["bob"])
    assert (after.language, after.time_zone, after.mode, after.digest_hour, after.updated_at) == (
        before.language,
        before.time_zone,
        before.mode,
        before.digest_hour,
        before.updated_at,
    )
    # The session still holds the old pair: the pages stay English, in Berlin.
    assert client.session[locale.SESSION_KEY][1:] == ["en", "Europe/Berlin"]


def test_a_bad_preference_is_refused_in_german_too(people: Any) -> None:
    prefer(people["bob"], language="de")
    page = logged_in(people["bob"]).post(
        "/inbox/preferences/",
        {"mode": "immediate", "digest_hour": "8", "time_zone": "Nowhere/City", "language": ""},
    )
    assert page.status_code == 400
    assert "Unbekannte Zeitzone: Wählen Sie eine aus der Liste." in page.content.decode()


def test_the_service_refuses_an_unknown_language_and_changes_nothing(people: Any) -> None:
    before = prefer(people["bob"], language="de")
    for bad in ["xx", "DE", 7, " de"]:
        with pytest.raises(InvalidInput) as caught:
            mail_preferences.mail_preference_set(user=people["bob"], mode="immediate", language=bad)
        assert caught.value.errors["language"]
    assert MailPreference.objects.get(user=people["bob"]).updated_at == before.updated_at


# -- mail --------------------------------------------------------------------------------------


def test_mail_is_in_the_recipients_language_and_zone(
    people: Any, expense: Callable[..., ApprovalRequest], smtp_server: Any
) -> None:
    prefer(people["bob"], language="de", time_zone="Europe/Berlin")
    prefer(people["dave"], language="en", time_zone="America/New_York")
    with time_machine.travel(T0, tick=False):
        approval = expense(1840, "Laptop for the new designer")
    rows = OutboundEmail.objects.filter(kind="approval_assigned", request_id=approval.pk)
    outcome = mail.emails_deliver(email_ids=[r.pk for r in rows])
    assert len(outcome["sent"]) == 2
    by_to = {m["To"]: m for m in smtp_server.messages}
    german, english = by_to["bob@example.com"], by_to["dave@example.com"]
    # (the test server's parser keeps a space before an encoded word: strip)
    subject = "Genehmigung nötig: Expense: 1840 EUR for Laptop for the new designer"
    assert german["Subject"].strip() == subject
    text = german.get_body(("plain",)).get_content()
    assert "Hallo bob," in text
    assert "Fällig So 18 Jan 2026, 13:00 CET" in text  # due T0 + 3 days, Berlin
    assert "Jede Mail sofort oder eine tägliche Zusammenfassung?" in text
    html = german.get_body(("html",)).get_content()
    assert '<html lang="de">' in html and "Prüfen und entscheiden" in html
    subject = "Approval needed: Expense: 1840 EUR for Laptop for the new designer"
    assert english["Subject"].strip() == subject
    english_text = english.get_body(("plain",)).get_content()
    assert "Due Sun 18 Jan 2026, 07:00 EST" in english_text


def test_a_mail_rendered_during_a_german_request_is_in_the_recipients_language(
    people: Any,
) -> None:
    """The language active in the web request (the actor's) never leaks into a mail."""
    from django.utils import translation

    prefer(people["bob"], language="en")
    with translation.override("de"):
        subject, body, _ = mail.email_render(
            template="approval_expired",
            context={
                "user": people["bob"],
                "request": {"title": "T", "fields": []},
                "action": "reject",
                "inbox_url": "https://x/",
                "base_url": "https://x",
            },
            recipient_id=people["bob"].pk,
        )
    assert subject == "No decision in time: T"
    assert "Hello bob," in body


# -- the catalogue -----------------------------------------------------------------------------


def _entries(po: str) -> list[tuple[str, list[str], str]]:
    """(msgid, msgstrs, flags) of each entry but the header."""
    found = []
    for block in po.split("\n\n"):
        ids = re.search(r'^msgid ((?:"(?:[^"\\]|\\.)*"\n?)+)', block, re.M)
        if ids is None:
            continue
        msgid = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', ids.group(1)))
        if not msgid:
            continue
        strs = [
            "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m))
            for m in re.findall(r'^msgstr(?:\[\d\])? ((?:"(?:[^"\\]|\\.)*"\n?)+)', block, re.M)
        ]
        flags = " ".join(re.findall(r"^#, (.*)$", block, re.M))
        found.append((msgid, strs, flags))
    return found


def test_every_msgid_has_a_german_msgstr() -> None:
    entries = _entries(PO.read_text())
    assert len(entries) > 400
    empty = [msgid for msgid, strs, _ in entries if not strs or not all(s.strip() for s in strs)]
    assert empty == []
    fuzzy = [msgid for msgid, _, flags in entries if "fuzzy" in flags]
    assert fuzzy == []
    # Placeholders survive the translation.
    for msgid, strs, _ in entries:
        wanted = sorted(set(re.findall(r"%\(\w+\)[sd]|\{\w+\}", msgid)))
        for translated in strs:
            assert sorted(set(re.findall(r"%\(\w+\)[sd]|\{\w+\}", translated))) == wanted, msgid


def test_the_catalogue_holds_every_string_of_the_sources(tmp_path: Path) -> None:
    """makemessages over a copy of the sources finds no msgid the .po lacks: a string added to
    a template or view without its German translation fails here."""
    for name in ("templates", "approvals", "orchestration", "integrations", "config"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "locale").mkdir()
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with override_settings(LOCALE_PATHS=[tmp_path / "locale"]):
            call_command("makemessages", locale=["de"], no_location=True, verbosity=0)
    finally:
        os.chdir(cwd)
    fresh = {msgid for msgid, _, _ in _entries((tmp_path / PO.relative_to(ROOT)).read_text())}
    ours = {msgid for msgid, _, _ in _entries(PO.read_text())}
    assert fresh - ours == set()
    assert len(fresh) > 400


# -- the status page's timeline ----------------------------------------------------------------


def test_the_timeline_of_a_german_status_page_is_german(
    people: Any, waiting: ApprovalRequest
) -> None:
    prefer(people["alice"], language="de")
    html = logged_in(people["alice"]).get(f"/instances/{waiting.instance_id}/").content.decode()
    assert "Instanz gestartet" in html
    assert "Genehmigung angefordert" in html
    assert "Instance started" not in html
    assert "Approval requested" not in html
    # The same page in English reads as before.
    prefer(people["alice"], language="en")
    html = logged_in(people["alice"]).get(f"/instances/{waiting.instance_id}/").content.decode()
    assert "Instance started" in html
    assert "Approval requested" in html
    assert "Instanz gestartet" not in html


def test_the_operator_actions_of_a_german_status_page_are_german(
    root: Any, waiting: ApprovalRequest
) -> None:
    prefer(root, language="de")
    html = logged_in(root).get(f"/instances/{waiting.instance_id}/").content.decode()
    assert "Pausieren" in html
    assert "Wieder anstoßen (jetzt klingeln)" in html
    assert "Resume (ring now)" not in html
    prefer(root, language="en")
    html = logged_in(root).get(f"/instances/{waiting.instance_id}/").content.decode()
    assert "Resume (ring now)" in html
    assert "Pausieren" not in html


# -- a service's refusal on a page -------------------------------------------------------------


def test_a_refusal_is_in_the_pages_language(people: Any, waiting: ApprovalRequest) -> None:
    prefer(people["bob"], language="de")
    bob = logged_in(people["bob"])
    page = bob.post(f"/inbox/{waiting.pk}/decide/", {"outcome": "reject", "comment": "   "})
    assert page.status_code == 400
    html = page.content.decode()
    assert "zum Ablehnen ist ein Kommentar erforderlich" in html
    assert "a comment is required to reject" not in html
    assert ApprovalRequest.objects.get(pk=waiting.pk).state == waiting.state
    page = bob.post(
        "/inbox/delegation/",
        {"delegate": "bob", "starts_at": "2030-01-02T00:00", "ends_at": "2030-01-03T00:00"},
        follow=True,
    )
    assert "wählen Sie jemand anderen als Vertretung" in page.content.decode()
    # In English the refusal reads as before.
    prefer(people["bob"], language="en")
    page = logged_in(people["bob"]).post(
        f"/inbox/{waiting.pk}/decide/", {"outcome": "reject", "comment": "   "}
    )
    assert "a comment is required to reject" in page.content.decode()


# -- pages reached from a mail -----------------------------------------------------------------


def test_a_mailed_link_opens_in_the_recipients_language(
    people: Any, waiting: ApprovalRequest
) -> None:
    from django.utils import timezone

    from approvals import notifications

    prefer(people["bob"], language="de")
    url = f"/a/{notifications.token_issue(waiting, people['bob'], timezone.now(), 't')}/"
    browser = Client(HTTP_ACCEPT_LANGUAGE="en")  # no login: the link's person counts
    page = browser.get(url)
    assert page.status_code == 200
    assert '<html lang="de">' in page.content.decode()
    assert page["Content-Language"] == "de"
    assert (
        ApprovalRequest.objects.get(pk=waiting.pk).state == waiting.state
    )  # a GET decides nothing
    # Someone who chose no language gets the browser's.
    prefer(people["bob"], language="")
    page = Client(HTTP_ACCEPT_LANGUAGE="en").get(url)
    assert '<html lang="en">' in page.content.decode()


def test_a_used_link_is_refused_in_the_recipients_language(
    people: Any, waiting: ApprovalRequest
) -> None:
    from django.utils import timezone

    from approvals import notifications
    from approvals.models import ActionToken

    prefer(people["bob"], language="de")
    url = f"/a/{notifications.token_issue(waiting, people['bob'], timezone.now(), 't')}/"
    ActionToken.objects.filter(request=waiting).update(used_at=timezone.now())
    page = Client(HTTP_ACCEPT_LANGUAGE="en").get(url)
    assert page.status_code == 410
    html = page.content.decode()
    assert "Dieser Link wurde bereits verwendet" in html
    assert "This link was already used" not in html


# -- refusals with values, claims, operator lines, our admin: German on a German page --------


def test_a_refusal_with_a_value_is_in_the_pages_language(
    people: Any, waiting: ApprovalRequest
) -> None:
    """A limit in a refusal ("requester: at most 150 characters") is said in German around
    the value; the same request in English reads as before."""
    too_long = {"requester": "x" * 151}
    prefer(people["bob"], language="de")
    html = logged_in(people["bob"]).get("/inbox/", too_long).content.decode()
    assert "Es wurde nichts gesucht: anfragende Person: höchstens 150 Zeichen." in html
    assert "at most 150 characters" not in html
    prefer(people["bob"], language="en")
    html = logged_in(people["bob"]).get("/inbox/", too_long).content.decode()
    assert "Nothing was searched: requester: at most 150 characters." in html
    assert "höchstens" not in html


def test_claimed_and_already_decided_are_in_the_pages_language(
    people: Any, waiting: ApprovalRequest
) -> None:
    from approvals import claims

    claims.approval_claim(request_id=waiting.pk, user=people["dave"])
    prefer(people["bob"], language="de")
    bob = logged_in(people["bob"])
    detail = bob.get(f"/inbox/{waiting.pk}/").content.decode()
    assert "Von dave übernommen seit" in detail
    assert "Claimed by dave since" not in detail
    refused = bob.post(f"/inbox/{waiting.pk}/decide/", {"outcome": "approve"})
    assert refused.status_code == 409
    html = refused.content.decode()
    assert "Ihre Entscheidung wurde nicht gespeichert: übernommen von dave seit" in html
    assert "claimed by dave since" not in html
    assert ApprovalRequest.objects.get(pk=waiting.pk).state == "pending"
    # dave decides; bob's late decision is refused with who and when, in German.
    dave = logged_in(people["dave"])
    assert dave.post(f"/inbox/{waiting.pk}/decide/", {"outcome": "approve"}).status_code == 302
    late = bob.post(f"/inbox/{waiting.pk}/decide/", {"outcome": "reject", "comment": "no"})
    assert late.status_code == 409
    html = late.content.decode()
    assert "bereits genehmigt von dave am" in html
    assert "already approved by dave" not in html
    # The same refusal in English reads as before.
    prefer(people["bob"], language="en")
    late = logged_in(people["bob"]).post(
        f"/inbox/{waiting.pk}/decide/", {"outcome": "reject", "comment": "no"}
    )
    html = late.content.decode()
    assert "already approved by dave at" in html
    assert "bereits genehmigt" not in html


def test_an_operators_success_line_is_in_the_pages_language(
    root: Any, waiting: ApprovalRequest
) -> None:
    from django.urls import reverse

    from orchestration.models import WorkflowInstance

    short = str(waiting.instance_id)[:8]
    prefer(root, language="de")
    pause = reverse("instances:action", args=[waiting.instance_id, "pause"])
    page = logged_in(root).post(pause, {"confirm": "1"}, follow=True)
    html = page.content.decode()
    assert f"Instanz {short} pausiert." in html
    assert f"Instance {short} paused." not in html
    assert WorkflowInstance.objects.get(pk=waiting.instance_id).paused_at is not None
    # A refusal on the same page: the state is named in German too.
    page = logged_in(root).post(
        reverse("instances:action", args=[waiting.instance_id, "retry"]),
        {"confirm": "1"},
        follow=True,
    )
    html = page.content.decode()
    assert "die Instanz ist laufend; nur fehlgeschlagene Instanzen" in html
    assert "only failed instances can be retried" not in html
    prefer(root, language="en")
    unpause = reverse("instances:action", args=[waiting.instance_id, "unpause"])
    html = logged_in(root).post(unpause, {"confirm": "1"}, follow=True).content.decode()
    assert f"Instance {short} unpaused." in html
    assert "fortgesetzt" not in html


def test_our_admin_is_in_the_pages_language(root: Any, waiting: ApprovalRequest) -> None:
    from orchestration import schedules
    from orchestration.models import Schedule

    schedule = schedules.schedule_create(
        values={
            "name": "hourly",
            "workflow": "t_scheduled",
            "input": {"report": "x"},
            "interval_seconds": 3600,
        }
    )
    changelist = "/admin/orchestration/schedule/"
    pause = {"action": "pause_schedules", "_selected_action": [schedule.pk], "index": "0"}
    prefer(root, language="de")
    admin = logged_in(root)
    requests = admin.get("/admin/approvals/approvalrequest/").content.decode()
    assert "Neu zuweisen (ausgewählte offene Anfragen)…" in requests  # an action's description
    assert "Reassign (selected pending requests)" not in requests
    listed = admin.get(changelist).content.decode()
    assert "Die ausgewählten Zeitpläne pausieren" in listed
    assert "Pause the selected schedules" not in listed
    done = admin.post(changelist, pause, follow=True).content.decode()
    assert "1 Zeitplan/Zeitpläne pausiert." in done  # the admin's message_user line
    assert "Paused 1 schedule(s)." not in done
    assert Schedule.objects.get(pk=schedule.pk).paused
    prefer(root, language="en")
    admin = logged_in(root)
    listed = admin.get(changelist).content.decode()
    assert "Pause the selected schedules" in listed
    done = admin.post(
        changelist, {**pause, "action": "resume_schedules"}, follow=True
    ).content.decode()
    assert "Resumed 1 schedule(s)." in done
    assert "fortgesetzt" not in done


def test_the_api_answers_in_english_whatever_the_language(
    people: Any, waiting: ApprovalRequest
) -> None:
    """The JSON API's messages are a contract: English, for a German person whose browser asks
    for German too."""
    from approvals import claims

    claims.approval_claim(request_id=waiting.pk, user=people["dave"])
    prefer(people["bob"], language="de")
    bob = logged_in(people["bob"])
    answer = bob.post(
        f"/api/v1/approvals/{waiting.pk}/approve/",
        {},
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE="de",
    )
    assert answer.status_code == 409
    body = answer.json()
    assert body["code"] == "claimed"
    assert body["detail"].startswith("claimed by dave since ")
    assert "übernommen" not in body["detail"]
    too_long = bob.get("/api/v1/approvals/", {"requester": "x" * 151}, HTTP_ACCEPT_LANGUAGE="de")
    assert too_long.status_code == 400
    assert too_long.json()["detail"] == "requester: at most 150 characters"
    assert ApprovalRequest.objects.get(pk=waiting.pk).state == "pending"


def test_the_admin_index_names_our_models_in_the_pages_language(root: Any) -> None:
    prefer(root, language="de")
    html = logged_in(root).get("/admin/").content.decode()
    for name in [
        "Genehmigungen",  # the apps
        "Anbindungen",
        "Workflow-Instanzen",  # the models
        "Zeitpläne",
        "Stapelaktionen",
        "Genehmigungsanfragen",
        "Vertretungen",
        "Ausgehende E-Mails",
        "Alarmregeln",
    ]:
        assert name in html, name
    assert "Workflow instances" not in html
    assert "Approval requests" not in html
    prefer(root, language="en")
    html = logged_in(root).get("/admin/").content.decode()
    for name in ["Approvals", "Integrations", "Workflow instances", "Schedules", "Outbound emails"]:
        assert name in html, name
    assert "Workflow-Instanzen" not in html
