"""Fixtures of the integrations tests."""

from __future__ import annotations

import pytest

from integrations import mail
from integrations.alerts import delivery, services


@pytest.fixture
def sent(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The alert tests' mail and webhook messages, recorded instead of sent (in e2e tests they
    are sent: the worker gets them)."""
    got: dict[str, list] = {"mail": [], "webhook": []}
    services.forget_rules()
    if request.node.get_closest_marker("e2e"):
        return got
    monkeypatch.setattr(mail, "_enqueue", lambda pk: got["mail"].append(pk))
    monkeypatch.setattr(
        delivery,
        "enqueue_webhook",
        lambda pk, notice, countdown=None: got["webhook"].append((pk, notice, countdown)),
    )
    return got
