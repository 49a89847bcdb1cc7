"""``make bench``: every benchmark in ``bench/``, one summary table, ``bench/results/latest.json``.

Runs, one after another (each in its own process, with its own database and Redis db, so a
crash in one still leaves the others' figures):

1. ``floor``    bench/floor.py    PostgreSQL single-row commit and round trip (pgbench)
2. ``engine``   bench/engine.py   overhead per step, workflows/s, raw Celery, commits per step
3. ``api``      bench/api.py      ``POST /api/v1/instances/`` under gunicorn, 50 clients
4. ``inbox``    bench/inbox.py    inbox API and HTML at 100,000 pending among 1,000,000
5. ``sweepers`` bench/sweepers.py 10,000 overdue escalations; sweeps over zero due rows
6. ``fanout``   bench/fanout.py   map steps: items/s (1,000 and 5,000 items, concurrency 10
   and 50) and the share of lock waits on the instance row
7. ``peers``    bench/peers.py    DBOS Transact (the bench-only extra, ``pip install '.[bench]'``)
   doing engine's workload on the same PostgreSQL; skipped, and said so, when not installed

After the table, for each comparable row (:data:`COMPARISONS`) found in this run: Signoff's
figure, the peer's, and how many times better Signoff is (below 1: the peer is better).

Each script prints its own detailed table and writes ``bench/results/<name>.json`` with a
``"summary"`` list of rows (``bench.common.row``); this script prints those rows as one table
(goal and verdict per row) and writes them, with the machine and the load average, to
``bench/results/latest.json`` (git-ignored). ``--only engine,api`` runs some; ``--quick``
passes ``--quick`` (smaller counts, shorter phases) to every script that has it. The inbox and
sweeper seeds (1,000,000 and 200,000 requests) are built once, in about five minutes each, and
reused by later runs.

Exit status: non-zero when a benchmark failed to run (not when a goal is missed: a missed goal
is a figure, written down in README.md with its profile).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, BenchRun, finished_at, make_log  # noqa: E402

# name: (script, extra arguments, arguments under --quick)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "floor": ("bench/floor.py", [], ["--quick"]),
    "engine": ("bench/engine.py", [], ["--quick"]),
    "api": ("bench/api.py", [], ["--quick"]),
    "inbox": ("bench/inbox.py", [], ["--count", "20"]),
    # The seed is fixed; quick compares the per-row path on fewer rows.
    "sweepers": ("bench/sweepers.py", [], ["--per-row-rows", "50"]),
    "fanout": ("bench/fanout.py", [], ["--quick"]),
    "peers": ("bench/peers.py", [], ["--quick"]),
}

# label, Signoff's row (section, measure prefix), the peer's row (section, measure prefix),
# True when higher is better.
COMPARISONS: list[tuple[str, tuple[str, str], tuple[str, str], bool]] = [
    (
        "completed 3-step workflows/s, all at once",
        ("engine", "completed 3-step workflows/s"),
        ("peers", "peer: completed 3-step workflows/s"),
        True,
    ),
    (
        "step gap p50 (fn end -> next fn start)",
        ("engine", "step gap p50"),
        ("peers", "peer: step gap p50"),
        False,
    ),
    (
        "start in-process p50 (peer: enqueue)",
        ("api", "start in-process, no HTTP: p50"),
        ("peers", "peer: enqueue one workflow in-process p50"),
        False,
    ),
    (
        "engine start in-process p50 (peer: enqueue)",
        ("engine", "engine start in-process p50 (instance_start)"),
        ("peers", "peer: enqueue one workflow in-process p50"),
        False,
    ),
]


log = make_log("bench")


def run_one(name: str, quick: bool) -> dict[str, Any]:
    script, extra, quick_args = BENCHMARKS[name]
    output = RESULTS / f"{name}.json"
    if output.exists():
        output.unlink()  # never report a previous run's figures as this run's
    command = [
        sys.executable,
        script,
        *extra,
        *(quick_args if quick else []),
        "--output",
        str(output),
    ]
    log(f"{name}: {' '.join(command[1:])}")
    began = time.monotonic()
    code = subprocess.call(command, cwd=ROOT)
    seconds = round(time.monotonic() - began, 1)
    section: dict[str, Any] = {"script": script, "exit": code, "seconds": seconds}
    if code == 0 and output.exists():
        report = json.loads(output.read_text())
        section["summary"] = report.get("summary", [])
        section["report"] = str(output.relative_to(ROOT) if output.is_relative_to(ROOT) else output)
    else:
        section["summary"] = []
        log(f"{name} FAILED (exit {code}) after {seconds} s")
    return section


def verdict(row: dict[str, Any]) -> str:
    if row.get("ok") is None:
        return ""
    return "ok" if row["ok"] else "MISSED"


def value_text(row: dict[str, Any]) -> str:
    value = row["value"]
    if isinstance(value, float):
        text = f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {row.get('unit', '')}".strip()


def find_row(report: dict[str, Any], section: str, prefix: str) -> dict[str, Any] | None:
    """The first summary row of ``section`` whose measure starts with ``prefix``, if it ran."""
    found = report["sections"].get(section)
    if not found or found["exit"] != 0:
        return None
    return next((r for r in found["summary"] if r["measure"].startswith(prefix)), None)


def comparisons(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each of :data:`COMPARISONS` with both rows in ``report`` (numbers): Signoff's row,
    the peer's and ``advantage``, how many times better Signoff's figure is (> 1: Signoff
    ahead; for a time, peer / Signoff; for a rate, Signoff / peer)."""
    out = []
    for label, (ours_section, ours), (peer_section, peer), higher_better in COMPARISONS:
        a, b = find_row(report, ours_section, ours), find_row(report, peer_section, peer)
        if a is None or b is None:
            continue
        x, y = a["value"], b["value"]
        if not all(isinstance(v, int | float) and v > 0 for v in (x, y)):
            continue
        advantage = x / y if higher_better else y / x
        out.append(
            {
                "measure": label,
                "signoff": a,
                "peer": b,
                "advantage": round(advantage, 2),
            }
        )
    return out


