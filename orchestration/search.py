"""Searching instances by error text and by any input field path — one parser for the API
(``GET /api/v1/instances/?error=...&input.customer.country=DE``) and the admin's search box
(``error:timeout input.customer.country=DE``), so both refuse the same bad input with the same
words and find the same rows.

- ``error=<text>``: the text (3 to 200 characters, case-insensitive, anywhere) in the error
  message of the instance (a failed instance's error is its failed step's) or of one of its
  steps (a step still retrying has one too).
- ``input.<path>=<value>``: the input field at ``<path>`` (dot-separated keys; a number is an
  array index) equals ``<value>`` (a number, ``true``, ``false`` or ``null`` also matches the
  JSON value, so ``input.amount=120`` finds ``120`` and ``"120"``). An operator in brackets
  compares otherwise: ``input.amount[gte]=100`` (``gt``, ``gte``, ``lt``, ``lte``: numbers),
  ``input.customer.name[contains]=acme`` (case-insensitive substring),
  ``input.customer.vat[exists]=true``. At most :data:`MAX_CONDITIONS` conditions.

A sealed (sensitive) input field is never searchable: a path under a field any registered
version of the workflow (any workflow, without ``workflow=``) declares sensitive is refused
(:class:`InvalidInput`, code ``sealed_field``) — a search could otherwise test a secret value
one guess at a time. Bad input (an invalid path, an unknown operator, an oversized or
ill-typed value) is :class:`InvalidInput` too; nothing is searched.

On PostgreSQL an input condition is one ``input @? '<jsonpath>'`` test (served by the GIN
``jsonb_path_ops`` index ``instance_input_path_gin``), the error text an ``ILIKE`` served by
the trigram indexes ``instance_error_trgm`` and ``steprun_error_trgm``. On SQLite the same
conditions are Django JSON key lookups (scans). Either way every condition is part of the
list's one query: the query count does not change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import (
    BooleanField,
    Exists,
    F,
    Func,
    JSONField,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.utils.translation import gettext_noop

from . import vendor
from .definitions import registry
from .errors import InvalidInput, Message
from .models import StepRun, WorkflowInstance

ERROR_MIN, ERROR_MAX = 3, 200  # characters of an error search
VALUE_MAX = 200  # characters of an input value
MAX_CONDITIONS = 5
MAX_DEPTH = 8
OPERATORS = ("eq", "gt", "gte", "lt", "lte", "contains", "exists")
_KEY = re.compile(r"input\.(?P<path>[^\[\]]*)(?:\[(?P<op>[^\]]*)\])?")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,10})?")
_LITERALS = {"true": True, "false": False, "null": None}
CODE = "invalid_search"


@dataclass(frozen=True)
class InputCondition:
    """One input field condition: its path (keys), operator and value (as typed)."""

    path: tuple[str, ...]
    op: str
    value: str

    @property
    def label(self) -> str:
        return "input." + ".".join(self.path) + (f"[{self.op}]" if self.op != "eq" else "")


@dataclass(frozen=True)
class InstanceSearch:
    """What a list of instances is searched for (empty: nothing)."""

    error: str = ""
    conditions: tuple[InputCondition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.error or self.conditions)


def _too_many_conditions() -> Message:
    return Message(gettext_noop("at most %(max)s input conditions"), max=MAX_CONDITIONS)


# -- parsing -------------------------------------------------------------------------------------


def _text(name: str, value: str) -> str:
    if "\x00" in value:
        raise InvalidInput(
            Message(gettext_noop("%(name)s must not contain NUL characters"), name=name), code=CODE
        )
    return value


def parse_error(value: str) -> str:
    value = _text("error", value).strip()
    if not ERROR_MIN <= len(value) <= ERROR_MAX:
        raise InvalidInput(
            Message(
                gettext_noop("error must be %(min)s to %(max)s characters (got %(count)s)"),
                min=ERROR_MIN,
                max=ERROR_MAX,
                count=len(value),
            ),
            code=CODE,
        )
    return value


def parse_condition(key: str, value: str) -> InputCondition:
    """One ``input.<path>[op]`` parameter and its value; :class:`InvalidInput` if bad."""
    match = _KEY.fullmatch(_text("the parameter name", key))
    if match is None:
        raise InvalidInput(
            Message(
                gettext_noop(
                    "%(key)s is not an input search: use input.<path>=<value> or "
                    "input.<path>[<operator>]=<value>"
                ),
                key=repr(key[:80]),
            ),
            code=CODE,
        )
    segments = match["path"].split(".")
    if len(segments) > MAX_DEPTH or not all(
        _SEGMENT.fullmatch(s) and "__" not in s for s in segments
    ):
        raise InvalidInput(
            Message(
                gettext_noop(
                    "invalid input path %(path)s: up to %(max)s dot-separated keys of letters, "
                    "digits, '_' and '-' (at most 64 each, no '__')"
                ),
                path=repr(match["path"][:80]),
                max=MAX_DEPTH,
            ),
            code=CODE,
        )
    op = match["op"] if match["op"] is not None else "eq"
    if op not in OPERATORS:
        raise InvalidInput(
            Message(
                gettext_noop("unknown operator %(op)s; one of %(operators)s"),
                op=repr(op[:20]),
                operators=", ".join(OPERATORS),
            ),
            code=CODE,
        )
    value = _text(key, value)
    if len(value) > VALUE_MAX:
        raise InvalidInput(
            Message(
                gettext_noop("%(key)s: value longer than %(max)s characters"),
                key=key[:80],
                max=VALUE_MAX,
            ),
            code=CODE,
        )
    if op in ("gt", "gte", "lt", "lte") and not _NUMBER.fullmatch(value):
        raise InvalidInput(
            Message(
                gettext_noop("%(key)s: %(op)s compares numbers (like 12 or -3.5)"),
                key=key[:80],
                op=op,
            ),
            code=CODE,
        )
    if op == "exists" and value not in ("true", "false"):
        raise InvalidInput(
            Message(gettext_noop("%(key)s: exists takes true or false"), key=key[:80]), code=CODE
        )
    if op == "contains" and not value:
        raise InvalidInput(
            Message(gettext_noop("%(key)s: contains needs some text"), key=key[:80]), code=CODE
        )
    return InputCondition(tuple(segments), op, value)


def parse_params(params: Mapping[str, Any]) -> InstanceSearch:
    """The search in query parameters (a ``QueryDict`` or a plain mapping): ``error`` and
    every ``input.…`` parameter; others are left to the caller. A repeated parameter is
    refused (which value would count?)."""
    getlist = getattr(params, "getlist", None)
    items: list[tuple[str, str]] = []
    for key in params:
        values = getlist(key) if getlist else [params[key]]
        if (key == "error" or key.startswith("input.")) and len(values) > 1:
            raise InvalidInput(
                Message(gettext_noop("%(key)s is given more than once"), key=key[:80]), code=CODE
            )
        items.append((key, values[-1] if values else ""))
    error = ""
    conditions = []
    for key, value in items:
        if key == "error":
            error = parse_error(value)
        elif key.startswith("input.") or key.startswith("input["):
            conditions.append(parse_condition(key, value))
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidInput(_too_many_conditions(), code=CODE)
    return InstanceSearch(error, tuple(conditions))


def parse_term(term: str) -> InstanceSearch | None:
    """The admin search box: ``error:<text>`` and ``input.<path>[op]=<value>`` words (an
    error text with spaces in double quotes: ``error:"connection reset"``); None when the
    term has neither (an ordinary search: id or business key)."""
    if not re.search(r"(^|\s)(error:|input\.)", term):
        return None
    error = ""
    conditions = []
    for match in re.finditer(r'error:"([^"]*)"|error:(\S+)|(input\.\S+?)=(\S*)|(\S+)', term):
        quoted, word, key, value, other = match.groups()
        if quoted is not None or word is not None:
            if error:
                raise InvalidInput(gettext_noop("error: is given more than once"), code=CODE)
            error = parse_error(quoted if quoted is not None else word)
        elif key is not None:
            conditions.append(parse_condition(key, value))
        else:
            raise InvalidInput(
                Message(
                    gettext_noop(
                        "%(word)s: write error:<text> or input.<path>=<value> (or search an id "
                        "or business key alone)"
                    ),
                    word=repr(other[:80]),
                ),
                code=CODE,
            )
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidInput(_too_many_conditions(), code=CODE)
    return InstanceSearch(error, tuple(conditions))


# -- sealed fields ---------------------------------------------------------------------------------


def sealed_fields(workflow: str | None = None) -> set[str]:
    """Top-level input fields declared sensitive by any registered version of ``workflow``
    (of any workflow when None)."""
    fields: set[str] = set()
    for definition in registry.all():
        if workflow and definition.name != workflow:
            continue
        for path in definition.sensitive:
            parts = path.split(".")
            if len(parts) >= 2 and parts[0] == "input":
                fields.add(parts[1])
    return fields


def refuse_sealed(search: InstanceSearch, workflow: str | None = None) -> None:
    """:class:`InvalidInput` (``sealed_field``) when a condition reads a sealed field."""
    sealed = sealed_fields(workflow)
    for condition in search.conditions:
        if condition.path[0] in sealed or any(s.startswith("$") for s in condition.path):
            raise InvalidInput(
                Message(
                    gettext_noop(
                        "input.%(field)s is a sealed (sensitive) field and cannot be searched"
                    ),
                    field=condition.path[0],
                ),
                code="sealed_field",
            )


# -- applying --------------------------------------------------------------------------------------


class _JsonPathExists(Func):
    """``<jsonb> @? '<jsonpath>'``: PostgreSQL's JSON path test (GIN ``jsonb_path_ops``)."""

    template = "(%(expressions)s::jsonpath)"
    arg_joiner = " @? "
    output_field = BooleanField()


