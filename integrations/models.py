"""Outbound messages. Each is written in the transaction that decides to send it (an outbox),
then delivered by a Celery task; the unique ``message_id`` makes a retried delivery a no-op.

Webhook deliveries follow the same shape: a row per (subscription, event), written after the
engine's commit, POSTed by a Celery task; its id is the receivers' deduplication key."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, FSMModelMixin, transition

from orchestration import sealing

from . import webhook_http, webhook_signing


class OutboundEmail(models.Model):
    class Status(models.TextChoices):
        # Written by a batch (the escalation sweep) before its body exists; the app that wrote
        # it renders it from ``render_context`` and moves it to ``queued``.
        RENDERING = "rendering"
        QUEUED = "queued"
        SENT = "sent"
        FAILED = "failed"

    message_id = models.CharField(max_length=255, unique=True)
    kind = models.CharField(max_length=50)
    to = models.JSONField(default=list)
    subject = models.CharField(max_length=300)
    body_text = models.TextField()
    body_html = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    # Context for operators: which instance and request it is about.
    instance_id = models.UUIDField(null=True, blank=True)
    request_id = models.BigIntegerField(null=True, blank=True)
    # While ``rendering``: what the renderer needs besides the request (recipient, level).
    render_context = models.JSONField(null=True, blank=True)
    # The mail carries a personal link: the bodies hold ``mail.LINK_PLACEHOLDER`` and this
    # says which registered minter makes the link at delivery, and for what (ids only, no
    # secret). The link itself is never stored.
    link_ref = models.JSONField(null=True, blank=True)

    class Meta:
        verbose_name = _("outbound email")
        verbose_name_plural = _("outbound emails")
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["created_at"], name="email_queued_created", condition=Q(status="queued")
            ),
            models.Index(
                fields=["created_at"],
                name="email_rendering_created",
                condition=Q(status="rendering"),
            ),
            models.Index(fields=["instance_id"], name="email_instance"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {', '.join(self.to)}: {self.subject}"


# -- outbound webhooks -----------------------------------------------------------------------------

# What a subscription with an empty event filter receives: the lifecycle of an instance and of
# its approvals.
WEBHOOK_LIFECYCLE_EVENTS: dict[str, str] = {
    "instance_started": "instance started",
    "instance_succeeded": "instance succeeded",
    "instance_failed": "instance failed",
    "instance_compensating": "instance compensating (a saga unwinds)",
    "instance_compensated": "instance compensated",
    "instance_cancelled": "instance cancelled",
    "approval_requested": "approval requested",
    "approval_decided": "approval decided (one person's decision)",
    "approval_resolved": "approval resolved (the request's outcome)",
    "approval_expired": "approval expired",
}
# Sent only to subscriptions that name them.
WEBHOOK_OPT_IN_EVENTS: dict[str, str] = {
    "step_failed": "step failed (opt-in)",
    "step_timed_out": "step timed out (opt-in)",
    "approval_escalated": "approval escalated (opt-in)",
}
WEBHOOK_EVENTS: dict[str, str] = {**WEBHOOK_LIFECYCLE_EVENTS, **WEBHOOK_OPT_IN_EVENTS}


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return webhook_signing.new_secret()


def seal_secret(secret: str) -> str:
    """A secret as stored: the Fernet token of a sealed value (``orchestration.sealing``, under
    ``SIGNOFF_ENCRYPTION_KEYS``; DESIGN.md "Trust": nothing usable is stored that could be
    lifted from a dump)."""
    return sealing.seal_value(secret)[sealing.MARK]


def open_secret(stored: str) -> str:
    try:
        return str(sealing.open_value({sealing.MARK: stored}, where="webhook secret"))
    except (sealing.SealError, ValueError):
        raise sealing.SealError(
            "cannot decrypt a webhook secret: none of the keys in SIGNOFF_ENCRYPTION_KEYS opens it"
        ) from None


def new_sealed_webhook_secret() -> str:
    return seal_secret(new_webhook_secret())


def live_secrets(
    current: str, previous: str, previous_expires_at: Any, now: Any = None
) -> list[str]:
    """The unsealed secrets that sign a delivery now: the current one, and the previous one
    while its overlap lasts (webhook subscriptions and alert rules alike)."""
    now = now or timezone.now()
    found = [open_secret(current)]
    if previous and previous_expires_at and now < previous_expires_at:
        found.append(open_secret(previous))
    return found


class WebhookSubscription(models.Model):
    """An outside endpoint that receives signed POSTs for the events it asks for."""

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=500, help_text="http:// or https:// endpoint to POST to.")
    # Sealed (a Fernet token): shown whole once, when made (creation or rotation), then masked.
    secret = models.TextField(default=new_sealed_webhook_secret, editable=False)
    # After a rotation the previous secret (sealed) signs too until it expires.
    previous_secret = models.TextField(blank=True, default="", editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    event_types = models.JSONField(
        default=list, blank=True, help_text="Empty: every lifecycle event."
    )
    workflows = models.JSONField(default=list, blank=True, help_text="Empty: every workflow.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        verbose_name = _("webhook subscription")
        verbose_name_plural = _("webhook subscriptions")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if urlsplit(self.url or "").scheme not in ("http", "https"):
            errors["url"] = "Use an http:// or https:// URL."
        else:
            try:
                webhook_http.check_target(self.url)
            except webhook_http.TargetRefused as exc:
                errors["url"] = str(exc)
        if not isinstance(self.event_types, list) or not all(
            isinstance(t, str) for t in self.event_types
        ):
            errors["event_types"] = "A list of event types."
        elif unknown := sorted(set(self.event_types) - set(WEBHOOK_EVENTS)):
            errors["event_types"] = f"Unknown event types: {', '.join(unknown)}."
        if not isinstance(self.workflows, list) or not all(
            isinstance(w, str) and w for w in self.workflows
        ):
            errors["workflows"] = "A list of workflow names."
        if errors:
            raise ValidationError(errors)

    def signing_secrets(self, now: Any = None) -> list[str]:
        """The secrets that sign a delivery now: the current one, and the previous one while
        its overlap lasts."""
        return live_secrets(self.secret, self.previous_secret, self.previous_secret_expires_at, now)

    def secret_hint(self) -> str:
        return webhook_signing.masked_secret(open_secret(self.secret))

    def wants(self, event_type: str, workflow: str) -> bool:
        """Whether an event of this type, of an instance of this workflow, is sent here."""
        if not self.active:
            return False
        types = self.event_types or WEBHOOK_LIFECYCLE_EVENTS
        return event_type in types and (not self.workflows or workflow in self.workflows)


class WebhookDelivery(models.Model):
    """One event for one subscription: the payload (fixed when the event committed) and the
    attempts to POST it. The row's id is the ``X-Signoff-Delivery`` receivers dedupe on."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    subscription = models.ForeignKey(
        WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_id = models.BigIntegerField(null=True, blank=True)
    event_seq = models.PositiveIntegerField()
    instance_id = models.UUIDField()
    event_type = models.CharField(max_length=50)
    # Everything of the body but the delivery id, which is added when it is sent.
    payload = models.JSONField(encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # While pending: when the next attempt is due (the Celery message's eta; the sweeper's
    # deadline column).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # One entry per attempt or operator retry, newest last (bounded).
    history = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "instance_id", "event_seq"], name="webhook_delivery_once"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_pending_due",
                condition=Q(status="pending"),
            ),
            models.Index(fields=["instance_id"], name="webhook_instance"),
            models.Index(fields=["created_at"], name="webhook_created"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.subscription_id} #{self.pk}"


