"""The human side of an ``approval`` step: requests, decisions and delegations."""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django_fsm import FSMField, FSMModelMixin, transition

from orchestration import sealing
from orchestration.models import StepRun, WorkflowInstance


class RequestState(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # Sent back to the requester for changes (this round ends; the step keeps waiting).
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    # The requester answered a round sent back: revised and resubmitted (the next round is a
    # new request) or withdrew (the instance is cancelled).
    RESUBMITTED = "resubmitted"
    WITHDRAWN = "withdrawn"


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
    REQUEST_CHANGES = "request_changes", "Request changes"


# What approve and reject (and bulk) accept; request_changes has its own service.
DECISIONS = (Outcome.APPROVE, Outcome.REJECT)


class ClaimMode(models.TextChoices):
    """Whether an assignee may claim the request ("I'm on it"), copied from the step."""

    NONE = "", "no claims"
    SOFT = "soft"  # another assignee may take the claim over, with a note
    HARD = "hard"  # only the claimant releases; an override_claim holder may take it over


class ClaimState(models.TextChoices):
    UNCLAIMED = "unclaimed"
    CLAIMED = "claimed"


R = RequestState
C = ClaimState


SEARCH_TEXT_MAX = 2000  # characters of a request's search text


def _searchable(value: Any) -> bool:
    """A scalar worth matching or sorting by: text or a number, not the mask of a sealed
    value, not a list of files or an object."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    return value != sealing.MASK and value != ""


def search_document(title: str, business_key: str, requester: str, fields: Any) -> str:
    """What a request's text search matches: its title, business key, requester's username
    and shown field values, lower case, at most SEARCH_TEXT_MAX characters."""
    parts = [title, business_key, requester]
    if isinstance(fields, list):
        parts += [
            str(field.get("value"))
            for field in fields
            if isinstance(field, dict) and _searchable(field.get("value"))
        ]
    return " ".join(part for part in parts if part).lower()[:SEARCH_TEXT_MAX]


def _pending(request: ApprovalRequest) -> bool:
    return request.state == R.PENDING


class ApprovalRequest(FSMModelMixin, models.Model):
    """One round of an approval step: round 1 when the step becomes ready, round N+1 when the
    requester resubmits a round sent back for changes (or an operator retries the step)."""

    step_run = models.ForeignKey(
        StepRun, on_delete=models.CASCADE, related_name="approval_requests"
    )
    round = models.PositiveSmallIntegerField(default=1, help_text="from 1, per step run")
    instance = models.ForeignKey(
        WorkflowInstance, on_delete=models.CASCADE, related_name="approvals"
    )
    # Copied from the instance so the inbox filters without a join.
    workflow = models.CharField(max_length=100)
    business_key = models.CharField(max_length=200, blank=True, default="")
    step_name = models.CharField(max_length=100)
    title = models.CharField(max_length=300)
    # What the approver sees: [{"label": ..., "value": ..., "column": key?}], captured when
    # requested (sealed values masked).
    fields = models.JSONField(default=list, blank=True)
    # Derived from the above when written (see ``refresh_search``): what the inbox's text
    # search matches (lower case; a trigram index on PostgreSQL) and the values of the fields
    # the step shows as columns, by column key (what the list sorts by).
    search_text = models.TextField(blank=True, default="", editable=False)
    columns = models.JSONField(default=dict, blank=True, editable=False)
    policy = models.CharField(max_length=10, choices=Policy.choices, default=Policy.ANY)
    quorum = models.PositiveSmallIntegerField(default=1)
    veto = models.BooleanField(default=True, help_text="a single rejection rejects")
    reject_requires_comment = models.BooleanField(default=True)
    allow_self_approval = models.BooleanField(default=False)
    # Send back for changes: which top-level input fields the requester may revise, and how
    # many rounds the step may take (in the last one, changes can no longer be requested).
    revisable = models.JSONField(default=list, blank=True)
    max_rounds = models.PositiveSmallIntegerField(default=3)
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
    # Claims (approvals.claims): who said "I'm on it", since when, their last activity, and
    # when the claim expires if they stay idle (the claim sweeper reads it through a partial
    # index). Others cannot decide while the claim holds.
    claim_mode = models.CharField(
        max_length=4, choices=ClaimMode.choices, blank=True, default=ClaimMode.NONE
    )
    claim_state = FSMField(default=C.UNCLAIMED, choices=C.choices, protected=True)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim_active_at = models.DateTimeField(
        null=True, blank=True, help_text="the claimant's last activity on the claim"
    )
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    # Who answered a round sent back for changes (resubmitted or withdrew), and when.
    answered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            (
                "override_claim",
                "Can release anyone's claim on an approval request and take over a hard claim",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(claim_state=C.CLAIMED, claimed_at__isnull=False)
                    | Q(
                        claim_state=C.UNCLAIMED,
                        claimed_by__isnull=True,
                        claimed_at__isnull=True,
                        claim_expires_at__isnull=True,
                    )
                ),
                name="approval_claim_consistent",
            ),
            models.UniqueConstraint(fields=["step_run", "round"], name="approval_one_per_round"),
        ]
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
            # "Revise and resubmit": the requester's requests sent back to them.
            models.Index(
                fields=["requester", "-created_at"],
                name="approval_changes_requester",
                condition=Q(state="changes_requested"),
            ),
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
            # The claim sweeper reads only pending, claimed rows with an expiry.
            models.Index(
                fields=["claim_expires_at"],
                name="approval_claim_expiry",
                condition=Q(state="pending", claim_state="claimed", claim_expires_at__isnull=False),
            ),
        ]

    def refresh_search(self, requester_name: str | None = None) -> None:
        """Derive ``search_text`` and ``columns`` from the title, business key, requester and
        fields (whose sealed values are already masked: nothing sealed gets in). Call before
        saving whenever those change; ``requester_name`` spares loading the requester."""
        if requester_name is None:
            requester_name = self.requester.get_username() if self.requester_id else ""
        self.search_text = search_document(
            self.title, self.business_key, requester_name, self.fields
        )
        self.columns = {
            field["column"]: field["value"]
            for field in self.fields
            if isinstance(field, dict) and field.get("column") and _searchable(field.get("value"))
        }

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

    @transition(field=state, source=[R.PENDING, R.CHANGES_REQUESTED], target=R.CANCELLED)
    def cancel(self) -> None:
        pass

    # -- the claim ------------------------------------------------------------------------------
    @transition(field=claim_state, source=C.UNCLAIMED, target=C.CLAIMED, conditions=[_pending])
    def claim(self, user: Any, now: datetime, expires_at: datetime | None) -> None:
        self.claimed_by = user
        self.claimed_at = self.claim_active_at = now
        self.claim_expires_at = expires_at

    @transition(field=claim_state, source=C.CLAIMED, target=C.CLAIMED, conditions=[_pending])
    def take_over_claim(self, user: Any, now: datetime, expires_at: datetime | None) -> None:
        self.claimed_by = user
        self.claimed_at = self.claim_active_at = now
        self.claim_expires_at = expires_at

    @transition(field=claim_state, source=C.CLAIMED, target=C.UNCLAIMED)
    def release_claim(self) -> None:
        self._clear_claim()

    @transition(field=claim_state, source=C.CLAIMED, target=C.UNCLAIMED)
    def expire_claim(self) -> None:
        self._clear_claim()

    def _clear_claim(self) -> None:
        self.claimed_by = None
        self.claimed_at = self.claim_active_at = self.claim_expires_at = None

    def claim_holder_id(self, now: datetime) -> int | None:
        """Who holds the claim now: none unless pending, claimed, not idle past its expiry and
        held by an active account (such a claim stops counting at once; the sweeper, or the
        next claim act, records its end). Reads ``claimed_by`` (load it with the row)."""
        if self.state != R.PENDING or self.claim_state != C.CLAIMED:
            return None
        if self.claim_expires_at is not None and self.claim_expires_at <= now:
            return None
        if self.claimed_by_id is None or not self.claimed_by.is_active:
            return None
        return self.claimed_by_id

    @transition(field=state, source=R.PENDING, target=R.CHANGES_REQUESTED)
    def request_changes(self) -> None:
        pass

    @transition(field=state, source=R.CHANGES_REQUESTED, target=R.RESUBMITTED)
    def resubmit(self) -> None:
        pass

    @transition(field=state, source=R.CHANGES_REQUESTED, target=R.WITHDRAWN)
    def withdraw(self) -> None:
        pass

    @property
    def last_round(self) -> bool:
        """In its last round changes can no longer be requested (``max_rounds``)."""
        return self.round >= self.max_rounds

    @property
    def has_reviser(self) -> bool:
        """Whether someone could answer a request for changes: its requester or the
        instance's starter (an instance the system started for nobody has neither)."""
        return self.requester_id is not None or self.instance.started_by_id is not None

    @property
    def can_be_sent_back(self) -> bool:
        """Whether to offer "Request changes" (buttons only: the policy answers on use)."""
        return self.state == R.PENDING and not self.last_round and self.has_reviser


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
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
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


# -- mail preferences ---------------------------------------------------------------------------


def time_zone_validate(value: str) -> None:
    """An IANA time zone name that ``zoneinfo`` knows (``Europe/Berlin``, ``UTC``)."""
    if not isinstance(value, str) or value not in time_zone_names():
        raise ValidationError(f"Unknown time zone: {str(value)[:64]!r}.", code="time_zone")


@functools.cache
def time_zone_names() -> frozenset[str]:
    """Every IANA time zone name ``zoneinfo`` knows (read once)."""
    return frozenset(zoneinfo.available_timezones())


def default_time_zone() -> str:
    return settings.TIME_ZONE


class MailPreference(models.Model):
    """How one person wants their mail: each mail at once (the default, also without a row),
    or the new-request and reminder mails held for one daily digest at ``digest_hour`` in
    ``time_zone``. ``next_digest_at`` is the sweeper's deadline column: the instant the next
    digest is due (set while ``mode`` is digest); ``last_digest_on`` is the local date of the
    last digest, so a day never gets two."""

    class Mode(models.TextChoices):
        IMMEDIATE = "immediate", "Each mail at once"
        DIGEST = "digest", "One daily digest"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mail_preference"
    )
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.IMMEDIATE)
    digest_hour = models.PositiveSmallIntegerField(
        default=8, validators=[MinValueValidator(0), MaxValueValidator(23)]
    )
    time_zone = models.CharField(
        max_length=64, default=default_time_zone, validators=[time_zone_validate]
    )
    next_digest_at = models.DateTimeField(null=True, blank=True)
    last_digest_on = models.DateField(null=True, blank=True)
    last_digest_sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(digest_hour__gte=0, digest_hour__lte=23), name="mail_digest_hour_0_23"
            ),
            models.CheckConstraint(
                condition=Q(mode__in=["immediate", "digest"]), name="mail_preference_mode"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_digest_at"], name="mail_digest_due", condition=Q(mode="digest")
            ),
        ]

    def __str__(self) -> str:
        return f"mail for {self.user_id}: {self.mode}"

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def local_date(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()

    def digest_due_at(self, now: datetime) -> datetime | None:
        """When the next digest is due, seen at ``now``: ``digest_hour`` on the local day
        after the last digest's, and not before today (in the past when today's hour has gone
        by without one: due at once). None unless in digest mode. A local hour that does not
        exist (a daylight-saving gap) falls an hour later."""
        if self.mode != self.Mode.DIGEST:
            return None
        day = self.local_date(now)
        if self.last_digest_on is not None and self.last_digest_on >= day:
            day = self.last_digest_on + timedelta(days=1)
        local = datetime.combine(day, time(self.digest_hour), tzinfo=self.zone)
        return local.astimezone(UTC)
