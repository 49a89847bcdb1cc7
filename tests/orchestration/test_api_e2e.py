"""The whole path through the API with a real Celery worker on Redis and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for

from .test_api import INSTANCES, token_client

pytestmark = pytest.mark.e2e


def test_onboarding_started_through_the_api_retries_a_flaky_step_and_succeeds(
    worker: Any,
    user: Any,
) -> None:
    client = token_client(user)
    created = client.post(
        INSTANCES,
        {
            "workflow": "customer_onboarding",
            "input": {"customer": "Acme Ltd", "plan": "team", "fail_times": {"create_account": 1}},
            "business_key": "acme",
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="onboard-acme",
    )
    assert created.status_code == 201, created.content
    url = f"{INSTANCES}{created.json()['id']}/"

    def finished() -> dict[str, Any] | None:
        body = client.get(url).json()
        return body if body["state"] not in ("pending", "running") else None

    def waiting_for_setup() -> bool:
        steps = {s["name"]: s["state"] for s in client.get(url).json()["steps"]}
        return steps["setup_completed"] == "waiting"

    # Version 2 (the newest) waits for the customer's setup_completed callback.
    assert created.json()["version"] == 2
    wait_for(waiting_for_setup, timeout=60, interval=0.2, message="the setup_completed wait")
    signal = client.post(
        f"{url}signals/setup_completed/",
        {"admin_email": "it@acme.test"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="setup-acme",
    )
    assert signal.status_code == 202, signal.content
    repeat = client.post(
        f"{url}signals/setup_completed/",
        {"admin_email": "it@acme.test"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="setup-acme",
    )
    assert repeat.status_code == 200

    body = wait_for(finished, timeout=60, interval=0.2, message="customer_onboarding to finish")
    assert body["state"] == "succeeded", body
    steps = {s["name"]: s for s in body["steps"]}
    assert {name: s["state"] for name, s in steps.items()} == {
        "create_account": "succeeded",
        "provision_infrastructure": "succeeded",
        "send_welcome_email": "succeeded",
        "setup_completed": "succeeded",
        "enable_billing": "succeeded",
    }
    assert steps["setup_completed"]["output"] == {"admin_email": "it@acme.test"}
    assert steps["create_account"]["attempt"] == 2
    assert steps["create_account"]["output"]["account_id"] == "acct-acme-ltd"
    assert body["output"]["enable_billing"]["billing_account"] == "bill-acct-acme-ltd"

    events = client.get(f"{url}history/").json()["results"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "instance_started"
    assert events[-1]["type"] == "instance_succeeded"
    retrying = [e for e in events if e["type"] == "step_retrying"]
    assert len(retrying) == 1
    assert retrying[0]["step"] == "create_account"
    assert retrying[0]["attempt"] == 1
    assert retrying[0]["data"]["next_attempt"] == 2
    assert "transient failure 1 of 1" in retrying[0]["data"]["error"]["message"]

    # The same request again answers with the finished instance, not a new run.
    again = client.post(
        INSTANCES,
        {
            "workflow": "customer_onboarding",
            "input": {"customer": "Acme Ltd", "plan": "team", "fail_times": {"create_account": 1}},
            "business_key": "acme",
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="onboard-acme",
    )
    assert again.status_code == 200
    assert again.json()["id"] == created.json()["id"]
    assert again.json()["state"] == "succeeded"


def test_a_batch_started_through_the_api_runs_to_completion_on_a_worker(
    worker: Any, user: Any
) -> None:
    from orchestration.models import WorkflowInstance

    client = token_client(user)
    items = [
        {"workflow": "t_sequence", "input": {"n": n}, "idempotency_key": f"batch-{n}"}
        for n in range(30)
    ]
    items.append({"workflow": "t_parallel", "idempotency_key": "batch-p"})
    response = client.post(f"{INSTANCES}batch/", {"items": items}, format="json")
    assert response.status_code == 207, response.content
    assert response.json()["started"] == 31
    ids = [r["instance"]["id"] for r in response.json()["results"]]

    def all_finished() -> bool:
        return not WorkflowInstance.objects.filter(pk__in=ids, state="running").exists()

    wait_for(all_finished, timeout=90, interval=0.2, message="the batch to finish")
    states = set(WorkflowInstance.objects.filter(pk__in=ids).values_list("state", flat=True))
    assert states == {"succeeded"}
    body = client.get(f"{INSTANCES}{ids[0]}/").json()
    assert [s["state"] for s in body["steps"]] == ["succeeded"] * 3
    events = client.get(f"{INSTANCES}{ids[-1]}/history/").json()["results"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "instance_succeeded"
