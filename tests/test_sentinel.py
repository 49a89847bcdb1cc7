"""The sentinel: one unique value put in every kind of sealed field a workflow can have, run for
real (a Celery worker on PostgreSQL and Redis, mail over SMTP, webhooks over HTTP), then looked
for everywhere a person or another system could read it.

Two instances of ``t_sentinel`` (tests/workflows.py) share one business key: the value is in
the input, a step's sealed output, an early signal's payload, the approval's title and fields,
a retried attempt's error and (second instance) the error that fails it for good. Mail goes to
the approver, every event to a webhook subscription. The plaintext must appear in no table
(every row of every table as text), no log line (this process at DEBUG and the worker's log),
no mail, no webhook body, and no page or API answer read by someone without
``orchestration.view_sensitive`` — before and after ``signoff erase``. After the erase nothing
left in the database opens to it.
"""

from __future__ import annotations

import logging
import re
import uuid
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import NoReverseMatch, reverse
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from integrations.models import (
    WEBHOOK_EVENTS,
    Alert,
    AlertRule,
    OutboundEmail,
    WebhookDelivery,
    WebhookSubscription,
)
from orchestration import sealing
from orchestration.models import WorkflowInstance
from tests.conftest import WorkerProcess, wait_for
from tests.integrations.test_webhooks import Endpoint

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

FERNET_TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_=-]{40,}")
BUSINESS_KEY = "sentinel-subject"


class MailingWorker(WorkerProcess):
    """The test worker, sending its mail to the test's SMTP server, logging to its own file."""

    def __init__(self, db_name: str, email_url: str, log: Path) -> None:
        super().__init__(db_name)
        self.email_url = email_url
        self.log = log

    def env(self) -> dict[str, str]:
        return {**super().env(), "EMAIL_URL": self.email_url}


@pytest.fixture
def mailing_worker(worker: WorkerProcess, smtp_server: Any, settings: Any, tmp_path: Path) -> Any:
    """Stands in for the shared worker (stopped meanwhile; the ``worker`` fixture starts it
    again afterwards)."""
    worker.stop()
    own = MailingWorker(
        settings.DATABASES["default"]["NAME"],
        f"smtp://127.0.0.1:{settings.EMAIL_PORT}",
        tmp_path / "worker.log",
    )
    own.start()
    yield own
    own.quiesce()
    own.stop()


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    """A starter and an approver (plain users), and staff who may view everything but the
    sealed fields; one person who may (``view_sensitive``), as a control."""
    starter = django_user_model.objects.create_user("sentinel_starter", password="pw-start-1")
    approver = django_user_model.objects.create_user(
        "sentinel_approver", email="approver@example.com", password="pw-approve-1"
    )
    viewer = django_user_model.objects.create_user(
        "sentinel_viewer", password="pw-view-1", is_staff=True
    )
    viewer.user_permissions.set(
        Permission.objects.filter(codename__startswith="view_").exclude(codename="view_sensitive")
    )
    opener = django_user_model.objects.create_user(
        "sentinel_opener", password="pw-open-1", is_staff=True
    )
    opener.user_permissions.set(Permission.objects.filter(codename="view_sensitive"))
    return {
        name: django_user_model.objects.get(pk=user.pk)
        for name, user in {
            "starter": starter,
            "approver": approver,
            "viewer": viewer,
            "opener": opener,
        }.items()
    }


