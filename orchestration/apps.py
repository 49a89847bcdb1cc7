from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = gettext_lazy("Workflows")
    default_auto_field = "django.db.models.BigAutoField"
    periodic_tasks = [
        ("orchestration.sweep_doorbells", 10),
        ("orchestration.sweep_step_timeouts", 5),
        ("orchestration.sweep_instance_deadlines", 30),
        ("orchestration.sweep_waiting_deadlines", 10),
        ("orchestration.sweep_schedules", 10),
        ("orchestration.sweep_retention", 3600),
        ("orchestration.sweep_history_partitions", 3600),
        ("orchestration.sweep_stale_batches", 30),
    ]

    def ready(self) -> None:
        from importlib import import_module

        from django.conf import settings

        # Step kinds, start-up checks, the Celery tasks doorbells send, and the operator's
        # repair actions (they join the admin's and status page's operations).
        from . import (  # noqa: F401
            checks,
            children,
            engine,
            fanout,
            fanout_children,
            repair_actions,
            tasks,
            tracing,
            waits,
        )
        from .metrics import register_collector
        from .schedule_metrics import schedule_metrics

        register_collector("schedules", schedule_metrics)

        for module in settings.SIGNOFF_WORKFLOW_MODULES:
            import_module(module)
        # Before the web handler loads its middleware (Django's span per request goes in).
        tracing.setup_from_settings()
        post_migrate.connect(_install_periodic_tasks, sender=self)


def _install_periodic_tasks(**kwargs: object) -> None:
    from .periodic import install_periodic_tasks

    install_periodic_tasks()
