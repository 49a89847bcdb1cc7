"""Bad input never half-writes (DESIGN invariant 8): each case below answers a clear 4xx in
the API's JSON error shape, and no row is inserted, updated or deleted."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from orchestration.models import WorkflowInstance

from .test_api import (
    INSTANCES,
    assert_error,
    failed_instance,
    snapshot,
    start_as,
    succeeded_instance,
    token_client,
)

pytestmark = pytest.mark.django_db

LIMIT = settings.SIGNOFF_MAX_REQUEST_BYTES


@pytest.fixture
def api(user: Any) -> APIClient:
    return token_client(user)


@pytest.fixture
def existing(user: Any) -> WorkflowInstance:
    """An instance started with an Idempotency-Key, so a bad request has rows to spoil."""
    return start_as(user, "t_sequence", idempotency_key="taken", business_key="b-1")


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def oversized_body() -> str:
    return json.dumps({"workflow": "t_sequence", "input": {"blob": "x" * LIMIT}})


WF = "t_sequence"
ONBOARDING = "customer_onboarding"


def bad(
    case_id: str,
    body: Any,
    code: str,
    field: str | None = None,
    *,
    status: int = 400,
    content_type: str = "application/json",
) -> Any:
    """One case: the body (a str is sent as is, anything else as JSON), the expected status
    and code, and the field the error must name under "fields"."""
    raw = body if isinstance(body, str) else json.dumps(body)
    return pytest.param(raw, content_type, status, code, field, id=case_id)


START_CASES = [
    bad("malformed_json", '{"workflow": "t_sequence", ', "parse_error"),
    bad("trailing_garbage", '{"workflow": "t_sequence"} x', "parse_error"),
    bad("nan", '{"workflow": "t_sequence", "input": {"x": NaN}}', "parse_error"),
    bad(
        "nested_beyond_the_decoder",
        '{"workflow": "t_sequence", "input": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "parse_error",
    ),
    bad("array_body", [{"workflow": WF}], "invalid", "non_field_errors"),
    bad("string_body", '"t_sequence"', "invalid", "non_field_errors"),
    bad("null_body", "null", "invalid", "non_field_errors"),
    bad("empty_object", {}, "invalid", "workflow"),
    bad("empty_body", "", "invalid", "workflow"),
    bad("missing_workflow", {"input": {}}, "invalid", "workflow"),
    bad("unknown_workflow", {"workflow": "no_such_flow"}, "unknown_workflow"),
    bad("blank_workflow", {"workflow": ""}, "invalid", "workflow"),
    bad("workflow_number", {"workflow": 7}, "invalid", "workflow"),
    bad("workflow_null", {"workflow": None}, "invalid", "workflow"),
    bad("unknown_version", {"workflow": WF, "version": 99}, "unknown_workflow"),
    bad("version_string", {"workflow": WF, "version": "x"}, "invalid", "version"),
    bad("version_numeric_string", {"workflow": WF, "version": "1"}, "invalid", "version"),
    bad("version_float", {"workflow": WF, "version": 1.5}, "invalid", "version"),
    bad("version_bool", {"workflow": WF, "version": True}, "invalid", "version"),
    bad("version_zero", {"workflow": WF, "version": 0}, "invalid", "version"),
    bad("input_list", {"workflow": WF, "input": [1, 2]}, "invalid", "input"),
    bad("input_string", {"workflow": WF, "input": "{}"}, "invalid", "input"),
    bad("input_null", {"workflow": WF, "input": None}, "invalid", "input"),
    bad("input_nul_in_value", {"workflow": WF, "input": {"a": "x\x00y"}}, "invalid", "input"),
    bad("input_nul_in_key", {"workflow": WF, "input": {"a\x00": 1}}, "invalid", "input"),
    bad(
        "input_lone_surrogate",
        '{"workflow": "t_sequence", "input": {"a": ["\\ud800"]}}',
        "invalid",
        "input",
    ),
    bad("input_too_deep", {"workflow": WF, "input": nested(40)}, "invalid", "input"),
    bad(
        "input_infinite_number",
        '{"workflow": "t_sequence", "input": {"a": 1e999}}',
        "invalid",
        "input",
    ),
    bad("business_key_number", {"workflow": WF, "business_key": 42}, "invalid", "business_key"),
    bad(
        "business_key_too_long",
        {"workflow": WF, "business_key": "k" * 201},
        "invalid",
        "business_key",
    ),
    bad("business_key_nul", {"workflow": WF, "business_key": "a\x00"}, "invalid", "business_key"),
    bad(
        "business_key_lone_surrogate",
        '{"workflow": "t_sequence", "business_key": "\\udfff"}',
        "invalid",
        "business_key",
    ),
    bad("unknown_field", {"workflow": WF, "inputs": {}}, "invalid", "inputs"),
    bad("schema_missing_required", {"workflow": ONBOARDING, "input": {}}, "invalid_input", "input"),
    bad(
        "schema_wrong_types",
        {"workflow": ONBOARDING, "input": {"customer": 5, "plan": "gold"}},
        "invalid_input",
        "input",
    ),
    bad(
        "schema_bad_fail_times",
        {"workflow": ONBOARDING, "input": {"customer": "Acme", "fail_times": {"no_step": 1}}},
        "invalid_input",
        "input",
    ),
    bad(
        "text_plain",
        {"workflow": WF},
        "unsupported_media_type",
        status=415,
        content_type="text/plain",
    ),
    bad(
        "form_encoded",
        "workflow=t_sequence",
        "unsupported_media_type",
        status=415,
        content_type="application/x-www-form-urlencoded",
    ),
    bad("oversized_body", oversized_body(), "request_too_large", status=413),
]


@pytest.mark.parametrize(("body", "content_type", "status", "code", "field"), START_CASES)
def test_bad_start_request_is_a_clear_4xx_and_writes_nothing(
    api: APIClient,
    existing: WorkflowInstance,
    body: str,
    content_type: str,
    status: int,
    code: str,
    field: str | None,
) -> None:
    before = snapshot()
    response = api.generic("POST", INSTANCES, body, content_type=content_type)
    error = assert_error(response, status, code)
    if field is not None:
        assert field in error["fields"], error
        if field != "non_field_errors":
            assert field in error["detail"], error  # the message alone says what is wrong
    assert snapshot() == before


def test_schema_errors_name_the_offending_input_fields(api: APIClient) -> None:
    response = api.post(
        INSTANCES,
        {"workflow": "customer_onboarding", "input": {"customer": 5, "plan": "gold"}},
        format="json",
    )
    error = assert_error(response, 400, "invalid_input")
    problems = " ".join(error["fields"]["input"])
    assert "customer" in problems and "plan" in problems


def test_a_body_at_the_size_limit_is_accepted(api: APIClient) -> None:
    empty = json.dumps({"workflow": "t_sequence", "input": {"blob": ""}})
    body = json.dumps({"workflow": "t_sequence", "input": {"blob": "x" * (LIMIT - len(empty))}})
    assert len(body) == LIMIT
    response = api.generic("POST", INSTANCES, body, content_type="application/json")
    assert response.status_code == 201, response.content[:300]


def test_oversized_body_is_413_even_before_authentication(existing: WorkflowInstance) -> None:
    before = snapshot()
    response = APIClient().generic(
        "POST", INSTANCES, oversized_body(), content_type="application/json"
    )
    assert_error(response, 413, "request_too_large")
    assert snapshot() == before


KEY_CASES = [
    ("too_long", "k" * 201),
    ("blank", "   "),
    ("empty", ""),
    ("control_character", "a\x01b"),
    ("nul", "a\x00b"),
]


@pytest.mark.parametrize("key", [c[1] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_bad_idempotency_key_is_400_and_writes_nothing(
    api: APIClient,
    existing: WorkflowInstance,
    key: str,
) -> None:
    before = snapshot()
    response = api.post(
        INSTANCES, {"workflow": "t_sequence"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    assert_error(response, 400, "invalid_idempotency_key")
    assert snapshot() == before


def test_longest_idempotency_key_is_accepted(api: APIClient) -> None:
    response = api.post(
        INSTANCES, {"workflow": "t_sequence"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 200
    )
    assert response.status_code == 201, response.content


INSTANCE_PATHS = [
    ("get", "{id}/"),
    ("get", "{id}/history/"),
    ("post", "{id}/cancel/"),
    ("post", "{id}/retry/"),
]


@pytest.mark.parametrize(
    "instance_id",
    [
        str(uuid.uuid4()),
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
    ],
    ids=["unknown_uuid", "word", "number", "almost_uuid"],
)
@pytest.mark.parametrize(("method", "path"), INSTANCE_PATHS)
def test_unknown_or_malformed_instance_id_is_404_and_writes_nothing(
    api: APIClient,
    existing: WorkflowInstance,
    method: str,
    path: str,
    instance_id: str,
) -> None:
    before = snapshot()
    response = getattr(api, method)(INSTANCES + path.format(id=instance_id), format="json")
    assert_error(response, 404, "not_found")
    assert snapshot() == before


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"state": "bogus"}, "invalid_filter"),
        ({"state": "RUNNING"}, "invalid_filter"),
        ({"workflow": "t_sequence\x00"}, "invalid_filter"),
        ({"business_key": "\x00"}, "invalid_filter"),
    ],
)
def test_bad_list_filter_is_400(
    api: APIClient, existing: WorkflowInstance, query: dict[str, str], code: str
) -> None:
    before = snapshot()
    assert_error(api.get(INSTANCES, query), 400, code)
    assert snapshot() == before


def _cursor(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


TAMPERED_CURSORS = {
    "not_ascii": base64.b64encode(b"\xff").decode(),
    "offset_not_a_number": _cursor("o=x"),
    "position_not_a_date": _cursor("p=not-a-date"),
    "position_not_a_number": _cursor("p=abc"),
    "position_with_nul": _cursor("p=%00"),
    "reverse_not_a_number": _cursor("r=x&p=1"),
}


@pytest.mark.parametrize("cursor", TAMPERED_CURSORS.values(), ids=TAMPERED_CURSORS.keys())
@pytest.mark.parametrize("history", [False, True], ids=["instances", "history"])
def test_tampered_cursor_is_404_invalid_cursor(
    api: APIClient, existing: WorkflowInstance, cursor: str, history: bool
) -> None:
    url = f"{INSTANCES}{existing.pk}/history/" if history else INSTANCES
    error = assert_error(api.get(url, {"cursor": cursor}), 404, "not_found")
    assert error["detail"] == "Invalid cursor"


@pytest.mark.parametrize(
    "cursor",
    [_cursor("p=99999999999999999999999"), _cursor("p=0001-01-01T00:00:00+14:00")],
    ids=["huge_number", "far_past"],
)
@pytest.mark.parametrize("history", [False, True], ids=["instances", "history"])
def test_odd_cursor_positions_are_an_empty_page_or_404_never_500(
    api: APIClient,
    existing: WorkflowInstance,
    cursor: str,
    history: bool,
) -> None:
    url = f"{INSTANCES}{existing.pk}/history/" if history else INSTANCES
    response = api.get(url, {"cursor": cursor})
    if response.status_code == 200:
        assert isinstance(response.json()["results"], list)
    else:
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        ("[]", "application/json", 400, "non_field_errors"),
        ('{"reason": 5}', "application/json", 400, "reason"),
        ('{"reason": "' + "r" * 1001 + '"}', "application/json", 400, "reason"),
        ('{"reason": "a\\u0000"}', "application/json", 400, "reason"),
        ('{"why": "x"}', "application/json", 400, "why"),
        ('{"reason": ', "application/json", 400, None),
        ('{"reason": "' + "r" * LIMIT + '"}', "application/json", 413, None),
    ],
    ids=[
        "array",
        "reason_number",
        "reason_too_long",
        "reason_nul",
        "unknown_field",
        "malformed",
        "oversized",
    ],
)
def test_bad_cancel_body_is_a_clear_4xx_and_cancels_nothing(
    api: APIClient,
    existing: WorkflowInstance,
    body: str,
    content_type: str,
    status: int,
    field: str | None,
) -> None:
    before = snapshot()
    response = api.generic(
        "POST", f"{INSTANCES}{existing.pk}/cancel/", body, content_type=content_type
    )
    error = assert_error(response, status)
    if field is not None:
        assert field in error["fields"], error
    assert snapshot() == before
    existing.refresh_from_db()
    assert existing.state == "running"


def test_retry_of_a_running_instance_is_409_and_changes_nothing(
    api: APIClient,
    existing: WorkflowInstance,
) -> None:
    before = snapshot()
    error = assert_error(api.post(f"{INSTANCES}{existing.pk}/retry/"), 409, "invalid_state")
    assert "running" in error["detail"]
    assert snapshot() == before


def test_cancel_of_a_finished_instance_is_409_and_changes_nothing(
    api: APIClient, user: Any
) -> None:
    done = succeeded_instance(user)
    before = snapshot()
    assert_error(api.post(f"{INSTANCES}{done.pk}/cancel/"), 409, "invalid_state")
    assert snapshot() == before


def test_repeated_cancel_is_409_and_changes_nothing(api: APIClient, user: Any) -> None:
    instance = failed_instance(user)
    assert api.post(f"{INSTANCES}{instance.pk}/cancel/").status_code == 200
    before = snapshot()
    for _ in range(2):
        assert_error(api.post(f"{INSTANCES}{instance.pk}/cancel/"), 409, "invalid_state")
    assert snapshot() == before
