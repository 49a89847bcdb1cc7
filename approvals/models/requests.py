"""The approval request: one round of an approval step — its assignees, policy, timers,
claim and send-back state as django-fsm transitions — and the search text the inbox matches
(:func:`search_document`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, FSMModelMixin, transition

from orchestration import sealing
from orchestration.models import StepRun, WorkflowInstance

from .choices import ClaimMode, ClaimState, Policy, RequestState

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
        verbose_name = _("approval request")
        verbose_name_plural = _("approval requests")
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
            # The reminder sweeper reads only pending rows with a due timer (the escalation
            # sweeper reads EscalationTimer, so an escalation's update of this row is HOT).
            models.Index(
                fields=["next_reminder_at"],
                name="approval_pending_reminder",
                condition=Q(state="pending", next_reminder_at__isnull=False),
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
