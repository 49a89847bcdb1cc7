"""Approval timers in a named business calendar (``approval(..., calendar="name")``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import override_settings

from approvals.definitions import approval
from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.definitions import DefinitionError, Registry, Workflow, registry
from orchestration.models import WorkflowInstance

pytestmark = pytest.mark.django_db

CALENDARS = {"bavaria": {"country": "DE", "subdivision": "BY", "timezone": "UTC"}}
DEFAULT = {
    "SIGNOFF_BUSINESS_TIMEZONE": "UTC",
    "SIGNOFF_BUSINESS_COUNTRY": "",
    "SIGNOFF_BUSINESS_SUBDIVISION": "",
    "SIGNOFF_HOLIDAYS": [],
    "SIGNOFF_BUSINESS_CALENDARS": CALENDARS,
}


def _noop(ctx: object) -> dict:
    return {}


@pytest.fixture
def flows():
    made: list[Workflow] = []

    def make(name: str, **kwargs: object) -> str:
        wf = Workflow(name)
        approval(wf, "decide", users=["ann"], title="Decide", requester=lambda c: "req", **kwargs)
        wf.task(_noop, name="after", after=["decide"])
        registry.register(wf)
        made.append(wf)
        return name

    yield make
    for wf in made:
        registry.unregister(wf.name, wf.version)


@override_settings(**DEFAULT)
def test_an_approval_due_in_a_named_calendar_skips_its_public_holidays(
    django_user_model, flows
) -> None:
    django_user_model.objects.create_user("ann", email="ann@example.com")
    django_user_model.objects.create_user("req", email="req@example.com")
    bavarian = flows("t_cal_by", due=timedelta(days=1), calendar="bavaria")
    plain = flows("t_cal_plain", due=timedelta(days=1), business_hours=True)
    friday = datetime(2031, 1, 3, 15, 0, tzinfo=UTC)  # Monday 6 January: Epiphany in Bavaria
    with time_machine.travel(friday, tick=False):
        by, _ = engine.instance_start(workflow=bavarian)
        default, _ = engine.instance_start(workflow=plain)
    assert ApprovalRequest.objects.get(instance=by).due_at == datetime(
        2031, 1, 7, 15, 0, tzinfo=UTC
    )
    assert ApprovalRequest.objects.get(instance=default).due_at == datetime(
        2031, 1, 6, 15, 0, tzinfo=UTC
    )
    described = registry.get(bavarian).steps["decide"].describe()
    assert (described["calendar"], described["business_hours"]) == ("bavaria", True)


@override_settings(**DEFAULT)
@pytest.mark.parametrize("name", ["atlantis", "", 42, "BAVARIA"])
def test_a_step_naming_an_unknown_calendar_is_refused_at_registration(name: object) -> None:
    wf = Workflow("t_cal_unknown")
    approval(wf, "decide", users=["a"], due=timedelta(days=1), calendar=name)
    before = WorkflowInstance.objects.count()
    target = Registry()
    with pytest.raises(DefinitionError, match="is not a named business calendar .known: bavaria"):
        target.register(wf)
    assert target.get("t_cal_unknown") is None
    assert WorkflowInstance.objects.count() == before
