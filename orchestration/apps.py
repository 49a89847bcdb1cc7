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

        cache_long_statements()

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


# What psycopg's parse cache takes (its own limits are 4,096 bytes and 50 parameters).
STATEMENT_CACHE_MAX_BYTES = 16_384
STATEMENT_CACHE_MAX_PARAMS = 400


def cache_long_statements() -> None:
    """Let psycopg keep the parsed form of the engine's fixed statements.

    psycopg turns a statement's ``%s`` placeholders into PostgreSQL's form once per distinct
    text, in an LRU cache of 128 texts, but only for texts of at most 4,096 bytes with at most
    50 parameters (``psycopg._queries``). A start's one INSERT (instance, steps, events) has
    about 100 parameters and a step's one UPDATE 60 to 120, so each was parsed again every
    time: 0.3 ms of a 5 ms start (``bench/api.py --profile``). Their texts repeat (one per
    workflow shape), so the limits are raised; bulk statements of thousands of rows stay
    outside the cache as before. A psycopg without these module limits is left alone.
    """
    try:
        from psycopg import _queries
    except ImportError:  # the embedded default (SQLite) needs no psycopg
        return
    if hasattr(_queries, "MAX_CACHED_STATEMENT_LENGTH"):
        _queries.MAX_CACHED_STATEMENT_LENGTH = max(
            _queries.MAX_CACHED_STATEMENT_LENGTH, STATEMENT_CACHE_MAX_BYTES
        )
    if hasattr(_queries, "MAX_CACHED_STATEMENT_PARAMS"):
        _queries.MAX_CACHED_STATEMENT_PARAMS = max(
            _queries.MAX_CACHED_STATEMENT_PARAMS, STATEMENT_CACHE_MAX_PARAMS
        )
