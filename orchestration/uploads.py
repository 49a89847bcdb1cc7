"""Uploads: checking files and storing their bytes with the transaction that lists them.

What every upload goes through, before anything is written (:func:`check_files`):

- the type is read from the bytes (``filetype``: magic numbers; plain text is valid UTF-8
  without control characters), never from the name or the client's header, and must be one of
  ``SIGNOFF_FILE_TYPES``; a name whose extension does not fit the type gets the right one
  appended (``scan.pdf`` holding a PNG is kept as ``scan.pdf.png``);
- no empty file, none over ``SIGNOFF_FILE_MAX_BYTES``, at most ``SIGNOFF_FILE_MAX_COUNT`` per
  upload and ``SIGNOFF_FILE_MAX_PER_INSTANCE`` per instance;
- a refusal names the file and the problem (:class:`InvalidInput`) and stores nothing.

The bytes go to the ``attachments`` storage (``STORAGES``: a folder in ``SIGNOFF_DATA_DIR``,
or S3) under a random key, never the uploaded name. They are written inside the transaction
that writes the rows (:class:`PendingFiles`, recorded on a journal); if that transaction fails
the bytes it wrote are deleted (:func:`guard`). Rows deleted (erasure, retention, the admin)
take their bytes with them after the transaction commits, so a rollback never loses a file
that still has a row.

Below the engine (which stores a start's files, :func:`start_files`) and below
:mod:`orchestration.attachments` (files of an instance: saving, reading, downloads, erasure).
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import filetype
from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils.translation import gettext_noop

from .errors import InvalidInput, Message, joined, localize
from .file_refs import ref
from .journal import Journal
from .models import Attachment, WorkflowInstance

log = logging.getLogger("signoff.attachments")

STORAGE_ALIAS = "attachments"
HEAD_BYTES = 8192  # what filetype reads of a file to tell its type
CHUNK_BYTES = 64 * 1024
MAX_NAME_LENGTH = 200

# How types are named in messages, and the extensions a name may keep for them.
TYPE_LABELS = {
    "application/pdf": "PDF",
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WebP",
    "image/tiff": "TIFF",
    "image/heic": "HEIC",
    "text/plain": Message(gettext_noop("plain text")),
    "application/zip": "ZIP",
    "application/x-executable": Message(gettext_noop("an executable (ELF)")),
    "application/x-msdownload": Message(gettext_noop("a Windows executable")),
    "application/octet-stream": Message(gettext_noop("unrecognised binary data")),
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
    """``size`` in words (a :class:`Message`: "12 bytes" is said in the page's language)."""
    if size < 1024:
        return Message(gettext_noop("%(count)s bytes"), count=size)
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB".replace(".0 ", " ")
    return f"{size / (1024 * 1024):.1f} MB".replace(".0 ", " ")


def type_label(content_type: str) -> str:
    """How a type is named (a :class:`Message` where the name is words: "plain text")."""
    return TYPE_LABELS.get(content_type, content_type)


def accepted_types() -> list[str]:
    return list(settings.SIGNOFF_FILE_TYPES)


def upload_limits() -> dict[str, Any]:
    """What a file input says about what it takes (``accept``, and the limits in words, in
    the active language)."""
    return {
        "accept": ",".join(accepted_types()),
        "accepted": localize(accepted_label()),
        "max_size": localize(human_size(settings.SIGNOFF_FILE_MAX_BYTES)),
        "max_count": settings.SIGNOFF_FILE_MAX_COUNT,
    }


def accepted_label() -> str:
    return joined([type_label(t) for t in accepted_types()], ", ")


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
            Message(
                gettext_noop("%(count)s files sent; at most %(max)s per upload"),
                count=len(files),
                max=per_upload,
            ),
            code="too_many_files",
            errors={"files": [f"at most {per_upload} files per upload"]},
        )
    if already + len(files) > per_instance:
        left = max(per_instance - already, 0)
        raise InvalidInput(
            Message(
                gettext_noop(
                    "the instance holds %(count)s files and takes at most %(max)s: %(left)s "
                    "more may be added"
                ),
                count=already,
                max=per_instance,
                left=left,
            ),
            code="too_many_files",
            errors={"files": [f"at most {per_instance} files per instance"]},
        )
    limit = settings.SIGNOFF_FILE_MAX_BYTES
    allowed = accepted_types()
    checked: list[CheckedFile] = []
    problems: list[tuple[str, Message, str]] = []  # (name, message, code)
    for upload in files:
        if not isinstance(upload, File):
            raise TypeError(f"expected a django File, got {type(upload).__name__}")
        name = safe_name(getattr(upload, "name", ""))
        declared = getattr(upload, "size", None)
        if isinstance(declared, int) and declared > limit:
            problems.append(
                (
                    name,
                    _too_large(name, declared, limit),
                    "file_too_large",
                )
            )
            continue
        size, sha256, head, text = _inspect(upload)
        if size == 0:
            problems.append(
                (
                    name,
                    Message(gettext_noop("%(name)s: the file is empty"), name=name),
                    "empty_file",
                )
            )
            continue
        if size > limit:
            problems.append(
                (
                    name,
                    _too_large(name, size, limit),
                    "file_too_large",
                )
            )
            continue
        content_type, extension = detect_type(head, text=text)
        if content_type not in allowed:
            problems.append(
                (
                    name,
                    Message(
                        gettext_noop(
                            "%(name)s: its content is %(type)s (%(content_type)s), which is not "
                            "accepted; accepted: %(accepted)s"
                        ),
                        name=name,
                        type=type_label(content_type),
                        content_type=content_type,
                        accepted=accepted_label(),
                    ),
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
            joined([message for _, message, _ in problems]),
            code=codes.pop() if len(codes) == 1 else "files_refused",
            errors={"files": [message for _, message, _ in problems]},
        )
    return checked


def _too_large(name: str, size: int, limit: int) -> Message:
    return Message(
        gettext_noop("%(name)s: %(size)s, over the limit of %(limit)s per file"),
        name=name,
        size=human_size(size),
        limit=human_size(limit),
    )


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
                Message(
                    gettext_noop("workflow %(name)s takes no files"), name=repr(definition.name)
                ),
                code="files_not_accepted",
                errors={"files": ["this workflow takes no files"]},
            )
        return None
    if isinstance(input, dict) and name in input:
        raise InvalidInput(
            Message(
                gettext_noop(
                    "input.%(field)s lists the uploaded files and is filled from them: send the "
                    "files (multipart, field files), not the field"
                ),
                field=name,
            ),
            code="invalid_input",
            errors={"input": [f"{name}: filled from the uploaded files"]},
        )
    return PendingFiles(check_files(files) if files else [], "start", user)
