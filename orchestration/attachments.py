"""Attachments: files that belong to an instance.

A file is uploaded with a start (``context="start"``), to one of the instance's requests
(``request:<id>``), with a comment (``comment:<id>``) or a resubmission (``revision:<round>``):
the context is a string the attaching app chooses, so any app attaches files to its own things
through :func:`attachments_save` without a foreign key into its tables.

What every upload goes through, before anything is written (:func:`check_files`):

- the type is read from the bytes (``filetype``: magic numbers; plain text is valid UTF-8
  without control characters), never from the name or the client's header, and must be one of
  ``SIGNOFF_FILE_TYPES``; a name whose extension does not fit the type gets the right one
  appended (``scan.pdf`` holding a PNG is kept as ``scan.pdf.png``);
- no empty file, none over ``SIGNOFF_FILE_MAX_BYTES``, at most ``SIGNOFF_FILE_MAX_COUNT`` per
  upload and ``SIGNOFF_FILE_MAX_PER_INSTANCE`` per instance;
- a refusal names the file and the problem (:class:`InvalidInput`) and stores nothing.

The bytes go to the ``attachments`` storage (``STORAGES``: a folder in ``SIGNOFF_DATA_DIR``,
or S3) under a random key, never the uploaded name, and are never served by a static or
media URL: only the download views stream them (:func:`file_response`), to people who may see
the instance (:func:`may_read`: its starter, staff and operators, and whoever an app's
registered reader check admits — approvals: the policy's ``download`` act).

Bytes are written inside the transaction that writes the rows; if that transaction fails the
bytes it wrote are deleted (:func:`guard`). Rows deleted (erasure, retention, the admin) take
their bytes with them after the transaction commits, so a rollback never loses a file that
still has a row.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import hashlib
import logging
import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import filetype
from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.http import FileResponse
from django.utils import timezone

from .actors import actor_of
from .engine.locking import lock_instance
from .errors import InvalidInput, NotAllowed, NotFound
from .file_refs import as_uuid as _uuid
from .file_refs import is_refs, ref, refs_of_instance  # noqa: F401 - part of this module's API
from .journal import Journal
from .models import Attachment, WorkflowInstance

log = logging.getLogger("signoff.attachments")

STORAGE_ALIAS = "attachments"
HEAD_BYTES = 8192  # what filetype reads of a file to tell its type
CHUNK_BYTES = 64 * 1024
MAX_NAME_LENGTH = 200
MAX_CONTEXT_LENGTH = Attachment._meta.get_field("context").max_length

# How types are named in messages, and the extensions a name may keep for them.
TYPE_LABELS = {
    "application/pdf": "PDF",
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WebP",
    "image/tiff": "TIFF",
    "image/heic": "HEIC",
    "text/plain": "plain text",
    "application/zip": "ZIP",
    "application/x-executable": "an executable (ELF)",
    "application/x-msdownload": "a Windows executable",
    "application/octet-stream": "unrecognised binary data",
}
EXTENSIONS = {
    "application/pdf": ("pdf",),
    "image/png": ("png",),
    "image/jpeg": ("jpg", "jpeg", "jpe", "jfif"),
    "image/tiff": ("tif", "tiff"),
    "text/plain": ("txt", "text", "log", "csv", "md", "json"),
}
# Control characters plain text never holds (all but tab, line feed, form feed, carriage return).
NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")

# A JSON schema for the list of files a workflow's ``attachments`` input field holds, for
# ``input_schema`` (add ``"minItems": 1`` to require a file).
REFS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "name", "content_type", "size"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "content_type": {"type": "string"},
            "size": {"type": "integer"},
        },
    },
}


def storage() -> Storage:
    return storages[STORAGE_ALIAS]


# -- checks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedFile:
    """An upload that passed the checks: its safe name, the type read from its bytes, its size
    and SHA-256, and the upload itself (read again when stored)."""

    upload: File
    name: str
    content_type: str
    size: int
    sha256: str


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB".replace(".0 ", " ")
    return f"{size / (1024 * 1024):.1f} MB".replace(".0 ", " ")


def type_label(content_type: str) -> str:
    return TYPE_LABELS.get(content_type, content_type)


def accepted_types() -> list[str]:
    return list(settings.SIGNOFF_FILE_TYPES)


def upload_limits() -> dict[str, Any]:
    """What a file input says about what it takes (``accept``, and the limits in words)."""
    return {
        "accept": ",".join(accepted_types()),
        "accepted": accepted_label(),
        "max_size": human_size(settings.SIGNOFF_FILE_MAX_BYTES),
        "max_count": settings.SIGNOFF_FILE_MAX_COUNT,
    }


def accepted_label() -> str:
    return ", ".join(type_label(t) for t in accepted_types())


def safe_name(raw: Any) -> str:
    """The uploaded name as it may be shown and offered for download: no directories, no
    control or formatting characters, at most ``MAX_NAME_LENGTH`` characters (keeping the
    extension), never empty or hidden."""
    name = unicodedata.normalize("NFC", str(raw or ""))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(
        " " if ch.isspace() else ch
        for ch in name
        if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    name = " ".join(name.split()).strip(". ")
    if not name:
        return "file"
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext) <= 10 else ""
        keep = MAX_NAME_LENGTH - (len(ext) + 1 if ext else 0)
        name = (stem if ext else name)[:keep].rstrip() + (f".{ext}" if ext else "")
    return name


def _fitting_name(name: str, content_type: str, extension: str | None) -> str:
    allowed = EXTENSIONS.get(content_type) or ((extension,) if extension else ())
    if not allowed:
        return name
    _, dot, ext = name.rpartition(".")
    if dot and ext.lower() in allowed:
        return name
    return safe_name(f"{name}.{allowed[0]}")


def _chunks(upload: File) -> Iterator[bytes]:
    if hasattr(upload, "seek"):
        upload.seek(0)
    while chunk := upload.read(CHUNK_BYTES):
        yield chunk
    if hasattr(upload, "seek"):
        upload.seek(0)


def _inspect(upload: File) -> tuple[int, str, bytes, bool]:
    """One pass over the bytes: size, SHA-256, the head, and whether it is plain text."""
    digest = hashlib.sha256()
    head = b""
    size = 0
    decoder = codecs.getincrementaldecoder("utf-8")()
    text = True
    for chunk in _chunks(upload):
        size += len(chunk)
        digest.update(chunk)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        if text:
            try:
                decoded = decoder.decode(chunk)
            except UnicodeDecodeError:
                text = False
            else:
                text = NOT_TEXT.search(decoded) is None
    if text:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            text = False
    return size, digest.hexdigest(), head, text


def detect_type(head: bytes, *, text: bool) -> tuple[str, str | None]:
    """The MIME type of a file from its first bytes (and whether all of it is plain text),
    with the usual extension for it."""
    kind = filetype.guess(head)
    if kind is not None:
        return kind.mime, kind.extension
    if text:
        return "text/plain", "txt"
    return "application/octet-stream", None


def check_files(files: Sequence[Any], *, already: int = 0) -> list[CheckedFile]:
    """Check uploads (Django ``File`` objects: ``request.FILES``, or :func:`content_file` for
    bytes); returns them checked, or raises :class:`InvalidInput` naming every refused file
    and why. ``already``: files the instance holds (for the per-instance limit). Reads only."""
    files = list(files)
    per_upload = settings.SIGNOFF_FILE_MAX_COUNT
    per_instance = settings.SIGNOFF_FILE_MAX_PER_INSTANCE
    if len(files) > per_upload:
        raise InvalidInput(
            f"{len(files)} files sent; at most {per_upload} per upload",
            code="too_many_files",
            errors={"files": [f"at most {per_upload} files per upload"]},
        )
    if already + len(files) > per_instance:
        left = max(per_instance - already, 0)
        raise InvalidInput(
            f"the instance holds {already} files and takes at most {per_instance}: "
            f"{left} more may be added",
            code="too_many_files",
            errors={"files": [f"at most {per_instance} files per instance"]},
        )
    limit = settings.SIGNOFF_FILE_MAX_BYTES
    allowed = accepted_types()
    checked: list[CheckedFile] = []
    problems: list[tuple[str, str, str]] = []  # (name, message, code)
    for upload in files:
        if not isinstance(upload, File):
            raise TypeError(f"expected a django File, got {type(upload).__name__}")
        name = safe_name(getattr(upload, "name", ""))
        declared = getattr(upload, "size", None)
        if isinstance(declared, int) and declared > limit:
            problems.append(
                (
                    name,
                    f"{name}: {human_size(declared)}, over the limit of {human_size(limit)} "
                    "per file",
                    "file_too_large",
                )
            )
            continue
        size, sha256, head, text = _inspect(upload)
        if size == 0:
            problems.append((name, f"{name}: the file is empty", "empty_file"))
            continue
        if size > limit:
            problems.append(
                (
                    name,
                    f"{name}: {human_size(size)}, over the limit of {human_size(limit)} per file",
                    "file_too_large",
                )
            )
            continue
        content_type, extension = detect_type(head, text=text)
        if content_type not in allowed:
            problems.append(
                (
                    name,
                    f"{name}: its content is {type_label(content_type)} ({content_type}), "
                    f"which is not accepted; accepted: {accepted_label()}",
                    "file_type_refused",
                )
            )
            continue
        checked.append(
            CheckedFile(
                upload=upload,
                name=_fitting_name(name, content_type, extension),
                content_type=content_type,
                size=size,
                sha256=sha256,
            )
        )
    if problems:
        codes = {code for _, _, code in problems}
        raise InvalidInput(
            "; ".join(message for _, message, _ in problems),
            code=codes.pop() if len(codes) == 1 else "files_refused",
            errors={"files": [message for _, message, _ in problems]},
        )
    return checked


def content_file(data: bytes, name: str) -> File:
    """Bytes as an upload, for callers without a request (commands, tests)."""
    return ContentFile(data, name=name)


# -- storing -------------------------------------------------------------------------------------

# The keys written by the innermost guard() block (see guard).
_written: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "signoff_attachments_written", default=None
)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Wrap the transaction that saves files: if the block raises, the bytes it wrote are
    deleted (the rows went with the rollback). :func:`attachments_save` and the engine's start
    guard themselves; a caller passing its own journal wraps its transaction in this."""
    written: list[str] = []
    token = _written.set(written)
    try:
        yield
    except BaseException:
        _delete_bytes(written)
        raise
    finally:
        _written.reset(token)


