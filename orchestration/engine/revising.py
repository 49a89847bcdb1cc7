"""Revising a running instance's input under its lock: the checks, the sealing of sensitive
fields and the ``instance_input_revised`` diff. The service that opens the transaction is
:func:`orchestration.engine.operator.instance_revise_input`; other apps reach this through
:meth:`~orchestration.engine.LockedInstance.revise_input`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.utils.translation import gettext_noop

from .. import sealing
from ..definitions import Workflow
from ..errors import Conflict, InvalidInput, Message, invalid_input, state_word
from ..file_refs import refs_of_instance
from ..journal import Journal
from ..jsonsafe import storable_json_problem, string_problem
from ..models import InstanceState, WorkflowInstance
from .context import jsonable

I = InstanceState  # noqa: E741


def revise_input(
    instance: WorkflowInstance,
    definition: Workflow | None,
    journal: Journal,
    changes: Any,
    reason: str,
    added_files: Sequence[Any] = (),
) -> dict[str, Any]:
    """Change top-level fields of the locked, running instance's input (see
    :func:`orchestration.engine.instance_revise_input`); returns the diff recorded on
    ``journal`` (empty: nothing changed). ``added_files``: attachment rows saved on this
    journal (not yet written) that the files' field may list."""
    if instance.state != I.RUNNING:
        raise Conflict(
            Message(
                gettext_noop(
                    "instance is %(state)s; only a running instance's input can be revised"
                ),
                state=state_word(instance.state),
            ),
            code="invalid_state",
        )
    if definition is None:
        raise Conflict(
            Message(
                gettext_noop("%(workflow)s v%(version)s is not registered"),
                workflow=instance.workflow,
                version=instance.version,
            ),
            code="definition_missing",
        )
    if not isinstance(changes, dict):
        raise InvalidInput(
            gettext_noop("the changes must be a JSON object of input fields"), code="invalid"
        )
    problem = storable_json_problem(changes)
    if problem:
        raise InvalidInput(
            Message(gettext_noop("input: %(problem)s"), problem=problem), code="invalid_input"
        )
    if not isinstance(reason, str) or len(reason) > 1000 or string_problem(reason):
        raise InvalidInput(gettext_noop("reason must be valid text of at most 1000 characters"))
    if definition.requester_input is not None and definition.requester_input in changes:
        raise InvalidInput(
            Message(
                gettext_noop("input.%(field)s names the requester; it cannot be revised"),
                field=definition.requester_input,
            ),
            code="not_revisable",
        )
    changes = jsonable(changes)
    if definition.attachments is not None and definition.attachments in changes:
        # The files' field lists files of this instance only, as their rows say.
        changes[definition.attachments] = refs_of_instance(
            instance.pk,
            changes[definition.attachments],
            field=definition.attachments,
            added=added_files,
        )
    current = sealing.open_fields(instance.input, where="input")
    if not isinstance(current, dict):
        raise Conflict(gettext_noop("the instance's input is not an object"), code="invalid_state")
    problems = definition.validate_input({**current, **changes})
    if problems:
        raise InvalidInput(
            invalid_input(problems),
            code="invalid_input",
            errors={"input": problems},
        )
    sealed_fields = sealing.input_fields(definition.sensitive)
    stored = dict(instance.input)
    diff: dict[str, Any] = {}
    for name, new in changes.items():
        old = current.get(name)
        if name in current and old == new and isinstance(old, bool) == isinstance(new, bool):
            continue  # 120 and 120.0 are the same amount; true and 1 are not the same
        entry: dict[str, Any] = {"from": current.get(name), "to": new}
        if name not in current:
            entry["added"] = True
        if name in sealed_fields:
            # The history never holds a sealed value: the diff says that it changed, not how.
            entry.update({"from": sealing.MASK if name in current else None, "to": sealing.MASK})
            entry["sealed"] = True
            stored[name] = sealing.seal_value(new)
        else:
            stored[name] = new
        diff[name] = entry
    if not diff:
        return {}
    instance.input = stored
    # The journal's instance write leaves the input alone (it is not in the hot path's
    # columns): write it here, in the same transaction.
    WorkflowInstance.objects.filter(pk=instance.pk).update(input=stored)
    journal.record(
        "instance_input_revised",
        data={"changes": diff, **({"reason": reason} if reason else {})},
    )
    return diff
