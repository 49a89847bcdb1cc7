"""Signing outbound webhooks: Standard Webhooks (https://www.standardwebhooks.com), and the
legacy ``X-Signoff-Signature`` kept for one release.

Standard Webhooks: ``webhook-id`` (the delivery's id, the same on every attempt),
``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature``: ``v1,<base64
HMAC-SHA256>`` of ``"<id>.<timestamp>.<body>"`` under the secret's key (the base64 after
``whsec_``), one space-separated signature per live secret, so during a rotation's overlap a
receiver holding either secret verifies. Receivers use the ``standardwebhooks`` library of
their language.

Deprecated: ``X-Signoff-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
(the whole secret string as the key), checked by :func:`verify_signature`. Removed in the
next release.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_HEADER = "X-Signoff-Signature"  # deprecated
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"


def new_secret() -> str:
    """``whsec_`` and 32 random bytes in base64, as Standard Webhooks secrets are."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes | None:
    """The HMAC key of ``secret``, decoded as the ``standardwebhooks`` libraries decode it
    (None if it is not base64: a secret made before Standard Webhooks; rotate it)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "==", validate=False)
    except (binascii.Error, ValueError):
        return None
    return key or None


def masked_secret(secret: str) -> str:
    """What is shown of a secret after it was handed over: its prefix and last four."""
    return f"{SECRET_PREFIX}••••••{secret[-4:]}" if len(secret) > 12 else "••••••"


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    message = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(
    secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret of ``secrets_`` (newest
    first) that has a key."""
    signatures = [
        standard_signature(key, msg_id, timestamp, body)
        for key in (secret_key(s) for s in secrets_)
        if key is not None
    ]
    headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(int(timestamp))}
    if signatures:
        headers[STANDARD_SIGNATURE_HEADER] = " ".join(signatures)
    return headers


# -- the deprecated X-Signoff-Signature ----------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret`` (deprecated scheme)."""
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(
    secret: str | Sequence[str], body: bytes, *, timestamp: int | None = None
) -> str:
    """``t=<t>,v1=<hex>`` with one ``v1`` per secret (deprecated scheme)."""
    t = int(time.time() if timestamp is None else timestamp)
    all_secrets = [secret] if isinstance(secret, str) else list(secret)
    return ",".join([f"t={t}", *(f"v1={sign(s, t, body)}" for s in all_secrets)])


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> bool:
    """The receiver's check of the deprecated ``X-Signoff-Signature``: ``header`` signs exactly
    ``body`` (the raw request bytes) under ``secret``, with a timestamp within ``tolerance``
    seconds of now. Constant-time comparison."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)
