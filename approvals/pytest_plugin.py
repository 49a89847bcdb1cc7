"""The pytest plugin of the approval side of the test kit: the ``signoff_approvals`` fixture
(an :class:`approvals.testing.ApprovalsKit` bound to ``signoff_kit``). A ``pytest11`` entry
point, like ``orchestration.pytest_plugin``; it imports nothing of Django at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from approvals.testing import ApprovalsKit
    from orchestration.testing import SignoffKit


@pytest.fixture
def signoff_approvals(signoff_kit: SignoffKit) -> ApprovalsKit:
    """Decide approvals as a given person and list pending requests, with ``signoff_kit``."""
    from approvals.testing import ApprovalsKit

    return ApprovalsKit(signoff_kit)
