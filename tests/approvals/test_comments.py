"""Issue 12, item 4 — comments: a thread on each approval request for questions that decide
nothing. The policy (who may post and read), the service (bad input, idempotency, one event,
one mail per person told), the web form, the API, the history and erasure."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from approvals import comments, policy, services
from approvals.comments import MAX_BODY, comment_post
from approvals.definitions import approval
from approvals.models import ApprovalRequest, Comment, Delegation
from integrations import mail
from integrations.models import OutboundEmail
from orchestration import engine, retention, sealing
from orchestration.definitions import Workflow, registry
from orchestration.errors import Conflict, InvalidInput, NotAllowed, NotFound
from orchestration.models import Event, WorkflowInstance

pytestmark = pytest.mark.django_db


def web(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def written() -> tuple[int, int, int]:
    """What a comment writes: comments, events, outbox rows."""
    return Comment.objects.count(), Event.objects.count(), OutboundEmail.objects.count()


@pytest.fixture
def otto(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("otto", email="otto@example.com", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="operate_instance"))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def sam(django_user_model: Any) -> Any:
    """Staff without permissions: sees every request, has no part in any."""
    return django_user_model.objects.create_user("sam", email="sam@example.com", is_staff=True)


@pytest.fixture
def manager(people: dict[str, Any], expense: Any) -> ApprovalRequest:
    """alice's 120 EUR expense, waiting for the managers (bob, dave)."""
    return expense(120)


# -- the policy ---------------------------------------------------------------------------------


def _grant(user: Any, request: ApprovalRequest) -> Any:
    return policy.authorize(policy.Act.COMMENT, user=user, request=request)


def test_who_may_comment_and_as_what(
    people: dict[str, Any], manager: ApprovalRequest, otto: Any, sam: Any
) -> None:
    assert _grant(people["alice"], manager).role == "requester"
    assert _grant(people["bob"], manager).role == "assignee"
    assert _grant(otto, manager).role == "operator"
    now = timezone.now()
    Delegation.objects.create(
        user=people["dave"],
        delegate=people["eve"],
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(hours=1),
    )
    grant = _grant(people["eve"], manager)
    assert (grant.role, grant.principal) == ("delegate", people["dave"])
    with pytest.raises(NotAllowed) as refused:
        _grant(sam, manager)  # sees every request; has no part in this one
    assert refused.value.code == "not_participant"
    with pytest.raises(NotFound):
        _grant(people["carol"], manager)  # cannot see it
    # A past assignee reads but does not post; whoever decided still may.
    services.approval_reassign(
        request_id=manager.pk, operator=otto, users=["carol"], groups=[], reason="holiday"
    )
    with pytest.raises(NotAllowed, match="only the request's assignees"):
        _grant(people["bob"], manager)
    assert policy.authorize(policy.Act.READ_COMMENTS, user=people["bob"], request=manager)
    services.approval_decide(request_id=manager.pk, user=people["carol"], outcome="approve")
    assert _grant(people["carol"], ApprovalRequest.objects.get(pk=manager.pk)).role == "assignee"


def test_the_starter_counts_as_requester_and_staff_read(
    people: dict[str, Any], manager: ApprovalRequest, sam: Any, settings: Any
) -> None:
    ApprovalRequest.objects.filter(pk=manager.pk).update(requester=None)
    manager.refresh_from_db()
    assert _grant(people["alice"], manager).role == "requester"  # she started it
    settings.SIGNOFF_STARTER_IS_REQUESTER = False
    with pytest.raises(NotFound):
        _grant(people["alice"], manager)
    assert policy.authorize(policy.Act.READ_COMMENTS, user=sam, request=manager)
    with pytest.raises(NotFound):
        policy.authorize(policy.Act.READ_COMMENTS, user=people["eve"], request=manager)


def test_comments_close_when_the_workflow_ends(
    people: dict[str, Any], manager: ApprovalRequest
) -> None:
    comment_post(request_id=manager.pk, user=people["alice"], body="Receipt attached later")
    engine.instance_cancel(instance_id=manager.instance_id, actor="user:alice")
    before = written()
    with pytest.raises(Conflict) as closed:
        comment_post(request_id=manager.pk, user=people["bob"], body="too late")
    assert closed.value.code == "comments_closed"
    assert "cancelled" in closed.value.message
    assert written() == before
    # Still read: the thread stays.
    assert [c.body for c in comments.thread_of(manager)] == ["Receipt attached later"]


