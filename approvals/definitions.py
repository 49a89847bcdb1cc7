"""The ``approval`` step kind in the DSL.

Example::

    from approvals.definitions import approval

    approval(
        wf, "manager_approval", after=["validate"],
        groups=["managers"], policy="any", due=timedelta(days=2),
        title="Expense {input[amount]} {input[currency]}: {input[description]}",
        show=[Show("Amount", "input.amount", column=True), ("Requester", "input.requester")],
        revisable=["amount", "description"], max_rounds=3,
    )
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from orchestration import sealing
from orchestration.calendar import calendar_name_problem
from orchestration.definitions import Predicate, StepContext, StepSpec, Workflow

MAX_ROUNDS = 3  # default bound on the rounds of one approval step (send back for changes)
ROUNDS_LIMIT = 50  # the most a step may declare
POLICIES = ("any", "all", "quorum")
CLAIMS = ("soft", "hard", None)
ON_REJECT = ("fail", "continue")
ON_EXPIRE = ("reject", "approve", "cancel_instance", "fail")

Assignees = Callable[[StepContext], dict[str, Iterable[str]]]
COLUMN_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Show:
    """One field an approval shows its deciders: ``label`` and the context ``path`` it comes
    from (``input.…`` or ``outputs.…``), like the ``(label, path)`` pair. ``column=True`` also
    makes it a column of the inbox list, sortable; ``key`` names the column in the list's
    ``sort=`` (default: the path's last part), lower-case letters, digits and ``_``."""

    label: str
    path: str
    column: bool = False
    key: str = ""

    @property
    def column_key(self) -> str:
        return self.key or self.path.rsplit(".", 1)[-1]


def show_entry(item: str | tuple[str, str] | Show) -> Show:
    """A ``show=`` entry as a :class:`Show`: a bare path is labelled from its last part."""
    if isinstance(item, Show):
        return item
    if isinstance(item, tuple):
        label, path = item
        return Show(str(label), path)
    return Show(str(item).split(".")[-1].replace("_", " ").capitalize(), item)


@dataclass(frozen=True)
class Escalation:
    """One escalation level: ``after`` the request was created, these assignees are added
    (or, with ``replace``, take over: the earlier ones can no longer decide and their email
    links stop working)."""

    after: timedelta
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    assignees: Assignees | None = None
    replace: bool = False

    def resolve(self, ctx: StepContext) -> tuple[list[str], list[str]]:
        users, groups = list(self.users), list(self.groups)
        if self.assignees is not None:
            extra = self.assignees(ctx) or {}
            users += [str(u) for u in extra.get("users", ())]
            groups += [str(g) for g in extra.get("groups", ())]
        return sorted(set(users)), sorted(set(groups))

    def describe(self) -> dict[str, Any]:
        return {
            "after": self.after.total_seconds(),
            "users": list(self.users),
            "groups": list(self.groups),
            "dynamic_assignees": self.assignees is not None,
            "replace": self.replace,
        }


@dataclass
class ApprovalStep(StepSpec):
    """A human decision. Assignees are usernames and/or group names, or a function of the
    context returning ``{"users": [...], "groups": [...]}``."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    assignees: Assignees | None = None
    policy: str = "any"
    quorum: int = 1
    veto: bool = True
    reject_requires_comment: bool = True
    allow_self_approval: bool = False
    title: str | Callable[[StepContext], str] = ""
    show: Sequence[str | tuple[str, str] | Show] = ()
    on_reject: str = "fail"
    due: timedelta | None = None
    requester: Callable[[StepContext], str | None] | None = None
    remind_every: timedelta | None = None
    escalate: tuple[Escalation, ...] = ()
    on_expire: str = "reject"
    business_hours: bool = False
    claim: str | None = "soft"
    claim_idle: timedelta | None = None
    revisable: tuple[str, ...] = ()
    max_rounds: int = MAX_ROUNDS
    # A named business calendar (SIGNOFF_BUSINESS_CALENDARS); naming one counts the timers in
    # its business time.
    calendar: str | None = None
    kind: str = "approval"

    @property
    def in_business_time(self) -> bool:
        return self.business_hours or self.calendar is not None

    def problems(self) -> list[str]:
        found = []
        if self.policy not in POLICIES:
            found.append(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.policy == "quorum" and (not isinstance(self.quorum, int) or self.quorum < 1):
            found.append("quorum must be an integer >= 1")
        if self.on_reject not in ON_REJECT:
            found.append(f"on_reject must be one of {', '.join(ON_REJECT)}")
        if not (self.users or self.groups or self.assignees):
            found.append("an approval needs users, groups or an assignees function")
        if self.assignees is not None and not callable(self.assignees):
            found.append("assignees must be callable")
        if self.due is not None and (
            not isinstance(self.due, timedelta) or self.due <= timedelta(0)
        ):
            found.append("due must be a positive timedelta")
        if self.remind_every is not None and (
            not isinstance(self.remind_every, timedelta) or self.remind_every < timedelta(minutes=1)
        ):
            found.append("remind_every must be a timedelta of at least one minute")
        if self.on_expire not in ON_EXPIRE:
            found.append(f"on_expire must be one of {', '.join(ON_EXPIRE)}")
        if problem := calendar_name_problem(self.calendar):
            found.append(problem)
        if self.claim not in CLAIMS:
            found.append("claim must be 'soft', 'hard' or None")
        elif self.claim == "hard" and not self.one_decision_resolves:
            found.append(
                "claim='hard' needs a request one decision resolves (policy any, or quorum 1)"
            )
        if self.claim_idle is not None and (
            not isinstance(self.claim_idle, timedelta) or self.claim_idle < timedelta(minutes=1)
        ):
            found.append("claim_idle must be a timedelta of at least one minute")
        previous = timedelta(0)
        for number, level in enumerate(self.escalate, start=1):
            if not isinstance(level, Escalation):
                found.append(f"escalation level {number} must be an Escalation")
                continue
            if not isinstance(level.after, timedelta) or level.after <= previous:
                found.append(f"escalation level {number} must come after the previous one (after=)")
            elif self.due is not None and level.after >= self.due:
                found.append(f"escalation level {number} must come before due")
            else:
                previous = level.after
            if not (level.users or level.groups or level.assignees):
                found.append(f"escalation level {number} needs users, groups or assignees")
        keys: set[str] = set()
        for item in self.show:
            if isinstance(item, Show):
                path = item.path
            else:
                path = item[1] if isinstance(item, tuple) and len(item) == 2 else item
            if not isinstance(path, str) or path.split(".")[0] not in ("input", "outputs"):
                found.append(f"show entry {item!r} must be a path under input. or outputs.")
            elif isinstance(item, Show) and item.column:
                key = item.column_key
                if not COLUMN_KEY.match(key):
                    found.append(
                        f"column key {key!r} must be lower-case letters, digits and _ "
                        "(at most 40, starting with a letter)"
                    )
                elif key in keys:
                    found.append(f"two columns are named {key!r}: give one a key=")
                keys.add(key)
        if (
            not isinstance(self.max_rounds, int)
            or isinstance(self.max_rounds, bool)
            or not 1 <= self.max_rounds <= ROUNDS_LIMIT
        ):
            found.append(f"max_rounds must be an integer from 1 to {ROUNDS_LIMIT}")
        for name in self.revisable:
            if not isinstance(name, str) or not name or "." in name:
                found.append(f"revisable entry {name!r} must name a top-level input field")
        if len(set(self.revisable)) != len(self.revisable):
            found.append("revisable lists a field twice")
        return found

    def problems_in(self, workflow: Workflow) -> list[str]:
        """Revisable fields are top-level properties of the workflow's ``input_schema`` (when
        it has one), and never the field naming the requester."""
        found = []
        for name in self.revisable:
            if name == workflow.requester_input:
                found.append(f"revisable field {name!r} names the requester; it cannot be revised")
        schema = workflow.input_schema
        if schema is not None:
            properties = schema.get("properties") if isinstance(schema, dict) else None
            known = set(properties) if isinstance(properties, dict) else set()
            unknown = [n for n in self.revisable if n not in known]
            if unknown:
                found.append(
                    f"revisable field {unknown[0]!r} is not a top-level property of the "
                    "workflow's input_schema"
                )
        return found

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "users": list(self.users),
            "groups": list(self.groups),
            "dynamic_assignees": self.assignees is not None,
            "policy": self.policy,
            "quorum": self.quorum if self.policy == "quorum" else None,
            "on_reject": self.on_reject,
            "due": self.due.total_seconds() if self.due else None,
            "remind_every": self.remind_every.total_seconds() if self.remind_every else None,
            "escalate": [level.describe() for level in self.escalate],
            "on_expire": self.on_expire,
            "business_hours": self.in_business_time,
            "calendar": self.calendar,
            "claim": self.claim_mode or None,
            "claim_idle": self.claim_idle.total_seconds() if self.claim_idle else None,
            "revisable": list(self.revisable),
            "max_rounds": self.max_rounds,
        }

    @property
    def one_decision_resolves(self) -> bool:
        return self.policy == "any" or (self.policy == "quorum" and self.quorum == 1)

    @property
    def claim_mode(self) -> str:
        """The claim mode requests of this step get: ``soft``, ``hard`` or ``""`` (none).
        Claims are for requests one decision resolves: under ``all`` or a quorum of several
        people each must decide, so "I'm on it" would only stand in the others' way."""
        return (self.claim or "") if self.one_decision_resolves else ""

    # -- evaluated when the step becomes ready ------------------------------------------------
    def resolve_assignees(self, ctx: StepContext) -> tuple[list[str], list[str]]:
        users, groups = list(self.users), list(self.groups)
        if self.assignees is not None:
            extra = self.assignees(ctx) or {}
            users += [str(u) for u in extra.get("users", ())]
            groups += [str(g) for g in extra.get("groups", ())]
        return sorted(set(users)), sorted(set(groups))

    # What people are shown (the title and fields are stored, mailed, put in events and
    # webhooks) is rendered from the context with every sensitive field masked: a title
    # formatted from a sealed field says "••••••", never the value.
    def render_title(self, ctx: StepContext) -> str:
        shown = shown_context(ctx)
        if callable(self.title):
            text = self.title(shown)
        elif self.title:
            try:
                text = self.title.format(input=shown.input, outputs=shown.outputs)
            except (KeyError, IndexError, AttributeError, TypeError, ValueError):
                text = self.title
        else:
            text = f"{ctx.workflow}: {self.name.replace('_', ' ')}"
        return str(text)[:300]

    @property
    def columns(self) -> list[Show]:
        """The ``show=`` entries the inbox list shows as columns."""
        return [entry for entry in map(show_entry, self.show) if entry.column]

    def render_fields(self, ctx: StepContext) -> list[dict[str, Any]]:
        """The fields as stored on the request: label and value (masked where sealed), and
        ``column`` (its key) for those the inbox list shows as columns."""
        shown_ctx = shown_context(ctx)
        shown = []
        for entry in map(show_entry, self.show):
            path = entry.path
            sealed = any(path == p or path.startswith(p + ".") for p in ctx.sensitive)
            value = sealing.MASK if sealed else lookup(shown_ctx, path)
            field = {"label": entry.label, "value": value}
            if entry.column:
                field["column"] = entry.column_key
            shown.append(field)
        return shown


