"""The webhooks' HTTP client (httpx) and its guard, and secret rotation: real requests to real
servers on 127.0.0.1, every delivery verified with the ``standardwebhooks`` library as a
receiver would."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import time_machine
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.urls import reverse
from standardwebhooks import Webhook, WebhookVerificationError

from integrations import webhook_http, webhooks
from integrations.models import WebhookDelivery, WebhookSubscription, open_secret
from orchestration import engine
from orchestration.models import WorkflowInstance

pytestmark = pytest.mark.django_db

START = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
REAL_GETADDRINFO = socket.getaddrinfo


class Receiver:
    """An HTTP/1.1 receiver on 127.0.0.1 (keeps connections alive); records each request and
    the client port it came from; ``respond`` scripts the answer."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.ports: set[int] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.ports.add(self.client_address[1])
                receiver.requests.append({"headers": dict(self.headers.items()), "body": body})
                if respond is not None:
                    respond(self)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(respond: Callable[[BaseHTTPRequestHandler], None] | None = None) -> Receiver:
        started.append(Receiver(respond))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def no_doorbells(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record the delivery tasks instead of sending them; no engine doorbells."""
    sent: list[list[int]] = []
    monkeypatch.setattr(webhooks, "_enqueue", lambda pk, eta=None: sent.append([pk]))
    monkeypatch.setattr(webhooks, "_enqueue_batch", lambda ids: sent.append(list(ids)))
    monkeypatch.setattr("orchestration.journal.ring_doorbells", lambda bells: None)
    return sent


def resolving(mapping: dict[str, str]) -> Callable[..., Any]:
    """A ``getaddrinfo`` that answers ``mapping``'s address for its host names (a resolver
    under the test's control), and the real one for anything else."""

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in mapping:
            family = socket.AF_INET6 if ":" in mapping[host] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (mapping[host], port or 0))]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    return fake


def event_deliveries(capture: Any, **fields: Any) -> tuple[WorkflowInstance, list]:
    with capture(execute=True):
        instance, _ = engine.instance_start(workflow="t_sequence")
    rows = list(WebhookDelivery.objects.filter(instance_id=instance.pk).order_by("pk"))
    return instance, rows


def secret_of(hook: WebhookSubscription) -> str:
    return open_secret(WebhookSubscription.objects.get(pk=hook.pk).secret)


# -- connection reuse, limits, timeouts, TLS -----------------------------------------------------


def test_a_batch_reuses_one_connection_for_its_deliveries(
    receiver: Callable[..., Receiver],
    django_capture_on_commit_callbacks: Any,
    no_doorbells: list,
) -> None:
    server = receiver()
    hooks = [
        WebhookSubscription.objects.create(name=f"h{n}", url=server.url, event_types=[])
        for n in range(3)
    ]
    _, rows = event_deliveries(django_capture_on_commit_callbacks)
    assert len(rows) == 3
    assert no_doorbells == [[row.pk for row in rows]]  # one task for the event's deliveries

    assert webhooks.webhook_deliver_batch(delivery_ids=[row.pk for row in rows]) == {"delivered": 3}

    assert len(server.requests) == 3
    assert len(server.ports) == 1  # one TCP connection for the whole batch
    for hook, request in zip(hooks, server.requests, strict=True):
        Webhook(secret_of(hook)).verify(request["body"], request["headers"])
    # One delivery alone: a client of its own, a new connection.
    WebhookDelivery.objects.filter(pk=rows[0].pk).update(status="pending", attempts=0)
    assert webhooks.webhook_deliver(delivery_id=rows[0].pk) == "delivered"
    assert len(server.ports) == 2


def test_an_endless_response_body_is_read_only_up_to_the_limit(
    receiver: Callable[..., Receiver], settings: Any
) -> None:
    settings.SIGNOFF_WEBHOOK_MAX_RESPONSE_BYTES = 4096

    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(500)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"x" * 1024
        try:
            while True:  # until the client hangs up
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass

    server = receiver(endless)
    began = time.monotonic()
    with webhook_http.new_client() as client:
        outcome = webhook_http.send(client, server.url, b"{}", {})
    assert time.monotonic() - began < 5
    assert outcome.status_code == 500
    assert outcome.error.startswith("HTTP 500: xxxx")
    assert len(outcome.error) < 600  # an excerpt, not the body


def test_a_response_dripping_slowly_is_cut_at_the_total_timeout(
    receiver: Callable[..., Receiver], settings: Any
) -> None:
    settings.SIGNOFF_WEBHOOK_TOTAL_TIMEOUT = 0.5

    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            for _ in range(100):  # one byte each 0.1 s: every read is quick, the whole is not
                handler.wfile.write(b"1\r\nx\r\n")
                handler.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    server = receiver(drip)
    began = time.monotonic()
    with webhook_http.new_client() as client:
        outcome = webhook_http.send(client, server.url, b"{}", {})
    assert time.monotonic() - began < 3
    assert outcome.error == "response body too slow (over 0.5 s)"


