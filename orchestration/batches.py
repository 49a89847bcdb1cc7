"""Batch operations: retry, cancel, pause or resume many instances as one background job.

:func:`batch_create` is the one way to start one (the admin, the API and the failures page
call it): it checks the action, the filter (or the ticked ids), the reason and the caller's
permission, selects the matching instances *once*, refuses when another queued or running
batch already holds one of them (409), and writes the job with one :class:`BatchItem` per
instance, all in one transaction. ``dry_run`` answers a :class:`Preview` (count and a sample)
and writes nothing. The job runs in the background (:mod:`orchestration.batch_runner`).

Filter keys (all optional, combined with AND; at least one, or ``confirm_all``):

- ``workflow`` (name), ``version`` (int), ``state`` (an instance state),
- ``failed_step`` (the step named in the instance's error), ``error_type`` (the exception's
  dotted name, or its last part: ``ValueError`` matches ``builtins.ValueError``),
- ``created_from``/``created_to``/``updated_from``/``updated_to`` (ISO 8601 with a time
  zone; from inclusive, to exclusive),
- ``business_key_prefix``;
- ``error_message_normalised``: the error message as the Failures page normalises it
  (:func:`orchestration.failure_messages.message_filter`; "retry all in this group" sets it);

or ``ids``: the instances ticked, by id (nothing else then).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_noop

from . import vendor
from .actors import actor_of
from .batch_models import BATCH_ACTIVE, BatchAction, BatchItem, BatchOperation, BatchState
from .errors import Conflict, InvalidInput, Message, NotAllowed, NotFound, state_word
from .failure_messages import message_filter
from .jsonsafe import string_problem
from .models import InstanceState, WorkflowInstance
from .selectors import OPERATE_PERMISSION

log = logging.getLogger("signoff.batches")

FILTER_KEYS = (
    "workflow",
    "version",
    "state",
    "failed_step",
    "error_type",
    "created_from",
    "created_to",
    "updated_from",
    "updated_to",
    "business_key_prefix",
    "error_message_normalised",
)
TIME_KEYS = ("created_from", "created_to", "updated_from", "updated_to")
SAMPLE_SIZE = 10
# pg_advisory_xact_lock key serializing batch creation (the overlap check, then the insert).
CREATE_LOCK = 0x5167_BA7C


@dataclass
class Preview:
    """What a batch would act on: how many instances, a few of them, and the filter as
    understood."""

    action: str
    count: int
    filter: dict[str, Any]
    sample: list[WorkflowInstance] = field(default_factory=list)


def may_operate(user: Any) -> bool:
    """Whether ``user`` may act on instances (and so run batches)."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.has_perm(OPERATE_PERMISSION)
    )


def _needs_permission() -> Message:
    return Message(
        gettext_noop("batch operations need the %(permission)s permission"),
        permission=OPERATE_PERMISSION,
    )


# -- the filter ----------------------------------------------------------------------------------


