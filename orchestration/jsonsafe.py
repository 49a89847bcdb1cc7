"""JSON from outside, made safe: text parsed without exhausting the stack, and values checked
for what PostgreSQL's JSON and text columns cannot store, before any write, so bad input is a
clear 4xx (or form error) and never a 500 halfway through a transaction.

Every place that parses JSON a user sent (the API parser, operator forms in the admin and on
the status page) goes through :func:`loads` or :func:`too_deep`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.utils.translation import gettext_noop

from .errors import Message

# Deeper than this is not a business document; it also keeps every later json.dumps of the
# value (fingerprint, storage, step contexts) far from Python's recursion limit.
MAX_JSON_DEPTH = 32
# Text nested deeper than this is refused before it is decoded at all. Python's decoder is
# recursive: a few thousand brackets, well under any size limit, raise RecursionError (a 500
# where nothing catches it), and a value just under that limit would still overflow the stack
# of whatever walks it next. Values between MAX_JSON_DEPTH and this get the precise error of
# storable_json_problem (naming the field).
MAX_JSON_PARSE_DEPTH = 100

# A JSON string, escapes included; an unterminated one runs to the end of the text (the
# decoder stops there too). Possessive, and it always matches where it starts, so the scan is
# linear even for hostile text full of quotes and backslashes.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_OPENING = frozenset(b"[{")


class JSONInputError(ValueError):
    """JSON text from outside that is refused: malformed, nested too deeply, or holding a
    value JSON cannot represent (NaN, Infinity)."""


def too_deep(text: str | bytes, limit: int = MAX_JSON_PARSE_DEPTH) -> bool:
    """True when the arrays and objects of JSON ``text`` nest deeper than ``limit`` (brackets
    inside strings do not count). No decoding and no recursion; time linear in the number of
    brackets, and one ``count`` when there are no more brackets than ``limit``. Unbalanced text
    counts its unclosed brackets, as the decoder would descend into them."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw)):
        if byte in _OPENING:
            depth += 1
            if depth > limit:
                return True
        elif depth:
            depth -= 1
    return False


def _no_constants(name: str) -> Any:
    raise JSONInputError(f"{name} is not a JSON number")


def loads(text: str | bytes, *, max_depth: int = MAX_JSON_PARSE_DEPTH) -> Any:
    """Parse JSON text from outside. Raises :class:`JSONInputError` with a message fit for the
    person who sent it: not valid JSON (with the line), nested deeper than ``max_depth``, or
    NaN/Infinity. The result nests at most ``max_depth`` levels."""
    if too_deep(text, max_depth):
        raise JSONInputError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:  # not reached after too_deep; kept so no stack error gets through
        raise JSONInputError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise JSONInputError(f"not valid UTF-8 ({exc.reason})") from None


def string_problem(value: str) -> str | None:
    if "\x00" in value:
        return Message(gettext_noop("strings must not contain NUL characters"))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return Message(gettext_noop("strings must be valid Unicode (no lone surrogates)"))
    return None


def storable_json_problem(value: Any) -> str | None:
    """Why ``value`` (already parsed JSON) cannot be stored, or None. Iterative, so a deeply
    nested value cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return Message(
                    gettext_noop("nested deeper than %(max)s levels"), max=MAX_JSON_DEPTH
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return Message(gettext_noop("object keys must be strings"))
                    problem = string_problem(key)
                    if problem:
                        return problem
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            problem = string_problem(item)
            if problem:
                return problem
        elif isinstance(item, float) and not math.isfinite(item):
            return Message(gettext_noop("numbers must be finite"))
        elif item is not None and not isinstance(item, bool | int | float):
            return Message(
                gettext_noop("unsupported value of type %(type)s"), type=type(item).__name__
            )
    return None
