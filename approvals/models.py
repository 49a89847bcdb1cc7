"""The human side of an ``approval`` step: requests, decisions and delegations."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import F, Q
from django_fsm import FSMField, FSMModelMixin, transition

from orchestration.models import StepRun, WorkflowInstance


class RequestState(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Policy(models.TextChoices):
    ANY = "any"  # the first decision resolves it
    ALL = "all"  # every assigned user and every assigned group (one member) must approve
    QUORUM = "quorum"  # N distinct approvals


class Channel(models.TextChoices):
    WEB = "web"
    EMAIL = "email"
    API = "api"
    ADMIN = "admin"


class Outcome(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"


R = RequestState


class ApprovalRequest(FSMModelMixin, models.Model):
    step_run = models.OneToOneField(StepRun, on_delete=models.CASCADE, related_name="approval")
    instance = models.ForeignKey(
        WorkflowInstance, on_delete=models.CASCADE, related_name="approvals"
    )
    # Copied from the instance so the inbox filters without a join.
    workflow = models.CharField(max_length=100)
    business_key = models.CharField(max_length=200, blank=True, default="")
    step_name = models.CharField(max_length=100)
    title = models.CharField(max_length=300)
    # What the approver sees: [{"label": ..., "value": ...}], captured when requested.
    fields = models.JSONField(default=list, blank=True)
    policy = models.CharField(max_length=10, choices=Policy.choices, default=Policy.ANY)
    quorum = models.PositiveSmallIntegerField(default=1)
    veto = models.BooleanField(default=True, help_text="a single rejection rejects")
    reject_requires_comment = models.BooleanField(default=True)
    allow_self_approval = models.BooleanField(default=False)
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    assignee_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="approval_requests"
    )
    assignee_groups = models.ManyToManyField(Group, blank=True, related_name="approval_requests")
    state = FSMField(default=R.PENDING, choices=R.choices, protected=True)
    created_at = models.DateTimeField()
    due_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Timers. Each "next" column is set while the request is pending and something is due;
    # the sweepers read them through partial indexes.
    level = models.PositiveSmallIntegerField(default=0, help_text="escalation levels passed")
    last_reminded_at = models.DateTimeField(null=True, blank=True)
    reminders_sent = models.PositiveIntegerField(default=0)
    next_reminder_at = models.DateTimeField(null=True, blank=True)
    next_escalation_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["-created_at", "-id"],
                name="approval_pending_created",
                condition=Q(state="pending"),
            ),
            models.Index(
                fields=["due_at"],
                name="approval_pending_due",
                condition=Q(state="pending"),
            ),
            models.Index(fields=["state", "-created_at"], name="approval_state_created"),
            models.Index(
                fields=["workflow", "-created_at", "-id"],
                name="approval_pending_workflow",
                condition=Q(state="pending"),
            ),
            models.Index(fields=["business_key"], name="approval_business_key"),
            # The reminder and escalation sweepers read only pending rows with a due timer.
            models.Index(
                fields=["next_reminder_at"],
                name="approval_pending_reminder",
                condition=Q(state="pending", next_reminder_at__isnull=False),
            ),
            models.Index(
                fields=["next_escalation_at"],
                name="approval_pending_escalation",
                condition=Q(state="pending", next_escalation_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.state})"

    @transition(field=state, source=R.PENDING, target=R.APPROVED)
    def approve(self) -> None:
        pass

    @transition(field=state, source=R.PENDING, target=R.REJECTED)
    def reject(self) -> None:
        pass

    @transition(field=state, source=R.PENDING, target=R.EXPIRED)
    def expire(self) -> None:
        pass

    @transition(field=state, source=R.PENDING, target=R.CANCELLED)
    def cancel(self) -> None:
        pass


class Decision(models.Model):
    """One person's decision on one request. ``assignee`` is whose vote it is; ``decided_by``
    differs when a delegate decided ("bob for carol")."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    via_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    comment = models.TextField(blank=True, default="")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    reason = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="why an operator decided on someone's behalf",
    )
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "assignee"], name="decision_one_per_person"),
        ]
        indexes = [models.Index(fields=["decided_by", "-at"], name="decision_by_user")]

    def __str__(self) -> str:
        return f"{self.outcome} by {self.decided_by_id}"


class Delegation(models.Model):
    """While active, ``delegate`` may decide what is assigned to ``user`` (out of office)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="delegations_given"
    )
    delegate = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="delegations_received"
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=F("starts_at")), name="delegation_ends_after_start"
            ),
            models.CheckConstraint(condition=~Q(user=F("delegate")), name="delegation_not_to_self"),
        ]
        indexes = [models.Index(fields=["delegate", "ends_at"], name="delegation_delegate")]

    def __str__(self) -> str:
        return f"{self.delegate_id} for {self.user_id}"


class ActionToken(models.Model):
    """A one-person, one-request email action link. Only the SHA-256 of the random token is
    stored; the link carries the token signed with a salt (tampering is detected before any
    lookup). Single use, expiring, and never valid after the request is resolved or the person
    was replaced by an escalation."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    purpose = models.CharField(max_length=20, default="assigned")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["request", "user"], name="token_request_user")]

    def __str__(self) -> str:
        return f"link for {self.user_id} on {self.request_id}"


class PastAssignee(models.Model):
    """Someone who was an assignee of a request and no longer is: replaced by an escalation
    level with ``replace`` or by a reassignment. Current assignees are the request's
    ``assignee_users`` and ``assignee_groups``; together with these rows they are everyone who
    was ever asked. People assigned through a group are recorded one by one, as members were
    when the group was taken off the request (whoever joins the group later was never asked).
    Read by the visibility rules (a past assignee may still read the request and its instance,
    read-only) through the ``(request, user)`` unique index."""

    class Cause(models.TextChoices):
        ESCALATED = "escalated"
        REASSIGNED = "reassigned"

    request = models.ForeignKey(
        ApprovalRequest, on_delete=models.CASCADE, related_name="past_assignees"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    cause = models.CharField(max_length=20, choices=Cause.choices)
    removed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request", "user"], name="past_assignee_once"),
        ]
        indexes = [models.Index(fields=["user"], name="past_assignee_user")]

    def __str__(self) -> str:
        return f"{self.user_id} was assigned {self.request_id}"


class Comment(models.Model):
    """One message in a request's thread: a question or an answer, not a decision. ``role``
    is what the author posted as (``requester``, ``assignee``, ``delegate``, ``operator``),
    which decides who is told by mail. ``idempotency_key`` (per author) makes a repeated
    submission (a double click, a retried API call) one comment."""

    class Role(models.TextChoices):
        REQUESTER = "requester"
        ASSIGNEE = "assignee"
        DELEGATE = "delegate"
        OPERATOR = "operator"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=10, choices=Role.choices)
    body = models.TextField()
    channel = models.CharField(max_length=10, choices=Channel.choices)
    created_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["author", "idempotency_key"],
                name="comment_idempotency_key_per_author",
                condition=~Q(idempotency_key=""),
            ),
        ]
        indexes = [models.Index(fields=["request", "created_at"], name="comment_request_created")]

    def __str__(self) -> str:
        return f"comment {self.pk} by {self.author_id} on {self.request_id}"
