from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = gettext_lazy("Integrations")
    default_auto_field = "django.db.models.BigAutoField"
    periodic_tasks = [
        ("integrations.sweep_outbox", 60),
        ("integrations.sweep_webhooks", 60),
        ("integrations.sweep_alerts", 60),
    ]

    def ready(self) -> None:
        from orchestration.metrics import register_collector
        from orchestration.signals import event_committed, schedule_missed

        # erase hooks, the webhook admins, and the tasks the services send by name
        from . import alert_admin, erasure, tasks, webhook_admin  # noqa: F401
        from .alerts import services as alerts
        from .metrics import alert_metrics, email_metrics
        from .webhooks import on_event_committed

        event_committed.connect(on_event_committed, dispatch_uid="integrations.webhooks")
        event_committed.connect(alerts.on_event_committed, dispatch_uid="integrations.alerts")
        schedule_missed.connect(alerts.on_schedule_missed, dispatch_uid="integrations.alerts")
        register_collector("integrations", email_metrics)
        register_collector("integrations_alerts", alert_metrics)
        from django.db.models.signals import post_delete, post_save

        from orchestration.retention import register_sealed_tokens

        from .models import AlertRule, WebhookSubscription
        from .webhooks import forget_subscriptions

        # `manage.py signoff rotate-keys` re-encrypts the sealed webhook secrets too.
        register_sealed_tokens(WebhookSubscription, ["secret", "previous_secret"])
        register_sealed_tokens(AlertRule, ["webhook_secret", "webhook_previous_secret"])
        post_save.connect(forget_subscriptions, sender=WebhookSubscription)
        post_delete.connect(forget_subscriptions, sender=WebhookSubscription)
        post_save.connect(alerts.forget_rules, sender=AlertRule)
        post_delete.connect(alerts.forget_rules, sender=AlertRule)
