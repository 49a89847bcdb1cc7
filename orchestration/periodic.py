"""Installs the sweepers as django-celery-beat periodic tasks, idempotently.

Each app lists its sweepers as ``periodic_tasks = [(task name, every N seconds), ...]`` on its
AppConfig. ``install_periodic_tasks`` runs after every ``migrate`` (post_migrate) and from
``manage.py setup_periodic_tasks``; running it twice changes nothing.
"""

from __future__ import annotations

from django.apps import apps


def wanted_periodic_tasks() -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for config in apps.get_app_configs():
        found.extend(getattr(config, "periodic_tasks", []))
    return found


def install_periodic_tasks() -> int:
    """Create or update one interval schedule and one enabled periodic task per sweeper;
    returns how many were created."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    created = 0
    for task, seconds in wanted_periodic_tasks():
        schedule, _ = IntervalSchedule.objects.get_or_create(
            every=seconds, period=IntervalSchedule.SECONDS
        )
        _, was_created = PeriodicTask.objects.update_or_create(
            name=f"signoff: {task}",
            defaults={"task": task, "interval": schedule, "enabled": True, "crontab": None},
        )
        created += was_created
    return created
