"""Security checks: who may do what, and Django's deployment checklist.

The authorization matrix below is the policy, one row per operation and one column per role;
each cell is one test that makes the request and compares what happened:

- a status code, or ``login`` / ``admin login`` (a redirect to the login page), or ``done``
  (any other redirect: the action was carried out and the page moves on);
- for lists, ``listed`` or ``hidden``: 200, with or without the row the matrix is about.

A cell that refuses (4xx, login) must also leave the database as it was; a write that is
allowed must change it. The rules behind the table (DESIGN.md):

- only a current assignee decides an approval (not the requester, not staff, not even a
  superuser: operators record someone's decision with "decide on behalf" in the admin);
- staff and an instance's starter see the instance; an assignee (current or past, or their
  delegate) reads it too, read-only (its API resource, history and status page), and acting
  on it answers 403;
- acting on an instance (cancel, retry, signal, the admin's and status page's actions) needs
  ``orchestration.operate_instance``, except that the API lets an instance's starter (the
  system that started it) cancel, retry and signal its own instance;
- email links act as the link's person only, with the page's CSRF token, once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponse
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from approvals import mail_preferences, notifications
from approvals.models import ActionToken, ApprovalRequest, Decision, MailPreference
from integrations.alerts.conditions import Finding
from integrations.alerts.services import alert_fire
from integrations.models import Alert, AlertRule, WebhookSubscription, open_secret
from orchestration import batches, engine, schedules
from orchestration.batch_models import BatchItem, BatchOperation
from orchestration.models import Event, Schedule, ScheduleFire, StepRun, WorkflowInstance

ROOT = Path(__file__).resolve().parent.parent

ROLES = ("anonymous", "requester", "assignee", "staff", "viewer", "operator", "superuser")
ROLE_HELP = {
    "anonymous": "not logged in",
    "requester": "alice: started the expense, not staff",
    "assignee": "bob: in the managers group the expense waits for, not staff",
    "staff": "sam: is_staff, no permissions",
    "viewer": "vera: is_staff with view permissions only",
    "operator": "otto: is_staff, view permissions, orchestration.operate_instance and the "
    "schedule permissions (add, change, delete)",
    "superuser": "root",
}
VIEW_PERMISSIONS = [
    "orchestration.view_workflowinstance",
    "orchestration.view_steprun",
    "orchestration.view_event",
    "approvals.view_approvalrequest",
    "approvals.view_decision",
    "integrations.view_outboundemail",
    "integrations.view_alert",
    "integrations.view_alertrule",
    "integrations.view_webhooksubscription",
    "authtoken.view_tokenproxy",
    "orchestration.view_schedule",
    "orchestration.view_schedulefire",
]
SCHEDULE_PERMISSIONS = [
    "orchestration.add_schedule",
    "orchestration.change_schedule",
    "orchestration.delete_schedule",
]

LOGIN = "login"
ADMIN_LOGIN = "admin login"
DONE = "done"
REFUSED = "refused"  # a bulk page that answered with its refusal message
LISTED = "listed"
HIDDEN = "hidden"


# -- the world: people, an expense waiting for a manager, a failed and a waiting instance ------


@dataclass
class World:
    users: dict[str, Any]
    tokens: dict[str, str]
    expense: WorkflowInstance  # alice's, waiting for the managers' approval
    approval: ApprovalRequest  # its manager_approval request (pending)
    failed: WorkflowInstance  # alice's, failed in validate
    waiting: WorkflowInstance  # alice's onboarding, waiting for setup_completed
    links: dict[str, str] = field(default_factory=dict)  # person -> signed link token
    alert_id: int = 0  # a firing alert (a missed schedule)
    schedule: Any = None  # an active schedule of t_sequence, every hour
    paused_schedule: Any = None  # a paused one
    batch_id: int = 0  # a queued batch pausing the waiting onboarding
    webhook_id: int = 0  # a webhook subscription (its secret is sealed, never shown whole)
    webhook_secret: str = ""
    alert_rule_id: int = 0  # an alert rule with a webhook (its secret sealed too)
    alert_rule_secret: str = ""


def _run_scheduled(instance: WorkflowInstance) -> None:
    """Play the worker in-process."""
    for _ in range(20):
        due = list(StepRun.objects.filter(instance=instance, state="scheduled"))
        if not due:
            return
        for step in due:
            engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


def _make_world() -> World:
    User = get_user_model()  # noqa: N806
    managers = Group.objects.create(name="managers")
    Group.objects.create(name="finance")

    def person(name: str, *, staff: bool = False, perms: tuple[str, ...] = ()) -> Any:
        user = User.objects.create_user(
            name, email=f"{name}@example.com", password=f"pw-{name}-123", is_staff=staff
        )
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        return User.objects.get(pk=user.pk)

    users = {
        "requester": person("alice"),
        "assignee": person("bob"),
        "staff": person("sam", staff=True),
        "viewer": person("vera", staff=True, perms=tuple(VIEW_PERMISSIONS)),
        "operator": person(
            "otto",
            staff=True,
            perms=(
                *VIEW_PERMISSIONS,
                "orchestration.operate_instance",
                "integrations.resolve_alert",
                *SCHEDULE_PERMISSIONS,
            ),
        ),
        "superuser": User.objects.create_superuser("root", "root@example.com", "pw-root-123"),
        "other": person("carol"),  # no role in the expense: a "wrong person" for links
    }
    managers.user_set.add(users["assignee"])
    # Only alice may start an expense from the web (the demo's startable_by=["employees"]).
    Group.objects.create(name="employees").user_set.add(users["requester"])
    # The expense's requester is alice; admin is the escalation target of the demo workflow.
    User.objects.create_user("admin", email="admin@example.com")
    alice = users["requester"]

    def start(workflow: str, input: dict[str, Any]) -> WorkflowInstance:
        instance, _ = engine.instance_start(workflow=workflow, input=input, started_by=alice)
        _run_scheduled(instance)
        return WorkflowInstance.objects.get(pk=instance.pk)

    expense_input = {"currency": "EUR", "description": "Taxi", "requester": "alice"}
    expense = start("expense_approval", {**expense_input, "amount": 120})
    failed = start("expense_approval", {**expense_input, "amount": -1})
    waiting = start("customer_onboarding", {"customer": "ACME", "plan": "team"})
    approval = ApprovalRequest.objects.get(instance=expense, step_name="manager_approval")
    assert approval.state == "pending" and failed.state == "failed"
    assert StepRun.objects.get(instance=waiting, name="setup_completed").state == "waiting"
    now = timezone.now()
    links = {
        "bob": notifications.token_issue(approval, users["assignee"], now, "assigned"),
        "carol": notifications.token_issue(approval, users["other"], now, "assigned"),
        "alice": notifications.token_issue(approval, alice, now, "assigned"),
    }
    tokens = {
        role: Token.objects.create(user=user).key for role, user in users.items() if role != "other"
    }
    alert = alert_fire(
        rule=AlertRule.objects.create(
            name="missed", condition="schedule_missed", mail_to="ops@example.com"
        ),
        finding=Finding(subject="schedule:1", title="nightly missed"),
    )
    hourly = schedules.schedule_create(
        values={"name": "matrix hourly", "workflow": "t_sequence", "interval_seconds": 3600}
    )
    paused = schedules.schedule_create(
        values={
            "name": "matrix paused",
            "workflow": "t_sequence",
            "cron": "0 6 * * *",
            "paused": True,
            "paused_note": "matrix",
        }
    )
    batch = batches.batch_create(
        action="pause", filter={"ids": [str(waiting.pk)]}, user=users["superuser"], reason="m"
    )
    hook = WebhookSubscription.objects.create(name="matrix erp", url="http://127.0.0.1:9/hook")
    hooked_rule = AlertRule.objects.create(
        name="matrix hooked", condition="instance_failed", webhook_url="http://127.0.0.1:9/alert"
    )
    return World(
        users,
        tokens,
        expense,
        approval,
        failed,
        waiting,
        links,
        alert_id=alert.pk,
        schedule=hourly,
        paused_schedule=paused,
        batch_id=batch.pk,
        webhook_id=hook.pk,
        webhook_secret=open_secret(hook.secret),
        alert_rule_id=hooked_rule.pk,
        alert_rule_secret=open_secret(hooked_rule.webhook_secret),
    )


@pytest.fixture(scope="module")
def module_world(django_db_setup: Any, django_db_blocker: Any) -> Iterator[World]:
    """Made once, in a transaction rolled back after the module; every cell runs in a
    savepoint inside it (``db``), so each starts from the same state."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            yield _make_world()
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def world(module_world: World, db: Any) -> World:
    cache.clear()  # email-link failure counters
    return module_world