def _api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _web(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def database_text() -> str:
    """Every row of every table as text (sessions decoded: their data is base64)."""
    parts = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT t::text FROM {quoted} t")  # noqa: S608 - our own table names
            parts.extend(row[0] for row in cursor.fetchall())
    for session in Session.objects.all():
        parts.append(str(SessionStore().decode(session.session_data)))
    return "\n".join(parts)


def opened_tokens(text: str) -> list[str]:
    """What every Fernet token in ``text`` opens to with the configured keys."""
    opened = []
    for token in set(FERNET_TOKEN.findall(text)):
        try:
            opened.append(sealing.open_value({sealing.MARK: token}))
        except sealing.SealError:
            continue
    return [str(value) for value in opened]


def responses(people: dict[str, Any], instances: list[WorkflowInstance]) -> dict[str, str]:
    """Every page and API answer about the subject, as read by people without
    ``view_sensitive``: the starter (API), the approver (inbox, approvals API) and staff with
    every view permission (API, status pages, history downloads, every admin page); the approver
    also reads the instances' status pages, downloads and API resource, as an assignee."""
    starter, approver, viewer = (
        _api(people["starter"]),
        _api(people["approver"]),
        _api(people["viewer"]),
    )
    inbox, staff = _web(people["approver"]), _web(people["viewer"])
    pages: dict[str, str] = {}

    def read(name: str, client: Any, path: str) -> None:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        body = (
            b"".join(response.streaming_content)
            if getattr(response, "streaming", False)
            else response.content
        )
        pages[f"{name} {path}"] = body.decode()

    for api_user, client in (("starter", starter), ("viewer", viewer)):
        read(api_user, client, f"/api/v1/instances/?business_key={BUSINESS_KEY}")
        for instance in instances:
            read(api_user, client, f"/api/v1/instances/{instance.pk}/")
            read(api_user, client, f"/api/v1/instances/{instance.pk}/history/")
    read("viewer", viewer, "/api/v1/alerts/")
    read("approver", inbox, "/inbox/?state=all")
    read("approver", approver, "/api/v1/approvals/?state=all")
    for request in ApprovalRequest.objects.filter(instance__in=instances):
        read("approver", inbox, f"/inbox/{request.pk}/")
        read("approver", approver, f"/api/v1/approvals/{request.pk}/")
    for instance in instances:
        for suffix in ("", "live/", "history.json", "history.csv"):
            read("viewer", staff, f"/instances/{instance.pk}/{suffix}")
            # The approver reads the instance too (read-only, as an assignee: issue 12).
            read("approver", inbox, f"/instances/{instance.pk}/{suffix}")
        read("approver", approver, f"/api/v1/instances/{instance.pk}/")
        read("approver", approver, f"/api/v1/instances/{instance.pk}/history/")
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        try:
            changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        except NoReverseMatch:
            continue
        if not model_admin.has_view_permission(_request_of(people["viewer"])):
            continue
        read("viewer", staff, changelist)
        for pk in model.objects.values_list("pk", flat=True)[:50]:
            read(
                "viewer",
                staff,
                reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[pk]),
            )
    read_admin = {name.split()[1] for name in pages if name.startswith("viewer /admin/")}
    for model in (WorkflowInstance, ApprovalRequest, OutboundEmail, WebhookDelivery):
        meta = model._meta
        assert reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist") in read_admin
    return pages


def _request_of(user: Any) -> Any:
    class Request:
        pass

    request = Request()
    request.user = user
    return request


def assert_nowhere(sentinel: str, where: dict[str, str]) -> None:
    leaks = sorted(name for name, text in where.items() if sentinel in text)
    assert not leaks, f"the sentinel is readable in: {leaks}"


