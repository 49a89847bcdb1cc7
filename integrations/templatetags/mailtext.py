"""Filters for mail templates: text from workflow input (titles, field values, comments) must
not shape the mail — no line break in a subject, no fake line in a text body.

HTML escaping stays Django's autoescape; these filters only change line structure and add no
markup, so they are ``is_safe`` (unsafe input is still escaped after them in HTML).
"""

from __future__ import annotations

import re
from typing import Any

from django import template

register = template.Library()

# Everything a mail reader may take for a line break.
_LINE_BREAK = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# Other C0 and C1 control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@register.filter(is_safe=True)
def oneline(value: Any) -> str:
    """``value`` on one line: every run of whitespace or control characters (newlines,
    carriage returns, tabs, U+2028, ...) becomes one space; leading and trailing ones go."""
    return " ".join(_CONTROL.sub(" ", _LINE_BREAK.sub(" ", str(value))).split())


@register.filter(is_safe=True)
def quoted(value: Any, prefix: str = "  > ") -> str:
    """Multi-line text (a comment) as a quoted block: every line starts with ``prefix``, so no
    line of it can pass for a line of the mail itself."""
    lines = _LINE_BREAK.sub("\n", str(value)).split("\n")
    return "\n".join(prefix + _CONTROL.sub(" ", line).rstrip() for line in lines)
