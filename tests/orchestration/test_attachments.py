"""Attachments: the checks (type from the bytes, size, count), starting with files (multipart,
idempotent repeats), serving (headers, who), and deletion with erasure and retention."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orchestration import attachments, engine, retention
from orchestration.definitions import registry
from orchestration.errors import InvalidInput
from orchestration.models import Attachment, Event, WorkflowInstance
from tests.attachments_fixtures import (
    BINARY,
    ELF,
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
def alice(django_user_model: Any) -> Any:
    Group.objects.get_or_create(name="managers")
    Group.objects.get_or_create(name="finance")
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def api(alice: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return client


def start_form(files: list[Any], **fields: Any) -> dict[str, Any]:
    form: dict[str, Any] = {"workflow": "t_receipts", "input": json.dumps({"amount": 42})}
    form.update(fields)
    if files:
        form["files"] = files
    return form


def post_start(client: APIClient, form: dict[str, Any], **headers: Any) -> Any:
    return client.post("/api/v1/instances/", form, format="multipart", **headers)


def nothing_stored(location: Path, instances_before: int = 0) -> bool:
    return (
        WorkflowInstance.objects.count() == instances_before
        and not Attachment.objects.exists()
        and stored_keys(location) == []
    )


# -- the checks ----------------------------------------------------------------------------------


def test_the_type_comes_from_the_bytes_a_png_named_pdf_is_a_png(files_dir: Path) -> None:
    [checked] = attachments.check_files([upload("scan.pdf", PNG, "application/pdf")])
    assert checked.content_type == "image/png"
    # Its name gets the extension of what it is: opened by the right program.
    assert checked.name == "scan.pdf.png"
    assert checked.size == len(PNG)


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("receipt.pdf", PDF, "application/pdf"),
        ("photo.JPG", JPEG, "image/jpeg"),
        ("notes.txt", TEXT, "text/plain"),
        ("notes", TEXT, "text/plain"),
    ],
)
def test_accepted_types(files_dir: Path, name: str, data: bytes, kind: str) -> None:
    [checked] = attachments.check_files([upload(name, data, "image/gif")])
    assert checked.content_type == kind
    assert checked.name.startswith(name)


@pytest.mark.parametrize(
    ("name", "data", "said"),
    [
        ("receipt.png", ELF, "an executable (ELF) (application/x-executable)"),
        ("receipt.pdf", EXE, "a Windows executable (application/x-msdownload)"),
        ("receipt.txt", BINARY, "unrecognised binary data (application/octet-stream)"),
    ],
)
def test_an_executable_or_binary_is_refused_whatever_its_name(
    files_dir: Path, name: str, data: bytes, said: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        attachments.check_files([upload(name, data, "image/png")])
    assert refused.value.code == "file_type_refused"
    assert refused.value.message.startswith(f"{name}: its content is {said}")
    assert "accepted: PDF, PNG, JPEG, plain text" in refused.value.message


def test_too_big_empty_and_too_many_are_refused_by_name(files_dir: Path, settings: Any) -> None:
    settings.SIGNOFF_FILE_MAX_BYTES = 100
    with pytest.raises(InvalidInput) as big:
        attachments.check_files([upload("big.pdf", PDF + b"x" * 200)])
    assert big.value.code == "file_too_large"
    size = len(PDF) + 200
    assert big.value.message == f"big.pdf: {size} bytes, over the limit of 100 bytes per file"
    with pytest.raises(InvalidInput) as empty:
        attachments.check_files([upload("empty.pdf", b"")])
    assert (empty.value.code, empty.value.message) == ("empty_file", "empty.pdf: the file is empty")
    settings.SIGNOFF_FILE_MAX_COUNT = 2
    with pytest.raises(InvalidInput) as many:
        attachments.check_files([upload(f"{n}.pdf", PDF) for n in range(3)])
    assert many.value.code == "too_many_files"
    assert many.value.message == "3 files sent; at most 2 per upload"


def test_every_refused_file_is_named(files_dir: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        attachments.check_files([upload("ok.pdf", PDF), upload("a.exe", EXE), upload("b.txt", b"")])
    assert refused.value.code == "files_refused"
    assert [m.split(":")[0] for m in refused.value.errors["files"]] == ["a.exe", "b.txt"]


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\bob\\receipt.pdf", "receipt.pdf"),
        ("re\x00ce\u202eipt\n.pdf", "receipt .pdf"),
        ("two\tspaced  words.pdf", "two spaced words.pdf"),
        ("...", "file"),
        (".hidden.pdf", "hidden.pdf"),
        ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
    ],
)
def test_names_are_made_safe(raw: str, safe: str) -> None:
    assert attachments.safe_name(raw) == safe


# -- starting with files -------------------------------------------------------------------------


def test_a_multipart_start_stores_the_files_and_lists_them_in_the_input(
    files_dir: Path, api: APIClient, alice: Any
) -> None:
    response = post_start(
        api,
        start_form([upload("taxi.pdf", PDF), upload("scan.pdf", PNG)]),
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    refs = body["input"]["receipts"]
    assert [(r["name"], r["content_type"], r["size"]) for r in refs] == [
        ("taxi.pdf", "application/pdf", len(PDF)),
        ("scan.pdf.png", "image/png", len(PNG)),
    ]
    assert body["links"]["files"] == f"/api/v1/instances/{body['id']}/files/"
    rows = list(Attachment.objects.order_by("name"))
    assert {str(r.pk) for r in rows} == {r["id"] for r in refs}
    assert {r.context for r in rows} == {"start"} and {r.uploaded_by for r in rows} == {alice}
    # Stored under random keys, never the uploaded name.
    keys = stored_keys(files_dir)
    assert sorted(r.storage_key for r in rows) == keys
    assert not any("taxi" in key or "scan" in key for key in keys)
    assert (files_dir / rows[1].storage_key).read_bytes() == PDF
    event = Event.objects.get(instance_id=body["id"], type="attachments_added")
    assert event.seq == 2 and event.actor == "user:alice"
    assert event.data == {"context": "start", "files": refs}
    # The approval shows them (show= names the field).
    listed = api.get(f"/api/v1/instances/{body['id']}/files/")
    assert listed.status_code == 200
    assert [(f["name"], f["context"], f["uploaded_by"]) for f in listed.json()] == [
        ("taxi.pdf", "start", "alice"),
        ("scan.pdf.png", "start", "alice"),
    ]
    assert listed.json()[0]["links"]["download"] == f"/api/v1/files/{refs[0]['id']}/"


def test_the_input_schema_may_require_files(files_dir: Path, api: APIClient) -> None:
    response = post_start(api, start_form([]))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_input"
    assert "receipts" in response.json()["detail"]
    json_start = api.post(
        "/api/v1/instances/", {"workflow": "t_receipts", "input": {"amount": 1}}, format="json"
    )
    assert json_start.status_code == 400
    assert nothing_stored(files_dir)


def test_the_files_field_cannot_be_filled_by_hand(files_dir: Path, api: APIClient) -> None:
    forged = {"amount": 1, "receipts": [{"id": "x", "name": "a", "content_type": "a", "size": 1}]}
    response = api.post(
        "/api/v1/instances/", {"workflow": "t_receipts", "input": forged}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("input.receipts lists the uploaded files")
    assert nothing_stored(files_dir)


def test_a_workflow_without_an_attachments_field_takes_no_files(
    files_dir: Path, api: APIClient
) -> None:
    response = post_start(api, {"workflow": "t_sequence", "files": [upload("a.pdf", PDF)]})
    assert response.status_code == 400
    assert response.json() == {
        "detail": "workflow 't_sequence' takes no files",
        "code": "files_not_accepted",
        "fields": {"files": ["this workflow takes no files"]},
    }
    assert nothing_stored(files_dir)


def test_a_refused_file_stores_nothing_and_names_the_file(files_dir: Path, api: APIClient) -> None:
    response = post_start(api, start_form([upload("taxi.pdf", PDF), upload("cat.png", ELF)]))
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "file_type_refused"
    assert body["detail"].startswith("cat.png: its content is an executable (ELF)")
    assert nothing_stored(files_dir)


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        ({"input": "{not json"}, "input: not valid JSON"),
        ({"input": "[1, 2]"}, "input: must be a JSON object"),
        ({"version": "one"}, "version: A valid integer is required."),
        ({"inputs": "{}"}, "inputs: Unknown field."),
        ({"files": "not a file"}, "files: must be a file part"),
        ({"workflow": ["t_receipts", "t_notes"]}, "workflow: sent more than once"),
    ],
)
def test_bad_multipart_fields_are_named(
    files_dir: Path, api: APIClient, form: dict[str, Any], problem: str
) -> None:
    base = start_form([upload("taxi.pdf", PDF)])
    if form.get("files") == "not a file":
        base.pop("files")
    response = post_start(api, {**base, **form})
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(f"Invalid input: {problem}"), response.json()
    assert nothing_stored(files_dir)


def test_a_broken_multipart_body_is_a_400(files_dir: Path, api: APIClient) -> None:
    no_boundary = api.post(
        "/api/v1/instances/", data=b"--x\r\n", content_type="multipart/form-data"
    )
    assert no_boundary.status_code == 400
    assert no_boundary.json()["code"] == "parse_error"
    truncated = api.post(
        "/api/v1/instances/",
        data=b'--b\r\nContent-Disposition: form-data; name="workflow"\r\n\r\nt_receipts',
        content_type="multipart/form-data; boundary=b",
    )
    assert truncated.status_code == 400
    assert nothing_stored(files_dir)


def test_an_idempotent_repeat_stores_the_files_once(files_dir: Path, api: APIClient) -> None:
    def send(data: bytes = PDF) -> Any:
        return post_start(
            api, start_form([upload("taxi.pdf", data)]), HTTP_IDEMPOTENCY_KEY="expense-7"
        )

    first = send()
    assert first.status_code == 201
    keys = stored_keys(files_dir)
    again = send()
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["input"]["receipts"] == first.json()["input"]["receipts"]
    assert Attachment.objects.count() == 1 and stored_keys(files_dir) == keys
    other = send(PDF + b"%changed\n")
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"
    assert Attachment.objects.count() == 1 and stored_keys(files_dir) == keys


def test_a_start_that_fails_after_writing_the_bytes_leaves_none(
    files_dir: Path, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(Attachment.objects, "bulk_create", broken)
    with pytest.raises(RuntimeError):
        engine.instance_start(
            workflow="t_notes",
            files=[upload("a.pdf", PDF), upload("b.txt", TEXT)],
            started_by=alice,
        )
    assert nothing_stored(files_dir)


def test_multipart_uploads_may_exceed_the_json_limit_only_where_files_are_taken(
    files_dir: Path, api: APIClient, settings: Any
) -> None:
    settings.SIGNOFF_MAX_REQUEST_BYTES = 2000
    settings.SIGNOFF_MAX_UPLOAD_BYTES = 20_000
    big_pdf = PDF + b"%" + b"x" * 5000 + b"\n"
    ok = post_start(api, start_form([upload("big.pdf", big_pdf)]))
    assert ok.status_code == 201, ok.content
    too_big = post_start(api, start_form([upload("huge.pdf", PDF + b"x" * 30_000)]))
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "request_too_large"
    # JSON keeps its limit, and so does multipart to a view that takes no files.
    json_body = api.post(
        "/api/v1/instances/",
        {"workflow": "t_notes", "input": {"pad": "x" * 3000}},
        format="json",
    )
    assert json_body.status_code == 413
    instance = WorkflowInstance.objects.get()
    elsewhere = api.post(
        f"/api/v1/instances/{instance.pk}/cancel/",
        {"reason": "x", "files": [upload("big.pdf", big_pdf)]},
        format="multipart",
    )
    assert elsewhere.status_code == 413


# -- serving -------------------------------------------------------------------------------------


def test_a_download_is_an_attachment_with_nosniff(
    files_dir: Path, api: APIClient, alice: Any
) -> None:
    started = post_start(api, start_form([upload("scan.pdf", PNG), upload("n.txt", TEXT)]))
    png, text = started.json()["input"]["receipts"]
    response = api.get(f"/api/v1/files/{png['id']}/", HTTP_ACCEPT="application/pdf")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PNG
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"] == 'attachment; filename="scan.pdf.png"'
    assert response["Content-Length"] == str(len(PNG))
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Cache-Control"] == "private, no-store"
    page = Client()
    page.force_login(alice)
    html = page.get(f"/files/{text['id']}/")
    assert html.status_code == 200
    assert html["Content-Type"] == "text/plain; charset=utf-8"
    assert html["Content-Disposition"] == 'attachment; filename="n.txt"'
    assert b"".join(html.streaming_content) == TEXT
    # The status page lists them, with their download links.
    status = page.get(f"/instances/{started.json()['id']}/")
    assert f"/files/{png['id']}/" in status.content.decode()
    assert "scan.pdf.png" in status.content.decode()


def test_no_file_is_served_to_someone_else_403_or_by_a_made_up_id_404(
    files_dir: Path, api: APIClient, django_user_model: Any
) -> None:
    started = post_start(api, start_form([upload("taxi.pdf", PDF)]))
    file_id = started.json()["input"]["receipts"][0]["id"]
    eve = APIClient()
    eve.force_authenticate(django_user_model.objects.create_user("eve"))
    refused = eve.get(f"/api/v1/files/{file_id}/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "not_allowed"
    assert b"%PDF" not in refused.content
    web = Client()
    web.force_login(django_user_model.objects.get(username="eve"))
    assert web.get(f"/files/{file_id}/").status_code == 403
    for path in (
        "/api/v1/files/00000000-0000-0000-0000-000000000000/",
        "/api/v1/files/not-a-uuid/",
        f"/api/v1/instances/{started.json()['id']}/files/",
    ):
        response = eve.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"
    assert APIClient().get(f"/api/v1/files/{file_id}/").status_code == 401
    assert Client().get(f"/files/{file_id}/").status_code == 302  # to the login page


def test_missing_bytes_are_a_404_not_a_500(files_dir: Path, api: APIClient) -> None:
    started = post_start(api, start_form([upload("taxi.pdf", PDF)]))
    attachment = Attachment.objects.get()
    (files_dir / attachment.storage_key).unlink()
    response = api.get(f"/api/v1/files/{attachment.pk}/")
    assert response.status_code == 404
    assert response.json()["code"] == "file_missing"
    assert started.status_code == 201


# -- saving to an existing instance --------------------------------------------------------------


def test_attachments_save_counts_the_instance_limit(
    files_dir: Path, alice: Any, settings: Any
) -> None:
    instance, _ = engine.instance_start(workflow="t_notes", started_by=alice)
    settings.SIGNOFF_FILE_MAX_PER_INSTANCE = 2
    saved = attachments.attachments_save(
        instance=instance, files=[upload("a.pdf", PDF)], user=alice, context="comment:1"
    )
    assert [a.context for a in saved] == ["comment:1"]
    with pytest.raises(InvalidInput) as refused:
        attachments.attachments_save(
            instance=instance,
            files=[upload("b.pdf", PDF), upload("c.pdf", PDF)],
            user=alice,
            context="comment:2",
        )
    assert refused.value.message == (
        "the instance holds 1 files and takes at most 2: 1 more may be added"
    )
    assert Attachment.objects.count() == 1 and len(stored_keys(files_dir)) == 1
    assert Event.objects.filter(instance=instance, type="attachments_added").count() == 1


# -- erasure and retention -----------------------------------------------------------------------


def test_erase_deletes_the_files_and_masks_their_names(
    files_dir: Path, alice: Any, django_capture_on_commit_callbacks: Any
) -> None:
    instance, _ = engine.instance_start(
        workflow="t_notes",
        business_key="subject-1",
        files=[upload("alice-medical.pdf", PDF)],
        started_by=alice,
    )
    assert len(stored_keys(files_dir)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        call_command("signoff", "erase", "--business-key", "subject-1", stdout=None)
    assert not Attachment.objects.exists()
    assert stored_keys(files_dir) == []
    instance.refresh_from_db()
    assert "alice-medical" not in json.dumps(instance.input)
    added = Event.objects.get(instance=instance, type="attachments_added")
    assert "alice-medical" not in json.dumps(added.data)
    erased = Event.objects.get(instance=instance, type="instance_erased")
    assert erased.data["files"] == 1


def test_a_rolled_back_delete_keeps_the_bytes(
    files_dir: Path, alice: Any, django_capture_on_commit_callbacks: Any
) -> None:
    engine.instance_start(workflow="t_notes", files=[upload("a.pdf", PDF)], started_by=alice)
    keys = stored_keys(files_dir)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            Attachment.objects.all().delete()
            transaction.set_rollback(True)
    assert callbacks == [] and stored_keys(files_dir) == keys
    assert Attachment.objects.count() == 1


def test_retention_deletes_the_files_with_the_instance(
    files_dir: Path, alice: Any, django_capture_on_commit_callbacks: Any, monkeypatch: Any
) -> None:
    definition = registry.get("t_notes")
    monkeypatch.setattr(definition, "retention", timedelta(days=1))
    monkeypatch.setattr(definition, "delete_after", timedelta(days=1))
    instance, _ = engine.instance_start(
        workflow="t_notes", files=[upload("a.pdf", PDF)], started_by=alice
    )
    WorkflowInstance.objects.filter(pk=instance.pk).update(
        state="succeeded", finished_at=timezone.now() - timedelta(days=5)
    )
    with django_capture_on_commit_callbacks(execute=True):
        counts = retention.sweep_retention()
    assert counts == {"erased": 1, "deleted": 1}
    assert not WorkflowInstance.objects.exists() and not Attachment.objects.exists()
    assert stored_keys(files_dir) == []


def test_deleting_an_instance_deletes_its_bytes_after_the_commit(
    files_dir: Path, alice: Any, django_capture_on_commit_callbacks: Any
) -> None:
    instance, _ = engine.instance_start(
        workflow="t_notes", files=[upload("a.pdf", PDF), upload("b.png", PNG)], started_by=alice
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        WorkflowInstance.objects.filter(pk=instance.pk).delete()
    assert len(stored_keys(files_dir)) == 2  # not before the commit
    for callback in callbacks:
        callback()
    assert stored_keys(files_dir) == []


def test_orphaned_bytes_are_found_and_swept(files_dir: Path, alice: Any) -> None:
    engine.instance_start(workflow="t_notes", files=[upload("a.pdf", PDF)], started_by=alice)
    orphan = attachments.storage().save("ab/orphan", attachments.content_file(PDF, "x"))
    assert attachments.sweep_orphans(older_than_seconds=-60) == [orphan]
    assert attachments.sweep_orphans(older_than_seconds=3600) == []
    attachments.sweep_orphans(older_than_seconds=-60, delete=True)
    assert len(stored_keys(files_dir)) == 1 and Attachment.objects.count() == 1


def test_the_file_orphans_command_lists_and_deletes(files_dir: Path, alice: Any) -> None:
    engine.instance_start(workflow="t_notes", files=[upload("a.pdf", PDF)], started_by=alice)
    orphan = attachments.storage().save("zz/left-behind", attachments.content_file(PDF, "x"))
    out, err = io.StringIO(), io.StringIO()
    call_command("signoff", "file-orphans", "--older-than-hours", "-1", stdout=out, stderr=err)
    assert out.getvalue().split() == [orphan] and "found 1 orphaned file(s)" in err.getvalue()
    call_command(
        "signoff", "file-orphans", "--older-than-hours", "-1", "--delete", stdout=out, stderr=err
    )
    assert orphan not in stored_keys(files_dir) and len(stored_keys(files_dir)) == 1


def test_production_settings_put_files_in_s3_when_a_bucket_is_set(tmp_path: Path) -> None:
    pytest.importorskip("storages")
    from tests.test_security import production_env

    env = {
        **production_env(tmp_path),
        "SIGNOFF_FILES_S3_BUCKET": "acme-signoff",
        "SIGNOFF_FILES_S3_REGION": "eu-central-1",
    }
    probe = (
        "import django; django.setup(); "
        "from django.core.files.storage import storages; s = storages['attachments']; "
        "print(type(s).__name__, s.bucket_name, s.location, s.region_name, s.file_overwrite)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "S3Storage",
        "acme-signoff",
        "signoff-files",
        "eu-central-1",
        "False",
    ]
    # Without a bucket: a folder in SIGNOFF_DATA_DIR (no URL serves it: only the views).
    env.pop("SIGNOFF_FILES_S3_BUCKET")
    probe = (
        "import django; django.setup(); "
        "from django.core.files.storage import storages; s = storages['attachments']; "
        "print(type(s).__name__, s.location)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FileSystemStorage", str(tmp_path / "var" / "files")]


def test_a_list_of_files_in_the_input_shows_as_download_links() -> None:
    from orchestration.templatetags.instance_files import file_links

    refs = [
        {"id": "603f392c-0351-460c-aa9d-7bd6fa2f0b62", "name": "<b>a</b>.pdf", "size": 2048},
        {"id": "703f392c-0351-460c-aa9d-7bd6fa2f0b62", "name": "b.png", "size": 10},
    ]
    html = str(file_links(refs))
    assert html == (
        '<a href="/files/603f392c-0351-460c-aa9d-7bd6fa2f0b62/" download>&lt;b&gt;a&lt;/b&gt;.pdf'
        '</a> <span class="muted small">(2 KB)</span>, '
        '<a href="/files/703f392c-0351-460c-aa9d-7bd6fa2f0b62/" download>b.png</a> '
        '<span class="muted small">(10 bytes)</span>'
    )
    for other in ([], [{"id": "x", "name": "a"}], "a.pdf", [{"name": "a"}], None):
        assert file_links(other) is None
