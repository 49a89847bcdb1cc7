"""Nobody waits forever: reminders, escalations and expiry of approval requests.

Same rules as the engine's sweepers: due ids from partial indexes (cost grows with due rows
only), then one transaction per request that locks its instance with ``skip_locked`` (an
instance another sweep or a decision holds is left for the next run) and re-checks the request
under the lock. The ``next_*`` / ``level`` columns move *before* any mail is queued, and the
mail is an outbox row in the same transaction: two sweeps at once, or a sweep repeated after a
crash, never remind or escalate twice.

Escalations on PostgreSQL are batched (a backlog of thousands must move in well under a
second): per chunk one transaction locks the due requests *and* their instances
(``FOR NO KEY UPDATE OF instance, request SKIP LOCKED``, the instance first: the engine's one
lock order), then one statement per escalation level writes the new level and timer, the added
assignees, the instances' ``last_seq``, exactly one ``approval_escalated`` event per request
(gap-free seq, as the journal numbers them) and one outbox row per newly assigned person in
status ``rendering``. After the commit a Celery task per slice of those rows
(:func:`approvals.notifications.mails_render`) issues the action tokens, renders the mails and
queues their delivery; rows whose task was lost are dispatched again by the next sweep.
Levels the batch cannot express (an assignees function, ``replace``) and SQLite use the
per-row path.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from integrations.models import OutboundEmail
from orchestration import engine
from orchestration.definitions import registry
from orchestration.journal import announce_events
from orchestration.models import Event, WorkflowInstance
from orchestration.vendor import is_postgresql

from . import notifications, selectors
from .definitions import ApprovalStep
from .models import ApprovalRequest, MailPreference, PastAssignee, RequestState
from .services import _before_due, past_assignees_record, request_outcome, timer_at

log = logging.getLogger("signoff.sweepers")
User = get_user_model()


def _due(column: str, now: datetime, batch: int | None) -> list[tuple[int, int]]:
    return list(
        ApprovalRequest.objects.filter(state=RequestState.PENDING, **{f"{column}__lte": now})
        .order_by(column)
        .values_list("pk", "step_run_id")[: batch or settings.SIGNOFF_SWEEP_BATCH]
    )


def _each(
    name: str,
    rows: list[tuple[int, int]],
    act: Callable[[engine.LockedInstance, ApprovalRequest, ApprovalStep | None], bool],
    column: str,
    now: datetime,
) -> int:
    done = 0
    for request_id, step_run_id in rows:
        try:
            with transaction.atomic():
                locked = engine.lock_instance(
                    step_run_id=step_run_id, actor="sweeper", skip_locked=True
                )
                if locked is None:
                    continue
                request = (
                    ApprovalRequest.objects.select_for_update(of=("self",), no_key=True)
                    .select_related("requester")
                    .get(pk=request_id)
                )
                due = getattr(request, column)
                if request.state != RequestState.PENDING or due is None or due > now:
                    continue  # decided or handled since we looked
                step = locked.step_by_id(step_run_id)
                spec = locked.definition.steps.get(step.name) if locked.definition else None
                if act(locked, request, spec if isinstance(spec, ApprovalStep) else None):
                    done += 1
                locked.journal.flush()
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("sweeper %s failed on approval request %s", name, request_id)
    if done:
        log.info("sweeper %s acted on %d approval requests", name, done)
    return done


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

    return _each("reminders", _due("next_reminder_at", now, batch), remind, "next_reminder_at", now)


def _escalate(
    locked: engine.LockedInstance, request: ApprovalRequest, spec: ApprovalStep | None
) -> bool:
    """One request's next escalation level, under its instance's lock (the per-row path)."""
    now = locked.journal.now
    step = locked.step_by_id(request.step_run_id)
    if spec is None or request.level >= len(spec.escalate):
        request.next_escalation_at = None
        request.save(update_fields=["next_escalation_at"])
        return False
    level = spec.escalate[request.level]
    usernames, group_names = level.resolve(engine.step_context(locked.journal, step))
    users = list(User.objects.filter(username__in=usernames, is_active=True))
    groups = list(Group.objects.filter(name__in=group_names))
    before = {u.pk for u in notifications.current_assignee_users(request)}
    if level.replace:
        request.assignee_users.set(users)
        request.assignee_groups.set(groups)
    else:
        request.assignee_users.add(*users)
        request.assignee_groups.add(*groups)
    after = notifications.current_assignee_users(request)
    removed = before - {u.pk for u in after}
    notifications.tokens_supersede(request, removed, now)
    past_assignees_record(request, removed, now, cause=PastAssignee.Cause.ESCALATED)
    request.level += 1
    request.next_escalation_at = (
        timer_at(spec, request.created_at, spec.escalate[request.level].after)
        if request.level < len(spec.escalate)
        else None
    )
    request.save(update_fields=["level", "next_escalation_at"])
    locked.record(
        "approval_escalated",
        step=step,
        data={
            "level": request.level,
            "users": [u.username for u in users],
            "groups": [g.name for g in groups],
            "replace": level.replace,
            "removed": sorted(
                User.objects.filter(pk__in=removed).values_list("username", flat=True)
            ),
        },
    )
    newcomers = [u for u in after if u.pk not in before] if not level.replace else after
    notifications.notify_assignees(
        request,
        newcomers,
        now,
        kind="escalated",
        serial=request.level,
        extra={"level": request.level},
    )
    return True


def _escalate_rows(rows: list[tuple[int, int]], now: datetime) -> int:
    return _each("escalations", rows, _escalate, "next_escalation_at", now)


# -- escalations, batched (PostgreSQL) ------------------------------------------------------------

ESCALATION_BATCH = 10_000  # due requests one sweep takes on (SIGNOFF_ESCALATION_BATCH)
ESCALATION_CHUNK = 2_000  # requests per transaction (SIGNOFF_ESCALATION_CHUNK)
RENDER_SLICE = 250  # outbox rows per render task
# A ``rendering`` row older than this had its render task lost (or its worker died): the
# next sweep sends the task again (rendering twice is impossible: see mails_render).
RENDER_GRACE = timedelta(seconds=60)

# The due requests and their instances, locked in the engine's order (instance, then request).
# Under READ COMMITTED a row changed since the snapshot is re-checked against the WHERE clause
# once locked, so a request decided or escalated meanwhile drops out.
LOCK_DUE_SQL = """
SELECT r.id, r.step_run_id, r.level, r.created_at, r.step_name,
       i.id, i.workflow, i.version, i.state, i.business_key
