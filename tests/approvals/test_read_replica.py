"""The inbox, the approvals API and the history export read from the streaming replica
(scripts/replica.sh), end to end through the views: read-your-writes for the decision's maker,
and a lagging replica (replay paused) never makes a decided request decidable again
(README, "Read replica")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connections
from django.test import Client
from django.urls import reverse

from approvals.models import ApprovalRequest, Decision
from orchestration import replica
from tests.conftest import wait_for

# No doorbells: a worker left running by an earlier end-to-end test would take the steps
# this file runs in-process.
# xdist_group: replay is paused and resumed on the one replica cluster, so every replica
# test runs in the same pytest-xdist worker (`--dist loadgroup`), one at a time.
pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("rung"),
    pytest.mark.xdist_group("replica"),
]


def caught_up() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        target = replica.lsn_value(cursor.fetchone()[0])
    wait_for(
        lambda: replica.lsn_value(replica.replayed_lsn()) >= target,
        timeout=30,
        message="replica to catch up",
    )


def set_replay(paused: bool) -> None:
    with connections["replica"].cursor() as cursor:
        cursor.execute(f"SELECT pg_wal_replay_{'pause' if paused else 'resume'}()")


@pytest.fixture
def replica_reads(settings: Any) -> Iterator[None]:
    settings.SIGNOFF_REPLICA_READS = True
    cache.clear()
    yield
    set_replay(False)
    cache.clear()


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def inbox_ids(client: Client) -> set[int]:
    response = client.get("/api/v1/approvals/")
    assert response.status_code == 200
    return {row["id"] for row in response.json()["results"]}


def listed(client: Client, request: ApprovalRequest) -> bool:
    response = client.get(reverse("inbox:list"))
    assert response.status_code == 200
    return reverse("inbox:detail", args=[request.pk]) in response.content.decode()


def test_the_inbox_is_read_from_the_replica(replica_reads: None, people, expense) -> None:
    first = expense(50)
    dave = signed_in(people["dave"])
    caught_up()
    set_replay(False)
    set_replay(True)
    later = expense(60)  # committed on the primary, not yet replayed
    assert inbox_ids(dave) == {first.pk}
    assert listed(dave, first) and not listed(dave, later)
    set_replay(False)
    wait_for(lambda: inbox_ids(dave) == {first.pk, later.pk}, message="the replayed request")
    assert listed(dave, later)


def test_the_inbox_lists_every_row_and_name_from_the_replica(
    replica_reads: None, people, expense
) -> None:
    # The page's assignee names (selectors.attach_assignees, fixed SQL) and the delegators
    # are read where the rows are: nothing of the list but the replica check on the primary.
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    first = expense(50)
    dave = signed_in(people["dave"])
    caught_up()
    with (
        CaptureQueriesContext(connections["default"]) as primary,
        CaptureQueriesContext(connections["replica"]) as replica,
    ):
        response = dave.get("/api/v1/approvals/")
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [first.pk]
    assert response.json()["results"][0]["assignees"]["groups"]
    on_replica = " ".join(q["sql"] for q in replica.captured_queries)
    on_primary = " ".join(q["sql"] for q in primary.captured_queries)
    assert "approvals_approvalrequest_assignee_groups" in on_replica
    assert "approvals_delegation" in on_replica
    assert "approvals_approvalrequest_assignee_groups" not in on_primary
    assert "approvals_delegation" not in on_primary


def test_a_lagging_replica_never_shows_a_decision_pending_to_its_maker_nor_reopens_it(
    replica_reads: None, people, expense
) -> None:
    request = expense(50)
    bob, dave, alice = (signed_in(people[n]) for n in ("bob", "dave", "alice"))
    caught_up()
    set_replay(True)
    decided = bob.post(
        reverse("inbox:decide", args=[request.pk]), {"outcome": "approve", "comment": "ok"}
    )
    assert decided.status_code == 302
    assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"

    # The maker reads from the primary until the replica has replayed the decision.
    assert request.pk not in inbox_ids(bob)
    assert not listed(bob, request)
    # Others read the lagging replica: still pending there...
    assert request.pk in inbox_ids(dave)
    history = json.loads(
        b"".join(alice.get(f"/instances/{request.instance_id}/history.json").streaming_content)
    )
    assert "approval_decided" not in {e["type"] for e in history["events"]}
    # ...but a decision is locked and checked on the primary: refused, nothing written.
    late = dave.post(
        reverse("inbox:decide", args=[request.pk]), {"outcome": "reject", "comment": "no"}
    )
    assert late.status_code in (302, 409, 400)
    api = dave.post(
        f"/api/v1/approvals/{request.pk}/reject/",
        {"comment": "no"},
        content_type="application/json",
    )
    assert api.status_code == 409, api.content
    assert Decision.objects.filter(request=request).count() == 1
    assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"

    set_replay(False)
    wait_for(lambda: request.pk not in inbox_ids(dave), message="the decision on the replica")
    wait_for(lambda: replica.replica_for(people["bob"]) == "replica", message="bob's mark")
    assert request.pk not in inbox_ids(bob)
