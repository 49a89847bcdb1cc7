"""Small helpers the benchmark scripts share: percentiles, load, the commit, summary rows.

Every script in ``bench/`` writes a JSON report whose ``"summary"`` key is a list of rows
(:func:`row`); ``bench/run.py`` (``make bench``) runs the scripts and prints those rows as one
table.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], *points: float) -> dict[str, float]:
    """Percentiles (linear interpolation between closest ranks) in the values' unit."""
    data = sorted(values)
    out = {}
    for p in points:
        if not data:
            out[f"p{p:g}"] = float("nan")
            continue
        rank = (len(data) - 1) * p / 100
        low = int(rank)
        high = min(low + 1, len(data) - 1)
        out[f"p{p:g}"] = data[low] + (data[high] - data[low]) * (rank - low)
    return out


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def git_head() -> str:
    """The commit the tree is at (the tree may hold uncommitted changes)."""
    try:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return found.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git_head": git_head(),
    }


def row(
    measure: str,
    value: float | int | str,
    unit: str = "",
    *,
    goal: str = "",
    ok: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of a benchmark's summary (``ok`` None: no goal)."""
    if isinstance(value, float):
        value = round(value, 3)
    return {"measure": measure, "value": value, "unit": unit, "goal": goal, "ok": ok, "note": note}


def goal_row(
    measure: str, value: float, unit: str, op: str, goal: float, *, note: str = ""
) -> dict[str, Any]:
    """A summary row checked against ``op`` (``<=`` or ``>=``) ``goal``."""
    ok = value <= goal if op == "<=" else value >= goal
    return row(measure, value, unit, goal=f"{op} {goal:g}", ok=ok, note=note)
