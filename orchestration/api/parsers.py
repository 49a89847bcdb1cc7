"""Request parsing for the API: DRF's JSON parser, made safe for hostile bodies."""

from __future__ import annotations

import io
from typing import Any

from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError
from rest_framework.request import Request

from orchestration import jsonsafe
from orchestration.jsonsafe import MAX_JSON_PARSE_DEPTH, too_deep

FILES_FIELD = "files"


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


def multipart_body(
    request: Request, *, fields: set[str], json_fields: set[str] = frozenset()
) -> tuple[dict[str, Any], list[Any]]:
    """The text fields and the files of a multipart/form-data body: each of ``fields`` at
    most once (those in ``json_fields`` hold JSON in a string and are decoded), files only
    under ``files``; anything else is a 400 naming the part."""
    form, uploads = request.POST, request.FILES
    problems: dict[str, list[str]] = {}
    for name in sorted(set(form) - fields):
        problems[name] = (
            ["must be a file part (with a filename), not a text field"]
            if name == FILES_FIELD
            else ["Unknown field."]
        )
    for name in sorted(set(uploads) - {FILES_FIELD}):
        problems[name] = [
            "Unknown file field; send files under files"
            if name not in fields
            else "must be a text field, not a file"
        ]
    for name in sorted(set(form) & fields):
        if len(form.getlist(name)) > 1:
            problems[name] = ["sent more than once"]
    body: dict[str, Any] = {
        name: form[name] for name in fields if name in form and name not in problems
    }
    for name in sorted(json_fields & set(body)):
        try:
            body[name] = jsonsafe.loads(body[name])
        except jsonsafe.JSONInputError as exc:
            problems[name] = [f"not valid JSON: {exc}"]
    if problems:
        raise serializers.ValidationError(problems)
    return body, uploads.getlist(FILES_FIELD)


def is_multipart(request: Request) -> bool:
    return (request.content_type or "").startswith("multipart/form-data")
