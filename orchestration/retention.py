"""Keys and retention for sealed payloads: re-encrypt under the newest key, erase a subject's
sensitive data, and the retention sweeper (erase, later delete, finished instances).

Erasure covers every table that can hold a subject's data. The engine's own rows are erased
here: sealed values become ``[erased]`` wherever they are (input, output, step outputs, signal
payloads), and every copy of their plaintext — in step and instance errors, other fields, event
data and the reason given — is masked. Other apps hold copies too (approval titles and
comments, outbound mail, webhook deliveries); the engine imports none of them, so they register
hooks (:func:`register_erase_hook`, :func:`register_delete_hook`) that erase and retention call
in the same transaction. An instance's files (:mod:`orchestration.attachments`) are deleted by
erasure, rows at once and bytes after the commit, and their names masked wherever copied;
deleting an instance deletes its files the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.translation import gettext_noop

from . import attachments, sealing
from .definitions import registry
from .engine.locking import lock_instance
from .errors import NotFound
from .fanout_models import MapItem
from .models import Event, InstanceState, Schedule, Signal, StepRun, WorkflowInstance

log = logging.getLogger("signoff.retention")
FINISHED = [
    InstanceState.SUCCEEDED,
    InstanceState.FAILED,
    InstanceState.CANCELLED,
    InstanceState.COMPENSATED,
]
ERASED = "[erased]"


# -- hooks of the other apps ---------------------------------------------------------------------


@dataclass(frozen=True)
class Erasure:
    """What an erase hook gets: the instance whose sensitive data goes, and a scrubber that
    masks every copy of its sealed values (opened before they were erased)."""

    instance_id: Any
    scrubber: sealing.Scrubber


# An erase hook erases what its app holds of one instance (inside the erasing transaction,
# the instance row locked) and returns how many copies it masked or removed. A delete hook
# deletes what its app holds of instances about to be deleted and returns how many rows.
EraseHook = Callable[[Erasure], int]
DeleteHook = Callable[[list[Any]], int]
_erase_hooks: dict[str, EraseHook] = {}
_delete_hooks: dict[str, DeleteHook] = {}


def register_erase_hook(name: str, hook: EraseHook) -> EraseHook:
    """Call ``hook`` whenever an instance's sensitive data is erased (``signoff erase``, the
    retention sweeper). Registering one name twice keeps the last."""
    _erase_hooks[name] = hook
    return hook


def register_delete_hook(name: str, hook: DeleteHook) -> DeleteHook:
    """Call ``hook`` with the ids of instances the retention sweeper is about to delete, for
    rows that are not deleted with them (no foreign key to the instance)."""
    _delete_hooks[name] = hook
    return hook


def _has_sealed(field: str) -> Q:
    return Q(**{f"{field}_text__contains": f'"{sealing.MARK}"'})


# Sealed columns of other apps, registered by them (the engine imports none of them):
# JSON columns that hold sealed values at any depth, as the engine's own, and text columns
# that hold one bare Fernet token (a sealed value's token without its wrapper: integrations'
# webhook secrets). :func:`rotate_keys` re-encrypts both.
_SEALED_JSON: list[tuple[Any, tuple[str, ...]]] = []
_SEALED_TOKENS: list[tuple[Any, tuple[str, ...]]] = []


def register_sealed_json(model: Any, fields: list[str]) -> None:
    """Let :func:`rotate_keys` re-encrypt the sealed values inside ``model``'s JSON
    ``fields``."""
    if (model, tuple(fields)) not in _SEALED_JSON:
        _SEALED_JSON.append((model, tuple(fields)))


def register_sealed_tokens(model: Any, fields: list[str]) -> None:
    """Let :func:`rotate_keys` re-encrypt ``model``'s text ``fields``, each empty or one bare
    sealed token (``sealing.seal_value(x)[sealing.MARK]``)."""
    if (model, tuple(fields)) not in _SEALED_TOKENS:
        _SEALED_TOKENS.append((model, tuple(fields)))


def rotate_keys(*, batch: int = 500) -> int:
    """Re-encrypt every sealed value under the newest key, in batches of short transactions;
    returns how many rows changed. Afterwards older keys can be removed: the engine's rows
    (instances, steps, signals, schedules, map items) and what other apps registered
    (:func:`register_sealed_json`, :func:`register_sealed_tokens`: integrations' webhook
    secrets). Events and other rows never hold sealed values: they are masked when
    written."""
    changed = 0
    for model, fields in (
        (WorkflowInstance, ("input", "output")),
        (StepRun, ("output",)),
        (Signal, ("payload",)),
        # a schedule's fixed input: its fires open it under the current keys
        (Schedule, ("input",)),
        # a map step's items (sealed when the workflow has sensitive fields) and outputs
        (MapItem, ("item", "output")),
        *_SEALED_JSON,
    ):
        qs = model.objects.annotate(**{f"{f}_text": Cast(f, TextField()) for f in fields})
        condition = Q()
        for f in fields:
            condition |= _has_sealed(f)
        changed += _rotate_rows(model, qs.filter(condition), fields, sealing.rotate_fields, batch)
    for model, fields in _SEALED_TOKENS:
        condition = Q()
        for f in fields:
            condition |= ~Q(**{f: ""})
        changed += _rotate_rows(
            model, model.objects.filter(condition), fields, _rotate_token, batch
        )
    return changed


def _rotate_token(token: Any) -> Any:
    if not token:
        return token
    return sealing.rotate_value({sealing.MARK: token})[sealing.MARK]


def _rotate_rows(
    model: Any, found: Any, fields: tuple[str, ...], rotate: Callable[[Any], Any], batch: int
) -> int:
    """Rotate ``fields`` of the rows ``found``, by primary key, ``batch`` rows a transaction
    (each row locked while it is rewritten)."""
    changed = 0
    last = None
    while True:
        page = found.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:batch])
        if not ids:
            return changed
        with transaction.atomic():
            for row in model.objects.select_for_update().filter(pk__in=ids):
                for f in fields:
                    setattr(row, f, rotate(getattr(row, f)))
                row.save(update_fields=list(fields))
                changed += 1
        last = ids[-1]


def _erase(value: Any) -> tuple[Any, int]:
    if sealing.is_sealed(value):
        return ERASED, 1
    if isinstance(value, dict):
        count = 0
        out = {}
        for k, v in value.items():
            out[k], n = _erase(v)
            count += n
        return out, count
    if isinstance(value, list):
        items = [_erase(v) for v in value]
        return [i for i, _ in items], sum(n for _, n in items)
    return value, 0


def _erase_and_scrub(value: Any, scrubber: sealing.Scrubber) -> tuple[Any, int, int]:
    """``value`` with its sealed values erased and the copies of their plaintext masked:
    ``(value, sealed values erased, copies masked)``."""
    value, erased = _erase(value)
    value, copies = scrubber.json(value)
    return value, erased, copies


def instance_erase(*, instance_id: Any, actor: str, reason: str) -> int:
    """Erase the sensitive (sealed) data of one instance for good, in one transaction: the
    sealed values in its rows become ``[erased]`` and every copy of their plaintext (errors,
    event data, other fields; through the registered hooks: approval titles and comments,
    mail, webhook deliveries) is masked or removed. Nothing that opens to the data is left.
    Writes ``instance_erased`` with the counts and the reason (scrubbed too), never the
    data. Returns how many sealed values were erased."""
    with transaction.atomic():
        locked = lock_instance(instance_id=instance_id, actor=actor)
        if locked is None:
            raise NotFound(gettext_noop("instance not found"))
        instance, journal = locked.instance, locked.journal
        steps = list(locked.steps.values())
        signals = list(Signal.objects.filter(instance=instance))
        # Open everything sealed first: its copies elsewhere are found by their plaintext.
        # Files go whole, and their names count as sensitive: masked wherever copied.
        scrubber = sealing.scrubber_for(
            instance.input,
            instance.output,
            *(s.output for s in steps),
            *(s.payload for s in signals),
            extra=attachments.names_of(instance.pk),
        )
        files = attachments.erase_files(instance.pk)
        fields = copies = 0
        for name in ("input", "output", "error"):
            value, n_fields, n_copies = _erase_and_scrub(getattr(instance, name), scrubber)
            setattr(instance, name, value)
            fields, copies = fields + n_fields, copies + n_copies
        for step in steps:
            output, n_fields, n_output = _erase_and_scrub(step.output, scrubber)
            error, n_error = scrubber.json(step.error)
            if n_fields or n_output or n_error:
                step.output, step.error = output, error
                journal.touch(step)
                fields, copies = fields + n_fields, copies + n_output + n_error
        for signal in signals:
            payload, n_fields, n_copies = _erase_and_scrub(signal.payload, scrubber)
            if n_fields or n_copies:
                signal.payload = payload
                signal.save(update_fields=["payload"])
                fields, copies = fields + n_fields, copies + n_copies
        copies += _erase_events(instance, scrubber)
        erasure = Erasure(instance_id=instance.pk, scrubber=scrubber)
        for hook in _erase_hooks.values():
            copies += hook(erasure)
        instance.erased_at = journal.now
        reason, _ = scrubber.text(reason)
        journal.record(
            "instance_erased",
            data={
                "fields": fields,
                "copies": copies,
                **({"files": files} if files else {}),
                "reason": reason,
            },
        )
        journal.flush()
        instance.save(update_fields=["input"])  # the journal writes only what engines change
        return fields


def _erase_events(instance: WorkflowInstance, scrubber: sealing.Scrubber) -> int:
    """Mask the copies in the instance's history. Erasure is the one writer that changes an
    event after it was appended, and only its data: never its type, order or count. (Events
    written since sealing at the source hold no sealed value and no quoted error; older ones
    and comments typed by people may.)"""
    if not scrubber:
        return 0
    copies = 0
    rows = Event.objects.filter(instance=instance).values_list("pk", "data")
    for pk, data in rows.iterator(chunk_size=2000):
        cleaned, n_fields = _erase(data)
        cleaned, n_copies = scrubber.json(cleaned)
        if n_fields or n_copies:
            # QuerySet.update: Event.save() refuses to change an appended event.
            Event.objects.filter(pk=pk).update(data=cleaned)
            copies += n_fields + n_copies
    return copies


def erase_business_key(*, business_key: str, actor: str, reason: str) -> tuple[int, int]:
    """Erase one subject's sensitive data across every instance with ``business_key``:
    returns (instances, fields)."""
    ids = list(
        WorkflowInstance.objects.filter(business_key=business_key).values_list("pk", flat=True)
    )
    fields = sum(instance_erase(instance_id=pk, actor=actor, reason=reason) for pk in ids)
    return len(ids), fields


def sweep_retention(*, now: datetime | None = None, batch: int = 200) -> dict[str, int]:
    """Per workflow: erase the sensitive fields of instances finished more than ``retention``
    ago, and delete (with their history) those finished ``retention + delete_after`` ago."""
    now = now or timezone.now()
    erased = deleted = 0
    for definition in registry.all():
        if definition.retention is None:
            continue
        due = WorkflowInstance.objects.filter(
            workflow=definition.name,
            version=definition.version,
            state__in=FINISHED,
            finished_at__lte=now - definition.retention,
        )
        for pk in due.filter(erased_at__isnull=True).values_list("pk", flat=True)[:batch]:
            try:
                instance_erase(instance_id=pk, actor="retention", reason="retention period ended")
                erased += 1
            except Exception:  # noqa: BLE001 - isolate a failing row
                log.exception("retention could not erase %s", pk)
        if definition.delete_after is not None:
            old = due.filter(finished_at__lte=now - definition.retention - definition.delete_after)
            ids = list(old.values_list("pk", flat=True)[:batch])
            if ids:
                deleted += instances_delete(ids)
    if erased or deleted:
        log.info("retention erased %d and deleted %d instances", erased, deleted)
    return {"erased": erased, "deleted": deleted}


def deletion_cutoffs(*, now: datetime) -> list[tuple[str, int, datetime]]:
    """``(workflow, version, cutoff)`` for every definition whose instances retention deletes:
    a finished instance of it may go once it finished at or before ``cutoff``. Definitions not
    listed (no retention, or history kept after erasure) keep their instances."""
    return [
        (d.name, d.version, now - d.retention - d.delete_after)
        for d in registry.all()
        if d.retention is not None and d.delete_after is not None
    ]


def instances_delete(ids: list[Any]) -> int:
    """Delete these instances with their history, in one transaction: the other apps' delete
    hooks first (rows with no foreign key to the instance), then the rows. Returns how many
    instances were deleted (ids already gone count for nothing)."""
    with transaction.atomic():
        for hook in _delete_hooks.values():
            hook(ids)
        return (
            WorkflowInstance.objects.filter(pk__in=ids)
            .delete()[1]
            .get("orchestration.WorkflowInstance", 0)
        )