def snapshot() -> tuple:
    """Everything a request could change."""
    return (
        WorkflowInstance.objects.count(),
        sorted(WorkflowInstance.objects.values_list("state", flat=True)),
        sorted(StepRun.objects.values_list("state", flat=True)),
        Event.objects.count(),
        sorted(ApprovalRequest.objects.values_list("state", flat=True)),
        Decision.objects.count(),
        ActionToken.objects.filter(used_at__isnull=False).count(),
        ActionToken.objects.filter(superseded_at__isnull=False).count(),
        sorted(
            ApprovalRequest.assignee_users.through.objects.values_list(
                "approvalrequest_id", "user_id"
            )
        ),
        sorted(
            ApprovalRequest.assignee_groups.through.objects.values_list(
                "approvalrequest_id", "group_id"
            )
        ),
        sorted(
            (str(pk), json.dumps(output, sort_keys=True))
            for pk, output in StepRun.objects.values_list("pk", "output")
        ),
        sorted(get_user_model().objects.values_list("username", "is_active")),
        sorted(
            MailPreference.objects.values_list(
                "user_id", "mode", "digest_hour", "time_zone", "language"
            )
        ),
        sorted(Alert.objects.values_list("pk", "state")),
        sorted(
            AlertRule.objects.values_list(
                "name", "condition", "enabled", "webhook_secret", "webhook_previous_secret"
            )
        ),
        sorted(
            Schedule.objects.values_list(
                "name", "paused", "paused_note", "overlap", "next_fire_at", "updated_at"
            )
        ),
        ScheduleFire.objects.count(),
        sorted(
            (str(pk), json.dumps(value, sort_keys=True))
            for pk, value in WorkflowInstance.objects.values_list("pk", "input")
        ),
        sorted(BatchOperation.objects.values_list("state", flat=True)),
        BatchItem.objects.count(),
        sorted(
            WebhookSubscription.objects.values_list(
                "name", "url", "active", "secret", "previous_secret"
            )
        ),
    )


# -- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    call: Callable[[Client, World], HttpResponse]
    api: bool = False  # token auth (else a session)
    writes: bool = False
    # For lists: whether the response lists the row the matrix is about.
    listed: Callable[[HttpResponse, World], bool] | None = None
    # Settings the cell runs under (segregation-of-duties switches).
    settings: dict[str, Any] = field(default_factory=dict)
    # For pages that always redirect (bulk): DONE or REFUSED from the page's messages.
    judge: Callable[[HttpResponse, World], Any] | None = None


def _json(client: Client, method: str, path: str, body: Any = None) -> HttpResponse:
    data = json.dumps(body) if body is not None else None
    return getattr(client, method)(path, data=data, content_type="application/json")


def _ids(response: HttpResponse) -> set[str]:
    return {str(item["id"]) for item in response.json()["results"]}


def _bulk_cancel(client: Client, w: World) -> HttpResponse:
    return client.post(
        "/admin/orchestration/workflowinstance/",
        {
            "action": "op_cancel",
            "_selected_action": [str(w.expense.pk)],
            "index": "0",
            "confirm": "1",
            "reason": "matrix",
        },
    )


def _step_url(w: World, prefix: str) -> str:
    """The waiting manager_approval step's "complete by hand" action (admin or status page)."""
    return f"{prefix}/{w.expense.pk}/steps/{w.approval.step_run_id}/complete/"


COMPLETE_BY_HAND = {"confirm": "1", "output": '{"decision": "approved"}', "reason": "done it"}
BATCH_BODY = {"action": "retry", "filter": {"workflow": "expense_approval", "state": "failed"}}
BATCHES = "/admin/orchestration/batchoperation/"


def _batch_retry_selected(c: Client, w: World) -> HttpResponse:
    return c.post(
        "/admin/orchestration/workflowinstance/",
        {
            "action": "batch_retry",
            "_selected_action": [str(w.failed.pk)],
            "index": "0",
            "confirm": "1",
            "reason": "matrix",
        },
    )


def _batch_by_filter(c: Client, w: World) -> HttpResponse:
    form = {"action": "retry", "workflow": "expense_approval", "state": "failed"}
    return c.post(f"{BATCHES}new/", {**form, "reason": "matrix", "start": "1"})


def _cancel_batch(c: Client, w: World) -> HttpResponse:
    return c.post(
        BATCHES, {"action": "cancel_batches", "_selected_action": [str(w.batch_id)], "confirm": "1"}
    )


ON_BEHALF = {"SIGNOFF_DECIDE_ON_BEHALF": True}
OPERATORS_COMPLETE = {"SIGNOFF_OPERATORS_COMPLETE_APPROVALS": True}


def _retry_failed_group(c: Client, w: World) -> HttpResponse:
    """The Failures page's "retry all" for the group of the failed expense."""
    from orchestration.failures import GroupKey, normalise_message

    error = w.failed.error
    key = GroupKey(
        w.failed.workflow, error["step"], error["type"], normalise_message(error["message"])
    )
    return c.post(
        f"/admin/orchestration/failuregroupproxy/retry/?group={key.token}",
        {"confirm": "1", "reason": "fixed"},
    )


def _decide_on_behalf(c: Client, w: World) -> HttpResponse:
    return c.post(
        f"/admin/approvals/approvalrequest/{w.approval.pk}/decide/",
        {"confirm": "1", "assignee": "bob", "outcome": "approve", "reason": "by phone"},
    )


def _reassign(users: str) -> Callable[[Client, World], HttpResponse]:
    def call(c: Client, w: World) -> HttpResponse:
        return c.post(
            f"/admin/approvals/approvalrequest/{w.approval.pk}/reassign/",
            {"confirm": "1", "users": users, "groups": "", "reason": "matrix"},
        )

    return call


def _resolve_alert(c: Client, w: World) -> HttpResponse:
    return c.post(
        "/admin/integrations/alert/",
        {"action": "resolve_now", "_selected_action": [str(w.alert_id)], "index": "0"},
    )


def _add_alert_rule(c: Client, w: World) -> HttpResponse:
    return c.post(
        "/admin/integrations/alertrule/add/",
        {
            "name": "stuck",
            "condition": "instance_stuck",
            "workflow": "",
            "stuck_after": "01:00:00",
            "mail_to": "ops@example.com",
            "enabled": "on",
        },
    )


def _bulk_approve(c: Client, w: World) -> HttpResponse:
    return c.post("/inbox/bulk/", {"outcome": "approve", "ids": [w.approval.pk], "next": "/inbox/"})


def _bulk_judge(response: HttpResponse, w: World | None = None) -> Any:
    """The bulk page always redirects back; what it did is in its messages."""
    if response.status_code != 302 or not response["Location"].startswith("/inbox/"):
        return None
    texts = [m.message for m in response.wsgi_request._messages]
    if any(t.startswith("Approved 1") for t in texts):
        return DONE
    if any(t.startswith("Refused 1") for t in texts):
        return REFUSED
    return texts


def _decide_with_unsafe_next(c: Client, w: World) -> HttpResponse:
    return c.post(
        f"/inbox/{w.approval.pk}/decide/", {"outcome": "approve", "next": "https://evil.example/"}
    )


def _back_on_the_list(response: HttpResponse, w: World | None = None) -> Any:
    """A decision posted with a ``next`` outside the inbox still lands on the inbox list."""
    if response.status_code != 302 or response["Location"].startswith("/accounts/login/"):
        return None
    return DONE if response["Location"] == "/inbox/" else f"to {response['Location']}"


LEAK = "leak"  # a page that showed something usable (a live link, a whole API token)


def _no_live_link(response: HttpResponse, w: World) -> Any:
    """An outbox page must show no usable link: no /a/<token>/ and none of the world's."""
    body = response.content.decode(errors="replace")
    if response.status_code == 200 and (
        re.search(r"/a/[A-Za-z0-9_:\-]{20,}", body) or any(t in body for t in w.links.values())
    ):
        return LEAK
    return None


def _no_whole_key(response: HttpResponse, w: World) -> Any:
    body = response.content.decode(errors="replace")
    if response.status_code == 200 and any(key in body for key in w.tokens.values()):
        return LEAK
    return None


def _no_whole_secret(response: HttpResponse, w: World) -> Any:
    """A webhook secret (a subscription's, an alert rule's) is shown whole only once, when it
    is made; never on a page after."""
    body = response.content.decode()
    if response.status_code == 200 and (w.webhook_secret in body or w.alert_rule_secret in body):
        return LEAK
    return None


