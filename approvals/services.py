"""Every write of the human side, by name: the services other apps, the sweepers and the
tests call, gathered from the modules that hold them. Nothing is defined here.

- :mod:`approvals.kind` — the ``approval`` step kind and opening a round;
- :mod:`approvals.deciding` — :func:`approval_decide` (inbox, bulk, API, email links) and
  :func:`approval_decide_on_behalf` (operators), resolving a request;
- :mod:`approvals.send_back` — :func:`approval_request_changes`, :func:`approval_resubmit`
  (the next round), :func:`approval_withdraw`;
- :mod:`approvals.reassigning` — :func:`approval_reassign`, :func:`past_assignees_record`;
- :mod:`approvals.delegations` — :func:`delegation_create`, :func:`delegation_end`;
- :mod:`approvals.claims` — claim, release, take over;
- :mod:`approvals.outcomes` — what a decided step returns (:func:`request_outcome`);
- :mod:`approvals.timing` — when timers fire (:func:`timer_at`).

Lock order is the engine's: the instance row first (it guards the instance, its steps and
their approval requests), then the request row (:mod:`approvals.locking`).
"""

from __future__ import annotations

from .deciding import approval_decide, approval_decide_on_behalf
from .delegations import delegation_create, delegation_end
from .inputs import MAX_COMMENT
from .kind import ApprovalKind, open_round
from .outcomes import earlier_rounds, request_outcome, round_summary
from .reassigning import approval_reassign, past_assignees_record
from .send_back import approval_request_changes, approval_resubmit, approval_withdraw
from .timing import before_due as _before_due
from .timing import timer_at

__all__ = [
    "MAX_COMMENT",
    "ApprovalKind",
    "_before_due",
    "approval_decide",
    "approval_decide_on_behalf",
    "approval_reassign",
    "approval_request_changes",
    "approval_resubmit",
    "approval_withdraw",
    "delegation_create",
    "delegation_end",
    "earlier_rounds",
    "open_round",
    "past_assignees_record",
    "request_outcome",
    "round_summary",
    "timer_at",
]