def _new_key() -> str:
    token = secrets.token_urlsafe(32)
    return f"{token[:2]}/{token}"


def _write(checked: CheckedFile) -> str:
    key = storage().save(_new_key(), checked.upload)
    written = _written.get()
    if written is not None:
        written.append(key)
    return key


def _delete_bytes(keys: Iterable[str]) -> None:
    store = storage()
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # noqa: BLE001 - one failing delete must not keep the others
            log.exception("could not delete the bytes of attachment %s", key)


@receiver(post_delete, sender=Attachment)
def _delete_bytes_after_commit(
    sender: Any, instance: Attachment, using: str, **kwargs: Any
) -> None:
    # After the commit: a rolled-back delete leaves the row, and so must leave its bytes.
    key = instance.storage_key
    transaction.on_commit(lambda: _delete_bytes([key]), using=using)


@dataclass
class PendingFiles:
    """Checked files with their ids, recorded on a journal and written with it."""

    checked: list[CheckedFile]
    context: str
    user: Any
    rows: list[Attachment] = field(default_factory=list)

    def __post_init__(self) -> None:
        user = self.user if getattr(self.user, "pk", None) else None
        self.rows = [
            Attachment(
                id=uuid.uuid4(),
                position=position,
                context=self.context,
                name=c.name,
                content_type=c.content_type,
                size=c.size,
                sha256=c.sha256,
                uploaded_by=user,
            )
            for position, c in enumerate(self.checked)
        ]

    @property
    def refs(self) -> list[dict[str, Any]]:
        return [ref(row) for row in self.rows]

    @property
    def digests(self) -> list[list[Any]]:
        """What identifies the upload in a request fingerprint (not the random ids)."""
        return [[c.name, c.sha256] for c in self.checked]

    def record(self, instance: WorkflowInstance, journal: Journal) -> None:
        """Record ``attachments_added`` and, once the journal wrote its rows, write the bytes
        and the attachment rows in the same transaction."""
        if not self.rows:
            return
        journal.record(
            "attachments_added",
            data={"context": self.context, "files": self.refs},
        )

        def write() -> None:
            for row, checked in zip(self.rows, self.checked, strict=True):
                row.instance = instance
                row.uploaded_at = journal.now
                row.storage_key = _write(checked)
            Attachment.objects.bulk_create(self.rows)

        journal.after_write(write)


