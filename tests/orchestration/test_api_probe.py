import json
import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    c = APIClient()
    c.force_authenticate(user)
    return c


@pytest.mark.parametrize("body", [
    '{"workflow":"t_sequence","input":{"a":"\\u0000"}}',
    '{"workflow":"t_sequence","input":{"\\u0000":1}}',
    '{"workflow":"t_sequence","business_key":"a\\u0000"}',
    '{"workflow":"t_sequence","input":' + '{"a":' * 5000 + '1' + '}' * 5000 + '}',
    '{"workflow":"t_sequence","input":{"a":' + '[' * 100000 + ']' * 100000 + '}}',
    '{"workflow":"t_sequence","input":{"a":1e400}}',
    '{"workflow":"t_sequence","input":{"a":"\\ud800"}}',
    '{"workflow":"t_sequence","input":{"a":' + '9' * 5000 + '}}',
])
def test_probe(api, body):
    api.raise_request_exception = False
    r = api.post("/api/v1/instances/", body, content_type="application/json")
    print(r.status_code, r.content[:300])


@pytest.mark.parametrize("q", ["business_key=%00", "workflow=%00", "state=%00"])
def test_probe_q(api, q):
    api.raise_request_exception = False
    r = api.get("/api/v1/instances/?" + q)
    print(r.status_code, r.content[:300])


def test_probe_key(api):
    api.raise_request_exception = False
    r = api.post("/api/v1/instances/", {"workflow": "t_sequence"}, format="json", HTTP_IDEMPOTENCY_KEY="a\x00b")
    print(r.status_code, r.content[:300])
