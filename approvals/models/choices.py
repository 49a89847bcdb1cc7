"""The states and choices of the approval models: a request's state, its policy, the channel
a decision came through, the outcomes, and the claim modes and states."""

from __future__ import annotations

from django.db import models


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
