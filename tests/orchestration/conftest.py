"""Fixtures of the operator tests: people with and without the operate permission, and
Debian's Chromium for the status page browser test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission

VIEW_PERMISSIONS = [
    "orchestration.view_workflowinstance",
    "orchestration.view_steprun",
    "orchestration.view_event",
    "approvals.view_approvalrequest",
    "approvals.view_decision",
    "approvals.view_delegation",
    "integrations.view_outboundemail",
]


def _grant(user: Any, names: list[str]) -> Any:
    for name in names:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return type(user).objects.get(pk=user.pk)  # fresh permission cache


@pytest.fixture
def viewer(django_user_model: Any) -> Any:
    """Staff who may look at everything and act on nothing."""
    user = django_user_model.objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    return _grant(user, VIEW_PERMISSIONS)


@pytest.fixture
def operator(django_user_model: Any) -> Any:
    """Staff with view permissions and ``orchestration.operate_instance``."""
    user = django_user_model.objects.create_user("oper", password="pw-oper-123", is_staff=True)
    return _grant(user, [*VIEW_PERMISSIONS, "orchestration.operate_instance"])


@pytest.fixture
def superuser(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


DJANGO_TRACING_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware"


@pytest.fixture
def traces() -> Iterator[Any]:
    """Tracing on in this process (Django and Celery instrumented), spans kept in the SDK's
    in-memory exporter (yielded), turned off again after the test."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestration import tracing

    assert not tracing.enabled()
    exporter = InMemorySpanExporter()
    tracing.setup(exporter=exporter, service="signoff-test", set_global=False)
    yield exporter
    tracing.shutdown()
    assert not any(DJANGO_TRACING_MIDDLEWARE in m for m in settings.MIDDLEWARE)
