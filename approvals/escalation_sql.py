"""The batched escalation's two statements (PostgreSQL): lock the due requests, and carry out
one :class:`~approvals.escalation.EscalationPlan` for a set of them in one statement.

Every table and column name comes from the models (``_meta``; the user model from
``get_user_model()``), and the outbox rows are written by integrations' public
:func:`integrations.mail.unrendered_emails_insert`: this module names no other app's table.
The statement does what :func:`approvals.escalation.escalate_row` does, for levels that only
add people (:func:`approvals.escalation.set_based`): the new level and timer (the request's
column and its :class:`~approvals.models.EscalationTimer` row), the added
assignees, the instances' ``last_seq``, one ``approval_escalated`` event per request with the
plan's data (gap-free seq, as the journal numbers them) and one unrendered mail per newcomer,
chosen by the rules of :meth:`EscalationPlan.mailed` and ``notify_assignees``.
"""

from __future__ import annotations

import functools
import json
import uuid
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Model

from integrations.mail import unrendered_emails_insert
from orchestration.models import Event, StepRun, WorkflowInstance

from . import notifications
from .escalation import EVENT, MAIL, EscalationPlan
from .models import ApprovalRequest, EscalationTimer, RequestState

User = get_user_model()
ACTOR = "sweeper"


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _table(model: type[Model]) -> str:
    return _q(model._meta.db_table)


def _col(model: type[Model], field: str) -> str:
    return _q(model._meta.get_field(field).column)


@functools.cache
def lock_due_sql() -> str:
    """The due requests and their instances, locked in the engine's order (instance, then
    request; ``FOR NO KEY UPDATE … SKIP LOCKED``), found through the timers' index
    (:class:`~approvals.models.EscalationTimer`). Under READ COMMITTED a locked row changed
    since the snapshot is re-checked against the WHERE clause, so a request decided or
    escalated meanwhile drops out: the check names the request's own ``state`` and
    ``next_escalation_at`` (the timer row is not locked, and its snapshot copy would not
    change). Parameters: now, now, ids to leave out, limit. Columns: the request's id, step
    run, level, creation, step name; the instance's id, workflow, version, state, business
    key."""
    r, i, t = ApprovalRequest, WorkflowInstance, EscalationTimer

    def rc(field: str) -> str:
        return f"r.{_col(r, field)}"

    def ic(field: str) -> str:
        return f"i.{_col(i, field)}"

    return f"""
SELECT {rc("id")}, {rc("step_run")}, {rc("level")}, {rc("created_at")}, {rc("step_name")},
       {ic("id")}, {ic("workflow")}, {ic("version")}, {ic("state")}, {ic("business_key")}
FROM (
    -- The due timers in their index's order; OFFSET 0 keeps the planner from flattening
    -- it (it would merge-join the primary key of the whole request table instead of walking
    -- the timers and stopping at the limit).
    SELECT {_col(t, "request")} AS request_id, {_col(t, "due_at")} AS due_at
    FROM {_table(t)} WHERE {_col(t, "due_at")} <= %s ORDER BY {_col(t, "due_at")} OFFSET 0
) t
JOIN {_table(r)} r ON {rc("id")} = t.request_id
JOIN {_table(i)} i ON {ic("id")} = {rc("instance")}
WHERE {rc("state")} = '{RequestState.PENDING.value}' AND {rc("next_escalation_at")} <= %s
  AND NOT ({rc("id")} = ANY(%s::bigint[]))
ORDER BY t.due_at
LIMIT %s
FOR NO KEY UPDATE OF i, r SKIP LOCKED
"""