# -- alerts ----------------------------------------------------------------------------------------


class AlertCondition(models.TextChoices):
    """The conditions an alert rule may watch. Each is implemented by a condition registered in
    :mod:`integrations.alerts.conditions` (``approval_overdue`` by the approvals app)."""

    INSTANCE_FAILED = "instance_failed", "instance failed"
    INSTANCE_STUCK = "instance_stuck", "instance stuck (no progress for a while)"
    APPROVAL_OVERDUE = "approval_overdue", "approval overdue (past its due time)"
    SCHEDULE_MISSED = "schedule_missed", "schedule missed or skipped a fire"
    COMPENSATION_FAILED = "compensation_failed", "compensation failed (a saga could not undo)"


class AlertRule(models.Model):
    """What operators want to hear about, and where. Validation lives in :meth:`clean` (the
    admin's form runs it; :func:`integrations.alerts.services.alert_rule_save` too)."""

    name = models.CharField(max_length=100, unique=True)
    condition = models.CharField(max_length=40, choices=AlertCondition.choices)
    workflow = models.CharField(
        max_length=100, blank=True, default="", help_text="Only this workflow (empty: every one)."
    )
    stuck_after = models.DurationField(
        null=True,
        blank=True,
        help_text="instance_stuck: no progress for this long (e.g. 01:00:00 for an hour).",
    )
    overdue_grace = models.DurationField(
        null=True,
        blank=True,
        help_text="approval_overdue: fire this long after the due time (empty: at once).",
    )
    mail_to = models.TextField(
        blank=True, default="", help_text="Mail addresses, one per line or comma-separated."
    )
    mail_group = models.ForeignKey(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Also mail the active members of this group (with an address).",
    )
    webhook_url = models.URLField(
        max_length=500, blank=True, default="", help_text="https:// endpoint to POST alerts to."
    )
    # Sealed (a Fernet token), as webhook subscriptions' secrets: shown whole once, when made
    # (creation or rotation), then masked. After a rotation the previous one signs too until
    # it expires.
    webhook_secret = models.TextField(default=new_sealed_webhook_secret, editable=False)
    webhook_previous_secret = models.TextField(blank=True, default="", editable=False)
    webhook_previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        verbose_name = _("alert rule")
        verbose_name_plural = _("alert rules")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def mail_addresses(self) -> list[str]:
        """The addresses written in ``mail_to`` (not the group's members)."""
        return [a.strip() for a in self.mail_to.replace(",", "\n").splitlines() if a.strip()]

    def signing_secrets(self, now: Any = None) -> list[str]:
        """The unsealed secrets that sign an alert's webhook POST now."""
        return live_secrets(
            self.webhook_secret,
            self.webhook_previous_secret,
            self.webhook_previous_secret_expires_at,
            now,
        )

    def secret_hint(self) -> str:
        return webhook_signing.masked_secret(open_secret(self.webhook_secret))

    def clean(self) -> None:
        from .alerts.rules import rule_problems

        if errors := rule_problems(self):
            raise ValidationError(errors)


