"""Primary keys of new instances and attachments: UUIDv7 (RFC 9562).

A UUIDv7 begins with the Unix time in milliseconds, so ids made one after another are close
together and a new row's entries land at the right-hand end of the primary key and of every
index that starts with the instance id (steps by ``(instance, name)``, events by
``(instance, seq)``) instead of on a random page of a large index. On full tables that is the
difference between touching a few hot pages per start and reading (and, after a checkpoint,
writing whole into the WAL) several cold ones (README "Cost as the work grows").

The id still is a UUID (the column type and every URL are unchanged; older rows keep their
random v4 ids). It shows when it was made to the millisecond, which the instance's own
``created`` field shows anyway to whoever may see it.
"""

from __future__ import annotations

import uuid

from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    """A new time-ordered id (a standard :class:`uuid.UUID`, version 7)."""
    return uuid7()
