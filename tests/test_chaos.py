"""The small chaos run as a test (``make chaos`` runs it first; ``make test`` leaves it out):
``bench/chaos.py --workflows 100`` as a subprocess.

It runs its own web server and workers on the database ``signoff_chaos`` and Redis db 7, SIGKILLs
workers, flushes its Redis database and terminates its own database's backends
(``--pg-restart=terminate``: a full PostgreSQL restart would also cut this test process's
connections). With SIGNOFF_CHAOS_BROKER=amqp (``make chaos BROKER=amqp``) the broker is
RabbitMQ, restarted once instead of the flush. The test asserts its exit code and every
invariant it prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INVARIANTS = [
    "instances_started",
    "children_once",
    "all_terminal",
    "expected_outcome",
    "events_gap_free",
    "one_start_one_end",
    "steps_settled",
    "step_scheduled_once",
    "claimed_once_per_attempt",
    "executed_once_per_attempt",
    "effects_exactly_once",
    "unwound_effects_undone",
    "approvals_decided_once",
]
WORKFLOWS = 100
# The run bounds itself (setup, a 25 s ramp, at most 3 minutes to finish); this backstop also
# covers waiting for another chaos run on this machine to finish (it holds a lock).
TIMEOUT = 900


@pytest.mark.e2e
@pytest.mark.chaos
def test_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    output = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    process = subprocess.Popen(
        [
            sys.executable,
            "bench/chaos.py",
            "--workflows",
            str(WORKFLOWS),
            "--pg-restart=terminate",
            # Its database is shared with `make chaos` and other checkouts on this machine,
            # which may have migrated it further: start from an empty one every time.
            "--fresh-db",
            "--output",
            str(output),
            "--logs",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        stdout, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.terminate()  # the run stops its web server and workers on SIGTERM
        try:
            stdout, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
        pytest.fail(f"chaos run did not finish in {TIMEOUT}s:\n{stdout[-6000:]}")

    tail = stdout[-6000:]
    assert process.returncode == 0, f"chaos run failed ({process.returncode}):\n{tail}"
    for name in INVARIANTS:
        assert re.search(rf"^invariant {name}: ok\b", stdout, re.M), f"{name} not ok:\n{tail}"
    assert "VIOLATED" not in stdout, tail
    assert re.search(r"^chaos: PASS$", stdout, re.M), tail

    summary = json.loads(output.read_text())
    assert summary["passed"] is True
    assert summary["timed_out"] is False
    states = summary["counts"]["instances_by_state"]
    assert sum(states.values()) == WORKFLOWS
    assert set(states) <= {"succeeded", "compensated"}, states
    assert states.get("compensated", 0) == summary["counts"]["doomed_sagas"]
    # The chaos really happened.
    chaos = summary["chaos"]
    assert chaos.get("kills_worker", 0) + chaos.get("kills_pool_process", 0) >= 2, chaos
    if os.environ.get("SIGNOFF_CHAOS_BROKER") == "amqp":  # make chaos BROKER=amqp
        assert summary["broker"] == "amqp"
        assert chaos.get("rabbitmq_restarts") == 1, chaos
    else:
        assert chaos.get("redis_flushes") == 1, chaos
    assert chaos.get("pg_terminations") == 1, chaos
    # The child and map steps ran (chaos_family), their children counted apart.
    families = summary["counts"]["instances_by_workflow"].get("chaos_family", 0)
    assert families > 0
    # a child and three map children each
    assert summary["counts"]["child_instances_by_state"].get("succeeded", 0) >= 4 * families
    assert summary["counts"]["child_items"] > 0 and summary["counts"]["child_steps"] > 0
    assert summary["counts"]["retries"] > 0
    assert summary["counts"]["decisions"] > 0