SUBSCRIPTIONS = "/admin/integrations/webhooksubscription/"
NEW_SUBSCRIPTION = {"name": "new hook", "url": "http://127.0.0.1:9/new", "active": "on"}


def _rotate_webhook_secret(c: Client, w: World) -> HttpResponse:
    return c.post(
        SUBSCRIPTIONS, {"action": "rotate_secret", "_selected_action": [str(w.webhook_id)]}
    )


ALERT_RULES = "/admin/integrations/alertrule/"


def _rotate_alert_rule_secret(c: Client, w: World) -> HttpResponse:
    return c.post(
        ALERT_RULES,
        {"action": "rotate_webhook_secret", "_selected_action": [str(w.alert_rule_id)]},
    )


def _outbox_mail(w: World) -> int:
    from integrations.models import OutboundEmail

    return OutboundEmail.objects.filter(request_id=w.approval.pk).values_list("pk", flat=True)[0]


# -- operator repair (issue 16): the failed expense (validate failed on amount -1) -------------

FIXED_EXPENSE = {"amount": 12, "currency": "EUR", "description": "Taxi", "requester": "alice"}


def _repair_api(path: str, body: dict[str, Any]) -> Callable[[Client, World], HttpResponse]:
    return lambda c, w: _json(c, "post", f"/api/v1/instances/{w.failed.pk}/{path}", body)


def _validate_step(w: World) -> int:
    return StepRun.objects.get(instance=w.failed, name="validate").pk


def _repair_page(prefix: str, action: str, data: dict[str, str]) -> Callable:
    """A repair on the failed expense's validate step (``action``) or the instance (when
    ``action`` starts with "instance:"), on the status page or in the admin (``prefix``)."""

    def call(c: Client, w: World) -> HttpResponse:
        if action.startswith("instance:"):
            name = action.split(":", 1)[1]
            middle = "operate" if prefix.startswith("/admin") else "actions"
            url = f"{prefix}/{w.failed.pk}/{middle}/{name}/"
        else:
            url = f"{prefix}/{w.failed.pk}/steps/{_validate_step(w)}/{action}/"
        return c.post(url, {"confirm": "1", "reason": "matrix", **data})

    return call


STATUS = "/instances"
BATCH_START = "/api/v1/instances/batch/"


def _batch_started(response: HttpResponse, w: World | None = None) -> Any:
    """A batch start answers 207: DONE when every item started, else the first item's status
    (the same answer a single start would give)."""
    if response.status_code != 207:
        return None
    statuses = [r["status"] for r in response.json()["results"]]
    return DONE if set(statuses) == {201} else statuses[0]


ADMIN_INSTANCES = "/admin/orchestration/workflowinstance"
EDIT_FORM = {"value": json.dumps(FIXED_EXPENSE)}


def _preferences_link(w: World) -> str:
    return f"/mail/{mail_preferences.preferences_token(w.users['assignee'].pk)}/"


