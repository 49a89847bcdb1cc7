"""Approval requests, decisions and delegations in the admin: read-only, plus two operator
actions through ``approvals.services``: reassign (bulk or one request) and decide on behalf of
an assignee, each with a mandatory reason. Acting needs ``orchestration.operate_instance``.
The request page shows its claim; releasing it (anyone's, with ``approvals.override_claim``)
or taking it over goes through ``approvals.claims``, which asks the decision policy.

- :mod:`approvals.admin.requests` — the approval request list and page, with decisions and
  email links inline;
- :mod:`approvals.admin.operations` — the operator actions' pages (reassign, decide on behalf,
  release or take over a claim, bulk reassign);
- :mod:`approvals.admin.forms` — their forms;
- :mod:`approvals.admin.delegations` — delegations (out of office), read-only.
"""

from . import delegations, requests

__all__ = ["delegations", "requests"]
