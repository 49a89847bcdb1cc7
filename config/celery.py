"""The Celery application. Workers and beat start with ``celery -A config ...``."""

import os
import sys
from pathlib import Path

from celery import Celery

from orchestration import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def celery_role(argv: list[str]) -> str | None:
    """``worker`` or ``beat`` when this process is ``celery ... worker|beat`` (its traces are
    then ``signoff-worker``'s or ``signoff-beat``'s), else None."""
    # `celery` on the PATH, or `python -m celery` (argv[0] is celery/__main__.py)
    if not argv or "celery" not in Path(argv[0]).parts[-2:]:
        return None
    return next((word for word in argv[1:] if word in ("worker", "beat")), None)


# Before Django's setup (Celery's Django fixup runs it), where the app's ready() sets tracing up.
_role = celery_role(sys.argv)
if _role:
    tracing.set_role(_role)

app = Celery("signoff")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
