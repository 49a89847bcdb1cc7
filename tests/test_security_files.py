"""Who may read and add files: the authorization matrix of attachments.

The world of ``tests/test_security.py`` plus a ``t_receipts`` expense of alice's, started
with a receipt, that bob approved as a manager and that now waits for finance. Columns:

- requester: alice, who started it;
- assignee: fiona, in finance (the pending request's group);
- past assignee: max, in managers (the manager request, approved by bob, was his too);
- delegate: dora, to whom fiona delegated;
- other: carol, with no part in it;
- staff, viewer, operator, superuser: as in the main matrix.

Reading a file asks the policy (``download``): the starter, staff and operators, and anyone
who may see one of the instance's requests; everyone else gets 403 (an unknown id 404). The
instance's file list is an instance resource: 404 for anyone who may not read the instance.
Adding a file to a request (``attach``) is for its requester, current assignees, their
delegates and operators, while it is pending. A refusal changes nothing: no row, no bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponse
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest, Comment, Delegation
from approvals.services import approval_decide
from orchestration import engine
from orchestration.models import Attachment
from tests.attachments_fixtures import ELF, PDF, PNG, storage_settings, stored_keys, upload
from tests.test_security import DONE, HIDDEN, LISTED, LOGIN, World, _make_world, snapshot

ROLES = (
    "anonymous",
    "requester",
    "assignee",
    "past assignee",
    "delegate",
    "other",
    "staff",
    "viewer",
    "operator",
    "superuser",
)


@dataclass
class FilesWorld:
    base: World
    users: dict[str, Any]
    tokens: dict[str, str]
    instance: Any
    receipt: Attachment  # uploaded with the start
    finance: ApprovalRequest  # pending, for fiona's group
    manager: ApprovalRequest  # approved by bob
    storage: Path


def _make_files_world(storage: Path) -> FilesWorld:
    base = _make_world()
    User = get_user_model()  # noqa: N806
    finance = Group.objects.get(name="finance")
    managers = Group.objects.get(name="managers")
    fiona = User.objects.create_user("fiona", email="fiona@example.com")
    finance.user_set.add(fiona)
    max_ = User.objects.create_user("max", email="max@example.com")
    managers.user_set.add(max_)
    dora = User.objects.create_user("dora", email="dora@example.com")
    now = timezone.now()
    Delegation.objects.create(
        user=fiona,
        delegate=dora,
        starts_at=now - timedelta(days=1),
        ends_at=now + timedelta(days=30),
    )
    alice = base.users["requester"]
    instance, _ = engine.instance_start(
        workflow="t_receipts",
        input={"amount": 2000},
        files=[upload("receipt.pdf", PDF)],
        started_by=alice,
    )
    manager = ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")
    approval_decide(request_id=manager.pk, user=base.users["assignee"], outcome="approve")
    finance_request = ApprovalRequest.objects.get(instance=instance, step_name="finance_approval")
    assert finance_request.state == "pending"
    users = {
        "requester": alice,
        "assignee": fiona,
        "past assignee": max_,
        "delegate": dora,
        "other": base.users["other"],
        "staff": base.users["staff"],
        "viewer": base.users["viewer"],
        "operator": base.users["operator"],
        "superuser": base.users["superuser"],
    }
    tokens = {role: Token.objects.get_or_create(user=user)[0].key for role, user in users.items()}
    return FilesWorld(
        base=base,
        users=users,
        tokens=tokens,
        instance=instance,
        receipt=Attachment.objects.get(instance=instance),
        finance=finance_request,
        manager=ApprovalRequest.objects.get(pk=manager.pk),
        storage=storage,
    )


@pytest.fixture(scope="module")
def module_files_world(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FilesWorld]:
    storage = tmp_path_factory.mktemp("files")
    with override_settings(STORAGES=storage_settings(storage)), django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            yield _make_files_world(storage)
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def world(module_files_world: FilesWorld, db: Any) -> Iterator[FilesWorld]:
    cache.clear()
    with override_settings(STORAGES=storage_settings(module_files_world.storage)):
        yield module_files_world


def files_snapshot() -> tuple:
    """Everything a request could change, with the files."""
    return (
        *snapshot(),
        sorted(Attachment.objects.values_list("pk", "context", "storage_key")),
        sorted(Comment.objects.values_list("pk", flat=True)),
    )


def client_for(role: str, w: FilesWorld, *, api: bool) -> Client:
    if api:
        client = APIClient()
        if role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Token {w.tokens[role]}")
        return client
    client = Client()
    if role != "anonymous":
        client.force_login(w.users[role])
    return client


@dataclass(frozen=True)
class Op:
    call: Callable[[Client, FilesWorld], HttpResponse]
    api: bool = False
    writes: bool = False
    listed: Callable[[HttpResponse, FilesWorld], bool] | None = None


def _comment_with_file(api: bool, data: bytes = PNG) -> Callable:
    def call(c: Client, w: FilesWorld) -> HttpResponse:
        form = {"body": "Is this the right scan?", "files": [upload("photo.png", data)]}
        if api:
            return c.post(f"/api/v1/approvals/{w.finance.pk}/comments/", form, format="multipart")
        return c.post(f"/inbox/{w.finance.pk}/comments/", form)

    return call


def _attach(request: Callable[[FilesWorld], ApprovalRequest], data: bytes = PNG) -> Callable:
    def call(c: Client, w: FilesWorld) -> HttpResponse:
        return c.post(f"/inbox/{request(w).pk}/files/", {"files": [upload("photo.png", data)]})

    return call


OPS: dict[str, Op] = {
    "GET /api/v1/files/{id}/": Op(lambda c, w: c.get(f"/api/v1/files/{w.receipt.pk}/"), api=True),
    "GET /files/{id}/": Op(lambda c, w: c.get(f"/files/{w.receipt.pk}/")),
    "GET /api/v1/instances/{id}/files/": Op(
        lambda c, w: c.get(f"/api/v1/instances/{w.instance.pk}/files/"), api=True
    ),
    "GET /inbox/{finance}/ lists the receipt": Op(
        lambda c, w: c.get(f"/inbox/{w.finance.pk}/"),
        listed=lambda r, w: f"/files/{w.receipt.pk}/" in r.content.decode(),
    ),
    "POST /inbox/{finance}/files/ (pending)": Op(_attach(lambda w: w.finance), writes=True),
    "POST /inbox/{finance}/files/ an executable": Op(
        _attach(lambda w: w.finance, ELF), writes=True
    ),
    "POST /inbox/{manager}/files/ (decided)": Op(_attach(lambda w: w.manager), writes=True),
    "POST /api/v1/approvals/{finance}/comments/ with a file": Op(
        _comment_with_file(api=True), api=True, writes=True
    ),
    "POST /inbox/{finance}/comments/ with a file": Op(_comment_with_file(api=False), writes=True),
    "POST /inbox/{finance}/comments/ with an executable": Op(
        _comment_with_file(api=False, data=ELF), writes=True
    ),
}

# fmt: off
# Columns: anonymous, requester, assignee, past assignee, delegate, other, staff, viewer,
# operator, superuser.
MATRIX: dict[str, tuple[Any, ...]] = {
    "GET /api/v1/files/{id}/":                      (401, 200, 200, 200, 200, 403, 200, 200, 200, 200),  # noqa: E501
    "GET /files/{id}/":                             (LOGIN, 200, 200, 200, 200, 403, 200, 200, 200, 200),  # noqa: E501
    "GET /api/v1/instances/{id}/files/":            (401, 200, 200, 200, 200, 404, 200, 200, 200, 200),  # noqa: E501
    "GET /inbox/{finance}/ lists the receipt":      (LOGIN, LISTED, LISTED, 404, LISTED, 404, LISTED, LISTED, LISTED, LISTED),  # noqa: E501
    "POST /inbox/{finance}/files/ (pending)":       (LOGIN, DONE, DONE, 404, DONE, 404, 403, 403, DONE, DONE),  # noqa: E501
    "POST /inbox/{finance}/files/ an executable":   (LOGIN, 400, 400, 404, 400, 404, 403, 403, 400, 400),  # noqa: E501
    "POST /inbox/{manager}/files/ (decided)":       (LOGIN, 409, 404, 409, 404, 404, 409, 409, 409, 409),  # noqa: E501
    "POST /api/v1/approvals/{finance}/comments/ with a file": (401, 201, 201, 404, 201, 404, 403, 403, 201, 201),  # noqa: E501
    "POST /inbox/{finance}/comments/ with a file":  (LOGIN, DONE, DONE, 404, DONE, 404, 403, 403, DONE, DONE),  # noqa: E501
    "POST /inbox/{finance}/comments/ with an executable": (LOGIN, 400, 400, 404, 400, 404, 403, 403, 400, 400),  # noqa: E501
}
# fmt: on

CELLS = [
    pytest.param(name, role, expected, id=f"{name} | {role}")
    for name, row in MATRIX.items()
    for role, expected in zip(ROLES, row, strict=True)
]


def outcome(op: Op, response: HttpResponse, w: FilesWorld) -> Any:
    if response.status_code == 302:
        location = response["Location"]
        return LOGIN if location.startswith("/accounts/login/") else DONE
    if op.listed is not None and response.status_code == 200:
        return LISTED if op.listed(response, w) else HIDDEN
    return response.status_code


def test_the_matrix_covers_every_operation_and_role() -> None:
    assert set(MATRIX) == set(OPS)
    assert all(len(row) == len(ROLES) for row in MATRIX.values())


@pytest.mark.parametrize(("operation", "role", "expected"), CELLS)
def test_files_authorization_matrix(
    world: FilesWorld, operation: str, role: str, expected: Any
) -> None:
    op = OPS[operation]
    client = client_for(role, world, api=op.api)
    before, keys = files_snapshot(), stored_keys(world.storage)
    response = op.call(client, world)
    got = outcome(op, response, world)
    assert got == expected, f"{operation} as {role}: expected {expected}, got {got} " + repr(
        response.content[:300] if not response.streaming else b"<file>"
    )
    if op.writes and got in (DONE, 201):
        added = Attachment.objects.exclude(pk=world.receipt.pk).get()
        if "comments" in operation:  # the file belongs to the comment just posted
            comment = Comment.objects.get(request=world.finance)
            assert comment.author == world.users[role]
            assert added.context == f"comment:{comment.pk}"
        else:
            assert added.context == f"request:{world.finance.pk}"
        assert added.uploaded_by == world.users[role]
        assert len(stored_keys(world.storage)) == len(keys) + 1
    else:
        assert files_snapshot() == before, f"{operation} as {role} changed data"
        assert stored_keys(world.storage) == keys, f"{operation} as {role} left bytes"
    if got == 200 and operation.endswith("/files/{id}/"):
        assert b"".join(response.streaming_content) == PDF
        assert response["Content-Disposition"] == 'attachment; filename="receipt.pdf"'
        assert response["X-Content-Type-Options"] == "nosniff"


def test_a_refused_upload_names_the_file_and_the_problem(world: FilesWorld) -> None:
    response = _attach(lambda w: w.finance, ELF)(client_for("assignee", world, api=False), world)
    assert response.status_code == 400
    text = response.content.decode()
    assert "Your file was not added: photo.png: its content is an executable (ELF)" in text


def test_the_delegate_loses_the_files_when_the_delegation_ends(world: FilesWorld) -> None:
    Delegation.objects.filter(delegate=world.users["delegate"]).update(ends_at=timezone.now())
    response = client_for("delegate", world, api=True).get(f"/api/v1/files/{world.receipt.pk}/")
    assert response.status_code == 403


def test_a_deactivated_assignee_reads_nothing(world: FilesWorld) -> None:
    client = client_for("assignee", world, api=True)
    type(world.users["assignee"]).objects.filter(pk=world.users["assignee"].pk).update(
        is_active=False
    )
    assert client.get(f"/api/v1/files/{world.receipt.pk}/").status_code == 401
