"""Signoff's own import-linter contract: services below presentation, and no cycles among them.

import-linter's built-in contracts say which app may import which (``forbidden`` in
``pyproject.toml``). Inside an app, DESIGN.md asks two more things that no built-in contract
states without listing every module by hand (a list a newcomer would forget to extend):

- **models and services never import presentation** — views, the API, forms, admin, urls,
  template tags, management commands and the app config; those import services and selectors;
- **no cycles among an app's services**: the non-presentation modules of each app form a
  directed acyclic graph, so each can be read (and tested) knowing only the ones below it.

A module is *presentation* when any part of its dotted name (after the app) is one of
:data:`PRESENTATION` or ends with one of :data:`PRESENTATION_SUFFIXES` (``approvals.api.views``,
``orchestration.admin_actions``, ``approvals.request_views``). Everything else is a service.
Imports inside functions count (grimp sees them): hiding an import in a function does not
break a cycle. Configured in ``pyproject.toml`` as ``type = "service_layer"``; run by
``make lint`` and by ``make test`` (``lint-imports``).
"""

from __future__ import annotations

from typing import Any

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck

PRESENTATION = frozenset(
    {
        "admin",
        "api",
        "apps",
        "forms",
        "management",
        "migrations",
        "templatetags",
        "urls",
        "views",
    }
)
PRESENTATION_SUFFIXES = ("_views", "_admin", "_forms", "_urls")


def is_presentation(module: str) -> bool:
    """Whether ``module`` (a dotted name inside an app) is presentation (see module doc)."""
    parts = module.split(".")[1:]
    return any(p in PRESENTATION or p.endswith(PRESENTATION_SUFFIXES) for p in parts)


def _cycles(modules: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _is_package_of(package: str, module: str) -> bool:
    return module.startswith(package + ".")


class ServiceLayerContract(Contract):
    """For each app in ``containers``: no service imports presentation; services are acyclic."""

    type_name = "service_layer"
    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        upward: list[dict[str, Any]] = []
        cycles: list[list[str]] = []
        for container in self.containers:  # type: ignore[attr-defined]
            inside = {m for m in graph.find_descendants(container)}
            services = {m for m in inside if not is_presentation(m)}
            edges: dict[str, set[str]] = {m: set() for m in services}
            for module in sorted(services):
                for imported in graph.find_modules_directly_imported_by(module):
                    if imported not in inside:
                        continue
                    if is_presentation(imported):
                        details = graph.get_import_details(importer=module, imported=imported)
                        lines = sorted({d["line_number"] for d in details})
                        upward.append({"importer": module, "imported": imported, "lines": lines})
                    # A package's __init__ re-exporting its children is not a cycle with them
                    # (a child importing its package still counts).
                    elif not _is_package_of(module, imported):
                        edges[module].add(imported)
            cycles.extend(_cycles(services, edges))
        return ContractCheck(
            kept=not upward and not cycles, metadata={"upward": upward, "cycles": cycles}
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for item in check.metadata["upward"]:
            lines = ", ".join(str(n) for n in item["lines"])
            output.print_error(
                f"{item['importer']} imports presentation module {item['imported']} "
                f"(l. {lines}): services never import views, API, forms or admin.",
                bold=False,
            )
        for cycle in check.metadata["cycles"]:
            output.print_error("import cycle among services: " + " <-> ".join(cycle), bold=False)
        output.new_line()
