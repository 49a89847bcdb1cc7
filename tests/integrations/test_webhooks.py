"""Outbound webhooks: real engine events, delivered to real HTTP servers on 127.0.0.1.

Most tests leave Celery out: they record what would be enqueued and call the delivery service
synchronously, as the task does, and send no engine doorbells. The ``e2e`` test runs the whole
path with a real worker: steps, announcements, delivery tasks.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse
from standardwebhooks import Webhook, WebhookVerificationError

from integrations import webhook_http, webhooks
from integrations.models import WebhookDelivery, WebhookSubscription, open_secret
from orchestration import engine
from orchestration.models import Event, StepRun, WorkflowInstance
from orchestration.signals import event_committed
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

START = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)


class Endpoint:
    """A webhook receiver on 127.0.0.1: records each request, answers the scripted statuses
    in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"receiver says no")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/signoff"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Callable[..., Endpoint]]:
    started: list[Endpoint] = []

    def start(*statuses: int) -> Endpoint:
        server = Endpoint(list(statuses))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def refused_url() -> str:
    """A loopback port nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hooks"


@pytest.fixture(autouse=True)
def enqueued(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, datetime | None]]:
    """Record the delivery tasks that would be sent; send no engine doorbells (except in the
    end-to-end tests, where a real worker gets both)."""
    sent: list[tuple[int, datetime | None]] = []
    if request.node.get_closest_marker("e2e"):
        return sent
    monkeypatch.setattr(webhooks, "_enqueue", lambda pk, eta=None: sent.append((pk, eta)))
    monkeypatch.setattr(
        webhooks, "_enqueue_batch", lambda ids: sent.extend((pk, None) for pk in ids)
    )
    monkeypatch.setattr("orchestration.journal.ring_doorbells", lambda bells: None)
    return sent


def secret_of(hook: WebhookSubscription) -> str:
    """The subscription's current secret, as the receiver was given it (stored sealed)."""
    return open_secret(WebhookSubscription.objects.get(pk=hook.pk).secret)


def verified(secret: str, request: dict[str, Any]) -> Any:
    """What a receiver does with a delivery: the ``standardwebhooks`` library's check of the
    raw body and the headers (raises ``WebhookVerificationError``), then the JSON."""
    return Webhook(secret).verify(request["body"], request["headers"])


def subscribe(url: str, **fields: Any) -> WebhookSubscription:
    fields.setdefault("name", f"hook-{WebhookSubscription.objects.count() + 1}")
    return WebhookSubscription.objects.create(url=url, **fields)


def start_instance(capture: Any, **kwargs: Any) -> WorkflowInstance:
    with capture(execute=True):
        instance, _ = engine.instance_start(workflow="t_sequence", **kwargs)
    return instance


def run_to_end(capture: Any, instance: WorkflowInstance) -> None:
    """Play the worker: run each scheduled step, committing (and announcing) after each."""
    for _ in range(10):
        due = StepRun.objects.filter(instance=instance, state="scheduled").order_by("position")
        if not due:
            return
        for step in due:
            with capture(execute=True):
                engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


# -- signed delivery -----------------------------------------------------------------------------


def test_signed_delivery_of_a_real_event_reaches_a_loopback_server(
    endpoint: Callable[..., Endpoint], django_capture_on_commit_callbacks: Any, enqueued: list
) -> None:
    server = endpoint()
    hook = subscribe(server.url, event_types=["instance_started"])

    instance = start_instance(django_capture_on_commit_callbacks, business_key="PO-1001")

    delivery = WebhookDelivery.objects.get(subscription=hook)
    assert (delivery.status, delivery.event_type, delivery.instance_id) == (
        "pending",
        "instance_started",
        instance.pk,
    )
    assert enqueued == [(delivery.pk, None)]
    assert server.requests == []  # nothing was sent inline

    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "delivered"

    [request] = server.requests
    headers, body = request["headers"], request["body"]
    assert request["path"] == "/hooks/signoff"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "Signoff-Webhooks/1"
    assert headers["X-Signoff-Event"] == "instance_started"
    assert headers["X-Signoff-Delivery"] == str(delivery.pk)
    assert headers["webhook-id"] == str(delivery.pk)
    assert headers["webhook-signature"].startswith("v1,")
    assert len(headers["webhook-signature"].split(" ")) == 1  # one secret, one signature
    assert verified(secret_of(hook), request)["id"] == delivery.pk
    # The deprecated header still verifies, for one release.
    assert webhooks.verify_signature(secret_of(hook), headers["X-Signoff-Signature"], body)

    event = Event.objects.get(instance=instance, type="instance_started")
    document = json.loads(body)
    assert document == {
        "id": delivery.pk,
        "event": "instance_started",
        "instance": {
            "id": str(instance.pk),
            "workflow": "t_sequence",
            "version": instance.version,
            "state": "running",
            "business_key": "PO-1001",
        },
        "step": None,
        "seq": event.seq,
        "data": event.data,
        "at": event.at.isoformat(),
    }

    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (1, 200, "")
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    assert delivery.history[-1]["status_code"] == 200

    # A duplicate message finds the delivery done and sends nothing.
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "skipped"
    assert len(server.requests) == 1