def test_an_inactive_user_may_not_comment(people: dict[str, Any], manager: ApprovalRequest) -> None:
    bob = people["bob"]
    bob.is_active = False
    bob.save(update_fields=["is_active"])
    with pytest.raises(NotAllowed) as refused:
        comment_post(request_id=manager.pk, user=bob, body="hello")
    assert refused.value.code == "inactive"


# -- the service --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("", "comment_required"),
        ("   \n\t ", "comment_required"),
        ("x" * (MAX_BODY + 1), "comment_too_long"),
        ("a\x00b", "invalid_comment"),
        (None, "invalid_comment"),
        (["a list"], "invalid_comment"),
    ],
)
def test_bad_bodies_are_refused_and_write_nothing(
    people: dict[str, Any], manager: ApprovalRequest, body: Any, code: str
) -> None:
    before = written()
    with pytest.raises(InvalidInput) as refused:
        comment_post(request_id=manager.pk, user=people["bob"], body=body)
    assert refused.value.code == code
    assert written() == before


def test_a_body_of_the_maximum_length_after_trimming_is_taken(
    people: dict[str, Any], manager: ApprovalRequest
) -> None:
    posted = comment_post(request_id=manager.pk, user=people["bob"], body=f"  {'x' * MAX_BODY}  ")
    assert len(posted.comment.body) == MAX_BODY


def test_one_event_per_comment_without_the_text(
    people: dict[str, Any], manager: ApprovalRequest
) -> None:
    posted = comment_post(
        request_id=manager.pk, user=people["bob"], body="Which cost centre, please?"
    )
    assert posted.created
    event = Event.objects.get(instance_id=manager.instance_id, type="approval_commented")
    assert event.data == {
        "comment": posted.comment.pk,
        "request": manager.pk,
        "user": "bob",
        "role": "assignee",
    }
    assert event.step == "manager_approval" and event.actor == "user:bob"
    assert "cost centre" not in str(event.data)


def test_a_repeated_submission_posts_one_comment(
    people: dict[str, Any], manager: ApprovalRequest, expense: Any
) -> None:
    other = expense(99)
    first = comment_post(request_id=manager.pk, user=people["bob"], body="hi", idempotency_key="k1")
    before = written()
    again = comment_post(request_id=manager.pk, user=people["bob"], body="hi", idempotency_key="k1")
    assert (again.created, again.comment.pk) == (False, first.comment.pk)
    with pytest.raises(Conflict) as other_body:
        comment_post(request_id=manager.pk, user=people["bob"], body="ho", idempotency_key="k1")
    assert other_body.value.code == "idempotency_conflict"
    with pytest.raises(Conflict):
        comment_post(request_id=other.pk, user=people["bob"], body="hi", idempotency_key="k1")
    with pytest.raises(InvalidInput) as bad_key:
        comment_post(request_id=manager.pk, user=people["bob"], body="hi", idempotency_key="a\nb")
    assert bad_key.value.code == "invalid_idempotency_key"
    assert written() == before
    # Keys are per author: dave may use k1.
    assert comment_post(
        request_id=manager.pk, user=people["dave"], body="hi", idempotency_key="k1"
    ).created


def test_the_thread_holds_every_round_of_the_step(
    people: dict[str, Any], manager: ApprovalRequest
) -> None:
    """A question on round 1; round 2 of the same step (another request of the step, as a
    resubmission makes it: written directly here) shows it, marked as round 1."""
    comment_post(request_id=manager.pk, user=people["bob"], body="Receipt?")
    services.approval_decide(request_id=manager.pk, user=people["bob"], outcome="approve")
    later = timezone.now() + timedelta(minutes=5)
    second = ApprovalRequest.objects.create(
        step_run_id=manager.step_run_id,
        round=2,
        instance_id=manager.instance_id,
        workflow=manager.workflow,
        step_name="manager_approval",
        title=manager.title,
        requester=people["alice"],
        created_at=later,
    )
    second.assignee_users.add(people["bob"])
    comment_post(request_id=second.pk, user=people["alice"], body="Attached now")
    page = web(people["bob"]).get(f"/inbox/{second.pk}/")
    thread = page.context["thread"]
    assert [(c.body, c.round, c.here) for c in thread] == [
        ("Receipt?", 1, False),
        ("Attached now", 2, True),
    ]
    assert "round 1" in page.content.decode()
    # The first round's page shows the thread too.
    first = web(people["bob"]).get(f"/inbox/{manager.pk}/").context["thread"]
    assert [(c.body, c.here) for c in first] == [("Receipt?", True), ("Attached now", False)]


