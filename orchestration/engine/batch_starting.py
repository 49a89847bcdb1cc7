"""Starting many instances at once (``POST /api/v1/instances/batch/``).

:func:`instances_start_batch` checks each item as :func:`.starting.instance_start` does (the
same :func:`.starting.start_checked`), answers repeats and reused keys from one query, and
writes every new instance, its steps and its first events in one transaction with a few
multi-row INSERT statements (:func:`orchestration.journal.flush_created`); the doorbells of
all of them ring after the commit through one broker producer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import Conflict, InvalidInput, NotAllowed, SignoffError
from ..journal import Journal, flush_created
from ..models import KEY_OWNER, StepRun, WorkflowInstance
from ..vendor import in_values
from .starting import CheckedStart, built, start_checked

MAX_BATCH_ITEMS = 1000
ITEM_FIELDS = frozenset({"workflow", "input", "business_key", "version", "idempotency_key"})


@dataclass
class BatchItemResult:
    """One item's answer: ``status`` 201 (started), 200 (a repeat of an earlier start with the
    same key and body: that instance), 409 (the key was used for another request), 400
    (invalid item) or 403 (names another requester without the permission)."""

    index: int
    status: int
    instance: WorkflowInstance | None = None
    error: SignoffError | None = None


def instances_start_batch(
    *, items: Any, started_by: Any = None, actor: str = "system"
) -> list[BatchItemResult]:
    """Start up to :data:`MAX_BATCH_ITEMS` instances, each item with its own result.

    Raises :class:`InvalidInput` and writes nothing when the batch itself is wrong: not a
    list, empty, too long, or one ``(workflow, idempotency_key)`` given twice. Otherwise each
    item is checked on its own (a bad item is a 400 or 403 result and does not stop the
    others); repeats of earlier starts (same key, same body) answer 200 with their instance,
    a key used for another body 409. The new instances are written in one transaction (all or
    none), their doorbells rung after its commit. Two batches racing on one key: the loser's
    transaction is retried once, its items then answering as repeats."""
    _check_shape(items)
    for attempt in range(2):
        try:
            return _start_all(items, started_by, actor)
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def _check_shape(items: Any) -> None:
    if not isinstance(items, list):
        raise InvalidInput("items must be a list of start requests", code="invalid")
    if not items:
        raise InvalidInput("items must hold at least one start request", code="invalid")
    if len(items) > MAX_BATCH_ITEMS:
        raise InvalidInput(
            f"at most {MAX_BATCH_ITEMS} items in one batch (got {len(items)})",
            code="batch_too_large",
        )
    seen: dict[tuple[Any, str], int] = {}
    repeated: list[str] = []
    for index, item in enumerate(items):
        key = item.get("idempotency_key") if isinstance(item, dict) else None
        if not isinstance(key, str):
            continue
        pair = (item.get("workflow"), key)
        try:
            first = seen.setdefault(pair, index)
        except TypeError:  # an unhashable workflow: the item's own check refuses it
            continue
        if first != index:
            repeated.append(f"items {first} and {index}")
    if repeated:
        raise InvalidInput(
            "one idempotency_key given twice for one workflow in a batch: " + ", ".join(repeated),
            code="duplicate_idempotency_key",
        )


def _status_of(error: SignoffError) -> int:
    return 403 if isinstance(error, NotAllowed) else 409 if isinstance(error, Conflict) else 400


def _checked_item(item: Any, started_by: Any) -> CheckedStart:
    if not isinstance(item, dict):
        raise InvalidInput("each item must be a JSON object", code="invalid")
    unknown = sorted(set(item) - ITEM_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(map(str, unknown))}", code="invalid")
    version = item.get("version")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 1
    ):
        raise InvalidInput("version must be a positive integer", code="invalid")
    if not isinstance(item.get("input", {}), dict):
        raise InvalidInput("input must be a JSON object", code="invalid_input")
    return start_checked(
        workflow=item.get("workflow"),
        input=item.get("input"),
        business_key=item.get("business_key", ""),
        idempotency_key=item.get("idempotency_key"),
        version=version,
        started_by=started_by,
    )


def _start_all(items: list[Any], started_by: Any, actor: str) -> list[BatchItemResult]:
    results: list[BatchItemResult | None] = [None] * len(items)
    checked: dict[int, CheckedStart] = {}
    for index, item in enumerate(items):
        try:
            checked[index] = _checked_item(item, started_by)
        except SignoffError as exc:
            results[index] = BatchItemResult(index, _status_of(exc), error=exc)
    existing = _existing(checked, started_by)
    new: list[tuple[int, CheckedStart]] = []
    for index, start in checked.items():
        key = start.idempotency_key
        found = existing.get((start.definition.name, key)) if key is not None else None
        if found is None:
            new.append((index, start))
        elif found.request_hash == start.fingerprint:
            results[index] = BatchItemResult(index, 200, instance=found)
        else:
            results[index] = BatchItemResult(
                index,
                409,
                error=Conflict(
                    f"idempotency_key {key!r} was already used with another request "
                    f"(instance {found.pk})",
                    code="idempotency_conflict",
                ),
            )
    if new:
        with transaction.atomic():
            now = timezone.now()
            written = _write(new, started_by, actor, now)
        for index, instance in written:
            results[index] = BatchItemResult(index, 201, instance=instance)
    return [r for r in results if r is not None]


def _existing(
    checked: dict[int, CheckedStart], started_by: Any
) -> dict[tuple[str, str], WorkflowInstance]:
    """The caller's instances already started with the batch's keys (keys are per caller and
    workflow), in one query."""
    keys = {c.idempotency_key for c in checked.values() if c.idempotency_key is not None}
    if not keys:
        return {}
    mine = WorkflowInstance.objects.alias(owner=KEY_OWNER).filter(
        owner=getattr(started_by, "pk", None) or 0
    )
    rows = in_values(mine, "idempotency_key", sorted(keys)).only(
        "id",
        "workflow",
        "version",
        "state",
        "business_key",
        "idempotency_key",
        "request_hash",
        "created_at",
    )
    return {(row.workflow, row.idempotency_key): row for row in rows}


def _write(
    new: list[tuple[int, CheckedStart]], started_by: Any, actor: str, now: datetime
) -> list[tuple[int, WorkflowInstance]]:
    journals: list[tuple[Journal, list[StepRun]]] = []
    written: list[tuple[int, WorkflowInstance]] = []
    for index, start in new:
        instance, journal, steps = built(
            start.definition,
            start.input,
            start.business_key,
            start.idempotency_key,
            start.fingerprint,
            started_by,
            actor,
            start.on_behalf_of,
            now=now,
        )
        journals.append((journal, steps))
        written.append((index, instance))
    flush_created(journals)
    return written