OPS: dict[str, Op] = {
    # REST API, token auth
    "GET /api/v1/workflows/": Op(lambda c, w: c.get("/api/v1/workflows/"), api=True),
    "GET /api/v1/instances/": Op(
        lambda c, w: c.get("/api/v1/instances/"),
        api=True,
        listed=lambda r, w: str(w.expense.pk) in _ids(r),
    ),
    "GET /api/v1/instances/{id}/": Op(
        lambda c, w: c.get(f"/api/v1/instances/{w.expense.pk}/"), api=True
    ),
    "GET /api/v1/instances/{id}/history/": Op(
        lambda c, w: c.get(f"/api/v1/instances/{w.expense.pk}/history/"), api=True
    ),
    "POST /api/v1/instances/": Op(
        lambda c, w: _json(c, "post", "/api/v1/instances/", {"workflow": "t_sequence"}),
        api=True,
        writes=True,
    ),
    "POST /api/v1/instances/batch/": Op(
        lambda c, w: _json(c, "post", BATCH_START, {"items": [{"workflow": "t_sequence"}] * 2}),
        api=True,
        writes=True,
        judge=_batch_started,
    ),
    "POST /api/v1/instances/batch/ an expense naming alice": Op(
        lambda c, w: _json(c, "post", BATCH_START, {"items": [EXPENSE_FOR_ALICE]}),
        api=True,
        writes=True,
        judge=_batch_started,
    ),
    "POST /api/v1/instances/{id}/cancel/": Op(
        lambda c, w: _json(c, "post", f"/api/v1/instances/{w.expense.pk}/cancel/", {}),
        api=True,
        writes=True,
    ),
    "POST /api/v1/instances/{id}/retry/ (failed)": Op(
        lambda c, w: _json(c, "post", f"/api/v1/instances/{w.failed.pk}/retry/"),
        api=True,
        writes=True,
    ),
    "POST /api/v1/instances/{id}/signals/{name}/": Op(
        lambda c, w: _json(
            c, "post", f"/api/v1/instances/{w.waiting.pk}/signals/setup_completed/", {"seats": 3}
        ),
        api=True,
        writes=True,
    ),
    "GET /api/v1/approvals/": Op(
        lambda c, w: c.get("/api/v1/approvals/"),
        api=True,
        listed=lambda r, w: str(w.approval.pk) in _ids(r),
    ),
    "GET /api/v1/approvals/{id}/": Op(
        lambda c, w: c.get(f"/api/v1/approvals/{w.approval.pk}/"), api=True
    ),
    # Searching finds only what the caller may see; a sealed field is searched by nobody.
    "GET /api/v1/instances/?error=": Op(
        lambda c, w: c.get("/api/v1/instances/?error=must+be+positive"),
        api=True,
        listed=lambda r, w: str(w.failed.pk) in _ids(r),
    ),
    "GET /api/v1/instances/?input.amount=": Op(
        lambda c, w: c.get("/api/v1/instances/?input.amount=-1"),
        api=True,
        listed=lambda r, w: str(w.failed.pk) in _ids(r),
    ),
    "GET /api/v1/instances/?input.<sealed field>=": Op(
        lambda c, w: c.get("/api/v1/instances/?input.card=4111"), api=True
    ),
    "POST /api/v1/approvals/{id}/approve/": Op(
        lambda c, w: _json(c, "post", f"/api/v1/approvals/{w.approval.pk}/approve/", {}),
        api=True,
        writes=True,
    ),
    "POST /api/v1/approvals/{id}/reject/": Op(
        lambda c, w: _json(
            c, "post", f"/api/v1/approvals/{w.approval.pk}/reject/", {"comment": "no"}
        ),
        api=True,
        writes=True,
    ),
    # the inbox
    "GET /inbox/": Op(
        lambda c, w: c.get("/inbox/"),
        listed=lambda r, w: f"/inbox/{w.approval.pk}/" in r.content.decode(),
    ),
    "GET /inbox/{id}/": Op(lambda c, w: c.get(f"/inbox/{w.approval.pk}/")),
    # "My requests" lists the caller's own requests only, whoever they are (staff included).
    "GET /requests/": Op(
        lambda c, w: c.get("/requests/"),
        listed=lambda r, w: f'data-instance="{w.expense.pk}"' in r.content.decode(),
    ),
    "POST /inbox/{id}/decide/": Op(
        lambda c, w: c.post(f"/inbox/{w.approval.pk}/decide/", {"outcome": "approve"}),
        writes=True,
    ),
    # the keyboard's decision dialog posts "next": only an inbox URL is followed
    "POST /inbox/{id}/decide/ next=another site": Op(
        _decide_with_unsafe_next, writes=True, judge=_back_on_the_list
    ),
    # the web start: only for the workflow's startable_by groups (and superusers)
    "GET /start/": Op(
        lambda c, w: c.get("/start/"),
        listed=lambda r, w: "/start/expense_approval/" in r.content.decode(),
    ),
    "GET /start/expense_approval/": Op(lambda c, w: c.get("/start/expense_approval/")),
    "POST /start/expense_approval/": Op(
        lambda c, w: c.post(
            "/start/expense_approval/",
            {
                "input": '{"amount": 12, "currency": "EUR", "description": "Pens"}',
                "key": "matrix-start",
            },
        ),
        writes=True,
    ),
    # the status page
    "GET /instances/{id}/": Op(lambda c, w: c.get(f"/instances/{w.expense.pk}/")),
    "GET /instances/{id}/history.json": Op(
        lambda c, w: c.get(f"/instances/{w.expense.pk}/history.json")
    ),
    "POST /instances/{id}/actions/cancel/": Op(
        lambda c, w: c.post(
            f"/instances/{w.expense.pk}/actions/cancel/", {"confirm": "1", "reason": "x"}
        ),
        writes=True,
    ),
    # the admin
    "GET admin: instances changelist": Op(
        lambda c, w: c.get("/admin/orchestration/workflowinstance/")
    ),
    "GET admin: instance change view": Op(
        lambda c, w: c.get(f"/admin/orchestration/workflowinstance/{w.expense.pk}/change/")
    ),
    "POST admin: bulk action cancel": Op(_bulk_cancel, writes=True),
    "GET admin: failures page": Op(
        lambda c, w: c.get("/admin/orchestration/failuregroupproxy/"),
        listed=lambda r, w: 'class="so-group"' in r.content.decode(),
    ),
    "POST admin: failures retry all in a group": Op(_retry_failed_group, writes=True),
    "GET admin: instances searched by error": Op(
        lambda c, w: c.get("/admin/orchestration/workflowinstance/?q=error:positive"),
        listed=lambda r, w: str(w.failed.pk)[:8] in r.content.decode(),
    ),
    "POST admin: instance operate cancel": Op(
        lambda c, w: c.post(
            f"/admin/orchestration/workflowinstance/{w.expense.pk}/operate/cancel/",
            {"confirm": "1", "reason": "x"},
        ),
        writes=True,
    ),
    "POST /inbox/bulk/ approve": Op(_bulk_approve, writes=True, judge=_bulk_judge),
    # Alerts: rules are the admin's to change; operators resolve an alert by hand.
    "GET /api/v1/alerts/": Op(
        lambda c, w: c.get("/api/v1/alerts/"),
        api=True,
        listed=lambda r, w: w.alert_id in {a["id"] for a in r.json()["results"]},
    ),
    "GET admin: alerts changelist": Op(lambda c, w: c.get("/admin/integrations/alert/")),
    "GET admin: alert change view": Op(
        lambda c, w: c.get(f"/admin/integrations/alert/{w.alert_id}/change/")
    ),
    "POST admin: alert resolve now": Op(_resolve_alert, writes=True),
    "GET admin: alert rules changelist": Op(lambda c, w: c.get("/admin/integrations/alertrule/")),
    # An alert rule's webhook secret: shown whole once, when made; masked on every page after.
    "GET admin: alert rules (no whole secret)": Op(
        lambda c, w: c.get(ALERT_RULES), judge=_no_whole_secret
    ),
    "GET admin: alert rule (no whole secret)": Op(
        lambda c, w: c.get(f"{ALERT_RULES}{w.alert_rule_id}/change/"), judge=_no_whole_secret
    ),
    "POST admin: rotate an alert rule's webhook secret": Op(_rotate_alert_rule_secret, writes=True),
    "POST admin: add an alert rule": Op(_add_alert_rule, writes=True),
    # Webhook subscriptions: the admin's to change (add, rotate a secret); view-only staff
    # read them; no page shows a whole secret after it was made.
    "GET admin: webhook subscriptions (no whole secret)": Op(
        lambda c, w: c.get(SUBSCRIPTIONS), judge=_no_whole_secret
    ),
    "GET admin: webhook subscription (no whole secret)": Op(
        lambda c, w: c.get(f"{SUBSCRIPTIONS}{w.webhook_id}/change/"), judge=_no_whole_secret
    ),
    "POST admin: rotate a webhook secret": Op(_rotate_webhook_secret, writes=True),
    "POST admin: add a webhook subscription": Op(
        lambda c, w: c.post(f"{SUBSCRIPTIONS}add/", NEW_SUBSCRIPTION), writes=True
    ),
    # A URL resolving to a private address: refused (the form again), nothing saved.
    "POST admin: add a webhook subscription to a private address": Op(
        lambda c, w: c.post(f"{SUBSCRIPTIONS}add/", NEW_SUBSCRIPTION),
        settings={"SIGNOFF_WEBHOOK_ALLOW_PRIVATE": False},
        judge=lambda r, w: (
            REFUSED if r.status_code == 200 and b"resolves to 127.0.0.1" in r.content else None
        ),
    ),
    # Mail preferences: the page is the logged-in person's own; the signed link in bob's mails
    # changes bob's mode for whoever holds it, and nothing else.
    "GET /inbox/preferences/": Op(lambda c, w: c.get("/inbox/preferences/")),
    "POST /inbox/preferences/ digest": Op(
        lambda c, w: c.post(
            "/inbox/preferences/", {"mode": "digest", "digest_hour": "8", "time_zone": "UTC"}
        ),
        writes=True,
    ),
    # The person's own time zone and language (README, "Time zone and language").
    "POST /inbox/preferences/ zone and language": Op(
        lambda c, w: c.post(
            "/inbox/preferences/",
            {
                "mode": "immediate",
                "digest_hour": "8",
                "time_zone": "Europe/Berlin",
                "language": "de",
            },
        ),
        writes=True,
    ),
    "GET /mail/{bob's preferences link}/": Op(lambda c, w: c.get(_preferences_link(w))),
    "POST /mail/{bob's preferences link}/ digest": Op(
        lambda c, w: c.post(_preferences_link(w), {"mode": "digest"}), writes=True
    ),
    "GET admin: outbound mail of the expense (no live link)": Op(
        lambda c, w: c.get(f"/admin/integrations/outboundemail/{_outbox_mail(w)}/change/"),
        judge=_no_live_link,
    ),
    "GET admin: outbound mail list (no live link)": Op(
        lambda c, w: c.get("/admin/integrations/outboundemail/"), judge=_no_live_link
    ),
    "GET admin: API tokens (no whole key)": Op(
        lambda c, w: c.get("/admin/authtoken/tokenproxy/"), judge=_no_whole_key
    ),
    "GET admin: the superuser's API token (no whole key)": Op(
        lambda c, w: c.get(f"/admin/authtoken/tokenproxy/{w.users['superuser'].pk}/change/"),
        judge=_no_whole_key,
    ),
    "POST admin: approval decide on behalf of bob": Op(_decide_on_behalf, writes=True),
    "POST admin: decide on behalf of bob, SIGNOFF_DECIDE_ON_BEHALF=1": Op(
        _decide_on_behalf, writes=True, settings=ON_BEHALF
    ),
    "POST admin: reassign to carol": Op(_reassign("carol"), writes=True),
    "POST admin: reassign to the operators themselves": Op(_reassign("otto, root"), writes=True),
    "POST admin: complete the approval step by hand": Op(
        lambda c, w: c.post(
            _step_url(w, "/admin/orchestration/workflowinstance"), COMPLETE_BY_HAND
        ),
        writes=True,
    ),
    "POST admin: complete it by hand, SIGNOFF_OPERATORS_COMPLETE_APPROVALS=1": Op(
        lambda c, w: c.post(
            _step_url(w, "/admin/orchestration/workflowinstance"), COMPLETE_BY_HAND
        ),
        writes=True,
        settings=OPERATORS_COMPLETE,
    ),
    "POST status page: complete the approval step by hand": Op(
        lambda c, w: c.post(_step_url(w, "/instances"), COMPLETE_BY_HAND), writes=True
    ),
    # schedules: reading needs view_schedule (or staff); writing the model permissions
    "GET /api/v1/schedules/": Op(
        lambda c, w: c.get("/api/v1/schedules/"),
        api=True,
        listed=lambda r, w: w.schedule.pk in {s["id"] for s in r.json()["results"]},
    ),
    "GET /api/v1/schedules/{id}/": Op(
        lambda c, w: c.get(f"/api/v1/schedules/{w.schedule.pk}/"), api=True
    ),
    "GET /api/v1/schedules/{id}/fires/": Op(
        lambda c, w: c.get(f"/api/v1/schedules/{w.schedule.pk}/fires/"), api=True
    ),
    "POST /api/v1/schedules/": Op(
        lambda c, w: _json(
            c,
            "post",
            "/api/v1/schedules/",
            {"name": "matrix new", "workflow": "t_sequence", "cron": "*/5 * * * *"},
        ),
        api=True,
        writes=True,
    ),
    "PATCH /api/v1/schedules/{id}/": Op(
        lambda c, w: _json(
            c, "patch", f"/api/v1/schedules/{w.schedule.pk}/", {"overlap": "allow_all"}
        ),
        api=True,
        writes=True,
    ),
    "DELETE /api/v1/schedules/{id}/": Op(
        lambda c, w: c.delete(f"/api/v1/schedules/{w.schedule.pk}/"), api=True, writes=True
    ),
    "POST /api/v1/schedules/{id}/pause/": Op(
        lambda c, w: _json(c, "post", f"/api/v1/schedules/{w.schedule.pk}/pause/", {}),
        api=True,
        writes=True,
    ),
    "POST /api/v1/schedules/{id}/resume/ (paused)": Op(
        lambda c, w: _json(c, "post", f"/api/v1/schedules/{w.paused_schedule.pk}/resume/"),
        api=True,
        writes=True,
    ),
    "POST /api/v1/schedules/{id}/trigger/": Op(
        lambda c, w: _json(c, "post", f"/api/v1/schedules/{w.schedule.pk}/trigger/", {}),
        api=True,
        writes=True,
    ),
    "GET admin: schedules changelist": Op(lambda c, w: c.get("/admin/orchestration/schedule/")),
    "GET admin: schedule fires": Op(lambda c, w: c.get("/admin/orchestration/schedulefire/")),
    "POST admin: schedules pause action": Op(
        lambda c, w: c.post(
            "/admin/orchestration/schedule/",
            {"action": "pause_schedules", "_selected_action": [w.schedule.pk], "index": "0"},
        ),
        writes=True,
    ),
    "POST admin: schedules resume action (paused)": Op(
        lambda c, w: c.post(
            "/admin/orchestration/schedule/",
            {
                "action": "resume_schedules",
                "_selected_action": [w.paused_schedule.pk],
                "index": "0",
            },
        ),
        writes=True,
    ),
    "POST admin: schedules fire now action": Op(
        lambda c, w: c.post(
            "/admin/orchestration/schedule/",
            {"action": "trigger_schedules", "_selected_action": [w.schedule.pk], "index": "0"},
        ),
        writes=True,
    ),
    "POST admin: add schedule": Op(
        lambda c, w: c.post(
            "/admin/orchestration/schedule/add/",
            {
                "name": "matrix admin",
                "workflow": "t_sequence",
                "cron": "0 7 * * *",
                "time_zone": "UTC",
                "jitter_seconds": "0",
                "overlap": "skip",
                "catchup_window_seconds": "3600",
            },
        ),
        writes=True,
    ),
    # Operator repair: operate_instance only (the starter alone may not), whatever the channel.
    "POST /api/v1/instances/{id}/edit-input/": Op(
        _repair_api("edit-input/", {"input": FIXED_EXPENSE, "reason": "matrix"}),
        api=True,
        writes=True,
    ),
    "POST /api/v1/instances/{id}/steps/{step}/skip/": Op(
        _repair_api("steps/validate/skip/", {"output": {}, "reason": "matrix"}),
        api=True,
        writes=True,
    ),
    "POST /api/v1/instances/{id}/reset/": Op(
        _repair_api("reset/", {"step": "validate", "reason": "matrix"}), api=True, writes=True
    ),
    # validate failed: it has no output to edit and no undo to resolve (409 for operators)
    "POST /api/v1/instances/{id}/steps/{step}/edit-output/ (failed step)": Op(
        _repair_api("steps/validate/edit-output/", {"output": {}, "reason": "matrix"}),
        api=True,
        writes=True,
    ),
    "POST /api/v1/instances/{id}/steps/{step}/resolve-compensation/ (no undo)": Op(
        _repair_api("steps/validate/resolve-compensation/", {"reason": "matrix"}),
        api=True,
        writes=True,
    ),
    "POST status page: edit input": Op(
        _repair_page(STATUS, "instance:edit-input", EDIT_FORM), writes=True
    ),
    "POST status page: skip a failed step": Op(
        _repair_page(STATUS, "skip", {"value": "{}"}), writes=True
    ),
    "POST status page: re-run from a step": Op(_repair_page(STATUS, "reset", {}), writes=True),
    "POST admin: edit input": Op(
        _repair_page(ADMIN_INSTANCES, "instance:edit-input", EDIT_FORM), writes=True
    ),
    "POST admin: skip a failed step": Op(
        _repair_page(ADMIN_INSTANCES, "skip", {"value": "{}"}), writes=True
    ),
    "POST admin: re-run from a step": Op(_repair_page(ADMIN_INSTANCES, "reset", {}), writes=True),
    # Batch operations: operators only, whoever started the instances.
    "GET /api/v1/batches/": Op(lambda c, w: c.get("/api/v1/batches/"), api=True),
    "POST /api/v1/batches/ dry_run": Op(
        lambda c, w: _json(c, "post", "/api/v1/batches/", {**BATCH_BODY, "dry_run": True}),
        api=True,
    ),
    "POST /api/v1/batches/": Op(
        lambda c, w: _json(c, "post", "/api/v1/batches/", {**BATCH_BODY, "reason": "matrix"}),
        api=True,
        writes=True,
    ),
    "GET /api/v1/batches/{id}/": Op(lambda c, w: c.get(f"/api/v1/batches/{w.batch_id}/"), api=True),
    "POST /api/v1/batches/{id}/cancel/": Op(
        lambda c, w: _json(c, "post", f"/api/v1/batches/{w.batch_id}/cancel/"),
        api=True,
        writes=True,
    ),
    "POST admin: retry selected (as a batch)": Op(_batch_retry_selected, writes=True),
    "GET admin: batches changelist": Op(lambda c, w: c.get(BATCHES)),
    "GET admin: batch change view": Op(lambda c, w: c.get(f"{BATCHES}{w.batch_id}/change/")),
    "GET admin: batch by filter page": Op(lambda c, w: c.get(f"{BATCHES}new/")),
    "POST admin: batch by filter start": Op(_batch_by_filter, writes=True),
    "POST admin: cancel batch": Op(_cancel_batch, writes=True),
}