# -- mail ---------------------------------------------------------------------------------------


@pytest.fixture
def queued(monkeypatch: Any) -> list[int]:
    ids: list[int] = []
    monkeypatch.setattr("integrations.mail._enqueue", ids.append)
    return ids


def comment_mails() -> list[tuple[str, str]]:
    return sorted(
        (m.to[0], m.message_id) for m in OutboundEmail.objects.filter(kind="approval_commented")
    )


def test_the_other_side_is_told_once_per_comment(
    people: dict[str, Any], manager: ApprovalRequest, otto: Any, queued: list[int]
) -> None:
    """An assignee's comment mails the requester; the requester's mails the current
    assignees (bob and dave, not alice); an operator's mails both; nobody gets their own."""
    by_bob = comment_post(request_id=manager.pk, user=people["bob"], body="Cost centre?").comment
    assert [to for to, _ in comment_mails()] == ["alice@example.com"]
    OutboundEmail.objects.all().delete()
    by_alice = comment_post(request_id=manager.pk, user=people["alice"], body="CC-42").comment
    assert comment_mails() == [
        ("bob@example.com", f"<signoff.comment.{by_alice.pk}.{people['bob'].pk}@127.0.0.1>"),
        ("dave@example.com", f"<signoff.comment.{by_alice.pk}.{people['dave'].pk}@127.0.0.1>"),
    ]
    OutboundEmail.objects.all().delete()
    comment_post(request_id=manager.pk, user=otto, body="Please decide by Friday")
    assert [to for to, _ in comment_mails()] == [
        "alice@example.com",
        "bob@example.com",
        "dave@example.com",
    ]
    assert by_bob.role == "assignee"


HOSTILE = '<a href="https://evil.example/x">click</a>\r\nBcc: all@example.com\n/a/fake-token/'


def test_comment_mail_over_smtp_links_the_page_never_an_action(
    people: dict[str, Any],
    manager: ApprovalRequest,
    queued: list[int],
    smtp_server: Any,
    settings: Any,
) -> None:
    settings.SIGNOFF_BASE_URL = "https://signoff.example"
    comment_post(request_id=manager.pk, user=people["bob"], body=f"Question:\n{HOSTILE}")
    [row] = OutboundEmail.objects.filter(kind="approval_commented")
    assert row.link_ref is None and mail.LINK_PLACEHOLDER not in row.body_text
    mail.emails_deliver(email_ids=[row.pk])
    [message] = smtp_server.messages
    assert message["To"] == "alice@example.com" and message["Bcc"] is None
    assert message["Subject"] == "bob commented: Expense: 120 EUR for Taxi to the airport"
    assert message["X-Signoff-Kind"] == "approval_commented"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    links = re.findall(r'href="([^"]+)"', html)
    # and the footer's link to alice's mail preferences (changes nothing but her mail mode)
    preferences = {link for link in links if link.startswith("https://signoff.example/mail/")}
    assert len(preferences) == 1
    assert set(links) - preferences == {
        f"https://signoff.example/inbox/{manager.pk}/",
        "https://signoff.example/inbox/",
    }
    assert "https://signoff.example/a/" not in text + html
    assert f"https://signoff.example/inbox/{manager.pk}/" in text
    # The hostile body is quoted text: no line of its own, no markup.
    assert all(not line.startswith("Bcc:") for line in text.splitlines())
    assert "  > Bcc: all@example.com" in text
    assert "&lt;a href=" in html and "evil.example" not in "".join(links)


# -- the web ------------------------------------------------------------------------------------


