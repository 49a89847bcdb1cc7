"""The states and choices of the approval models: a request's state, its policy, the channel
a decision came through, the outcomes, and the claim modes and states."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class RequestState(models.TextChoices):
    PENDING = "pending", _("Pending")
    APPROVED = "approved", _("Approved")
    REJECTED = "rejected", _("Rejected")
    EXPIRED = "expired", _("Expired")
    CANCELLED = "cancelled", _("Cancelled")
    # Sent back to the requester for changes (this round ends; the step keeps waiting).
    CHANGES_REQUESTED = "changes_requested", _("Changes requested")
    # The requester answered a round sent back: revised and resubmitted (the next round is a
    # new request) or withdrew (the instance is cancelled).
    RESUBMITTED = "resubmitted", _("Resubmitted")
    WITHDRAWN = "withdrawn", _("Withdrawn")


class Policy(models.TextChoices):
    ANY = "any", _("Any")  # the first decision resolves it
    ALL = "all", _("All")  # every assigned user and every assigned group (one member) must approve
    QUORUM = "quorum", _("Quorum")  # N distinct approvals


class Channel(models.TextChoices):
    WEB = "web", _("Web")
    EMAIL = "email", _("Email")
    API = "api", _("Api")
    ADMIN = "admin", _("Admin")


class Outcome(models.TextChoices):
    APPROVE = "approve", _("Approve")
    REJECT = "reject", _("Reject")
    REQUEST_CHANGES = "request_changes", _("Request changes")


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
