"""The authorization matrix of claims and API reassignment, over the roles of
``tests/test_security.py`` (its world and helpers).

Each cell makes one request and compares what happened (a status, ``login`` / ``admin login``,
``done`` for a redirect that means the act was carried out, ``refused`` for a bulk page that
answered with its refusal) and checks that a refusal changed nothing and an allowed write
changed something. The world's expense waits for ``managers``: bob (the assignee role) and,
here, mia — a second manager who holds the claim where a cell needs someone else's claim.

The rules behind the table (``approvals.policy``):

- claiming, and taking over a soft claim, is for someone who may decide the request;
- while someone else holds the claim nobody decides, on any channel (409 ``claimed``);
- only the claimant releases a claim, or a holder of ``approvals.override_claim`` (forced),
  never on their own request;
- a hard claim is taken over only with ``approvals.override_claim`` (and only by someone who
  may decide the request);
- reassigning is for operators, never to themselves; the rest learn nothing about usernames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponse
from django.test import Client

from approvals import claims
from approvals.models import ApprovalRequest
from tests.test_security import (
    ADMIN_LOGIN,
    DONE,
    LOGIN,
    REFUSED,
    ROLE_HELP,
    ROLES,
    World,
    _bulk_judge,
    _csrf_post,
    _json,
    _make_world,
    client_for,
    judged,
)
from tests.test_security import snapshot as base_snapshot

# -- the world: test_security's, with a second manager ------------------------------------------


@pytest.fixture(scope="module")
def claim_world(django_db_setup: Any, django_db_blocker: Any) -> Iterator[World]:
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            world = _make_world()
            mia = get_user_model().objects.create_user("mia", email="mia@example.com")
            Group.objects.get(name="managers").user_set.add(mia)
            world.users["mia"] = mia
            yield world
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def world(claim_world: World, db: Any) -> World:
    cache.clear()
    return claim_world


def snapshot() -> tuple:
    """test_security's snapshot and the claims."""
    return (
        base_snapshot(),
        sorted(
            ApprovalRequest.objects.values_list(
                "pk", "claim_mode", "claim_state", "claimed_by_id", "claimed_at"
            )
        ),
    )


# -- preparations ---------------------------------------------------------------------------------


def _claimed_by(name: str, *, hard: bool = False) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        if hard:
            ApprovalRequest.objects.filter(pk=w.approval.pk).update(claim_mode="hard")
        claims.approval_claim(request_id=w.approval.pk, user=w.users[name])

    return prepare


MIA_CLAIMS = _claimed_by("mia")
MIA_CLAIMS_HARD = _claimed_by("mia", hard=True)
BOB_CLAIMS = _claimed_by("assignee")


@dataclass(frozen=True)
class Op:
    call: Callable[[Client, World], HttpResponse]
    api: bool = False
    writes: bool = True
    prepare: Callable[[World], None] | None = None
    # Give the role approvals.override_claim first.
    override: bool = False
    judge: Callable[[HttpResponse, World], Any] | None = None
    listed: None = None  # (test_security's judged() asks)


def _api(method: str, suffix: str, body: Any = None) -> Callable[[Client, World], HttpResponse]:
    return lambda c, w: _json(c, method, f"/api/v1/approvals/{w.approval.pk}/{suffix}", body)


def _web(suffix: str, data: dict[str, Any] | None = None) -> Callable[[Client, World], Any]:
    return lambda c, w: c.post(f"/inbox/{w.approval.pk}/{suffix}", data or {})


def _admin(suffix: str, data: dict[str, Any]) -> Callable[[Client, World], HttpResponse]:
    return lambda c, w: c.post(
        f"/admin/approvals/approvalrequest/{w.approval.pk}/{suffix}/", {"confirm": "1", **data}
    )


def _bulk(c: Client, w: World) -> HttpResponse:
    return c.post("/inbox/bulk/", {"outcome": "approve", "ids": [w.approval.pk], "next": "/inbox/"})


NOTE = {"note": "matrix"}
REASSIGN = "reassign/"

