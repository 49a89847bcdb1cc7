"""The human side of an ``approval`` step: requests, decisions and delegations.

- :mod:`~approvals.models.choices` — states and choices;
- :mod:`~approvals.models.requests` — :class:`ApprovalRequest` and its search text;
- :mod:`~approvals.models.decisions` — :class:`Decision`, :class:`Comment`;
- :mod:`~approvals.models.assignees` — :class:`Delegation`, :class:`PastAssignee`,
  :class:`ActionToken`;
- :mod:`~approvals.models.mail` — :class:`MailPreference`;
- :mod:`~approvals.models.timers` — :class:`EscalationTimer`.

Every name is importable from ``approvals.models`` (migrations name some of them here).
"""

from .assignees import ActionToken, Delegation, PastAssignee
from .choices import DECISIONS, Channel, ClaimMode, ClaimState, Outcome, Policy, RequestState
from .decisions import Comment, Decision
from .mail import (
    MailPreference,
    default_time_zone,
    language_codes,
    language_validate,
    time_zone_names,
    time_zone_validate,
)
from .requests import SEARCH_TEXT_MAX, ApprovalRequest, search_document
from .timers import EscalationTimer

__all__ = [
    "DECISIONS",
    "SEARCH_TEXT_MAX",
    "ActionToken",
    "ApprovalRequest",
    "Channel",
    "ClaimMode",
    "ClaimState",
    "Comment",
    "Decision",
    "Delegation",
    "EscalationTimer",
    "MailPreference",
    "language_codes",
    "language_validate",
    "Outcome",
    "PastAssignee",
    "Policy",
    "RequestState",
    "default_time_zone",
    "search_document",
    "time_zone_names",
    "time_zone_validate",
]
