from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"
    periodic_tasks = [
        ("orchestration.sweep_doorbells", 10),
        ("orchestration.sweep_step_timeouts", 5),
        ("orchestration.sweep_instance_deadlines", 30),
        ("orchestration.sweep_waiting_deadlines", 10),
        ("orchestration.sweep_retention", 3600),
        ("orchestration.sweep_stale_batches", 30),
    ]

    def ready(self) -> None:
        from importlib import import_module

        from django.conf import settings

        # Step kinds, start-up checks, and the Celery tasks doorbells send.
        from . import checks, children, engine, tasks, waits  # noqa: F401

        for module in settings.SIGNOFF_WORKFLOW_MODULES:
            import_module(module)
        post_migrate.connect(_install_periodic_tasks, sender=self)


def _install_periodic_tasks(**kwargs: object) -> None:
    from .periodic import install_periodic_tasks

    install_periodic_tasks()
