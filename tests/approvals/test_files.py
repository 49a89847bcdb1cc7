"""Files on the request page: shown with name, size and type, added by the people of the
request, and a page whose query count does not grow with the files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals.files import request_attach
from approvals.models import ApprovalRequest
from orchestration import attachments, engine
from orchestration.errors import NotFound
from orchestration.models import Attachment, Event
from tests.attachments_fixtures import (
    JPEG,
    PDF,
    TEXT,
    files_dir_fixture,  # noqa: F401 - the files_dir fixture
    stored_keys,
    upload,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def receipts(people: dict[str, Any], files_dir: Path) -> ApprovalRequest:
    """alice's expense with one receipt, waiting for the managers (bob, dave)."""
    instance, _ = engine.instance_start(
        workflow="t_receipts",
        input={"amount": 80},
        files=[upload("taxi receipt.pdf", PDF)],
        started_by=people["alice"],
    )
    return ApprovalRequest.objects.get(instance=instance, step_name="manager_approval")


def page(user: Any, approval: ApprovalRequest) -> tuple[Any, int]:
    client = Client()
    client.force_login(user)
    client.get("/inbox/")  # session and first-request work out of the way
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/inbox/{approval.pk}/")
    assert response.status_code == 200
    return response, len(queries)


def test_the_request_page_shows_the_files_with_name_size_and_type(
    people: dict[str, Any], receipts: ApprovalRequest
) -> None:
    response, _ = page(people["bob"], receipts)
    html = response.content.decode()
    receipt = Attachment.objects.get()
    assert f'href="/files/{receipt.pk}/"' in html
    assert "taxi receipt.pdf" in html and "48\xa0bytes" in html and "PDF" in html
    assert "with the start" in html and "alice" in html
    assert 'enctype="multipart/form-data"' in html  # bob may add files


def test_an_assignee_adds_a_file_to_the_request(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    client = Client()
    client.force_login(people["dave"])
    response = client.post(
        f"/inbox/{receipts.pk}/files/",
        {"files": [upload("quote.txt", TEXT), upload("photo.jpg", JPEG)]},
        follow=True,
    )
    assert response.redirect_chain == [(f"/inbox/{receipts.pk}/", 302)]
    assert "Added “quote.txt”, “photo.jpg”." in response.content.decode()
    added = list(Attachment.objects.filter(context=f"request:{receipts.pk}"))
    assert [(a.name, a.content_type, a.uploaded_by) for a in added] == [
        ("quote.txt", "text/plain", people["dave"]),
        ("photo.jpg", "image/jpeg", people["dave"]),
    ]
    event = Event.objects.filter(instance=receipts.instance, type="attachments_added").last()
    assert event.actor == "user:dave" and event.data["context"] == f"request:{receipts.pk}"
    assert len(stored_keys(files_dir)) == 3
    html = response.content.decode()
    assert f"on request #{receipts.pk}" in html and "plain text" in html


def test_an_upload_without_a_file_is_refused(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    client = Client()
    client.force_login(people["bob"])
    response = client.post(f"/inbox/{receipts.pk}/files/", {})
    assert response.status_code == 400
    assert "Your file was not added: no file was sent." in response.content.decode()
    assert Attachment.objects.count() == 1


def test_someone_else_may_not_attach_through_the_service(
    people: dict[str, Any], receipts: ApprovalRequest, files_dir: Path
) -> None:
    # carol is in finance: she sees nothing of the manager request yet.
    with pytest.raises(NotFound):
        request_attach(request_id=receipts.pk, user=people["carol"], files=[upload("a.pdf", PDF)])
    assert Attachment.objects.count() == 1
    # The requester may (she answers a question with a file).
    saved = request_attach(
        request_id=receipts.pk, user=people["alice"], files=[upload("a.pdf", PDF)]
    )
    assert [a.context for a in saved] == [f"request:{receipts.pk}"]


def test_request_page_queries_do_not_grow_with_files(
    people: dict[str, Any], receipts: ApprovalRequest, django_assert_max_num_queries: Any
) -> None:
    _, one_file = page(people["bob"], receipts)
    for n in range(3):
        attachments.attachments_save(
            instance=receipts.instance,
            files=[upload(f"scan-{n}-{i}.pdf", PDF) for i in range(5)],
            user=people["dave"],
            context=f"request:{receipts.pk}",
        )
    assert Attachment.objects.count() == 16
    response, sixteen_files = page(people["bob"], receipts)
    # Each file once in the files card; the start's receipt also in the shown fields.
    links = re.findall(r'href="/files/([0-9a-f-]+)/"', response.content.decode())
    assert len(set(links)) == 16
    assert sixteen_files == one_file
    client = Client()
    client.force_login(people["bob"])
    with django_assert_max_num_queries(one_file):
        client.get(f"/inbox/{receipts.pk}/")


def test_status_page_queries_do_not_grow_with_files(
    people: dict[str, Any], receipts: ApprovalRequest
) -> None:
    client = Client()
    client.force_login(people["alice"])
    url = f"/instances/{receipts.instance_id}/"
    client.get(url)
    with CaptureQueriesContext(connection) as before:
        client.get(url)
    attachments.attachments_save(
        instance=receipts.instance,
        files=[upload(f"more-{i}.pdf", PDF) for i in range(5)],
        user=people["alice"],
        context="start",
    )
    with CaptureQueriesContext(connection) as after:
        response = client.get(url)
    assert response.content.decode().count('href="/files/') == 6
    assert len(after) == len(before)
