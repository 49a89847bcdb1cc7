"""Nobody waits forever: the beat sweepers of approval requests (reminders, escalations,
expiry, idle claims; the daily digests live in :mod:`approvals.digests`).

Same rules as the engine's sweepers: each request goes through the per-row frame of
:mod:`approvals.sweep_rows` (due ids from partial indexes, one transaction per request that
locks its instance with ``skip_locked`` and re-checks the request under the lock). The
``next_*`` / ``level`` columns move *before* any mail is queued, and the mail is an outbox row
in the same transaction: two sweeps at once, or a sweep repeated after a crash, never remind
or escalate twice.

What an escalation does is defined once (:mod:`approvals.escalation`). On PostgreSQL it is
batched (a backlog of thousands must move in well under a second): per chunk one transaction
locks the due requests *and* their instances (``FOR NO KEY UPDATE OF instance, request SKIP
LOCKED``, the instance first: the engine's one lock order), then one statement per escalation
level carries the level's plan out for all of them (:mod:`approvals.escalation_sql`), writing
one outbox row per newly assigned person in status ``rendering``. After the commit a Celery
task per slice of those rows (:func:`approvals.notifications.mails_render`) issues the action
tokens, renders the mails and queues their delivery; rows whose task was lost are dispatched
again by the next sweep. Levels the batch cannot express (an assignees function,
``replace``) and SQLite use the per-row path.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from integrations.mail import unrendered_email_ids
from orchestration import engine
from orchestration.definitions import registry
from orchestration.journal import announce_events
from orchestration.models import Event, WorkflowInstance
from orchestration.vendor import is_postgresql

from . import escalation_timers, notifications
from .definitions import ApprovalStep
from .digests import sweep_digests
from .escalation import escalate_row, escalation_plan, next_level, set_based
from .escalation_sql import escalate_set, lock_due_sql
from .models import ApprovalRequest, RequestState
from .services import _before_due, request_outcome, timer_at
from .sweep_rows import due_rows, each_row

__all__ = [
    "escalations_batch",
    "mails_dispatch",
    "mails_redispatch",
    "sweep_all",
    "sweep_claims",
    "sweep_digests",
    "sweep_escalations",
    "sweep_expiry",
    "sweep_reminders",
]

log = logging.getLogger("signoff.sweepers")
# The render task (:mod:`approvals.tasks`, loaded by the app's ready()), sent by name from
# Celery's registry: the tasks call this module, so this module does not import them.
RENDER_MAILS = "approvals.render_mails"


def sweep_reminders(*, now: datetime | None = None, batch: int | None = None) -> int:
    now = now or timezone.now()

    def remind(
        locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
    ) -> bool:
        step = locked.step_by_id(request.step_run_id)
        request.reminders_sent += 1
        request.last_reminded_at = now
        request.next_reminder_at = (
            _before_due(request, timer_at(spec, now, spec.remind_every)) if spec else None
        )
        request.save(update_fields=["reminders_sent", "last_reminded_at", "next_reminder_at"])
        locked.record("approval_reminded", step=step, data={"reminder": request.reminders_sent})
        notifications.notify_assignees(
            request,
            notifications.current_assignee_users(request),
            now,
            kind="reminder",
            serial=request.reminders_sent,
        )
        return True

    rows = due_rows("next_reminder_at", now, batch)
    return each_row("reminders", rows, remind, "next_reminder_at", now)


# -- escalations ----------------------------------------------------------------------------------

ESCALATION_BATCH = 10_000  # due requests one sweep takes on (SIGNOFF_ESCALATION_BATCH)
ESCALATION_CHUNK = 2_000  # requests per transaction (SIGNOFF_ESCALATION_CHUNK)
ESCALATION_CONNECTIONS = 2  # chunks at once, each on its own connection
RENDER_SLICE = 250  # outbox rows per render task
# A ``rendering`` row older than this had its render task lost (or its worker died): the
# next sweep sends the task again (rendering twice is impossible: see mails_render).
RENDER_GRACE = timedelta(seconds=60)
LOCK_PLANNER = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
PLANNER_BACK = "SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on"
LOCK_DUE_SQL = lock_due_sql()  # parameters: now, now, request ids left out, limit


def _escalate_rows(rows: list[tuple[int, int]], now: datetime) -> int:
    return each_row("escalations", rows, escalate_row, "next_escalation_at", now)


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def _batched() -> bool:
    return is_postgresql(connection) and getattr(settings, "SIGNOFF_ESCALATION_BATCHED", True)


def sweep_escalations(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Escalate every request whose next level is due (at most ``batch``); returns how many
    were escalated. On PostgreSQL the batched path (module doc); elsewhere one transaction per
    request. Either way: each request is escalated once however many sweeps run at once, and
    a request decided first is not escalated."""
    now = now or timezone.now()
    if not _batched():
        escalation_timers.timers_remove_stale(now)
        limit = batch or settings.SIGNOFF_SWEEP_BATCH
        return _escalate_rows(escalation_timers.due_rows(now, limit), now)
    return escalations_batch(now=now, batch=batch)