FROM orchestration_workflowinstance i
JOIN approvals_approvalrequest r ON r.instance_id = i.id
WHERE r.state = 'pending' AND r.next_escalation_at <= %s AND NOT (r.id = ANY(%s::bigint[]))
ORDER BY r.next_escalation_at
LIMIT %s
FOR NO KEY UPDATE OF i, r SKIP LOCKED
"""

# One level's escalation for a set of locked requests, as one statement. Its data-modifying
# CTEs all see the rows as they were before it: ``newcomers`` compares with the assignees
# before this level, as the per-row path does. An instance with several due requests gets
# consecutive seq numbers (ranked by request id).
ESCALATE_SQL = """
WITH due AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(next)s::timestamptz[]) AS d(id, next)
), req AS (
    UPDATE approvals_approvalrequest r
    SET level = r.level + 1, next_escalation_at = due.next
    FROM due WHERE r.id = due.id
    RETURNING r.id, r.instance_id, r.step_run_id, r.requester_id, r.allow_self_approval
), ranked AS (
    SELECT id, instance_id, step_run_id,
           row_number() OVER (PARTITION BY instance_id ORDER BY id) AS rank
    FROM req
), counted AS (
    SELECT instance_id, count(*) AS n FROM req GROUP BY instance_id
), inst AS (
    UPDATE orchestration_workflowinstance i
    SET last_seq = i.last_seq + c.n, updated_at = %(now)s
    FROM counted c WHERE i.id = c.instance_id
    RETURNING i.id, i.last_seq - c.n AS base
), events AS (
    INSERT INTO orchestration_event (instance_id, seq, type, step, attempt, actor, data, at)
    SELECT ranked.instance_id, inst.base + ranked.rank, 'approval_escalated', s.name,
           NULLIF(s.attempt, 0), %(actor)s, %(data)s::jsonb, %(now)s
    FROM ranked
    JOIN inst ON inst.id = ranked.instance_id
    JOIN orchestration_steprun s ON s.id = ranked.step_run_id
    RETURNING id, instance_id, seq, step, attempt
), newcomers AS (
    SELECT req.id AS request_id, req.instance_id, u.id AS user_id, u.email
    FROM req CROSS JOIN auth_user u
    WHERE u.is_active AND u.email <> ''
      AND (u.id = ANY(%(users)s::int[]) OR u.id IN (
           SELECT user_id FROM auth_user_groups WHERE group_id = ANY(%(groups)s::int[])))
      AND (u.id IS DISTINCT FROM req.requester_id OR req.allow_self_approval)
      AND NOT EXISTS (
          SELECT 1 FROM approvals_approvalrequest_assignee_users au
          WHERE au.approvalrequest_id = req.id AND au.user_id = u.id)
      AND NOT EXISTS (
          SELECT 1 FROM approvals_approvalrequest_assignee_groups ag
          JOIN auth_user_groups ug ON ug.group_id = ag.group_id
          WHERE ag.approvalrequest_id = req.id AND ug.user_id = u.id)
), add_users AS (
    INSERT INTO approvals_approvalrequest_assignee_users (approvalrequest_id, user_id)
    SELECT req.id, u FROM req CROSS JOIN unnest(%(users)s::int[]) AS u
    ON CONFLICT DO NOTHING
), add_groups AS (
    INSERT INTO approvals_approvalrequest_assignee_groups (approvalrequest_id, group_id)
    SELECT req.id, g FROM req CROSS JOIN unnest(%(groups)s::int[]) AS g
    ON CONFLICT DO NOTHING
), mails AS (
    INSERT INTO integrations_outboundemail (message_id, kind, "to", subject, body_text,
        body_html, status, attempts, last_error, created_at, instance_id, request_id,
        render_context)
    SELECT format('<signoff.escalated.%%s.%%s.%%s@%%s>', n.request_id, n.user_id,
                  %(level)s::int, %(domain)s::text),
           'approval_escalated', jsonb_build_array(n.email), '', '', '', %(rendering)s, 0, '',
           %(now)s, n.instance_id, n.request_id,
           jsonb_build_object('user', n.user_id, 'purpose', 'escalated',
                              'extra', jsonb_build_object('level', %(level)s::int))
    FROM newcomers n
    ON CONFLICT (message_id) DO NOTHING
    RETURNING id
)
SELECT (SELECT count(*) FROM req),
       (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM mails),
       (SELECT coalesce(json_agg(json_build_array(id, instance_id, seq, step, attempt)), '[]')
        FROM events)