class _ILike(Func):
    """``<text> ILIKE <pattern>`` (PostgreSQL; the trigram indexes serve it)."""

    template = "(%(expressions)s)"
    arg_joiner = " ILIKE "
    output_field = BooleanField()


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _scalar(value: str) -> Any:
    """A number, true, false or null as typed (the JSON value), else the text itself."""
    if value in _LITERALS:
        return _LITERALS[value]
    if _NUMBER.fullmatch(value):
        return json.loads(value)
    return value


def jsonpath_of(condition: InputCondition) -> str:
    """The condition as a PostgreSQL jsonpath (keys and values JSON-quoted: no injection)."""
    path = "$" + "".join(
        f"[{int(s)}]" if s.isdigit() else "." + json.dumps(s) for s in condition.path
    )
    op, value = condition.op, condition.value
    if op == "exists":
        return path
    if op == "contains":
        return f'{path} ? (@ like_regex {json.dumps(value)} flag "iq")'
    if op != "eq":
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        return f"{path} ? (@ {symbol} {value})"
    typed = _scalar(value)
    if isinstance(typed, str):
        return f"{path} ? (@ == {json.dumps(value)})"
    return f"{path} ? (@ == {json.dumps(typed)} || @ == {json.dumps(value)})"


def _pg_condition(condition: InputCondition) -> Q:
    test = Q(_JsonPathExists(F("input"), Value(jsonpath_of(condition))))
    return ~test if condition.op == "exists" and condition.value == "false" else test


