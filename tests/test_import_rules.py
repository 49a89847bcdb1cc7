"""The import rules (pyproject.toml ``[tool.importlinter]``, ARCHITECTURE.md) hold, and the
project's own ``service_layer`` contract finds what it is there to find."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

from config.import_contracts import ServiceLayerContract, is_presentation

ROOT = Path(__file__).resolve().parent.parent


def test_the_project_keeps_every_import_contract() -> None:
    found = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stdout[-4000:] + found.stderr[-2000:]
    assert "broken" not in found.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "presentation"),
    [
        ("approvals.views", True),
        ("approvals.request_views", True),
        ("approvals.api.serializers", True),
        ("orchestration.admin.instances", True),
        ("integrations.webhook_admin", True),
        ("orchestration.management.commands.runall", True),
        ("orchestration.engine.stepping", False),
        ("approvals.policy", False),
        ("approvals.reviewers", False),  # "views" inside a word is not a views module
    ],
)
def test_presentation_is_told_by_name(module: str, presentation: bool) -> None:
    assert is_presentation(module) is presentation


def _package(tmp_path: Path, files: dict[str, str]) -> grimp.ImportGraph:
    for name, body in files.items():
        path = tmp_path / "shop" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    sys.path.insert(0, str(tmp_path))
    try:
        return grimp.build_graph("shop", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))


def _check(graph: grimp.ImportGraph) -> dict:
    contract = ServiceLayerContract(
        name="layers", session_options={}, contract_options={"containers": ["shop"]}
    )
    result = contract.check(graph, verbose=False)
    return {"kept": result.kept, **result.metadata}


def test_a_service_importing_a_view_breaks_the_contract(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "models.py": "",
            "views.py": "from . import services\n",
            "services.py": "def f():\n    from .views import page  # lazy still counts\n",
        },
    )
    found = _check(graph)
    assert found["kept"] is False
    assert found["upward"] == [
        {"importer": "shop.services", "imported": "shop.views", "lines": [2]}
    ]
    assert found["cycles"] == []


def test_a_cycle_among_services_breaks_it_and_a_package_init_does_not(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": "def f():\n    from . import c\n",
            "c.py": "from . import a\n",
            "engine/__init__.py": "from .start import go\nfrom .step import run\n",
            "engine/start.py": "from .step import run\ndef go(): run()\n",
            "engine/step.py": "def run(): pass\n",
            "views.py": "from . import a\n",
        },
    )
    found = _check(graph)
    assert found["kept"] is False
    assert found["upward"] == []
    assert found["cycles"] == [["shop.a", "shop.b", "shop.c"]]


def test_acyclic_services_under_their_views_keep_it(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "models.py": "",
            "services.py": "from . import models\n",
            "views.py": "from . import models, services\n",
            "admin.py": "from .views import x\n",
        },
    )
    assert _check(graph) == {"kept": True, "upward": [], "cycles": []}
