"""PgBouncer in transaction pooling mode: a worker that reaches PostgreSQL only through it
keeps every promise while PgBouncer is restarted mid-run (its own instance on its own port,
started by scripts/pgbouncer.sh, so nobody else's connections are cut).

`make test` also runs the end-to-end subset with the test process and its worker going
through the shared PgBouncer (SIGNOFF_TEST_DB_POOLER_URL); the last test here proves that
such a run really goes through it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from approvals.models import ApprovalRequest
from orchestration import engine
from orchestration.models import WorkflowInstance
from tests.conftest import ROOT, WorkerProcess, wait_for
from tests.server_faults import run_through, script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(port: int, database: str) -> dict[str, Any]:
    """PgBouncer's SHOW STATS row of ``database`` (empty when it saw none)."""
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="pgbouncer", autocommit=True
    ) as conn:
        cursor = conn.execute("SHOW STATS")
        names = [c.name for c in cursor.description]
        for row in cursor.fetchall():
            if row[0] == database:
                return dict(zip(names, row, strict=True))
    return {}


@pytest.fixture
def own_pgbouncer() -> Any:
    """A PgBouncer of this test's own, on a free port, stopped and removed afterwards."""
    port = free_port()
    folder = ROOT / "var" / f"pgbouncer-test-{port}"
    script("pgbouncer.sh", "start", str(port), str(folder))
    yield port, folder
    script("pgbouncer.sh", "stop", str(port), str(folder))
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.chaos  # a fault run: `make chaos` runs it (README, "PgBouncer and RabbitMQ")
def test_pgbouncer_restarted_mid_run_loses_nothing_and_doubles_nothing(
    worker: WorkerProcess, own_pgbouncer: Any, settings: Any
) -> None:
    port, folder = own_pgbouncer
    settings.SIGNOFF_DOORBELL_GRACE_SECONDS = 1
    name = connection.settings_dict["NAME"]
    worker.stop()  # the suite's worker: this test's own one consumes the queue instead
    pooled = WorkerProcess(
        name,
        database_url=f"postgres://postgres@127.0.0.1:{port}/{name}",
        extra_env={"SIGNOFF_DB_POOLER": "pgbouncer"},
    )
    pooled.start()
    try:

        def restart() -> None:
            used = stats(port, name)
            assert used.get("total_xact_count", 0) > 0, used  # the worker went through it
            script("pgbouncer.sh", "restart", str(port), str(folder))

        counts = run_through(restart)
    finally:
        pooled.stop()
    assert counts["done_before_fault"] < counts["total"]
    # The worker reached PostgreSQL through the restarted PgBouncer too.
    assert stats(port, name).get("total_xact_count", 0) > 0


def test_the_pooled_run_goes_through_pgbouncer(
    worker: WorkerProcess, client: Any, django_user_model: Any
) -> None:
    """Through the shared PgBouncer when SIGNOFF_TEST_DB_POOLER_URL is set (make test's pooled
    step), directly otherwise; either way the engine, the inbox, the API and the streamed
    history export (QuerySet.iterator(): a server-side cursor unless disabled) work, and the
    test process and its worker take the same path, with the pooler's settings when pooled."""
    pooled = bool(settings.SIGNOFF_TEST_DB_POOLER_URL)
    name = connection.settings_dict["NAME"]
    assert connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS", False) is pooled
    call_command("seed_demo")
    users = django_user_model.objects
    instance, _ = engine.instance_start(
        workflow="expense_approval",
        input={"amount": 80, "currency": "EUR", "description": "taxi", "requester": "alice"},
        started_by=users.get(username="alice"),
    )
    request = wait_for(
        lambda: ApprovalRequest.objects.filter(instance=instance).first(), message="request"
    )
    client.force_login(users.get(username="bob"))
    inbox = client.get("/inbox/")
    assert inbox.status_code == 200 and b"taxi" in inbox.content
    pending = client.get("/api/v1/approvals/?state=pending").json()["results"]
    assert request.pk in [r["id"] for r in pending]  # beside the demo data's requests
    decided = client.post(
        f"/api/v1/approvals/{request.pk}/approve/", {"comment": "ok"}, "application/json"
    )
    assert decided.status_code == 200, decided.content
    wait_for(
        lambda: WorkflowInstance.objects.get(pk=instance.pk).state == "succeeded",
        message="the instance",
    )
    client.force_login(users.get(username="alice"))
    export = client.get(f"/instances/{instance.pk}/history.json")
    assert export.status_code == 200
    history = json.loads(b"".join(export.streaming_content))
    seqs = [e["seq"] for e in history["events"]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 10
    if pooled:
        pooler = psycopg.conninfo.conninfo_to_dict(settings.SIGNOFF_TEST_DB_POOLER_URL)
        assert str(connection.settings_dict["PORT"]) == str(pooler["port"])
        # The test process's transactions and the worker's steps, all through PgBouncer.
        assert stats(int(pooler["port"]), name).get("total_xact_count", 0) >= 20
    else:
        direct = psycopg.conninfo.conninfo_to_dict(os.environ["DATABASE_URL"])
        assert str(connection.settings_dict["PORT"]) == str(direct.get("port", 5432))
