from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"
    default_auto_field = "django.db.models.BigAutoField"
    periodic_tasks = [
        ("approvals.sweep_reminders", 30),
        ("approvals.sweep_escalations", 30),
        ("approvals.sweep_expiry", 30),
        ("approvals.sweep_claims", 60),
    ]

    def ready(self) -> None:
        from orchestration.views import register_step_links

        from . import erasure, files, services  # noqa: F401 - step kind, erase hooks, readers
        from .status_links import approval_step_links

        register_step_links(approval_step_links)