# fmt: off
# The policy. Columns: anonymous, requester, assignee, staff, viewer, operator, superuser.
MATRIX: dict[str, tuple[Any, ...]] = {
    "GET /api/v1/workflows/":                       (401, 200, 200, 200, 200, 200, 200),
    "GET /api/v1/instances/":                       (401, LISTED, HIDDEN, LISTED, LISTED, LISTED, LISTED),  # noqa: E501
    "GET /api/v1/instances/{id}/":                  (401, 200, 200, 200, 200, 200, 200),
    "GET /api/v1/instances/{id}/history/":          (401, 200, 200, 200, 200, 200, 200),
    "POST /api/v1/instances/":                      (401, 201, 201, 201, 201, 201, 201),
    "POST /api/v1/instances/batch/":                (401, DONE, DONE, DONE, DONE, DONE, DONE),
    # As a single start: only alice herself, or a holder of start_on_behalf (root), names her.
    "POST /api/v1/instances/batch/ an expense naming alice": (401, DONE, 403, 403, 403, 403, DONE),  # noqa: E501
    "POST /api/v1/instances/{id}/cancel/":          (401, 200, 403, 403, 403, 200, 200),
    "POST /api/v1/instances/{id}/retry/ (failed)":  (401, 200, 404, 403, 403, 200, 200),
    "POST /api/v1/instances/{id}/signals/{name}/":  (401, 202, 404, 403, 403, 202, 202),
    "GET /api/v1/approvals/":                       (401, HIDDEN, LISTED, HIDDEN, HIDDEN, HIDDEN, HIDDEN),  # noqa: E501
    "GET /api/v1/approvals/{id}/":                  (401, 200, 200, 200, 200, 200, 200),
    "GET /api/v1/instances/?error=":                (401, LISTED, HIDDEN, LISTED, LISTED, LISTED, LISTED),  # noqa: E501
    "GET /api/v1/instances/?input.amount=":         (401, LISTED, HIDDEN, LISTED, LISTED, LISTED, LISTED),  # noqa: E501
    "GET /api/v1/instances/?input.<sealed field>=": (401, 400, 400, 400, 400, 400, 400),
    "POST /api/v1/approvals/{id}/approve/":         (401, 403, 200, 403, 403, 403, 403),
    "POST /api/v1/approvals/{id}/reject/":          (401, 403, 200, 403, 403, 403, 403),
    "GET /inbox/":                                  (LOGIN, HIDDEN, LISTED, HIDDEN, HIDDEN, HIDDEN, HIDDEN),  # noqa: E501
    "GET /inbox/{id}/":                             (LOGIN, 200, 200, 200, 200, 200, 200),
    "GET /requests/":                               (LOGIN, LISTED, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),  # noqa: E501
    "POST /inbox/{id}/decide/":                     (LOGIN, 403, DONE, 403, 403, 403, 403),
    "POST /inbox/{id}/decide/ next=another site":   (LOGIN, 403, DONE, 403, 403, 403, 403),
    "GET /start/":                                  (LOGIN, LISTED, HIDDEN, HIDDEN, HIDDEN, HIDDEN, LISTED),  # noqa: E501
    "GET /start/expense_approval/":                 (LOGIN, 200, 403, 403, 403, 403, 200),
    "POST /start/expense_approval/":                (LOGIN, DONE, 403, 403, 403, 403, DONE),
    "GET /instances/{id}/":                         (LOGIN, 200, 200, 200, 200, 200, 200),
    "GET /instances/{id}/history.json":             (LOGIN, 200, 200, 200, 200, 200, 200),
    "POST /instances/{id}/actions/cancel/":         (LOGIN, 403, 403, 403, 403, DONE, DONE),
    "GET admin: instances changelist":              (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: instance change view":              (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "POST admin: bulk action cancel":               (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "GET admin: failures page":                     (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, LISTED, LISTED, LISTED),  # noqa: E501
    "POST admin: failures retry all in a group":    (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "GET admin: instances searched by error":       (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, LISTED, LISTED, LISTED),  # noqa: E501
    "POST admin: instance operate cancel":          (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, DONE, DONE),  # noqa: E501
    "POST /inbox/bulk/ approve":                    (LOGIN, REFUSED, DONE, REFUSED, REFUSED, REFUSED, REFUSED),  # noqa: E501
    "GET /api/v1/alerts/":                          (401, 403, 403, 403, LISTED, LISTED, LISTED),  # noqa: E501
    "GET admin: alerts changelist":                 (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: alert change view":                 (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "POST admin: alert resolve now":                (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "GET admin: alert rules changelist":            (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "POST admin: add an alert rule":                (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 403, DONE),  # noqa: E501
    "GET admin: alert rules (no whole secret)":     (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: alert rule (no whole secret)":      (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "POST admin: rotate an alert rule's webhook secret": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 403, DONE),  # noqa: E501
    "GET admin: webhook subscriptions (no whole secret)": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: webhook subscription (no whole secret)": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "POST admin: rotate a webhook secret":          (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 403, DONE),  # noqa: E501
    "POST admin: add a webhook subscription":       (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 403, DONE),  # noqa: E501
    "POST admin: add a webhook subscription to a private address": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 403, REFUSED),  # noqa: E501
    "GET /inbox/preferences/":                      (LOGIN, 200, 200, 200, 200, 200, 200),
    "POST /inbox/preferences/ digest":              (LOGIN, DONE, DONE, DONE, DONE, DONE, DONE),
    "POST /inbox/preferences/ zone and language":   (LOGIN, DONE, DONE, DONE, DONE, DONE, DONE),
    "GET /mail/{bob's preferences link}/":          (200, 200, 200, 200, 200, 200, 200),
    "POST /mail/{bob's preferences link}/ digest":  (200, 200, 200, 200, 200, 200, 200),
    # What staff may read holds nothing usable: mail keeps a placeholder, tokens a prefix.
    "GET admin: outbound mail of the expense (no live link)": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: outbound mail list (no live link)": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: API tokens (no whole key)":         (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: the superuser's API token (no whole key)": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    # Operators record someone's decision only where SIGNOFF_DECIDE_ON_BEHALF allows it.
    "POST admin: approval decide on behalf of bob": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, 403, 403),  # noqa: E501
    "POST admin: decide on behalf of bob, SIGNOFF_DECIDE_ON_BEHALF=1": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, DONE, DONE),  # noqa: E501
    "POST admin: reassign to carol":                (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, DONE, DONE),  # noqa: E501
    "POST admin: reassign to the operators themselves": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, 403, 403),  # noqa: E501
    # Completing an approval step by hand decides it for everyone: off unless configured.
    "POST admin: complete the approval step by hand": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, 403, 403),  # noqa: E501
    "POST admin: complete it by hand, SIGNOFF_OPERATORS_COMPLETE_APPROVALS=1": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, DONE, DONE),  # noqa: E501
    "POST status page: complete the approval step by hand": (LOGIN, 403, 403, 403, 403, 403, 403),  # noqa: E501
    # Schedules: staff and view_schedule read; add/change/delete_schedule write (otto has them).
    "GET /api/v1/schedules/":                       (401, 403, 403, LISTED, LISTED, LISTED, LISTED),  # noqa: E501
    "GET /api/v1/schedules/{id}/":                  (401, 403, 403, 200, 200, 200, 200),
    "GET /api/v1/schedules/{id}/fires/":            (401, 403, 403, 200, 200, 200, 200),
    "POST /api/v1/schedules/":                      (401, 403, 403, 403, 403, 201, 201),
    "PATCH /api/v1/schedules/{id}/":                (401, 403, 403, 403, 403, 200, 200),
    "DELETE /api/v1/schedules/{id}/":               (401, 403, 403, 403, 403, 204, 204),
    "POST /api/v1/schedules/{id}/pause/":           (401, 403, 403, 403, 403, 200, 200),
    "POST /api/v1/schedules/{id}/resume/ (paused)": (401, 403, 403, 403, 403, 200, 200),
    "POST /api/v1/schedules/{id}/trigger/":         (401, 403, 403, 403, 403, 201, 201),
    "GET admin: schedules changelist":              (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "GET admin: schedule fires":                    (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 200, 200, 200),  # noqa: E501
    "POST admin: schedules pause action":           (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "POST admin: schedules resume action (paused)": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "POST admin: schedules fire now action":        (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "POST admin: add schedule":                     (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    # Repairs (edit, skip, reset, resolve an undo) need orchestration.operate_instance.
    "POST /api/v1/instances/{id}/edit-input/":      (401, 403, 404, 403, 403, 200, 200),
    "POST /api/v1/instances/{id}/steps/{step}/skip/": (401, 403, 404, 403, 403, 200, 200),
    "POST /api/v1/instances/{id}/reset/":           (401, 403, 404, 403, 403, 200, 200),
    "POST /api/v1/instances/{id}/steps/{step}/edit-output/ (failed step)": (401, 403, 404, 403, 403, 409, 409),  # noqa: E501
    "POST /api/v1/instances/{id}/steps/{step}/resolve-compensation/ (no undo)": (401, 403, 404, 403, 403, 409, 409),  # noqa: E501
    "POST status page: edit input":                 (LOGIN, 403, 404, 403, 403, DONE, DONE),
    "POST status page: skip a failed step":         (LOGIN, 403, 404, 403, 403, DONE, DONE),
    "POST status page: re-run from a step":         (LOGIN, 403, 404, 403, 403, DONE, DONE),
    "POST admin: edit input":                       (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, DONE, DONE),  # noqa: E501
    "POST admin: skip a failed step":               (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, DONE, DONE),  # noqa: E501
    "POST admin: re-run from a step":               (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, DONE, DONE),  # noqa: E501
    "GET /api/v1/batches/":                         (401, 403, 403, 403, 403, 200, 200),
    "POST /api/v1/batches/ dry_run":                (401, 403, 403, 403, 403, 200, 200),
    "POST /api/v1/batches/":                        (401, 403, 403, 403, 403, 202, 202),
    "GET /api/v1/batches/{id}/":                    (401, 403, 403, 403, 403, 200, 200),
    "POST /api/v1/batches/{id}/cancel/":            (401, 403, 403, 403, 403, 200, 200),
    "POST admin: retry selected (as a batch)":      (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "GET admin: batches changelist":                (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 200, 200),  # noqa: E501
    "GET admin: batch change view":                 (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 200, 200),  # noqa: E501
    "GET admin: batch by filter page":              (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, 200, 200),  # noqa: E501
    "POST admin: batch by filter start":            (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
    "POST admin: cancel batch":                     (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, DONE, DONE),  # noqa: E501
}
# fmt: on

CELLS = [
    pytest.param(name, role, expected, id=f"{name} | {role}")
    for name, row in MATRIX.items()
    for role, expected in zip(ROLES, row, strict=True)
]


def client_for(role: str, w: World, *, api: bool, **kwargs: Any) -> Client:
    if api:
        client = APIClient(**kwargs)
        if role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Token {w.tokens[role]}")
        return client
    client = Client(**kwargs)
    if role != "anonymous":
        client.force_login(w.users[role])
    return client


def outcome(op: Op, response: HttpResponse, w: World) -> Any:
    if response.status_code == 302:
        location = response["Location"]
        if location.startswith("/accounts/login/"):
            return LOGIN
        if location.startswith("/admin/login/"):
            return ADMIN_LOGIN
        return DONE
    if op.listed is not None and response.status_code == 200:
        return LISTED if op.listed(response, w) else HIDDEN
    return response.status_code


def judged(op: Op, response: HttpResponse, w: World) -> Any:
    if op.judge is not None and (verdict := op.judge(response, w)) is not None:
        return verdict
    return outcome(op, response, w)


def test_the_matrix_covers_every_operation_and_role() -> None:
    assert set(MATRIX) == set(OPS)
    assert all(len(row) == len(ROLES) for row in MATRIX.values())
    assert set(ROLE_HELP) == set(ROLES)


@pytest.mark.parametrize(("operation", "role", "expected"), CELLS)
def test_authorization_matrix(world: World, operation: str, role: str, expected: Any) -> None:
    op = OPS[operation]
    client = client_for(role, world, api=op.api)
    before = snapshot()
    with override_settings(**op.settings):
        response = op.call(client, world)
    got = judged(op, response, world)
    assert got == expected, (
        f"{operation} as {role} ({ROLE_HELP[role]}): expected {expected}, got {got} "
        f"{response.content[:300]!r}"
    )
    if op.writes and got in (200, 201, 202, 204, DONE):
        assert snapshot() != before, f"{operation} as {role} answered {got} but changed nothing"
    else:
        assert snapshot() == before, f"{operation} as {role} changed data"


# -- the requester is whoever asks, not whoever the input names -----------------------------------


EXPENSE_FOR_ALICE = {
    "workflow": "expense_approval",
    "input": {"amount": 900, "currency": "EUR", "description": "TV", "requester": "alice"},
}


def test_nobody_starts_a_request_in_someone_elses_name_without_the_permission(
    world: World,
) -> None:
    """bob (a manager) starts an expense whose input names alice as the requester: refused
    (403, nothing written), since that would make alice the requester of bob's request."""
    bob = client_for("assignee", world, api=True)
    before = snapshot()
    response = _json(bob, "post", "/api/v1/instances/", EXPENSE_FOR_ALICE)
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "on_behalf_not_allowed"
    assert snapshot() == before
    # Leaving the requester out makes it his own expense.
    own = _json(
        bob,
        "post",
        "/api/v1/instances/",
        {
            **EXPENSE_FOR_ALICE,
            "input": {k: v for k, v in EXPENSE_FOR_ALICE["input"].items() if k != "requester"},
        },
    )
    assert own.status_code == 201, own.content
    assert own.json()["input"]["requester"] == "bob"


@pytest.mark.parametrize("channel", ["api", "inbox", "bulk"])
def test_a_manager_starting_for_someone_else_still_cannot_approve_it(
    world: World, channel: str
) -> None:
    """With orchestration.start_on_behalf bob may start an expense for alice (recorded as on
    behalf); alice is its requester, and bob, its starter, still may not decide it."""
    bob_user = world.users["assignee"]
    bob_user.user_permissions.add(Permission.objects.get(codename="start_on_behalf"))
    bob = client_for("assignee", world, api=True)
    started = _json(bob, "post", "/api/v1/instances/", EXPENSE_FOR_ALICE)
    assert started.status_code == 201, started.content
    instance = WorkflowInstance.objects.get(pk=started.json()["id"])
    event = Event.objects.get(instance=instance, type="instance_started")
    assert event.data["on_behalf_of"] == "alice" and event.actor == "user:bob"
    _run_scheduled(instance)
    approval = ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")
    assert approval.requester == world.users["requester"]
    before = snapshot()
    html = client_for("assignee", world, api=False)
    if channel == "api":
        response = _json(bob, "post", f"/api/v1/approvals/{approval.pk}/approve/", {})
        assert response.status_code == 403, response.content
        assert response.json()["code"] == "self_approval"
    elif channel == "inbox":
        response = html.post(f"/inbox/{approval.pk}/decide/", {"outcome": "approve"})
        assert response.status_code == 403
    else:
        response = html.post("/inbox/bulk/", {"outcome": "approve", "ids": [approval.pk]})
        assert _bulk_judge(response) == REFUSED
    assert snapshot() == before


# -- a request you cannot see does not exist for you, decided or not ------------------------------


@pytest.mark.parametrize("channel", ["inbox decide", "inbox bulk", "API approve"])
def test_deciding_a_request_you_cannot_see_tells_nothing(world: World, channel: str) -> None:
    """carol has no part in the expense. Before and after bob decides it she gets the same
    answer — not found — and never learns that it was decided, or by whom."""
    carol = world.users["other"]
    Token.objects.get_or_create(user=carol)

    def attempt() -> tuple[Any, str]:
        if channel == "API approve":
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=carol).key}")
            r = _json(client, "post", f"/api/v1/approvals/{world.approval.pk}/approve/", {})
            return r.status_code, r.content.decode()
        client = Client()
        client.force_login(carol)
        if channel == "inbox decide":
            r = client.post(f"/inbox/{world.approval.pk}/decide/", {"outcome": "approve"})
            return r.status_code, r.content.decode()
        r = client.post("/inbox/bulk/", {"outcome": "approve", "ids": [world.approval.pk]})
        return r.status_code, " ".join(m.message for m in r.wsgi_request._messages)

    before = snapshot()
    pending = attempt()
    assert snapshot() == before
    _bob_decides_in_the_inbox(world)
    before = snapshot()
    decided = attempt()
    assert snapshot() == before
    assert pending == decided, (pending, decided)
    assert pending[0] in (404, 302)
    for leak in ("bob", "rejected", "already", world.approval.title):
        assert leak not in decided[1]


# -- an operator cannot push their own request through --------------------------------------------


OWN_REQUEST_CHANNELS: dict[str, Callable[[World, WorkflowInstance, ApprovalRequest], Any]] = {
    "API approve": lambda w, i, a: (
        _json(
            client_for("operator", w, api=True), "post", f"/api/v1/approvals/{a.pk}/approve/", {}
        ).status_code
    ),
    "inbox decide": lambda w, i, a: (
        client_for("operator", w, api=False)
        .post(f"/inbox/{a.pk}/decide/", {"outcome": "approve"})
        .status_code
    ),
    "inbox bulk": lambda w, i, a: _bulk_judge(
        client_for("operator", w, api=False).post(
            "/inbox/bulk/", {"outcome": "approve", "ids": [a.pk]}
        )
    ),
    "admin decide on behalf of bob": lambda w, i, a: (
        client_for("operator", w, api=False)
        .post(
            f"/admin/approvals/approvalrequest/{a.pk}/decide/",
            {"confirm": "1", "assignee": "bob", "outcome": "approve", "reason": "by phone"},
        )
        .status_code
    ),
    "admin reassign to carol": lambda w, i, a: (
        client_for("operator", w, api=False)
        .post(
            f"/admin/approvals/approvalrequest/{a.pk}/reassign/",
            {"confirm": "1", "users": "carol", "groups": "", "reason": "x"},
        )
        .status_code
    ),
    "admin complete by hand": lambda w, i, a: (
        client_for("operator", w, api=False)
        .post(
            f"/admin/orchestration/workflowinstance/{i.pk}/steps/{a.step_run_id}/complete/",
            COMPLETE_BY_HAND,
        )
        .status_code
    ),
    "status page complete by hand": lambda w, i, a: (
        client_for("operator", w, api=False)
        .post(f"/instances/{i.pk}/steps/{a.step_run_id}/complete/", COMPLETE_BY_HAND)
        .status_code
    ),
}


@pytest.mark.parametrize("channel", OWN_REQUEST_CHANNELS.keys())
def test_an_operator_cannot_push_their_own_expense_through(world: World, channel: str) -> None:
    """otto (operator) starts his own expense. Even with every operator switch on (decide on
    behalf, complete approval steps by hand), no channel lets him produce its outcome."""
    otto = world.users["operator"]
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 5000, "currency": "EUR", "description": "Laptop"},
        started_by=otto,
    )
    _run_scheduled(instance)
    approval = ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")
    assert approval.requester == otto
    before = snapshot()
    with override_settings(**ON_BEHALF, **OPERATORS_COMPLETE):
        got = OWN_REQUEST_CHANNELS[channel](world, instance, approval)
    assert got in (403, REFUSED), got
    assert snapshot() == before
    assert ApprovalRequest.objects.get(pk=approval.pk).state == "pending"


def test_an_operators_batch_retry_of_their_own_rejected_expense_asks_the_managers_again(
    world: World,
) -> None:
    """otto's expense, rejected by bob, fails. otto's batch retry goes through the same
    service and policy as the single retry: the approval step is asked again (a new request
    waiting for the managers), never pushed through."""
    from approvals.deciding import approval_decide
    from orchestration import batch_runner

    otto = world.users["operator"]
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 5000, "currency": "EUR", "description": "Laptop"},
        started_by=otto,
    )
    _run_scheduled(instance)
    approval = ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")
    approval_decide(
        request_id=approval.pk, user=world.users["assignee"], outcome="reject", comment="no"
    )
    _run_scheduled(instance)
    assert WorkflowInstance.objects.get(pk=instance.pk).state == "failed"
    batch = batches.batch_create(
        action="retry", filter={"ids": [str(instance.pk)]}, user=otto, reason="try again"
    )
    batch_runner.batch_run_chunk(batch_id=batch.pk)
    batch.refresh_from_db()
    assert (batch.state, batch.done, batch.failed) == ("done", 1, 0)
    step = StepRun.objects.get(instance=instance, name="manager_approval")
    assert step.state == "waiting"
    again = ApprovalRequest.objects.filter(instance=instance).order_by("-pk").first()
    assert again.pk != approval.pk and again.state == "pending"
    retried = Event.objects.get(instance=instance, type="instance_retried")
    assert retried.actor == "user:otto"


