from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"
    default_auto_field = "django.db.models.BigAutoField"
    periodic_tasks = [
        ("approvals.sweep_reminders", 30),
        ("approvals.sweep_escalations", 30),
        ("approvals.sweep_expiry", 30),
    ]

    def ready(self) -> None:
        from . import erasure, services  # noqa: F401 - the approval step kind, erase hooks
