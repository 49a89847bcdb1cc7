"""How an instance's input lists its files (``Workflow(attachments=...)``): a file reference
is ``{"id", "name", "content_type", "size"}``. What a reference looks like, and which ids name
files of one instance. Below :mod:`orchestration.attachments` (which stores the files) so the
engine can check a revised input's files without importing the storing side."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.utils.translation import gettext_noop

from .errors import InvalidInput, Message
from .models import Attachment

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


def as_uuid(value: Any) -> uuid.UUID | None:
    """``value`` as a UUID, or None when it is not one."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def ref(attachment: Attachment) -> dict[str, Any]:
    """How an input field lists a file (``Workflow(attachments=...)``, revisable fields)."""
    return {
        "id": str(attachment.pk),
        "name": attachment.name,
        "content_type": attachment.content_type,
        "size": attachment.size,
    }


def is_refs(value: Any) -> bool:
    """Whether ``value`` is a list of files as an input field lists them (:func:`ref`): what
    a page shows as links rather than as data (``show=`` naming the files' field)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and as_uuid(item.get("id")) is not None
            for item in value
        )
    )


def refs_of_instance(
    instance_id: Any, value: Any, *, field: str, added: Sequence[Attachment] = ()
) -> list[dict[str, Any]]:
    """The files' input field (``Workflow(attachments=...)``) as a revision sets it: ``value``
    lists files by id (``"3f2a…"`` or ``{"id": "3f2a…", ...}``), each a file of this instance
    (or one of ``added``, saved in the same transaction and not yet written); answers their
    refs as the rows say (a caller cannot rename a file or point at another instance's).
    Raises :class:`InvalidInput` naming the field otherwise."""
    if not isinstance(value, list):
        raise InvalidInput(
            Message(
                gettext_noop("input.%(field)s must be a list of file ids of this instance"),
                field=field,
            ),
            code="invalid_input",
            errors={"input": [f"{field}: must be a list of file ids"]},
        )
    ids: list[uuid.UUID] = []
    for item in value:
        raw = item.get("id") if isinstance(item, dict) else item
        file_id = as_uuid(raw)
        if file_id is None:
            raise InvalidInput(
                Message(
                    gettext_noop("input.%(field)s: %(value)s is not a file id"),
                    field=field,
                    value=repr(str(raw)[:60]),
                ),
                code="invalid_input",
                errors={"input": [f"{field}: not a file id"]},
            )
        if file_id not in ids:
            ids.append(file_id)
    rows = {row.pk: row for row in added}
    missing = [i for i in ids if i not in rows]
    if missing:
        rows.update(Attachment.objects.filter(instance_id=instance_id, pk__in=missing).in_bulk())
    unknown = [str(i) for i in ids if i not in rows]
    if unknown:
        raise InvalidInput(
            Message(
                gettext_noop("input.%(field)s: no such file on this instance: %(ids)s"),
                field=field,
                ids=", ".join(unknown),
            ),
            code="invalid_input",
            errors={"input": [f"{field}: no such file on this instance"]},
        )
    return [ref(rows[i]) for i in ids]
