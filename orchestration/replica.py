"""Read paths chosen for the read replica, with read-your-writes for the person who acted.

With ``DATABASE_REPLICA_URL`` set, the settings add a database alias ``replica`` and the
router (``config.db_router.ReplicaRouter``) sends a read to it only inside ``use_replica()``,
which the inbox lists, the status pages and the history exports enter (``@replica_reads``).
Every other read, every write and every lock (``select_for_update`` is a write for the
router) goes to the primary, and so does every read inside a transaction on the primary.

Read-your-writes: after a request that may have written (any method but GET, HEAD, OPTIONS,
TRACE) by a signed-in user, ``record_write`` keeps the primary's WAL position
(``pg_current_wal_lsn()``, after the request's commits) in the cache under that user. A
chosen read path then uses the replica for that user only once the replica has replayed past
it (``pg_last_wal_replay_lsn()``); until then, and whenever the replica cannot answer, it
reads from the primary. So the maker of a decision never sees it pending; others may, for as
long as the replica lags, and a decision they then try is locked and checked on the primary
("already decided"). README, "Read replica".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.http import StreamingHttpResponse

logger = logging.getLogger(__name__)

REPLICA_ALIAS = "replica"
_CACHE_PREFIX = "signoff:replica:lsn:"
# The alias that reads go to inside use_replica() (None: the primary).
_read_alias: ContextVar[str | None] = ContextVar("signoff_replica_read_alias", default=None)

F = TypeVar("F", bound=Callable[..., Any])


def replica_alias() -> str | None:
    """The replica's alias when replica reads are on (``SIGNOFF_REPLICA_READS`` and an alias
    ``replica`` in ``DATABASES``), else None."""
    if not getattr(settings, "SIGNOFF_REPLICA_READS", False):
        return None
    return REPLICA_ALIAS if REPLICA_ALIAS in settings.DATABASES else None


def current_read_alias() -> str | None:
    """Where the router sends a read now: the replica inside ``use_replica()`` (outside any
    transaction on the primary), else None (the primary)."""
    alias = _read_alias.get()
    if alias is None or connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return None
    return alias


def lsn_value(lsn: str) -> int:
    """A PostgreSQL LSN (``"16/B374D848"``) as a number, for comparing."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def _user_key(user: Any) -> str | None:
    if user is None or not getattr(user, "is_authenticated", False) or user.pk is None:
        return None
    return f"{_CACHE_PREFIX}{user.pk}"


def record_write(user: Any) -> str | None:
    """Keep the primary's current WAL position for ``user`` (who may just have written): the
    replica serves them again once it has replayed that far. Returns the position, or None
    when replica reads are off, the user is anonymous, or the primary did not answer."""
    key = _user_key(user)
    if key is None or replica_alias() is None:
        return None
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()::text")
            lsn = cursor.fetchone()[0]
    except DatabaseError:
        logger.warning("replica: could not read the primary's WAL position", exc_info=True)
        return None
    cache.set(key, lsn, timeout=getattr(settings, "SIGNOFF_REPLICA_MARK_SECONDS", 3600))
    return lsn


def replayed_lsn(alias: str = REPLICA_ALIAS) -> str | None:
    """How far the replica has replayed (``pg_last_wal_replay_lsn()``); None on a server that
    is not a standby."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_last_wal_replay_lsn()::text")
        return cursor.fetchone()[0]


def replica_for(user: Any) -> str | None:
    """The alias to read from for ``user`` now: the replica, if it is on, answers, and has
    replayed the user's last write; otherwise None (the primary)."""
    alias = replica_alias()
    if alias is None or connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return None
    key = _user_key(user)
    mark = cache.get(key) if key else None
    try:
        replayed = replayed_lsn(alias)
    except DatabaseError:
        logger.warning("replica: unreachable, reading from the primary", exc_info=True)
        connections[alias].close()
        return None
    if replayed is None:  # not a standby (a promoted replica): as current as the primary
        return alias
    if mark and lsn_value(replayed) < lsn_value(mark):
        return None
    return alias


@contextmanager
def use_replica(user: Any = None) -> Iterator[str | None]:
    """Reads inside go to the replica when ``replica_for(user)`` allows it; yields the alias
    chosen (None: the primary)."""
    alias = replica_for(user)
    token = _read_alias.set(alias)
    try:
        yield alias
    finally:
        _read_alias.reset(token)


@contextmanager
def use_primary() -> Iterator[None]:
    """Reads inside go to the primary, even within ``use_replica()``."""
    token = _read_alias.set(None)
    try:
        yield
    finally:
        _read_alias.reset(token)


def _streamed(chunks: Iterable[Any], alias: str | None) -> Iterator[Any]:
    # A streamed body is produced after the view returned: each chunk is read with the
    # alias chosen for the request, without leaking it to the server between chunks.
    iterator = iter(chunks)
    while True:
        token = _read_alias.set(alias)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            _read_alias.reset(token)
        yield chunk


def _request_of(args: tuple[Any, ...]) -> Any:
    # A function view gets (request, ...); a DRF method (self, request, ...).
    for arg in args[:2]:
        if hasattr(arg, "user") and hasattr(arg, "method"):
            return arg
    raise TypeError("replica_reads: the view has no request argument")


def replica_reads(view: F) -> F:
    """Run a read-only view (a function view or an API view's ``get``) with
    ``use_replica(request.user)``; a streamed response reads with the same choice."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = _request_of(args)
        with use_replica(request.user) as alias:
            response = view(*args, **kwargs)
            if isinstance(response, StreamingHttpResponse) and alias is not None:
                response.streaming_content = _streamed(response.streaming_content, alias)
            return response

    return wrapper  # type: ignore[return-value]