def test_tampered_body_wrong_secret_and_stale_timestamp_fail_verification(
    endpoint: Callable[..., Endpoint], django_capture_on_commit_callbacks: Any
) -> None:
    server = endpoint()
    hook = subscribe(server.url)
    with time_machine.travel(START, tick=False):
        start_instance(django_capture_on_commit_callbacks)
        delivery = WebhookDelivery.objects.get(subscription=hook, event_type="instance_started")
        webhooks.webhook_deliver(delivery_id=delivery.pk)
    [request] = server.requests
    header, body = request["headers"]["X-Signoff-Signature"], request["body"]
    sent_at = START.timestamp()
    assert header.startswith(f"t={int(sent_at)},v1=")

    assert webhooks.verify_signature(secret_of(hook), header, body, now=sent_at + 299)
    tampered = body.replace(b'"instance_started"', b'"instance_failed"', 1)
    assert tampered != body
    assert not webhooks.verify_signature(secret_of(hook), header, tampered, now=sent_at)
    assert not webhooks.verify_signature("whsec_other", header, body, now=sent_at)
    # Replayed after the tolerance, or dated in the future.
    assert not webhooks.verify_signature(secret_of(hook), header, body, now=sent_at + 301)
    assert not webhooks.verify_signature(secret_of(hook), header, body, now=sent_at - 301)
    with time_machine.travel(START + timedelta(minutes=6), tick=False):
        assert not webhooks.verify_signature(secret_of(hook), header, body)
    # A timestamp moved forward breaks the signature.
    moved = header.replace(f"t={int(sent_at)}", f"t={int(sent_at) + 200}")
    assert not webhooks.verify_signature(secret_of(hook), moved, body, now=sent_at + 200)
    for broken in ["", "v1=abc", f"t={int(sent_at)}", "t=soon,v1=abc", "garbage"]:
        assert not webhooks.verify_signature(secret_of(hook), broken, body, now=sent_at)