def test_each_phase_has_its_own_timeout(settings: Any) -> None:
    settings.SIGNOFF_WEBHOOK_CONNECT_TIMEOUT = 1.5
    settings.SIGNOFF_WEBHOOK_TIMEOUT = 4
    settings.SIGNOFF_WEBHOOK_POOL_TIMEOUT = 2
    with webhook_http.new_client() as client:
        timeout = client.timeout
        assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (1.5, 4, 4, 2)
        assert client.follow_redirects is False
        assert client.trust_env is False


def test_a_redirect_is_not_followed(receiver: Callable[..., Receiver]) -> None:
    target = receiver()

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(307)
        handler.send_header("Location", target.url)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server = receiver(redirect)
    with webhook_http.new_client() as client:
        outcome = webhook_http.send(client, server.url, b"{}", {})
    assert (outcome.status_code, outcome.error) == (307, "HTTP 307 (redirects are not followed)")
    assert len(server.requests) == 1 and target.requests == []


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_certificates_are_verified(receiver: Callable[..., Receiver], tmp_path: Path) -> None:
    server = receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    with webhook_http.new_client() as client:
        outcome = webhook_http.send(client, f"https://127.0.0.1:{server.port}/hooks", b"{}", {})
    assert outcome.status_code is None
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error
    assert server.requests == []


# -- refused targets -----------------------------------------------------------------------------


REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.9",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space
    "0.0.0.0",
    "::1",
    "fe80::1",
    "fd00::1",
    "::ffff:127.0.0.1",
    "224.0.0.1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    assert webhook_http.is_refused_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1"])
def test_global_addresses_are_allowed(address: str) -> None:
    assert not webhook_http.is_refused_address(address)


def test_a_subscription_whose_host_resolves_to_a_private_address_is_not_saved(
    admin_client: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.SIGNOFF_WEBHOOK_ALLOW_PRIVATE = False
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        resolving({"hooks.internal.example": "10.0.0.7", "hooks.example.com": "93.184.216.34"}),
    )
    add = reverse("admin:integrations_webhooksubscription_add")
    for url, message in [
        ("https://hooks.internal.example/in", b"resolves to 10.0.0.7"),
        ("http://127.0.0.1:8000/in", b"resolves to 127.0.0.1"),
        ("http://[::1]/in", b"resolves to ::1"),
        ("http://169.254.169.254/latest/meta-data", b"resolves to 169.254.169.254"),
        ("https://no-such-host.invalid/in", b"does not resolve"),
    ]:
        response = admin_client.post(add, {"name": "bad", "url": url, "active": "on"})
        assert response.status_code == 200, url  # the form again, with the error
        assert message in response.content, (url, response.content[-3000:])
    assert not WebhookSubscription.objects.exists()

    # A public address is accepted (nothing is sent when saving).
    response = admin_client.post(
        add, {"name": "good", "url": "https://hooks.example.com/in", "active": "on"}
    )
    assert response.status_code == 302
    hook = WebhookSubscription.objects.get(name="good")

    # Changing it to a private target is refused and changes nothing.
    change = reverse("admin:integrations_webhooksubscription_change", args=[hook.pk])
    response = admin_client.post(
        change, {"name": "good", "url": "https://hooks.internal.example/x", "active": "on"}
    )
    assert response.status_code == 200 and b"resolves to 10.0.0.7" in response.content
    assert WebhookSubscription.objects.get(pk=hook.pk).url == "https://hooks.example.com/in"