def test_operators_decisions_on_behalf_are_recorded_as_such(world: World) -> None:
    with override_settings(**ON_BEHALF):
        response = _decide_on_behalf(client_for("operator", world, api=False), world)
    assert response.status_code == 302
    decision = Decision.objects.get(request=world.approval)
    assert (decision.decided_by, decision.assignee, decision.channel) == (
        world.users["operator"],
        world.users["assignee"],
        "admin",
    )
    assert decision.reason == "by phone"
    event = Event.objects.get(instance=world.expense, type="approval_decided")
    assert event.data["on_behalf"] is True and event.data["for"] == "bob"
    assert event.actor == "user:otto"


# -- email links: the link's person, once, with the page's CSRF token -----------------------------


def _csrf_post(client: Client, url: str, data: dict[str, str]) -> HttpResponse:
    """POST as a browser does: with the CSRF token of the page (GET) first."""
    client.get(url)
    return client.post(url, {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value})


def _tampered(signed: str) -> str:
    return signed[:-3] + ("xyz" if not signed.endswith("xyz") else "abc")


LINK_CASES: dict[str, tuple[Callable[[World], HttpResponse], int, bool]] = {
    # name: (request, status, whether it decides)
    "GET bob's link shows the request and changes nothing": (
        lambda w: Client(enforce_csrf_checks=True).get(f"/a/{w.links['bob']}/"),
        200,
        False,
    ),
    "POST bob's link with the page's CSRF token decides, as bob": (
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True), f"/a/{w.links['bob']}/", {"outcome": "approve"}
        ),
        200,
        True,
    ),
    "POST bob's link without the page's CSRF token": (
        lambda w: Client(enforce_csrf_checks=True).post(
            f"/a/{w.links['bob']}/", {"outcome": "approve"}
        ),
        403,
        False,
    ),
    "POST without a token (/a/not-a-token/)": (
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True), "/a/not-a-token/", {"outcome": "approve"}
        ),
        400,
        False,
    ),
    "POST bob's link, tampered": (
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True),
            f"/a/{_tampered(w.links['bob'])}/",
            {"outcome": "approve"},
        ),
        400,
        False,
    ),
    "POST carol's link (not an assignee)": (
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True), f"/a/{w.links['carol']}/", {"outcome": "approve"}
        ),
        403,
        False,
    ),
    "POST alice's link (her own request)": (
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True), f"/a/{w.links['alice']}/", {"outcome": "approve"}
        ),
        403,
        False,
    ),
}


