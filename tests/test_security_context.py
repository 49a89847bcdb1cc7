"""Authorization matrix for issue 12, items 1 and 4: reading an instance because of its approval
requests (current and past assignees), and the comment thread of a request.

The world is ``tests/test_security.py``'s (alice's expense waiting for the managers, bob among
them, staff sam, view-only vera, operator otto, root) plus pat, a past assignee: the expense's
request was reassigned to pat and the managers, then to the managers alone, so pat was
assigned once and is no longer. Each cell makes the request and compares the outcome as the
main matrix does; a refusal must leave everything as it was (the main snapshot plus comments,
past assignees and the outbox), an allowed write must change it.

The rules (``approvals/policy.py``, acts ``view_instance``, ``read_comments``, ``comment``):

- whoever may see one of an instance's requests — current and past assignees among them —
  reads the instance (status page, history downloads, API detail and history) read-only:
  acting on it stays 403 for them;
- whoever may see the request reads its comments;
- the requester (and starter), current assignees, whoever decided it, their delegates and
  operators post; staff without the permission and past assignees who never decided may
  read but not post (403); someone with no part sees nothing (404).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.test import Client, override_settings
from rest_framework.authtoken.models import Token

from approvals import services
from approvals.models import Comment, PastAssignee
from integrations.models import OutboundEmail
from tests.test_security import (
    DONE,
    LOGIN,
    ROLE_HELP,
    ROLES,
    Op,
    World,
    _json,
    _make_world,
    client_for,
    judged,
    snapshot,
)

CONTEXT_ROLES = (*ROLES, "past_assignee")
CONTEXT_ROLE_HELP = {
    **ROLE_HELP,
    "past_assignee": "pat: was assigned the expense's request, then reassigned away; not staff",
}


def _context_world() -> World:
    world = _make_world()
    pat = get_user_model().objects.create_user(
        "pat", email="pat@example.com", password="pw-pat-123"
    )
    request_id, otto = world.approval.pk, world.users["operator"]
    services.approval_reassign(
        request_id=request_id, operator=otto, users=["pat"], groups=["managers"], reason="cover"
    )
    services.approval_reassign(
        request_id=request_id, operator=otto, users=[], groups=["managers"], reason="back"
    )
    assert PastAssignee.objects.filter(request_id=request_id, user=pat).exists()
    world.users["past_assignee"] = pat
    world.tokens["past_assignee"] = Token.objects.create(user=pat).key
    return world


@pytest.fixture(scope="module")
def context_module_world(django_db_setup: Any, django_db_blocker: Any) -> Iterator[World]:
    """Made once, in a transaction rolled back after the module; every cell runs in a
    savepoint inside it (``db``)."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            yield _context_world()
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def context_world(context_module_world: World, db: Any) -> World:
    cache.clear()
    return context_module_world


def context_snapshot() -> tuple:
    return (
        snapshot(),
        sorted(Comment.objects.values_list("request_id", "author_id", "body")),
        sorted(PastAssignee.objects.values_list("request_id", "user_id")),
        OutboundEmail.objects.count(),
    )


def _instance(w: World) -> str:
    return str(w.expense.pk)


OPS: dict[str, Op] = {
    # reading the instance: the status page (item 1) and what goes with it
    "GET /instances/{id}/": Op(lambda c, w: c.get(f"/instances/{_instance(w)}/")),
    "GET /instances/{id}/live/": Op(lambda c, w: c.get(f"/instances/{_instance(w)}/live/")),
    "GET /instances/{id}/history.json": Op(
        lambda c, w: c.get(f"/instances/{_instance(w)}/history.json")
    ),
    "GET /api/v1/instances/{id}/": Op(
        lambda c, w: c.get(f"/api/v1/instances/{_instance(w)}/"), api=True
    ),
    "GET /api/v1/instances/{id}/history/": Op(
        lambda c, w: c.get(f"/api/v1/instances/{_instance(w)}/history/"), api=True
    ),
    # ... but not acting on it
    "POST /instances/{id}/actions/cancel/": Op(
        lambda c, w: c.post(
            f"/instances/{_instance(w)}/actions/cancel/", {"confirm": "1", "reason": "x"}
        ),
        writes=True,
    ),
    "POST /api/v1/instances/{id}/cancel/": Op(
        lambda c, w: _json(c, "post", f"/api/v1/instances/{_instance(w)}/cancel/", {}),
        api=True,
        writes=True,
    ),
    # the request page, where "Open the instance" starts
    "GET /inbox/{id}/": Op(lambda c, w: c.get(f"/inbox/{w.approval.pk}/")),
    "GET /api/v1/approvals/{id}/": Op(
        lambda c, w: c.get(f"/api/v1/approvals/{w.approval.pk}/"), api=True
    ),
    # comments (item 4)
    "GET /api/v1/approvals/{id}/comments/ (read comments)": Op(
        lambda c, w: c.get(f"/api/v1/approvals/{w.approval.pk}/comments/"), api=True
    ),
    "POST /inbox/{id}/comments/ (post comment)": Op(
        lambda c, w: c.post(f"/inbox/{w.approval.pk}/comments/", {"body": "A question"}),
        writes=True,
    ),
    "POST /api/v1/approvals/{id}/comments/ (post comment)": Op(
        lambda c, w: _json(
            c, "post", f"/api/v1/approvals/{w.approval.pk}/comments/", {"body": "A question"}
        ),
        api=True,
        writes=True,
    ),
}

