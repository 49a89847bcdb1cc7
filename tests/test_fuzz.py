"""API fuzzing: schemathesis generates requests for every operation of the OpenAPI schema the
app serves at ``/api/schema/`` and sends them to the WSGI app in-process, authenticated with a
token. For every response: no 5xx, a documented status code and content type, and a body that
matches the documented schema; a request the schema forbids is refused, and the same request
without the token is a 401.

The database holds real data first (the demo users and expenses, approvals waiting for the
fuzzing user, a failed instance, an onboarding waiting for its signal), and generated path
ids are often swapped for real ones, so the fuzzer reaches past the 404s into the views.
Examples per operation are bounded (``MAX_EXAMPLES``) and the seed is fixed, so a CI run is
reproducible and stays around a minute.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from config.wsgi import application
from orchestration import engine, schedules
from orchestration.models import StepRun, WorkflowInstance

MAX_EXAMPLES = int(os.environ.get("SIGNOFF_FUZZ_EXAMPLES", "20"))

CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "seed": 20260701,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "database": "none",
            # The token header is ours; schemathesis should not invent Authorization values.
            "with-security-parameters": False,
        },
        "phases": {"stateful": {"enabled": False}},
    }
)

schema = schemathesis.openapi.from_wsgi("/api/schema/", application, config=CONFIG)

CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    # A request the schema forbids is refused (4xx), never half-accepted.
    openapi_checks.negative_data_rejection,
    # Without the token (or with a bad one) the same request is a 401.
    openapi_checks.ignored_auth,
]

BATCH_START = ("POST", "/api/v1/instances/batch/")

# Real ids and names to put into generated requests, filled by ``make_world`` (the hooks run
# while hypothesis draws, after the fixtures).
REAL: dict[str, list[Any]] = {
    "instances": [],
    "approvals": [],
    "waiting": [],
    "signals": [],
    "schedules": [],
}

# Valid starts, merged into generated bodies of POST /api/v1/instances/ (the rest of the
# generated body stays: business_key, version, unknown fields).
STARTS: list[dict[str, Any]] = [
    {
        "workflow": "expense_approval",
        "input": {"amount": 12.5, "currency": "EUR", "description": "Fuzz", "requester": "alice"},
    },
    {"workflow": "customer_onboarding", "input": {"customer": "Fuzz Ltd", "plan": "free"}},
    {"workflow": "t_sequence"},
]


def _real_or_generated(value: Any, pool: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(value), st.sampled_from(pool)) if pool else st.just(value)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """About half the time a real instance or approval id (and signal name) instead of the
    generated one, so requests reach past the lookup into the view."""
    if not path_parameters:
        return st.just(path_parameters)
    path = context.operation.path
    if path.startswith("/api/v1/approvals/"):
        kind = "approvals"
    elif path.startswith("/api/v1/schedules/"):
        kind = "schedules"
    else:
        # Signals mostly to the instance that waits for one.
        kind = "waiting" if "{name}" in path else "instances"
    pools = {"id": REAL[kind], "name": REAL["signals"]}
    return st.fixed_dictionaries(
        {
            key: _real_or_generated(value, pools.get(key, []))
            for key, value in path_parameters.items()
        }
    )


# Valid schedules, merged into generated bodies of POST /api/v1/schedules/ now and then.
SCHEDULES: list[dict[str, Any]] = [
    {"workflow": "t_sequence", "cron": "*/5 * * * *", "interval_seconds": None},
    {"workflow": "customer_onboarding", "input": {"customer": "Fuzz", "plan": "free"}},
]


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """Starts of registered workflows with valid input, now and then (and valid schedules)."""
    if not isinstance(body, dict):
        return st.just(body)
    if context.operation.label == "POST /api/v1/schedules/":
        return _real_or_generated(None, SCHEDULES).map(lambda valid: {**body, **(valid or {})})
    if context.operation.label != "POST /api/v1/instances/":
        return st.just(body)
    return _real_or_generated(None, STARTS).map(lambda start: {**body, **(start or {})})


def run_scheduled(instance: WorkflowInstance) -> None:
    """Play the worker in-process: run the instance's scheduled steps until none is left."""
    for _ in range(20):
        due = list(StepRun.objects.filter(instance=instance, state="scheduled"))
        if not due:
            return
        for step in due:
            engine.step_execute(step_run_id=step.pk, attempt=step.attempt)