def test_a_delivery_to_a_host_now_resolving_to_a_private_address_fails_without_a_request(
    receiver: Callable[..., Receiver],
    django_capture_on_commit_callbacks: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Saved while it resolved to a public address; at delivery time the name resolves to the
    loopback, where a real server listens (DNS rebinding): refused at connect time, no request
    reaches it, and the delivery fails at once (retrying would not help)."""
    server = receiver()
    settings.SIGNOFF_WEBHOOK_ALLOW_PRIVATE = False
    monkeypatch.setattr(socket, "getaddrinfo", resolving({"hooks.example.com": "93.184.216.34"}))
    hook = WebhookSubscription(
        name="rebound", url=f"http://hooks.example.com:{server.port}/hooks", event_types=[]
    )
    hook.full_clean()
    hook.save()
    _, [delivery] = event_deliveries(django_capture_on_commit_callbacks)

    monkeypatch.setattr(socket, "getaddrinfo", resolving({"hooks.example.com": "127.0.0.1"}))
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "failed"

    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 1
    assert delivery.last_error.startswith("refused: hooks.example.com resolves to 127.0.0.1")
    assert server.requests == []

    # With private targets allowed (tests, the demo) the same name reaches the server.
    settings.SIGNOFF_WEBHOOK_ALLOW_PRIVATE = True
    assert webhooks.webhook_delivery_retry(delivery_id=delivery.pk)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "delivered"
    [request] = server.requests
    Webhook(secret_of(hook)).verify(request["body"], request["headers"])


def test_a_loopback_receiver_is_refused_when_private_targets_are_not_allowed(
    receiver: Callable[..., Receiver], settings: Any
) -> None:
    server = receiver()
    settings.SIGNOFF_WEBHOOK_ALLOW_PRIVATE = False
    with webhook_http.new_client() as client:
        outcome = webhook_http.send(client, server.url, b"{}", {})
    assert outcome.refused and outcome.status_code is None
    assert "127.0.0.1" in outcome.error
    assert server.requests == []


def test_alert_rules_get_the_same_guard(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from integrations.alerts.rules import webhook_url_problem

    settings.SIGNOFF_WEBHOOK_ALLOW_PRIVATE = False
    monkeypatch.setattr(socket, "getaddrinfo", resolving({"alerts.example.com": "192.168.0.3"}))
    assert "resolves to 192.168.0.3" in webhook_url_problem("https://alerts.example.com/a")


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_signs_with_both_secrets_during_the_overlap_then_only_the_new_one(
    receiver: Callable[..., Receiver], django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    settings.SIGNOFF_WEBHOOK_SECRET_OVERLAP_HOURS = 24
    server = receiver()
    hook = WebhookSubscription.objects.create(name="erp", url=server.url, event_types=[])
    old = secret_of(hook)
    with time_machine.travel(START, tick=False) as clock:
        new = webhooks.webhook_secret_rotate(subscription_id=hook.pk)
        assert new != old and new.startswith("whsec_") and secret_of(hook) == new

        _, [first] = event_deliveries(django_capture_on_commit_callbacks)
        assert webhooks.webhook_deliver(delivery_id=first.pk) == "delivered"
        request = server.requests[-1]
        assert len(request["headers"]["webhook-signature"].split(" ")) == 2
        # A receiver still on the old secret and one already on the new both verify.
        Webhook(old).verify(request["body"], request["headers"])
        Webhook(new).verify(request["body"], request["headers"])
        assert webhooks.verify_signature(
            old, request["headers"]["X-Signoff-Signature"], request["body"]
        )

        # After the overlap: only the new secret signs, and the sweeper drops the old one.
        clock.move_to(START + timedelta(hours=24, seconds=1))
        _, rows = event_deliveries(django_capture_on_commit_callbacks)
        assert webhooks.webhook_deliver(delivery_id=rows[-1].pk) == "delivered"
        request = server.requests[-1]
        assert len(request["headers"]["webhook-signature"].split(" ")) == 1
        Webhook(new).verify(request["body"], request["headers"])
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(request["body"], request["headers"])
        webhooks.sweep_webhooks()
    hook.refresh_from_db()
    assert (hook.previous_secret, hook.previous_secret_expires_at) == ("", None)


def test_rotating_twice_keeps_only_the_last_previous_secret_and_unknown_ids_change_nothing(
    receiver: Callable[..., Receiver], django_capture_on_commit_callbacks: Any
) -> None:
    server = receiver()
    hook = WebhookSubscription.objects.create(name="erp", url=server.url, event_types=[])
    first = secret_of(hook)
    second = webhooks.webhook_secret_rotate(subscription_id=hook.pk)
    third = webhooks.webhook_secret_rotate(subscription_id=hook.pk)
    _, [delivery] = event_deliveries(django_capture_on_commit_callbacks)
    webhooks.webhook_deliver(delivery_id=delivery.pk)
    request = server.requests[-1]
    Webhook(second).verify(request["body"], request["headers"])
    Webhook(third).verify(request["body"], request["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(first).verify(request["body"], request["headers"])

    before = list(WebhookSubscription.objects.values_list("pk", "secret", "previous_secret"))
    with pytest.raises(WebhookSubscription.DoesNotExist):
        webhooks.webhook_secret_rotate(subscription_id=hook.pk + 999)
    assert list(WebhookSubscription.objects.values_list("pk", "secret", "previous_secret")) == (
        before
    )


def test_secrets_are_sealed_at_rest_and_masked_when_shown(admin_client: Any) -> None:
    hook = WebhookSubscription.objects.create(name="erp", url="http://127.0.0.1:9/x")
    secret = secret_of(hook)
    stored = WebhookSubscription.objects.values_list("secret", flat=True).get(pk=hook.pk)
    assert secret not in stored and not stored.startswith("whsec_")
    assert hook.secret_hint() == f"whsec_••••••{secret[-4:]}"
    webhooks.webhook_secret_rotate(subscription_id=hook.pk)
    hook.refresh_from_db()
    assert secret not in hook.previous_secret
    page = admin_client.get(
        reverse("admin:integrations_webhooksubscription_change", args=[hook.pk])
    )
    assert secret.encode() not in page.content and secret_of(hook).encode() not in page.content
    assert b"the previous secret signs too until" in page.content


def test_a_secret_that_cannot_be_opened_is_a_clear_error(settings: Any) -> None:
    from orchestration import sealing

    hook = WebhookSubscription.objects.create(name="erp", url="http://127.0.0.1:9/x")
    WebhookSubscription.objects.filter(pk=hook.pk).update(secret="gAAAAtampered")
    with pytest.raises(sealing.SealError, match="cannot decrypt a webhook secret"):
        WebhookSubscription.objects.get(pk=hook.pk).signing_secrets()