def test_post_a_comment_from_the_request_page(
    people: dict[str, Any], manager: ApprovalRequest
) -> None:
    alice = web(people["alice"], enforce_csrf_checks=True)
    page = alice.get(f"/inbox/{manager.pk}/")
    assert page.status_code == 200  # the requester reaches her request's page
    html = page.content.decode()
    assert f'action="/inbox/{manager.pk}/comments/"' in html
    key = re.search(r'name="key" value="([^"]+)"', html).group(1)
    token = alice.cookies["csrftoken"].value
    form = {"body": "The receipt is in the shared folder.", "key": key}
    # Without the page's CSRF token: refused, nothing written.
    before = written()
    assert alice.post(f"/inbox/{manager.pk}/comments/", form).status_code == 403
    assert written() == before
    response = alice.post(f"/inbox/{manager.pk}/comments/", {**form, "csrfmiddlewaretoken": token})
    comment = Comment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/inbox/{manager.pk}/#comment-{comment.pk}"
    # A double submit of the same form: one comment.
    again = alice.post(f"/inbox/{manager.pk}/comments/", {**form, "csrfmiddlewaretoken": token})
    assert again.status_code == 302 and Comment.objects.count() == 1
    shown = web(people["bob"]).get(f"/inbox/{manager.pk}/").content.decode()
    assert f'id="comment-{comment.pk}"' in shown
    assert "The receipt is in the shared folder." in shown


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ("", 400, "The comment is empty"),
        ("x" * (MAX_BODY + 1), 400, f"at most {MAX_BODY} characters"),
        ("a\x00b", 400, "Null characters are not allowed"),
    ],
)
def test_bad_comments_from_the_page(
    people: dict[str, Any], manager: ApprovalRequest, body: str, status: int, says: str
) -> None:
    before = written()
    response = web(people["bob"]).post(f"/inbox/{manager.pk}/comments/", {"body": body})
    assert response.status_code == status
    messages = [str(m) for m in response.context["messages"]]
    assert any(says in m for m in messages), messages
    assert written() == before


def test_comments_on_requests_one_cannot_see_or_has_no_part_in(
    people: dict[str, Any], manager: ApprovalRequest, sam: Any
) -> None:
    before = written()
    url = f"/inbox/{manager.pk}/comments/"
    assert web(people["carol"]).post(url, {"body": "hi"}).status_code == 404
    refused = web(sam).post(url, {"body": "hi"})
    assert refused.status_code == 403
    assert "only the request&#x27;s assignees" in refused.content.decode()
    assert web(sam).get(f"/inbox/{manager.pk}/").context["can_comment"] is False
    assert written() == before


# -- the API ------------------------------------------------------------------------------------