def _valid_context(context: Any) -> str:
    if (
        not isinstance(context, str)
        or not context
        or len(context) > MAX_CONTEXT_LENGTH
        or not context.isprintable()
    ):
        raise ValueError(f"context must be 1 to {MAX_CONTEXT_LENGTH} printable characters")
    return context


def attachments_save(
    *,
    instance: WorkflowInstance | Any,
    files: Sequence[Any],
    user: Any,
    context: str,
    journal: Journal | None = None,
) -> list[Attachment]:
    """Check ``files`` and attach them to ``instance`` under ``context`` (``request:12``,
    ``comment:5``, ...): one ``attachments_added`` event, the bytes in the attachments storage
    and one row per file. Raises :class:`InvalidInput` (naming each refused file) and
    :class:`NotFound`, writing nothing.

    Without ``journal`` it opens its own transaction and locks the instance. With one (the
    caller holds the instance locked, e.g. through ``engine.lock_instance``), it records on it
    and the rows and bytes are written when the caller flushes; the caller wraps its
    transaction in :func:`guard` so a failure deletes the bytes. Returns the attachments."""
    context = _valid_context(context)
    if journal is not None:
        return _save(journal.instance, files, user, context, journal)
    pk = getattr(instance, "pk", instance)
    actor = actor_of(user)
    with guard(), transaction.atomic():
        locked = lock_instance(instance_id=pk, actor=actor)
        if locked is None:
            raise NotFound("instance not found")
        saved = _save(locked.instance, files, user, context, locked.journal)
        locked.journal.flush()
        return saved