OPS: dict[str, Op] = {
    "POST /api/v1/approvals/{id}/claim/": Op(_api("post", "claim/", {}), api=True),
    "POST /inbox/{id}/claim/": Op(_web("claim/")),
    "POST /api/v1/approvals/{id}/claim/ (mia holds it)": Op(
        _api("post", "claim/", {}), api=True, prepare=MIA_CLAIMS
    ),
    "POST /api/v1/approvals/{id}/approve/ (mia holds it)": Op(
        _api("post", "approve/", {}), api=True, prepare=MIA_CLAIMS
    ),
    "POST /inbox/{id}/decide/ (mia holds it)": Op(
        _web("decide/", {"outcome": "approve"}), prepare=MIA_CLAIMS
    ),
    "POST /inbox/bulk/ approve (mia holds it)": Op(_bulk, prepare=MIA_CLAIMS, judge=_bulk_judge),
    "POST /api/v1/approvals/{id}/release/ (bob's claim)": Op(
        _api("post", "release/", {}), api=True, prepare=BOB_CLAIMS
    ),
    "POST /inbox/{id}/release/ (bob's claim)": Op(_web("release/"), prepare=BOB_CLAIMS),
    "POST /api/v1/approvals/{id}/release/ (mia's claim)": Op(
        _api("post", "release/", NOTE), api=True, prepare=MIA_CLAIMS
    ),
    "POST /api/v1/approvals/{id}/release/ (mia's claim), with override_claim": Op(
        _api("post", "release/", NOTE), api=True, prepare=MIA_CLAIMS, override=True
    ),
    "POST /api/v1/approvals/{id}/take-over/ (mia's soft claim)": Op(
        _api("post", "take-over/", NOTE), api=True, prepare=MIA_CLAIMS
    ),
    "POST /inbox/{id}/take-over/ (mia's soft claim)": Op(
        _web("take-over/", {**NOTE, "claimant": "mia"}), prepare=MIA_CLAIMS
    ),
    "POST /api/v1/approvals/{id}/take-over/ (mia's hard claim)": Op(
        _api("post", "take-over/", NOTE), api=True, prepare=MIA_CLAIMS_HARD
    ),
    "POST /api/v1/approvals/{id}/take-over/ (mia's hard claim), with override_claim": Op(
        _api("post", "take-over/", NOTE), api=True, prepare=MIA_CLAIMS_HARD, override=True
    ),
    "POST /inbox/{id}/release/ (mia's hard claim)": Op(_web("release/"), prepare=MIA_CLAIMS_HARD),
    "POST admin: release mia's claim": Op(_admin("release-claim", NOTE), prepare=MIA_CLAIMS),
    "POST admin: take over mia's claim": Op(_admin("take-over-claim", NOTE), prepare=MIA_CLAIMS),
    "POST /api/v1/approvals/{id}/reassign/ to carol": Op(
        _api("post", REASSIGN, {"users": ["carol"], "reason": "matrix"}), api=True
    ),
    "POST /api/v1/approvals/{id}/reassign/ to the operators themselves": Op(
        _api("post", REASSIGN, {"users": ["otto", "root"], "reason": "matrix"}), api=True
    ),
    "POST /api/v1/approvals/{id}/reassign/ naming an unknown user": Op(
        _api("post", REASSIGN, {"users": ["no-such-user"], "reason": "matrix"}), api=True
    ),
    "POST /api/v1/approvals/{id}/reassign/ to carol (mia's claim goes)": Op(
        _api("post", REASSIGN, {"users": ["carol"], "reason": "matrix"}),
        api=True,
        prepare=MIA_CLAIMS,
    ),
}

