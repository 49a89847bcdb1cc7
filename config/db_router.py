"""The database router for the read replica, and the middleware that keeps read-your-writes.

``DATABASE_REPLICA_URL`` set: the settings add the alias ``replica`` and this router. Reads go
to the replica only on the paths chosen for it (``orchestration.replica.use_replica``: the
inbox lists, the status pages, the history exports); everything else — other reads, every
write, every ``select_for_update`` (Django asks ``db_for_write`` for it), every read inside a
transaction — goes to the primary. README, "Read replica".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.http import HttpRequest, HttpResponse

from orchestration.replica import REPLICA_ALIAS, current_read_alias, record_write

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class ReplicaRouter:
    """Reads inside ``use_replica()`` to the replica; all else to the primary."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        return current_read_alias() or DEFAULT_DB_ALIAS

    def db_for_write(self, model: type, **hints: Any) -> str:
        # Explicit, so an object read from the replica is never saved there.
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        both = {obj1._state.db, obj2._state.db}
        return True if both <= {DEFAULT_DB_ALIAS, REPLICA_ALIAS} else None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        # The replica gets its schema by streaming from the primary.
        return False if db == REPLICA_ALIAS else None


class ReadYourWritesMiddleware:
    """After a request that may have written (not GET, HEAD, OPTIONS or TRACE) by a signed-in
    user, keep the primary's WAL position for that user (``record_write``): their next reads
    use the replica only once it has replayed that far. API users are signed in by DRF inside
    the view, which sets ``request.user`` on the request this middleware sees afterwards."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.method not in SAFE_METHODS:
            record_write(getattr(request, "user", None))
        return response
