"""The pytest plugin of the workflow test kit: the ``signoff_kit`` fixture.

Installed as a ``pytest11`` entry point (``pyproject.toml``), so a project that installs
Signoff gets the fixture with no conftest line; or list it: ``pytest_plugins =
["orchestration.pytest_plugin"]``. pytest imports this module before Django is set up, so it
imports nothing of Django here; the kit itself is :mod:`orchestration.testing`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from orchestration.testing import SignoffKit


@pytest.fixture
def signoff_kit(db: None) -> Iterator[SignoffKit]:
    """A :class:`~orchestration.testing.SignoffKit`, open for the test and closed after it.

    It brings the database: pytest-django's ``db`` (the test in one transaction, rolled back
    after it), or committed data when the test also asks for ``transactional_db`` (or
    ``live_server``), which pytest-django then prefers."""
    from orchestration.testing import SignoffKit

    with SignoffKit() as kit:
        yield kit
