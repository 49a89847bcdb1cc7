"""The authorization matrix of send back for changes (issue 12, item 2), over the roles of
``tests/test_security.py``: request changes (API, inbox, bulk, email links), resubmit and
withdraw (API and inbox), the revise page and the lists of requests to revise.

The rules (``approvals.policy``, acts ``request_changes``, ``resubmit``, ``withdraw``):
exactly who may decide may send a request back (a current assignee, never the requester, not
staff as such); only the requester (or the instance's starter) may resubmit or withdraw it, and
only while it is ``changes_requested``. Every cell asserts the status and, for a refusal, that
nothing changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponse
from django.test import Client

from approvals import services
from approvals.models import ApprovalRequest
from integrations.models import OutboundEmail
from orchestration import engine
from orchestration.models import WorkflowInstance
from tests.test_security import (
    DONE,
    HIDDEN,
    LISTED,
    LOGIN,
    REFUSED,
    ROLE_HELP,
    ROLES,
    Op,
    World,
    _csrf_post,
    _ids,
    _json,
    _make_world,
    _run_scheduled,
    client_for,
    judged,
)
from tests.test_security import snapshot as base_snapshot


def _sent_back(w: World) -> ApprovalRequest:
    instance, _ = engine.instance_start(
        workflow="t_revisable",
        input={"amount": 120, "description": "Taxi", "category": "travel"},
        started_by=w.users["requester"],
    )
    _run_scheduled(instance)
    request = ApprovalRequest.objects.get(instance=instance)
    services.approval_request_changes(
        request_id=request.pk, user=w.users["assignee"], comment="receipt missing"
    )
    return ApprovalRequest.objects.get(pk=request.pk)


@pytest.fixture(scope="module")
def changes_world(django_db_setup: Any, django_db_blocker: Any) -> Iterator[World]:
    """The security world plus a request sent back for changes; made once, rolled back after
    the module, every cell in a savepoint inside it."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            world = _make_world()
            world.sent_back = _sent_back(world)  # type: ignore[attr-defined]
            yield world
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def world(changes_world: World, db: Any) -> World:
    cache.clear()
    return changes_world


def snapshot() -> tuple:
    """The security matrix's snapshot, plus what these acts write besides: inputs, who
    answered a request sent back, rounds, mail."""
    return (
        *base_snapshot(),
        sorted(
            json.dumps(i, sort_keys=True)
            for i in WorkflowInstance.objects.values_list("input", flat=True)
        ),
        sorted(ApprovalRequest.objects.values_list("pk", "round", "state", "answered_by_id")),
        OutboundEmail.objects.count(),
    )


def _bulk_request_changes(c: Client, w: World) -> HttpResponse:
    return c.post(
        "/inbox/bulk/",
        {"outcome": "request_changes", "ids": [w.approval.pk], "comment": "x", "next": "/inbox/"},
    )


def _bulk_judge(response: HttpResponse, w: World | None = None) -> Any:
    if response.status_code != 302 or not response["Location"].startswith("/inbox/"):
        return None
    texts = [m.message for m in response.wsgi_request._messages]
    if any("one request at a time" in t for t in texts):
        return REFUSED
    return texts


def _sent(w: World) -> int:
    return w.sent_back.pk  # type: ignore[attr-defined]


REVISION = {"amount": "95", "description": "Taxi", "category": "travel"}

OPS: dict[str, Op] = {
    "POST /api/v1/approvals/{id}/request-changes/": Op(
        lambda c, w: _json(
            c, "post", f"/api/v1/approvals/{w.approval.pk}/request-changes/", {"comment": "why?"}
        ),
        api=True,
        writes=True,
    ),
    "POST /inbox/{id}/decide/ request_changes": Op(
        lambda c, w: c.post(
            f"/inbox/{w.approval.pk}/decide/", {"outcome": "request_changes", "comment": "why?"}
        ),
        writes=True,
    ),
    "POST /inbox/bulk/ request_changes": Op(_bulk_request_changes, writes=True, judge=_bulk_judge),
    "POST /api/v1/approvals/{id}/resubmit/": Op(
        lambda c, w: _json(
            c, "post", f"/api/v1/approvals/{_sent(w)}/resubmit/", {"input": {"amount": 95}}
        ),
        api=True,
        writes=True,
    ),
    "POST /api/v1/approvals/{id}/withdraw/": Op(
        lambda c, w: _json(c, "post", f"/api/v1/approvals/{_sent(w)}/withdraw/", {}),
        api=True,
        writes=True,
    ),
    "GET /api/v1/approvals/?state=revise": Op(
        lambda c, w: c.get("/api/v1/approvals/", {"state": "revise"}),
        api=True,
        listed=lambda r, w: str(_sent(w)) in _ids(r),
    ),
    "GET /api/v1/approvals/{id}/ (sent back)": Op(
        lambda c, w: c.get(f"/api/v1/approvals/{_sent(w)}/"), api=True
    ),
    "GET /inbox/ (Revise and resubmit)": Op(
        lambda c, w: c.get("/inbox/"),
        listed=lambda r, w: f'data-revise="{_sent(w)}"' in r.content.decode(),
    ),
    "GET /inbox/{id}/revise/": Op(lambda c, w: c.get(f"/inbox/{_sent(w)}/revise/")),
    "POST /inbox/{id}/revise/": Op(
        lambda c, w: c.post(f"/inbox/{_sent(w)}/revise/", REVISION), writes=True
    ),
    "POST /inbox/{id}/withdraw/": Op(
        lambda c, w: c.post(f"/inbox/{_sent(w)}/withdraw/", {"reason": "x"}), writes=True
    ),
}

