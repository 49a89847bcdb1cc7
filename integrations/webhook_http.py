"""The HTTP side of outbound webhooks (and alert webhooks): an httpx client and the guard that
keeps deliveries away from internal services.

- One :func:`new_client` per delivery batch: its connection pool is reused by every delivery of
  the batch. TLS certificates are verified, redirects are not followed (a redirect is an
  answer, not a delivery), proxies from the environment are ignored, and each phase has its
  own timeout (``SIGNOFF_WEBHOOK_CONNECT_TIMEOUT``, ``SIGNOFF_WEBHOOK_TIMEOUT`` for reads and
  writes, ``SIGNOFF_WEBHOOK_POOL_TIMEOUT``) besides a bound on the whole attempt
  (``SIGNOFF_WEBHOOK_TOTAL_TIMEOUT``). A response body is read up to
  ``SIGNOFF_WEBHOOK_MAX_RESPONSE_BYTES``, never further.
- The guard resolves the host itself at connect time and connects to the address it checked,
  so a name that resolves to a loopback, link-local, private or otherwise non-global address
  is refused even when it resolved elsewhere a moment ago (DNS rebinding). Only
  ``SIGNOFF_WEBHOOK_ALLOW_PRIVATE`` lets such targets through (tests, the embedded demo).
  :func:`check_target` runs the same check when a subscription is saved.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings
from httpcore._backends.sync import SyncStream

USER_AGENT = "Signoff-Webhooks/1"
ERROR_EXCERPT = 500


class TargetRefused(Exception):
    """The URL's host is (or resolves to) an address deliveries may not reach."""


def allow_private() -> bool:
    return bool(getattr(settings, "SIGNOFF_WEBHOOK_ALLOW_PRIVATE", False))


def is_refused_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is loopback, link-local, private, shared, reserved,
    multicast or unspecified: anything but a global unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` for a TCP connection to ``host``, refusing (``TargetRefused``) when any
    of its addresses is refused and private targets are not allowed."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not allow_private():
        for info in infos:
            address = str(info[4][0])
            if is_refused_address(address):
                raise TargetRefused(
                    f"{host} resolves to {address}, a loopback, link-local or private address "
                    "(SIGNOFF_WEBHOOK_ALLOW_PRIVATE is off)"
                )
    return infos


def check_target(url: str) -> None:
    """The save-time check of a webhook URL: ``TargetRefused`` with a message fit for a form
    when its host is, or resolves to, a refused address, or does not resolve at all."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("Use an http:// or https:// URL with a host.")
    if allow_private():
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused("The URL's port is not a number from 0 to 65535.") from None
    try:
        resolve(parts.hostname, port)
    except socket.gaierror:
        raise TargetRefused(f"{parts.hostname} does not resolve to an address.") from None


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's network backend, connecting only to the addresses :func:`resolve` vetted."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = resolve(host, port)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"{host}: {exc}") from exc
        last: Exception | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except TimeoutError as exc:
                sock.close()
                last = httpcore.ConnectTimeout(str(exc) or "connect timed out")
                continue
            except OSError as exc:
                sock.close()
                last = httpcore.ConnectError(str(exc))
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
            return SyncStream(sock)
        raise last or httpcore.ConnectError(f"{host}: no address")


def timeouts() -> httpx.Timeout:
    io = float(getattr(settings, "SIGNOFF_WEBHOOK_TIMEOUT", 5))
    return httpx.Timeout(
        connect=float(getattr(settings, "SIGNOFF_WEBHOOK_CONNECT_TIMEOUT", 3)),
        read=io,
        write=io,
        pool=float(getattr(settings, "SIGNOFF_WEBHOOK_POOL_TIMEOUT", 5)),
    )


def new_client() -> httpx.Client:
    """A client for one delivery batch (close it, or use it as a context manager)."""
    transport = httpx.HTTPTransport(verify=True, trust_env=False, retries=0)
    # httpx offers no public way to pass a network backend; the pool is httpcore's.
    transport._pool._network_backend = _GuardedBackend()
    return httpx.Client(
        transport=transport,
        timeout=timeouts(),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


@dataclass(frozen=True)
class Outcome:
    """One POST: the status code (None without a response), an error text (empty on 2xx), and
    whether the target was refused (no request was made; retrying will not help)."""

    status_code: int | None
    error: str
    refused: bool = False


def send(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
    """POST ``body`` once through ``client``. Never raises for network trouble."""
    limit = int(getattr(settings, "SIGNOFF_WEBHOOK_MAX_RESPONSE_BYTES", 64 * 1024))
    total = float(getattr(settings, "SIGNOFF_WEBHOOK_TOTAL_TIMEOUT", 30))
    started = time.monotonic()
    try:
        with client.stream("POST", url, content=body, headers=headers) as response:
            code = response.status_code
            received = b""
            for chunk in response.iter_bytes():
                received += chunk
                if len(received) >= limit:
                    break  # enough: the rest is not read (the connection is closed)
                if time.monotonic() - started > total:
                    return Outcome(code, f"response body too slow (over {total:g} s)")
    except TargetRefused as exc:
        return Outcome(None, f"refused: {exc}", refused=True)
    except httpx.TimeoutException as exc:
        phase = type(exc).__name__.removesuffix("Timeout").lower() or "request"
        return Outcome(None, f"{type(exc).__name__}: {phase} timed out")
    except httpx.InvalidURL as exc:
        return Outcome(None, f"refused: invalid URL ({exc})", refused=True)
    except (httpx.HTTPError, OSError) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}")
    if 200 <= code < 300:
        return Outcome(code, "")
    excerpt = received[:ERROR_EXCERPT].decode("utf-8", "replace").strip()
    error = f"HTTP {code}" + (f": {excerpt}" if excerpt else "")
    if 300 <= code < 400:
        error = f"HTTP {code} (redirects are not followed)"
    return Outcome(code, error)