def _text(key: str, value: Any, max_length: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise InvalidInput(
            Message(
                gettext_noop(
                    "filter.%(key)s must be a non-empty text of at most %(max)s characters"
                ),
                key=key,
                max=max_length,
            ),
            code="invalid_filter",
        )
    if string_problem(value):
        raise InvalidInput(
            Message(
                gettext_noop("filter.%(key)s: %(problem)s"), key=key, problem=string_problem(value)
            ),
            code="invalid_filter",
        )
    return value.strip()


def _moment(key: str, value: Any) -> datetime:
    parsed = None
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
    if parsed is None or timezone.is_naive(parsed):
        raise InvalidInput(
            Message(
                gettext_noop(
                    "filter.%(key)s must be an ISO 8601 date and time with a time zone "
                    "(e.g. 2026-12-05T09:00:00Z)"
                ),
                key=key,
            ),
            code="invalid_time_range",
        )
    return parsed


def _ids(value: Any) -> list[uuid.UUID]:
    cap = settings.SIGNOFF_BATCH_MAX_INSTANCES
    if not isinstance(value, list) or not value:
        raise InvalidInput(
            gettext_noop("ids must be a non-empty list of instance ids"), code="invalid_ids"
        )
    if len(value) > cap:
        raise InvalidInput(
            Message(
                gettext_noop(
                    "at most %(max)s ids in one batch (got %(count)s); use a filter or several "
                    "batches"
                ),
                max=cap,
                count=len(value),
            ),
            code="too_many_ids",
        )
    ids: list[uuid.UUID] = []
    seen: set[uuid.UUID] = set()
    for raw in value:
        try:
            pk = uuid.UUID(raw) if isinstance(raw, str) and len(raw) <= 64 else None
        except ValueError:
            pk = None
        if pk is None:
            raise InvalidInput(
                Message(gettext_noop("not an instance id: %(value)s"), value=repr(str(raw)[:64])),
                code="invalid_ids",
            )
        if pk not in seen:
            seen.add(pk)
            ids.append(pk)
    return ids


def normalise_filter(raw: Any) -> dict[str, Any]:
    """The filter checked and in canonical form (times as ISO strings, ids as strings);
    :class:`InvalidInput` naming the first problem. An empty dict means "every instance"."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(gettext_noop("filter must be an object"), code="invalid_filter")
    unknown = sorted(set(raw) - set(FILTER_KEYS) - {"ids"})
    if unknown:
        raise InvalidInput(
            Message(
                gettext_noop("unknown filter key(s): %(unknown)s; known: %(known)s, or ids"),
                unknown=", ".join(map(str, unknown))[:200],
                known=", ".join(FILTER_KEYS),
            ),
            code="invalid_filter",
        )
    if "ids" in raw:
        if len(raw) > 1:
            raise InvalidInput(
                gettext_noop("ids select the instances themselves: give either ids or filter keys"),
                code="invalid_filter",
            )
        return {"ids": [str(pk) for pk in _ids(raw["ids"])]}
    out: dict[str, Any] = {}
    for key in (
        "workflow",
        "failed_step",
        "error_type",
        "business_key_prefix",
        "error_message_normalised",
    ):
        if key in raw:
            # a normalised error message is as long as the stored messages are
            out[key] = _text(key, raw[key], 4000 if key == "error_message_normalised" else 200)
    if "version" in raw:
        version = raw["version"]
        if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 2**31:
            raise InvalidInput(
                gettext_noop("filter.version must be a positive integer"), code="invalid_filter"
            )
        out["version"] = version
    if "state" in raw:
        if raw["state"] not in InstanceState.values:
            raise InvalidInput(
                Message(
                    gettext_noop("filter.state must be one of %(states)s"),
                    states=", ".join(InstanceState.values),
                ),
                code="invalid_filter",
            )
        out["state"] = raw["state"]
    moments = {key: _moment(key, raw[key]) for key in TIME_KEYS if key in raw}
    for prefix in ("created", "updated"):
        start, end = moments.get(f"{prefix}_from"), moments.get(f"{prefix}_to")
        if start is not None and end is not None and start >= end:
            raise InvalidInput(
                Message(
                    gettext_noop("filter.%(prefix)s_from must be before filter.%(prefix)s_to"),
                    prefix=prefix,
                ),
                code="invalid_time_range",
            )
    out.update({key: value.isoformat() for key, value in moments.items()})
    return out


def matching_instances(filter: dict[str, Any]) -> QuerySet[WorkflowInstance]:
    """The instances a normalised filter selects (every instance for ``{}``)."""
    qs = WorkflowInstance.objects.all()
    if "ids" in filter:
        return qs.filter(pk__in=filter["ids"])
    lookups = {
        "workflow": "workflow",
        "version": "version",
        "state": "state",
        "failed_step": "error__step",
        "business_key_prefix": "business_key__startswith",
        "created_from": "created_at__gte",
        "created_to": "created_at__lt",
        "updated_from": "updated_at__gte",
        "updated_to": "updated_at__lt",
    }
    qs = qs.filter(**{lookups[key]: value for key, value in filter.items() if key in lookups})
    if "error_type" in filter:
        name = filter["error_type"]
        qs = qs.filter(Q(error__type=name) | Q(error__type__endswith=f".{name}"))
    if "error_message_normalised" in filter:
        qs = message_filter(qs, filter["error_message_normalised"])
    return qs


# -- create, preview, cancel ---------------------------------------------------------------------


def _check_rate(rate: Any) -> float:
    if rate is None:
        return float(settings.SIGNOFF_BATCH_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.1 <= rate <= 1000:
        raise InvalidInput(gettext_noop("rate must be a number of instances a second, 0.1 to 1000"))
    return float(rate)


def batch_create(
    *,
    action: str,
    filter: Any,
    user: Any,
    reason: str = "",
    confirm_all: bool = False,
    dry_run: bool = False,
    rate: float | None = None,
) -> BatchOperation | Preview:
    """Start a batch: ``action`` (retry, cancel, pause, resume) on the instances ``filter``
    selects now (see the module's docstring), as ``user`` (who needs
    ``orchestration.operate_instance``; each instance is then asked as for the single action),
    with a ``reason`` (required; the cancel events carry it).

    ``dry_run``: returns a :class:`Preview` and writes nothing. Otherwise, in one transaction:
    the job (``queued``), one item per instance, and its first run sent on commit. Raises
    :class:`NotAllowed`, :class:`InvalidInput` (unknown action or filter key, a bad time range
    or id, a missing reason, no filter without ``confirm_all``, ids that do not exist, more
    than ``SIGNOFF_BATCH_MAX_INSTANCES`` instances, none at all) or :class:`Conflict`
    (``batch_overlap``: a queued or running batch holds one of them) — and then writes
    nothing."""
    if not may_operate(user):
        raise NotAllowed(_needs_permission())
    if action not in BatchAction.values:
        raise InvalidInput(
            Message(
                gettext_noop("unknown action %(action)s; one of %(actions)s"),
                action=repr(str(action)[:50]),
                actions=", ".join(BatchAction.values),
            ),
            code="invalid_action",
        )
    normalised = normalise_filter(filter)
    if not normalised and confirm_all is not True:
        raise InvalidInput(
            gettext_noop('a batch with no filter acts on every instance: confirm with "all": true'),
            code="confirm_all_required",
        )
    rate = _check_rate(rate)
    qs = matching_instances(normalised)
    cap = settings.SIGNOFF_BATCH_MAX_INSTANCES
    if dry_run:
        count = qs.count()
        sample = list(qs.order_by("created_at", "id")[:SAMPLE_SIZE])
        return Preview(action=action, count=count, filter=normalised, sample=sample)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
        raise InvalidInput(
            gettext_noop("a reason (up to 1000 characters) is required"), code="reason_required"
        )
    if string_problem(reason):
        raise InvalidInput(
            Message(gettext_noop("reason: %(problem)s"), problem=string_problem(reason)),
            code="reason_required",
        )
    with transaction.atomic():
        vendor.transaction_lock(CREATE_LOCK)
        ids = list(qs.order_by("created_at", "id").values_list("pk", flat=True)[: cap + 1])
        _check_selection(normalised, ids, cap)
        _refuse_overlap(ids)
        now = timezone.now()
        batch = BatchOperation(
            action=action,
            filter=normalised,
            reason=reason.strip(),
            created_by=user,
            actor=actor_of(user),
            total=len(ids),
            rate=rate,
            created_at=now,
            heartbeat_at=now,
        )
        batch.save()
        BatchItem.objects.bulk_create(
            [BatchItem(batch=batch, instance_id=pk, position=n) for n, pk in enumerate(ids, 1)],
            batch_size=2000,
        )
        log.info("batch %s created: %s of %d instances by %s", batch.pk, action, len(ids), user)
        _ring_on_commit(batch.pk)
        return batch


def _check_selection(normalised: dict[str, Any], ids: list[Any], cap: int) -> None:
    if "ids" in normalised:
        missing = set(normalised["ids"]) - {str(pk) for pk in ids}
        if missing:
            shown = ", ".join(sorted(missing)[:5])
            raise InvalidInput(
                Message(
                    gettext_noop("%(count)s id(s) match no instance: %(ids)s"),
                    count=len(missing),
                    ids=shown,
                ),
                code="unknown_ids",
            )
    if len(ids) > cap:
        raise InvalidInput(
            Message(
                gettext_noop(
                    "the filter matches more than %(max)s instances (SIGNOFF_BATCH_MAX_INSTANCES); "
                    "narrow it (e.g. a time range) and run several batches"
                ),
                max=cap,
            ),
            code="too_many_instances",
        )
    if not ids:
        raise InvalidInput(gettext_noop("the filter matches no instance"), code="nothing_selected")


def _refuse_overlap(ids: list[Any]) -> None:
    """409 when a queued or running batch already holds one of ``ids`` (called under the
    creation lock, so two batches created at once see each other)."""
    taken = BatchItem.objects.filter(batch__state__in=BATCH_ACTIVE)
    clash: dict[str, Any] | None = None
    for start in range(0, len(ids), 2000):
        clash = (
            taken.filter(instance_id__in=ids[start : start + 2000])
            .values("batch_id", "instance_id")
            .first()
        )
        if clash:
            break
    if clash:
        raise Conflict(
            Message(
                gettext_noop(
                    "batch #%(batch)s (queued or running) already acts on instance "
                    "%(instance)s; wait for it or cancel it first"
                ),
                batch=clash["batch_id"],
                instance=clash["instance_id"],
            ),
            code="batch_overlap",
        )


# The Celery task that runs a batch's next chunk: registered by orchestration.tasks (which
# imports the runner), so this module names no task module.
_RUN_TASK: list[Any] = []


def register_run_task(task: Any) -> Any:
    """Register the task :func:`ring` sends (``orchestration.run_batch``)."""
    _RUN_TASK[:] = [task]
    return task


def ring(batch_id: int, *, countdown: float = 0) -> None:
    """Send the batch's next run (on ``SIGNOFF_BATCH_QUEUE``, after ``countdown`` seconds)."""
    options: dict[str, Any] = {"countdown": max(0.0, countdown)}
    if settings.SIGNOFF_BATCH_QUEUE:
        options["queue"] = settings.SIGNOFF_BATCH_QUEUE
    _RUN_TASK[0].apply_async(args=[batch_id], **options)


def _ring_on_commit(batch_id: int, countdown: float = 0) -> None:
    transaction.on_commit(lambda: ring(batch_id, countdown=countdown))


def batch_get(*, batch_id: Any) -> BatchOperation:
    """The batch, or :class:`NotFound`."""
    try:
        pk = int(batch_id)
    except (TypeError, ValueError):
        raise NotFound(gettext_noop("batch not found")) from None
    batch = BatchOperation.objects.select_related("created_by").filter(pk=pk).first()
    if batch is None:
        raise NotFound(gettext_noop("batch not found"))
    return batch


def batch_cancel(*, batch_id: Any, user: Any) -> BatchOperation:
    """Stop a queued or running batch: instances not handled yet are left alone (one being
    handled at that moment finishes). :class:`Conflict` when it already ended."""
    if not may_operate(user):
        raise NotAllowed(_needs_permission())
    pk = batch_get(batch_id=batch_id).pk
    with transaction.atomic():
        batch = BatchOperation.objects.select_for_update().get(pk=pk)
        if batch.state not in BATCH_ACTIVE:
            raise Conflict(
                Message(
                    gettext_noop("batch is %(state)s; it cannot be cancelled"),
                    state=state_word(batch.state),
                ),
                code="invalid_state",
            )
        batch.cancel()
        batch.finished_at = timezone.now()
        batch.cancelled_by = actor_of(user)
        batch.save()
        log.info("batch %s cancelled by %s", pk, batch.cancelled_by)
        return batch


def batches_list() -> QuerySet[BatchOperation]:
    """Every batch, newest first, with its creator."""
    return BatchOperation.objects.select_related("created_by").order_by("-created_at", "-id")


__all__ = [
    "FILTER_KEYS",
    "BatchState",
    "Preview",
    "batch_cancel",
    "batch_create",
    "batch_get",
    "batches_list",
    "matching_instances",
    "normalise_filter",
]