def _save(
    instance: WorkflowInstance, files: Sequence[Any], user: Any, context: str, journal: Journal
) -> list[Attachment]:
    if not files:
        raise InvalidInput("no file was sent", code="no_files", errors={"files": ["required"]})
    already = Attachment.objects.filter(instance_id=instance.pk).count()
    pending = PendingFiles(check_files(files, already=already), context, user)
    pending.record(instance, journal)
    return pending.rows


# -- the start of an instance --------------------------------------------------------------------


def start_files(
    definition: Any, input: dict[str, Any], files: Sequence[Any], user: Any = None
) -> PendingFiles | None:
    """The files of a start, checked, or None for a workflow without ``attachments``. Raises
    :class:`InvalidInput` for files the workflow does not take, an input that fills the
    files' field itself, and refused files. Reads only."""
    name = getattr(definition, "attachments", None)
    if name is None:
        if files:
            raise InvalidInput(
                f"workflow {definition.name!r} takes no files",
                code="files_not_accepted",
                errors={"files": ["this workflow takes no files"]},
            )
        return None
    if isinstance(input, dict) and name in input:
        raise InvalidInput(
            f"input.{name} lists the uploaded files and is filled from them: send the files "
            "(multipart, field files), not the field",
            code="invalid_input",
            errors={"input": [f"{name}: filled from the uploaded files"]},
        )
    return PendingFiles(check_files(files) if files else [], "start", user)


# -- who may read them ---------------------------------------------------------------------------

# A reader check answers whether ``user`` may read the files of ``instance`` (apps that know
# more people of an instance: approvals admits its requests' assignees, delegates, deciders
# and requesters through its policy). One or two queries each: they run on every download.
ReaderCheck = Callable[[Any, WorkflowInstance], bool]
_reader_checks: dict[str, ReaderCheck] = {}


def register_reader_check(name: str, check: ReaderCheck) -> ReaderCheck:
    """Let ``check(user, instance)`` admit more readers of an instance's files. Registering
    one name twice keeps the last."""
    _reader_checks[name] = check
    return check


def may_read(user: Any, instance: WorkflowInstance) -> bool:
    """Whether ``user`` may read the files of ``instance``: its starter, staff and holders of
    ``orchestration.operate_instance`` (who see every instance), and whoever a registered
    reader check admits. Active, logged-in users only."""
    from .selectors import can_see_all_instances

    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if instance.started_by_id is not None and instance.started_by_id == user.pk:
        return True
    if can_see_all_instances(user):
        return True
    return any(check(user, instance) for check in _reader_checks.values())


def attachment_for_reader(*, user: Any, attachment_id: Any) -> Attachment:
    """The file if ``user`` may read it. :class:`NotFound` for no such file (or not a UUID);
    :class:`NotAllowed` (403) for a file the user may not read. File ids are random UUIDs
    that only reach people through pages and mails of the instance, so telling "not yours"
    from "none" gives nothing away that a guess could find."""
    pk = _uuid(attachment_id)
    attachment = Attachment.objects.select_related("instance").filter(pk=pk).first() if pk else None
    if attachment is None:
        raise NotFound("file not found")
    if not may_read(user, attachment.instance):
        raise NotAllowed(
            "you may not read this file: it is for the people of its workflow instance",
            code="not_allowed",
        )
    return attachment