# fmt: off
# Columns: anonymous, requester, assignee, staff, viewer, operator, superuser, past_assignee.
MATRIX: dict[str, tuple[Any, ...]] = {
    "GET /instances/{id}/":                     (LOGIN, 200, 200, 200, 200, 200, 200, 200),
    "GET /instances/{id}/live/":                (LOGIN, 200, 200, 200, 200, 200, 200, 200),
    "GET /instances/{id}/history.json":         (LOGIN, 200, 200, 200, 200, 200, 200, 200),
    "GET /api/v1/instances/{id}/":              (401, 200, 200, 200, 200, 200, 200, 200),
    "GET /api/v1/instances/{id}/history/":      (401, 200, 200, 200, 200, 200, 200, 200),
    "POST /instances/{id}/actions/cancel/":     (LOGIN, 403, 403, 403, 403, DONE, DONE, 403),
    "POST /api/v1/instances/{id}/cancel/":      (401, 200, 403, 403, 403, 200, 200, 403),
    "GET /inbox/{id}/":                         (LOGIN, 200, 200, 200, 200, 200, 200, 200),
    "GET /api/v1/approvals/{id}/":              (401, 200, 200, 200, 200, 200, 200, 200),
    "GET /api/v1/approvals/{id}/comments/ (read comments)":  (401, 200, 200, 200, 200, 200, 200, 200),  # noqa: E501
    "POST /inbox/{id}/comments/ (post comment)":             (LOGIN, DONE, DONE, 403, 403, DONE, DONE, 403),  # noqa: E501
    "POST /api/v1/approvals/{id}/comments/ (post comment)":  (401, 201, 201, 403, 403, 201, 201, 403),  # noqa: E501
}
# fmt: on

CELLS = [
    pytest.param(name, role, expected, id=f"{name} | {role}")
    for name, row in MATRIX.items()
    for role, expected in zip(CONTEXT_ROLES, row, strict=True)
]


def test_the_context_matrix_covers_every_operation_and_role() -> None:
    assert set(MATRIX) == set(OPS)
    assert all(len(row) == len(CONTEXT_ROLES) for row in MATRIX.values())
    assert set(CONTEXT_ROLE_HELP) == set(CONTEXT_ROLES)


@pytest.mark.parametrize(("operation", "role", "expected"), CELLS)
def test_context_authorization_matrix(
    context_world: World, operation: str, role: str, expected: Any
) -> None:
    op = OPS[operation]
    client = client_for(role, context_world, api=op.api)
    before = context_snapshot()
    with override_settings(**op.settings):
        response = op.call(client, context_world)
    got = judged(op, response, context_world)
    assert got == expected, (
        f"{operation} as {role} ({CONTEXT_ROLE_HELP[role]}): expected {expected}, got {got} "
        f"{response.content[:300]!r}"
    )
    if op.writes and got in (200, 201, 202, DONE):
        assert context_snapshot() != before, f"{operation} as {role} answered {got} but no change"
    else:
        assert context_snapshot() == before, f"{operation} as {role} changed data"


# -- what the cells do not say -------------------------------------------------------------------


@pytest.mark.parametrize("role", ["assignee", "past_assignee"])
def test_assignees_read_the_status_page_without_operator_actions(
    context_world: World, role: str
) -> None:
    page = client_for(role, context_world, api=False).get(f"/instances/{_instance(context_world)}/")
    assert page.status_code == 200
    assert page.context["read_only"] is True
    assert page.context["operations"] == [] and page.context["can_operate"] is False
    assert all(row.operations == [] and row.links == [] for row in page.context["rows"])
    html = page.content.decode()
    assert "/actions/" not in html and "/steps/" not in html


@pytest.mark.parametrize(
    "path",
    [
        "/instances/{instance}/",
        "/instances/{instance}/history.json",
        "/inbox/{approval}/",
        "/inbox/{approval}/comments/",
        "/api/v1/instances/{instance}/",
        "/api/v1/approvals/{approval}/comments/",
    ],
)
def test_someone_with_no_part_sees_nothing(context_world: World, path: str) -> None:
    """carol has no part in the expense: every one of these is a 404, and a comment post
    changes nothing."""
    carol = context_world.users["other"]
    url = path.format(instance=_instance(context_world), approval=context_world.approval.pk)
    before = context_snapshot()
    if url.startswith("/api/"):
        client = client_for("requester", context_world, api=True)
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=carol).key}")
        response = (
            _json(client, "post", url, {"body": "hi"})
            if url.endswith("comments/")
            else client.get(url)
        )
    else:
        client = Client()
        client.force_login(carol)
        response = (
            client.post(url, {"body": "hi"}) if url.endswith("comments/") else client.get(url)
        )
    assert response.status_code == 404, (url, response.status_code)
    assert context_snapshot()[:2] == before[:2]
