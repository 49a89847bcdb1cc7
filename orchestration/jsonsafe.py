"""What PostgreSQL's JSON and text columns cannot store, checked before any write so bad input
is a clear 4xx and never a 500 halfway through a transaction."""

from __future__ import annotations

import math
from typing import Any

# Deeper than this is not a business document; it also keeps every later json.dumps of the
# value (fingerprint, storage, step contexts) far from Python's recursion limit.
MAX_JSON_DEPTH = 32


def string_problem(value: str) -> str | None:
    if "\x00" in value:
        return "strings must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "strings must be valid Unicode (no lone surrogates)"
    return None


def storable_json_problem(value: Any) -> str | None:
    """Why ``value`` (already parsed JSON) cannot be stored, or None. Iterative, so a deeply
    nested value cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return "object keys must be strings"
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
            return "numbers must be finite"
        elif item is not None and not isinstance(item, bool | int | float):
            return f"unsupported value of type {type(item).__name__}"
    return None