def test_standard_webhooks_receivers_refuse_tampered_wrong_stale_and_missing(
    endpoint: Callable[..., Endpoint], django_capture_on_commit_callbacks: Any
) -> None:
    """The ``standardwebhooks`` library, as a receiver runs it, accepts the delivery as sent and
    refuses every altered copy: body, id, timestamp, signature, secret, missing headers."""
    server = endpoint()
    hook = subscribe(server.url, event_types=["instance_started"])
    with time_machine.travel(START, tick=False):
        start_instance(django_capture_on_commit_callbacks)
        delivery = WebhookDelivery.objects.get(subscription=hook)
        webhooks.webhook_deliver(delivery_id=delivery.pk)
        [request] = server.requests
        secret = secret_of(hook)
        assert request["headers"]["webhook-timestamp"] == str(int(START.timestamp()))
        assert verified(secret, request)["event"] == "instance_started"

        headers, body = request["headers"], request["body"]
        signature = headers["webhook-signature"]
        altered = [
            (body.replace(b"instance_started", b"instance_failed", 1), headers),
            (body + b" ", headers),
            (body, {**headers, "webhook-id": str(delivery.pk + 1)}),
            (body, {**headers, "webhook-timestamp": str(int(START.timestamp()) + 1)}),
            (body, {**headers, "webhook-signature": "v1," + signature[3:][::-1]}),
            (body, {**headers, "webhook-signature": "v2," + signature[3:]}),
            (body, {**headers, "webhook-signature": ""}),
            (body, {k: v for k, v in headers.items() if k != "webhook-id"}),
            (body, {k: v for k, v in headers.items() if k != "webhook-signature"}),
            (body, {k: v for k, v in headers.items() if k != "webhook-timestamp"}),
        ]
        for changed_body, changed_headers in altered:
            with pytest.raises(WebhookVerificationError):
                Webhook(secret).verify(changed_body, changed_headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(webhooks.new_webhook_secret()).verify(body, headers)
    # Replayed later than the library's tolerance (five minutes).
    with time_machine.travel(START + timedelta(minutes=6), tick=False):
        with pytest.raises(WebhookVerificationError):
            verified(secret, request)


# -- retries -------------------------------------------------------------------------------------


def test_failing_endpoint_is_retried_with_backoff_then_marked_failed(
    endpoint: Callable[..., Endpoint],
    refused_url: str,
    django_capture_on_commit_callbacks: Any,
    enqueued: list,
) -> None:
    server = endpoint(500)
    hook = subscribe(server.url, event_types=["instance_started"])
    with time_machine.travel(START, tick=False) as clock:
        start_instance(django_capture_on_commit_callbacks)
        delivery = WebhookDelivery.objects.get(subscription=hook)
        enqueued.clear()

        # Attempt 1: the receiver answers 500.
        with django_capture_on_commit_callbacks(execute=True):
            assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "retrying"
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
            "pending",
            1,
            500,
        )
        assert delivery.last_error == "HTTP 500: receiver says no"
        assert delivery.next_attempt_at == START + timedelta(seconds=10)
        assert enqueued == [(delivery.pk, delivery.next_attempt_at)]

        # Called before it is due (a duplicate message): nothing is sent.
        assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "not_due"
        assert len(server.requests) == 1

        # Then the endpoint goes away: connection refused, with growing waits.
        server.stop()
        WebhookSubscription.objects.filter(pk=hook.pk).update(url=refused_url)
        waits = []
        for attempt in range(2, 9):
            previous = delivery.next_attempt_at
            clock.move_to(previous)
            with django_capture_on_commit_callbacks(execute=True):
                result = webhooks.webhook_deliver(delivery_id=delivery.pk)
            delivery.refresh_from_db()
            assert delivery.attempts == attempt
            assert delivery.last_status_code is None
            assert "ConnectError" in delivery.last_error
            assert "refused" in delivery.last_error.lower()
            if attempt < 8:
                assert result == "retrying"
                waits.append((delivery.next_attempt_at - previous).total_seconds())
                assert enqueued[-1] == (delivery.pk, delivery.next_attempt_at)
            else:
                assert result == "failed"

    assert waits == [20, 40, 80, 160, 320, 640]
    assert delivery.status == "failed"
    assert delivery.next_attempt_at is None and delivery.delivered_at is None
    assert [entry["attempt"] for entry in delivery.history] == list(range(1, 9))
    assert delivery.history[0]["status_code"] == 500
    assert len(enqueued) == 7  # one message per retry, none after the last attempt
    # A failed delivery is not picked up again by a stray message.
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "skipped"