def test_api_post_and_list(people: dict[str, Any], manager: ApprovalRequest) -> None:
    url = f"/api/v1/approvals/{manager.pk}/comments/"
    bob = api(people["bob"])
    created = bob.post(
        url, {"body": "  Which project?  "}, format="json", HTTP_IDEMPOTENCY_KEY="q1"
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["body"] == "Which project?"
    assert (body["author"], body["role"], body["channel"], body["request"], body["step"]) == (
        "bob",
        "assignee",
        "api",
        manager.pk,
        "manager_approval",
    )
    replay = bob.post(url, {"body": "Which project?"}, format="json", HTTP_IDEMPOTENCY_KEY="q1")
    assert replay.status_code == 200 and replay.json()["id"] == body["id"]
    conflict = bob.post(url, {"body": "Other"}, format="json", HTTP_IDEMPOTENCY_KEY="q1")
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"
    alice = api(people["alice"])
    for n in range(3):
        assert alice.post(url, {"body": f"answer {n}"}, format="json").status_code == 201
    page = alice.get(f"{url}?page_size=2")
    assert page.status_code == 200
    assert [c["body"] for c in page.json()["results"]] == ["Which project?", "answer 0"]
    rest = alice.get(page.json()["next"])
    assert [c["body"] for c in rest.json()["results"]] == ["answer 1", "answer 2"]


@pytest.mark.parametrize(
    ("who", "payload", "status", "code"),
    [
        ("bob", {}, 400, "invalid"),
        ("bob", {"body": ""}, 400, "invalid"),
        ("bob", {"body": "   "}, 400, "comment_required"),
        ("bob", {"body": " " + "x" * MAX_BODY}, 400, "invalid"),  # the length as sent
        ("bob", {"body": "x" * (MAX_BODY + 1)}, 400, "invalid"),
        ("bob", {"body": "a\x00b"}, 400, "invalid"),
        ("bob", {"body": 5}, 400, "invalid"),
        ("bob", {"body": "hi", "extra": 1}, 400, "invalid"),
        ("carol", {"body": "hi"}, 404, "not_found"),
        ("sam", {"body": "hi"}, 403, "not_participant"),
    ],
)
def test_api_bad_comments(
    people: dict[str, Any],
    manager: ApprovalRequest,
    sam: Any,
    who: str,
    payload: dict[str, Any],
    status: int,
    code: str,
) -> None:
    user = sam if who == "sam" else people[who]
    before = written()
    response = api(user).post(f"/api/v1/approvals/{manager.pk}/comments/", payload, format="json")
    assert response.status_code == status, response.content
    assert response.json()["code"] == code
    assert written() == before


def test_api_errors_for_reading_and_a_closed_thread(
    people: dict[str, Any], manager: ApprovalRequest
) -> None:
    url = f"/api/v1/approvals/{manager.pk}/comments/"
    assert api(people["carol"]).get(url).status_code == 404
    assert api(people["bob"]).get("/api/v1/approvals/999999/comments/").status_code == 404
    bad_key = api(people["bob"]).post(url, {"body": "x"}, format="json", HTTP_IDEMPOTENCY_KEY=" ")
    assert bad_key.status_code == 400 and bad_key.json()["code"] == "invalid_idempotency_key"
    engine.instance_cancel(instance_id=manager.instance_id, actor="user:alice")
    closed = api(people["bob"]).post(url, {"body": "late"}, format="json")
    assert closed.status_code == 409 and closed.json()["code"] == "comments_closed"
    assert APIClient().get(url).status_code == 401


def test_the_schema_documents_the_comments_api(client: Client) -> None:
    schema = client.get("/api/schema/?format=json").json()
    operations = schema["paths"]["/api/v1/approvals/{id}/comments/"]
    assert set(operations["get"]["responses"]) >= {"200", "401", "404"}
    assert set(operations["post"]["responses"]) >= {"200", "201", "400", "403", "404", "409"}


# -- the history --------------------------------------------------------------------------------


def test_comments_are_in_the_history_and_on_the_timeline(
    people: dict[str, Any], expense: Any
) -> None:
    """alice's question on the manager step: in the API history (no text) and on the status
    page's timeline, with its text for those who may see the manager step's request (alice,
    bob) but not for carol, who reads the instance as finance."""
    manager = expense(5000)
    posted = comment_post(request_id=manager.pk, user=people["alice"], body="Hotel included")
    services.approval_decide(request_id=manager.pk, user=people["bob"], outcome="approve")
    instance = manager.instance_id
    history = api(people["alice"]).get(f"/api/v1/instances/{instance}/history/").json()
    [item] = [e for e in history["results"] if e["type"] == "approval_commented"]
    assert item["data"]["comment"] == posted.comment.pk and "Hotel" not in str(item)
    for name, sees_text in (("alice", True), ("bob", True), ("carol", False)):
        page = web(people[name]).get(f"/instances/{instance}/")
        [entry] = [e for e in page.context["timeline"] if e.event.type == "approval_commented"]
        assert entry.title == "Comment by alice (requester)"
        assert (entry.detail == "Hotel included") is sees_text, name
        assert ("Hotel included" in page.content.decode()) is sees_text, name


# -- erasure ------------------------------------------------------------------------------------

SEALED = "t_comment_sealed"


@pytest.fixture
def sealed_flow(people: dict[str, Any]) -> Any:
    wf = Workflow(SEALED, sensitive=["input.iban"])
    approval(wf, "check", users=["bob"], title="Pay {input[name]}", show=[("Name", "input.name")])
    registry.register(wf)
    yield wf
    registry.unregister(wf.name, wf.version)


def test_erase_masks_sealed_values_quoted_in_comments_and_their_mail(
    people: dict[str, Any], sealed_flow: Any, queued: list[int]
) -> None:
    iban = "DE89370400440532013000"
    instance, _ = engine.instance_start(
        workflow=SEALED, input={"name": "Ada", "iban": iban}, started_by=people["alice"]
    )
    request = ApprovalRequest.objects.get(instance=instance)
    comment_post(request_id=request.pk, user=people["bob"], body=f"Is {iban} right?")
    assert OutboundEmail.objects.filter(body_text__contains=iban).exists()
    retention.instance_erase(instance_id=instance.pk, actor="test", reason="subject asked")
    assert Comment.objects.get().body == f"Is {sealing.MASK} right?"
    assert not OutboundEmail.objects.filter(body_text__contains=iban).exists()
    assert not Event.objects.filter(instance=instance, data__icontains=iban).exists()
    assert WorkflowInstance.objects.get(pk=instance.pk).erased_at is not None
