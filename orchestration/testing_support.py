"""What the workflow test kit (:mod:`orchestration.testing`) shares: its error, finding a
registered definition, and the history assertions with their failure messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from .definitions import Workflow, registry
from .models import Event


class Kit(Protocol):
    """What a handle asks of its kit (:class:`orchestration.testing.SignoffKit`)."""

    def run_until_idle(self, *, skip_backoff: bool = True) -> int: ...

    def fail_step(
        self,
        workflow: str,
        step: str,
        *,
        on_attempt: int | Iterable[int] = 1,
        error: BaseException | type[BaseException] | None = None,
        version: int | None = None,
        instance_id: Any = None,
    ) -> None: ...


class KitError(Exception):
    """A test asked the kit for something that cannot be: an unknown workflow or step, time
    going backwards, a signal no step waits for... The message says what and why."""


def versions_of(workflow: str) -> list[Workflow]:
    found = [wf for wf in registry.all() if wf.name == workflow]
    if not found:
        known = ", ".join(sorted({wf.name for wf in registry.all()}))
        raise KitError(
            f"unknown workflow {workflow!r}; registered: {known} "
            "(is its module listed in SIGNOFF_WORKFLOW_MODULES?)"
        )
    return found


def definition_of(workflow: str, version: int | None = None) -> Workflow:
    """The registered definition, or a :class:`KitError` naming what is registered."""
    versions = versions_of(workflow)
    definition = registry.get(workflow, version)
    if definition is None:
        have = ", ".join(str(wf.version) for wf in versions)
        raise KitError(f"workflow {workflow!r} has no version {version}; it has {have}")
    return definition


def label(event: Event) -> str:
    return f"{event.type}:{event.step}" if event.step else event.type


def _matches(event: Event, wanted: str) -> bool:
    kind, _, step = wanted.partition(":")
    return event.type == kind and (not step or event.step == step)


def assert_history(
    events: Iterable[Event], *expected: str, exact: bool = False, title: str = "instance"
) -> None:
    """Assert ``events`` contain ``expected`` in order (see
    :meth:`WorkflowHandle.assert_history`); raises AssertionError with the whole history."""
    events = list(events)
    if not expected:
        raise KitError("assert_history needs at least one expected event")
    if exact:
        got = [label(e) if ":" in w else e.type for e, w in zip(events, expected, strict=False)]
        ok = len(events) == len(expected) and all(map(_matches, events, expected))
        if not ok:
            raise AssertionError(
                f"history of {title} is not exactly {list(expected)}\n"
                f"got {got if len(events) == len(expected) else [label(e) for e in events]}"
                f"\n{_listing(events, None)}"
            )
        return
    position, matched = 0, -1
    for wanted in expected:
        found = next((i for i in range(position, len(events)) if _matches(events[i], wanted)), None)
        if found is None:
            earlier = any(_matches(e, wanted) for e in events[:position])
            where = "only before the events matched so far" if earlier else "nowhere"
            raise AssertionError(
                f"history of {title}: expected {wanted!r} after "
                f"{label(events[matched]) if matched >= 0 else 'the start'}, found it {where}\n"
                f"expected in order: {list(expected)}\n{_listing(events, matched)}"
            )
        matched, position = found, found + 1


def _listing(events: list[Event], matched: int | None) -> str:
    lines = ["history:"]
    for i, event in enumerate(events):
        attempt = f" attempt {event.attempt}" if event.attempt else ""
        mark = "  <- matched up to here" if matched is not None and i == matched else ""
        lines.append(f"  #{event.seq} {event.type} {event.step or ''}{attempt}{mark}".rstrip())
    return "\n".join(lines)