def attachments_of(*, instance_id: Any, context: str | None = None) -> list[Attachment]:
    """The files of one instance (of one context), oldest first, with their uploaders: one
    query whatever their number."""
    qs = Attachment.objects.filter(instance_id=instance_id).select_related("uploaded_by")
    if context is not None:
        qs = qs.filter(context=context)
    return list(qs.order_by("uploaded_at", "position"))


def attachments_by_context(
    *, instance_id: Any, contexts: Sequence[str]
) -> dict[str, list[Attachment]]:
    """The files of one instance under each of ``contexts`` (every one a key, maybe with an
    empty list), oldest first, with their uploaders: one query."""
    found: dict[str, list[Attachment]] = {context: [] for context in contexts}
    if found:
        rows = Attachment.objects.filter(instance_id=instance_id, context__in=list(found))
        for row in rows.select_related("uploaded_by").order_by("uploaded_at", "position"):
            found[row.context].append(row)
    return found


def instance_files_for_reader(*, user: Any, instance_id: Any) -> tuple[WorkflowInstance, list]:
    """The instance and its files if ``user`` may read them; :class:`NotFound` otherwise."""
    pk = _uuid(instance_id)
    instance = WorkflowInstance.objects.filter(pk=pk).first() if pk else None
    if instance is None or not may_read(user, instance):
        raise NotFound("instance not found")
    return instance, attachments_of(instance_id=instance.pk)


# -- serving -------------------------------------------------------------------------------------


def file_response(attachment: Attachment) -> FileResponse:
    """Stream the file as a download: ``Content-Disposition: attachment`` with its name, the
    type read from its bytes, ``nosniff``, a sandboxing CSP and no caching by shared caches."""
    try:
        handle = storage().open(attachment.storage_key, "rb")
    except FileNotFoundError:
        log.error("the bytes of attachment %s are missing", attachment.pk)
        raise NotFound("the file's content is missing", code="file_missing") from None
    content_type = attachment.content_type
    if content_type == "text/plain":
        content_type += "; charset=utf-8"
    response = FileResponse(
        handle, as_attachment=True, filename=attachment.name, content_type=content_type
    )
    response["Content-Length"] = str(attachment.size)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, no-store"
    return response


# -- erasure -------------------------------------------------------------------------------------


def names_of(instance_id: Any) -> list[str]:
    """The names of an instance's files (erasure masks their copies: history, titles)."""
    return list(Attachment.objects.filter(instance_id=instance_id).values_list("name", flat=True))


def erase_files(instance_id: Any) -> int:
    """Delete the files of an instance (rows now, bytes after the commit); how many."""
    _, deleted = Attachment.objects.filter(instance_id=instance_id).delete()
    return deleted.get("orchestration.Attachment", 0)


def storage_keys() -> Iterator[str]:
    """Every key in the attachments storage (two levels: ``xx/<token>``)."""
    store = storage()
    try:
        folders, _ = store.listdir("")
    except FileNotFoundError:
        return
    for folder in folders:
        _, names = store.listdir(folder)
        for name in names:
            yield f"{folder}/{name}"


def sweep_orphans(*, older_than_seconds: int = 24 * 3600, delete: bool = False) -> list[str]:
    """Keys in the storage with no attachment row, older than ``older_than_seconds`` (left by
    a process killed between writing the bytes and committing the rows); deleted with
    ``delete``. Lists the whole storage: run it now and then, not on every sweep."""
    store = storage()
    cutoff = timezone.now().timestamp() - older_than_seconds
    orphans = []
    batch: list[str] = []

    def flush() -> None:
        known = set(
            Attachment.objects.filter(storage_key__in=batch).values_list("storage_key", flat=True)
        )
        for key in batch:
            if key in known:
                continue
            try:
                modified = store.get_modified_time(key).timestamp()
            except (FileNotFoundError, NotImplementedError, OSError):
                continue
            if modified < cutoff:
                orphans.append(key)
        batch.clear()

    for key in storage_keys():
        batch.append(key)
        if len(batch) >= 500:
            flush()
    if batch:
        flush()
    if delete:
        _delete_bytes(orphans)
    return orphans


__all__ = [
    "REFS_SCHEMA",
    "attachment_for_reader",
    "attachments_by_context",
    "attachments_of",
    "attachments_save",
    "check_files",
    "content_file",
    "file_response",
    "guard",
    "instance_files_for_reader",
    "may_read",
    "refs_of_instance",
    "register_reader_check",
    "sweep_orphans",
    "upload_limits",
]
