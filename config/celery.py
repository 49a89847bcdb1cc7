"""The Celery application. Workers and beat start with ``celery -A config ...``."""

import os
import sys
from pathlib import Path
from typing import Any

from celery import Celery

from config.backends import whole_second_countdown
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


class SignoffCelery(Celery):
    """Celery, with delayed messages that RabbitMQ's quorum queues can carry."""

    def send_task(self, name: str, *args: Any, **options: Any) -> Any:
        """On RabbitMQ with quorum queues (native delayed delivery), an ``eta`` or ``countdown``
        becomes a whole-second countdown rounded up (config.backends.whole_second_countdown);
        on Redis it is passed as given."""
        if self.conf.task_default_queue_type == "quorum" and (
            options.get("eta") is not None or options.get("countdown") is not None
        ):
            countdown = whole_second_countdown(
                options.pop("countdown", None), options.pop("eta", None), self.now()
            )
            if countdown is not None:
                options["countdown"] = countdown
        return super().send_task(name, *args, **options)


app = SignoffCelery("signoff")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
