"""Finding requests in a busy inbox: text search, filters, the columns a workflow marks, and
the list's orders with their keyset cursors. The web inbox and the approvals API parse and
apply filters here, so both refuse the same bad input with the same words (a 400) and find
the same rows.

Text search matches every word of the search (lower case, anywhere) in a request's
``search_text``: its title, business key, requester and shown field values. On PostgreSQL a
trigram index (``approval_search_trgm``) finds the rows for words of three characters or
more; SQLite scans. Query counts do not change: every filter is part of the list's one query.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db.models import F, Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext_noop

from orchestration.errors import InvalidInput, Message

from .definitions import ApprovalStep, Show
from .models import ApprovalRequest, RequestState

SEARCH_MAX = 200  # characters of a search
SEARCH_WORDS = 8  # words of a search that count (the rest are ignored)
NAME_MAX = 150  # characters of a requester, workflow or step filter
COLUMN_LIMIT = 4  # columns the list shows at most
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Filters:
    """What a list is narrowed to (empty: no filter)."""

    search: str = ""
    workflow: str = ""
    step: str = ""
    requester: str = ""
    overdue: bool = False
    due_before: datetime | None = None

    @property
    def any(self) -> bool:
        return bool(
            self.search
            or self.workflow
            or self.step
            or self.requester
            or self.overdue
            or self.due_before
        )


def _text(params: Mapping[str, Any], name: str, limit: int, label: str) -> str:
    value = params.get(name) or ""
    if not isinstance(value, str):
        raise InvalidInput(
            Message(gettext_noop("%(filter)s must be text"), filter=Message(label)),
            code="invalid_filter",
        )
    if "\x00" in value:
        # PostgreSQL cannot compare text holding NUL: a 400, not a 500.
        raise InvalidInput(
            Message(
                gettext_noop("%(filter)s cannot contain NUL characters"), filter=Message(label)
            ),
            code="invalid_filter",
        )
    value = value.strip()
    if len(value) > limit:
        raise InvalidInput(
            Message(
                gettext_noop("%(filter)s: at most %(max)s characters"),
                filter=Message(label),
                max=limit,
            ),
            code="invalid_filter",
        )
    return value


def _moment(value: str) -> datetime:
    """An ISO date (its start, in the server's time zone) or date and time (naive: the
    server's time zone)."""
    try:
        moment = parse_datetime(value)
        day = None if moment else parse_date(value)
    except ValueError:
        moment = day = None
    if day is not None:
        moment = datetime.combine(day, time.min)
    if moment is None:
        raise InvalidInput(
            gettext_noop(
                "due before must be a date (2026-12-31) or a date and time (2026-12-31T17:00)"
            ),
            code="invalid_filter",
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def parse_filters(params: Mapping[str, Any], *, search: str = "search") -> Filters:
    """The filters of a query string (``search`` names the text search's parameter: ``q``
    on the web page). Wrong input is :class:`InvalidInput` with words for people."""
    overdue = _text(params, "overdue", 10, gettext_noop("overdue")).lower()
    if overdue not in TRUE + FALSE:
        raise InvalidInput(gettext_noop("overdue must be true or false"), code="invalid_filter")
    due = _text(params, "due_before", 40, gettext_noop("due before"))
    return Filters(
        search=_text(params, search, SEARCH_MAX, gettext_noop("search")),
        workflow=_text(params, "workflow", NAME_MAX, gettext_noop("workflow")),
        step=_text(params, "step", NAME_MAX, gettext_noop("step")),
        requester=_text(params, "requester", NAME_MAX, gettext_noop("requester")),
        overdue=overdue in TRUE,
        due_before=_moment(due) if due else None,
    )


def words(text: str) -> list[str]:
    """The words a search matches, lower case, each once, at most SEARCH_WORDS."""
    return list(dict.fromkeys(text.lower().split()))[:SEARCH_WORDS]


def apply(qs: QuerySet[ApprovalRequest], filters: Filters, now: datetime) -> QuerySet:
    """``qs`` narrowed to ``filters``: every search word somewhere in the search text (Django
    escapes ``%``, ``_`` and ``\\``), and each filter given."""
    for word in words(filters.search):
        qs = qs.filter(search_text__contains=word)
    if filters.workflow:
        qs = qs.filter(workflow=filters.workflow)
    if filters.step:
        qs = qs.filter(step_name=filters.step)
    if filters.requester:
        qs = qs.filter(requester__username=filters.requester)
    if filters.overdue:
        qs = qs.filter(state=RequestState.PENDING, due_at__lt=now)
    if filters.due_before:
        qs = qs.filter(due_at__lt=filters.due_before)
    return qs


# -- columns ------------------------------------------------------------------------------------


def columns_for(workflows: list[Any], workflow: str = "", step: str = "") -> list[Show]:
    """The columns a list shows: the ``Show(..., column=True)`` fields of the approval steps
    of ``workflow`` (every workflow when empty; one step of it when ``step`` is given), first
    come first, one per key, at most COLUMN_LIMIT."""
    found: dict[str, Show] = {}
    for definition in workflows:
        if workflow and definition.name != workflow:
            continue
        for spec in definition.steps.values():
            if not isinstance(spec, ApprovalStep) or (step and spec.name != step):
                continue
            for column in spec.columns:
                found.setdefault(column.column_key, column)
    return list(found.values())[:COLUMN_LIMIT]


def step_names(workflows: list[Any], workflow: str = "") -> list[str]:
    """The names of the approval steps of ``workflow`` (every workflow when empty), sorted."""
    return sorted(
        {
            spec.name
            for definition in workflows
            if not workflow or definition.name == workflow
            for spec in definition.steps.values()
            if isinstance(spec, ApprovalStep)
        }
    )


# -- orders and cursors -------------------------------------------------------------------------


def _encode(moment: datetime | None, pk: int) -> str:
    # Whole microseconds since the epoch: exact, unlike a float timestamp.
    stamp = "n" if moment is None else str((moment - EPOCH) // MICROSECOND)
    return f"{stamp}_{pk}"


def _positive(number: Any) -> bool:
    return isinstance(number, int) and not isinstance(number, bool) and 0 < number < 2**63


@dataclass(frozen=True)
class Sort:
    """One list order by time (``newest``, ``due``), with the conditions that select rows
    after or before a cursor."""

    name: str

    def decode(self, cursor: str) -> tuple[datetime | None, int] | None:
        try:
            stamp, pk = cursor.split("_", 1)
            moment = None if stamp == "n" else EPOCH + int(stamp) * MICROSECOND
            number = int(pk)
        except (ValueError, OverflowError, OSError):
            return None
        return (moment, number) if _positive(number) else None

    def prepare(self, qs: QuerySet) -> QuerySet:
        return qs

    def forward(self) -> list[Any]:
        if self.name == "due":
            return [F("due_at").asc(nulls_last=True), "id"]
        return ["-created_at", "-id"]

    def backward(self) -> list[Any]:
        if self.name == "due":
            return [F("due_at").desc(nulls_first=True), "-id"]
        return ["created_at", "id"]

    def key(self, row: ApprovalRequest) -> str:
        return _encode(row.due_at if self.name == "due" else row.created_at, row.pk)

    def after(self, moment: datetime | None, pk: int) -> Q:
        if self.name == "due":
            if moment is None:
                return Q(due_at__isnull=True, id__gt=pk)
            return (Q(due_at__gte=moment) & (Q(due_at__gt=moment) | Q(id__gt=pk))) | Q(
                due_at__isnull=True
            )
        if moment is None:
            return Q(pk__in=[])
        # The range condition lets PostgreSQL start the index scan at the cursor.
        return Q(created_at__lte=moment) & (Q(created_at__lt=moment) | Q(id__lt=pk))

    def before(self, moment: datetime | None, pk: int) -> Q:
        if self.name == "due":
            if moment is None:
                return Q(due_at__isnull=False) | Q(due_at__isnull=True, id__lt=pk)
            return Q(due_at__lte=moment) & (Q(due_at__lt=moment) | Q(id__lt=pk))
        if moment is None:
            return Q(pk__in=[])
        return Q(created_at__gte=moment) & (Q(created_at__gt=moment) | Q(id__gt=pk))


@dataclass(frozen=True)
class ColumnSort:
    """The order of one column (``col.amount`` ascending, ``-col.amount`` descending), rows
    without a value last either way, ties by id. Values compare as stored (JSON: numbers by
    value, text by character). No index serves it: the list sorts the rows its filters
    leave (README, "Limits")."""

    column: str
    descending: bool = False

    @property
    def name(self) -> str:
        return f"{'-' if self.descending else ''}col.{self.column}"

    def decode(self, cursor: str) -> tuple[Any, int] | None:
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            value, pk = json.loads(base64.urlsafe_b64decode(padded.encode()))
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            return None
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, str | int | float)
        ):
            return None
        return (value, pk) if _positive(pk) else None

    def prepare(self, qs: QuerySet) -> QuerySet:
        return qs.annotate(sort_value=KeyTransform(self.column, "columns"))

    def _order(self, descending: bool, nulls_last: bool) -> list[Any]:
        nulls = {"nulls_last": True} if nulls_last else {"nulls_first": True}
        value = F("sort_value")
        ordered = value.desc(**nulls) if descending else value.asc(**nulls)
        return [ordered, "-id" if descending else "id"]

    def forward(self) -> list[Any]:
        return self._order(self.descending, nulls_last=True)

    def backward(self) -> list[Any]:
        return self._order(not self.descending, nulls_last=False)

    def key(self, row: ApprovalRequest) -> str:
        value = row.columns.get(self.column) if isinstance(row.columns, dict) else None
        raw = json.dumps([value, row.pk], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _beyond(self, value: Any, pk: int, later: bool) -> Q:
        """Rows after (``later``) or before the cursor in this list's forward order."""
        ahead = "gt" if later != self.descending else "lt"
        if value is None:
            # Nulls come last: after one only nulls further on, before one every value too.
            nulls = Q(sort_value__isnull=True, **{f"id__{ahead}": pk})
            return nulls if later else nulls | Q(sort_value__isnull=False)
        same = Q(sort_value=value, **{f"id__{ahead}": pk})
        beyond = Q(**{f"sort_value__{ahead}": value}) | same
        return (
            beyond | Q(sort_value__isnull=True) if later else beyond & Q(sort_value__isnull=False)
        )

    def after(self, value: Any, pk: int) -> Q:
        return self._beyond(value, pk, later=True)

    def before(self, value: Any, pk: int) -> Q:
        return self._beyond(value, pk, later=False)


def sort_for(name: str, columns: list[Show]) -> Sort | ColumnSort:
    """The order ``name`` asks for: ``newest`` (default), ``due``, or ``col.<key>`` /
    ``-col.<key>`` for a column the list shows; anything else is the default."""
    bare = name.removeprefix("-")
    if bare.startswith("col.") and bare[4:] in {c.column_key for c in columns}:
        return ColumnSort(bare[4:], descending=name.startswith("-"))
    return Sort(name if name in ("newest", "due") else "newest")


@dataclass
class Page:
    rows: list[ApprovalRequest]
    next_cursor: str | None
    prev_cursor: str | None


def paginate(
    qs: QuerySet[ApprovalRequest], sort: Sort | ColumnSort, after: str, before: str, size: int
) -> Page:
    """One page in one query (``size`` + 1 rows tell whether there is more); no COUNT. A
    cursor past the end gives the first page."""
    base, qs = qs, sort.prepare(qs)
    if before and (cursor := sort.decode(before)):
        rows = list(qs.filter(sort.before(*cursor)).order_by(*sort.backward())[: size + 1])
        more = len(rows) > size
        rows = rows[:size][::-1]
        if not rows:
            return paginate(base, sort, "", "", size)
        return Page(rows, sort.key(rows[-1]), sort.key(rows[0]) if more else None)
    if after and (cursor := sort.decode(after)):
        rows = list(qs.filter(sort.after(*cursor)).order_by(*sort.forward())[: size + 1])
        more = len(rows) > size
        rows = rows[:size]
        if not rows:
            return paginate(base, sort, "", "", size)
        return Page(rows, sort.key(rows[-1]) if more else None, sort.key(rows[0]))
    rows = list(qs.order_by(*sort.forward())[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, sort.key(rows[-1]) if more else None, None)