def shown_context(ctx: StepContext) -> StepContext:
    """``ctx`` with its sensitive fields masked: what text shown to people renders from."""
    if not ctx.sensitive:
        return ctx
    shown_input, shown_outputs = sealing.mask_paths(ctx.input, ctx.outputs, ctx.sensitive)
    return replace(ctx, input=shown_input, outputs=shown_outputs)


def lookup(ctx: StepContext, path: str) -> Any:
    head, *rest = path.split(".")
    value: Any = ctx.input if head == "input" else ctx.outputs
    for part in rest:
        if isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def approval(
    workflow: Workflow,
    name: str,
    *,
    after: Iterable[str] = (),
    when: Predicate | None = None,
    users: Iterable[str] = (),
    groups: Iterable[str] = (),
    assignees: Assignees | None = None,
    policy: str = "any",
    quorum: int = 1,
    veto: bool = True,
    reject_requires_comment: bool = True,
    allow_self_approval: bool = False,
    title: str | Callable[[StepContext], str] = "",
    show: Sequence[str | tuple[str, str] | Show] = (),
    on_reject: str = "fail",
    due: timedelta | None = None,
    requester: Callable[[StepContext], str | None] | None = None,
    remind_every: timedelta | None = None,
    escalate: Iterable[Escalation] = (),
    on_expire: str = "reject",
    business_hours: bool = False,
    calendar: str | None = None,
    claim: str | None = "soft",
    claim_idle: timedelta | None = None,
    revisable: Iterable[str] = (),
    max_rounds: int = MAX_ROUNDS,
) -> ApprovalStep:
    """Add an approval step to ``workflow``. Its output is the outcome: ``decision``
    (``approved`` / ``rejected`` / ``expired``), ``decided_by``, ``at`` and every ``decisions``
    entry.

    ``show``: what deciders see besides the title, as ``(label, path)`` pairs, bare paths or
    :class:`Show` entries; ``Show(..., column=True)`` also makes a field a sortable column of
    the inbox list (for example the amount).

    Timers: ``due`` (the request expires then and ``on_expire`` runs: ``reject`` (default),
    ``approve``, ``cancel_instance`` or ``fail``), ``remind_every`` (mail the current assignees
    again), ``escalate`` (levels, each ``after`` a duration from creation). With
    ``business_hours`` all of them count working time of the business calendar; with
    ``calendar="name"`` working time of that named calendar (``SIGNOFF_BUSINESS_CALENDARS``;
    an unknown name is refused at registration).

    Claims (``approvals.claims``): on a request assigned to a group or to several people, an
    assignee who may decide may claim it ("I'm on it"); others cannot decide while it holds.
    ``claim="soft"`` (default): another assignee may take the claim over with a note;
    ``"hard"``: only the claimant releases it, or a holder of ``approvals.override_claim``
    releases or takes it over; ``None``: no claims. Claims apply where one decision resolves
    the request (policy ``any`` or quorum 1); ``claim_idle`` (default
    ``SIGNOFF_CLAIM_IDLE_SECONDS``) is how long a claim lasts without activity.

    Send back for changes: an assignee may ``request_changes`` (with a comment) instead of
    deciding; the requester then revises the ``revisable`` top-level input fields (or none:
    resubmits as is) and resubmits, which starts the next round of this step (a fresh request,
    assignees and timers), or withdraws (the instance is cancelled). ``max_rounds`` (default
    3) bounds the rounds: in the last one changes can no longer be requested."""
    step = ApprovalStep(
        name=name,
        after=tuple([after] if isinstance(after, str) else after),
        when=when,
        users=tuple(users),
        groups=tuple(groups),
        assignees=assignees,
        policy=policy,
        quorum=quorum,
        veto=veto,
        reject_requires_comment=reject_requires_comment,
        allow_self_approval=allow_self_approval,
        title=title,
        show=tuple(show),
        on_reject=on_reject,
        due=due,
        requester=requester,
        remind_every=remind_every,
        escalate=tuple(escalate),
        on_expire=on_expire,
        business_hours=business_hours,
        calendar=calendar,
        claim=claim,
        claim_idle=claim_idle,
        revisable=tuple([revisable] if isinstance(revisable, str) else revisable),
        max_rounds=max_rounds,
    )
    workflow.add(step)
    return step
