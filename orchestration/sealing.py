"""Sealed payloads: sensitive input and output fields are stored encrypted.

A workflow names its sensitive fields as paths: ``input.<field>`` and
``outputs.<step>.<field>`` (top-level fields of the input or of a step's output). Their values
are stored as ``{"$sealed": "<Fernet token>"}`` with :class:`cryptography.fernet.MultiFernet`
over ``SIGNOFF_ENCRYPTION_KEYS`` (comma-separated Fernet keys, newest first: new values use the
first, any key decrypts). They are opened only to run a step (its context) or for someone with
``orchestration.view_sensitive``; everywhere else they show as ``MASK``.

The embedded default, with no keys configured, generates a key file in ``SIGNOFF_DATA_DIR`` and
says so in the log. A missing or wrong key raises :class:`SealError` naming the field — never a
silent empty value.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

log = logging.getLogger("signoff.sealing")
MARK = "$sealed"
MASK = "••••••"


class SealError(Exception):
    """A sealed value cannot be opened (no key, or the wrong keys)."""


@lru_cache(maxsize=1)
def _keys_from(config: str, data_dir: str) -> tuple[bytes, ...]:
    keys = [k.strip().encode() for k in config.split(",") if k.strip()]
    if keys:
        return tuple(keys)
    path = Path(data_dir) / "encryption.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another process made it first: read theirs (below). Wait for its content.
            for _ in range(50):
                if path.stat().st_size:
                    break
                time.sleep(0.02)
            return (path.read_bytes().strip(),)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
        log.warning(
            "SIGNOFF_ENCRYPTION_KEYS is not set: generated a local key in %s "
            "(fine for the embedded default; set the variable in production)",
            path,
        )
    return (path.read_bytes().strip(),)


def fernet() -> MultiFernet:
    keys = _keys_from(settings.SIGNOFF_ENCRYPTION_KEYS, str(settings.DATA_DIR))
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError as exc:
        raise SealError(f"SIGNOFF_ENCRYPTION_KEYS holds an invalid Fernet key ({exc})") from exc


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {MARK}


def seal_value(value: Any) -> dict[str, str]:
    import json

    token = fernet().encrypt(json.dumps(value, separators=(",", ":")).encode())
    return {MARK: token.decode()}


def open_value(value: Any, *, where: str = "value") -> Any:
    import json

    if not is_sealed(value):
        return value
    try:
        return json.loads(fernet().decrypt(value[MARK].encode()))
    except InvalidToken:
        raise SealError(
            f"cannot decrypt the sealed {where}: none of the keys in SIGNOFF_ENCRYPTION_KEYS "
            "opens it (a key was removed or is wrong)"
        ) from None


def rotate_value(value: Any) -> Any:
    if not is_sealed(value):
        return value
    try:
        return {MARK: fernet().rotate(value[MARK].encode()).decode()}
    except InvalidToken:
        raise SealError("cannot rotate a sealed value: no current key opens it") from None


# -- applying the paths of a workflow ------------------------------------------------------------


def input_fields(sensitive: Iterable[str]) -> set[str]:
    return {p.split(".", 1)[1] for p in sensitive if p.startswith("input.")}


def output_fields(sensitive: Iterable[str], step: str) -> set[str]:
    prefix = f"outputs.{step}."
    return {p[len(prefix) :] for p in sensitive if p.startswith(prefix)}


def seal_fields(data: Any, fields: set[str]) -> Any:
    if not fields or not isinstance(data, dict):
        return data
    return {k: (seal_value(v) if k in fields and not is_sealed(v) else v) for k, v in data.items()}


def open_fields(data: Any, *, where: str) -> Any:
    if not isinstance(data, dict):
        return data
    return {k: open_value(v, where=f"{where}.{k}") for k, v in data.items()}


def mask(data: Any) -> Any:
    """The value with every sealed field shown as :data:`MASK` (lists, API, admin, mail)."""
    if is_sealed(data):
        return MASK
    if isinstance(data, dict):
        return {k: mask(v) for k, v in data.items()}
    if isinstance(data, list):
        return [mask(v) for v in data]
    return data


def rotate_fields(data: Any) -> Any:
    if is_sealed(data):
        return rotate_value(data)
    if isinstance(data, dict):
        return {k: rotate_fields(v) for k, v in data.items()}
    if isinstance(data, list):
        return [rotate_fields(v) for v in data]
    return data


def can_view(user: Any) -> bool:
    return bool(
        getattr(user, "is_authenticated", False) and user.has_perm("orchestration.view_sensitive")
    )


def reveal(data: Any, *, where: str = "value") -> Any:
    """Every sealed value opened (for someone allowed to see it). A value that cannot be
    opened becomes a visible error string, never an empty value."""
    if is_sealed(data):
        try:
            return open_value(data, where=where)
        except SealError as exc:
            return f"[sealed value not readable: {exc}]"
    if isinstance(data, dict):
        return {k: reveal(v, where=f"{where}.{k}") for k, v in data.items()}
    if isinstance(data, list):
        return [reveal(v, where=where) for v in data]
    return data