# fmt: off
# Columns: anonymous, requester, assignee, staff, viewer, operator, superuser.
MATRIX: dict[str, tuple[Any, ...]] = {
    "POST /api/v1/approvals/{id}/request-changes/": (401, 403, 200, 403, 403, 403, 403),
    "POST /inbox/{id}/decide/ request_changes":     (LOGIN, 403, DONE, 403, 403, 403, 403),
    "POST /inbox/bulk/ request_changes":            (LOGIN, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED),  # noqa: E501
    "POST /api/v1/approvals/{id}/resubmit/":        (401, 201, 403, 403, 403, 403, 403),
    "POST /api/v1/approvals/{id}/withdraw/":        (401, 200, 403, 403, 403, 403, 403),
    "GET /api/v1/approvals/?state=revise":          (401, LISTED, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),  # noqa: E501
    "GET /api/v1/approvals/{id}/ (sent back)":      (401, 200, 200, 200, 200, 200, 200),
    "GET /inbox/ (Revise and resubmit)":            (LOGIN, LISTED, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),  # noqa: E501
    "GET /inbox/{id}/revise/":                      (LOGIN, 200, 403, 403, 403, 403, 403),
    "POST /inbox/{id}/revise/":                     (LOGIN, DONE, 403, 403, 403, 403, 403),
    "POST /inbox/{id}/withdraw/":                   (LOGIN, DONE, 403, 403, 403, 403, 403),
}
# fmt: on

CELLS = [
    pytest.param(name, role, expected, id=f"{name} | {role}")
    for name, row in MATRIX.items()
    for role, expected in zip(ROLES, row, strict=True)
]


def test_the_matrix_covers_every_operation_and_role() -> None:
    assert set(MATRIX) == set(OPS)
    assert all(len(row) == len(ROLES) for row in MATRIX.values())


@pytest.mark.parametrize(("operation", "role", "expected"), CELLS)
def test_changes_authorization_matrix(
    world: World, operation: str, role: str, expected: Any
) -> None:
    op = OPS[operation]
    client = client_for(role, world, api=op.api)
    before = snapshot()
    response = op.call(client, world)
    got = judged(op, response, world)
    assert got == expected, (
        f"{operation} as {role} ({ROLE_HELP[role]}): expected {expected}, got {got} "
        f"{response.content[:300]!r}"
    )
    if op.writes and got in (200, 201, 202, DONE):
        assert snapshot() != before, f"{operation} as {role} answered {got} but changed nothing"
    else:
        assert snapshot() == before, f"{operation} as {role} changed data"


# -- email links: the third button acts as the link's person only ----------------------------------

LINK_CASES: dict[str, tuple[str, dict[str, str], int, bool]] = {
    # name: (whose link, form, status, whether it sends the request back)
    "bob's link, request changes with a comment": (
        "bob",
        {"outcome": "request_changes", "comment": "which trip?"},
        200,
        True,
    ),
    "bob's link, request changes without a comment": (
        "bob",
        {"outcome": "request_changes", "comment": ""},
        400,
        False,
    ),
    "carol's link (not an assignee)": (
        "carol",
        {"outcome": "request_changes", "comment": "x"},
        403,
        False,
    ),
    "alice's link (her own request)": (
        "alice",
        {"outcome": "request_changes", "comment": "x"},
        403,
        False,
    ),
}


@pytest.mark.parametrize("case", LINK_CASES.keys())
def test_email_link_request_changes(world: World, case: str) -> None:
    person, form, status, acts = LINK_CASES[case]
    before = snapshot()
    response = _csrf_post(Client(enforce_csrf_checks=True), f"/a/{world.links[person]}/", form)
    assert response.status_code == status, response.content[:300]
    request = ApprovalRequest.objects.get(pk=world.approval.pk)
    if acts:
        assert request.state == "changes_requested"
        decision = request.decisions.get()
        assert (decision.decided_by, decision.channel) == (world.users["assignee"], "email")
    else:
        assert request.state == "pending"
        assert snapshot() == before


def test_a_link_after_the_request_was_sent_back_changes_nothing(world: World) -> None:
    services.approval_request_changes(
        request_id=world.approval.pk, user=world.users["assignee"], comment="receipt?"
    )
    before = snapshot()
    # bob's own link (used up nothing yet) and the link of nobody in particular
    for person in ("bob", "carol"):
        response = _csrf_post(
            Client(enforce_csrf_checks=True),
            f"/a/{world.links[person]}/",
            {"outcome": "approve"},
        )
        assert response.status_code in (403, 410), response.content[:300]
        assert b'name="outcome"' not in response.content
    assert snapshot() == before
