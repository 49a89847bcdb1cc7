from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"
    default_auto_field = "django.db.models.BigAutoField"
    periodic_tasks = [
        ("integrations.sweep_outbox", 60),
        ("integrations.sweep_webhooks", 60),
    ]

    def ready(self) -> None:
        from orchestration.metrics import register_collector
        from orchestration.signals import event_committed

        # erase hooks, the webhook admins, and the tasks the services send by name
        from . import erasure, tasks, webhook_admin  # noqa: F401
        from .metrics import email_metrics
        from .webhooks import on_event_committed

        event_committed.connect(on_event_committed, dispatch_uid="integrations.webhooks")
        register_collector("integrations", email_metrics)
        from django.db.models.signals import post_delete, post_save

        from .models import WebhookSubscription
        from .webhooks import forget_subscriptions

        post_save.connect(forget_subscriptions, sender=WebhookSubscription)
        post_delete.connect(forget_subscriptions, sender=WebhookSubscription)
