"""``make bench``'s runner (bench/run.py): it runs each benchmark as its own process, shows
their summary rows as one table, writes latest.json, and fails when a benchmark fails (not
when a goal is missed). The benchmarks themselves are measured by hand, not in tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import run as runner
from bench.common import goal_row, pct, percentile, row

GOOD = """
import json, sys
out = sys.argv[sys.argv.index("--output") + 1]
json.dump({"summary": [
    {"measure": "speed", "value": 12.5, "unit": "ms", "goal": "<= 15", "ok": True, "note": ""},
    {"measure": "rate", "value": 90, "unit": "wf/s", "goal": ">= 150", "ok": False, "note": "x"},
    {"measure": "info", "value": "a / b", "unit": "", "goal": "", "ok": None, "note": ""},
]}, open(out, "w"))
"""
BROKEN = "import sys; sys.exit(3)"


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "broken.py").write_text(BROKEN)
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(
        runner,
        "BENCHMARKS",
        {
            "good": (str(tmp_path / "good.py"), [], ["--quick-flag-ignored"]),
            "broken": (str(tmp_path / "broken.py"), [], []),
        },
    )
    return tmp_path


def test_one_table_and_latest_json_from_every_benchmark(
    scripts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = scripts / "latest.json"
    assert runner.main(["--only", "good", "--output", str(output)]) == 0  # a missed goal: 0
    printed = capsys.readouterr().out
    assert "[good]" in printed and "speed" in printed and "12.50 ms" in printed
    assert ">= 150 MISSED" in printed and "<= 15 ok" in printed
    assert "goals met: 1 of 2" in printed
    report = json.loads(output.read_text())
    assert [r["measure"] for r in report["sections"]["good"]["summary"]] == [
        "speed",
        "rate",
        "info",
    ]
    assert report["machine"]["cpus"] >= 1 and report["sections"]["good"]["exit"] == 0


def test_a_failing_benchmark_fails_the_run_and_the_others_still_report(
    scripts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = scripts / "latest.json"
    assert runner.main(["--output", str(output)]) == 1
    printed = capsys.readouterr().out
    assert "[broken] FAILED to run (exit 3)" in printed and "[good]" in printed
    report = json.loads(output.read_text())
    assert report["sections"]["broken"] == {
        "script": str(scripts / "broken.py"),
        "exit": 3,
        "seconds": report["sections"]["broken"]["seconds"],
        "summary": [],
    }


def test_a_previous_runs_figures_are_never_reported(scripts: Path) -> None:
    stale = scripts / "results" / "broken.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"summary": [{"measure": "old", "value": 1}]}))
    runner.main(["--only", "broken", "--output", str(scripts / "latest.json")])
    assert not stale.exists()


def test_unknown_benchmark_names_are_refused(scripts: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--only", "good,nope"])
    assert exit_.value.code == 2


def test_percentiles_and_rows() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert pct([10.0, 20.0], 0, 100) == {"p0": 10.0, "p100": 20.0}
    assert goal_row("x", 2.0, "", "<=", 2.0)["ok"] is True
    assert goal_row("x", 2.005, "", "<=", 2.0)["ok"] is False
    assert goal_row("x", 151.0, "wf/s", ">=", 150.0)["goal"] == ">= 150"
    assert row("x", 1.23456)["value"] == 1.235


def test_the_quick_arguments_are_passed(scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(runner.subprocess, "call", lambda cmd, cwd: seen.append(cmd) or 0)
    runner.main(["--only", "good", "--quick", "--output", str(scripts / "latest.json")])
    assert seen[0][0] == sys.executable and "--quick-flag-ignored" in seen[0]


@pytest.mark.parametrize("name", sorted(runner.BENCHMARKS))
def test_every_benchmark_accepts_the_arguments_run_passes_it(name: str) -> None:
    """``make bench-quick`` once passed ``--quick`` to a script without it (exit 2): each
    script's own parser must accept its extra and its quick arguments."""
    import subprocess

    script, extra, quick = runner.BENCHMARKS[name]
    root = Path(runner.__file__).resolve().parent.parent
    found = subprocess.run(
        [sys.executable, script, "--help"], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr[-2000:]
    for flag in [a for a in (*extra, *quick) if a.startswith("--")]:
        assert flag in found.stdout, f"{script} has no {flag}"


def _section(*rows: dict[str, Any], exit: int = 0) -> dict[str, Any]:
    return {"script": "x.py", "exit": exit, "seconds": 1.0, "summary": list(rows)}


def _report(**sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "sections": sections,
        "finished_at": "now",
        "loadavg_before": [0.1],
        "loadavg_after": [0.2],
        "machine": {
            "git_head": "abc",
            "cpus": 2,
            "cpu_model": "cpu",
            "memory_gb": 4,
            "python": "3",
        },
    }


def test_signoff_beside_the_peer_with_the_ratio_each_way() -> None:
    """A rate: Signoff / peer; a time: peer / Signoff; > 1 means Signoff is ahead."""
    report = _report(
        engine=_section(
            goal_row("step gap p50 (fn end -> next fn start)", 2.5, "ms", "<=", 1.5),
            goal_row("completed 3-step workflows/s (200 at once)", 150.0, "wf/s", ">=", 250),
            row("engine start in-process p50 (instance_start)", 2.0, "ms"),
        ),
        api=_section(row("start in-process, no HTTP: p50", 6.0, "ms")),
        peers=_section(
            row("peer: DBOS Transact", "3.4.0"),
            row("peer: step gap p50 (fn end -> next fn start)", 2.0, "ms"),
            row("peer: completed 3-step workflows/s (200 at once)", 100.0, "wf/s"),
            row("peer: enqueue one workflow in-process p50", 3.0, "ms"),
        ),
    )
    found = {c["measure"]: c for c in runner.comparisons(report)}
    assert found["completed 3-step workflows/s, all at once"]["advantage"] == 1.5
    assert found["step gap p50 (fn end -> next fn start)"]["advantage"] == 0.8
    assert found["start in-process p50 (peer: enqueue)"]["advantage"] == 0.5
    assert found["engine start in-process p50 (peer: enqueue)"]["advantage"] == 1.5
    assert found["step gap p50 (fn end -> next fn start)"]["signoff"]["value"] == 2.5
    report["comparisons"] = runner.comparisons(report)
    text = runner.render(report)
    assert "Signoff beside the peer" in text
    line = next(
        x for x in text.splitlines() if x.strip().startswith("completed 3-step workflows/s, all")
    )
    assert "150.00 wf/s" in line and "100.00 wf/s" in line and line.endswith("1.50x")


def test_no_comparison_without_both_figures() -> None:
    """The peer not installed (a text row), a failed section, or a section not run: no row,
    and the table says nothing about the peer."""
    engine = _section(goal_row("step gap p50 (fn end -> next fn start)", 2.5, "ms", "<=", 1.5))
    absent = _section(row("DBOS Transact", "not installed", note="skipped"))
    assert runner.comparisons(_report(engine=engine, peers=absent)) == []
    failed = _section(row("peer: step gap p50 (fn end -> next fn start)", 2.0, "ms"), exit=1)
    assert runner.comparisons(_report(engine=engine, peers=failed)) == []
    assert runner.comparisons(_report(engine=engine)) == []
    report = _report(engine=engine)
    report["comparisons"] = []
    assert "Signoff beside the peer" not in runner.render(report)


def test_the_peer_says_when_it_is_not_installed() -> None:
    from bench import peers

    rows = peers.summarise({"dbos_version": None})
    assert rows == [row("DBOS Transact", "not installed", note=f"skipped; {peers.INSTALL_HINT}")]
    assert "pip install '.[bench]'" in rows[0]["note"]