class AlertState(models.TextChoices):
    FIRING = "firing"
    RESOLVED = "resolved"


class Alert(FSMModelMixin, models.Model):
    """One rule firing for one subject (an instance, an approval request, a schedule) until
    the subject recovers. At most one firing alert per (rule, subject): the partial unique
    index is the deduplication. ``deliveries`` says, per notice (``fired``, ``resolved``) and
    channel (``mail``, ``webhook``), what was sent and how it went."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    condition = models.CharField(max_length=40)
    subject = models.CharField(max_length=200, help_text="e.g. instance:<id>, approval:<id>")
    instance_id = models.UUIDField(null=True, blank=True)
    title = models.CharField(max_length=300)
    # What the condition found (masked: never a sealed value).
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    state = FSMField(default=AlertState.FIRING, choices=AlertState.choices, protected=True)
    first_fired_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    times_seen = models.PositiveIntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=200, blank=True, default="")
    deliveries = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = _("alert")
        verbose_name_plural = _("alerts")
        ordering = ["-first_fired_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "subject"],
                condition=Q(state="firing"),
                name="alert_firing_once",
            ),
        ]
        indexes = [
            models.Index(fields=["rule", "id"], name="alert_firing", condition=Q(state="firing")),
            models.Index(fields=["instance_id"], name="alert_instance"),
        ]
        permissions = [("resolve_alert", "Can resolve a firing alert by hand")]

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.title} ({self.state})"

    @transition(field=state, source=AlertState.FIRING, target=AlertState.RESOLVED)
    def resolve(self) -> None:
        """The subject recovered (or an operator said so)."""
