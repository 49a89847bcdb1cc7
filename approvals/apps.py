from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = gettext_lazy("Approvals")
    default_auto_field = "django.db.models.BigAutoField"
    periodic_tasks = [
        ("approvals.sweep_reminders", 30),
        ("approvals.sweep_escalations", 30),
        ("approvals.sweep_expiry", 30),
        ("approvals.sweep_claims", 60),
        ("approvals.sweep_digests", 300),
    ]

    def ready(self) -> None:
        from orchestration.metrics import register_collector
        from orchestration.operator_actions import register_step_links
        from orchestration.selectors import register_instance_reader
        from orchestration.signals import event_committed
        from orchestration.timeline import register_event_titles, register_timeline_details

        from . import (  # noqa: F401 - step kind, erase hooks, readers, the preferences link
            erasure,
            files,
            locale,  # the recipient's language and zone for mail
            mail_preferences,
            services,
            tasks,  # the render task the sweepers send by name
        )
        from .alerting import register as register_alert_conditions
        from .context import comment_details, instance_reader
        from .lifecycle import on_event_committed
        from .metrics import approval_metrics
        from .status_links import approval_step_links
        from .timeline import APPROVAL_EVENTS

        register_alert_conditions()
        register_step_links(approval_step_links)
        register_instance_reader(instance_reader)
        register_timeline_details(comment_details)
        register_collector("approvals", approval_metrics)
        register_event_titles(APPROVAL_EVENTS)
        event_committed.connect(on_event_committed, dispatch_uid="approvals.end_notice")
