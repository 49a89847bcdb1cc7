"""Failures grouped: failed instances by (workflow, failed step, error type, normalised
message), so 300 failures that are one error read as one row, and retrying them all after a
fix is one action.

The message is *normalised* before grouping: timestamps, UUIDs, e-mail addresses, quoted
strings, hex ids and numbers become placeholders (``<ts>``, ``<uuid>``, ``<email>``, ``<str>``,
``<hex>``, ``<n>``), so "order 1234 not found" and "order 98 not found" are one group. On
PostgreSQL the normalisation runs in SQL (nested ``regexp_replace``) and the grouping is one
``GROUP BY`` query, whatever the number of failures; on SQLite (the embedded default) the
same rules run in Python over one query's rows. The two rule lists are kept side by side and
a test checks they agree.

"Retry all in this group" goes through :func:`retry_group`: one batch operation
(:mod:`orchestration.batches`) whose filter is :func:`group_filter`'s, run in the background;
each instance's retry asks the engine, which asks the step kinds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import (
    Aggregate,
    Count,
    F,
    Max,
    Min,
    QuerySet,
    TextField,
    UUIDField,
    Value,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce
from django.utils.translation import gettext_noop

from . import batches, vendor
from .errors import InvalidInput
from .failure_messages import (  # noqa: F401 - part of this module's names
    PG_RULES,
    PY_RULES,
    message_filter,
    normalise_message,
    normalised_sql,
)
from .models import InstanceState, WorkflowInstance
from .selectors import instances_visible_to

GROUP_LIMIT = 200  # groups shown, largest first
KEY_PART_MAX = 2100  # characters of one part of a group's key (messages are cut at 2000)


class _LatestId(Aggregate):
    """The id of the group's most recent failure: ``(ARRAY_AGG(id ORDER BY at DESC))[1]``."""

    function = "ARRAY_AGG"
    template = "(%(function)s(%(expressions)s DESC))[1]"
    arg_joiner = " ORDER BY "
    output_field = UUIDField()


