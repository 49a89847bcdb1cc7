"""Files with comments and with a resubmission (issue 12 item 5): posted in the web and the
API, checked like every upload, listed with their comment or in the revised files field,
and refused without a trace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from approvals import comments, services
from approvals.models import ApprovalRequest, Comment
from orchestration import engine
from orchestration.errors import InvalidInput
from orchestration.models import Attachment, Event, WorkflowInstance
from tests.approvals.test_changes import start as start_revisable
from tests.attachments_fixtures import (
    EXE,
    JPEG,
    PDF,
    PNG,
    TEXT,
    files_dir_fixture,  # noqa: F401 - the files_dir fixture
    stored_keys,
    upload,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def receipts(people: dict[str, Any], files_dir: Path) -> ApprovalRequest:
    """alice's expense with one receipt, waiting for the managers (bob, dave); the manager
    step lets her revise the amount and the receipts."""
    instance, _ = engine.instance_start(
        workflow="t_receipts",
        input={"amount": 80},
        files=[upload("taxi receipt.pdf", PDF)],
        started_by=people["alice"],
    )
    return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")


def web(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def sent_back(receipts: ApprovalRequest, people: dict[str, Any]) -> ApprovalRequest:
    services.approval_request_changes(
        request_id=receipts.pk, user=people["bob"], comment="The receipt is unreadable."
    )
    return ApprovalRequest.objects.get(pk=receipts.pk)


def state(files_dir: Path) -> tuple[int, int, int, list[str]]:
    return (
        Comment.objects.count(),
        Attachment.objects.count(),
        Event.objects.count(),
        stored_keys(files_dir),
    )


# -- comments ----------------------------------------------------------------------------------


def test_a_comment_posted_in_the_web_carries_its_files(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    response = web(people["bob"]).post(
        f"/inbox/{receipts.pk}/comments/",
        {"body": "Is this the right receipt?", "files": [upload("marked.png", PNG)]},
        follow=True,
    )
    assert response.status_code == 200
    comment = Comment.objects.get()
    file = Attachment.objects.get(context=f"comment:{comment.pk}")
    assert (file.name, file.content_type, file.uploaded_by) == (
        "marked.png",
        "image/png",
        people["bob"],
    )
    html = response.content.decode()
    thread = html[html.index('id="comments"') :]
    assert f'href="/files/{file.pk}/"' in thread and "marked.png" in thread
    added = Event.objects.get(
        instance_id=receipts.instance_id,
        type="attachments_added",
        data__context=f"comment:{comment.pk}",
    )
    assert added.data["files"][0]["name"] == "marked.png"
    # alice, the requester, reads the file bob posted.
    assert web(people["alice"]).get(f"/files/{file.pk}/").status_code == 200


def test_a_comment_with_a_refused_file_posts_nothing(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    before = state(files_dir)
    response = web(people["bob"]).post(
        f"/inbox/{receipts.pk}/comments/",
        {"body": "See attached", "files": [upload("tool.pdf", EXE)]},
    )
    assert response.status_code == 400
    assert "tool.pdf" in response.content.decode()
    assert state(files_dir) == before


def test_the_api_takes_a_comment_with_files_as_multipart(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    url = f"/api/v1/approvals/{receipts.pk}/comments/"
    response = api(people["alice"]).post(
        url,
        {
            "body": "Here is a better scan.",
            "files": [upload("scan.jpg", JPEG), upload("note.txt", TEXT)],
        },
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="scan-1",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert [f["name"] for f in body["files"]] == ["scan.jpg", "note.txt"]
    assert body["files"][0]["links"]["download"].startswith("/api/v1/files/")
    # The same post again: the first comment, no second copy of the files.
    again = api(people["alice"]).post(
        url,
        {"body": "Here is a better scan.", "files": [upload("scan.jpg", JPEG)]},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="scan-1",
    )
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert Attachment.objects.filter(context__startswith="comment:").count() == 2
    # A JSON comment has no files; the thread lists each comment with its own.
    api(people["bob"]).post(url, {"body": "Thanks."}, format="json")
    listed = api(people["bob"]).get(url).json()["results"]
    assert [[f["name"] for f in c["files"]] for c in listed] == [["scan.jpg", "note.txt"], []]


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"body": "x", "file": upload("a.pdf", PDF)}, "file"),
        ({"body": "x", "extra": "1"}, "extra"),
        ({"body": ["x", "y"]}, "body"),
        ({"body": "x", "files": "not a file"}, "files"),
    ],
)
def test_a_multipart_comment_with_unknown_or_repeated_parts_is_refused(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path, form: dict, field: str
) -> None:
    before = state(files_dir)
    response = api(people["bob"]).post(
        f"/api/v1/approvals/{receipts.pk}/comments/", form, format="multipart"
    )
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    assert state(files_dir) == before


def test_a_comment_file_over_the_size_limit_is_refused_by_name(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path, settings: Any
) -> None:
    settings.SIGNOFF_FILE_MAX_BYTES = 40
    before = state(files_dir)
    response = api(people["bob"]).post(
        f"/api/v1/approvals/{receipts.pk}/comments/",
        {"body": "big", "files": [upload("big.pdf", PDF)]},
        format="multipart",
    )
    assert response.status_code == 400
    assert "big.pdf" in response.json()["detail"]
    assert state(files_dir) == before


def test_someone_with_no_part_cannot_post_a_comment_with_files(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    before = state(files_dir)
    response = api(people["carol"]).post(
        f"/api/v1/approvals/{receipts.pk}/comments/",
        {"body": "hi", "files": [upload("a.pdf", PDF)]},
        format="multipart",
    )
    assert response.status_code in (403, 404)
    assert state(files_dir) == before


def test_the_request_page_queries_stay_constant_as_comments_carry_files(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    client = web(people["bob"])
    url = f"/inbox/{receipts.pk}/"
    comments.comment_post(request_id=receipts.pk, user=people["alice"], body="first")
    client.get(url)
    with CaptureQueriesContext(connection) as before:
        client.get(url)
    for n in range(4):
        comments.comment_post(
            request_id=receipts.pk,
            user=people["bob" if n % 2 else "alice"],
            body=f"comment {n}",
            files=[upload(f"c{n}-{i}.pdf", PDF) for i in range(2)],
        )
    with CaptureQueriesContext(connection) as after:
        response = client.get(url)
    assert len(after) == len(before)
    thread = response.content.decode().split('id="comments"', 1)[1]
    assert len(set(re.findall(r'href="/files/([0-9a-f-]+)/"', thread))) == 8


# -- a resubmission ------------------------------------------------------------------------------


def test_a_resubmission_adds_files_to_the_revisable_field(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    request = sent_back(receipts, people)
    first = Attachment.objects.get(context="start")
    response = api(people["alice"]).post(
        f"/api/v1/approvals/{request.pk}/resubmit/",
        {"input": '{"amount": 75}', "files": [upload("clear scan.png", PNG)]},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    new = Attachment.objects.get(context="revision:2")
    instance = WorkflowInstance.objects.get(pk=receipts.instance_id)
    assert instance.input["amount"] == 75
    assert [r["id"] for r in instance.input["receipts"]] == [str(first.pk), str(new.pk)]
    revised = Event.objects.get(instance=instance, type="instance_input_revised")
    assert set(revised.data["changes"]) == {"amount", "receipts"}
    assert response.json()["round"] == 2


def test_a_resubmission_may_take_a_file_off_the_field_and_keeps_it_on_the_instance(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    request = sent_back(receipts, people)
    first = Attachment.objects.get(context="start")
    new = services.approval_resubmit(
        request_id=request.pk,
        user=people["alice"],
        changes={"receipts": []},
        files=[upload("better.pdf", PDF)],
    )
    instance = WorkflowInstance.objects.get(pk=receipts.instance_id)
    assert [r["name"] for r in instance.input["receipts"]] == ["better.pdf"]
    assert Attachment.objects.filter(pk=first.pk).exists()
    assert new.round == 2


@pytest.mark.parametrize(
    "receipts_value",
    [
        ["00000000-0000-0000-0000-000000000000"],  # no such file
        ["not-an-id"],
        "one file",
        [{"id": "3", "name": "forged.pdf"}],
    ],
)
def test_a_resubmission_naming_files_that_are_not_the_instances_changes_nothing(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path, receipts_value: Any
) -> None:
    request = sent_back(receipts, people)
    before = state(files_dir)
    instance_before = WorkflowInstance.objects.get(pk=receipts.instance_id).input
    with pytest.raises(InvalidInput) as refused:
        services.approval_resubmit(
            request_id=request.pk,
            user=people["alice"],
            changes={"receipts": receipts_value},
            files=[upload("new.pdf", PDF)],
        )
    assert "receipts" in refused.value.message
    assert state(files_dir) == before
    assert WorkflowInstance.objects.get(pk=receipts.instance_id).input == instance_before
    assert ApprovalRequest.objects.get(pk=request.pk).state == "changes_requested"


def test_another_instances_file_cannot_be_listed(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    other, _ = engine.instance_start(
        workflow="t_receipts",
        input={"amount": 5},
        files=[upload("other.pdf", PDF)],
        started_by=people["dave"],
    )
    foreign = Attachment.objects.get(instance=other)
    request = sent_back(receipts, people)
    response = api(people["alice"]).post(
        f"/api/v1/approvals/{request.pk}/resubmit/",
        {"input": {"receipts": [str(foreign.pk)]}},
        format="json",
    )
    assert response.status_code == 400
    assert "no such file on this instance" in response.json()["detail"]


def test_files_on_a_resubmission_of_a_step_that_takes_none_are_refused(
    people: dict[str, Any], files_dir: Path
) -> None:
    request = start_revisable(people)
    services.approval_request_changes(request_id=request.pk, user=people["bob"], comment="why?")
    before = state(files_dir)
    response = api(people["alice"]).post(
        f"/api/v1/approvals/{request.pk}/resubmit/",
        {"files": [upload("a.pdf", PDF)]},
        format="multipart",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "not_revisable"
    assert state(files_dir) == before


def test_the_revise_page_keeps_unticked_files_off_and_adds_new_ones(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    request = sent_back(receipts, people)
    client = web(people["alice"])
    page = client.get(f"/inbox/{request.pk}/revise/").content.decode()
    first = Attachment.objects.get(context="start")
    assert 'enctype="multipart/form-data"' in page
    assert f'value="{first.pk}"' in page and "checked" in page and 'name="files"' in page
    response = client.post(
        f"/inbox/{request.pk}/revise/",
        {"amount": "70", "files": [upload("new receipt.jpg", JPEG)]},  # the old one unticked
    )
    assert response.status_code == 302
    instance = WorkflowInstance.objects.get(pk=receipts.instance_id)
    assert [r["name"] for r in instance.input["receipts"]] == ["new receipt.jpg"]
    assert instance.input["amount"] == 70


def test_the_revise_page_refuses_a_bad_file_and_changes_nothing(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    request = sent_back(receipts, people)
    first = Attachment.objects.get(context="start")
    before = state(files_dir)
    response = web(people["alice"]).post(
        f"/inbox/{request.pk}/revise/",
        {"amount": "70", "receipts": [str(first.pk)], "files": [upload("virus.jpg", EXE)]},
    )
    assert response.status_code == 400
    assert "virus.jpg" in response.content.decode()
    assert state(files_dir) == before
    assert WorkflowInstance.objects.get(pk=receipts.instance_id).input["amount"] == 80


def test_the_comment_list_queries_stay_constant_as_comments_carry_files(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    client = api(people["bob"])
    url = f"/api/v1/approvals/{receipts.pk}/comments/"
    comments.comment_post(request_id=receipts.pk, user=people["alice"], body="first")
    client.get(url)
    with CaptureQueriesContext(connection) as before:
        assert len(client.get(url).json()["results"]) == 1
    for n in range(5):
        comments.comment_post(
            request_id=receipts.pk,
            user=people["alice"],
            body=f"more {n}",
            files=[upload(f"m{n}.pdf", PDF)],
        )
    with CaptureQueriesContext(connection) as after:
        listed = client.get(url).json()["results"]
    assert [len(c["files"]) for c in listed] == [0, 1, 1, 1, 1, 1]
    assert len(after) == len(before)
