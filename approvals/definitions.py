"""The ``approval`` step kind in the DSL.

Example::

    from approvals.definitions import approval

    approval(
        wf, "manager_approval", after=["validate"],
        groups=["managers"], policy="any", due=timedelta(days=2),
        title="Expense {input[amount]} {input[currency]}: {input[description]}",
        show=[("Amount", "input.amount"), ("Requester", "input.requester")],
    )
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from orchestration.definitions import Predicate, StepContext, StepSpec, Workflow

POLICIES = ("any", "all", "quorum")
ON_REJECT = ("fail", "continue")

Assignees = Callable[[StepContext], dict[str, Iterable[str]]]


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
    show: Sequence[str | tuple[str, str]] = ()
    on_reject: str = "fail"
    due: timedelta | None = None
    requester: Callable[[StepContext], str | None] | None = None
    kind: str = "approval"
    # Room for the timers issue: reminders, escalation levels, on_expire.
    extra: dict[str, Any] = field(default_factory=dict)

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
        for item in self.show:
            path = item[1] if isinstance(item, tuple) else item
            if not isinstance(path, str) or path.split(".")[0] not in ("input", "outputs"):
                found.append(f"show entry {item!r} must be a path under input. or outputs.")
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
        }

    # -- evaluated when the step becomes ready ------------------------------------------------
    def resolve_assignees(self, ctx: StepContext) -> tuple[list[str], list[str]]:
        users, groups = list(self.users), list(self.groups)
        if self.assignees is not None:
            extra = self.assignees(ctx) or {}
            users += [str(u) for u in extra.get("users", ())]
            groups += [str(g) for g in extra.get("groups", ())]
        return sorted(set(users)), sorted(set(groups))

    def render_title(self, ctx: StepContext) -> str:
        if callable(self.title):
            text = self.title(ctx)
        elif self.title:
            try:
                text = self.title.format(input=ctx.input, outputs=ctx.outputs)
            except (KeyError, IndexError, AttributeError, ValueError):
                text = self.title
        else:
            text = f"{ctx.workflow}: {self.name.replace('_', ' ')}"
        return str(text)[:300]

    def render_fields(self, ctx: StepContext) -> list[dict[str, Any]]:
        shown = []
        for item in self.show:
            if isinstance(item, tuple):
                label, path = item
            else:
                path = item
                label = item.split(".")[-1].replace("_", " ").capitalize()
            shown.append({"label": label, "value": lookup(ctx, path)})
        return shown


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
    show: Sequence[str | tuple[str, str]] = (),
    on_reject: str = "fail",
    due: timedelta | None = None,
    requester: Callable[[StepContext], str | None] | None = None,
) -> ApprovalStep:
    """Add an approval step to ``workflow``. Its output is the outcome: ``decision``
    (``approved`` / ``rejected``), ``decided_by``, ``at`` and every ``decisions`` entry."""
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
    )
    workflow.add(step)
    return step