@functools.cache
def escalate_sql(mails: str) -> str:
    """One plan for a set of locked requests, as one statement; ``mails``: the outbox's
    ``INSERT … SELECT`` from ``newcomers``. Its data-modifying CTEs all see the rows as they
    were before it: ``newcomers`` compares with the assignees before this level, as the
    per-row path does. An instance with several due requests gets consecutive seq numbers
    (ranked by request id)."""
    r, i, e, s, t = ApprovalRequest, WorkflowInstance, Event, StepRun, EscalationTimer
    au = ApprovalRequest.assignee_users.through
    ag = ApprovalRequest.assignee_groups.through
    ug = User.groups.through
    user_pk = _q(User._meta.pk.column)
    au_request, au_user = _col(au, "approvalrequest"), _col(au, "user")
    ag_request, ag_group = _col(ag, "approvalrequest"), _col(ag, "group")
    ug_user, ug_group = _col(ug, "user"), _col(ug, "group")
    event_columns = ", ".join(
        _col(e, f) for f in ("instance", "seq", "type", "step", "attempt", "actor", "data", "at")
    )
    return f"""
WITH due AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(next)s::timestamptz[]) AS d(id, next)
), req AS (
    UPDATE {_table(r)} r
    SET {_col(r, "level")} = r.{_col(r, "level")} + 1,
        {_col(r, "next_escalation_at")} = due.next
    FROM due WHERE r.{_col(r, "id")} = due.id
    RETURNING r.{_col(r, "id")} AS id, r.{_col(r, "instance")} AS instance_id,
              r.{_col(r, "step_run")} AS step_run_id, r.{_col(r, "requester")} AS requester_id,
              r.{_col(r, "allow_self_approval")} AS allow_self_approval
), timers AS (
    UPDATE {_table(t)} t SET {_col(t, "due_at")} = due.next
    FROM due WHERE t.{_col(t, "request")} = due.id AND due.next IS NOT NULL
), untimed AS (
    DELETE FROM {_table(t)} t USING due
    WHERE t.{_col(t, "request")} = due.id AND due.next IS NULL
), ranked AS (
    SELECT id, instance_id, step_run_id,
           row_number() OVER (PARTITION BY instance_id ORDER BY id) AS rank
    FROM req
), counted AS (
    SELECT instance_id, count(*) AS n FROM req GROUP BY instance_id
), inst AS (
    UPDATE {_table(i)} i
    SET {_col(i, "last_seq")} = i.{_col(i, "last_seq")} + c.n, {_col(i, "updated_at")} = %(now)s
    FROM counted c WHERE i.{_col(i, "id")} = c.instance_id
    RETURNING i.{_col(i, "id")} AS id, i.{_col(i, "last_seq")} - c.n AS base
), events AS (
    INSERT INTO {_table(e)} ({event_columns})
    SELECT ranked.instance_id, inst.base + ranked.rank, %(event)s, s.{_col(s, "name")},
           NULLIF(s.{_col(s, "attempt")}, 0), %(actor)s, %(data)s::jsonb, %(now)s
    FROM ranked
    JOIN inst ON inst.id = ranked.instance_id
    JOIN {_table(s)} s ON s.{_col(s, "id")} = ranked.step_run_id
    RETURNING {_col(e, "id")} AS id, {_col(e, "instance")} AS instance_id,
              {_col(e, "seq")} AS seq, {_col(e, "step")} AS step, {_col(e, "attempt")} AS attempt
), newcomers AS (
    SELECT concat('<signoff.', %(mail)s::text, '.', req.id, '.', u.{user_pk}, '.',
                  %(serial)s::int, '@', %(domain)s::text, '>') AS message_id,
           u.{_col(User, User.get_email_field_name())} AS address,
           req.instance_id, req.id AS request_id,
           jsonb_build_object('user', u.{user_pk}, 'purpose', %(mail)s::text,
                              'extra', %(extra)s::jsonb) AS render_context
    FROM req CROSS JOIN {_table(User)} u
    WHERE u.{_col(User, "is_active")} AND u.{_col(User, User.get_email_field_name())} <> ''
      AND (u.{user_pk} = ANY(%(users)s::int[]) OR u.{user_pk} IN (
           SELECT {ug_user} FROM {_table(ug)} WHERE {ug_group} = ANY(%(groups)s::int[])))
      AND (u.{user_pk} IS DISTINCT FROM req.requester_id OR req.allow_self_approval)
      AND NOT EXISTS (
          SELECT 1 FROM {_table(au)} au
          WHERE au.{au_request} = req.id AND au.{au_user} = u.{user_pk})
      AND NOT EXISTS (
          SELECT 1 FROM {_table(ag)} ag
          JOIN {_table(ug)} ug ON ug.{ug_group} = ag.{ag_group}
          WHERE ag.{ag_request} = req.id AND ug.{ug_user} = u.{user_pk})
), add_users AS (
    INSERT INTO {_table(au)} ({au_request}, {au_user})
    SELECT req.id, u FROM req CROSS JOIN unnest(%(users)s::int[]) AS u
    ON CONFLICT DO NOTHING
), add_groups AS (
    INSERT INTO {_table(ag)} ({ag_request}, {ag_group})
    SELECT req.id, g FROM req CROSS JOIN unnest(%(groups)s::int[]) AS g
    ON CONFLICT DO NOTHING
), mails AS ({mails}
)
SELECT (SELECT count(*) FROM req),
       (SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM mails),
       (SELECT coalesce(json_agg(json_build_array(id, instance_id, seq, step, attempt)), '[]')
        FROM events)
"""


def escalate_set(
    plan: EscalationPlan,
    rows: list[tuple[Any, ...]],
    instances: dict[Any, WorkflowInstance],
    now: datetime,
) -> tuple[int, list[int], list[Event]]:
    """Carry ``plan`` out for the locked requests ``rows`` (as :func:`lock_due_sql` returns
    them; all at the plan's level) in one statement. ``instances``: their instances by id,
    as locked, for the events' announcement. Returns (requests escalated, outbox rows to
    render, the events written)."""
    data = plan.event_data()
    mails, mail_params = unrendered_emails_insert(
        source="newcomers", kind=f"approval_{MAIL}", now=now
    )
    with connection.cursor() as cursor:
        cursor.execute(
            escalate_sql(mails),
            {
                "ids": [row[0] for row in rows],
                "next": [plan.next_escalation_at(row[3]) for row in rows],
                "users": [u.pk for u in plan.users],
                "groups": [g.pk for g in plan.groups],
                "now": now,
                "event": EVENT,
                "actor": ACTOR,
                "data": json.dumps(data),
                "mail": MAIL,
                "serial": plan.level,
                "extra": json.dumps(plan.mail_extra),
                "domain": notifications._domain(),
                **mail_params,
            },
        )
        changed, mail_ids, written = cursor.fetchone()
    written = json.loads(written) if isinstance(written, str) else written
    events = []
    for pk, instance_id, seq, step, attempt in written:
        event = Event(
            id=pk,
            instance=instances[uuid.UUID(instance_id)],
            seq=seq,
            type=EVENT,
            step=step,
            attempt=attempt,
            actor=ACTOR,
            data=data,
            at=now,
        )
        event._state.adding = False
        events.append(event)
    return changed, list(mail_ids), events