# -- groups ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupKey:
    """What makes failures one group."""

    workflow: str
    step: str
    error_type: str
    message: str  # normalised

    @property
    def token(self) -> str:
        """The key as a URL-safe string (the retry page's ``?group=``)."""
        raw = json.dumps([self.workflow, self.step, self.error_type, self.message])
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @property
    def digest(self) -> str:
        """A short stable id (HTML ids, logs)."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:12]

    @classmethod
    def from_token(cls, token: str) -> GroupKey:
        """The key in ``token``; :class:`InvalidInput` for anything that is not one."""
        try:
            if not isinstance(token, str) or not token or len(token) > 4 * 4 * KEY_PART_MAX:
                raise ValueError
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            parts = json.loads(raw.decode())
            if not (
                isinstance(parts, list)
                and len(parts) == 4
                and all(isinstance(p, str) and len(p) <= KEY_PART_MAX for p in parts)
                and not any("\x00" in p for p in parts)
                and parts[0]
            ):
                raise ValueError
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise InvalidInput(gettext_noop("not a failure group"), code="invalid_group") from None
        return cls(*parts)


@dataclass(frozen=True)
class FailureGroup:
    """One group: its key, how many instances are in it, when the first and the last failed,
    and the most recent one (a sample to open)."""

    key: GroupKey
    count: int
    first_seen: datetime | None
    last_seen: datetime | None
    sample_id: Any

    # Shortcuts for templates.
    @property
    def workflow(self) -> str:
        return self.key.workflow

    @property
    def step(self) -> str:
        return self.key.step

    @property
    def error_type(self) -> str:
        return self.key.error_type

    @property
    def message(self) -> str:
        return self.key.message


def _failed(user: Any) -> QuerySet[WorkflowInstance]:
    return instances_visible_to(user).filter(state=InstanceState.FAILED).order_by()


def _with_key_parts(qs: QuerySet[WorkflowInstance]) -> QuerySet[WorkflowInstance]:
    return qs.annotate(
        g_step=Coalesce(KeyTextTransform("step", "error"), Value(""), output_field=TextField()),
        g_type=Coalesce(KeyTextTransform("type", "error"), Value(""), output_field=TextField()),
        g_at=Coalesce("finished_at", "updated_at"),
    )


def failure_groups(*, user: Any, limit: int = GROUP_LIMIT) -> tuple[list[FailureGroup], bool]:
    """The failed instances ``user`` may see, grouped; the largest ``limit`` groups (ties: most
    recent first) and whether there were more. One query on PostgreSQL (the grouping in SQL);
    one query on SQLite (rows grouped here)."""
    qs = _with_key_parts(_failed(user))
    if vendor.is_postgresql():
        rows = (
            qs.annotate(g_message=normalised_sql(KeyTextTransform("message", "error")))
            .values("workflow", "g_step", "g_type", "g_message")
            .annotate(
                n=Count("pk"),
                first=Min("g_at"),
                last=Max("g_at"),
                sample=_LatestId(F("id"), F("g_at")),
            )
            .order_by("-n", "-last", "workflow", "g_step")[: limit + 1]
        )
        groups = [
            FailureGroup(
                GroupKey(r["workflow"], r["g_step"], r["g_type"], r["g_message"]),
                r["n"],
                r["first"],
                r["last"],
                r["sample"],
            )
            for r in rows
        ]
    else:
        groups = _group_in_python(qs, limit + 1)
    return groups[:limit], len(groups) > limit


def _group_in_python(qs: QuerySet[WorkflowInstance], limit: int) -> list[FailureGroup]:
    found: dict[GroupKey, dict[str, Any]] = {}
    rows = qs.annotate(g_message=KeyTextTransform("message", "error")).values_list(
        "pk", "workflow", "g_step", "g_type", "g_message", "g_at"
    )
    for pk, workflow, step, error_type, message, at in rows.iterator(chunk_size=2000):
        key = GroupKey(workflow, step, error_type, normalise_message(message))
        group = found.setdefault(key, {"n": 0, "first": at, "last": at, "sample": pk})
        group["n"] += 1
        if at is not None and (group["first"] is None or at < group["first"]):
            group["first"] = at
        if at is not None and (group["last"] is None or at >= group["last"]):
            group["last"], group["sample"] = at, pk
    ordered = sorted(
        found.items(),
        key=lambda kv: (-kv[1]["n"], -(kv[1]["last"].timestamp() if kv[1]["last"] else 0)),
    )
    return [
        FailureGroup(key, g["n"], g["first"], g["last"], g["sample"]) for key, g in ordered[:limit]
    ]


def group_instances(*, user: Any, key: GroupKey) -> QuerySet[WorkflowInstance]:
    """The failed instances of the group ``key`` that ``user`` may see, oldest failure
    first. On PostgreSQL one filtered query (the same normalisation as the grouping); on
    SQLite the candidates' ids are picked in Python first."""
    qs = _with_key_parts(_failed(user).filter(workflow=key.workflow)).filter(
        g_step=key.step, g_type=key.error_type
    )
    if vendor.is_postgresql():
        qs = qs.alias(g_message=normalised_sql(KeyTextTransform("message", "error"))).filter(
            g_message=key.message
        )
    else:
        ids = [
            pk
            for pk, message in qs.annotate(
                g_message=KeyTextTransform("message", "error")
            ).values_list("pk", "g_message")
            if normalise_message(message) == key.message
        ]
        qs = _with_key_parts(WorkflowInstance.objects.filter(pk__in=ids))
    return qs.order_by("g_at", "pk")


def group_of(*, user: Any, key: GroupKey) -> FailureGroup | None:
    """The group ``key`` now (its count, times and sample), or None when it has no failed
    instance ``user`` may see (any more)."""
    stats = (
        group_instances(user=user, key=key)
        .order_by()
        .aggregate(n=Count("pk"), first=Min("g_at"), last=Max("g_at"))
    )
    if not stats["n"]:
        return None
    sample = group_instances(user=user, key=key).order_by("-g_at").values_list("pk", flat=True)
    return FailureGroup(key, stats["n"], stats["first"], stats["last"], sample.first())


def group_filter(key: GroupKey) -> dict[str, Any]:
    """The group as a batch operation's filter (``batches.batch_create(filter=...)``):
    failed instances of the workflow whose failed step and error type are the group's, and
    whose normalised message is the group's (``error_message_normalised``: the batch
    service applies it with :func:`message_filter`)."""
    return {
        "workflow": key.workflow,
        "state": InstanceState.FAILED.value,
        "failed_step": key.step,
        "error_type": key.error_type,
        "error_message_normalised": key.message,
    }


# -- retry all -------------------------------------------------------------------------------------


def retry_group(key: GroupKey, user: Any, reason: str) -> Any:
    """Retry every failed instance of the group as one batch operation
    (:func:`orchestration.batches.batch_create`, action ``retry``, the group as its filter:
    :func:`group_filter`): a background job, throttled, resumable, each instance retried once
    through ``engine.instance_retry`` with ``user`` as the actor. Needs
    ``orchestration.operate_instance`` (:class:`NotAllowed`); a batch already running on some
    of these instances is :class:`~orchestration.errors.Conflict`. Returns the
    :class:`~orchestration.batch_models.BatchOperation`."""
    return batches.batch_create(action="retry", filter=group_filter(key), user=user, reason=reason)