def render_comparisons(report: dict[str, Any]) -> list[str]:
    rows = report.get("comparisons") or []
    if not rows:
        return []
    lines = ["", "Signoff beside the peer (x: times better; below 1, the peer is better)"]
    width = max(len(r["measure"]) for r in rows)
    for r in rows:
        lines.append(
            f"  {r['measure']:<{width}}  Signoff {value_text(r['signoff']):>12}  "
            f"peer {value_text(r['peer']):>12}  {r['advantage']:.2f}x"
        )
    return lines


def render(report: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    for name, section in report["sections"].items():
        if section["exit"] != 0:
            rows.append((f"[{name}] FAILED to run (exit {section['exit']})", "", "", ""))
            continue
        rows.append((f"[{name}]  {section['seconds']:.0f} s", "", "", ""))
        for r in section["summary"]:
            goal = f"{r.get('goal', '')} {verdict(r)}".strip()
            rows.append(("  " + r["measure"], value_text(r), goal, r.get("note", "")))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    goal_width = max(len(r[2]) for r in rows)
    m = report["machine"]
    rule = "-" * (width + value_width + goal_width + 30)
    lines = [
        "",
        f"Signoff benchmarks  {report['finished_at']}  git {m['git_head']}",
        f"{m['cpus']} cores ({m['cpu_model']}), {m['memory_gb']} GB, Python {m['python']}; "
        f"load average before/after {report['loadavg_before']} / {report['loadavg_after']}",
        rule,
        f"{'measure':<{width}}  {'value':>{value_width}}  {'goal':<{goal_width}}  note",
        rule,
    ]
    lines += [
        f"{a:<{width}}  {b:>{value_width}}  {c:<{goal_width}}  {d}".rstrip() for a, b, c, d in rows
    ]
    goals = [
        r for s in report["sections"].values() for r in s["summary"] if r.get("ok") is not None
    ]
    met = sum(1 for r in goals if r["ok"])
    lines += [rule, f"goals met: {met} of {len(goals)}"]
    lines += [*render_comparisons(report), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    bench = BenchRun("latest", __doc__, log)
    parser = bench.parser
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts in every benchmark")
    args = bench.parse(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "loadavg_before": bench.load_before,
        "quick": args.quick,
        "sections": {},
    }
    for name in names:
        report["sections"][name] = run_one(name, args.quick)
    report["comparisons"] = comparisons(report)
    report.update(bench.machine_report())
    report["finished_at"] = finished_at()
    bench.finish(report, render)
    failed = [n for n, s in report["sections"].items() if s["exit"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