# -- escalations, batched (PostgreSQL) ------------------------------------------------------------


def escalations_batch(
    *,
    now: datetime,
    batch: int | None = None,
    chunk: int | None = None,
    connections: int | None = None,
) -> int:
    """The batched escalation sweep (PostgreSQL). Phase 1 here, per chunk one transaction:
    lock, re-check, set-based writes (module doc); after each commit the chunk's render tasks
    are sent, after the last one the events are announced (``event_committed``, as the
    journal does after its commit). Also sends again the render tasks of ``rendering`` mails
    older than :data:`RENDER_GRACE`. Returns how many requests were escalated.

    ``connections`` (``SIGNOFF_ESCALATION_CONNECTIONS``, default 2): chunks run on that many
    database connections at once, each in its own thread; ``SKIP LOCKED`` gives each chunk
    rows no other holds, so the connections never wait on each other and a request is
    escalated once. Inside a transaction (a caller's ``atomic``, a test's) one connection:
    others could not see its rows."""
    batch = batch or _setting("SIGNOFF_ESCALATION_BATCH", ESCALATION_BATCH)
    chunk = chunk or _setting("SIGNOFF_ESCALATION_CHUNK", ESCALATION_CHUNK)
    workers = connections or _setting("SIGNOFF_ESCALATION_CONNECTIONS", ESCALATION_CONNECTIONS)
    mails_redispatch(now=now)
    escalation_timers.timers_remove_stale(now)
    sweep = _ChunkedSweep(now=now, batch=batch, chunk=chunk)
    if workers > 1 and not connection.in_atomic_block:
        threads = [
            threading.Thread(target=sweep.run_on_own_connection, name=f"escalations-{n}")
            for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        sweep.run()
    if sweep.announce:
        # Outside a transaction (beat) this runs at once; inside one, after its commit.
        transaction.on_commit(lambda: announce_events(sweep.announce))
    if sweep.escalated:
        log.info("sweeper escalations acted on %d approval requests", sweep.escalated)
    return sweep.escalated


class _ChunkedSweep:
    """The chunks of one batched sweep, shared by the connections that run them: the budget
    (``batch`` rows), the rows left to the per-row path, the events to announce."""

    def __init__(self, *, now: datetime, batch: int, chunk: int) -> None:
        self.now, self.batch, self.chunk = now, batch, chunk
        self.taken = 0  # rows reserved by chunks so far (at most ``batch``)
        self.escalated = 0
        self.excluded: list[int] = []  # left to the per-row path in this run
        self.announce: list[Event] = []
        self.finished = False
        self.lock = threading.Lock()

    def _reserve(self) -> int:
        with self.lock:
            size = 0 if self.finished else min(self.chunk, self.batch - self.taken)
            self.taken += size
            return size

    def _settle(self, reserved: int, rows: int, acted: int, events: list[Event]) -> None:
        with self.lock:
            self.taken -= reserved - rows
            self.escalated += acted
            self.announce += events
            if rows < reserved:
                self.finished = True  # fewer due rows than asked for: none left unlocked

    def run_on_own_connection(self) -> None:
        try:
            self.run()
        except Exception:  # noqa: BLE001 - a thread's failure must not pass silently
            log.exception("escalation sweep connection failed")
        finally:
            connection.close()

    def run(self) -> None:
        while size := self._reserve():
            rows, acted, events = self._one_chunk(size)
            self._settle(size, len(rows), acted, events)
            if not rows:
                break

    def _one_chunk(self, size: int) -> tuple[list[tuple[Any, ...]], int, list[Event]]:
        with self.lock:
            excluded = list(self.excluded)
        fallback: list[tuple[int, int]] = []
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    # A few thousand rows: JIT compilation costs more than it saves (the
                    # planner's estimates for the unnest() arrays would set it off).
                    cursor.execute("SET LOCAL jit = off")
                    # Walk the due timers in order and stop at the limit: with a large
                    # backlog the planner would hash-join every due row, then sort them
                    # (EXPLAIN at 50,000 due: 242 ms; nested loops: 20 ms).
                    cursor.execute(LOCK_PLANNER)
                    cursor.execute(lock_due_sql(), [self.now, self.now, excluded, size])
                    rows = cursor.fetchall()
                    cursor.execute(PLANNER_BACK)
                if not rows:
                    return [], 0, []
                acted, fallback, events, mail_ids = _escalate_chunk(rows)
                transaction.on_commit(lambda ids=mail_ids: mails_dispatch(ids))
        except Exception:  # noqa: BLE001 - one bad chunk: its rows go the per-row way
            log.exception("batched escalation failed; its rows go through the per-row path")
            rows = escalation_timers.due_rows(self.now, size, excluded)
            if not rows:
                return [], 0, []
            acted, events = 0, []
            fallback = [(r[0], r[1]) for r in rows]
        if fallback:
            with self.lock:
                self.excluded += [request_id for request_id, _ in fallback]
            acted += _escalate_rows(fallback, self.now)
        return rows, acted, events


def _escalate_chunk(
    rows: list[tuple[Any, ...]],
) -> tuple[int, list[tuple[int, int]], list[Event], list[int]]:
    """Escalate locked rows level by level, each level's plan in one statement: (escalated,
    rows for the per-row path, events to announce, outbox rows to render)."""
    at = timezone.now()
    groups: dict[tuple[str, int, str, int], list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        groups[(row[6], row[7], row[4], row[2])].append(row)
    # The instances as locked (fields in model order), for the announcements' payloads;
    # other fields load on access.
    instances = {
        row[5]: WorkflowInstance.from_db(
            "default", ["id", "workflow", "version", "state", "business_key"], row[5:10]
        )
        for row in rows
    }
    escalated, fallback, events, mail_ids = 0, [], [], []
    for (workflow, version, step_name, reached), members in groups.items():
        definition = registry.get(workflow, version)
        spec = definition.steps.get(step_name) if definition else None
        spec = spec if isinstance(spec, ApprovalStep) else None
        level = next_level(spec, reached)
        if level is None:
            ids = [r[0] for r in members]
            ApprovalRequest.objects.filter(pk__in=ids).update(next_escalation_at=None)
            escalation_timers.timers_clear(ids)
            continue
        if not set_based(level):
            fallback += [(r[0], r[1]) for r in members]
            continue
        changed, mails, written = escalate_set(
            escalation_plan(spec, reached), members, instances, at
        )
        escalated += changed
        mail_ids += mails
        events += written
    return escalated, fallback, events, mail_ids


def mails_dispatch(email_ids: list[int]) -> None:
    """Send the render tasks for ``rendering`` outbox rows, a slice each (after commit). A
    broker failure is logged: the next sweep sends them again."""
    queue = getattr(settings, "SIGNOFF_MAIL_RENDER_QUEUE", None)
    options = {"queue": queue} if queue else {}
    render_mails = current_app.tasks[RENDER_MAILS]
    try:
        with render_mails.app.producer_or_acquire() as producer:
            for i in range(0, len(email_ids), RENDER_SLICE):
                render_mails.apply_async(
                    (email_ids[i : i + RENDER_SLICE],), producer=producer, **options
                )
    except Exception:  # noqa: BLE001 - the next sweep dispatches them again
        log.warning("render tasks not sent; the next sweep sends them", exc_info=True)


def mails_redispatch(*, now: datetime, limit: int = 20_000) -> int:
    """Send again the render tasks of mails still ``rendering`` after :data:`RENDER_GRACE`
    (task lost, worker killed mid-render). Returns how many rows."""
    ids = unrendered_email_ids(written_before=now - RENDER_GRACE, limit=limit)
    if ids:
        log.warning("%d mails still unrendered; render tasks sent again", len(ids))
        mails_dispatch(ids)
    return len(ids)


# -- expiry and claims ----------------------------------------------------------------------------


def sweep_expiry(*, now: datetime | None = None, batch: int | None = None) -> int:
    now = now or timezone.now()

    def expire(
        locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
    ) -> bool:
        step = locked.step_by_id(request.step_run_id)
        action = spec.on_expire if spec else "reject"
        request.expire()
        request.resolved_at = now
        request.next_reminder_at = None
        request.next_escalation_at = None
        request.save(
            update_fields=["state", "resolved_at", "next_reminder_at", "next_escalation_at"]
        )
        escalation_timers.timer_follow(request)
        locked.record("approval_expired", step=step, data={"on_expire": action})
        notifications.tokens_supersede(
            request, set(request.tokens.values_list("user_id", flat=True)), now
        )
        _expire_action(locked, request, step, spec, action)
        notifications.notify_requester(request, kind="expired", extra={"action": action})
        return True

    return each_row("expiry", due_rows("due_at", now, batch), expire, "due_at", now)


def _expire_action(
    locked: engine.LockedInstance,
    request: ApprovalRequest,
    step: Any,
    spec: ApprovalStep | None,
    action: str,
) -> None:
    if step is None or step.state != "waiting" or locked.instance.state != "running":
        return
    output = request_outcome(
        request, list(request.decisions.select_related("decided_by", "assignee"))
    )
    output["expired"] = True
    error = {
        "type": "signoff.ApprovalExpired",
        "message": f"no decision by {request.due_at.isoformat()}",
        "traceback": "",
    }
    if action == "approve":
        output["decision"] = "approved"
        locked.resolve_step(step, output)
    elif action == "cancel_instance":
        locked.cancel_instance("approval expired")
    elif action == "reject" and spec is not None and spec.on_reject == "continue":
        output["decision"] = "rejected"
        locked.resolve_step(step, output)
    else:  # reject (fails by default) or fail
        step.output = output
        locked.fail_step(step, error, reason="expired")


def sweep_claims(*, now: datetime | None = None, batch: int | None = None) -> int:
    """End the claims whose claimant stayed idle past their expiry (pending requests only,
    through the partial index ``approval_claim_expiry``): per request its instance locked
    with ``skip_locked``, the claim re-checked under the lock (renewed, released or taken
    over since we looked: left alone), ``approval_claim_expired`` written. Returns how many
    claims ended."""
    from .claims import claim_expire_if_idle

    now = now or timezone.now()
    due = list(
        ApprovalRequest.objects.filter(
            state=RequestState.PENDING, claim_state="claimed", claim_expires_at__lte=now
        )
        .order_by("claim_expires_at")
        .values_list("pk", "step_run_id")[: batch or settings.SIGNOFF_SWEEP_BATCH]
    )

    def expire(
        locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
    ) -> bool:
        step = locked.step_by_id(request.step_run_id)
        return claim_expire_if_idle(locked, request, step, now)

    return each_row("claims", due, expire, "claim_expires_at", now)


def sweep_all(*, now: datetime | None = None) -> dict[str, int]:
    return {
        "reminders": sweep_reminders(now=now),
        "escalations": sweep_escalations(now=now),
        "expiry": sweep_expiry(now=now),
    }
