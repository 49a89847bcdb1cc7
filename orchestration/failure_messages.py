"""Error messages normalised for grouping: the variable parts (timestamps, UUIDs, e-mail
addresses, quoted strings, hex ids, numbers) replaced by placeholders, in SQL on PostgreSQL and
in Python elsewhere, by the same rules kept side by side. :mod:`orchestration.failures` groups
by it; :mod:`orchestration.batches` filters by it (``error_message_normalised``)."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import Func, QuerySet, TextField, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce

from . import vendor
from .models import WorkflowInstance

# (PostgreSQL ARE pattern, Python pattern, placeholder), applied in this order. Kept in step:
# ``\y`` is PostgreSQL's word boundary, ``\b`` Python's (ASCII); everything else is written
# the same on both sides (``[0-9]``, not ``\d``).
_HEX = "[0-9a-fA-F]"
_RULES: list[tuple[str, str, str]] = [
    (
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
        r"(Z|[+-][0-9]{2}:?[0-9]{2})?",
        "",
        "<ts>",
    ),
    (rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}", "", "<uuid>"),
    (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", "", "<email>"),
    ("'[^']*'|" + '"[^"]*"', "", "<str>"),
    (rf"0[xX]{_HEX}+", "", "<hex>"),
    # A hex id: 8 or more hex characters with at least one digit and one letter.
    (
        rf"\y(?={_HEX}*[0-9])(?={_HEX}*[a-fA-F]){_HEX}{{8,}}\y",
        rf"\b(?={_HEX}*[0-9])(?={_HEX}*[a-fA-F]){_HEX}{{8,}}\b",
        "<hex>",
    ),
    (r"[0-9]+(\.[0-9]+)?", "", "<n>"),
]
PG_RULES = [(pg, repl) for pg, _, repl in _RULES]
PY_RULES = [(re.compile(py or pg, re.ASCII), repl) for pg, py, repl in _RULES]


def normalise_message(message: str | None) -> str:
    """``message`` with its variable parts replaced by placeholders (the Python side)."""
    text = message or ""
    for pattern, repl in PY_RULES:
        text = pattern.sub(repl, text)
    return text


def normalised_sql(expression: Any) -> Func:
    """``expression`` (text) normalised in SQL: nested ``regexp_replace`` (PostgreSQL)."""
    out: Any = Coalesce(expression, Value(""), output_field=TextField())
    for pattern, repl in PG_RULES:
        out = Func(
            out,
            Value(pattern),
            Value(repl),
            Value("g"),
            function="REGEXP_REPLACE",
            output_field=TextField(),
        )
    return out


def message_filter(qs: QuerySet[WorkflowInstance], message: str) -> QuerySet[WorkflowInstance]:
    """``qs`` narrowed to instances whose error message normalises to ``message`` (for the
    batch service's ``error_message_normalised`` filter key)."""
    if vendor.is_postgresql():
        return qs.alias(g_message=normalised_sql(KeyTextTransform("message", "error"))).filter(
            g_message=message
        )
    ids = [
        pk
        for pk, error in qs.values_list("pk", "error")
        if normalise_message((error or {}).get("message")) == message
    ]
    return qs.filter(pk__in=ids)
