"""Sealed payloads: sensitive input and output fields are stored encrypted.

A workflow names its sensitive fields as paths: ``input.<field>`` and
``outputs.<step>.<field>`` (top-level fields of the input or of a step's output). Their values
are stored as ``{"$sealed": "<Fernet token>"}`` with :class:`cryptography.fernet.MultiFernet`
over ``SIGNOFF_ENCRYPTION_KEYS`` (comma-separated Fernet keys, newest first: new values use the
first, any key decrypts). They are opened only to run a step (its context) or for someone with
``orchestration.view_sensitive``; everywhere else they show as ``MASK``.

Whatever is derived from a sealed value is masked or sealed when it is written, not when it is
shown: approval titles and fields render from :func:`mask_paths` (sealed fields as ``MASK``),
step errors are passed through a :class:`Scrubber` holding the instance's opened values, event
data never holds a sealed value (the journal masks it), and pending signal payloads of a
workflow with sensitive fields are sealed whole. Readers (API, pages, admin, downloads,
webhooks) go through :func:`masked`, which also hides the values of keys that look secret.

The embedded default, with no keys configured, generates a key file in ``SIGNOFF_DATA_DIR`` and
says so in the log. A missing or wrong key raises :class:`SealError` naming the field — never a
silent empty value.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

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
    token = fernet().encrypt(json.dumps(value, separators=(",", ":")).encode())
    return {MARK: token.decode()}


def open_value(value: Any, *, where: str = "value") -> Any:
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


_reveal = reveal  # `masked` takes a parameter of that name


# -- what a reader sees: one door for the API, the pages, the admin, downloads and webhooks ----

# Keys whose values are never shown to a reader without ``orchestration.view_sensitive``, at any
# depth. Override with the SIGNOFF_MASKED_KEYS setting (a regular expression, matched
# case-insensitively).
DEFAULT_MASKED_KEYS = (
    r"passw(or)?d|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|authori[sz]ation|credential|cookie|session|card[_-]?(number|no)|^cvv$|^cvc$|iban|^ssn$"
)


@lru_cache(maxsize=1)
def masked_keys() -> re.Pattern[str]:
    return re.compile(getattr(settings, "SIGNOFF_MASKED_KEYS", DEFAULT_MASKED_KEYS), re.I)


@lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Readers see the same few keys on every row: remember the answer per key.
    return masked_keys().search(key) is not None


@receiver(setting_changed)
def _forget_masked_keys(*, setting: str, **kwargs: Any) -> None:
    if setting == "SIGNOFF_MASKED_KEYS":
        masked_keys.cache_clear()
        _is_secret_key.cache_clear()


def masked(value: Any, *, reveal: bool = False) -> Any:
    """``value`` as a person may see it. Sealed fields are opened for holders of
    ``orchestration.view_sensitive`` (``reveal``) and masked for everyone else, who also never
    see the values of keys that look secret (passwords, tokens, card numbers...) at any
    depth. Every reader uses this: the API, the status page, the admin, the history
    downloads, the inbox and webhook payloads."""
    if reveal:
        return _reveal(value)
    if not isinstance(value, dict | list):
        return value  # a scalar is never sealed (a sealed value is a dict) and has no keys
    return _masked(value)


def _masked(value: Any) -> Any:
    # Sealed values and secret-looking keys, in one walk.
    if isinstance(value, dict):
        if is_sealed(value):
            return MASK
        return {
            k: (MASK if isinstance(k, str) and _is_secret_key(k) else _masked(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


# -- derived values, masked when written ----------------------------------------------------------


def mask_paths(
    input: Mapping[str, Any], outputs: Mapping[str, Any], sensitive: Iterable[str]
) -> tuple[Any, dict[str, Any]]:
    """An opened context's input and step outputs with every sensitive field as :data:`MASK`:
    what text shown to people (approval titles and fields, mail) is rendered from."""
    sensitive = list(sensitive)
    fields = input_fields(sensitive)
    shown_input: Any = input
    if fields and isinstance(input, Mapping):
        shown_input = {k: (MASK if k in fields else v) for k, v in input.items()}
    shown_outputs = {}
    for step, output in outputs.items():
        step_fields = output_fields(sensitive, step)
        if step_fields and isinstance(output, Mapping):
            output = {k: (MASK if k in step_fields else v) for k, v in output.items()}
        shown_outputs[step] = output
    return shown_input, shown_outputs


def sealed_in(data: Any) -> Iterator[dict[str, str]]:
    """Every sealed value inside ``data``, at any depth."""
    if is_sealed(data):
        yield data
    elif isinstance(data, dict):
        for v in data.values():
            yield from sealed_in(v)
    elif isinstance(data, list):
        for v in data:
            yield from sealed_in(v)


# Shorter values are not looked for in text: a two-character match says nothing about whom.
SCRUB_MIN_LENGTH = 3


def _texts(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _texts(v, found)
    elif isinstance(value, list):
        for v in value:
            _texts(v, found)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        found.add(value if isinstance(value, str) else json.dumps(value))


def plaintexts(*data: Any) -> set[str]:
    """The texts (strings and numbers, at any depth) of every sealed value inside ``data``,
    opened. Raises :class:`SealError` when one cannot be opened."""
    found: set[str] = set()
    for item in data:
        for token in sealed_in(item):
            _texts(open_value(token), found)
    return found


class Scrubber:
    """Replaces every copy of some plaintexts (as given, HTML-escaped, JSON-escaped or quoted
    by ``repr``) with :data:`MASK` in text and in JSON values, counting the copies."""

    def __init__(self, texts: Iterable[str]) -> None:
        variants: set[str] = set()
        for text in texts:
            if len(text.strip()) < SCRUB_MIN_LENGTH:
                continue
            variants |= {
                text,
                html.escape(text),
                html.escape(text, quote=False),
                json.dumps(text)[1:-1],
                json.dumps(text, ensure_ascii=False)[1:-1],
                repr(text)[1:-1],
            }
        ordered = sorted((v for v in variants if v), key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self.pattern is not None

    def text(self, value: str) -> tuple[str, int]:
        if self.pattern is None or not value:
            return value, 0
        return self.pattern.subn(MASK, value)

    def json(self, value: Any) -> tuple[Any, int]:
        """``value`` (JSON: keys and string values) scrubbed, and how many copies went."""
        if self.pattern is None:
            return value, 0
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            out, count = {}, 0
            for k, v in value.items():
                key, n_key = self.text(k) if isinstance(k, str) else (k, 0)
                out[key], n = self.json(v)
                count += n + n_key
            return out, count
        if isinstance(value, list):
            items = [self.json(v) for v in value]
            return [v for v, _ in items], sum(n for _, n in items)
        if isinstance(value, int | float) and not isinstance(value, bool):
            text, n = self.text(json.dumps(value))
            return (text if n else value), n
        return value, 0


def scrubber_for(*data: Any, extra: Iterable[str] = ()) -> Scrubber:
    """A :class:`Scrubber` for the sealed values inside ``data`` (and the ``extra`` texts). A
    value that cannot be opened (a key is missing) is logged and left out: what it hides
    cannot be looked for."""
    found: set[str] = set(extra)
    for item in data:
        for token in sealed_in(item):
            try:
                _texts(open_value(token), found)
            except SealError as exc:
                log.warning("a sealed value is not scrubbed from derived text: %s", exc)
    return Scrubber(found)