# fmt: off
# Columns: anonymous, requester, assignee, staff, viewer, operator, superuser.
MATRIX: dict[str, tuple[Any, ...]] = {
    "POST /api/v1/approvals/{id}/claim/":                   (401, 403, 200, 403, 403, 403, 403),
    "POST /inbox/{id}/claim/":                              (LOGIN, 403, DONE, 403, 403, 403, 403),
    "POST /api/v1/approvals/{id}/claim/ (mia holds it)":    (401, 403, 409, 403, 403, 403, 403),
    # Someone else's claim stops every decision, the assignee's too.
    "POST /api/v1/approvals/{id}/approve/ (mia holds it)":  (401, 403, 409, 403, 403, 403, 403),
    "POST /inbox/{id}/decide/ (mia holds it)":              (LOGIN, 403, 409, 403, 403, 403, 403),
    "POST /inbox/bulk/ approve (mia holds it)":             (LOGIN, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED),  # noqa: E501
    # The claimant releases; a superuser holds approvals.override_claim (forced release).
    "POST /api/v1/approvals/{id}/release/ (bob's claim)":   (401, 403, 200, 403, 403, 403, 200),
    "POST /inbox/{id}/release/ (bob's claim)":              (LOGIN, 403, DONE, 403, 403, 403, DONE),  # noqa: E501
    "POST /api/v1/approvals/{id}/release/ (mia's claim)":   (401, 403, 403, 403, 403, 403, 200),
    # With the permission anyone who sees the request may force it, never the requester.
    "POST /api/v1/approvals/{id}/release/ (mia's claim), with override_claim": (401, 403, 200, 200, 200, 200, 200),  # noqa: E501
    "POST /api/v1/approvals/{id}/take-over/ (mia's soft claim)": (401, 403, 200, 403, 403, 403, 403),  # noqa: E501
    "POST /inbox/{id}/take-over/ (mia's soft claim)":       (LOGIN, 403, DONE, 403, 403, 403, 403),
    "POST /api/v1/approvals/{id}/take-over/ (mia's hard claim)": (401, 403, 403, 403, 403, 403, 403),  # noqa: E501
    # Overriding a hard claim still needs someone who may decide the request.
    "POST /api/v1/approvals/{id}/take-over/ (mia's hard claim), with override_claim": (401, 403, 200, 403, 403, 403, 403),  # noqa: E501
    "POST /inbox/{id}/release/ (mia's hard claim)":         (LOGIN, 403, 403, 403, 403, 403, DONE),
    "POST admin: release mia's claim":                      (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, 403, DONE),  # noqa: E501
    "POST admin: take over mia's claim":                    (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 403, 403, 403),  # noqa: E501
    "POST /api/v1/approvals/{id}/reassign/ to carol":       (401, 403, 403, 403, 403, 200, 200),
    "POST /api/v1/approvals/{id}/reassign/ to the operators themselves": (401, 403, 403, 403, 403, 403, 403),  # noqa: E501
    # Only operators are told that a username does not exist.
    "POST /api/v1/approvals/{id}/reassign/ naming an unknown user": (401, 403, 403, 403, 403, 400, 400),  # noqa: E501
    "POST /api/v1/approvals/{id}/reassign/ to carol (mia's claim goes)": (401, 403, 403, 403, 403, 200, 200),  # noqa: E501
}
# fmt: on

CELLS = [
    pytest.param(name, role, expected, id=f"{name} | {role}")
    for name, row in MATRIX.items()
    for role, expected in zip(ROLES, row, strict=True)
]


def test_the_claim_matrix_covers_every_operation_and_role() -> None:
    assert set(MATRIX) == set(OPS)
    assert all(len(row) == len(ROLES) for row in MATRIX.values())


@pytest.mark.parametrize(("operation", "role", "expected"), CELLS)
def test_claim_authorization_matrix(world: World, operation: str, role: str, expected: Any) -> None:
    op = OPS[operation]
    if op.prepare is not None:
        op.prepare(world)
    if op.override and role != "anonymous":
        world.users[role].user_permissions.add(Permission.objects.get(codename="override_claim"))
    client = client_for(role, world, api=op.api)
    before = snapshot()
    response = op.call(client, world)
    got = judged(op, response, world)  # type: ignore[arg-type]  # duck-typed Op
    assert got == expected, (
        f"{operation} as {role} ({ROLE_HELP[role]}): expected {expected}, got {got} "
        f"{response.content[:300]!r}"
    )
    if op.writes and got in (200, 201, 202, DONE):
        assert snapshot() != before, f"{operation} as {role} answered {got} but changed nothing"
    else:
        assert snapshot() == before, f"{operation} as {role} changed data"


def test_a_reassignment_drops_the_claim_of_someone_no_longer_assigned(world: World) -> None:
    MIA_CLAIMS(world)
    response = _json(
        client_for("operator", world, api=True),
        "post",
        f"/api/v1/approvals/{world.approval.pk}/reassign/",
        {"users": ["carol"], "reason": "mia left"},
    )
    assert response.status_code == 200, response.content
    assert response.json()["claimed_by"] is None
    assert ApprovalRequest.objects.get(pk=world.approval.pk).claim_state == "unclaimed"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_email_link_of_someone_elses_claimed_request_cannot_decide(
    world: World, method: str
) -> None:
    MIA_CLAIMS(world)
    url = f"/a/{world.links['bob']}/"
    before = snapshot()
    client = Client(enforce_csrf_checks=True)
    if method == "GET":
        response = client.get(url)
    else:
        response = _csrf_post(client, url, {"outcome": "approve"})
    assert response.status_code == 409
    assert b"Claimed by mia since" in response.content
    assert b'name="outcome"' not in response.content
    assert snapshot() == before
