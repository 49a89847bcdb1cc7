"""OpenAPI post-processing: what every token-authenticated operation can answer.

``ThrottledTokenAuthentication`` answers 429 (``throttled``, with ``Retry-After``) to every token
request from an address that sent too many invalid tokens, before any view runs; the views'
own ``extend_schema`` declarations cannot know it, so it is added here to each operation that
accepts ``tokenAuth``.
"""

from __future__ import annotations

from typing import Any

THROTTLED = {
    "description": (
        "Too many requests with invalid tokens from this address "
        "(`SIGNOFF_TOKEN_FAILURES_PER_IP` in `SIGNOFF_TOKEN_FAILURE_WINDOW_SECONDS`): every "
        "token request from it is refused, valid tokens included, until the window ends."
    ),
    "headers": {
        "Retry-After": {
            "description": "Seconds until the address may try again.",
            "schema": {"type": "integer"},
        }
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
METHODS = ("get", "put", "patch", "post", "delete")


def add_token_throttling(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """A 429 response on each operation whose security accepts ``tokenAuth``."""
    if "Error" not in result.get("components", {}).get("schemas", {}):
        return result
    for operations in result.get("paths", {}).values():
        for method in METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            if any("tokenAuth" in scheme for scheme in operation.get("security", [])):
                operation.setdefault("responses", {}).setdefault("429", THROTTLED)
    return result
