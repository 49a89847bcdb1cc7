"""Keys and retention for sealed payloads: re-encrypt under the newest key, erase a subject's
sensitive data, and the retention sweeper (erase, later delete, finished instances)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from . import sealing
from .definitions import registry
from .errors import NotFound
from .journal import Journal
from .models import InstanceState, StepRun, WorkflowInstance

log = logging.getLogger("signoff.retention")
FINISHED = [
    InstanceState.SUCCEEDED,
    InstanceState.FAILED,
    InstanceState.CANCELLED,
    InstanceState.COMPENSATED,
]
ERASED = "[erased]"


def _has_sealed(field: str) -> Q:
    return Q(**{f"{field}_text__contains": f'"{sealing.MARK}"'})


def rotate_keys(*, batch: int = 500) -> int:
    """Re-encrypt every sealed value under the newest key, in batches of short transactions;
    returns how many rows changed. Afterwards older keys can be removed."""
    changed = 0
    for model, fields in ((WorkflowInstance, ["input", "output"]), (StepRun, ["output"])):
        qs = model.objects.annotate(**{f"{f}_text": Cast(f, TextField()) for f in fields})
        condition = Q()
        for f in fields:
            condition |= _has_sealed(f)
        last = None
        while True:
            page = qs.filter(condition).order_by("pk")
            if last is not None:
                page = page.filter(pk__gt=last)
            ids = list(page.values_list("pk", flat=True)[:batch])
            if not ids:
                break
            with transaction.atomic():
                for row in model.objects.select_for_update().filter(pk__in=ids):
                    for f in fields:
                        setattr(row, f, sealing.rotate_fields(getattr(row, f)))
                    row.save(update_fields=fields)
                    changed += 1
            last = ids[-1]
    return changed


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


def instance_erase(*, instance_id: Any, actor: str, reason: str) -> int:
    """Erase the sensitive (sealed) fields of one instance for good. Writes
    ``instance_erased`` with the count and reason, never the data. Returns the count."""
    with transaction.atomic():
        instance = WorkflowInstance.objects.select_for_update().filter(pk=instance_id).first()
        if instance is None:
            raise NotFound("instance not found")
        journal = Journal(instance, actor=actor)
        instance.input, n_input = _erase(instance.input)
        instance.output, n_output = _erase(instance.output)
        count = n_input + n_output
        for step in StepRun.objects.filter(instance=instance):
            erased, n = _erase(step.output)
            if n:
                step.output = erased
                journal.touch(step)
                count += n
        instance.erased_at = journal.now
        # Webhook deliveries copied event data (business key, comments): they go too.
        from django.apps import apps

        if apps.is_installed("integrations"):
            apps.get_model("integrations", "WebhookDelivery").objects.filter(
                instance_id=instance.pk
            ).delete()
        journal.record("instance_erased", data={"fields": count, "reason": reason})
        journal.flush()
        instance.save(update_fields=["input"])  # the journal writes only what engines change
        return count


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
                with transaction.atomic():
                    deleted += (
                        WorkflowInstance.objects.filter(pk__in=ids)
                        .delete()[1]
                        .get("orchestration.WorkflowInstance", 0)
                    )
    if erased or deleted:
        log.info("retention erased %d and deleted %d instances", erased, deleted)
    return {"erased": erased, "deleted": deleted}