@pytest.fixture(scope="module")
def in_process_requests() -> Iterator[None]:
    """Keep the test's database connection across requests to the raw WSGI app: at the end
    of a request Django closes a connection that is inside a transaction (its test client
    disconnects these receivers too)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(scope="module")
def seeded(
    django_db_setup: Any, django_db_blocker: Any, in_process_requests: None
) -> Iterator[str]:
    """The data, made once for the module in a transaction that is rolled back at its end;
    each operation's test runs in a savepoint inside it (``db``), so what one operation's
    examples change (cancel, decide, start) is undone before the next operation."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            yield make_world()
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def token(seeded: str, db: Any) -> str:
    return seeded


def make_world() -> str:
    """Demo data and a fuzzing user who may do everything the API offers; returns its token.

    The user is staff with ``operate_instance`` and ``view_sensitive`` (every instance, sealed
    fields opened), may manage schedules, and is a manager (the demo expenses wait for a
    manager's decision)."""
    User = get_user_model()  # noqa: N806
    call_command("seed_demo", stdout=io.StringIO())
    user = User.objects.create_user("fuzzer", email="fuzzer@example.com", is_staff=True)
    user.groups.add(Group.objects.get(name="managers"))
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="orchestration",
            codename__in=[
                "operate_instance",
                "view_sensitive",
                "add_schedule",
                "change_schedule",
                "delete_schedule",
            ],
        )
    )
    alice = User.objects.get(username="alice")
    failed, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": -1, "currency": "EUR", "description": "Refund?", "requester": "alice"},
        started_by=alice,
    )
    onboarding, _ = engine.instance_start(
        workflow="customer_onboarding",
        input={"customer": "ACME", "plan": "team"},
        business_key="ACME",
        started_by=alice,
    )
    for instance in WorkflowInstance.objects.all():
        run_scheduled(instance)
    assert WorkflowInstance.objects.get(pk=failed.pk).state == "failed"
    assert StepRun.objects.get(instance=onboarding, name="setup_completed").state == "waiting"
    # The large expense approved by a manager (it waits for finance now), one cancelled.
    large = ApprovalRequest.objects.get(business_key="EXPENSE-2", step_name="manager_approval")
    approval_decide(request_id=large.pk, user=User.objects.get(username="bob"), outcome="approve")
    books = ApprovalRequest.objects.get(business_key="EXPENSE-4")
    engine.instance_cancel(instance_id=books.instance_id, actor="test")
    assert ApprovalRequest.objects.filter(step_name="finance_approval", state="pending").exists()
    REAL["instances"] = [str(pk) for pk in WorkflowInstance.objects.values_list("pk", flat=True)]
    REAL["approvals"] = list(ApprovalRequest.objects.values_list("pk", flat=True))
    REAL["waiting"] = [str(onboarding.pk), *REAL["instances"][:2]]
    REAL["signals"] = ["setup_completed"]
    REAL["schedules"] = [
        schedules.schedule_create(
            values={"name": f"fuzz {n}", "workflow": "t_sequence", "interval_seconds": 3600}
        ).pk
        for n in range(2)
    ]
    return Token.objects.create(user=user).key


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@schema.parametrize()
def test_api_conforms_to_its_schema(case: Any, token: str) -> None:
    headers = {"Authorization": f"Token {token}"}
    if (case.method.upper(), case.path) != BATCH_START:
        case.call_and_validate(headers=headers, checks=CHECKS)
        return
    # A batch start answers an invalid item in its own result (207, that item 400) so the
    # other items still start; only an invalid batch as a whole is refused with a 4xx.
    response = case.call_and_validate(
        headers=headers,
        checks=CHECKS,
        excluded_checks=[openapi_checks.negative_data_rejection],
    )
    if response.status_code == 207:
        statuses = {result["status"] for result in response.json()["results"]}
        assert statuses <= {200, 201, 400, 403, 409}, statuses
