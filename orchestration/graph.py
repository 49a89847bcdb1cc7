"""The workflow graph as a picture: server-side SVG, no JavaScript and nothing from a CDN.

Steps are laid out by topological level (a step sits one column right of its deepest
dependency), so sequences read left to right and parallel branches stack in one column.
Each step is a ``<g class="step state-<state>">`` box; the running step also carries
``current``. Arrows follow the definition's ``after`` dependencies. Colours live in CSS
classes scoped under ``.wf-graph`` so the page (or a stylesheet) can restyle them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from . import kinds
from .definitions import Workflow

BOX_W = 212
BOX_H = 58
GAP_X = 64
GAP_Y = 20
PAD = 14
# Narrower than this share of its drawn size, the 11.5 px labels drop below 10 px: on a
# phone the drawing keeps this size and scrolls sideways in its card instead.
MIN_SCALE = 0.87
NAME_CHARS = 25

# Steps that still have work in flight: drawn with a highlight; "running" gets the strongest.
ACTIVE_STATES = {"scheduled", "retrying", "waiting", "compensating"}

STYLE = """
.wf-graph { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
.wf-graph .step rect { fill: #f3f4f6; stroke: #c3c9d2; stroke-width: 1.5; }
.wf-graph .step .name { font-size: 13px; font-weight: 600; fill: #1b2430; }
.wf-graph .step .meta { font-size: 11.5px; fill: #5b6675; }
.wf-graph .state-scheduled rect { fill: #eef3fd; stroke: #8fb0f0; }
.wf-graph .state-running rect { fill: #dde8ff; stroke: #2456d6; stroke-width: 3; }
.wf-graph .state-running .meta { fill: #1a43ad; font-weight: 600; }
.wf-graph .state-retrying rect { fill: #fff4e5; stroke: #e39a2d; stroke-width: 2; }
.wf-graph .state-retrying .meta { fill: #8a4b00; }
.wf-graph .state-waiting rect { fill: #f4efff; stroke: #8b5cf6; stroke-width: 2; }
.wf-graph .state-waiting .meta { fill: #5b3cc4; }
.wf-graph .state-succeeded rect { fill: #e8f5ee; stroke: #1d7a4b; }
.wf-graph .state-succeeded .meta { fill: #155c38; }
.wf-graph .state-skipped rect { fill: #f7f8fa; stroke: #aab2bd; stroke-dasharray: 5 4; }
.wf-graph .state-failed rect, .wf-graph .state-timed_out rect, .wf-graph .state-undo_failed rect {
  fill: #fdecea; stroke: #b42318; stroke-width: 2; }
.wf-graph .state-failed .meta, .wf-graph .state-timed_out .meta,
.wf-graph .state-undo_failed .meta { fill: #8f1c13; font-weight: 600; }
.wf-graph .state-cancelled rect { fill: #f0f2f5; stroke: #9aa3af; stroke-dasharray: 5 4; }
.wf-graph .state-compensating rect { fill: #fef9c3; stroke: #ca8a04; stroke-width: 2; }
.wf-graph .state-compensated rect { fill: #eef2ff; stroke: #6366f1; }
.wf-graph .current rect { filter: drop-shadow(0 0 5px rgb(36 86 214 / 55%)); }
.wf-graph .current .pulse { fill: #2456d6; animation: wf-pulse 1.2s ease-in-out infinite; }
.wf-graph .edge { fill: none; stroke: #9aa3af; stroke-width: 1.6; }
.wf-graph .edge.done { stroke: #1d7a4b; }
.wf-graph .arrow { fill: #9aa3af; }
.wf-graph .arrow.done { fill: #1d7a4b; }
@keyframes wf-pulse { 0%, 100% { opacity: 1; } 50% { opacity: .25; } }
@media (prefers-reduced-motion: reduce) { .wf-graph .current .pulse { animation: none; } }
"""


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    state: str
    attempt: int
    level: int
    x: int
    y: int
    error: str = ""


@dataclass(frozen=True)
class Layout:
    nodes: list[Node]
    edges: list[tuple[str, str]]
    width: int
    height: int


def levels(names: Sequence[str], after: dict[str, Sequence[str]]) -> dict[str, int]:
    """Each step's column: 0 without dependencies, else one more than its deepest dependency.
    ``names`` must be in topological order (the definition's ``order()``)."""
    found: dict[str, int] = {}
    for name in names:
        deps = [d for d in after.get(name, ()) if d in found]
        found[name] = 1 + max(found[d] for d in deps) if deps else 0
    return found


def layout(definition: Workflow | None, steps: Iterable) -> Layout:
    """Place the instance's steps (``StepRun`` rows or objects with ``name``, ``kind``,
    ``state``, ``attempt``, ``error``). Without a definition (a removed version) the steps sit
    in one row in their stored order, without arrows."""
    by_name = {s.name: s for s in steps}
    if definition is not None and set(definition.steps) == set(by_name):
        names = definition.order()
        after = {name: tuple(definition.steps[name].after) for name in names}
    else:
        names = [s.name for s in sorted(by_name.values(), key=lambda s: s.position)]
        after = {}
    level_of = levels(names, after)
    columns: dict[int, list[str]] = {}
    for name in names:
        columns.setdefault(level_of[name], []).append(name)
    tallest = max((len(col) for col in columns.values()), default=1)
    height = PAD * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y
    width = PAD * 2 + len(columns) * BOX_W + max(len(columns) - 1, 0) * GAP_X
    nodes = []
    for level, col in sorted(columns.items()):
        col_h = len(col) * BOX_H + (len(col) - 1) * GAP_Y
        top = PAD + (height - PAD * 2 - col_h) // 2
        for row, name in enumerate(col):
            step = by_name[name]
            error = step.error.get("message", "") if isinstance(step.error, dict) else ""
            nodes.append(
                Node(
                    name=name,
                    kind=step.kind,
                    state=step.shown_state,
                    attempt=step.attempt,
                    level=level,
                    x=PAD + level * (BOX_W + GAP_X),
                    y=top + row * (BOX_H + GAP_Y),
                    error=error or "",
                )
            )
    edges = [(dep, name) for name in names for dep in after.get(name, ())]
    return Layout(nodes=nodes, edges=edges, width=max(width, BOX_W + PAD * 2), height=height)


def _meta(node: Node) -> str:
    state = node.state.replace("_", " ")
    if node.kind != "task":
        return kinds.state_label(node.kind, node.state)
    if node.attempt > 1:
        return f"{state} · attempt {node.attempt}"
    return state


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def render_svg(definition: Workflow | None, steps: Iterable, *, title: str = "") -> SafeString:
    """The SVG markup (safe to embed in a page) for an instance's steps."""
    plan = layout(definition, steps)
    where = {n.name: n for n in plan.nodes}
    done = {n.name for n in plan.nodes if n.state in ("succeeded", "skipped")}
    parts = [
        f'<svg class="wf-graph" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {plan.width} {plan.height}" width="{plan.width}" height="{plan.height}" '
        # The page may scale the drawing down, but no further than its labels stay readable.
        f'style="min-width: {round(plan.width * MIN_SCALE)}px" aria-labelledby="wf-graph-title">',
        f'<title id="wf-graph-title">{escape(title or "Workflow graph")}: '
        + escape(", ".join(f"{n.name} {n.state}" for n in plan.nodes))
        + "</title>",
        f"<style>{STYLE}</style>",
        "<defs>"
        '<marker id="wf-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path class="arrow" d="M0,0 L10,5 L0,10 z"/>'
        "</marker>"
        '<marker id="wf-arrow-done" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path class="arrow done" '
        'd="M0,0 L10,5 L0,10 z"/></marker>'
        "</defs>",
    ]
    for dep, name in plan.edges:
        a, b = where[dep], where[name]
        x1, y1 = a.x + BOX_W, a.y + BOX_H // 2
        x2, y2 = b.x - 2, b.y + BOX_H // 2
        bend = max((x2 - x1) // 2, 12)
        ok = dep in done
        parts.append(
            f'<path class="edge{" done" if ok else ""}" data-from="{escape(dep)}" '
            f'data-to="{escape(name)}" '
            f'd="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}" '
            f'marker-end="url(#{"wf-arrow-done" if ok else "wf-arrow"})"/>'
        )
    for n in plan.nodes:
        state = escape(n.state)
        classes = f"step state-{state}"
        if n.state == "running":
            classes += " current"
        elif n.state in ACTIVE_STATES:
            classes += " active"
        tip = f"{n.name} ({n.kind}): {n.state.replace('_', ' ')}"
        if n.attempt:
            tip += f", attempt {n.attempt}"
        if n.error:
            tip += f"\n{n.error}"
        parts.append(
            f'<g class="{classes}" data-step="{escape(n.name)}" data-state="{state}" '
            f'transform="translate({n.x},{n.y})">'
            f"<title>{escape(tip)}</title>"
            f'<rect width="{BOX_W}" height="{BOX_H}" rx="9" ry="9"/>'
            f'<text class="name" x="14" y="24">{escape(_short(n.name))}</text>'
            f'<text class="meta" x="14" y="43">{escape(_meta(n))}</text>'
            + (
                f'<circle class="pulse" cx="{BOX_W - 16}" cy="39" r="4.5"/>'
                if n.state == "running"
                else ""
            )
            + "</g>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text is escaped