def _deactivate_bob(w: World) -> None:
    w.users["assignee"].is_active = False
    w.users["assignee"].save(update_fields=["is_active"])


def _bob_leaves_managers(w: World) -> None:
    Group.objects.get(name="managers").user_set.remove(w.users["assignee"])


def _bob_decides_in_the_inbox(w: World) -> None:
    response = client_for("assignee", w, api=False).post(
        f"/inbox/{w.approval.pk}/decide/", {"outcome": "reject", "comment": "no"}
    )
    assert response.status_code == 302


# Links die with what made them valid: name -> (what happens first, request, status).
DEAD_LINK_CASES: dict[str, tuple[Callable[[World], None], Callable[[World], Any], int]] = {
    "GET bob's link after his account was deactivated": (
        _deactivate_bob,
        lambda w: Client(enforce_csrf_checks=True).get(f"/a/{w.links['bob']}/"),
        403,
    ),
    "POST bob's link after his account was deactivated": (
        _deactivate_bob,
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True), f"/a/{w.links['bob']}/", {"outcome": "approve"}
        ),
        403,
    ),
    "POST bob's link after he left the assigned group": (
        _bob_leaves_managers,
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True), f"/a/{w.links['bob']}/", {"outcome": "approve"}
        ),
        403,
    ),
    "POST bob's link after the request was decided": (
        _bob_decides_in_the_inbox,
        lambda w: _csrf_post(
            Client(enforce_csrf_checks=True), f"/a/{w.links['bob']}/", {"outcome": "approve"}
        ),
        410,
    ),
}