def test_backoff_is_exponential_and_capped() -> None:
    waits = [webhooks.backoff(n).total_seconds() for n in range(1, 12)]
    assert waits[:4] == [10, 20, 40, 80]
    assert max(waits) == 3600 and waits[-1] == 3600


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(
    endpoint: Callable[..., Endpoint], django_capture_on_commit_callbacks: Any
) -> None:
    server = endpoint(302)
    hook = subscribe(server.url, event_types=["instance_started"])
    start_instance(django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(subscription=hook)

    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "retrying"

    delivery.refresh_from_db()
    assert delivery.last_status_code == 302
    assert len(server.requests) == 1


def test_a_slow_endpoint_times_out_as_a_failed_attempt(
    django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    settings.SIGNOFF_WEBHOOK_TIMEOUT = 0.3
    silent = socket.socket()  # accepts connections (backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        hook = subscribe(f"http://127.0.0.1:{silent.getsockname()[1]}/", event_types=[])
        start_instance(django_capture_on_commit_callbacks)
        delivery = WebhookDelivery.objects.get(subscription=hook)
        began = time.monotonic()
        assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "retrying"
        assert time.monotonic() - began < 3
    finally:
        silent.close()
    delivery.refresh_from_db()
    assert "timed out" in delivery.last_error.lower()


def test_delivery_for_a_deactivated_subscription_fails_without_a_request(
    endpoint: Callable[..., Endpoint], django_capture_on_commit_callbacks: Any
) -> None:
    server = endpoint()
    hook = subscribe(server.url)
    start_instance(django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(subscription=hook)
    WebhookSubscription.objects.filter(pk=hook.pk).update(active=False)

    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "failed"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 0)
    assert delivery.last_error == "subscription is not active"
    assert server.requests == []


def test_no_transaction_is_open_during_the_request_and_the_attempt_is_claimed(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = subscribe("http://127.0.0.1:9/hooks")
    start_instance(django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(subscription=hook)
    baseline = len(connection.savepoint_ids)  # the test's own transaction
    seen: dict[str, Any] = {}

    def post(url: str, body: bytes, headers: dict[str, str], **kw: Any) -> webhook_http.Outcome:
        # On SQLite an open transaction here would hold the write lock for the whole request.
        seen["savepoints"] = len(connection.savepoint_ids) - baseline
        # A duplicate message during the request finds the attempt claimed.
        seen["duplicate"] = webhooks.webhook_deliver(delivery_id=delivery.pk)
        seen["attempts"] = WebhookDelivery.objects.get(pk=delivery.pk).attempts
        return webhook_http.Outcome(204, "")

    monkeypatch.setattr(webhooks, "_post", post)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "delivered"
    assert seen == {"savepoints": 0, "duplicate": "not_due", "attempts": 1}


def test_an_attempt_overtaken_by_an_operator_retry_is_not_recorded(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch, enqueued: list
) -> None:
    hook = subscribe("http://127.0.0.1:9/hooks")
    start_instance(django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(subscription=hook)

    def post(url: str, body: bytes, headers: dict[str, str], **kw: Any) -> webhook_http.Outcome:
        assert webhooks.webhook_delivery_retry(delivery_id=delivery.pk, actor="user:ops")
        return webhook_http.Outcome(500, "HTTP 500")

    monkeypatch.setattr(webhooks, "_post", post)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "skipped"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 0, "")
    assert delivery.history == [{"at": delivery.history[0]["at"], "retried_by": "user:ops"}]


# -- admin ---------------------------------------------------------------------------------------


def test_retry_from_the_admin_sends_a_failed_delivery_again(
    endpoint: Callable[..., Endpoint],
    django_capture_on_commit_callbacks: Any,
    admin_client: Any,
    enqueued: list,
    settings: Any,
) -> None:
    settings.SIGNOFF_WEBHOOK_MAX_ATTEMPTS = 1
    server = endpoint(503)
    hook = subscribe(server.url, event_types=["instance_started"])
    start_instance(django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(subscription=hook)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "failed"
    enqueued.clear()

    changelist = reverse("admin:integrations_webhookdelivery_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            changelist, {"action": "retry_deliveries", "_selected_action": [delivery.pk]}
        )
    assert response.status_code == 302

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert delivery.history[-1]["retried_by"] == "user:admin"
    assert enqueued == [(delivery.pk, None)]

    # The task runs: this time the endpoint answers 200.
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "delivered"
    assert len(server.requests) == 2
    assert server.requests[0]["headers"]["X-Signoff-Delivery"] == str(delivery.pk)
    assert server.requests[1]["headers"]["X-Signoff-Delivery"] == str(delivery.pk)

    # A delivered one is not sent again.
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            changelist, {"action": "retry_deliveries", "_selected_action": [delivery.pk]}
        )
    assert enqueued == []
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "delivered"

    # History pages render.
    assert admin_client.get(changelist).status_code == 200
    page = admin_client.get(
        reverse("admin:integrations_webhookdelivery_change", args=[delivery.pk])
    )
    assert page.status_code == 200
    assert b"retried by user:admin" in page.content


def test_retry_needs_the_operate_permission(
    endpoint: Callable[..., Endpoint],
    django_capture_on_commit_callbacks: Any,
    client: Any,
    staff: Any,
    enqueued: list,
) -> None:
    staff.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    client.force_login(staff)
    hook = subscribe(endpoint().url)
    start_instance(django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(subscription=hook)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed")
    enqueued.clear()

    response = client.post(
        reverse("admin:integrations_webhookdelivery_changelist"),
        {"action": "retry_deliveries", "_selected_action": [delivery.pk]},
    )

    assert response.status_code == 403
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "failed"
    assert enqueued == []


def test_subscription_admin_generates_and_shows_the_secret(admin_client: Any) -> None:
    response = admin_client.post(
        reverse("admin:integrations_webhooksubscription_add"),
        {
            "name": "erp",
            "url": "http://127.0.0.1:9/hooks",
            "active": "on",
            "event_types": ["instance_succeeded", "step_failed"],
            "workflows": ["t_sequence"],
        },
    )
    assert response.status_code == 302, response.content[:2000]
    hook = WebhookSubscription.objects.get(name="erp")
    assert secret_of(hook).startswith("whsec_") and len(secret_of(hook)) > 30
    assert hook.event_types == ["instance_succeeded", "step_failed"]
    assert hook.workflows == ["t_sequence"]

    # Shown whole once, in the message after the add; stored sealed; masked ever after.
    secret = secret_of(hook)
    shown = admin_client.get(reverse("admin:integrations_webhooksubscription_changelist"))
    assert secret.encode() in shown.content
    assert secret not in hook.secret and "whsec_" not in hook.secret
    page = admin_client.get(
        reverse("admin:integrations_webhooksubscription_change", args=[hook.pk])
    )
    assert page.status_code == 200
    assert secret.encode() not in page.content
    assert secret[-4:].encode() in page.content  # the hint
    again = admin_client.get(reverse("admin:integrations_webhooksubscription_changelist"))
    assert secret.encode() not in again.content

    old = secret_of(hook)
    rotated = admin_client.post(
        reverse("admin:integrations_webhooksubscription_changelist"),
        {"action": "rotate_secret", "_selected_action": [hook.pk]},
        follow=True,
    )
    hook.refresh_from_db()
    assert secret_of(hook) != old
    assert secret_of(hook).encode() in rotated.content  # the new one, once
    assert old.encode() not in rotated.content
    assert hook.previous_secret and hook.previous_secret_expires_at is not None

    bad = admin_client.post(
        reverse("admin:integrations_webhooksubscription_add"),
        {"name": "ftp", "url": "ftp://127.0.0.1/x", "active": "on"},
    )
    assert bad.status_code == 200  # the form again, with the error
    assert not WebhookSubscription.objects.filter(name="ftp").exists()


def test_view_only_staff_do_not_see_the_secret(client: Any, staff: Any) -> None:
    staff.user_permissions.add(Permission.objects.get(codename="view_webhooksubscription"))
    client.force_login(staff)
    hook = subscribe("http://127.0.0.1:9/hooks")

    page = client.get(reverse("admin:integrations_webhooksubscription_change", args=[hook.pk]))

    assert page.status_code == 200
    assert secret_of(hook).encode() not in page.content


def test_subscription_validation() -> None:
    hook = WebhookSubscription(name="x", url="ftp://example/hook", event_types=["step_started"])
    with pytest.raises(ValidationError) as error:
        hook.full_clean()
    assert set(error.value.message_dict) == {"url", "event_types"}
    WebhookSubscription(name="ok", url="https://example.com/hook").full_clean()


# -- the receiver --------------------------------------------------------------------------------


def test_receiver_creates_deliveries_only_for_matching_subscriptions(
    django_capture_on_commit_callbacks: Any, enqueued: list
) -> None:
    url = "http://127.0.0.1:9/hooks"
    every = subscribe(url, name="every")
    finished = subscribe(url, name="finished", event_types=["instance_succeeded"])
    this_workflow = subscribe(url, name="this", workflows=["t_sequence"])
    other_workflow = subscribe(url, name="other", workflows=["expense_approval"])
    inactive = subscribe(url, name="inactive", active=False)
    steps = subscribe(url, name="steps", event_types=["step_failed"])

    instance = start_instance(django_capture_on_commit_callbacks)
    run_to_end(django_capture_on_commit_callbacks, instance)
    instance.refresh_from_db()
    assert instance.state == "succeeded"

    def types(hook: WebhookSubscription) -> list[str]:
        return list(
            WebhookDelivery.objects.filter(subscription=hook)
            .order_by("event_seq")
            .values_list("event_type", flat=True)
        )

    lifecycle = ["instance_started", "instance_succeeded"]
    assert types(every) == lifecycle  # no step_* events unless asked for
    assert types(this_workflow) == lifecycle
    assert types(finished) == ["instance_succeeded"]
    assert types(other_workflow) == []
    assert types(inactive) == []
    assert types(steps) == []
    assert sorted(pk for pk, _ in enqueued) == sorted(
        WebhookDelivery.objects.values_list("pk", flat=True)
    )
    succeeded = WebhookDelivery.objects.get(subscription=finished)
    assert succeeded.payload["instance"]["state"] == "succeeded"


def test_receiver_never_raises_into_the_engine(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Connected in IntegrationsConfig.ready().
    assert any(entry[0][0] == "integrations.webhooks" for entry in event_committed.receivers)
    subscribe("http://127.0.0.1:9/hooks")

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(webhooks, "webhook_deliveries_create", broken)
    instance = start_instance(django_capture_on_commit_callbacks)

    assert WorkflowInstance.objects.get(pk=instance.pk).state == "running"
    assert WebhookDelivery.objects.count() == 0
    event = Event.objects.get(instance=instance, type="instance_started")
    assert webhooks.on_event_committed(sender=Event, event=event) is None


def test_an_event_announced_twice_is_recorded_once(
    django_capture_on_commit_callbacks: Any,
) -> None:
    subscribe("http://127.0.0.1:9/hooks")
    instance = start_instance(django_capture_on_commit_callbacks)
    event = Event.objects.select_related("instance").get(instance=instance, type="instance_started")

    with django_capture_on_commit_callbacks(execute=True):
        webhooks.on_event_committed(sender=Event, event=event)

    assert WebhookDelivery.objects.filter(instance_id=instance.pk).count() == 1


def test_the_engine_does_no_http_and_writes_deliveries_only_after_its_commit(
    django_capture_on_commit_callbacks: Any, enqueued: list
) -> None:
    # An endpoint that accepts connections and never answers: any inline HTTP call would hang
    # for the whole timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        subscribe(f"http://127.0.0.1:{silent.getsockname()[1]}/")
        began = time.monotonic()
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            instance, _ = engine.instance_start(workflow="t_sequence")
        # Inside the engine's transaction: the event exists, no delivery yet.
        assert Event.objects.filter(instance=instance, type="instance_started").exists()
        assert WebhookDelivery.objects.count() == 0
        with django_capture_on_commit_callbacks(execute=True):
            for callback in callbacks:
                callback()
        elapsed = time.monotonic() - began
    finally:
        silent.close()

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.attempts == 0
    assert enqueued == [(delivery.pk, None)]
    assert elapsed < 1.0


# -- sweeper -------------------------------------------------------------------------------------


def test_sweeper_rings_again_for_lost_messages_and_prunes_old_deliveries(
    django_capture_on_commit_callbacks: Any, enqueued: list
) -> None:
    hook = subscribe("http://127.0.0.1:9/hooks")
    with time_machine.travel(START, tick=False) as clock:
        start_instance(django_capture_on_commit_callbacks)
        lost = WebhookDelivery.objects.get(subscription=hook)
        enqueued.clear()

        # Due now: its message may still be on its way.
        assert webhooks.sweep_webhooks() == 0

        clock.shift(timedelta(minutes=5))
        with django_capture_on_commit_callbacks(execute=True):
            assert webhooks.sweep_webhooks() == 1
        assert enqueued == [(lost.pk, None)]
        lost.refresh_from_db()
        assert lost.next_attempt_at == START + timedelta(minutes=5)
        # Rung just now: the next sweep leaves it alone.
        assert webhooks.sweep_webhooks() == 0

        WebhookDelivery.objects.filter(pk=lost.pk).update(status="delivered")
        clock.shift(timedelta(days=31))
        webhooks.sweep_webhooks()
    assert not WebhookDelivery.objects.filter(pk=lost.pk).exists()


# -- the whole path ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_e2e_a_worker_delivers_signed_lifecycle_events(
    worker: Any, endpoint: Callable[..., Endpoint]
) -> None:
    server = endpoint()
    hook = subscribe(server.url, event_types=["instance_started", "instance_succeeded"])
    # A second subscription to the same events: each event's two deliveries go out as one
    # batch task (one HTTP client) on the worker.
    other = endpoint()
    second = subscribe(other.url, event_types=["instance_started", "instance_succeeded"])

    instance, _ = engine.instance_start(workflow="t_sequence", business_key="E2E-1")

    wait_for(
        lambda: (
            WebhookDelivery.objects.filter(instance_id=instance.pk, status="delivered").count() == 4
        ),
        timeout=30,
        message="four delivered webhooks",
    )
    for receiver, subscription in ((server, hook), (other, second)):
        assert sorted(r["headers"]["X-Signoff-Event"] for r in receiver.requests) == [
            "instance_started",
            "instance_succeeded",
        ]
        for request in receiver.requests:
            # As a receiver does it: the standardwebhooks library, then the JSON.
            document = verified(secret_of(subscription), request)
            assert webhooks.verify_signature(
                secret_of(subscription), request["headers"]["X-Signoff-Signature"], request["body"]
            )
            assert document["instance"]["id"] == str(instance.pk)
            assert document["instance"]["business_key"] == "E2E-1"
            assert str(document["id"]) == request["headers"]["webhook-id"]
            assert request["headers"]["webhook-id"] == request["headers"]["X-Signoff-Delivery"]


def test_active_subscriptions_are_cached_per_process_and_forgotten_on_change(
    settings: Any, django_assert_num_queries: Any
) -> None:
    settings.SIGNOFF_WEBHOOK_SUBSCRIPTION_CACHE_SECONDS = 60
    webhooks.forget_subscriptions()
    with django_assert_num_queries(1):
        assert webhooks.active_subscriptions() == []
    with django_assert_num_queries(0):
        assert webhooks.active_subscriptions() == []  # cached
    hook = subscribe("http://127.0.0.1:9/hook")  # saving it clears this process's cache
    with django_assert_num_queries(1):
        assert webhooks.active_subscriptions() == [hook]
    settings.SIGNOFF_WEBHOOK_SUBSCRIPTION_CACHE_SECONDS = 0
    with django_assert_num_queries(1):
        assert webhooks.active_subscriptions() == [hook]  # 0: read for every event


def test_key_rotation_reencrypts_webhook_and_alert_secrets(settings: Any) -> None:
    # The subscriptions' and alert rules' sealed secrets (current and, during an overlap,
    # previous) are re-encrypted by `manage.py signoff rotate-keys`: after the old key is
    # removed they still open to the same secrets.
    from cryptography.fernet import Fernet

    from integrations.models import AlertRule, live_secrets
    from orchestration.retention import rotate_keys
    from tests.integrations.alert_helpers import rule

    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SIGNOFF_ENCRYPTION_KEYS = first
    hook = WebhookSubscription.objects.create(name="erp", url="http://127.0.0.1:9/", event_types=[])
    newest = webhooks.webhook_secret_rotate(subscription_id=hook.pk)
    alert = rule(webhook_url="http://127.0.0.1:9/alert")
    hook.refresh_from_db()
    secrets = [open_secret(hook.secret), open_secret(hook.previous_secret)]
    assert secrets[0] == newest
    alert_secret = open_secret(alert.webhook_secret)
    stored = (hook.secret, hook.previous_secret, alert.webhook_secret)

    settings.SIGNOFF_ENCRYPTION_KEYS = f"{second},{first}"
    assert rotate_keys() >= 2
    settings.SIGNOFF_ENCRYPTION_KEYS = second  # the old key removed
    hook.refresh_from_db()
    alert = AlertRule.objects.get(pk=alert.pk)
    assert (hook.secret, hook.previous_secret, alert.webhook_secret) != stored
    assert [open_secret(hook.secret), open_secret(hook.previous_secret)] == secrets
    assert open_secret(alert.webhook_secret) == alert_secret
    assert (
        live_secrets(hook.secret, hook.previous_secret, hook.previous_secret_expires_at) == secrets
    )