def _key(path: Iterable[str]) -> Any:
    expression: Any = "input"
    for segment in path:
        expression = KeyTransform(segment, expression)
    return expression


def _sqlite_condition(qs: QuerySet, n: int, condition: InputCondition) -> QuerySet:
    name = f"_search_{n}"
    *parents, last = condition.path
    op, value = condition.op, condition.value
    if op == "exists":
        parent = f"_search_{n}_parent"
        qs = qs.alias(**{parent: _key(parents)}) if parents else qs
        lookup = {f"{parent}__has_key" if parents else "input__has_key": last}
        return qs.filter(**lookup) if value == "true" else qs.exclude(**lookup)
    if op == "contains":
        text = KeyTextTransform(last, _key(parents)) if parents else KeyTextTransform(last, "input")
        return qs.alias(**{name: text}).filter(**{f"{name}__icontains": value})
    qs = qs.alias(**{name: _key(condition.path)})
    if op != "eq":
        return qs.filter(**{f"{name}__{op}": json.loads(value)})
    typed = _scalar(value)
    match = Q(**{name: value})
    if not isinstance(typed, str):
        match |= Q(**{name: Value(typed, JSONField())})
    return qs.filter(match)


def apply(qs: QuerySet[WorkflowInstance], search: InstanceSearch) -> QuerySet[WorkflowInstance]:
    """``qs`` narrowed by ``search`` (no query run; the list's one query gets the conditions)."""
    postgres = vendor.is_postgresql()
    if search.error:
        if postgres:
            # One set of ids from both trigram indexes (a UNION), so the list semi-joins it.
            pattern = Value(_like_pattern(search.error))
            message = KeyTextTransform("message", "error")
            in_instances = (
                WorkflowInstance.objects.filter(_ILike(message, pattern), error__isnull=False)
                .order_by()
                .values("id")
            )
            in_steps = (
                StepRun.objects.filter(_ILike(message, pattern), error__isnull=False)
                .order_by()
                .values("instance_id")
            )
            qs = qs.filter(pk__in=in_instances.union(in_steps))
        else:
            steps = StepRun.objects.filter(
                instance=OuterRef("pk"), error__message__icontains=search.error
            )
            qs = qs.filter(Q(error__message__icontains=search.error) | Exists(steps))
    for n, condition in enumerate(search.conditions):
        if postgres:
            qs = qs.filter(_pg_condition(condition))
        else:
            qs = _sqlite_condition(qs, n, condition)
    return qs
