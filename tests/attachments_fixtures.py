"""Sample files and a storage folder of its own for the attachment tests (imported by them)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = _png()
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
TEXT = "Taxi to the airport, 42 EUR — receipt to follow\n".encode()
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 120
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 120
BINARY = bytes(range(256))


def upload(name: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
    """A file as a multipart upload sends it (the client's type is never believed)."""
    return SimpleUploadedFile(name, data, content_type=content_type)


def storage_settings(location: Path) -> dict[str, Any]:
    return {
        **settings.STORAGES,
        "attachments": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location), "base_url": None},
        },
    }


def stored_keys(location: Path) -> list[str]:
    """Every file in the storage folder, as keys."""
    return sorted(str(p.relative_to(location)) for p in location.rglob("*") if p.is_file())


@pytest.fixture(name="files_dir")
def files_dir_fixture(tmp_path: Path) -> Iterator[Path]:
    """The attachments storage, in a folder of this test's own."""
    location = tmp_path / "files"
    with override_settings(STORAGES=storage_settings(location)):
        yield location
