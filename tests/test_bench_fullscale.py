"""bench/fullscale.py's side-by-side comparison (no seed, no database)."""

from __future__ import annotations

from bench import fullscale


def reports(wps: float, gap: float, cpu: dict[str, float], api_p50: float) -> dict:
    return {
        "engine": {
            "throughput": {"workflows_per_s": wps, "worker_cpu_ms_per_step": cpu},
            "latency": {"step_gap_ms": {"p50": gap}},
            "inprocess": {"start_ms": {"p50": 2.0}},
        },
        "api": {"single": {"latency_ms": {"p50": api_p50}}},
    }


def test_compare_signs_the_difference_by_direction_and_checks_the_goal() -> None:
    empty = reports(200.0, 2.0, {"main": 0.2, "children": 0.8}, 4.0)
    full = reports(170.0, 2.1, {"main": 0.2, "children": 0.9}, 4.0)
    rows = {r["measure"]: r for r in fullscale.compare(empty, full)}
    wps = rows["completed 3-step workflows/s"]
    assert wps["worse_pct"] == 15.0 and wps["ok"] is False  # fewer per second is worse
    gap = rows["step gap p50 (ms)"]
    assert gap["worse_pct"] == 5.0 and gap["ok"] is True
    cpu = rows["worker CPU per step (ms)"]
    assert cpu["empty"] == 1.0 and cpu["full"] == 1.1 and cpu["ok"] is True  # summed
    assert rows["API start, 1 client p50 (ms)"]["worse_pct"] == 0.0
    missing = rows["API start in-process p50 (ms)"]
    assert missing["empty"] is None and missing["worse_pct"] is None and missing["ok"] is None


def test_render_marks_misses_and_missing_figures() -> None:
    rows = fullscale.compare(reports(200.0, 2.0, {}, 4.0), reports(100.0, 1.0, {}, 5.0))
    table = fullscale.render(rows)
    assert "| completed 3-step workflows/s | 200 | 100 | +50.0 % | NO |" in table
    assert "| step gap p50 (ms) | 2 | 1 | -50.0 % | yes |" in table
    assert "| API start in-process p50 (ms) | – | – | – | – |" in table


def test_the_concurrent_and_batch_start_rates_are_compared_higher_is_better() -> None:
    empty = reports(200.0, 2.0, {}, 4.0)
    full = reports(200.0, 2.0, {}, 4.0)
    empty["api"].update(
        {"clients": {"requests_per_s": 240.0}, "batch": {"two_clients": {"instances_per_s": 3000}}}
    )
    full["api"].update(
        {"clients": {"requests_per_s": 180.0}, "batch": {"two_clients": {"instances_per_s": 3300}}}
    )
    rows = {r["measure"]: r for r in fullscale.compare(empty, full)}
    concurrent = rows["API start, 50 clients: starts/s"]
    assert concurrent["worse_pct"] == 25.0 and concurrent["ok"] is False
    batch = rows["batch start, 2 clients: inst/s"]
    assert batch["worse_pct"] == -10.0 and batch["ok"] is True
