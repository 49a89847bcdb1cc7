"""Attachments: files that belong to an instance.

A file is uploaded with a start (``context="start"``), to one of the instance's requests
(``request:<id>``), with a comment (``comment:<id>``) or a resubmission (``revision:<round>``):
the context is a string the attaching app chooses, so any app attaches files to its own things
through :func:`attachments_save` without a foreign key into its tables.

Every upload is checked and its bytes stored as :mod:`orchestration.uploads` says (type from
the bytes, size and count limits, random keys, bytes deleted with a failed transaction). The
bytes are never served by a static or media URL: only the download views stream them
(:func:`file_response`), to people who may see the instance (:func:`may_read`: its starter,
staff and operators, and whoever an app's registered reader check admits — approvals: the
policy's ``download`` act). How an input field lists files is :mod:`orchestration.file_refs`.

This module keeps the names other apps use from both (``attachments.check_files``, ``guard``,
``ref``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from django.db import transaction
from django.http import FileResponse
from django.utils import timezone
from django.utils.translation import gettext_noop

from .actors import actor_of
from .engine.locking import lock_instance
from .errors import InvalidInput, NotAllowed, NotFound
from .file_refs import REFS_SCHEMA, is_refs, ref, refs_of_instance
from .file_refs import as_uuid as _uuid
from .journal import Journal
from .models import Attachment, WorkflowInstance
from .uploads import (
    STORAGE_ALIAS,
    CheckedFile,
    PendingFiles,
    accepted_label,
    accepted_types,
    check_files,
    content_file,
    detect_type,
    guard,
    human_size,
    safe_name,
    start_files,
    storage,
    type_label,
    upload_limits,
)
from .uploads import _delete_bytes as _delete_bytes

log = logging.getLogger("signoff.attachments")

MAX_CONTEXT_LENGTH = Attachment._meta.get_field("context").max_length


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
            raise NotFound(gettext_noop("instance not found"))
        saved = _save(locked.instance, files, user, context, locked.journal)
        locked.journal.flush()
        return saved


def _save(
    instance: WorkflowInstance, files: Sequence[Any], user: Any, context: str, journal: Journal
) -> list[Attachment]:
    if not files:
        raise InvalidInput(
            gettext_noop("no file was sent"), code="no_files", errors={"files": ["required"]}
        )
    already = Attachment.objects.filter(instance_id=instance.pk).count()
    pending = PendingFiles(check_files(files, already=already), context, user)
    pending.record(instance, journal)
    return pending.rows


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
        raise NotFound(gettext_noop("file not found"))
    if not may_read(user, attachment.instance):
        raise NotAllowed(
            gettext_noop(
                "you may not read this file: it is for the people of its workflow instance"
            ),
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
        raise NotFound(gettext_noop("instance not found"))
    return instance, attachments_of(instance_id=instance.pk)


# -- serving -------------------------------------------------------------------------------------


def file_response(attachment: Attachment) -> FileResponse:
    """Stream the file as a download: ``Content-Disposition: attachment`` with its name, the
    type read from its bytes, ``nosniff``, a sandboxing CSP and no caching by shared caches."""
    try:
        handle = storage().open(attachment.storage_key, "rb")
    except FileNotFoundError:
        log.error("the bytes of attachment %s are missing", attachment.pk)
        raise NotFound(gettext_noop("the file's content is missing"), code="file_missing") from None
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
    "STORAGE_ALIAS",
    "CheckedFile",
    "PendingFiles",
    "accepted_label",
    "accepted_types",
    "attachment_for_reader",
    "attachments_by_context",
    "attachments_of",
    "attachments_save",
    "check_files",
    "content_file",
    "detect_type",
    "file_response",
    "guard",
    "human_size",
    "instance_files_for_reader",
    "is_refs",
    "may_read",
    "ref",
    "refs_of_instance",
    "register_reader_check",
    "safe_name",
    "start_files",
    "storage",
    "sweep_orphans",
    "type_label",
    "upload_limits",
]