"""


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
        return _escalate_rows(_due("next_escalation_at", now, batch), now)
    return escalations_batch(now=now, batch=batch)


def escalations_batch(*, now: datetime, batch: int | None = None, chunk: int | None = None) -> int:
    """The batched escalation sweep (PostgreSQL). Phase 1 here, per chunk one transaction:
    lock, re-check, set-based writes (module doc); after each commit the chunk's render tasks
    are sent, after the last one the events are announced (``event_committed``, as the
    journal does after its commit). Also sends again the render tasks of ``rendering`` mails
    older than :data:`RENDER_GRACE`. Returns how many requests were escalated."""
    batch = batch or _setting("SIGNOFF_ESCALATION_BATCH", ESCALATION_BATCH)
    chunk = chunk or _setting("SIGNOFF_ESCALATION_CHUNK", ESCALATION_CHUNK)
    mails_redispatch(now=now)
    done = escalated = 0
    excluded: list[int] = []  # left to the per-row path in this run
    announce: list[Event] = []
    while done < batch:
        fallback: list[tuple[int, int]] = []
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    # A few thousand rows: JIT compilation costs more than it saves (the
                    # planner's estimates for the unnest() arrays would set it off).
                    cursor.execute("SET LOCAL jit = off")
                    cursor.execute(LOCK_DUE_SQL, [now, excluded, min(chunk, batch - done)])
                    rows = cursor.fetchall()
                if not rows:
                    break
                acted, fallback, events, mail_ids = _escalate_chunk(rows)
                transaction.on_commit(lambda ids=mail_ids: mails_dispatch(ids))
        except Exception:  # noqa: BLE001 - one bad chunk: its rows go the per-row way
            log.exception("batched escalation failed; its rows go through the per-row path")
            rows = _due_excluding(now, excluded, min(chunk, batch - done))
            if not rows:
                break
            acted, events = 0, []
            fallback = [(r[0], r[1]) for r in rows]
        done += len(rows)
        escalated += acted
        announce += events
        if fallback:
            escalated += _escalate_rows(fallback, now)
            excluded += [request_id for request_id, _ in fallback]
        if len(rows) < chunk:
            break
    if announce:
        # Outside a transaction (beat) this runs at once; inside one, after its commit.
        transaction.on_commit(lambda: announce_events(announce))
    if escalated:
        log.info("sweeper escalations acted on %d approval requests", escalated)
    return escalated


def _due_excluding(now: datetime, excluded: list[int], limit: int) -> list[tuple[Any, ...]]:
    return list(
        ApprovalRequest.objects.filter(state=RequestState.PENDING, next_escalation_at__lte=now)
        .exclude(pk__in=excluded)
        .order_by("next_escalation_at")
        .values_list("pk", "step_run_id")[:limit]
    )


def _escalate_chunk(
    rows: list[tuple[Any, ...]],
) -> tuple[int, list[tuple[int, int]], list[Event], list[int]]:
    """Escalate locked rows level by level: (escalated, rows for the per-row path, events to
    announce, outbox rows to render)."""
    at = timezone.now()
    domain = notifications._domain()
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
    for (workflow, version, step_name, level_no), members in groups.items():
        definition = registry.get(workflow, version)
        spec = definition.steps.get(step_name) if definition else None
        ids = [r[0] for r in members]
        if not isinstance(spec, ApprovalStep) or level_no >= len(spec.escalate):
            ApprovalRequest.objects.filter(pk__in=ids).update(next_escalation_at=None)
            continue
        level = spec.escalate[level_no]
        if level.assignees is not None or level.replace:
            fallback += [(r[0], r[1]) for r in members]
            continue
        # The per-row path's queries, so the event names the same people in the same order.
        users = list(User.objects.filter(username__in=sorted(set(level.users)), is_active=True))
        group_objs = list(Group.objects.filter(name__in=sorted(set(level.groups))))
        after = level_no + 1
        data = {
            "level": after,
            "users": [u.username for u in users],
            "groups": [g.name for g in group_objs],
            "replace": False,
            "removed": [],
        }
        following = [
            timer_at(spec, r[3], spec.escalate[after].after) if after < len(spec.escalate) else None
            for r in members
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                ESCALATE_SQL,
                {
                    "ids": ids,
                    "next": following,
                    "users": [u.pk for u in users],
                    "groups": [g.pk for g in group_objs],
                    "now": at,
                    "actor": "sweeper",
                    "data": json.dumps(data),
                    "level": after,
                    "domain": domain,
                    "rendering": OutboundEmail.Status.RENDERING,
                },
            )
            changed, mails, written = cursor.fetchone()
        escalated += changed
        mail_ids += mails
        written = json.loads(written) if isinstance(written, str) else written
        for pk, instance_id, seq, step, attempt in written:
            event = Event(
                id=pk,
                instance=instances[uuid.UUID(instance_id)],
                seq=seq,
                type="approval_escalated",
                step=step,
                attempt=attempt,
                actor="sweeper",
                data=data,
                at=at,
            )
            event._state.adding = False
            events.append(event)
    return escalated, fallback, events, mail_ids


def mails_dispatch(email_ids: list[int]) -> None:
    """Send the render tasks for ``rendering`` outbox rows, a slice each (after commit). A
    broker failure is logged: the next sweep sends them again."""
    from .tasks import render_mails

    queue = getattr(settings, "SIGNOFF_MAIL_RENDER_QUEUE", None)
    options = {"queue": queue} if queue else {}
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
    ids = list(
        OutboundEmail.objects.filter(
            status=OutboundEmail.Status.RENDERING, created_at__lte=now - RENDER_GRACE
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    if ids:
        log.warning("%d mails still unrendered; render tasks sent again", len(ids))
        mails_dispatch(ids)
    return len(ids)


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
        locked.record("approval_expired", step=step, data={"on_expire": action})
        notifications.tokens_supersede(
            request, set(request.tokens.values_list("user_id", flat=True)), now
        )
        _expire_action(locked, request, step, spec, action)
        notifications.notify_requester(request, kind="expired", extra={"action": action})
        return True

    return _each("expiry", _due("due_at", now, batch), expire, "due_at", now)


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

    return _each("claims", due, expire, "claim_expires_at", now)


# -- daily digests -------------------------------------------------------------------------------


def sweep_digests(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Send each digest reader at most one digest per local day, at or after their hour.

    Due rows come from ``next_digest_at`` (partial index on digest mode); each is locked with
    ``skip_locked`` and checked again: still digest, still due, and no digest yet for today in
    the person's zone (``last_digest_on``). ``last_digest_on`` and the next time are written
    before the mail is queued, in the same transaction, and the mail's Message-ID is fixed per
    person and local day: two sweeps at once, or one repeated after a crash, send one digest.
    The digest lists what the inbox's pending list shows (``selectors.decidable_by``), most
    urgent first: overdue, then due soonest, then the oldest without a due time. Nothing
    pending (or no address, or deactivated): the day counts as done and no mail goes out.
    Returns the number of digests queued."""
    now = now or timezone.now()
    due = list(
        MailPreference.objects.filter(mode=MailPreference.Mode.DIGEST, next_digest_at__lte=now)
        .order_by("next_digest_at")
        .values_list("pk", flat=True)[: batch or settings.SIGNOFF_SWEEP_BATCH]
    )
    sent = 0
    for pk in due:
        try:
            with transaction.atomic():
                preference = (
                    MailPreference.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related("user")
                    .filter(pk=pk)
                    .first()
                )
                if (
                    preference is None
                    or preference.mode != MailPreference.Mode.DIGEST
                    or preference.next_digest_at is None
                    or preference.next_digest_at > now
                ):
                    continue  # another sweep holds it, or it changed since we looked
                day = preference.local_date(now)
                fields = ["next_digest_at"]
                if preference.last_digest_on is None or preference.last_digest_on < day:
                    preference.last_digest_on, preference.last_digest_sent_at = day, now
                    fields += ["last_digest_on", "last_digest_sent_at"]
                    sent += _digest_send(preference, day, now)
                preference.next_digest_at = preference.digest_due_at(now)
                preference.save(update_fields=fields)
        except Exception:  # noqa: BLE001 - isolate a failing row
            log.exception("sweeper digests failed on mail preference %s", pk)
    if sent:
        log.info("sweeper digests queued %d digests", sent)
    return sent


def _digest_send(preference: MailPreference, day: Any, now: datetime) -> bool:
    user = preference.user
    if not user.is_active or not user.email:
        return False
    pending = selectors.decidable_by(user, now)
    limit = settings.SIGNOFF_DIGEST_LIMIT
    rows = list(pending.order_by(F("due_at").asc(nulls_last=True), "created_at", "pk")[:limit])
    if not rows:
        return False
    total = len(rows) if len(rows) < limit else pending.count()
    return notifications.notify_digest(
        user, rows, day=day, total=total, now=now, time_zone=preference.time_zone
    )


def sweep_all(*, now: datetime | None = None) -> dict[str, int]:
    return {
        "reminders": sweep_reminders(now=now),
        "escalations": sweep_escalations(now=now),
        "expiry": sweep_expiry(now=now),
    }