def test_a_sentinel_in_every_sealed_field_is_readable_nowhere_before_and_after_erase(
    mailing_worker: MailingWorker,
    smtp_server: Any,
    people: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sentinel = f"SNTL{uuid.uuid4().hex[:16]}"
    server = Endpoint([])
    try:
        WebhookSubscription.objects.create(
            name="everything", url=server.url, event_types=sorted(WEBHOOK_EVENTS)
        )
        # An alert on the failure, by mail and by webhook: its notices hold no sealed value.
        AlertRule.objects.create(
            name="failures",
            condition="instance_failed",
            mail_to="ops@example.com",
            webhook_url=server.url,
        )
        starter = _api(people["starter"])
        said: dict[str, str] = {}  # what the API answered the starter and the approver

        # Two instances of one subject; the second fails for good at its last step.
        instances = []
        for fail in (False, True):
            response = starter.post(
                "/api/v1/instances/",
                {
                    "workflow": "t_sentinel",
                    "input": {"secret": sentinel, "name": "Ada", "fail": fail},
                    "business_key": BUSINESS_KEY,
                },
                format="json",
            )
            assert response.status_code == 201, response.content
            said[f"start fail={fail}"] = response.content.decode()
            instances.append(WorkflowInstance.objects.get(pk=response.json()["id"]))
        requests = [
            wait_for(
                lambda i=instance: ApprovalRequest.objects.filter(instance=i).first(),
                timeout=30,
                message="the review request",
            )
            for instance in instances
        ]
        # The signal arrives before its step is reached: kept, sealed, until consumed.
        for instance in instances:
            response = starter.post(
                f"/api/v1/instances/{instance.pk}/signals/callback/",
                {"code": f"code:{sentinel}"},
                format="json",
            )
            assert response.status_code == 202, response.content
            said[f"signal {instance.pk}"] = response.content.decode()
        approver = _api(people["approver"])
        for request in requests:
            response = approver.post(
                f"/api/v1/approvals/{request.pk}/approve/", {"comment": "fine"}, format="json"
            )
            assert response.status_code == 200, response.content
            said[f"approve {request.pk}"] = response.content.decode()

        def finished() -> bool:
            states = [WorkflowInstance.objects.get(pk=i.pk).state for i in instances]
            return states == ["succeeded", "failed"]

        wait_for(finished, timeout=40, message="one instance succeeded, one failed")
        wait_for(
            lambda: (
                not OutboundEmail.objects.exclude(status="sent").exists()
                and not WebhookDelivery.objects.exclude(status="delivered").exists()
                and Alert.objects.filter(deliveries__fired__webhook__status="delivered").exists()
            ),
            timeout=40,
            message="every mail sent and every webhook delivered",
        )
        assert len(smtp_server.messages) == 3  # two review requests, one alert
        delivered = {r["headers"]["X-Signoff-Event"] for r in server.requests}
        assert {"approval_requested", "step_failed", "instance_failed", "alert_fired"} <= delivered

        # The control: the value is really there, sealed, and opens for who may see it.
        everything = database_text()
        assert any(sentinel in text for text in opened_tokens(everything))
        opener = _api(people["opener"])
        detail = opener.get(f"/api/v1/instances/{instances[0].pk}/").json()
        assert detail["input"]["secret"] == sentinel

        def look_everywhere(moment: str) -> None:
            where = {f"{moment}: database": database_text()}
            where.update({f"{moment}: {k}": v for k, v in said.items()})
            where.update({f"{moment}: {k}": v for k, v in responses(people, instances).items()})
            where[f"{moment}: log"] = caplog.text + "\n".join(
                str(r.args) + r.getMessage() for r in caplog.records
            )
            where[f"{moment}: worker log"] = mailing_worker.log.read_text(errors="replace")
            for n, message in enumerate(smtp_server.messages):
                parts = [message.as_string()] + [
                    part.get_content()
                    for part in message.walk()
                    if part.get_content_maintype() == "text"
                ]
                where[f"{moment}: mail {n} ({message['Subject']})"] = "\n".join(parts)
            for n, request in enumerate(server.requests):
                where[f"{moment}: webhook {n}"] = request["body"].decode()
            assert_nowhere(sentinel, where)

        look_everywhere("before erase")
        # Sealed, not dropped: the title and fields carry the mask.
        request = ApprovalRequest.objects.get(pk=requests[0].pk)
        assert request.title == f"Review {sealing.MASK} ({sealing.MASK}) for Ada"

        call_command("signoff", "erase", "--business-key", BUSINESS_KEY, stdout=StringIO())

        look_everywhere("after erase")
        everything = database_text()
        assert not [text for text in opened_tokens(everything) if sentinel in text]
        detail = opener.get(f"/api/v1/instances/{instances[0].pk}/").json()
        assert detail["input"]["secret"] == "[erased]"
    finally:
        server.stop()