@pytest.mark.parametrize("case", DEAD_LINK_CASES.keys())
def test_a_link_dies_with_what_made_it_valid(world: World, case: str) -> None:
    prepare, make_request, status = DEAD_LINK_CASES[case]
    prepare(world)
    before = snapshot()
    response = make_request(world)
    assert response.status_code == status, response.content[:300]
    assert b'name="outcome"' not in response.content  # no decision form
    assert snapshot() == before


@pytest.mark.parametrize("case", LINK_CASES.keys())
def test_email_link(world: World, case: str) -> None:
    make_request, status, decides = LINK_CASES[case]
    before = snapshot()
    response = make_request(world)
    assert response.status_code == status, response.content[:300]
    if decides:
        decision = Decision.objects.get(request=world.approval)
        assert decision.decided_by == world.users["assignee"]
        assert decision.channel == "email"
    else:
        assert snapshot() == before


def test_email_link_acts_as_its_person_once_whoever_is_logged_in(world: World) -> None:
    """The link is the credential: alice's session does not make bob's link hers, and the
    link works once."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["requester"])
    url = f"/a/{world.links['bob']}/"
    assert _csrf_post(client, url, {"outcome": "approve"}).status_code == 200
    decision = Decision.objects.get(request=world.approval)
    assert decision.decided_by == world.users["assignee"]
    before = snapshot()
    again = _csrf_post(Client(enforce_csrf_checks=True), url, {"outcome": "reject"})
    assert again.status_code == 410
    assert snapshot() == before


# -- CSRF: a session is not enough to act --------------------------------------------------------


CSRF_CASES: dict[str, tuple[str, Callable[[Client, World], HttpResponse]]] = {
    "inbox decide": ("assignee", OPS["POST /inbox/{id}/decide/"].call),
    "API approve with a session": (
        "assignee",
        OPS["POST /api/v1/approvals/{id}/approve/"].call,
    ),
    "API cancel with a session": ("requester", OPS["POST /api/v1/instances/{id}/cancel/"].call),
    "status page cancel": ("operator", OPS["POST /instances/{id}/actions/cancel/"].call),
    "admin bulk cancel": ("operator", _bulk_cancel),
    "mail preferences page": ("assignee", OPS["POST /inbox/preferences/ digest"].call),
    "zone and language": ("assignee", OPS["POST /inbox/preferences/ zone and language"].call),
    "mail preferences link": ("anonymous", OPS["POST /mail/{bob's preferences link}/ digest"].call),
}


@pytest.mark.parametrize("case", CSRF_CASES.keys())
def test_session_posts_without_a_csrf_token_are_refused(world: World, case: str) -> None:
    role, call = CSRF_CASES[case]
    client = client_for(role, world, api=False, enforce_csrf_checks=True)
    before = snapshot()
    response = call(client, world)
    assert response.status_code == 403, response.content[:300]
    assert snapshot() == before


# -- Django's deployment checklist ---------------------------------------------------------------


def production_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a production web process (docker-compose, behind a TLS proxy)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "SIGNOFF_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "signoff.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://signoff.example.com",
        "SIGNOFF_BASE_URL": "https://signoff.example.com",
        # HTTPS only: secure cookies, redirect to https, HSTS; TLS ends at the proxy.
        "SIGNOFF_HTTPS": "1",
        "SIGNOFF_BEHIND_PROXY": "1",
        "DATABASE_URL": "postgres://signoff@db:5432/signoff",
        "CELERY_BROKER_URL": "redis://redis:6379/0",
        "SIGNOFF_DATA_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
    }


def test_check_deploy_is_clean_under_production_settings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues (0 silenced)." in output, output
