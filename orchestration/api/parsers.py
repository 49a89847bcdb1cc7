"""Request parsing for the API: DRF's JSON parser, made safe for hostile bodies."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's parser (strict: no NaN or Infinity), plus a 400 for JSON nested so deeply that
    the decoder runs out of stack. DRF only catches ``ValueError``, so such a body, well
    under the size limit, would otherwise be a 500."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
