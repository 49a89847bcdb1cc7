"""Reads for the inbox and the approvals API. Query counts do not grow with the data: the
list is one query (plus one for the page's assignees), filtered with EXISTS subqueries that
walk the pending partial index in order."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, connections, router
from django.db.models import BooleanField, Exists, Expression, F, OuterRef, Prefetch, Q, QuerySet
from django.utils import timezone

from orchestration.definitions import registry
from orchestration.models import WorkflowInstance
from orchestration.selectors import instances_started_by

from .definitions import ApprovalStep
from .models import (
    ApprovalRequest,
    Decision,
    Delegation,
    Outcome,
    PastAssignee,
    RequestState,
)
from .timing import timer_at

User = get_user_model()
AssignedUser = ApprovalRequest.assignee_users.through
AssignedGroup = ApprovalRequest.assignee_groups.through
Membership = User.groups.through
# The attribute :func:`attach_assignees` sets: {"users": [names], "groups": [names]}.
ASSIGNEES = "assignee_names"


@functools.cache
def _assignees_sql(count: int) -> str:
    """Both assignment tables of ``count`` requests, UNION ALL: (request id, kind, name)."""
    quote = connection.ops.quote_name
    username = quote(User._meta.get_field(User.USERNAME_FIELD).column)
    ids = ", ".join(["%s"] * count)

    def part(through: Any, fk: str, target: Any, label: str) -> str:
        return (
            f"SELECT a.{quote(through._meta.get_field('approvalrequest').column)}, "
            f"'{'users' if target is User else 'groups'}', t.{label} "
            f"FROM {quote(through._meta.db_table)} a "
            f"JOIN {quote(target._meta.db_table)} t "
            f"ON t.{quote(target._meta.pk.column)} = a.{quote(through._meta.get_field(fk).column)} "
            f"WHERE a.{quote(through._meta.get_field('approvalrequest').column)} IN ({ids})"
        )

    return (
        part(AssignedUser, "user", User, username)
        + " UNION ALL "
        + part(AssignedGroup, "group", Group, quote("name"))
    )


def attach_assignees(requests: list[ApprovalRequest]) -> list[ApprovalRequest]:
    """Set the assigned users' and groups' names on each request: one query for a whole
    page (both assignment tables, UNION ALL), names only, no model instances. Fixed SQL per
    page size: building it with the ORM cost more than running it (1.9 -> 0.6 ms for a page
    of 50 in bench/inbox.py)."""
    names: dict[int, dict[str, list[str]]] = {r.pk: {"users": [], "groups": []} for r in requests}
    if names:
        ids = list(names)
        # Read where the page's rows were read (the replica inside replica reads).
        with connections[router.db_for_read(ApprovalRequest)].cursor() as cursor:
            cursor.execute(_assignees_sql(len(ids)), ids + ids)
            for request_id, kind, name in cursor.fetchall():
                names[request_id][kind].append(name)
    for request in requests:
        found = names[request.pk]
        setattr(
            request, ASSIGNEES, {"users": sorted(found["users"]), "groups": sorted(found["groups"])}
        )
    return requests


def principal_ids(user: Any, now: datetime | None = None) -> list[int]:
    """The user's id and the ids of everyone who delegated to them for ``now`` (fixed SQL on
    the connection the router reads Delegation from: every inbox page asks, and building the
    ORM query cost more than running it)."""
    now = now or timezone.now()
    reader = connections[router.db_for_read(Delegation)]
    at = reader.ops.adapt_datetimefield_value(now)  # as the ORM sends it (SQLite: UTC text)
    with reader.cursor() as cursor:
        cursor.execute(_delegators_sql(), [user.pk, at, at])
        return [user.pk, *(row[0] for row in cursor.fetchall())]


def _table(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _column(model: Any, name: str) -> str:
    """A field's column (``"pk"``: the primary key's), quoted, for the fixed SQL below."""
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    return connection.ops.quote_name(field.column)


@functools.cache
def _delegators_sql() -> str:
    """Who delegated to a person (parameters: the delegate's id, now, now), newest first."""
    d = Delegation
    return (
        f"SELECT {_column(d, 'user')} FROM {_table(d)} WHERE {_column(d, 'delegate')} = %s "
        f"AND {_column(d, 'starts_at')} <= %s AND {_column(d, 'ends_at')} > %s "
        f"ORDER BY {_column(d, 'starts_at')} DESC"
    )


def _assigned_sql(principals: int, request: str) -> str:
    """The assignments of the request ``request`` (an SQL expression) to any of
    ``principals`` ids, directly or through a group, as two ``SELECT 1`` joined by UNION ALL
    (parameters: the ids, twice)."""
    ids = ", ".join(["%s"] * principals)
    au, ag, m = AssignedUser, AssignedGroup, Membership
    return (
        f"SELECT 1 FROM {_table(au)} au WHERE au.{_column(au, 'approvalrequest')} = {request} "
        f"AND au.{_column(au, 'user')} IN ({ids}) "
        f"UNION ALL SELECT 1 FROM {_table(ag)} ag "
        f"WHERE ag.{_column(ag, 'approvalrequest')} = {request} "
        f"AND ag.{_column(ag, 'group')} IN (SELECT m.{_column(m, 'group')} FROM {_table(m)} m "
        f"WHERE m.{_column(m, 'user')} IN ({ids}))"
    )


def _assignment_subqueries(ids: list[int]) -> tuple[QuerySet, QuerySet]:
    request = OuterRef("pk")
    groups = Membership.objects.filter(user_id__in=ids).values("group_id")
    return (
        AssignedUser.objects.filter(approvalrequest_id=request, user_id__in=ids).values("pk"),
        AssignedGroup.objects.filter(approvalrequest_id=request, group_id__in=groups).values("pk"),
    )


def _assigned_to(ids: list[int]) -> Q:
    # One EXISTS over a UNION ALL: PostgreSQL checks it row by row through the through-tables'
    # unique indexes while it walks the pending index (two OR-ed EXISTS became hashed subplans
    # reading every assignment of the user's groups: 125 ms → 7 ms at 1,000,000 requests).
    users, groups = _assignment_subqueries(ids)
    return Q(Exists(users.union(groups, all=True)))


def assigned_filter(ids: list[int]) -> Q:
    """Requests assigned now to any of ``ids`` (users), directly or through a group."""
    return _assigned_to(ids)


def _visible(user: Any, ids: list[int]) -> Q:
    users, groups = _assignment_subqueries(ids)
    decided = Decision.objects.filter(request=OuterRef("pk"), decided_by=user).values("pk")
    past = PastAssignee.objects.filter(request=OuterRef("pk"), user_id__in=ids).values("pk")
    return Q(Exists(users.union(groups, decided, past, all=True)))


def visible_filter(user: Any, now: datetime | None = None) -> Q:
    """The requests ``user`` is (or a delegator is) assigned or was assigned (a past
    assignee, replaced by an escalation or a reassignment), or decided."""
    return _visible(user, principal_ids(user, now))


def sees_all_requests(user: Any) -> bool:
    """Staff and operators (``orchestration.operate_instance``, who see every instance) see
    every request."""
    return bool(user.is_staff or user.has_perm("orchestration.operate_instance"))


def own_filter(user: Any) -> Q:
    """The requests that are ``user``'s own: they are its requester or, with
    ``SIGNOFF_STARTER_IS_REQUESTER`` (default), they started its instance."""
    own = Q(requester_id=user.pk)
    if settings.SIGNOFF_STARTER_IS_REQUESTER:
        own |= Q(instance__started_by_id=user.pk)
    return own


def seeing_filter(user: Any, now: datetime | None = None) -> Q:
    """Every request ``user`` may see, except through :func:`sees_all_requests`: assigned or
    once assigned (themself or someone who delegated to them), decided, or their own."""
    return visible_filter(user, now) | own_filter(user)


def decidable_by(user: Any, now: datetime | None = None) -> QuerySet[ApprovalRequest]:
    """Pending requests ``user`` may decide now (directly, through a group or a delegation),
    excluding their own requests (unless allowed) and those they already decided: the list
    form of :func:`approvals.policy.authorize` (act ``decide``), which has the last word."""
    return ApprovalRequest.objects.filter(state=RequestState.PENDING).filter(
        Decidable(principal_ids(user, now), user.pk)
    )


@functools.cache
def _decidable_sql(principals: int, starter_is_requester: bool) -> str:
    """The condition of :class:`Decidable` for ``principals`` ids, with ``{pk}``,
    ``{requester}``, ``{instance}`` and ``{allow}`` for the request's columns (as the
    query names them)."""
    i, d = WorkflowInstance, Decision
    # Not their own unless the step allows it. Each part is a top-level AND, so PostgreSQL
    # checks it as an anti join on the rows that pass the walk (inside an OR the starter's
    # EXISTS became a hash of every instance the person started).
    starter = (
        f"AND NOT EXISTS (SELECT 1 FROM {_table(i)} i WHERE i.{_column(i, 'pk')} = {{instance}} "
        f"AND i.{_column(i, 'started_by')} = %s AND NOT {{allow}}) "
        if starter_is_requester
        else ""
    )
    return (
        # Assigned: one EXISTS over a UNION ALL, as _assigned_to (the plan probes the
        # through-tables' unique indexes row by row while it walks the pending index).
        f"EXISTS ({_assigned_sql(principals, '{pk}')} LIMIT 1) "
        f"AND ({{allow}} OR NOT COALESCE({{requester}} = %s, FALSE)) {starter}"
        # Not decided by them already.
        f"AND NOT EXISTS (SELECT 1 FROM {_table(d)} d WHERE d.{_column(d, 'request')} = {{pk}} "
        f"AND d.{_column(d, 'decided_by')} = %s)"
    )


def sees_request(user: Any, request_pk: int, now: datetime | None = None) -> bool:
    """Whether ``user`` (not staff: :func:`sees_all_requests` first) may see the request
    ``request_pk``: the one-row form of :func:`seeing_filter` as fixed SQL (building the ORM
    form cost about 4 ms a check, and a request page checks twice)."""
    ids = principal_ids(user, now)
    starter = settings.SIGNOFF_STARTER_IS_REQUESTER
    own = [request_pk, user.pk] + ([request_pk, user.pk] if starter else [])
    params = [request_pk, *ids, request_pk, *ids, request_pk, user.pk, request_pk, *ids, *own]
    with connections[router.db_for_read(ApprovalRequest)].cursor() as cursor:
        cursor.execute(_sees_sql(len(ids), starter), params)
        return bool(cursor.fetchone()[0])


@functools.cache
def _sees_sql(principals: int, starter_is_requester: bool) -> str:
    """:func:`sees_request`'s statement: assigned (directly or through a group), decided, a
    past assignee (each for the user or a delegator as :func:`_visible` has it), or their
    own request (requester or, with the setting, the instance's starter)."""
    d, p, r, i = Decision, PastAssignee, ApprovalRequest, WorkflowInstance
    ids = ", ".join(["%s"] * principals)
    parts = [
        _assigned_sql(principals, "%s"),
        f"SELECT 1 FROM {_table(d)} d WHERE d.{_column(d, 'request')} = %s"
        f" AND d.{_column(d, 'decided_by')} = %s",
        f"SELECT 1 FROM {_table(p)} p WHERE p.{_column(p, 'request')} = %s"
        f" AND p.{_column(p, 'user')} IN ({ids})",
        f"SELECT 1 FROM {_table(r)} r WHERE r.{_column(r, 'pk')} = %s"
        f" AND r.{_column(r, 'requester')} = %s",
    ]
    if starter_is_requester:
        parts.append(
            f"SELECT 1 FROM {_table(r)} r JOIN {_table(i)} i"
            f" ON i.{_column(i, 'pk')} = r.{_column(r, 'instance')}"
            f" WHERE r.{_column(r, 'pk')} = %s AND i.{_column(i, 'started_by')} = %s"
        )
    return "SELECT EXISTS (" + " UNION ALL ".join(parts) + ")"


class Decidable(Expression):
    """The condition of :func:`decidable_by` for the principals ``ids`` (the user and who
    delegated to them) and the user ``user_pk``, as fixed SQL: the ORM form
    (:func:`assigned_filter`, not :func:`own_filter` unless allowed, not decided by them; the
    tests keep it and hold the two equal) cost about 2.6 ms to build and 2 ms to compile per list
    request (cProfile, bench/inbox.py), more than PostgreSQL took to run it. The request's
    own columns are compiled by the query, so the condition stays right when the query
    becomes a subquery (its tables renamed)."""

    conditional = True

    def __init__(self, ids: list[int], user_pk: int) -> None:
        super().__init__(output_field=BooleanField())
        self.ids, self.user_pk = list(ids), user_pk
        self.columns = [F("pk"), F("requester_id"), F("instance_id"), F("allow_self_approval")]

    def get_source_expressions(self) -> list[Any]:
        return self.columns

    def set_source_expressions(self, exprs: list[Any]) -> None:
        self.columns = list(exprs)

    def resolve_expression(self, *args: Any, **kwargs: Any) -> Decidable:
        resolved = self.copy()
        resolved.columns = [c.resolve_expression(*args, **kwargs) for c in self.columns]
        return resolved

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        pk, requester, instance, allow = (compiler.compile(c)[0] for c in self.columns)
        starter = settings.SIGNOFF_STARTER_IS_REQUESTER
        sql = _decidable_sql(len(self.ids), starter).format(
            pk=pk, requester=requester, instance=instance, allow=allow
        )
        own = [self.user_pk, self.user_pk] if starter else [self.user_pk]
        return f"({sql})", [*self.ids, *self.ids, *own, self.user_pk]


def decided_by(user: Any) -> QuerySet[ApprovalRequest]:
    return ApprovalRequest.objects.filter(
        Exists(Decision.objects.filter(request=OuterRef("pk"), decided_by=user))
    )


def visible_to(user: Any, now: datetime | None = None) -> QuerySet[ApprovalRequest]:
    """Every request the user is or was assigned (or decided), in any state."""
    return ApprovalRequest.objects.filter(_visible(user, principal_ids(user, now)))


def awaiting_revision(user: Any) -> QuerySet[ApprovalRequest]:
    """Requests sent back for changes that ``user`` may revise and resubmit (or withdraw):
    their own (requester or the instance's starter), whose instance still runs. Walks the
    ``changes_requested`` partial index; :func:`approvals.policy.authorize` (act
    ``resubmit``) has the last word."""
    return ApprovalRequest.objects.filter(
        Q(requester_id=user.pk) | Q(instance__started_by_id=user.pk),
        state=RequestState.CHANGES_REQUESTED,
        instance__state="running",
    )


def my_requests(user: Any, *, state: str = "", text: str = "") -> QuerySet[WorkflowInstance]:
    """The instances that are ``user``'s requests, unordered (the page orders and pages them):
    those they started, and those whose approval requests name them the requester (started
    on their behalf, or by the system) — both people the policy lets read the instance.

    ``state`` is an instance state (empty: any). ``text`` matches, case-insensitively and
    anywhere, the business key, the workflow's name or the title of one of its approval
    requests; Django escapes ``%``, ``_`` and ``\\`` in it, and the caller keeps NUL
    characters and very long strings out. The match runs over the user's own instances only:
    the ``IN (… UNION …)`` starts from the ``started_by`` and ``requester`` indexes, so the
    cost follows the user's instances, not the table."""
    # No ORDER BY inside the union (the models' default orderings would add one each).
    started = instances_started_by(user).order_by().values("pk")
    named = ApprovalRequest.objects.filter(requester_id=user.pk).order_by().values("instance_id")
    qs = WorkflowInstance.objects.filter(pk__in=started.union(named))
    if state:
        qs = qs.filter(state=state)
    if text:
        titled = ApprovalRequest.objects.filter(instance_id=OuterRef("pk"), title__icontains=text)
        qs = qs.filter(
            Q(business_key__icontains=text) | Q(workflow__icontains=text) | Q(Exists(titled))
        )
    return qs


def request_for(user: Any, request_id: Any) -> ApprovalRequest | None:
    """One request the user may see (assignee, past assignee, delegate, decider, requester,
    the instance's starter, staff or operator): the list form of the policy's ``can_see``."""
    try:
        pk = int(request_id)
    except (TypeError, ValueError):
        return None
    if not 0 < pk < 2**63:
        return None
    qs = ApprovalRequest.objects.select_related(
        "instance", "step_run", "requester", "claimed_by"
    ).filter(pk=pk)
    if not sees_all_requests(user):
        # Checks this one row (a pk__in over everything visible scanned the table: 1.8 s).
        qs = qs.filter(seeing_filter(user))
    return qs.first()


def upcoming_timers(approval: ApprovalRequest) -> list[dict[str, Any]]:
    """What will happen to a pending request and when: reminders, escalation levels (with
    who), expiry (with its action), soonest first — for "escalates to finance in 3 h"."""
    if approval.state != RequestState.PENDING:
        return []
    definition = registry.get(approval.workflow, approval.instance.version)
    spec = definition.steps.get(approval.step_name) if definition else None
    items: list[dict[str, Any]] = []
    if approval.next_reminder_at:
        items.append({"at": approval.next_reminder_at, "what": "reminder to the assignees"})
    if isinstance(spec, ApprovalStep):
        for number, level in enumerate(spec.escalate, start=1):
            if number <= approval.level:
                continue
            who = ", ".join([*level.users, *level.groups]) or "people chosen by the workflow"
            verb = "moves to" if level.replace else "escalates to"
            items.append(
                {
                    "at": timer_at(spec, approval.created_at, level.after),
                    "what": f"{verb} {who}",
                }
            )
        if approval.due_at:
            action = {
                "reject": "rejected",
                "approve": "approved",
                "cancel_instance": "cancels the workflow",
                "fail": "fails the workflow",
            }
            items.append(
                {
                    "at": approval.due_at,
                    "what": f"expires: {action.get(spec.on_expire, spec.on_expire)}",
                }
            )
    elif approval.due_at:
        items.append({"at": approval.due_at, "what": "expires"})
    return sorted((i for i in items if i["at"] is not None), key=lambda i: i["at"])


def claim_holder_name(approval: ApprovalRequest, now: datetime | None = None) -> str | None:
    """The username of whoever holds a live claim on ``approval`` (``claimed_by`` must be
    loaded with it, as the lists do with ``select_related``), or None."""
    holder = approval.claim_holder_id(now or timezone.now())
    if holder is None:
        return None
    return approval.claimed_by.get_username()


def to_revise(user: Any, *, limit: int) -> list[ApprovalRequest]:
    """The user's requests sent back for changes (newest first, at most ``limit``), each with
    ``sent_back_by`` and ``sent_back_comment``: one query, and one more for who asked for the
    changes when there are any."""
    rows = list(
        awaiting_revision(user)
        .prefetch_related(
            Prefetch(
                "decisions",
                queryset=Decision.objects.filter(outcome=Outcome.REQUEST_CHANGES).select_related(
                    "decided_by"
                ),
                to_attr="sent_back",
            )
        )
        .order_by("-created_at", "-id")[:limit]
    )
    for row in rows:
        row.sent_back_by = row.sent_back[-1].decided_by.get_username() if row.sent_back else ""
        row.sent_back_comment = row.sent_back[-1].comment if row.sent_back else ""
    return rows
