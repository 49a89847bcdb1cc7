"""Request parsing for the API: DRF's JSON parser, made safe for hostile bodies."""

from __future__ import annotations

import io
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from orchestration.jsonsafe import MAX_JSON_PARSE_DEPTH, too_deep


class JSONParser(parsers.JSONParser):
    """DRF's parser (strict: no NaN or Infinity), plus a 400 for JSON nested deeper than
    ``MAX_JSON_PARSE_DEPTH``, checked before decoding. Python's decoder is recursive and DRF
    only catches ``ValueError``: such a body, well under the size limit, would otherwise be a
    500 (or parse, and overflow the stack of whatever walks it next)."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        body = stream.read() if stream is not None else b""
        if too_deep(body):
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_PARSE_DEPTH} levels")
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:  # not reached after too_deep; no stack error gets through
            raise ParseError("JSON parse error - nested too deeply") from None
